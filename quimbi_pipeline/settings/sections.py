"""The computation's settings in typed sections, one class per group; each field's description is its documentation
(docs/settings.md and `quimbi --help` are generated from these classes: settings/reference.py).

PipelineSettings (settings/pipeline.py) is all the sections together, so code reads `settings.max_k` whatever the group.
A field's environment and flags-file name is DESIGN's flag name for the feature flags, QUIMBI_<FIELD> otherwise.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# DESIGN's drift windows (days).
DRIFT_WINDOWS = (7, 28, 90, 180, 365)
AXIS_NAMES = ("purchase_frequency", "purchase_value", "loyalty_trajectory", "category_exploration", "discount_sensitivity", "basket_size")
ALERT_AXES = tuple(a for a in AXIS_NAMES if a != "loyalty_trajectory")


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


class Section(BaseModel):
    """A group of settings; its docstring's first line is the group's title in the reference."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class CustomerSettings(Section):
    """Customers and orders"""

    active_days: int = Field(365, ge=1, le=36500, description="A customer is active at date D (and profiled) when they have an order in (D - active_days, D].")
    feature_window_days: int = Field(365, ge=30, le=3650, description="Trailing window of the rate and value features (customers with a shorter tenure use their tenure).")
    bad_rows: str = Field("reject_store", pattern="^(reject_store|quarantine)$", description="Rows that fail validation: `reject_store` fails the whole store, `quarantine` drops the rows and goes on.")


class SegmentSettings(Section):
    """Segments"""

    min_k: int = Field(2, ge=2, le=50, description="Fewest segments an axis is split into.")
    max_k: int = Field(6, ge=2, le=50, description="Most segments an axis is split into (the silhouette picks k in [min_k, max_k]).")
    random_state: int = Field(42, description="Seed of every fit and sample: the same orders give the same segments.")
    kmeans_n_init: int = Field(10, ge=1, le=100, description="KMeans restarts per k.")
    silhouette_sample_size: int = Field(10_000, ge=100, description="Silhouette is O(n^2): above this many customers it is computed on a fixed-seed sample.")
    segment_refit_days: int = Field(28, ge=1, le=3660, description="With ENABLE_STABLE_SEGMENTS: days between refits of the segment model (anchored on a fixed calendar).")
    hdbscan_min_cluster_size: int = Field(50, ge=2, description="HDBSCAN's smallest segment (CLUSTERING_ALGORITHM=hdbscan).")
    dbscan_eps: float = Field(0.3, gt=0, description="DBSCAN's neighbourhood radius in standardized units (CLUSTERING_ALGORITHM=dbscan).")
    dbscan_min_samples: int = Field(10, ge=1, description="DBSCAN's core-point neighbours (CLUSTERING_ALGORITHM=dbscan).")
    cluster_fit_sample_size: int = Field(20_000, ge=100, description="HDBSCAN, DBSCAN and GMM fits, and the stable segment models' refits (ENABLE_STABLE_SEGMENTS), run on a fixed-seed sample of at most this many customers.")


class ChurnSettings(Section):
    """Churn and lifetime value"""

    btyd_fit_sample_size: int = Field(200_000, ge=100, description="The BTYD model's parameters are fitted on a fixed-seed sample of at most this many customers.")
    btyd_min_customers: int = Field(20, ge=1, description="Below this many customers (or 28 days of orders) a store's churn is not stated: churn_risk_level 'unknown', the scores the prior's.")
    ltv_horizon_days: int = Field(365, ge=1, description="predicted_ltv covers this many days ahead.")
    btyd_occasion_days: int = Field(7, ge=1, le=91, description="The BTYD model's purchase event: an occasion of this many days from the customer's first purchase (1 = purchase days).")
    churn_horizon_days: int = Field(90, ge=1, le=3650, description="churn_risk_score = P(no purchase in the next churn_horizon_days); expected_purchases over the same days.")
    churn_bands: ChurnBands = Field(ChurnBands(), description="Thresholds of churn_risk_level (set in code only).")


class SnapshotSettings(Section):
    """Snapshots"""

    snapshot_on_profile_change: bool = Field(False, description="An extra `profile_change` snapshot for a customer whose memberships moved more than profile_change_threshold since their last snapshot.")
    profile_change_threshold: float = Field(0.3, gt=0, le=1, description="Largest membership move over the axes, max ||m_now - m_last||_2 / sqrt(2), that counts as a profile change.")
    snapshot_block_customers: int = Field(50_000, ge=1, description="Customers per snapshot block (the columnar copy of a date's snapshots that drift reads).")


class DriftSettings(Section):
    """Drift and change detection"""

    drift_chunk_customers: int = Field(50_000, ge=1, description="Drift is read, computed and written per slice of this many customers (bounded memory at millions).")
    drift_windows: tuple[int, ...] = Field(DRIFT_WINDOWS, description="The drift windows (days) the daily step writes, comma-separated (e.g. 7,28); anomalies and population drift do not depend on it.")
    change_evidence: float = Field(13.0, gt=0, description="Evidence (log-likelihood ratio) a mean shift or rate change needs (ENABLE_ADAPTIVE_WINDOWS).")
    change_binary_evidence: float = Field(7.0, gt=0, description="Evidence a change in the share of discounted orders needs (a 0/1 signal).")
    change_category_evidence: float = Field(8.0, gt=0, description="Evidence a change in the share of orders in the customer's favourite category needs.")
    change_silence_evidence: float = Field(10.0, gt=1, description="Evidence a silence (a gap too long for the customer's own cadence) needs; a customer with 8+ gaps, read through the store's mixture of rhythms, 1 less.")
    change_decisive_evidence: float = Field(13.0, gt=0, description="Evidence a change shown by one purchase alone needs, after at least 6 purchases (far outside the customer's own history: |t| >= 5.1 at 13, e.g. a value x5 after orders within +-25%); below it a change waits for a second purchase.")


