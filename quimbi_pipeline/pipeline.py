"""One daily partition of the profile pipeline for a set of stores, without Dagster.

Each store is written in its own transaction (many small stores by parallel workers: store_pool.py), so one bad store
(invalid rows, a failing fit) is reported and never stops or half-writes the others.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import sqlalchemy as sa

from quimbi_pipeline import drift
from quimbi_pipeline.drift_evidence import rescored_memberships, with_memberships
from quimbi_pipeline.history import BASE_COLUMNS, SnapshotHistoryReader
from quimbi_pipeline.memberships import (
    membership_shift,
    memberships_frame,
    parse_memberships,
)
from quimbi_pipeline.memory import release_memory
from quimbi_pipeline.orders import ValidatedOrders, as_of_day, seen_at
from quimbi_pipeline.outliers import outlier_rates
from quimbi_pipeline.profiles import (
    StoreProfiles,
    build_store_profiles,
    model_rows,
    model_version_for,
    segment_model_rows,
    stable_model_version,
)
from quimbi_pipeline.prune import drift_state_cutoff, keep_drift_state
from quimbi_pipeline.rollout import in_rollout
from quimbi_pipeline.row_checks import check_rows
from quimbi_pipeline.segment_identity import (
    fit_period_models,
    refit_anchor,
)
from quimbi_pipeline.segmentation import AxisModel
from quimbi_pipeline.settings import PipelineSettings, StoreSettings, settings_for_store
from quimbi_pipeline.snapshot_blocks import encode_blocks
from quimbi_pipeline.snapshots import RetentionPolicy, snapshot_types_for
from quimbi_pipeline.store_pool import pool_workers, run_in_pool
from quimbi_pipeline.threads import SMALL_ROWS, limited_threads, run_threads
from quimbi_pipeline.warehouse import Warehouse

log = logging.getLogger(__name__)
progress = logging.getLogger("quimbi_pipeline.progress")  # stage and store, shown by `quimbi run` while a date runs
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
    snapshot_expected: int = 0  # customers the date's snapshots must cover (all, or the rollout share)
    outlier_rates: dict[str, float] = field(default_factory=dict)  # by method (ENABLE_OUTLIER_DETECTION)
    outlier_rows: int = 0
    notes: list[str] = field(default_factory=list)  # degradations taken for this store (logged as warnings too)
    verified: bool = True  # False: written, but the checks could not read it back (their results do not cover it)


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
    settings: PipelineSettings | StoreSettings,
    stores: list[str] | None = None,
    snapshot_types: list[str] | None = None,
) -> PartitionReport:
    """Compute, write and verify customer_profiles of partition D for `stores` (default: all stores).

    Snapshots of D are written for the calendar's types (or `snapshot_types`, a subset of them) when
    settings.enable_temporal_snapshots is on. `settings` may differ per store (StoreSettings: the flags file).
    """
    as_of = as_of_day(as_of)
    types = snapshot_types_for(as_of) if snapshot_types is None else list(snapshot_types)
    started = time.perf_counter()
    # Row positions per store of the orders before D + 1 day: each store's orders are copied out only
    # while that store runs (at 1M customers a full copy of the orders is 1.4 GB).
    orders = validated.orders
    in_time = seen_at(orders, as_of)
    store_codes, store_names = pd.factorize(orders["store_id"])
    rows_of = {name: np.flatnonzero(in_time & (store_codes == k)) for k, name in enumerate(store_names)}
    known = set(store_names) | set(validated.rejected_stores)
    wanted = sorted(known) if not stores else sorted(set(stores))
    seconds = {"cut_orders": time.perf_counter() - started}
    outcomes: list[StoreOutcome] = []
    small: list[tuple[str, PipelineSettings, np.ndarray]] = []

    def job(store: str, store_settings: PipelineSettings, rows: np.ndarray) -> tuple:
        """run_one_store's arguments after the warehouse (the store's orders copied out now)."""
        return (store, _store_orders(orders, rows), as_of, validated.optional_columns, store_settings,
                types if store_settings.enable_temporal_snapshots else [])

    for store in wanted:
        if store in validated.rejected_stores:
            problems = "; ".join(p.describe() for p in validated.rejected_stores[store])
            outcomes.append(StoreOutcome(store, False, error=f"invalid orders: {problems}"))
            continue
        if store not in known:
            log.warning("store %s: no orders in the source", store)
        try:
            store_settings = settings_for_store(settings, store)
        except Exception as exc:  # one store's failure is recorded and the others go on
            outcomes.append(_failed(store, as_of, exc))
            continue
        rows = rows_of.get(store, np.zeros(0, dtype="int64"))
        if len(rows) < SMALL_ROWS:
            small.append((store, store_settings, rows))
        else:
            outcomes.append(run_one_store(warehouse, *job(store, store_settings, rows)))

    threads = min((run_threads(store_settings.threads) for _, store_settings, _ in small), default=1)
    workers = pool_workers(len(small), threads, warehouse.url)
    if workers:
        log.info("%d small stores in %d worker processes", len(small), workers)
        outcomes += run_in_pool((job(*s) for s in small), warehouse.url, workers, lambda store, message: StoreOutcome(store, False, error=message))
    else:
        outcomes += [run_one_store(warehouse, *job(*s)) for s in small]
    position = {store: i for i, store in enumerate(wanted)}
    outcomes.sort(key=lambda o: position[o.store_id])
    seconds["total"] = time.perf_counter() - started
    return PartitionReport(as_of, outcomes, seconds)


def _store_orders(orders: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    return orders if len(rows) == len(orders) else orders.take(rows)  # one store, nothing after D: no copy


def _failed(store: str, as_of: pd.Timestamp, exc: Exception) -> StoreOutcome:
    log.exception("store %s failed for %s", store, as_of.date())
    return StoreOutcome(store, False, error=f"{type(exc).__name__}: {exc}")


def run_one_store(warehouse: Warehouse, store: str, orders: pd.DataFrame, as_of: pd.Timestamp, optional_columns,
                  settings: PipelineSettings, snapshot_types: list[str]) -> StoreOutcome:
    """One store's profiles of D computed, written and verified (in the main process or a store_pool worker);
    a failure is recorded in the outcome, never raised."""
    try:
        with limited_threads(len(orders), run_threads(settings.threads)):
            return _run_store(store, orders, as_of, optional_columns, warehouse, settings, snapshot_types)
    except Exception as exc:  # one store's failure is recorded and the others go on
        return _failed(store, as_of, exc)
    finally:
        if len(orders) >= SMALL_ROWS:  # the next store (or date) starts from what the process holds
            release_memory()


def profile_changes(result: StoreProfiles, last_memberships: pd.Series, threshold: float) -> pd.Index:
    """Customers whose memberships moved more than `threshold` on some axis since their last snapshot.

    Customers without an earlier snapshot are not "changed" (their calendar snapshots cover them).
    """
    now = memberships_frame(result.segmentations, pd.Index(result.profiles["customer_id"].astype(str)))
    before = parse_memberships(last_memberships)
    shift = membership_shift(before, now)
    return shift.index[(shift.max(axis=1) > threshold).to_numpy()]


def resolve_stable_models(store, orders, as_of, optional_columns, warehouse: Warehouse, settings: PipelineSettings):
    """The models in force at D (stable segment identity): (models, version, new segment_models rows, transitions).

    The period's model is read from segment_models; if it is not there yet it is fitted on the
    customers active at the period's anchor date (on D's if none were), named after the previous
    period's model, and returned to be written with D's profiles.
    """
    anchor = refit_anchor(as_of, settings.segment_refit_days)
    algorithm = settings.clustering_algorithm.value
    version = stable_model_version(algorithm, anchor)
    records = warehouse.segment_model_records(store, version)
    if records:
        return {r["axis"]: AxisModel.from_record(r) for r in records}, version, pd.DataFrame(), None
    previous_version = warehouse.previous_model_version(store, stable_model_version(algorithm, anchor)[: -len("YYYY-MM-DD")], version)
    previous = {r["axis"]: AxisModel.from_record(r) for r in warehouse.segment_model_records(store, previous_version)} if previous_version else {}
    fit_day = anchor
    models, transitions = fit_period_models(orders, store, anchor, version, settings, optional_columns, previous, previous_version)
    if not models:
        log.info("store %s: no customer active at the refit anchor %s: model %s fitted on %s", store, anchor.date(), version, as_of.date())
        fit_day = as_of
        models, transitions = fit_period_models(orders, store, as_of, version, settings, optional_columns, previous, previous_version)
    log.info("store %s: fitted stable segment model %s (previous %s)", store, version, previous_version)
    return models, version, model_rows(store, version, fit_day, list(models.values())) if models else pd.DataFrame(), transitions


def _run_store(store, orders, as_of, optional_columns, warehouse, settings, snapshot_types) -> StoreOutcome:
    models = version = transitions = None
    new_models = pd.DataFrame()
    if settings.enable_stable_segments and not orders.empty:
        started = time.perf_counter()
        models, version, new_models, transitions = resolve_stable_models(store, orders, as_of, optional_columns, warehouse, settings)
        model_seconds = time.perf_counter() - started
    result = build_store_profiles(orders, store, as_of, settings, optional_columns, models=models, model_version=version)
    if len(orders) >= SMALL_ROWS:
        release_memory()  # the features' per-order arrays are gone: the write's text does not stack on them
    if models is not None:
        result.seconds["stable_models"] = model_seconds
    started = time.perf_counter()
    changed = snapshot_customers = None
    customer_ids = pd.Index(result.profiles["customer_id"].astype(str))
    if snapshot_types and settings.share("enable_temporal_snapshots") < 1.0:
        snapshot_customers = customer_ids[in_rollout(customer_ids, "enable_temporal_snapshots", settings.share("enable_temporal_snapshots"))]
    if snapshot_types and settings.snapshot_on_profile_change and len(result.profiles):
        changed = profile_changes(result, warehouse.last_snapshot_memberships(store, as_of), settings.profile_change_threshold)
        changed = changed if snapshot_customers is None else changed.intersection(snapshot_customers)
    model_frame = segment_model_rows(result) if result.fresh_fit else new_models
    blocks = None
    if snapshot_types and result.snapshot_columns is not None:
        blocks_started = time.perf_counter()
        numbers = result.snapshot_columns if snapshot_customers is None else result.snapshot_columns.subset(snapshot_customers)
        blocks = encode_blocks(numbers, settings.snapshot_block_customers)
        result.seconds["encode_blocks"] = time.perf_counter() - blocks_started  # part of "write"
    check_rows("customer_profiles", result.profiles)
    check_rows("customer_outlier_flags", result.outliers)
    progress.info("%s: writing %s profiles", store, f"{len(result.profiles):,}")
    written = warehouse.write_profiles_partition(store, as_of, result.profiles, model_frame, snapshot_types, changed, transitions, result.outliers,
                                                 snapshot_customers, blocks, result.snapshot_values)
    result.seconds["write"] = time.perf_counter() - started
    if snapshot_types:
        result.seconds["write_snapshots"] = written["snapshot_seconds"]  # part of "write"
        result.seconds["write_snapshot_blocks"] = written["block_seconds"]  # part of "write"
        result.seconds["analyze_snapshots"] = written["analyze_seconds"]  # part of "write" (PostgreSQL statistics)
    started = time.perf_counter()
    progress.info("%s: verifying", store)
    notes = list(result.churn.notes) if result.churn else []
    try:
        checks = _verify(warehouse, store, as_of, customer_ids, bool(snapshot_types))
    except sa.exc.SQLAlchemyError as exc:  # the store is committed: a failed check after it cannot undo that
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        log.warning("store %s %s: written, but verifying it failed: %s", store, as_of.date(), reason)
        notes.append(f"written; verification after the commit failed: {reason}")
        checks = None
    result.seconds["verify"] = time.perf_counter() - started
    metrics, shares = _store_metrics(result)
    log.info("store %s %s: %d profiles (%s)", store, as_of.date(), len(result.profiles),
             ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items()))
    checks = checks or {"verified": False}
    return StoreOutcome(
        store, True, len(result.profiles), None, metrics, shares, checks.get("violations", 0),
        missing_profiles=checks.get("missing", 0), unexpected_profiles=checks.get("unexpected", 0),
        snapshot_rows=checks.get("snapshot_rows", {}),
        snapshot_expected=len(customer_ids) if snapshot_customers is None else len(snapshot_customers),
        snapshot_duplicate_keys=checks.get("duplicate_keys", 0),
        outlier_rates=outlier_rates(result.outliers) if result.outliers is not None else {},
        outlier_rows=0 if result.outliers is None else len(result.outliers),
        notes=notes, verified=checks["verified"],
    )


def _verify(warehouse: Warehouse, store: str, as_of: pd.Timestamp, expected: pd.Index, snapshots: bool) -> dict:
    """The checks' inputs, read back from the warehouse after the store's commit."""
    # A backfill leaves newer profiles in place: an active customer is covered by a row dated D or later.
    stored = warehouse.profile_dates_since(store, as_of)
    covered = pd.Index(stored["customer_id"])
    dated_d = pd.Index(stored.loc[stored["profile_date"] == as_of, "customer_id"])
    stats = warehouse.snapshot_stats(store, as_of) if snapshots else {"rows_by_type": {}, "duplicate_keys": 0}
    return {"verified": True, "violations": warehouse.membership_sum_violations(store, as_of),
            "missing": int((~expected.isin(covered)).sum()), "unexpected": int((~dated_d.isin(expected)).sum()),
            "snapshot_rows": stats["rows_by_type"], "duplicate_keys": stats["duplicate_keys"]}


# ---- drift --------------------------------------------------------------------------------------

@dataclass
class DriftOutcome:
    store_id: str
    ok: bool
    rows: dict[str, int] = field(default_factory=dict)  # by table
    anomalies_by_type: dict[str, int] = field(default_factory=dict)
    population: pd.DataFrame | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    note: str = ""


def history_from_snapshots(frame: pd.DataFrame, scored: tuple[list[str], np.ndarray] | None = None) -> drift.MembershipHistory:
    """A MembershipHistory from numeric snapshot history (history.BASE_COLUMNS + "axis.segment" columns, and
    optionally "f:..." features and change evidence); with `scored` (rescored_memberships of the frame) its
    memberships are those instead of the frame's."""
    if scored is not None:
        return drift.MembershipHistory.from_frame(frame, *scored)
    columns = sorted(c for c in frame.columns if c not in BASE_COLUMNS and ":" not in c)
    return drift.MembershipHistory.from_frame(frame, columns)


