"""One daily partition of the profile pipeline for a set of stores, without Dagster.

Stores are processed one at a time and each is written in its own transaction, so one bad store
(invalid rows, a failing fit) is reported and never stops or half-writes the others.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import pandas as pd

from quimbi_pipeline.memberships import membership_shift, memberships_frame, parse_memberships
from quimbi_pipeline.orders import ValidatedOrders, as_of_day, orders_as_of
from quimbi_pipeline.profiles import StoreProfiles, build_store_profiles, segment_model_rows
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.snapshots import snapshot_types_for
from quimbi_pipeline.warehouse import Warehouse

log = logging.getLogger(__name__)
TOP_ARCHETYPES = 10


@dataclass
class StoreOutcome:
    store_id: str
    ok: bool
    n_profiles: int = 0
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    archetype_shares: dict[str, float] = field(default_factory=dict)
    membership_sum_violations: int = 0
    missing_profiles: int = 0
    unexpected_profiles: int = 0
    snapshot_rows: dict[str, int] = field(default_factory=dict)  # by type, as stored
    snapshot_duplicate_keys: int = 0


@dataclass
class PartitionReport:
    as_of: pd.Timestamp
    outcomes: list[StoreOutcome]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[StoreOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def n_profiles(self) -> int:
        return sum(o.n_profiles for o in self.outcomes)


def _store_metrics(result: StoreProfiles) -> tuple[dict[str, float], dict[str, float]]:
    metrics: dict[str, float] = {"customers_seen": float(result.n_customers_seen)}
    for axis, seg in result.segmentations.items():
        metrics[f"k/{axis}"] = float(seg.model.k)
        if seg.model.silhouette is not None:
            metrics[f"silhouette/{axis}"] = round(seg.model.silhouette, 4)
    for stage, secs in result.seconds.items():
        metrics[f"seconds/{stage}"] = round(secs, 3)
    profiles = result.profiles
    shares: dict[str, float] = {}
    if len(profiles):
        counts = profiles["archetype_name"].value_counts(normalize=True, sort=True)
        shares = {str(k): round(float(v), 4) for k, v in counts.head(TOP_ARCHETYPES).items()}
        metrics["archetypes"] = float(profiles["archetype_id"].nunique())
        metrics["churn_risk_mean"] = round(float(profiles["churn_risk_score"].mean()), 4)
        metrics["predicted_ltv_mean"] = round(float(profiles["predicted_ltv"].mean()), 2)
    return metrics, shares


def run_profiles_partition(
    validated: ValidatedOrders,
    as_of,
    warehouse: Warehouse,
    settings: PipelineSettings,
    stores: list[str] | None = None,
    snapshot_types: list[str] | None = None,
) -> PartitionReport:
    """Compute, write and verify customer_profiles of partition D for `stores` (default: all stores).

    Snapshots of D are written for the calendar's types (or `snapshot_types`, a subset of them) when
    settings.enable_temporal_snapshots is on.
    """
    as_of = as_of_day(as_of)
    types = snapshot_types_for(as_of) if snapshot_types is None else list(snapshot_types)
    types = types if settings.enable_temporal_snapshots else []
    started = time.perf_counter()
    cut = orders_as_of(validated.orders, as_of)
    by_store = {s: g for s, g in cut.groupby("store_id", sort=True)}
    known = set(validated.orders["store_id"].unique()) | set(validated.rejected_stores)
    wanted = sorted(known) if not stores else sorted(set(stores))
    seconds = {"cut_orders": time.perf_counter() - started}
    outcomes: list[StoreOutcome] = []
    for store in wanted:
        if store in validated.rejected_stores:
            problems = "; ".join(p.describe() for p in validated.rejected_stores[store])
            outcomes.append(StoreOutcome(store, False, error=f"invalid orders: {problems}"))
            continue
        if store not in known:
            log.warning("store %s: no orders in the source", store)
        try:
            outcomes.append(_run_store(store, by_store.get(store, cut.iloc[:0]), as_of, validated, warehouse, settings, types))
        except Exception as exc:  # one store's failure is recorded and the others go on
            log.exception("store %s failed for %s", store, as_of.date())
            outcomes.append(StoreOutcome(store, False, error=f"{type(exc).__name__}: {exc}"))
    seconds["total"] = time.perf_counter() - started
    return PartitionReport(as_of, outcomes, seconds)


def profile_changes(result: StoreProfiles, last_memberships: pd.Series, threshold: float) -> pd.Index:
    """Customers whose memberships moved more than `threshold` on some axis since their last snapshot.

    Customers without an earlier snapshot are not "changed" (their calendar snapshots cover them).
    """
    now = memberships_frame(result.segmentations, pd.Index(result.profiles["customer_id"].astype(str)))
    before = parse_memberships(last_memberships)
    shift = membership_shift(before, now)
    return shift.index[(shift.max(axis=1) > threshold).to_numpy()]


def _run_store(store, orders, as_of, validated, warehouse, settings, snapshot_types) -> StoreOutcome:
    result = build_store_profiles(orders, store, as_of, settings, validated.optional_columns)
    started = time.perf_counter()
    changed = None
    if snapshot_types and settings.snapshot_on_profile_change and len(result.profiles):
        changed = profile_changes(result, warehouse.last_snapshot_memberships(store, as_of), settings.profile_change_threshold)
    written = warehouse.write_profiles_partition(store, as_of, result.profiles, segment_model_rows(result), snapshot_types, changed)
    result.seconds["write"] = time.perf_counter() - started
    if snapshot_types:
        result.seconds["write_snapshots"] = written["snapshot_seconds"]  # part of "write"
    started = time.perf_counter()
    expected = pd.Index(result.profiles["customer_id"].astype(str))
    # A backfill leaves newer profiles in place: an active customer is covered by a row dated D or later.
    stored = warehouse.profile_dates_since(store, as_of)
    covered = pd.Index(stored["customer_id"])
    dated_d = pd.Index(stored.loc[stored["profile_date"] == as_of, "customer_id"])
    violations = warehouse.membership_sum_violations(store, as_of)
    snapshot_stats = warehouse.snapshot_stats(store, as_of) if snapshot_types else {"rows_by_type": {}, "duplicate_keys": 0}
    result.seconds["verify"] = time.perf_counter() - started
    metrics, shares = _store_metrics(result)
    log.info("store %s %s: %d profiles (%s)", store, as_of.date(), len(result.profiles),
             ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items()))
    return StoreOutcome(
        store, True, len(result.profiles), None, metrics, shares, violations,
        missing_profiles=int((~expected.isin(covered)).sum()),
        unexpected_profiles=int((~dated_d.isin(expected)).sum()),
        snapshot_rows=snapshot_stats["rows_by_type"],
        snapshot_duplicate_keys=snapshot_stats["duplicate_keys"],
    )
