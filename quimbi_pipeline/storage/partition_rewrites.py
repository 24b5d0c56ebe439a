"""Rewriting a PostgreSQL snapshot partition after a prune updated its rows, so that it does not stay twice its size.

The prune clears expired types' bits with an UPDATE: the old row versions are dead, and an old date never receives
new rows to reuse their space. VACUUM FULL rewrites the partition without them, but only without the versions no
open snapshot may still read: a session of the database whose snapshot is older than the prune's commit (an
analyst's long query, another store's drift read, an autovacuum ANALYZE) keeps them all, and the copy is as large
as before. So the rewrite first waits (up to `wait_seconds`) until no such snapshot is left. When one outlives the
wait the partition is rewritten anyway (what can go goes), a warning names the sessions, and the partition stays in
`snapshot_rewrites` for the next prune to rewrite again. Nothing is read differently meanwhile: only space is at
stake, never rows.
"""

from __future__ import annotations

import datetime
import logging
import time

import sqlalchemy as sa

from quimbi_pipeline.storage.connection import PG_SCHEMA, metadata

log = logging.getLogger(__name__)
REWRITE_WAIT_SECONDS = 120.0
XID_MODULUS = 2**32  # pg_current_xact_id() counts epochs; a session's backend_xmin is the 32-bit xid

# Partitions whose rewrite could not drop every dead version yet (PostgreSQL only; empty elsewhere).
snapshot_rewrites = sa.Table(
    "snapshot_rewrites", metadata,
    sa.Column("partition_name", sa.Text, primary_key=True),
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


def current_xid(conn: sa.Connection) -> str:
    """The caller's transaction id (assigned now if it has none), as the 32-bit xid sessions report."""
    return str(int(conn.execute(sa.text("SELECT pg_current_xact_id()::text")).scalar_one()) % XID_MODULUS)


def sessions_older_than(conn: sa.Connection, xid: str) -> list[dict]:
    return [dict(row._mapping) for row in conn.execute(sa.text(_OLDER_SESSIONS_SQL), {"xid": xid})]


def pending_rewrites(conn: sa.Connection) -> list[str]:
    return list(conn.execute(sa.select(snapshot_rewrites.c.partition_name).order_by(snapshot_rewrites.c.partition_name)).scalars())


def rewrite_partitions(engine: sa.Engine, partitions: list[str], xid: str, wait_seconds: float = REWRITE_WAIT_SECONDS) -> list[str]:
    """VACUUM FULL each partition once no session holds a snapshot from before transaction `xid` (the prune's,
    committed); returns the partitions left pending because one did after `wait_seconds`."""
    if not partitions:
        return []
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        deadline = time.monotonic() + wait_seconds
        older = sessions_older_than(conn, xid)
        while older and time.monotonic() < deadline:
            time.sleep(0.2)
            older = sessions_older_than(conn, xid)
        existing = set(conn.execute(sa.text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s"),
            {"s": PG_SCHEMA}).scalars())
        partitions = [p for p in dict.fromkeys(partitions) if p in existing]  # a pending one may have been dropped since
        for partition in partitions:
            conn.execute(sa.text(f"VACUUM (FULL, ANALYZE) {PG_SCHEMA}.{partition}"))
        left = partitions if older else []
        conn.execute(snapshot_rewrites.delete())
        if left:
            now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
            conn.execute(snapshot_rewrites.insert(), [{"partition_name": p, "requested_at": now} for p in left])
            log.warning("snapshot partition(s) %s rewritten while %d session(s) held a snapshot from before the prune "
                        "(%s): their dead row versions keep their space until the next prune rewrites them again",
                        ", ".join(left), len(older),
                        "; ".join(f"pid {s['pid']} {s['backend_type']} {s['application_name']!r} {s['state']} since {s['xact_start']}"
                                  for s in older))
    return left
