"""Rewriting a PostgreSQL snapshot partition after a prune updated its rows, so that it does not stay twice its size.

The prune clears expired types' bits with an UPDATE: the old row versions are dead, and an old date never receives
new rows to reuse their space. VACUUM FULL rewrites the partition without them, but only without the versions no
open snapshot may still read: a session of the database whose snapshot is older than the prune's commit (an
analyst's long query, another store's drift read, an autovacuum ANALYZE) keeps them all, and the copy is as large
as before.

So the prune records each partition it updated in `snapshot_rewrites`, with its transaction id, in the same
transaction as the UPDATE (a prune killed before the rewrite leaves the record, not a silent doubling). The rewrite
(`rewrite_requested`, after the prune has let runs start again) waits, up to `wait_seconds`, until no session holds a
snapshot from before the newest recorded prune, then VACUUM FULLs each recorded partition and deletes its record.
When a session outlives the wait (or a partition stays locked by a writer past LOCK_TIMEOUT) the partition is
rewritten as far as it can be, or not at all, the record stays for the next prune, and a warning names the sessions.
Nothing is read differently meanwhile: only space is at stake, never rows.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from quimbi_pipeline.storage.connection import PG_SCHEMA, metadata

log = logging.getLogger(__name__)
REWRITE_WAIT_SECONDS = 120.0
LOCK_TIMEOUT = "30s"  # a partition a writer holds longer is left for the next prune
XID_MODULUS = 2**32  # pg_current_xact_id() counts epochs; a session's backend_xmin is the 32-bit xid

# Partitions a prune updated and that are not yet rewritten without their dead versions (PostgreSQL only).
snapshot_rewrites = sa.Table(
    "snapshot_rewrites", metadata,
    sa.Column("partition_name", sa.Text, primary_key=True),
    sa.Column("requested_xid", sa.BigInteger, nullable=False),  # the newest prune that updated it (epoch-extended)
    sa.Column("requested_at", sa.DateTime, nullable=False),
)

# Sessions of this database holding a snapshot or a transaction id not newer than the prune's (:xid): VACUUM keeps
# every version such a session may still read. A plain (auto)VACUUM's own snapshot does not hold anything back.
_OLDER_SESSIONS_SQL = """
SELECT pid, backend_type, coalesce(application_name, '') AS application_name, coalesce(state, '') AS state, xact_start
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND ((backend_xmin IS NOT NULL AND age(backend_xmin) >= age(CAST(:xid AS xid)))
       OR (backend_xid IS NOT NULL AND age(backend_xid) >= age(CAST(:xid AS xid))))
  AND NOT (backend_type = 'autovacuum worker' AND query LIKE 'autovacuum: VACUUM %' AND query NOT LIKE '%ANALYZE%')
"""


def request_rewrites(conn: sa.Connection, partitions: list[str]) -> None:
    """Record the partitions the caller's transaction updated, with its transaction id (assigned now if it has none)."""
    if not partitions:
        return
    xid = int(conn.execute(sa.text("SELECT pg_current_xact_id()::text")).scalar_one())
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    insert = postgresql.insert(snapshot_rewrites).values([{"partition_name": p, "requested_xid": xid, "requested_at": now}
                                                          for p in dict.fromkeys(partitions)])
    conn.execute(insert.on_conflict_do_update(index_elements=["partition_name"],
                                              set_={"requested_xid": insert.excluded.requested_xid,
                                                    "requested_at": insert.excluded.requested_at}))


def pending_rewrites(conn: sa.Connection) -> list[str]:
    return list(conn.execute(sa.select(snapshot_rewrites.c.partition_name).order_by(snapshot_rewrites.c.partition_name)).scalars())


def sessions_older_than(conn: sa.Connection, xid: int) -> list[dict]:
    return [dict(row._mapping) for row in conn.execute(sa.text(_OLDER_SESSIONS_SQL), {"xid": str(xid % XID_MODULUS)})]


def rewrite_requested(engine: sa.Engine, partitions: Callable[[sa.Connection], list[str]],
                      wait_seconds: float = REWRITE_WAIT_SECONDS) -> list[str]:
    """VACUUM FULL every recorded partition once no session holds a snapshot from before the newest recorded prune
    (waiting up to `wait_seconds`); returns the partitions whose record stays (see the module's docstring).
    `partitions(conn)`: the snapshot table's partitions as they are now (Connection.date_partitions)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        requested = dict(conn.execute(sa.select(snapshot_rewrites.c.partition_name, snapshot_rewrites.c.requested_xid)).all())
        if not requested:
            return []
        newest = max(requested.values())
        deadline = time.monotonic() + wait_seconds
        older = sessions_older_than(conn, newest)
        while older and time.monotonic() < deadline:
            time.sleep(0.2)
            older = sessions_older_than(conn, newest)
        existing = set(partitions(conn))
        done, locked = [p for p in requested if p not in existing], []  # a dropped partition needs nothing more
        conn.execute(sa.text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
        try:
            for partition in sorted(set(requested) & existing):
                try:
                    conn.execute(sa.text(f"VACUUM (FULL, ANALYZE) {PG_SCHEMA}.{partition}"))
                except sa.exc.OperationalError as error:  # lock_timeout: a writer holds the partition
                    log.warning("snapshot partition %s not rewritten: %s", partition, str(error.orig).strip().splitlines()[0])
                    locked.append(partition)
                    continue
                if not older:
                    done.append(partition)
        finally:
            conn.execute(sa.text("RESET lock_timeout"))
        for partition in done:  # a prune that recorded it again since keeps its newer record
            conn.execute(snapshot_rewrites.delete().where(snapshot_rewrites.c.partition_name == partition,
                                                          snapshot_rewrites.c.requested_xid <= requested[partition]))
        left = sorted(set(requested) - set(done))
        if older and left:
            log.warning("snapshot partition(s) %s rewritten while %d session(s) held a snapshot from before the prune "
                        "(%s): their dead row versions keep their space until the next prune rewrites them again",
                        ", ".join(p for p in left if p not in locked), len(older),
                        "; ".join(f"pid {s['pid']} {s['backend_type']} {s['application_name']!r} {s['state']} since {s['xact_start']}"
                                  for s in older))
    return left
