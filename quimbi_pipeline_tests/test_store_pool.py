"""Many small stores run in worker processes (store_pool.py): the same tables as one store after the other,
their log lines in the parent's log, and a worker that dies fails its store only."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import types

import numpy as np
import pandas as pd
import pytest

from quimbi_pipeline.run import (
    StoreOutcome,
    run_drift_partition,
    run_profiles_partition,
    store_pool,
)
from quimbi_pipeline.run.profiles_partition import rows_by_store
from quimbi_pipeline.run.store_pool import (
    MIN_POOL_STORES,
    WORKER_DIED,
    end_kept_pools,
    in_worker,
    kept_pools,
    pool_workers,
    run_in_pool,
)
from quimbi_pipeline.sources.demo import generate_demo
from quimbi_pipeline.sources.orders import validate_orders
from quimbi_pipeline.storage import Warehouse
from quimbi_pipeline_tests.conftest import _reset_pg
from quimbi_pipeline_tests.pool_work import dies_on_store_b, warehouse_tag, worker_pid
from quimbi_pipeline_tests.test_reliability import ALL_ON, assert_same_tables, tables

DAYS = ["2026-10-30", "2026-10-31"]


def _run(validated, url: str, threads: int) -> dict:
    settings = ALL_ON.model_copy(update={"threads": threads})
    wh = Warehouse(url)
    with kept_pools():  # as a run of several dates keeps them: the same workers for both dates and both steps
        for day in DAYS:
            report = run_profiles_partition(validated, day, wh, settings)
            assert not report.failed, [o.error for o in report.failed]
            assert [o.store_id for o in report.outcomes] == sorted(o.store_id for o in report.outcomes)
            assert all(o.ok for o in run_drift_partition(wh, day, settings))
    out = tables(wh)
    wh.dispose()
    return out


@pytest.mark.heavy
def test_pooled_small_stores_write_the_tables_of_one_store_after_the_other(warehouse_url, tmp_path, caplog):
    validated = validate_orders(generate_demo(n_customers=MIN_POOL_STORES * 40, n_stores=MIN_POOL_STORES, seed=13).orders)
    assert pool_workers(MIN_POOL_STORES, 2, warehouse_url) == 2
    with caplog.at_level(logging.INFO, logger="quimbi_pipeline"):
        pooled = _run(validated, warehouse_url, threads=2)
    assert f"{MIN_POOL_STORES} small stores in 2 worker processes" in caplog.text
    assert f"{MIN_POOL_STORES} small stores' drift in 2 worker processes" in caplog.text
    assert "store store_p 2026-10-31:" in caplog.text  # a worker's own line, emitted in the parent
    if warehouse_url.startswith("postgresql"):
        _reset_pg(warehouse_url)
        sequential_url = warehouse_url
    else:
        sequential_url = f"sqlite:///{tmp_path / 'sequential.sqlite'}"
    assert pool_workers(MIN_POOL_STORES, 1, sequential_url) == 0
    assert_same_tables(pooled, _run(validated, sequential_url, threads=1))


def test_no_pool_for_few_stores_one_thread_or_an_in_memory_warehouse():
    assert pool_workers(MIN_POOL_STORES - 1, 2, "sqlite:///w.sqlite") == 0
    assert pool_workers(MIN_POOL_STORES, 1, "sqlite:///w.sqlite") == 0
    assert pool_workers(MIN_POOL_STORES, 2, "sqlite://") == 0
    assert pool_workers(MIN_POOL_STORES, 8, "sqlite:///w.sqlite") == 8


def test_a_worker_that_dies_fails_its_store_only_and_the_run_goes_on(caplog):
    stores = ("store_a", "store_b", "store_c", "store_d", "store_e", "store_f")
    with caplog.at_level(logging.ERROR, logger="quimbi_pipeline"):
        outcomes = run_in_pool(iter([(store,) for store in stores]), "sqlite:///unused.sqlite", 2,
                               lambda store, message: StoreOutcome(store, False, error=message), work=dies_on_store_b)
    by_store = {o.store_id: o for o in outcomes}
    assert len(outcomes) == len(stores) and sorted(by_store) == list(stores)
    assert by_store["store_b"].ok is False and by_store["store_b"].error == WORKER_DIED
    # The stores in flight beside store_b when its worker died are retried alone: whatever the timing,
    # every other store ends with its own outcome.
    assert [s for s in stores if by_store[s].ok and by_store[s].n_profiles == 1] == [s for s in stores if s != "store_b"]
    assert caplog.text.count(WORKER_DIED) == 1 and f"store store_b: {WORKER_DIED}" in caplog.text


def _pids(stores: tuple[str, ...]) -> dict[str, int]:
    outcomes = run_in_pool(iter([(store,) for store in stores]), "sqlite:///unused.sqlite", 2,
                           lambda store, message: StoreOutcome(store, False, error=message), work=worker_pid)
    return {o.store_id: (o.n_profiles if o.ok else None) for o in outcomes}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a child that ended but was not reaped yet is a zombie ("Z")
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_kept_pools_reuse_their_workers_across_dates_and_replace_a_broken_one():
    stores = ("store_a", "store_c", "store_d", "store_e")
    first, second = _pids(stores), _pids(stores)  # outside the block: a new pool, new processes, for each call
    assert not set(first.values()) & set(second.values())
    with kept_pools():
        dates = [_pids(stores) for _ in range(2)]  # a run's dates
        with kept_pools():  # a step's own block inside the run's (quimbi run): the outer block keeps the pool
            dates.append(_pids(stores))
        dates.append(_pids(stores))
        workers = set(dates[0].values())
        assert len(workers) == 2 and all(set(d.values()) <= workers for d in dates[1:])
        broken = _pids(("store_a", "store_b", "store_c"))  # a worker dies: its store fails, the others are retried
        assert broken["store_b"] is None and broken["store_a"] and broken["store_c"]
        after = _pids(stores)  # the broken pool was replaced, not reused
        assert len(set(after.values())) == 2 and not set(after.values()) & workers
    assert not any(_alive(pid) for pid in after.values())  # the block ended the kept pool's processes
    with kept_pools():
        before = _pids(stores)
        end_kept_pools()  # what a large store in the main process does first
        assert not any(_alive(pid) for pid in before.values())
        assert not set(_pids(stores).values()) & set(before.values())  # the block goes on with new workers


def test_a_worker_keeps_its_warehouse_from_store_to_store_until_a_stores_work_raises(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    Warehouse(url).dispose()
    jobs = [("store_a",), ("store_b",), ("store_raises",), ("store_c",), ("store_d",)]
    outcomes = {o.store_id: o for o in run_in_pool(iter(jobs), url, 1, lambda store, message: None, work=warehouse_tag)}
    tags = {store: o.error for store, o in outcomes.items()}
    assert tags["store_a"] == tags["store_b"]  # one engine and catalog read for both
    assert not outcomes["store_raises"].ok and tags["store_raises"] == "the store's work failed"
    assert tags["store_c"] == tags["store_d"] != tags["store_a"]  # a new warehouse after the one that raised
    tag = []
    in_worker(url, lambda warehouse: tag.append(hasattr(warehouse, "test_tag")))  # the main process keeps none
    assert store_pool._kept_warehouse is None and tag == [False]


def test_a_large_store_in_the_main_process_ends_the_kept_workers_first(monkeypatch, tmp_path):
    """Idle workers would hold their memory beside a large store's peak: the partitions end them before it runs."""
    from quimbi_pipeline.run import drift_partition, profiles_partition

    validated = validate_orders(generate_demo(n_customers=60, n_stores=2, seed=3).orders)
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    calls: list[str] = []
    real_one_store = profiles_partition.run_one_store
    monkeypatch.setattr(profiles_partition, "SMALL_ROWS", 1)  # every store is large
    monkeypatch.setattr(profiles_partition, "end_kept_pools", lambda: calls.append("end"))
    monkeypatch.setattr(profiles_partition, "run_one_store", lambda *a, **k: calls.append("store") or real_one_store(*a, **k))
    settings = ALL_ON.model_copy(update={"threads": 1})
    assert not run_profiles_partition(validated, "2026-10-31", wh, settings).failed
    assert calls == ["end", "store", "end", "store"]
    ended = []
    monkeypatch.setattr(drift_partition, "end_kept_pools", lambda: ended.append(1))
    assert all(o.ok for o in run_drift_partition(wh, "2026-10-31", settings))
    assert ended == [1]
    wh.dispose()


