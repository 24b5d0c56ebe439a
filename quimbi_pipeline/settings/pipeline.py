"""PipelineSettings: the computation's one config model, all the typed sections (sections.py) together.

Values come from defaults, then environment variables, then explicit overrides (a flags file, run config, CLI).
Invalid values fail here, before any work, with the setting named as the person sets it.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, field_validator, model_validator

from quimbi_pipeline.settings.sections import (
    DRIFT_WINDOWS,
    SECTIONS,
    ClusteringAlgorithm,
)


class PipelineSettings(*reversed(SECTIONS)):  # reversed: pydantic lists fields from the last base on, flags first
    """Every setting of the computation; see sections.py for each group and what each field means."""

    # A customer-level flag given as "N%" applies to a stable, hash-chosen N% of a store's customers
    # (rollout.py); filled from such values, {flag field: percent}.
    rollout_percent: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _percent_and_implied_flags(cls, values: Any) -> Any:
        """ENABLE_X: "10%" -> enable_x on for 10% of the customers (customer-level flags only); then
        ENABLE_DRIFT_ANALYSIS turns on IMPLIED_BY_DRIFT flags that are not set explicitly."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        rollout = dict(values.get("rollout_percent") or {})
        for name, value in list(values.items()):
            if isinstance(value, str) and value.strip().endswith("%"):
                if name not in ROLLOUT_FLAGS:
                    raise ValueError(f"{name}={value}: a percentage applies only to {', '.join(f.upper() for f in ROLLOUT_FLAGS)} "
                                     "(customer-level features); this one is store-level: use true or false")
                try:
                    percent = float(value.strip()[:-1])
                except ValueError as exc:
                    raise ValueError(f"{name}={value}: not a percentage") from exc
                if not 0 < percent <= 100:
                    raise ValueError(f"{name}={value}: a rollout percentage must be in (0, 100]")
                values[name] = True
                rollout[name] = percent
        values["rollout_percent"] = rollout
        if _truthy(values.get("enable_drift_analysis")):
            values.update({f: True for f in IMPLIED_BY_DRIFT if f not in values})
        return values

    @field_validator("drift_windows", mode="before")
    @classmethod
    def _windows(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = [int(v) for v in value.replace(" ", "").split(",") if v]
            except ValueError as exc:
                raise ValueError(f"drift_windows={value!r}: a comma-separated list of days from {DRIFT_WINDOWS}") from exc
        if isinstance(value, int):
            value = [value]
        values = sorted(set(value)) if isinstance(value, (list, tuple, set)) else []
        if not values or set(values) - set(DRIFT_WINDOWS):
            raise ValueError(f"drift_windows={value!r}: a non-empty subset of {DRIFT_WINDOWS} (days)")
        return tuple(values)

    @property
    def drift_active(self) -> bool:
        """Drift is computed: the flag is on and snapshots exist to measure it between."""
        return self.enable_drift_analysis and self.enable_temporal_snapshots

    def share(self, flag: str) -> float:
        """Share of a store's customers a customer-level flag applies to (1.0 = all)."""
        return self.rollout_percent.get(flag, 100.0) / 100.0

    @model_validator(mode="after")
    def _k_range(self) -> PipelineSettings:
        if self.min_k > self.max_k:
            raise ValueError(f"min_k ({self.min_k}) must be <= max_k ({self.max_k})")
        if self.clustering_algorithm != ClusteringAlgorithm.kmeans and not self.enable_advanced_clustering:
            raise ValueError(f"CLUSTERING_ALGORITHM={self.clustering_algorithm.value} needs ENABLE_ADVANCED_CLUSTERING "
                             "(kmeans, the original engine, does not)")
        return self

    @staticmethod
    def env_name(field: str) -> str:
        """The environment (and flags-file) name of a field: DESIGN's flag names, QUIMBI_* for tuning knobs."""
        return field.upper() if field in DESIGN_FLAGS else f"QUIMBI_{field.upper()}"

    @classmethod
    def env_values(cls, environ: dict[str, str] | None = None) -> dict[str, Any]:
        env = os.environ if environ is None else environ
        return {field: env[name] for name, field in environment_names().items() if name in env}

    @classmethod
    def from_env(cls, overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> PipelineSettings:
        return cls.model_validate({**cls.env_values(environ), **(overrides or {})})


# What meaningful drift needs (issue 11): the same segments across dates, and features that follow a
# customer's change within a few orders. Set explicitly (true or false) they are left alone.
IMPLIED_BY_DRIFT = ("enable_temporal_snapshots", "enable_stable_segments", "enable_adaptive_windows")
NOT_FROM_ENVIRONMENT = ("churn_bands", "rollout_percent")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "t", "yes", "y", "on")
    return bool(value)


def environment_names() -> dict[str, str]:
    """{environment name: field} of every setting read from the environment or a flags file."""
    return {PipelineSettings.env_name(f): f for f in PipelineSettings.model_fields if f not in NOT_FROM_ENVIRONMENT}


# Flags a rollout percentage can apply to: features that work per customer.
ROLLOUT_FLAGS = ("enable_temporal_snapshots", "enable_drift_analysis", "enable_outlier_detection")
# Fields whose environment name is DESIGN's flag name without a prefix.
DESIGN_FLAGS = ("enable_temporal_snapshots", "enable_stable_segments", "enable_drift_analysis", "enable_adaptive_windows", "enable_honest_segments",
                "enable_outlier_detection", "enable_advanced_clustering", "clustering_algorithm", "dynamic_k_range", "enable_coarse_archetypes")


