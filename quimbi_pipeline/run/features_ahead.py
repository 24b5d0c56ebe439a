"""The next large store-date's customer features, computed in a background thread while the current one is scored,
written and verified.

A run of several dates (a backfill's range) or of several large stores computes each store-date's features, its
largest stage (2.1-3.7 s a date of a 100,000-customer store's ~7 s), and then spends about as long on the churn
model, the outliers, the JSON text, the write and the read-back, much of that waiting on PostgreSQL. The next
store-date's features depend on its orders alone, so they are computed meanwhile, on the other core. It is the same
function on the same orders: the features, and so every table, are those of a run without it.

Only where it can pay and fits: the next store-date has at least SMALL_ROWS orders (small stores run in the worker
processes) and at most AHEAD_MAX_ORDERS (the features' temporaries are ~240 bytes an order: two large stores'
features at once would raise the peak of a 1M-customer store by gigabytes), and the run may use two threads
(QUIMBI_THREADS; with 0, the cores other work leaves idle just then). A computation that fails or is not wanted is
dropped and the store-date computes its features itself, as it would without this.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from quimbi_pipeline.model.profiles import CustomerFeatures, customer_features
from quimbi_pipeline.runtime.threads import SMALL_ROWS, idle_cores, run_threads
from quimbi_pipeline.settings import PipelineSettings

log = logging.getLogger(__name__)

AHEAD_MAX_ORDERS = 6_000_000  # about 300,000 customers of the demo's behavior


@dataclass(frozen=True)
class StoreDate:
    """A store-date whose features may be computed ahead: `orders()` copies its orders out (cut at D + 1 day)."""
    store: str
    as_of: pd.Timestamp
    settings: PipelineSettings
    n_orders: int
    orders: Callable[[], pd.DataFrame]
    optional_columns: tuple[str, ...]


class FeaturesAhead:
    """One store-date's features at a time in one background thread (`start`), handed to the store-date they were
    computed for (`take`). Use as a context manager: the thread ends with it."""

    def __init__(self, min_orders: int = SMALL_ROWS, max_orders: int = AHEAD_MAX_ORDERS) -> None:
        self.min_orders, self.max_orders = min_orders, max_orders
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: tuple[StoreDate, concurrent.futures.Future] | None = None
        self.seconds = 0.0  # spent computing ahead (in the background thread), over the run
        self.taken = 0  # store-dates that used features computed ahead

    def __enter__(self) -> FeaturesAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wanted(self, unit: StoreDate) -> bool:
        """Within the size bounds, and two threads for the run (with QUIMBI_THREADS=0, two cores idle now)."""
        if not max(self.min_orders, 1) <= unit.n_orders <= self.max_orders or run_threads(unit.settings.threads) < 2:
            return False
        return unit.settings.threads != 0 or idle_cores() >= 2

    def start(self, unit: StoreDate | None) -> None:
        """Compute `unit`'s features in the background (nothing when None or not `wanted`). A pending one not taken
        yet is dropped (its result is never used)."""
        self._drop()
        if unit is None or not self.wanted(unit):
            return
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="features-ahead")
        self._pending = (unit, self._pool.submit(self._compute, unit))

    def _compute(self, unit: StoreDate) -> CustomerFeatures:
        started = time.perf_counter()
        try:
            return customer_features(unit.orders(), unit.as_of, unit.settings, unit.optional_columns)
        finally:
            self.seconds += time.perf_counter() - started

    def take(self, store: str, as_of: pd.Timestamp, settings: PipelineSettings) -> CustomerFeatures | None:
        """The features computed ahead for this store-date under these settings (waiting for them if they are still
        being computed); None when none were, or their computation failed (the store-date computes them itself)."""
        if self._pending is None:
            return None
        unit, future = self._pending
        if (unit.store, unit.as_of, unit.settings) != (store, as_of, settings):
            return None
        self._pending = None
        try:
            features = future.result()
            self.taken += 1
            return features
        except Exception as exc:  # the store-date computes its features itself: a real problem fails it there
            log.info("store %s %s: features computed ahead failed (%s: %s); computed again in the run", store, as_of.date(),
                     type(exc).__name__, exc)
            return None

    def _drop(self) -> None:
        if self._pending is not None:
            unit, future = self._pending
            self._pending = None
            if not future.cancel():
                concurrent.futures.wait([future])  # one computation at a time: the memory bound above holds
            log.debug("store %s %s: features computed ahead not used", unit.store, unit.as_of.date())

    def close(self) -> None:
        self._drop()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
            # In the run's log (`quimbi run -v`): the features stage of a store-date that took them shows only its wait.
            log.info("features computed ahead for %d store-date(s), %.1f s in the background", self.taken, self.seconds)