def models_in_force(warehouse: Warehouse, store: str, as_of: pd.Timestamp, settings: PipelineSettings) -> dict[str, AxisModel]:
    """The segment models the store's profiles of D were scored with (segment_models), by axis; {} if none are stored."""
    algorithm = settings.clustering_algorithm.value
    version = (stable_model_version(algorithm, refit_anchor(as_of, settings.segment_refit_days)) if settings.enable_stable_segments
               else model_version_for(algorithm, as_of))
    return {r["axis"]: AxisModel.from_record(r) for r in warehouse.segment_model_records(store, version)}


def _scored_memberships(models: dict[str, AxisModel], frame: pd.DataFrame, store: str) -> tuple[list[str], np.ndarray] | None:
    """drift_evidence.rescored_memberships of the frame with D's models; None (the memberships as stored) when no
    model is stored or the frame's features cannot be scored."""
    if not models:
        return None
    try:
        return rescored_memberships(frame, models)
    except ValueError as exc:
        log.warning("store %s: drift uses the memberships as stored: %s", store, exc)
        return None


def _scored_with(models: dict[str, AxisModel], frame: pd.DataFrame, store: str) -> pd.DataFrame:
    """The frame with its memberships scored with D's models (_scored_memberships), or as stored."""
    scored = _scored_memberships(models, frame, store)
    return frame if scored is None else with_memberships(frame, *scored)