def test_automatic_threads_take_no_more_cores_than_other_work_leaves_idle(monkeypatch):
    from quimbi_pipeline.runtime import threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    assert threads.threads_for(threads.SMALL_ROWS - 1, 2, automatic=True) == 1  # small data: one thread, no sampling
    monkeypatch.setattr(threads, "idle_cores", lambda sample_s: 1)
    assert threads.threads_for(threads.SMALL_ROWS, 2, automatic=True) == 1
    assert threads.threads_for(threads.SMALL_ROWS, 2) == 2  # QUIMBI_THREADS given: used as given
    monkeypatch.setattr(threads, "idle_cores", lambda sample_s: 2)
    assert threads.threads_for(threads.SMALL_ROWS, 2, automatic=True) == 2
    monkeypatch.undo()
    # Measured: with as many CPU-bound processes as usable cores, at most one is idle (what else runs may take more).
    cores = threads.usable_cores()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)
        assert threads.idle_cores(0.3) <= max(1, cores // 2)
    finally:
        for hog in hogs:
            hog.kill()


def test_limited_threads_limit_every_blas_and_openmp_pool_with_a_kept_controller(monkeypatch):
    import sklearn.cluster  # noqa: F401 (its OpenMP library loaded)
    import threadpoolctl

    from quimbi_pipeline.runtime import threads

    def counts() -> dict[str, int]:
        return {lib["filepath"]: lib["num_threads"] for lib in threadpoolctl.threadpool_info()}

    before = counts()
    if not any(n > 1 for n in before.values()):
        pytest.skip("every BLAS/OpenMP pool already has one thread here (one core, or *_NUM_THREADS=1): no limit to see")
    for _ in range(2):  # the second block reuses the first's controller
        with threads.limited_threads(10, 2) as n:
            assert n == 1 and set(counts().values()) == {1}
        assert counts() == before
    kept = threads._controller()
    assert threads._controller() is kept  # nothing imported since: no new scan
    monkeypatch.setitem(sys.modules, "quimbi_pipeline_tests.just_imported", types.ModuleType("just_imported"))
    assert threads._controller() is not kept  # a module imported since: the libraries are scanned again


def test_each_store_gets_its_own_orders_in_order_from_one_sort():
    """rows_by_store equals a mask per store: ascending positions, the kept rows only, empty for a store with none kept."""
    rng = np.random.default_rng(5)
    names = pd.Index(["a", "b", "c", "d"])
    codes = rng.integers(0, 3, 1000)  # store "d" has no orders
    keep = rng.random(1000) < 0.7
    keep[codes == 2] = False  # nor has "c" any kept
    got = rows_by_store(codes, keep, names)
    assert list(got) == list(names)
    for k, name in enumerate(names):
        np.testing.assert_array_equal(got[name], np.flatnonzero(keep & (codes == k)))
