"""Prune and run side by side: a run leases the stores it reads and writes, and pruning leaves leased stores alone.

A run (a `quimbi run` over its dates, a Dagster run of the daily job from its profiles step to its drift step)
holds a lease on its stores (`*`: every store) in `run_leases`. A prune first marks itself running and reads the
leases, in one transaction, then prunes every store but the leased ones (they are pruned by the next prune after
their run). A run that starts while a prune runs waits for it to finish. Both steps happen under one lock
(PostgreSQL: a transaction-level advisory lock; SQLite: the database's write lock, taken by the transaction's first
statement), so a lease is either seen by the prune or taken after it has finished: a retained date a run is using
stays until the run ends, and a run's results are the same with or without a prune beside it.

A lease ends with its run; one left by a killed run expires after LEASE_HOURS, a killed prune's mark after
PRUNE_MINUTES.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
import uuid
from collections.abc import Iterator

import sqlalchemy as sa

from quimbi_pipeline.storage.connection import metadata

log = logging.getLogger(__name__)
LEASE_HOURS = 12
PRUNE_MINUTES = 60
EVERY_STORE = "*"
PRUNING = "!prune"  # the store_id of a prune's mark

run_leases = sa.Table(
    "run_leases", metadata,
    sa.Column("holder", sa.Text, primary_key=True),  # a run's id, or a prune's
    sa.Column("store_id", sa.Text, primary_key=True),  # a store, EVERY_STORE, or PRUNING
    sa.Column("expires_at", sa.DateTime, nullable=False),
)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def _locked(wh, conn: sa.Connection) -> None:
    """Serialize lease changes with a prune's start (see the module's docstring); expired leases go."""
    if wh.is_postgres:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('quimbi.leases'))"))  # named as the schema's and partitions' locks
    conn.execute(run_leases.delete().where(run_leases.c.expires_at < _now()))  # on SQLite the write lock from here on


def _take(wh, holder: str, stores: list[str] | None) -> bool:
    """The lease taken (True), or not while a prune runs (False)."""
    with wh.engine.begin() as conn:
        _locked(wh, conn)
        if conn.execute(sa.select(sa.func.count()).select_from(run_leases).where(run_leases.c.store_id == PRUNING)).scalar_one():
            return False
        conn.execute(run_leases.delete().where(run_leases.c.holder == holder))
        expires = _now() + datetime.timedelta(hours=LEASE_HOURS)
        conn.execute(run_leases.insert(), [{"holder": holder, "store_id": s, "expires_at": expires} for s in (stores or [EVERY_STORE])])
        return True


def hold(wh, holder: str, stores: list[str] | None, wait_s: float = 1800.0) -> None:
    """Lease `stores` (None: every store) to `holder`, waiting for a running prune to finish; taking it again renews it."""
    deadline = time.monotonic() + wait_s
    while not _take(wh, holder, stores):
        if time.monotonic() > deadline:
            raise TimeoutError(f"a prune has held the warehouse for over {wait_s:.0f} s: the run did not start")
        time.sleep(0.5)


def release(wh, holder: str) -> None:
    with wh.engine.begin() as conn:
        conn.execute(run_leases.delete().where(run_leases.c.holder == holder))


@contextlib.contextmanager
def run_lease(wh, stores: list[str] | None, holder: str | None = None) -> Iterator[str]:
    """Within the block, pruning leaves `stores` (None: every store) alone."""
    holder = holder or f"run-{uuid.uuid4().hex}"
    hold(wh, holder, stores)
    try:
        yield holder
    finally:
        release(wh, holder)


@contextlib.contextmanager
def pruning(wh) -> Iterator[set[str]]:
    """A prune's mark for the block's length; yields the stores leased by runs (EVERY_STORE among them: all are)."""
    holder = f"prune-{uuid.uuid4().hex}"
    with wh.engine.begin() as conn:
        _locked(wh, conn)
        leased = set(conn.execute(sa.select(run_leases.c.store_id).where(run_leases.c.store_id != PRUNING)).scalars())
        conn.execute(run_leases.insert(), [{"holder": holder, "store_id": PRUNING,
                                            "expires_at": _now() + datetime.timedelta(minutes=PRUNE_MINUTES)}])
    if leased:
        log.info("pruning leaves the stores runs are using alone: %s", ", ".join(sorted(leased)))
    try:
        yield leased
    finally:
        release(wh, holder)
