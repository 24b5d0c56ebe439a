"""One daily partition of the profile pipeline for a set of stores, without Dagster.

Each store runs as its own unit (one_store.py); many small stores run in parallel workers (store_pool.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quimbi_pipeline.history.snapshots import expired_on_arrival, snapshot_types_for
from quimbi_pipeline.model.features import active_orders
from quimbi_pipeline.run.features_ahead import FeaturesAhead, StoreDate
from quimbi_pipeline.run.one_store import StoreOutcome, failed_outcome, run_one_store
from quimbi_pipeline.run.sharded_store import run_sharded_store, store_plan
from quimbi_pipeline.run.shards import ShardPlan
from quimbi_pipeline.run.store_pool import end_kept_pools, pool_workers_for, run_in_pool
from quimbi_pipeline.runtime.threads import SMALL_ROWS
from quimbi_pipeline.settings import (
    PipelineSettings,
    RetentionPolicy,
    StoreSettings,
    settings_for_store,
)
from quimbi_pipeline.sources.orders import ValidatedOrders, as_of_day, seen_at
from quimbi_pipeline.storage import Warehouse

log = logging.getLogger(__name__)


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


def run_profiles_partition(
    validated: ValidatedOrders,
    as_of,
    warehouse: Warehouse,
    settings: PipelineSettings | StoreSettings,
    stores: list[str] | None = None,
    snapshot_types: list[str] | None = None,
    later_day=None,
    ahead: FeaturesAhead | None = None,
    shard: int | None = None,
    shard_plan: ShardPlan | None = None,
    range_end=None,
) -> PartitionReport:
    """Compute, write and verify customer_profiles of partition D for `stores` (default: all stores).

    Snapshots of D are written for the calendar's types (or `snapshot_types`, a subset of them) when
    settings.enable_temporal_snapshots is on. `settings` may differ per store (StoreSettings: the flags file).
    `later_day`: the next date of the same run (a backfill's range, dates in order): the customer_profiles rows of the
    customers still active then are left to it, so a range writes each customer's row once, at the last date they
    are active in it (the same table as a run per date). The caller runs `later_day` next, or D again without it.
    `ahead`: the run's FeaturesAhead across its dates (default: one for this date): while a store of this process (not
    a worker's) is scored and written, the next one's features (after the last, the first one's at `later_day`) are
    computed in the background, where FeaturesAhead.wanted says it pays.
    A store with QUIMBI_STORE_SHARDS > 1 runs its shards in turn (sharded_store.py), or only shard `shard` (0-based;
    a store with one shard is then an error); its rows wait for no later date. `shard_plan`: the plan `validated` was
    read for (sharded_store.load_shard_orders: one shard's and the sample's orders); without it, each sharded store's
    plan comes from its customer ids in `validated`.
    `range_end`: the last date of the run (a backfill's range): a store whose every snapshot type of D the retention
    policy expires by then (counted from the range's end, or from the store's newest snapshot date when later) writes
    D's snapshot blocks only, not its snapshot rows, which the next prune would delete (expired_on_arrival; inside the
    range drift reads the blocks). Not with QUIMBI_SNAPSHOT_ON_PROFILE_CHANGE (its next date compares with D's rows).
    """
    as_of = as_of_day(as_of)
    types = snapshot_types_for(as_of) if snapshot_types is None else list(snapshot_types)
    started = time.perf_counter()
    if later_day is not None and as_of_day(later_day) <= as_of:
        raise ValueError(f"later_day {as_of_day(later_day).date()} is not after {as_of.date()}")
    policy = RetentionPolicy.from_env() if range_end is not None and types == snapshot_types_for(as_of) else None
    orders = validated.orders
    # Row positions per store of the orders before D + 1 day: each store's orders are copied out only
    # while that store runs (at 1M customers a full copy of the orders is 1.4 GB).
    store_codes, store_names = pd.factorize(orders["store_id"])
    rows_of = rows_by_store(store_codes, seen_at(orders, as_of), store_names)
    known = set(store_names) | set(validated.rejected_stores)
    wanted = sorted(known) if not stores else sorted(set(stores))
    seconds = {"cut_orders": time.perf_counter() - started}
    outcomes: list[StoreOutcome] = []
    small: list[tuple[str, PipelineSettings, np.ndarray]] = []
    large: list[tuple[str, PipelineSettings, np.ndarray]] = []
    sharded: list[tuple[str, PipelineSettings, np.ndarray]] = []
    # One store: its write refreshes the date's snapshot statistics. Several: the run does, once, after them all.
    analyze_each = len(wanted) <= 1

    def job(store: str, store_settings: PipelineSettings, rows: np.ndarray) -> tuple:
        """run_one_store's arguments after the warehouse (the store's orders copied out now)."""
        later = None if later_day is None else active_later(store, store_settings.active_days)
        return (store, _store_orders(orders, rows), as_of, validated.optional_columns, store_settings,
                types if store_settings.enable_temporal_snapshots else [], later, analyze_each, snapshot_rows(store, store_settings))

    def snapshot_rows(store: str, store_settings: PipelineSettings) -> bool:
        """Whether D's snapshot rows are written (run_one_store): not when they are expired on arrival (range_end)."""
        if policy is None or not store_settings.enable_temporal_snapshots or store_settings.snapshot_on_profile_change:
            return True
        if expired_on_arrival(as_of, range_end, policy):  # expired at the range's end: at any later newest date too
            return False
        newest = warehouse.newest_snapshot_date(store)  # a store already past the range (a backfill of older dates)
        return newest is None or not expired_on_arrival(as_of, max(as_of_day(range_end), as_of_day(newest)), policy)

    @functools.cache
    def active_by_store(active_days: int) -> dict[str, pd.Index]:
        """Per store, the customers active at later_day (one pass over the orders for all stores)."""
        rows = rows_by_store(store_codes, active_orders(orders, later_day, active_days), store_names)
        return {name: pd.Index(orders["customer_id"].take(positions).unique(), name="customer_id") for name, positions in rows.items()}

    def active_later(store: str, active_days: int) -> pd.Index:
        """The store's customers active at later_day: their profile rows wait for it."""
        found = active_by_store(active_days).get(store)
        return pd.Index([], dtype="string", name="customer_id") if found is None else found

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
            outcomes.append(failed_outcome(store, as_of, exc))
            continue
        rows = rows_of.get(store, np.zeros(0, dtype="int64"))
        if shard is not None and (store_settings.store_shards == 1 or not 0 <= shard < store_settings.store_shards):
            outcomes.append(StoreOutcome(store, False, error=f"no shard {shard + 1}: the store has {store_settings.store_shards} "
                                                             "(QUIMBI_STORE_SHARDS); run it without a shard, or name one of its shards"))
            continue
        (sharded if store_settings.store_shards > 1 else small if len(rows) < SMALL_ROWS else large).append((store, store_settings, rows))

    workers = pool_workers_for([store_settings for _, store_settings, _ in small], warehouse.url)
    in_process = large + ([] if workers else small)  # in this process, one after the other

    def following(i: int) -> StoreDate | None:
        """The store-date after in_process[i]: the next store of D, or the first one's at later_day."""
        if i + 1 < len(in_process):
            (store, store_settings, rows), day = in_process[i + 1], as_of
        else:
            store, store_settings, _ = in_process[0]
            if later_day is None or store not in store_names:  # a store without orders has no features to compute
                return None
            day = as_of_day(later_day)
            rows = np.flatnonzero((store_codes == store_names.get_loc(store)) & seen_at(orders, day))
        return StoreDate(store, day, store_settings, len(rows), lambda: _store_orders(orders, rows), tuple(validated.optional_columns))

    with contextlib.nullcontext(ahead) if ahead is not None else FeaturesAhead() as features_ahead:
        for i, (store, store_settings, rows) in enumerate(in_process):
            if len(rows) >= SMALL_ROWS:
                end_kept_pools()
            outcomes.append(run_one_store(warehouse, *job(store, store_settings, rows), ahead=features_ahead, then=lambda i=i: following(i)))
    for store, store_settings, rows in sharded:
        end_kept_pools()
        plan = shard_plan
        if plan is None:  # every customer id of the store in the orders (not only those seen at D), as the source holds them
            ids = orders["customer_id"].take(np.flatnonzero(store_codes == store_names.get_loc(store))).unique() if store in store_names else []
            plan = store_plan(np.asarray(ids, dtype=object), store_settings)
        outcomes.append(run_sharded_store(warehouse, store, _store_orders(orders, rows), as_of, validated.optional_columns, store_settings,
                                          types if store_settings.enable_temporal_snapshots else [], analyze_each, plan, shard))
    if workers:
        log.info("%d small stores in %d worker processes", len(small), workers)
        outcomes += run_in_pool((job(*s) for s in small), warehouse.url, workers, lambda store, message: StoreOutcome(store, False, error=message))
    if not analyze_each and types and any(o.ok for o in outcomes):
        analyze_started = time.perf_counter()
        warehouse.analyze_date_partitions(["profile_snapshots"], as_of)
        seconds["analyze_snapshots"] = time.perf_counter() - analyze_started
    position = {store: i for i, store in enumerate(wanted)}
    outcomes.sort(key=lambda o: position[o.store_id])
    seconds["total"] = time.perf_counter() - started
    return PartitionReport(as_of, outcomes, seconds)


def rows_by_store(codes: np.ndarray, keep: np.ndarray, names: pd.Index) -> dict[str, np.ndarray]:
    """Per store (codes: positions in `names`), the ascending row positions of its orders where `keep`: one stable sort
    for all stores (a mask per store passed over every order once per store: 1,000 stores x 20M orders)."""
    kept = np.flatnonzero(keep)
    rows = kept[np.argsort(codes[kept], kind="stable")]
    bounds = np.searchsorted(codes[rows], np.arange(len(names) + 1))
    return {name: rows[bounds[k]:bounds[k + 1]] for k, name in enumerate(names)}


def _store_orders(orders: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    return orders if len(rows) == len(orders) else orders.take(rows)  # one store, nothing after D: no copy


def write_left_rows(validated: ValidatedOrders, warehouse: Warehouse, settings: PipelineSettings | StoreSettings, report: PartitionReport,
                    snapshot_types: list[str], failed_next: list[StoreOutcome]) -> None:
    """The stores of `report` (a date run with later_day) that left customer_profiles rows (or unflagged outlier rows) to
    the run's next date and then failed there (`failed_next`), or never got there, run the date again writing every
    row, so their tables are the ones a run per date leaves. A failure of this second run is logged; the date that
    failed reports the store."""
    stores = sorted({o.store_id for o in failed_next} & {o.store_id for o in report.outcomes if o.ok and o.left_rows})
    if not stores:
        return
    day = report.as_of.date()
    log.warning("%s: writing every profile row again for %s: the run's next date did not complete for them", day, ", ".join(stores))
    try:
        again = run_profiles_partition(validated, report.as_of, warehouse, settings, stores, snapshot_types=snapshot_types)
    except Exception:  # the date that failed is what the run reports
        log.exception("%s: the profile rows of %s could not be written again", day, ", ".join(stores))
        return
    for o in again.failed:
        log.error("%s: the profile rows of %s could not be written again: %s", day, o.store_id, o.error)


def write_kept_rows(validated: ValidatedOrders, warehouse: Warehouse, settings: PipelineSettings | StoreSettings,
                    reports: list[PartitionReport], dates: list, types_of: dict) -> None:
    """A range's dates written as blocks alone (expired on arrival) were judged against the range's last date, `dates[-1]`.
    A store that did not complete that date (it failed there, or the run stopped) keeps some of them under the retention
    policy at the newest date it did complete: those store-dates run again as dates of their own, writing their snapshot
    rows (a date older than the store's newest leaves its newer profile rows and keeps only its flagged outlier rows, as
    a backfilled date does), so the tables are what a run per date up to that date leaves. `reports`: the run's dates
    done, in order. A failure here is logged; the date that failed reports the store."""
    if len(dates) < 2 or not reports:
        return
    policy = RetentionPolicy.from_env()
    blocks_alone = [{o.store_id for o in report.outcomes if o.ok and o.snapshots_expired} for report in reports]
    ok = [{o.store_id for o in report.outcomes if o.ok} for report in reports]
    reached_end = ok[-1] if as_of_day(reports[-1].as_of) == as_of_day(dates[-1]) else set()
    redo: dict[int, list[str]] = {}
    for store in sorted(set().union(*blocks_alone) - reached_end):
        reached = max(as_of_day(r.as_of) for r, stores in zip(reports, ok) if store in stores)
        try:
            newest = warehouse.newest_snapshot_date(store)  # rows of a date write_left_rows ran again, or of an earlier run
            # The dates with snapshot rows now (no block dates given: blocks-alone dates left out), in one read.
            with_rows = set(warehouse.snapshot_sources(store, reports[0].as_of, reached, block_dates=[])["snapshot_date"])
        except Exception:  # as a failed write below: logged, and the other stores go on
            log.exception("%s: could not read which snapshot rows it keeps", store)
            continue
        horizon = reached if newest is None else max(reached, as_of_day(newest))
        for i, stores in enumerate(blocks_alone):
            if store in stores and reports[i].as_of not in with_rows and not expired_on_arrival(reports[i].as_of, horizon, policy):
                redo.setdefault(i, []).append(store)
    for i, stores in sorted(redo.items()):
        day = reports[i].as_of.date()
        log.warning("%s: writing the snapshot rows of %s: the retention policy keeps them at the newest date the store reached",
                    day, ", ".join(stores))
        try:
            again = run_profiles_partition(validated, reports[i].as_of, warehouse, settings, stores, snapshot_types=types_of[dates[i]])
        except Exception:  # the date that failed is what the run reports
            log.exception("%s: the snapshot rows of %s could not be written", day, ", ".join(stores))
            continue
        for o in again.failed:
            log.error("%s: the snapshot rows of %s could not be written: %s", day, o.store_id, o.error)