def run_drift_partition(warehouse: Warehouse, as_of, settings: PipelineSettings | StoreSettings, stores: list[str] | None = None,
                        retention: RetentionPolicy | None = None) -> list[DriftOutcome]:
    """customer_drift, customer_axis_drift, customer_drift_anomalies and population_drift of D, per store.

    customer_drift and customer_axis_drift keep `retention.drift` dates per store (default: the
    environment's policy; 1 = the newest date only, the current state): older ones are removed after each
    write, and a date older than those kept writes its anomalies and population drift only.

    Stores default to those with snapshots dated D; stores whose settings have drift off are skipped.
    Each store is written in its own transaction; a failing store is reported and the others go on.
    """
    as_of = as_of_day(as_of)
    retention = retention or RetentionPolicy.from_env()
    if stores is None:
        stores = warehouse.read_sql(
            f"SELECT DISTINCT store_id FROM {warehouse.qualified('profile_snapshots')} WHERE snapshot_date = :d ORDER BY 1",
            {"d": as_of.date()})["store_id"].tolist()
    outcomes = []
    for store in sorted(stores):
        store_settings = settings_for_store(settings, store)
        if not store_settings.drift_active:
            continue
        try:
            with limited_threads(0, run_threads(store_settings.threads)):  # array arithmetic, no large BLAS work
                outcome = _drift_store(warehouse, store, as_of, store_settings, retention)
                # An earlier date arriving late changes the inputs of later dates' drift: recompute those, so that
                # any order of dates leaves the warehouse a date-ordered run leaves.
                later = warehouse.stale_drift_dates(store, as_of) if outcome.rows else []
                for day in later:
                    _drift_store(warehouse, store, day, store_settings, retention)
                if later:
                    outcome.note = f"recomputed the drift of {len(later)} later date(s) whose snapshots changed: {', '.join(f'{d:%Y-%m-%d}' for d in later)}"
                outcomes.append(outcome)
                # Large stores only, as after profiles: a trim of a fragmented heap costs ~60 ms, a second per ~20 small stores.
                if outcome.rows.get("customer_drift", 0) >= SMALL_ROWS:
                    release_memory()
        except Exception as exc:  # one store's failure is recorded and the others go on
            log.exception("drift of store %s failed for %s", store, as_of.date())
            outcomes.append(DriftOutcome(store, False, error=f"{type(exc).__name__}: {exc}"))
    return outcomes


