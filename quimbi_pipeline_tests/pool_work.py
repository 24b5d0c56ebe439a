"""Work for store_pool's worker processes in tests. Spawned workers import the module of the function they run:
this one imports nothing of the product, so a test's pool starts in a fraction of a second."""

from __future__ import annotations

import logging
import os
import time
from typing import NamedTuple


class Done(NamedTuple):
    """What a store's outcome holds that run_in_pool's tests read."""

    store_id: str
    ok: bool
    n_profiles: int
    error: str | None = None


def dies_on_store_b(_url: str, job: tuple):
    """Kills its process on store_b (as the kernel's OOM killer would); the other stores take a moment, so some are
    in flight when it dies."""
    if job[0] == "store_b":
        os._exit(9)
    time.sleep(0.5)
    return Done(job[0], True, 1), [("quimbi_pipeline.run.one_store", logging.INFO, f"done {job[0]}")]


def worker_pid(_url: str, job: tuple):
    """Reports which process ran it (store_b's kills its process, as above)."""
    if job[0] == "store_b":
        os._exit(9)
    time.sleep(0.2)  # long enough that both workers of a pool take a job
    return Done(job[0], True, os.getpid()), []


def warehouse_tag(url: str, job: tuple):
    """store_pool.in_worker's warehouse, tagged the first time a job sees it: jobs of one worker report the same tag while
    it is kept. store_raises raises inside in_worker (its outcome says so)."""
    import uuid

    from quimbi_pipeline.run.store_pool import in_worker

    def work(warehouse):
        if job[0] == "store_raises":
            raise RuntimeError("the store's work failed")
        if not hasattr(warehouse, "test_tag"):
            warehouse.test_tag = uuid.uuid4().hex
        return Done(job[0], True, 0, warehouse.test_tag)

    try:
        return in_worker(url, work)
    except RuntimeError as exc:
        return Done(job[0], False, 0, str(exc)), []
