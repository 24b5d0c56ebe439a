"""Many small stores of one date in parallel worker processes: their profiles, and their drift.

A store's work is mostly fixed cost at small sizes (about 300 KMeans fits of 1,000 points each, on one
thread: threads.py; its drift a few hundred small array and SQL calls), so a run of many small stores used
one core where one large store of the same customers uses all of the run's threads. Small stores are
therefore dealt to `workers` processes (the run's thread budget, threads.run_threads), each computing and
writing whole stores through its own
connection, one transaction per store as in the main process; large stores stay in the main process
with all the run's threads.

Workers are spawned (never forked: the parent may hold threads and open connections), so starting them
costs a few seconds of imports; the pool is used only from MIN_POOL_STORES small stores on, where the
stores' own work is larger than that. The results are the same as one store after the other: every
small store is single-threaded either way. Log records of a worker are sent back with its store's
outcome and emitted in the parent, so a run's log reads the same either way. A worker that dies (out
of memory, killed) fails its store with an error saying so; the stores beside it are retried and the
others go on.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from quimbi_pipeline.run.one_store import run_one_store
from quimbi_pipeline.runtime.threads import run_threads
from quimbi_pipeline.settings.locations import resolve_warehouse_url
from quimbi_pipeline.storage import Warehouse

MIN_POOL_STORES = 16
WORKER_DIED = "its worker process ended unexpectedly (killed, or out of memory?)"

log = logging.getLogger(__name__)


def pool_workers(n_small_stores: int, threads: int, warehouse_url: str) -> int:
    """Worker processes for the small stores of a run: 0 (in the main process) unless there are enough of
    them, more than one thread to use, and a warehouse other processes can open (not in-memory SQLite)."""
    if n_small_stores < MIN_POOL_STORES or threads < 2 or warehouse_url in ("sqlite://", "sqlite:///:memory:"):
        return 0
    return min(threads, n_small_stores)


def pool_workers_for(store_settings: list, warehouse_url: str) -> int:
    """pool_workers for the small stores of these settings (one per store): the run's thread budget is the smallest
    of theirs (threads.run_threads)."""
    threads = min((run_threads(s.threads) for s in store_settings), default=1)
    return pool_workers(len(store_settings), threads, warehouse_url)


class _Captured(logging.Handler):
    """Keeps a worker's log records of one store to be emitted again in the parent."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        self.records.append((record.name, record.levelno, message))


def in_worker(warehouse_url: str, work) -> tuple:
    """(work(warehouse), the log records it made): a store's work in a worker process, its records for the parent."""
    captured = _Captured()
    package = logging.getLogger("quimbi_pipeline")
    package.addHandler(captured)
    package.setLevel(logging.INFO)
    warehouse = _worker_warehouse(warehouse_url)
    try:
        outcome = work(warehouse)
    except BaseException:
        _drop_worker_warehouse()  # a store's work that raised may have left a connection in any state
        raise
    finally:
        package.removeHandler(captured)
    if multiprocessing.parent_process() is None:  # called in the main process (tests): nothing kept
        _drop_worker_warehouse()
    return outcome, captured.records


_kept_warehouse: Warehouse | None = None  # a worker process's warehouse, kept from one store to the next


def _worker_warehouse(warehouse_url: str) -> Warehouse:
    """The worker's warehouse for this URL, opened once per process: a new engine, its first connection and the catalog
    read were about 17 ms of each small store's profiles and again of its drift (PostgreSQL). The main process runs its
    stores one after the other through one warehouse the same way; a store's write is its own transaction either way."""
    global _kept_warehouse
    if _kept_warehouse is not None and _kept_warehouse.url != resolve_warehouse_url(warehouse_url):
        _drop_worker_warehouse()
    if _kept_warehouse is None:
        _kept_warehouse = Warehouse(warehouse_url, create=False)
    return _kept_warehouse


def _drop_worker_warehouse() -> None:
    global _kept_warehouse
    if _kept_warehouse is not None:
        _kept_warehouse.dispose()
        _kept_warehouse = None


def _store_in_worker(warehouse_url: str, job: tuple) -> tuple:
    return in_worker(warehouse_url, lambda warehouse: run_one_store(warehouse, *job))