def _drift_reader(warehouse: Warehouse, store: str, as_of: pd.Timestamp, settings: PipelineSettings):
    """(reader of D's window of snapshots, their dates, D's models) or None when no snapshot is dated D."""
    reader = SnapshotHistoryReader(warehouse, store, as_of - pd.Timedelta(days=drift.history_days(settings.drift_windows)), as_of)
    dates = list(reader.sources["snapshot_date"])
    if not dates or dates[-1] != as_of:
        return None
    return reader, dates, models_in_force(warehouse, store, as_of, settings)  # every snapshot of the window is scored with D's models


def _drift_history(reader, models, store: str, settings: PipelineSettings, lo, hi) -> drift.MembershipHistory:
    """The snapshot history of the customers with lo <= id < hi (None: unbounded), scored with D's models."""
    frame = reader.history(lo, hi, with_features=bool(models))
    scored = _scored_memberships(models, frame, store)  # a matrix: a frame of them was copied three times on its way (1M: ~6 s)
    if settings.share("enable_drift_analysis") < 1.0:  # a rollout: drift for its share of customers only
        keep = in_rollout(frame["customer_id"], "enable_drift_analysis", settings.share("enable_drift_analysis"))
        frame = frame[keep]
        scored = None if scored is None else (scored[0], scored[1][keep])
    return history_from_snapshots(frame, scored)


