"""Retention for every table the pipeline writes (RetentionPolicy in snapshots.py), in bulk, per store.

- snapshots by type (Warehouse.prune_snapshots: the type's bit cleared, a row without types deleted); snapshot_blocks,
  snapshot_writes and store_shards go with the last snapshot of their date;
- the drift tables, anomalies, drift inputs, population drift and outlier flags by date (TABLE_RETENTION),
  counted from the store's newest date in that table, as the snapshots are; customer_drift (with
  its axes, the customer_axis_drift view) keeps `drift` days (1 = the current state) and are also cut at every drift write;
- segment_models fitted before the `models` cutoff that no kept profile or snapshot names, and their
  segment_transitions.

customer_profiles holds one row per customer (the newest) and is never pruned. On PostgreSQL a date
partition that holds only expired rows is dropped whole instead of deleted row by row.
"""

from __future__ import annotations

import logging

import pandas as pd
import sqlalchemy as sa

from quimbi_pipeline.history.snapshots import TABLE_RETENTION
from quimbi_pipeline.settings import RetentionPolicy
from quimbi_pipeline.storage import PG_SCHEMA, Warehouse
from quimbi_pipeline.storage.connection import stores_left_out
from quimbi_pipeline.storage.leases import EVERY_STORE, pruning

log = logging.getLogger(__name__)
EXPIRY_COLUMNS = ["table", "store_id", "newest", "cutoff", "expired"]


def dated_cutoffs(wh: Warehouse, table: str, policy: RetentionPolicy) -> dict[str, tuple]:
    """{store: (the store's newest date in the table, the cutoff)}: rows dated before the cutoff are expired."""
    column, field = TABLE_RETENTION[table]
    newest = wh.read_sql(f"SELECT store_id, max({column}) AS newest FROM {wh.qualified(table)} GROUP BY store_id")
    return {store: (d.date(), policy.cutoff(field, d).date()) for store, d in zip(newest["store_id"], pd.to_datetime(newest["newest"]))}


def expiry(wh: Warehouse, policy: RetentionPolicy) -> pd.DataFrame:
    """Per table and store: newest date, cutoff and the number of expired rows (snapshots per type as
    table 'customer_profile_snapshots/<type>')."""
    rows = []
    with wh.engine.connect() as conn:
        for table, (column, _) in TABLE_RETENTION.items():
            for store, (newest, cutoff) in dated_cutoffs(wh, table, policy).items():
                n = conn.execute(sa.text(f"SELECT count(*) FROM {wh.qualified(table)} WHERE store_id = :s AND {column} < :c"),
                                 {"s": store, "c": cutoff}).scalar_one()
                rows.append({"table": table, "store_id": store, "newest": newest, "cutoff": cutoff, "expired": int(n)})
    snapshots = wh.snapshot_expiry(policy)
    rows += [{"table": f"customer_profile_snapshots/{r.snapshot_type}", "store_id": r.store_id, "newest": r.newest,
              "cutoff": r.cutoff, "expired": r.expired} for r in snapshots.itertuples()]
    return pd.DataFrame(rows, columns=EXPIRY_COLUMNS)


