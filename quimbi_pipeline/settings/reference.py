"""The settings reference, generated from the typed sections, the retention policy and the deployment catalogue:
docs/settings.md (`python -m quimbi_pipeline.settings.reference > docs/settings.md`; a test fails when the file
and this text differ) and the groups `quimbi --help` lists."""

from __future__ import annotations

import textwrap
from enum import Enum

from pydantic import BaseModel

from quimbi_pipeline.settings.deployment import DEPLOYMENT
from quimbi_pipeline.settings.pipeline import NOT_FROM_ENVIRONMENT, PipelineSettings
from quimbi_pipeline.settings.retention import RetentionPolicy
from quimbi_pipeline.settings.sections import SECTIONS


def _title(section: type[BaseModel]) -> str:
    return (section.__doc__ or section.__name__).strip().splitlines()[0]


def _shown(value) -> str:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, tuple):
        return "`" + ",".join(str(v) for v in value) + "`"
    return f"`{value}`" if not isinstance(value, int) or abs(value) < 10_000 else f"`{value:_}`".replace("_", ",")


def groups() -> list[tuple[str, list[tuple[str, str, str]]]]:
    """[(group title, [(environment name, default as shown, meaning)])], in the order the reference shows them."""
    out = []
    for section in SECTIONS:
        rows = [(PipelineSettings.env_name(name), _shown(field.default), field.description or "")
                for name, field in section.model_fields.items() if name not in NOT_FROM_ENVIRONMENT]
        out.append((_title(section), rows))
    out.append((_title(RetentionPolicy), [(RetentionPolicy.env_name(name), _shown(field.default), field.description or "")
                                           for name, field in RetentionPolicy.model_fields.items()]))
    for group in dict.fromkeys(s.group for s in DEPLOYMENT):
        out.append((group, [(s.name, s.shown_default or (f"`{s.default}`" if s.default else "unset"), s.meaning)
                            for s in DEPLOYMENT if s.group == group]))
    return out


def help_text() -> str:
    """The groups and their names, for `quimbi --help`."""
    lines = ["settings (environment variables; per store in the YAML flags file QUIMBI_FLAGS_FILE names), by group:"]
    for title, rows in groups():
        lines.append(textwrap.fill(f"{title}: {', '.join(name for name, _, _ in rows)}", width=110, initial_indent="  ",
                                   subsequent_indent="      ", break_on_hyphens=False))
    lines.append("Every flag is off by default (the original outputs). Each setting's default and meaning: docs/settings.md.")
    return "\n".join(lines)


def markdown() -> str:
    parts = ["# Settings", "",
             "Generated from `quimbi_pipeline/settings/` (`python -m quimbi_pipeline.settings.reference > docs/settings.md`);",
             "a test fails when this file and the code differ. How values combine per store (environment, flags file,",
             "run config) and rollout percentages: [flags.md](flags.md).", ""]
    for title, rows in groups():
        parts += [f"## {title}", "", "| name | default | meaning |", "| --- | --- | --- |"]
        parts += [f"| `{name}` | {default} | {meaning.replace('|', '/')} |" for name, default, meaning in rows]
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    print(markdown(), end="")