def drift_on_demand(warehouse: Warehouse, store: str, as_of, settings: PipelineSettings | StoreSettings,
                    customer_id: str | None = None) -> drift.DriftTables | None:
    """The drift of any date D (one customer's, or the store's) computed from the snapshots as the daily step
    computes it, nothing written: customer_drift and customer_axis_drift keep only the current state
    (RetentionPolicy.drift). The same numbers the step wrote on D while D's window of snapshots is kept;
    None when no snapshot is dated D."""
    as_of = as_of_day(as_of)
    settings = settings_for_store(settings, store)
    found = _drift_reader(warehouse, store, as_of, settings)
    if found is None:
        return None
    reader, _, models = found
    lo, hi = (None, None) if customer_id is None else (customer_id, customer_id + "\x00")
    return drift.compute_drift(_drift_history(reader, models, store, settings, lo, hi), as_of, settings.drift_windows)


def _drift_store(warehouse: Warehouse, store: str, as_of: pd.Timestamp, settings: PipelineSettings,
                 retention: RetentionPolicy) -> DriftOutcome:
    started = time.perf_counter()
    progress.info("%s: drift", store)
    windows = settings.drift_windows
    found = _drift_reader(warehouse, store, as_of, settings)
    if found is None:
        note = f"no snapshots dated {as_of.date()}: drift not computed (run the date's profiles with ENABLE_TEMPORAL_SNAPSHOTS first)"
        log.warning("store %s: %s", store, note)
        return DriftOutcome(store, True, note=note)
    reader, dates, models = found
    bounds = reader.slice_bounds(as_of, settings.drift_chunk_customers)
    if bounds is None:  # D's snapshots predate the blocks: cut D's customer ids
        bounds = warehouse.snapshot_customer_bounds(store, as_of, settings.drift_chunk_customers)
    ranges = list(zip([None, *bounds], [*bounds, None]))
    seconds = {"read": 0.0, "compute": 0.0}
    anomaly_counts: dict[str, int] = {}
    # A date older than the kept drift state (a backfill) writes its events only; its state is computed on demand.
    state_kept = as_of >= drift_state_cutoff(warehouse, store, retention, as_of)

    def chunks():
        for lo, hi in ranges:
            t0 = time.perf_counter()
            history = _drift_history(reader, models, store, settings, lo, hi)
            t1 = time.perf_counter()
            tables = drift.compute_drift(history, as_of, windows)
            check_rows("customer_drift", tables.customers)
            check_rows("customer_axis_drift", tables.axis_numbers())
            check_rows("customer_drift_anomalies", tables.anomalies)
            for kind, n in tables.anomalies["anomaly_type"].value_counts().items():
                anomaly_counts[kind] = anomaly_counts.get(kind, 0) + int(n)
            seconds["read"] += t1 - t0
            seconds["compute"] += time.perf_counter() - t1
            if state_kept:
                yield tables.customers, tables.n_axis_rows, tables.anomalies
            else:
                yield tables.customers.iloc[:0], 0, tables.anomalies

    t0 = time.perf_counter()
    reference_date = next(d for d in dates if d >= as_of - pd.Timedelta(days=drift.POPULATION_REFERENCE_DAYS))
    population = pd.DataFrame(columns=drift.POPULATION_COLUMNS)
    if reference_date < as_of:
        population = drift.population_drift(_scored_with(models, reader.population_frame(reference_date), store),
                                            _scored_with(models, reader.population_frame(as_of), store), reference_date, as_of)
    seconds["population"] = time.perf_counter() - t0
    rows, seconds["write"] = warehouse.write_drift_partition(store, as_of, chunks(), population)  # on PostgreSQL the write overlaps read and compute
    warehouse.record_drift_inputs(store, as_of, drift.history_days(windows))
    t0 = time.perf_counter()
    rows["expired_drift_state"] = keep_drift_state(warehouse, store, retention)
    seconds["expire"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    log.info("store %s %s drift: %s rows (%s)", store, as_of.date(), rows, ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    return DriftOutcome(store, True, rows, anomaly_counts, population, seconds)
