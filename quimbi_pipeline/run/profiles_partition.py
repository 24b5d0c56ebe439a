"""One daily partition of the profile pipeline for a set of stores, without Dagster.

Each store runs as its own unit (one_store.py); many small stores run in parallel workers (store_pool.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quimbi_pipeline.history.snapshots import snapshot_types_for
from quimbi_pipeline.run.one_store import StoreOutcome, failed_outcome, run_one_store
from quimbi_pipeline.run.store_pool import pool_workers, run_in_pool
from quimbi_pipeline.runtime.threads import SMALL_ROWS, run_threads
from quimbi_pipeline.settings import PipelineSettings, StoreSettings, settings_for_store
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
            outcomes.append(failed_outcome(store, as_of, exc))
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
