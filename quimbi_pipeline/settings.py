"""Pipeline settings: the one config model for the computation (no Dagster import).

Values come from defaults, then environment variables (QUIMBI_*), then explicit overrides
(run config, CLI). Invalid values fail here, before any work, with the field named.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ChurnBands(BaseModel):
    """churn_risk_level from churn_risk_score: low < medium_from <= medium < high_from <= high < critical_from <= critical."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    medium_from: float = Field(0.3, gt=0, lt=1)
    high_from: float = Field(0.6, gt=0, lt=1)
    critical_from: float = Field(0.8, gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> ChurnBands:
        if not self.medium_from < self.high_from < self.critical_from:
            raise ValueError("churn bands must satisfy medium_from < high_from < critical_from")
        return self


class PipelineSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # A customer is active at D when they have an order in (D - active_days, D].
    active_days: int = Field(365, ge=1, le=36500)
    # Trailing window for rate/value features (customers with shorter tenure use their tenure).
    feature_window_days: int = Field(365, ge=30, le=3650)
    min_k: int = Field(2, ge=2, le=50)
    max_k: int = Field(6, ge=2, le=50)
    random_state: int = 42
    kmeans_n_init: int = Field(10, ge=1, le=100)
    # Silhouette is O(n^2): above this many customers it is computed on a fixed-seed sample.
    silhouette_sample_size: int = Field(10_000, ge=100)
    # BTYD parameters are population-level: fitted on a fixed-seed sample of at most this many customers.
    btyd_fit_sample_size: int = Field(200_000, ge=100)
    # Below this many customers a store's BTYD fit is unreliable: documented default parameters are used.
    btyd_min_customers: int = Field(30, ge=2)
    ltv_horizon_days: int = Field(365, ge=1)
    churn_bands: ChurnBands = ChurnBands()
    # What to do with rows that fail validation: reject the whole store, or drop the rows.
    bad_rows: str = Field("reject_store", pattern="^(reject_store|quarantine)$")
    # Feature flag (environment variable ENABLE_TEMPORAL_SNAPSHOTS): write customer_profile_snapshots.
    enable_temporal_snapshots: bool = False
    # The seed's snapshot_on_profile_change: an extra "profile_change" snapshot for a customer whose
    # memberships moved more than the threshold (max over axes of ||m_now - m_last||_2 / sqrt(2))
    # since their last snapshot.
    snapshot_on_profile_change: bool = False
    profile_change_threshold: float = Field(0.3, gt=0, le=1)
    # Flag ENABLE_STABLE_SEGMENTS: score each day against a segment model refitted every
    # segment_refit_days (anchored on a fixed calendar), whose segments keep their names across
    # refits (Hungarian matching). Off = the original fresh fit per run.
    enable_stable_segments: bool = False
    segment_refit_days: int = Field(28, ge=1, le=3660)
    # Flag ENABLE_DRIFT_ANALYSIS: customer_drift, customer_axis_drift, customer_drift_anomalies and
    # population_drift from the snapshots (needs ENABLE_TEMPORAL_SNAPSHOTS).
    enable_drift_analysis: bool = False
    # Drift is read, computed and written per slice of this many customers (bounded memory at
    # millions: a slice of 250,000 customers x 11 snapshot dates peaked at 17.4 GiB, docs/drift.md).
    drift_chunk_customers: int = Field(50_000, ge=1000)
    # Flag ENABLE_ADAPTIVE_WINDOWS (off = the original 365-day windows): frequency, value, discount and
    # basket features over the purchases after a detected change of the customer's behavior
    # (features.AdaptiveWindow), so drift shows a change within a few orders.
    enable_adaptive_windows: bool = False
    adaptive_window_z: float = Field(4.0, gt=0)

    @model_validator(mode="after")
    def _k_range(self) -> PipelineSettings:
        if self.min_k > self.max_k:
            raise ValueError(f"min_k ({self.min_k}) must be <= max_k ({self.max_k})")
        if self.enable_drift_analysis and not self.enable_temporal_snapshots:
            raise ValueError("enable_drift_analysis needs enable_temporal_snapshots: drift is measured between snapshots")
        return self

    @classmethod
    def from_env(cls, overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> PipelineSettings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            if name == "churn_bands":
                continue
            # Feature flags keep DESIGN's names (ENABLE_*); tuning knobs are QUIMBI_*.
            raw = env.get(name.upper() if name.startswith("enable_") else f"QUIMBI_{name.upper()}")
            if raw is not None:
                values[name] = raw
        values.update(overrides or {})
        return cls.model_validate(values)
