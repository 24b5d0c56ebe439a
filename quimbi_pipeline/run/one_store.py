"""One store's profiles of a date: computed, written in one transaction and verified (in the main process or a
store_pool worker). A failure is recorded in the store's outcome, never raised, so one bad store never stops or
half-writes the others.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import sqlalchemy as sa

from quimbi_pipeline.history.snapshot_blocks import encode_blocks
from quimbi_pipeline.model.memberships import (
    membership_shift,
    memberships_frame,
    parse_memberships,
)
from quimbi_pipeline.model.outliers import outlier_rates
from quimbi_pipeline.model.profiles import (
    StoreProfiles,
    build_store_profiles,
    customer_features,
    model_rows,
    segment_model_rows,
    stable_model_version,
)
from quimbi_pipeline.model.segment_identity import fit_period_models, refit_anchor
from quimbi_pipeline.model.segmentation import AxisModel
from quimbi_pipeline.run.features_ahead import FeaturesAhead, StoreDate
from quimbi_pipeline.run.shards import ShardWork
from quimbi_pipeline.runtime.memory import release_memory
from quimbi_pipeline.runtime.threads import SMALL_ROWS, limited_threads, run_threads
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.settings.rollout import in_rollout
from quimbi_pipeline.sources.keys import is_in
from quimbi_pipeline.sources.row_checks import check_rows
from quimbi_pipeline.storage import Warehouse

log = logging.getLogger(__name__)
progress = logging.getLogger("quimbi_pipeline.progress")  # stage and store, shown by `quimbi run` while a date runs
TOP_ARCHETYPES = 10
SIDE_BY_SIDE_CHECK_ROWS = 100_000  # from here a store's checks read back side by side on PostgreSQL (_verify)


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
    snapshots_expired: bool = False  # D's snapshot rows not written: expired by the backfill range's end (its blocks are)
    outlier_rates: dict[str, float] = field(default_factory=dict)  # by method (ENABLE_OUTLIER_DETECTION)
    outlier_rows: int = 0
    notes: list[str] = field(default_factory=list)  # degradations taken for this store (logged as warnings too)
    verified: bool = True  # False: written, but the checks could not read it back (their results do not cover it)
    deferred_profiles: int = 0  # active customers whose customer_profiles row the run's next date writes (a backfill's range)
    deferred_outlier_rows: int = 0  # unflagged customer_outlier_flags rows not written: the run's next date cuts them

    @property
    def left_rows(self) -> bool:
        """Rows of this date are left to the run's next date (write_left_rows writes them if that date fails)."""
        return bool(self.deferred_profiles or self.deferred_outlier_rows)


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


def failed_outcome(store: str, as_of: pd.Timestamp, exc: Exception) -> StoreOutcome:
    log.exception("store %s failed for %s", store, as_of.date())
    return StoreOutcome(store, False, error=f"{type(exc).__name__}: {exc}")


def run_one_store(warehouse: Warehouse, store: str, orders: pd.DataFrame, as_of: pd.Timestamp, optional_columns,
                  settings: PipelineSettings, snapshot_types: list[str], active_later: pd.Index | None = None,
                  analyze: bool = True, snapshot_rows: bool = True, ahead: FeaturesAhead | None = None,
                  then: Callable[[], StoreDate | None] | None = None, sharded: ShardWork | None = None) -> StoreOutcome:
    """One store's profiles of D computed, written and verified (in the main process or a store_pool worker);
    a failure is recorded in the outcome, never raised. `active_later`: the customers active at the run's next date
    (a backfill's range): their customer_profiles rows are left to it (the snapshots of D are whole). `analyze=False`:
    the date's snapshot partition's statistics are left to the run (run_profiles_partition, after all its stores).
    `snapshot_rows=False`: D's snapshot rows are not written, only its snapshot blocks (a backfill range's date whose
    snapshots the retention policy expires by the range's end: history.snapshots.expired_on_arrival).
    `ahead`, `then`: the store's features may have been computed ahead (features_ahead.py); once they are at hand, the
    store-date `then()` names is started there. `sharded`: `orders` are one shard's customers (run/shards.py), scored
    against the store state given and written as that shard."""
    try:
        with limited_threads(len(orders), run_threads(settings.threads), automatic=settings.threads == 0):
            return _run_store(store, orders, as_of, optional_columns, warehouse, settings, snapshot_types, active_later, analyze, snapshot_rows,
                              ahead, then, sharded)
    except Exception as exc:  # one store's failure is recorded and the others go on
        return failed_outcome(store, as_of, exc)
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


