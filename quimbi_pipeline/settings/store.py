"""Effective settings per store (StoreSettings): defaults < environment < flags file `defaults` < flags file
`stores.<id>` < run config; and the checks that name a mistyped or invalid setting as the person wrote it."""

from __future__ import annotations

import difflib
import logging
import os
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from quimbi_pipeline.settings import deployment
from quimbi_pipeline.settings.deployment import DEPLOYMENT_NAMES
from quimbi_pipeline.settings.pipeline import (
    DESIGN_FLAGS,
    PipelineSettings,
    environment_names,
)
from quimbi_pipeline.settings.retention import RetentionPolicy

log = logging.getLogger("quimbi_pipeline.settings")


def known_environment_names() -> set[str]:
    """Every setting read from the environment: the computation's, retention's and the deployment's."""
    return set(environment_names()) | set(DEPLOYMENT_NAMES) | {RetentionPolicy.env_name(f) for f in RetentionPolicy.model_fields}


def unknown_environment(environ: dict[str, str] | None = None) -> list[tuple[str, str | None]]:
    """ENABLE_* / QUIMBI_* / CLUSTERING_* / DYNAMIC_* variables this project does not read, each with the
    closest known name (a typo such as ENABLE_TEMPORAL_SNAPSHOT would otherwise be silently ignored)."""
    env = os.environ if environ is None else environ
    known = known_environment_names()
    prefixes = ("ENABLE_", "QUIMBI_", "CLUSTERING_", "DYNAMIC_K")
    unknown = sorted(n for n in env if n.startswith(prefixes) and n not in known)
    return [(n, next(iter(difflib.get_close_matches(n, sorted(known), n=1, cutoff=0.75)), None)) for n in unknown]


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """One warning line per process for a setting problem (steps and dates build settings many times)."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def warn_unknown_environment(environ: dict[str, str] | None = None) -> None:
    for name, closest in unknown_environment(environ):
        _warn_once(f"environment variable {name} is not a quimbi setting and is ignored" + (f" (did you mean {closest}?)" if closest else ""))


class StoreSettings:
    """Effective settings per store: defaults < environment < flags file `defaults` < flags file
    `stores.<id>` < run config (docs/flags.md). Every store's settings are validated on creation."""

    def __init__(self, overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None, flags_file: str | Path | None = None):
        env = os.environ if environ is None else environ
        self.overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        self.env = PipelineSettings.env_values(env)
        path = flags_file if flags_file is not None else deployment.value("QUIMBI_FLAGS_FILE", env)
        self.file_defaults, self.file_stores = read_flags_file(path) if path else ({}, {})
        self.default = self._build(None)
        self.by_store = {store: self._build(store) for store in self.file_stores}
        if environ is None:
            warn_unknown_environment()
        for store, settings in [("all stores", self.default), *self.by_store.items()]:
            if settings.enable_drift_analysis and not settings.enable_temporal_snapshots:
                _warn_once(f"{store}: ENABLE_DRIFT_ANALYSIS is on but ENABLE_TEMPORAL_SNAPSHOTS is off: drift is skipped "
                           "(it is measured between snapshots)")

    def _build(self, store: str | None) -> PipelineSettings:
        values = {**self.env, **self.file_defaults, **(self.file_stores.get(store, {}) if store else {}), **self.overrides}
        try:
            return PipelineSettings.model_validate(values)
        except ValidationError as exc:
            where = f"store {store}" if store else "defaults"
            raise ValueError(f"invalid settings for {where}: {describe_errors(exc)}") from exc

    def for_store(self, store: str) -> PipelineSettings:
        return self.by_store.get(store, self.default)

    def flags(self, store: str) -> dict[str, Any]:
        """The effective feature flags of a store, by DESIGN name (logged and recorded as run metadata)."""
        settings = self.for_store(store)
        return {PipelineSettings.env_name(f): (f"{settings.rollout_percent[f]:g}%" if f in settings.rollout_percent else v.value if isinstance(v, Enum) else v)
                for f, v in settings.model_dump().items() if f in DESIGN_FLAGS}


def describe_errors(exc: ValidationError) -> str:
    """pydantic's errors as `NAME=value: problem`, NAME as the person sets it (environment or flags file)."""
    parts = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        name = PipelineSettings.env_name(field) if field in PipelineSettings.model_fields else field or "settings"
        value = f"={error['input']!r}" if field and not isinstance(error.get("input"), dict) else ""
        parts.append(f"{name}{value}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def settings_for_store(settings: PipelineSettings | StoreSettings, store: str) -> PipelineSettings:
    """The settings of one store, whether one model serves every store or a StoreSettings holds them per store."""
    return settings.for_store(store) if isinstance(settings, StoreSettings) else settings


def read_flags_file(path: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A YAML flags file: `defaults: {NAME: value}` and `stores: {store_id: {NAME: value}}`, NAME as in the environment."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"flags file {path}: cannot read: {exc}") from exc
    if not isinstance(doc, dict) or set(doc) - {"defaults", "stores"}:
        raise ValueError(f"flags file {path}: top-level keys must be 'defaults' and 'stores', got {sorted(doc) if isinstance(doc, dict) else type(doc).__name__}")
    names = environment_names()

    def section(values, where: str) -> dict[str, Any]:
        if not isinstance(values, dict):
            raise ValueError(f"flags file {path}: {where} must be a mapping of NAME: value")
        unknown = sorted(set(map(str, values)) - set(names))
        if unknown:
            guesses = [f"{name} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.75))
                       else name for name in unknown]
            raise ValueError(f"flags file {path}: {where}: unknown setting(s) {', '.join(guesses)}; names are as in the environment "
                             "(docs/settings.md, quimbi --help)")
        return {names[k]: v for k, v in values.items()}

    stores = doc.get("stores") or {}
    if not isinstance(stores, dict):
        raise ValueError(f"flags file {path}: 'stores' must map store ids to settings")
    return section(doc.get("defaults") or {}, "defaults"), {str(k): section(v or {}, f"stores.{k}") for k, v in stores.items()}
