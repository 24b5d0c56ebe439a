"""`quimbi migrate`: upgrade a warehouse written by an earlier version in place, in one transaction.

Steps, each done only when the warehouse needs it (running it twice changes nothing):

1. snapshots, a row per type -> a row per date with the types as a set: the table
   customer_profile_snapshots (a row per customer, date and type, all types of a date holding the same
   profile) becomes profile_snapshots (the finest type's row, its types as bits); the name
   customer_profile_snapshots becomes the view giving the old rows back. Checked before committing: the
   view holds as many rows as the old table, type by type.
2. outlier flags as current state plus events: outlier_rates gets each retained date's counts from the
   flags (dates it has no counts for), then unflagged rows dated before their store's newest flag date go;
   on PostgreSQL a customer_outlier_flags created date-partitioned becomes one table (outlier_tables.py
   says why).

Tables and columns added since (nullable ones) are created as every start does (create_tables).
"""

from __future__ import annotations

import sqlalchemy as sa

from quimbi_pipeline.snapshots import RETAINED_TYPES, TYPE_BITS
from quimbi_pipeline.warehouse.outlier_tables import customer_outlier_flags
from quimbi_pipeline.warehouse.snapshot_tables import (
    HISTORY_VIEW,
    SNAPSHOT_COPIED_COLUMNS,
    SNAPSHOTS,
    SNAPSHOTS_VIEW,
    pending_migration,
)

LEGACY_SNAPSHOTS = "legacy_customer_profile_snapshots"  # the old table while it is copied (inside the transaction)


def migrate(wh) -> list[str]:
    """Upgrade the warehouse (a Warehouse opened with create=False); returns what was done, one line per step."""
    done: list[str] = []
    with wh._schema_transaction() as conn:
        legacy = pending_migration(conn) is not None
        if legacy:
            # SQLite runs DDL outside a transaction unless one is open: a no-op DELETE opens it.
            conn.execute(sa.text(f"DELETE FROM {wh.qualified(SNAPSHOTS_VIEW)} WHERE 1 = 0"))
            conn.execute(sa.text(f"DROP VIEW IF EXISTS {wh.qualified(HISTORY_VIEW)}"))  # it reads the old table
            conn.execute(sa.text(f"ALTER TABLE {wh.qualified(SNAPSHOTS_VIEW)} RENAME TO {LEGACY_SNAPSHOTS}"))
        wh._create_missing(conn)
        wh.partitioned = wh._partitioned_tables(conn)
        if legacy:
            done.append(_snapshots_as_type_sets(wh, conn))
        outliers = _outlier_flags_as_events(wh, conn)
        if outliers:
            done.append(outliers)
    return done


def _snapshots_as_type_sets(wh, conn: sa.Connection) -> str:
    old = wh.qualified(LEGACY_SNAPSHOTS)
    unknown = conn.execute(sa.text(
        f"SELECT DISTINCT snapshot_type FROM {old} WHERE snapshot_type NOT IN ({', '.join(repr(t) for t in RETAINED_TYPES)})")).scalars().all()
    if unknown:
        raise ValueError(f"{SNAPSHOTS_VIEW} holds snapshot types this version does not know: {sorted(unknown)}; nothing was changed")
    for day in conn.execute(sa.text(f"SELECT DISTINCT snapshot_date FROM {old}")).scalars():
        wh._ensure_date_partition(conn, SNAPSHOTS, day)
    bit = _case("snapshot_type", TYPE_BITS)
    ranks = {t: i for i, t in enumerate(RETAINED_TYPES)}
    rank, finest = _case("o.snapshot_type", ranks), _case("snapshot_type", ranks)
    keys = ("store_id", "customer_id", "snapshot_date")
    copied = ", ".join(SNAPSHOT_COPIED_COLUMNS)
    written = conn.execute(sa.text(
        f"INSERT INTO {wh.qualified(SNAPSHOTS)} (store_id, customer_id, snapshot_date, snapshot_types, {copied}) "
        f"SELECT o.store_id, o.customer_id, o.snapshot_date, m.types, {', '.join('o.' + c for c in SNAPSHOT_COPIED_COLUMNS)} "
        f"FROM {old} o JOIN (SELECT store_id, customer_id, snapshot_date, sum({bit}) AS types, min({finest}) AS finest "
        f"FROM {old} GROUP BY store_id, customer_id, snapshot_date) m "
        f"ON {' AND '.join(f'o.{k} = m.{k}' for k in keys)} AND {rank} = m.finest")).rowcount
    before = dict(conn.execute(sa.text(f"SELECT snapshot_type, count(*) FROM {old} GROUP BY snapshot_type")).all())
    after = dict(conn.execute(sa.text(f"SELECT snapshot_type, count(*) FROM {wh.qualified(SNAPSHOTS_VIEW)} GROUP BY snapshot_type")).all())
    if before != after:
        raise RuntimeError(f"snapshot migration check failed (rows per type before {before}, after {after}); nothing was changed")
    conn.execute(sa.text(f"DROP TABLE {old}"))  # PostgreSQL: its date partitions go with it
    return f"snapshots: {sum(before.values()):,} rows (a row per type) -> {written:,} rows (a row per date, types as a set)"


def _case(column: str, values: dict[str, int]) -> str:
    """SQL: the number of each snapshot type named in `column`."""
    return f"CASE {column} " + " ".join(f"WHEN '{t}' THEN {v}" for t, v in values.items()) + " END"


def _outlier_flags_as_events(wh, conn: sa.Connection) -> str | None:
    flags, rates = wh.qualified("customer_outlier_flags"), wh.qualified("outlier_rates")
    counted = conn.execute(sa.text(
        f"INSERT INTO {rates} (store_id, flag_date, method, customers, flagged) "
        f"SELECT store_id, flag_date, method, count(*), sum(CASE WHEN is_outlier THEN 1 ELSE 0 END) FROM {flags} f "
        f"WHERE NOT EXISTS (SELECT 1 FROM {rates} r WHERE r.store_id = f.store_id AND r.flag_date = f.flag_date AND r.method = f.method) "
        "GROUP BY store_id, flag_date, method")).rowcount
    cut = 0
    for store, newest in conn.execute(sa.text(f"SELECT store_id, max(flag_date) FROM {flags} GROUP BY store_id")).all():
        cut += wh.cut_unflagged_outliers(conn, store, newest)
    done = f"outlier flags: rates of {int(counted or 0):,} store-date-methods counted; {cut:,} unflagged rows of earlier dates removed"
    if "customer_outlier_flags" not in wh.partitioned:
        return done if counted or cut else None
    legacy = "legacy_customer_outlier_flags"
    conn.execute(sa.text(f"ALTER TABLE {flags} RENAME TO {legacy}"))
    for index in customer_outlier_flags.indexes:  # the old table's index names are taken until it is dropped
        conn.execute(sa.text(f"ALTER INDEX IF EXISTS {wh.qualified(index.name)} RENAME TO legacy_{index.name}"))
    conn.execute(sa.text(f"ALTER TABLE {wh.qualified(legacy)} RENAME CONSTRAINT customer_outlier_flags_pkey TO legacy_customer_outlier_flags_pkey"))
    customer_outlier_flags.create(conn)
    conn.execute(sa.text(f"INSERT INTO {flags} SELECT {', '.join(c.name for c in customer_outlier_flags.columns)} FROM {wh.qualified(legacy)}"))
    conn.execute(sa.text(f"DROP TABLE {wh.qualified(legacy)}"))
    wh.partitioned.discard("customer_outlier_flags")
    return done + "; its date partitions became one table"
