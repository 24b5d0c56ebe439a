"""Pipeline settings: the one config model for the computation (no Dagster import).

Values come from defaults, then environment variables (QUIMBI_*), then explicit overrides
(run config, CLI). Invalid values fail here, before any work, with the field named.
"""

from __future__ import annotations

import logging
import os
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

log = logging.getLogger(__name__)

# DESIGN's drift windows (days).
DRIFT_WINDOWS = (7, 28, 90, 180, 365)


class ClusteringAlgorithm(str, Enum):
    """CLUSTERING_ALGORITHM: kmeans is the original engine; the others need ENABLE_ADVANCED_CLUSTERING."""

    kmeans = "kmeans"
    hdbscan = "hdbscan"
    gmm = "gmm"
    dbscan = "dbscan"


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
    # The BTYD model's purchase event: a purchase occasion of this many days from the customer's first purchase
    # (1 = purchase days). Weeks rank lapsing better than days and RFM on every CDNOW holdout (docs/signals.md).
    btyd_occasion_days: int = Field(7, ge=1, le=91)
    # churn_risk_score = P(no purchase in the next churn_horizon_days); expected_purchases over the same days.
    churn_horizon_days: int = Field(90, ge=1, le=3650)
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
    # population_drift from the snapshots. It brings what drift needs (IMPLIED_BY_DRIFT) unless a part
    # is set explicitly; with ENABLE_TEMPORAL_SNAPSHOTS explicitly off, drift is skipped with a warning.
    enable_drift_analysis: bool = False
    # Drift is read, computed and written per slice of this many customers (bounded memory at
    # millions: a slice of 250,000 customers x 11 snapshot dates peaked at 17.4 GiB, docs/drift.md).
    drift_chunk_customers: int = Field(50_000, ge=1)
    # Customers per snapshot block (the columnar copy of a date's snapshots that drift reads, snapshot_blocks.py).
    snapshot_block_customers: int = Field(50_000, ge=1)
    # The drift windows the daily step computes and writes (environment: QUIMBI_DRIFT_WINDOWS=7,28). Each
    # window writes 1 + one-per-axis rows per customer (7M rows a day at 1M customers); anomalies and
    # population drift do not depend on it.
    drift_windows: tuple[int, ...] = DRIFT_WINDOWS
    # Flag ENABLE_ADAPTIVE_WINDOWS (off = the original 365-day windows): each axis' features over the
    # purchases after a change detected in the customer's own order stream (change_points.py), so drift
    # shows a change within a few orders and keeps showing it; the evidence goes to the drift step.
    enable_adaptive_windows: bool = False
    # Evidence (log-likelihood ratio) a change needs: mean shifts and rate changes; 0/1 signals; silences.
    change_evidence: float = Field(13.0, gt=0)
    change_binary_evidence: float = Field(8.0, gt=0)
    change_silence_evidence: float = Field(10.0, gt=0)

    # Flag ENABLE_ADVANCED_CLUSTERING and CLUSTERING_ALGORITHM: another algorithm than the original
    # kmeans (docs/algorithms.md); DYNAMIC_K_RANGE: max_k = max(min(floor(sqrt(n) / 2), 20, n - 1), min_k + 1).
    enable_advanced_clustering: bool = False
    # Flag ENABLE_HONEST_SEGMENTS: segment names from fixed bands of each axis' feature (the same meaning in
    # every store and for every k) and floor spreads in the standardization (segment_bands.py).
    enable_honest_segments: bool = False
    # Flag ENABLE_OUTLIER_DETECTION: customer_outlier_flags (three methods, quimbi_pipeline/model/outliers.py).
    enable_outlier_detection: bool = False
    clustering_algorithm: ClusteringAlgorithm = ClusteringAlgorithm.kmeans
    dynamic_k_range: bool = False
    hdbscan_min_cluster_size: int = Field(50, ge=2)
    dbscan_eps: float = Field(0.3, gt=0)
    dbscan_min_samples: int = Field(10, ge=1)
    # HDBSCAN, DBSCAN and GMM fits run on a fixed-seed sample of at most this many customers.
    cluster_fit_sample_size: int = Field(20_000, ge=100)

    # BLAS/OpenMP threads of a run (threads.py): 0 = the usable cores divided by the concurrent runs.
    # Small stores always run single-threaded.
    threads: int = Field(0, ge=0, le=512)

    # Rollout: a customer-level flag given as "N%" applies to a stable, hash-chosen N% of a store's
    # customers (rollout.py); filled from such values, {flag field: percent}.
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
# Settings that are not PipelineSettings fields but are read from the environment elsewhere.
OTHER_ENVIRONMENT = (
    "QUIMBI_ORDERS", "QUIMBI_WAREHOUSE_URL", "QUIMBI_DATA_DIR", "QUIMBI_FLAGS_FILE", "QUIMBI_PARTITIONS_START",
    "QUIMBI_STORE_BATCH_SIZE", "QUIMBI_CONCURRENT_RUNS", "QUIMBI_TEST_POSTGRES_URL", "QUIMBI_REQUIRE_POSTGRES",
    "QUIMBI_REQUIRE_BROWSER", "QUIMBI_CHROMIUM", "QUIMBI_API_KEYS",
    *(f"QUIMBI_RETENTION_{t.upper()}_DAYS" for t in ("daily", "weekly", "monthly", "quarterly", "yearly", "profile_change", "drift", "anomalies", "population", "outliers", "models")),
)
NOT_FROM_ENVIRONMENT = ("churn_bands", "rollout_percent")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "t", "yes", "y", "on")
    return bool(value)