class AlertSettings(Section):
    """Alerts on the store's mix"""

    alert_segment_mix_warn: float = Field(0.10, gt=0, le=1, description="An axis whose dominant-segment shares moved this far (total variation: the share of customers that would have to change segment) against population drift's reference date raises a warning.")
    alert_segment_mix_error: float = Field(0.20, gt=0, le=1, description="... and an error from this far.")
    alert_feature_psi_warn: float = Field(0.25, gt=0, description="An axis whose features' distribution moved this far (population stability index, the largest of its features) raises a warning; 0.25 is the usual mark of a significant shift.")
    alert_feature_psi_error: float = Field(0.50, gt=0, description="... and an error from this far.")
    alert_outlier_rate_warn: float = Field(0.02, gt=0, le=1, description="A share of the store's customers flagged by an outlier method (ENABLE_OUTLIER_DETECTION) from which a warning is raised.")
    alert_outlier_rate_error: float = Field(0.05, gt=0, le=1, description="... and an error from this share.")
    alert_axes: tuple[str, ...] = Field(ALERT_AXES, description="The axes whose mix raises alerts, comma-separated. loyalty_trajectory is left out by default: its tenure grows with the calendar, so a store that acquires unevenly (a launch cohort, a season) moves on it every month without any customer changing.")
    alert_min_customers: int = Field(200, ge=1, description="Stores with fewer active customers raise no mix alert: their shares move by chance (one customer of 100 is a 1% shift).")

    @field_validator("alert_axes", mode="before")
    @classmethod
    def _axes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = tuple(v for v in value.replace(" ", "").split(",") if v)
        unknown = sorted(set(value) - set(AXIS_NAMES))
        if unknown:
            raise ValueError(f"unknown axes {unknown}: the axes are {', '.join(AXIS_NAMES)}")
        return tuple(value)

    @model_validator(mode="after")
    def _warn_below_error(self) -> AlertSettings:
        for name in ("segment_mix", "feature_psi", "outlier_rate"):
            warn, error = getattr(self, f"alert_{name}_warn"), getattr(self, f"alert_{name}_error")
            if warn > error:
                raise ValueError(f"QUIMBI_ALERT_{name.upper()}_WARN={warn:g} is above QUIMBI_ALERT_{name.upper()}_ERROR={error:g}: a warning must come first")
        return self


class ResourceSettings(Section):
    """Resources"""

    threads: int = Field(0, ge=0, le=512, description="BLAS/OpenMP threads of a run: 0 = the usable cores divided by QUIMBI_CONCURRENT_RUNS. Small stores always run single-threaded.")
    store_shards: int = Field(1, ge=1, le=1024, description="Shards a store's customers are split into (ranges of customer ids; set per store in the flags file): each can run as a run of its own, on another machine (deploy/README.md). 1 = the store in one piece.")
    shard_sample_customers: int = Field(100_000, ge=1000, description="A sharded store's models (segments, churn, the detectors' priors) are fitted on this many of its customers, chosen by a hash of their ids, and shared by its shards.")


class FeatureFlags(Section):
    """Feature flags (off = the original algorithm's outputs)"""

    enable_temporal_snapshots: bool = Field(False, description="Write daily/weekly/monthly/quarterly/yearly snapshots (customer_profile_snapshots).")
    enable_stable_segments: bool = Field(False, description="Score each day against a segment model refitted every segment_refit_days whose segments keep their names across refits. Off = a fresh fit per run.")
    enable_drift_analysis: bool = Field(False, description="customer_drift, customer_axis_drift, customer_drift_anomalies and population_drift from the snapshots; turns on snapshots, stable segments and adaptive windows unless they are set explicitly.")
    enable_adaptive_windows: bool = Field(False, description="Each axis' features over the purchases after a change detected in the customer's own order stream, so drift shows a change within a few orders.")
    enable_advanced_clustering: bool = Field(False, description="Allow another algorithm than the original kmeans (CLUSTERING_ALGORITHM).")
    enable_honest_segments: bool = Field(False, description="Segment names from fixed bands of each axis' feature (the same meaning in every store) and floored spreads in the standardization.")
    enable_outlier_detection: bool = Field(False, description="customer_outlier_flags (three methods), and outliers left out of the fits.")
    enable_coarse_archetypes: bool = Field(False, description="Archetypes a marketer can act on: purchase frequency, value and loyalty in three tiers each (at most 27) instead of every axis' segment.")
    clustering_algorithm: ClusteringAlgorithm = Field(ClusteringAlgorithm.kmeans, description="kmeans (the original), hdbscan, gmm or dbscan; the others need ENABLE_ADVANCED_CLUSTERING.")
    dynamic_k_range: bool = Field(False, description="max_k = max(min(floor(sqrt(n) / 2), 20, n - 1), min_k + 1) for a store of n customers.")


# The order of the groups in PipelineSettings' bases, the reference and `quimbi --help` (flags first).
SECTIONS = (FeatureFlags, CustomerSettings, SegmentSettings, ChurnSettings, SnapshotSettings, DriftSettings, AlertSettings, ResourceSettings)
