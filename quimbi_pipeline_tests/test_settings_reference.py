"""docs/settings.md and `quimbi --help` come from the settings' one declaration (settings/sections.py, retention.py,
deployment.py) and say the same as the code."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from quimbi_pipeline.cli import main
from quimbi_pipeline.settings import (
    PipelineSettings,
    RetentionPolicy,
)
from quimbi_pipeline.settings.reference import groups, markdown
from quimbi_pipeline.settings.sections import SECTIONS
from quimbi_pipeline.settings.store import known_environment_names

DOC = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


def test_docs_settings_md_is_the_generated_reference():
    assert DOC.read_text() == markdown(), "regenerate: python -m quimbi_pipeline.settings.reference > docs/settings.md"


def test_every_setting_read_from_the_environment_is_documented_once():
    documented = [name for _, rows in groups() for name, _, meaning in rows if meaning]
    assert sorted(documented) == sorted(known_environment_names())


def test_every_field_of_the_pipeline_settings_belongs_to_one_section():
    in_sections = [name for section in SECTIONS for name in section.model_fields]
    assert len(in_sections) == len(set(in_sections))
    assert set(PipelineSettings.model_fields) - set(in_sections) == {"rollout_percent"}  # filled from "N%" flag values


def test_the_defaults_shown_are_the_models_defaults():
    shown = {name: default for _, rows in groups() for name, default, _ in rows}
    assert shown["QUIMBI_MAX_K"] == f"`{PipelineSettings().max_k}`"
    assert shown["QUIMBI_DRIFT_WINDOWS"] == "`7,28,90,180,365`"
    assert shown["QUIMBI_RETENTION_DAILY_DAYS"] == f"`{RetentionPolicy().daily}`"
    assert shown["ENABLE_DRIFT_ANALYSIS"] == "`false`"


def test_quimbi_help_lists_the_groups():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["--help"])
    text = out.getvalue()
    for title, rows in groups():
        assert f"  {title}: {rows[0][0]}" in text