def expire_dated_rows(wh: Warehouse, conn: sa.Connection, table: str, store: str, cutoff) -> int:
    """Delete the store's rows of `table` dated before `cutoff` inside the caller's transaction; returns how many.

    A PostgreSQL date partition older than the cutoff that holds no other store's rows is dropped whole. The table,
    then the partition, are locked first without waiting (a query of the table locks it before its partitions: in
    that order no reader and this can wait for each other; the partition first deadlocked readers of the table that
    came in between); one in use is left to row deletes."""
    column, _ = TABLE_RETENTION[table]
    deleted = 0
    for partition in wh.date_partitions(table, conn):
        day = pd.Timestamp(partition[len(table) + 2:]).date()
        if day >= cutoff:
            continue
        name = f"{PG_SCHEMA}.{partition}"
        savepoint = conn.begin_nested()
        try:
            conn.execute(sa.text(f"LOCK TABLE {wh.qualified(table)} IN ACCESS EXCLUSIVE MODE NOWAIT"))
            conn.execute(sa.text(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE NOWAIT"))
        except sa.exc.OperationalError:  # in use by another store's write: delete this store's rows below
            savepoint.rollback()
            continue
        others = conn.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {name} WHERE store_id <> :s)"), {"s": store}).scalar_one()
        if others:
            savepoint.commit()
            continue
        deleted += conn.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar_one()
        conn.execute(sa.text(f"DROP TABLE {name}"))
        savepoint.commit()
    result = conn.execute(sa.text(f"DELETE FROM {wh.qualified(table)} WHERE store_id = :s AND {column} < :c"), {"s": store, "c": cutoff})
    return deleted + int(result.rowcount or 0)


DRIFT_STATE_TABLES = ("customer_drift",)  # its axes are in its rows (the customer_axis_drift view)


def drift_state_cutoff(wh: Warehouse, store: str, policy: RetentionPolicy, as_of=None) -> pd.Timestamp:
    """The oldest as_of date of the store's kept drift state, counted from its newest (or as_of when newer)."""
    newest = wh.read_sql(f"SELECT max(as_of_date) AS d FROM {wh.qualified('customer_drift')} WHERE store_id = :s", {"s": store})["d"].iloc[0]
    dates = [pd.Timestamp(d) for d in (newest, as_of) if d is not None and not pd.isna(d)]
    if not dates:
        return pd.Timestamp.min
    return policy.cutoff("drift", max(dates))


def keep_drift_state(wh: Warehouse, store: str, policy: RetentionPolicy) -> int:
    """Remove the store's customer_drift rows (their axes with them) older than the kept state; returns how many."""
    cutoff = drift_state_cutoff(wh, store, policy)
    if cutoff == pd.Timestamp.min:
        return 0
    with wh.engine.begin() as conn:
        return sum(expire_dated_rows(wh, conn, table, store, cutoff.date()) for table in DRIFT_STATE_TABLES)


def _prune_models(wh: Warehouse, conn: sa.Connection, policy: RetentionPolicy, leased: frozenset[str] = frozenset()) -> list[dict]:
    """segment_models fitted before the cutoff (from the store's newest fit) that no kept profile or snapshot
    names; then the transitions of models no longer kept."""
    models, transitions = wh.qualified("segment_models"), wh.qualified("segment_transitions")
    newest = wh.read_sql(f"SELECT store_id, max(fitted_on) AS newest FROM {models} GROUP BY store_id")
    rows = []
    for store, day in zip(newest["store_id"], pd.to_datetime(newest["newest"])):
        if store in leased:
            continue
        cutoff = policy.cutoff("models", day).date()
        deleted = conn.execute(sa.text(
            f"DELETE FROM {models} WHERE store_id = :s AND fitted_on < :c "
            f"AND model_version NOT IN (SELECT DISTINCT model_version FROM {wh.qualified('customer_profiles')} WHERE store_id = :s) "
            # The kept snapshots' models: their layouts' (the snapshot prune, run first, removed the unused layouts).
            f"AND model_version NOT IN (SELECT name FROM {wh.qualified('snapshot_layouts')} WHERE store_id = :s AND kind = 'v')"),
            {"s": store, "c": cutoff}).rowcount
        gone = conn.execute(sa.text(
            f"DELETE FROM {transitions} WHERE store_id = :s AND model_version NOT IN (SELECT model_version FROM {models} WHERE store_id = :s)"),
            {"s": store}).rowcount
        rows += [{"table": "segment_models", "store_id": store, "cutoff": cutoff, "deleted": int(deleted or 0)},
                 {"table": "segment_transitions", "store_id": store, "cutoff": cutoff, "deleted": int(gone or 0)}]
    return rows


def prune(wh: Warehouse, policy: RetentionPolicy) -> pd.DataFrame:
    """Every table's expired rows deleted (snapshots first, in their own transaction; then the dated tables and
    the models in one); returns rows deleted per table and store. Stores a run is using (leases.py) are left alone
    until a prune after that run. The snapshot partitions it updated are rewritten after it has let runs start again
    (a rewrite changes no row, and may wait for sessions: partition_rewrites.py)."""
    with pruning(wh) as leased:
        if EVERY_STORE in leased:
            log.warning("pruning left every store alone: a run is using the whole warehouse (pruned by a later prune)")
            pruned = pd.DataFrame(columns=["table", "store_id", "cutoff", "deleted"])
        else:
            if leased:
                log.warning("pruning left store(s) %s alone: a run is using them (pruned by a later prune)", ", ".join(sorted(leased)))
            pruned = _prune(wh, policy, frozenset(leased))
    wh.rewrite_snapshot_partitions()
    return pruned


def _prune(wh: Warehouse, policy: RetentionPolicy, leased: frozenset[str]) -> pd.DataFrame:
    snapshots = wh.prune_snapshots(policy, leased, rewrite=False)
    rows = [{"table": f"customer_profile_snapshots/{r.snapshot_type}", "store_id": r.store_id, "cutoff": r.cutoff, "deleted": r.deleted}
            for r in snapshots.itertuples()]
    cutoffs = {table: dated_cutoffs(wh, table, policy) for table in TABLE_RETENTION}
    with wh.engine.begin() as conn:
        for table, by_store in cutoffs.items():
            for store, (_, cutoff) in by_store.items():
                if store not in leased:
                    rows.append({"table": table, "store_id": store, "cutoff": cutoff, "deleted": expire_dated_rows(wh, conn, table, store, cutoff)})
        rows += _prune_models(wh, conn, policy, leased)
        # Bookkeeping of snapshot dates no snapshot is kept of (a rewrite of such a date starts afresh): the snapshot
        # writes and a sharded store's written shards.
        snaps = wh.qualified("profile_snapshots")
        not_leased, params = stores_left_out(leased)
        for table, day in (("snapshot_writes", "snapshot_date"), ("store_shards", "as_of_date")):
            kept = wh.qualified(table)
            conn.execute(sa.text(f"DELETE FROM {kept} WHERE NOT EXISTS (SELECT 1 FROM {snaps} s "
                                 f"WHERE s.store_id = {kept}.store_id AND s.snapshot_date = {kept}.{day}){not_leased}"), params)
    return pd.DataFrame(rows, columns=["table", "store_id", "cutoff", "deleted"])