def environment_names() -> dict[str, str]:
    """{environment name: field} of every setting read from the environment or a flags file."""
    return {PipelineSettings.env_name(f): f for f in PipelineSettings.model_fields if f not in NOT_FROM_ENVIRONMENT}


def unknown_environment(environ: dict[str, str] | None = None) -> list[tuple[str, str | None]]:
    """ENABLE_* / QUIMBI_* / CLUSTERING_* / DYNAMIC_* variables this project does not read, each with the
    closest known name (a typo such as ENABLE_TEMPORAL_SNAPSHOT would otherwise be silently ignored)."""
    import difflib

    env = os.environ if environ is None else environ
    known = set(environment_names()) | set(OTHER_ENVIRONMENT)
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


# Flags a rollout percentage can apply to: features that work per customer.
ROLLOUT_FLAGS = ("enable_temporal_snapshots", "enable_drift_analysis", "enable_outlier_detection")
# Fields whose environment name is DESIGN's flag name without a prefix.
DESIGN_FLAGS = ("enable_temporal_snapshots", "enable_stable_segments", "enable_drift_analysis", "enable_adaptive_windows", "enable_honest_segments",
                "enable_outlier_detection", "enable_advanced_clustering", "clustering_algorithm", "dynamic_k_range")


class StoreSettings:
    """Effective settings per store: defaults < environment < flags file `defaults` < flags file
    `stores.<id>` < run config (docs/flags.md). Every store's settings are validated on creation."""

    def __init__(self, overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None, flags_file: str | Path | None = None):
        env = os.environ if environ is None else environ
        self.overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        self.env = PipelineSettings.env_values(env)
        path = flags_file if flags_file is not None else env.get("QUIMBI_FLAGS_FILE")
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
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"flags file {path}: {where}: unknown name(s) {unknown}; valid: {sorted(names)}")
        return {names[k]: v for k, v in values.items()}

    stores = doc.get("stores") or {}
    if not isinstance(stores, dict):
        raise ValueError(f"flags file {path}: 'stores' must map store ids to settings")
    return section(doc.get("defaults") or {}, "defaults"), {str(k): section(v or {}, f"stores.{k}") for k, v in stores.items()}