def run_in_pool(jobs: Iterator[tuple], warehouse_url: str, workers: int, failed_outcome, work=None) -> list:
    """Each job's outcome (pipeline.run_one_store's; a job is its arguments after the warehouse, the store
    first), run by `workers` spawned processes. Jobs are taken from the iterator as workers free up, so
    only a few stores' orders are copied out at once.

    A dead worker breaks its whole pool, and the pool cannot say whose work killed it. So the stores in
    flight are retried one at a time in a pool of one worker: the store that dies there gets
    failed_outcome(store, WORKER_DIED), the others their own outcome (a store's write is one transaction,
    so a store cut off mid-run left nothing), and the jobs not yet started go on in a new pool.
    `work` (default: run_one_store in a worker, with its log records) is a module-level function(url, job)."""
    work = work or _store_in_worker
    pending: Iterator[tuple] | None = iter(jobs)
    outcomes: list = []
    context = multiprocessing.get_context("spawn")
    while pending is not None:
        kept = _kept is not None
        pool = _kept.get(workers) if kept else None
        if pool is None:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
            if kept:
                _kept[workers] = pool
        broken = True
        try:
            pending, suspects = _run_until_done_or_broken(pool, pending, warehouse_url, workers, work, outcomes)
            broken = bool(suspects)
        finally:
            if broken or not kept:  # a broken pool cannot take work again
                if kept:
                    _kept.pop(workers, None)
                pool.shutdown(wait=True)
        _run_alone(suspects, warehouse_url, work, failed_outcome, context, outcomes)
    return outcomes


_kept: dict[int, ProcessPoolExecutor] | None = None  # inside kept_pools(): the pools run_in_pool reuses, by size


def end_kept_pools() -> None:
    """Ends the kept pools' workers now (the block stays: the next run_in_pool starts new ones). Called before a large
    store runs in the main process, so that idle workers (~0.5 GiB each: the libraries and their last store's heap) are
    not held beside its peak."""
    if _kept:
        pools = list(_kept.values())
        _kept.clear()
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def kept_pools() -> Iterator[None]:
    """Inside the block (a step's loop over a run's dates), run_in_pool keeps its worker processes from one call to
    the next instead of spawning them, and importing the package in each, for every date (about 2.4 s of a date's
    wall time on 2 cores). A pool that broke is replaced; every pool ends with the block. Jobs are independent (each
    opens its own warehouse connection), so a store's results are the same in a kept pool as in a new one. A large
    store in the main process ends them first (end_kept_pools)."""
    global _kept
    if _kept is not None:  # an outer block keeps them
        yield
        return
    _kept = {}
    try:
        yield
    finally:
        end_kept_pools()
        _kept = None


def _run_until_done_or_broken(pool, jobs, warehouse_url, workers, work, outcomes) -> tuple[Iterator[tuple] | None, list]:
    """Runs jobs until there are none (returns None, []) or the pool breaks (returns the jobs not yet
    started and those in flight when it broke)."""
    running: dict = {}
    suspects: list = []
    while True:
        if not suspects:
            for job in itertools.islice(jobs, 2 * workers - len(running)):
                try:
                    running[pool.submit(work, warehouse_url, job)] = job
                except BrokenProcessPool:
                    suspects.append(job)
                    break
        if not running:
            return (jobs, suspects) if suspects else (None, [])
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            job = running.pop(future)
            outcome = _finished(future)
            if outcome is None:
                suspects.append(job)
            else:
                outcomes.append(outcome)


def _run_alone(jobs: list, warehouse_url, work, failed_outcome, context, outcomes) -> None:
    """Runs each job by itself in a one-worker pool (a new pool after a death), so a death is its job's."""
    while jobs:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            while jobs:
                job = jobs.pop(0)
                try:
                    outcome = _finished(pool.submit(work, warehouse_url, job))
                except BrokenProcessPool:
                    outcome = None
                if outcome is None:
                    log.error("store %s: %s", job[0], WORKER_DIED)
                    outcomes.append(failed_outcome(job[0], WORKER_DIED))
                    break
                outcomes.append(outcome)


def _finished(future):
    """The store's outcome, its worker's log records emitted here; None when its worker died."""
    try:
        outcome, records = future.result()
    except BrokenProcessPool:
        return None
    for name, level, message in records:
        logging.getLogger(name).log(level, "%s", message)
    return outcome