def resolve_stable_models(store, orders, as_of, optional_columns, warehouse: Warehouse, settings: PipelineSettings, features_of_d):
    """The models in force at D (stable segment identity): (models, version, new segment_models rows, transitions).

    The period's model is read from segment_models; if it is not there yet it is fitted on the
    customers active at the period's anchor date (on D's if none were), named after the previous
    period's model, and returned to be written with D's profiles. `features_of_d()`: customer_features at D,
    computed once for the fit and the profiles when the fit is on D (a daily run's first day of a period).
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
    models, transitions = fit_period_models(orders, store, anchor, version, settings, optional_columns, previous, previous_version,
                                            active=features_of_d()[1] if anchor == as_of else None)
    if not models and anchor != as_of:
        log.info("store %s: no customer active at the refit anchor %s: model %s fitted on %s", store, anchor.date(), version, as_of.date())
        fit_day = as_of
        models, transitions = fit_period_models(orders, store, as_of, version, settings, optional_columns, previous, previous_version,
                                                active=features_of_d()[1])
    log.info("store %s: fitted stable segment model %s (previous %s)", store, version, previous_version)
    return models, version, model_rows(store, version, fit_day, list(models.values())) if models else pd.DataFrame(), transitions


def _handed_over(cached):
    """What a functools.cache'd thunk holds (None if it never ran), the cache emptied: the caller's reference is the only one."""
    value = cached() if cached.cache_info().currsize else None
    cached.cache_clear()
    return value


def _run_store(store, orders, as_of, optional_columns, warehouse, settings, snapshot_types, active_later, analyze, snapshot_rows, ahead, then,
               sharded) -> StoreOutcome:
    if sharded is not None:
        result = build_store_profiles(orders, store, as_of, settings, optional_columns, model_version=sharded.version, state=sharded.state)
        return _write_store(store, as_of, warehouse, settings, snapshot_types, analyze, result, sharded.model_frame, sharded.transitions, sharded)
    models = version = transitions = None
    new_models = pd.DataFrame()
    waited = time.perf_counter()
    given = [found] if ahead is not None and (found := ahead.take(store, as_of, settings)) is not None else []
    waited = time.perf_counter() - waited
    # given.pop(): the thunk does not keep the features once handed over (they are dropped after the churn fit).
    features_of_d = functools.cache(lambda: given.pop() if given else customer_features(orders, as_of, settings, optional_columns))
    if settings.enable_stable_segments and not orders.empty:
        started = time.perf_counter()
        models, version, new_models, transitions = resolve_stable_models(store, orders, as_of, optional_columns, warehouse, settings, features_of_d)
        model_seconds = time.perf_counter() - started
    features_seconds = None
    if ahead is not None and not orders.empty:
        started = time.perf_counter()
        features_of_d()  # D's features (unless the refit made them); then the next store-date's, in the background
        features_seconds = waited + time.perf_counter() - started
        ahead.start(then() if then is not None else None)
    # The features a refit computed are handed over, not kept: build_store_profiles drops every customer's features
    # after the churn fit, and the cache holding them too kept ~0.5 GB at 1M customers through the JSON text.
    result = build_store_profiles(orders, store, as_of, settings, optional_columns, models=models, model_version=version,
                                  features=_handed_over(features_of_d), active_later=active_later, snapshot_values=snapshot_rows)
    if len(orders) >= SMALL_ROWS:
        release_memory()  # the profiles step's numpy temporaries (snapshot columns' rounding): the write's Arrow text does not stack on them
    if models is not None:
        result.seconds["stable_models"] = model_seconds
    if features_seconds is not None:
        result.seconds["features"] = features_seconds  # computing them, or waiting for those computed ahead
    return _write_store(store, as_of, warehouse, settings, snapshot_types, analyze, result, new_models, transitions, snapshot_rows=snapshot_rows)


def _write_store(store, as_of, warehouse: Warehouse, settings: PipelineSettings, snapshot_types, analyze, result: StoreProfiles,
                 new_models: pd.DataFrame, transitions, sharded: ShardWork | None = None, snapshot_rows: bool = True) -> StoreOutcome:
    """A store's (or a shard's) profiles written and verified: its outcome. `snapshot_rows=False`: D's snapshots are its
    blocks alone (run_one_store)."""
    shard = None if sharded is None else sharded.shard
    customer_range = (None, None) if shard is None else shard.customer_range
    started = time.perf_counter()
    changed = snapshot_customers = None
    customer_ids = pd.Index(result.profiles["customer_id"].astype(str))
    # A backfill's range: the customers still active at the run's next date get their profile row there (written
    # once, not once a date); the snapshots of D cover everyone. The last date of a run writes every row.
    deferred = result.deferred
    written_ids = customer_ids if deferred is None else customer_ids[~deferred]
    if snapshot_types and settings.share("enable_temporal_snapshots") < 1.0:
        snapshot_customers = customer_ids[in_rollout(customer_ids, "enable_temporal_snapshots", settings.share("enable_temporal_snapshots"))]
    if snapshot_types and settings.snapshot_on_profile_change and snapshot_rows and len(result.profiles):
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
                                                 snapshot_customers, blocks, result.snapshot_values, deferred, analyze, shard,
                                                 "" if sharded is None else sharded.digest, snapshot_rows)
    result.seconds["write"] = time.perf_counter() - started
    if snapshot_types:
        result.seconds["write_snapshots"] = written["snapshot_seconds"]  # part of "write"
        result.seconds["write_snapshot_blocks"] = written["block_seconds"]  # part of "write"
        result.seconds["analyze_snapshots"] = written["analyze_seconds"]  # part of "write" (PostgreSQL statistics)
    started = time.perf_counter()
    progress.info("%s: verifying", store)
    notes = list(result.churn.notes) if result.churn else []
    try:
        checks = _verify(warehouse, store, as_of, written_ids, bool(snapshot_types), customer_range)
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
        snapshots_expired=bool(snapshot_types) and not snapshot_rows,
        snapshot_duplicate_keys=checks.get("duplicate_keys", 0),
        outlier_rates=outlier_rates(result.outliers) if result.outliers is not None else {},
        outlier_rows=0 if result.outliers is None else len(result.outliers),
        notes=notes, verified=checks["verified"], deferred_profiles=0 if deferred is None else int(deferred.sum()),
        deferred_outlier_rows=0 if deferred is None or result.outliers is None else int((~result.outliers["is_outlier"].astype(bool)).sum()),
    )


def _verify(warehouse: Warehouse, store: str, as_of: pd.Timestamp, expected: pd.Index, snapshots: bool,
            customer_range: tuple[str | None, str | None] = (None, None)) -> dict:
    """The checks' inputs, read back from the warehouse after the store's commit. `expected`: the customers whose rows D
    writes (the active ones but those a backfill's next date writes, which that date checks); `customer_range`: the
    shard's (run/shards.py), whose rows alone are read."""
    lo, hi = customer_range
    reads = {"stored": lambda: warehouse.profile_dates_since(store, as_of, customer_range),
             "stats": (lambda: warehouse.snapshot_stats(store, as_of, customer_range)) if snapshots else (lambda: {"rows_by_type": {}, "duplicate_keys": 0})}
    if not warehouse.is_postgres or len(expected) < SIDE_BY_SIDE_CHECK_ROWS:
        reads["violations"] = lambda: warehouse.membership_sum_violations(store, as_of, customer_range=customer_range)
        done = {name: read() for name, read in reads.items()}
    else:
        # Each read is one PostgreSQL backend on one core, and the memberships' sums (JSONB parsed) are most of the
        # time: the reads side by side, the sums in two halves of the customers (1M customers: 15 s -> 8 s).
        pivot = _median_id(expected)
        reads["violations"] = lambda: warehouse.membership_sum_violations(store, as_of, customer_range=(lo, pivot))
        reads["violations_upper"] = lambda: warehouse.membership_sum_violations(store, as_of, customer_range=(pivot, hi))
        with concurrent.futures.ThreadPoolExecutor(len(reads), thread_name_prefix="verify") as pool:
            futures = {name: pool.submit(read) for name, read in reads.items()}
            done = {name: future.result() for name, future in futures.items()}
        done["violations"] += done.pop("violations_upper")
    # A backfill leaves newer profiles in place: an active customer is covered by a row dated D or later.
    stored = done["stored"]
    covered = pd.Index(stored["customer_id"])
    dated_d = pd.Index(stored.loc[stored["profile_date"] == as_of, "customer_id"])
    return {"verified": True, "violations": done["violations"],
            "missing": int((~is_in(expected, covered)).sum()), "unexpected": int((~is_in(dated_d, expected)).sum()),
            "snapshot_rows": done["stats"]["rows_by_type"], "duplicate_keys": done["stats"]["duplicate_keys"]}


def _median_id(ids: pd.Index) -> str:
    """About the middle customer id (of a sample): where the checks split the customers in two. Any id splits them
    exactly (>= and < it); the sample only keeps the halves near equal."""
    sample = sorted(map(str, ids[np.random.default_rng(0).choice(len(ids), size=min(len(ids), 1001), replace=False)]))
    return sample[len(sample) // 2]
