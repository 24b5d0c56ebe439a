"""`quimbi migrate`: upgrade a warehouse written by an earlier version in place, in one transaction.

Steps, each done only when the warehouse needs it (running it twice changes nothing):

1. snapshots -> a row per customer and date, its types as a set and its three JSON objects as value arrays
   in a layout kept once per store with the rows' model_version, their archetypes once per layout and
   dominant segments (snapshot_values.py). From either earlier shape:
   - a row per type (customer_profile_snapshots a table, every type of a date holding the same profile):
     the finest type's row is kept, with the date's types as bits;
   - a row per date with the JSON objects (profile_snapshots before 2026-11-26's second change).
   The rows are converted store by store and date by date (values_from_json) into the new table;
   customer_profile_snapshots and customer_snapshot_history are the views over it. Checked before committing:
   the view holds as many rows as before, type by type.
2. drift axes into their customer_drift rows: customer_axis_drift's rows become customer_drift.axes
   ({axis: [drift_score, direction, velocity, transitions]}) and customer_axis_drift the view over it.
   Checked before committing: the view holds as many rows as the table did.
3. outlier flags as current state plus events: outlier_rates gets each retained date's counts from the
   flags (dates it has no counts for), then unflagged rows dated before their store's newest flag date go;
   on PostgreSQL a customer_outlier_flags created date-partitioned becomes one table (outlier_tables.py
   says why).
4. customer_outlier_flags' index over every row (store, date, method, is_outlier) becomes one over the flagged
   rows only: a large store's daily write no longer keeps its unflagged rows in it. A warehouse not migrated
   works as before, with the slower write.
5. customer_profiles loses its (store_id, profile_date) index and, on PostgreSQL, is given a fillfactor of 45: a
   date's write then updates every row within its page (HOT) instead of writing a new version and index entries
   elsewhere. A warehouse not migrated works as before, with the slower write.

Tables and columns added since (nullable ones) are created as every start does (create_tables).
"""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from quimbi_pipeline.history.snapshot_values import (
    ARCHETYPE_COLUMNS,
    VALUE_COLUMNS,
    archetype_dictionary,
    values_from_json,
)
from quimbi_pipeline.history.snapshots import RETAINED_TYPES, TYPE_BITS
from quimbi_pipeline.storage.connection import PG_SCHEMA
from quimbi_pipeline.storage.drift_tables import AXIS_DRIFT_VIEW, axis_drift_view_sql
from quimbi_pipeline.storage.outlier_tables import FULL_INDEX, customer_outlier_flags
from quimbi_pipeline.storage.profile_tables import (
    DATE_INDEX,
    JSON_COLUMNS,
    PROFILES_FILLFACTOR,
)
from quimbi_pipeline.storage.snapshot_tables import (
    HISTORY_VIEW,
    SNAPSHOT_COPIED_COLUMNS,
    SNAPSHOTS,
    SNAPSHOTS_VIEW,
    old_snapshot_shape,
)

LEGACY_SNAPSHOTS = "legacy_profile_snapshots"  # the old rows while they are converted (inside the transaction)


def migrate(wh) -> list[str]:
    """Upgrade the warehouse (a Warehouse opened with create=False); returns what was done, one line per step."""
    done: list[str] = []
    with wh._schema_transaction() as conn:
        shape = old_snapshot_shape(conn)
        if shape:
            old_table = wh.qualified(SNAPSHOTS_VIEW if shape == "types" else SNAPSHOTS)
            # SQLite runs DDL outside a transaction unless one is open: a no-op DELETE opens it.
            conn.execute(sa.text(f"DELETE FROM {old_table} WHERE 1 = 0"))
            for view in (HISTORY_VIEW, SNAPSHOTS_VIEW if shape == "json" else None):
                if view:
                    conn.execute(sa.text(f"DROP VIEW IF EXISTS {wh.qualified(view)}"))  # they read the old table
            # A copy, not a rename: on PostgreSQL the old table's partitions and indexes hold the new table's names.
            conn.execute(sa.text(f"CREATE TABLE {wh.qualified(LEGACY_SNAPSHOTS)} AS SELECT * FROM {old_table}"))
            conn.execute(sa.text(f"DROP TABLE {old_table}"))  # PostgreSQL: its date partitions go with it
        axes = _axis_drift_folded(wh, conn)
        wh._create_missing(conn)
        wh.partitioned = wh._partitioned_tables(conn)
        if shape:
            done.append(_snapshots_compacted(wh, conn, shape))
        if axes:
            done.append(axes)
        outliers = _outlier_flags_as_events(wh, conn)
        if outliers:
            done.append(outliers)
        for step in (_flag_index_narrowed, _profiles_updated_in_place):
            change = step(wh, conn)
            if change:
                done.append(change)
    return done


def _snapshots_compacted(wh, conn: sa.Connection, shape: str) -> str:
    old = wh.qualified(LEGACY_SNAPSHOTS)
    json_text = ", ".join(f"CAST(o.{c} AS TEXT) AS {c}" for c in JSON_COLUMNS)
    copied = ", ".join(f"o.{c}" for c in (*SNAPSHOT_COPIED_COLUMNS, *ARCHETYPE_COLUMNS, "model_version"))
    if shape == "types":
        unknown = conn.execute(sa.text(
            f"SELECT DISTINCT snapshot_type FROM {old} WHERE snapshot_type NOT IN ({', '.join(repr(t) for t in RETAINED_TYPES)})")).scalars().all()
        if unknown:
            raise ValueError(f"{SNAPSHOTS_VIEW} holds snapshot types this version does not know: {sorted(unknown)}; nothing was changed")
        ranks = {t: i for i, t in enumerate(RETAINED_TYPES)}
        keys = ("store_id", "customer_id", "snapshot_date")
        # The finest type's row of each customer and date, with the sum of the date's type bits.
        source = (f"SELECT o.store_id, o.customer_id, o.snapshot_date, m.types AS snapshot_types, {copied}, {json_text} "
                  f"FROM {old} o JOIN (SELECT store_id, customer_id, snapshot_date, sum({_case('snapshot_type', TYPE_BITS)}) AS types, "
                  f"min({_case('snapshot_type', ranks)}) AS finest FROM {old} WHERE store_id = :s AND snapshot_date = :d "
                  f"GROUP BY store_id, customer_id, snapshot_date) m "
                  f"ON {' AND '.join(f'o.{k} = m.{k}' for k in keys)} AND {_case('o.snapshot_type', ranks)} = m.finest")
        before = dict(conn.execute(sa.text(f"SELECT snapshot_type, count(*) FROM {old} GROUP BY snapshot_type")).all())
    else:
        source = (f"SELECT o.store_id, o.customer_id, o.snapshot_date, o.snapshot_types, {copied}, {json_text} "
                  f"FROM {old} o WHERE o.store_id = :s AND o.snapshot_date = :d")
        sets = conn.execute(sa.text(f"SELECT snapshot_types, count(*) FROM {old} GROUP BY snapshot_types")).all()
        before = {t: n for t, n in ((t, sum(int(n) for mask, n in sets if int(mask) & bit)) for t, bit in TYPE_BITS.items()) if n}
    written = 0
    for store, day in conn.execute(sa.text(f"SELECT DISTINCT store_id, snapshot_date FROM {old} ORDER BY 1, 2")).all():
        rows = pd.DataFrame(conn.execute(sa.text(source), {"s": store, "d": day}).mappings().all())
        values = values_from_json(rows)
        archetypes = archetype_dictionary(values.frame["dominant_positions"], rows)
        wh._ensure_date_partition(conn, SNAPSHOTS, day)
        frame = rows[["store_id", "customer_id", "snapshot_date", "snapshot_types", *SNAPSHOT_COPIED_COLUMNS]].reset_index(drop=True)
        frame.insert(4, "layout_id", wh._write_layout(conn, store, values.layout, archetypes))
        wh._bulk_load(conn, wh.qualified(SNAPSHOTS), pd.concat([frame, values.frame[list(VALUE_COLUMNS)]], axis=1))
        written += len(frame)
    after = dict(conn.execute(sa.text(f"SELECT snapshot_type, count(*) FROM {wh.qualified(SNAPSHOTS_VIEW)} GROUP BY snapshot_type")).all())
    if before != after:
        raise RuntimeError(f"snapshot migration check failed (rows per type before {before}, after {after}); nothing was changed")
    conn.execute(sa.text(f"DROP TABLE {old}"))
    total = sum(before.values())
    if shape == "types":
        return f"snapshots: {total:,} rows (a row per type) -> {written:,} rows (a row per date, types as a set, values as arrays)"
    return f"snapshots: {written:,} rows of JSON objects -> value arrays in a layout per store"


def _axis_drift_folded(wh, conn: sa.Connection) -> str | None:
    """customer_axis_drift's rows into customer_drift.axes, then the table dropped (create_tables makes the view)."""
    schema = PG_SCHEMA if wh.is_postgres else None
    inspector = sa.inspect(conn)
    if AXIS_DRIFT_VIEW not in inspector.get_table_names(schema=schema):
        return None
    drift, axes = wh.qualified("customer_drift"), wh.qualified(AXIS_DRIFT_VIEW)
    conn.execute(sa.text(f"DELETE FROM {drift} WHERE 1 = 0"))  # SQLite: open the transaction before the DDL
    if "axes" not in {c["name"] for c in inspector.get_columns("customer_drift", schema=schema)}:
        conn.execute(sa.text(f"ALTER TABLE {drift} ADD COLUMN axes TEXT"))
    before = conn.execute(sa.text(f"SELECT count(*) FROM {axes}")).scalar_one()
    keys = ("store_id", "customer_id", "as_of_date", "window_days")
    if wh.is_postgres:
        conn.execute(sa.text(
            f"UPDATE {drift} d SET axes = a.axes FROM (SELECT {', '.join(keys)}, json_object_agg(axis, json_build_array(drift_score, direction, "
            f"velocity, transitions) ORDER BY axis)::text AS axes FROM {axes} GROUP BY {', '.join(keys)}) a "
            f"WHERE {' AND '.join(f'd.{k} = a.{k}' for k in keys)}"))
    else:
        conn.execute(sa.text(
            f"UPDATE {drift} SET axes = (SELECT json_group_object(axis, json_array(drift_score, direction, velocity, json(transitions))) "
            f"FROM (SELECT * FROM {axes} a WHERE {' AND '.join(f'a.{k} = {drift}.{k}' for k in keys)} ORDER BY axis))"))
    conn.execute(sa.text(f"UPDATE {drift} SET axes = '{{}}' WHERE axes IS NULL"))  # a row without axis rows: none in the view, as before
    if wh.is_postgres:
        conn.execute(sa.text(f"ALTER TABLE {drift} ALTER COLUMN axes SET NOT NULL"))
    conn.execute(sa.text(f"DROP TABLE {axes}"))  # PostgreSQL: its date partitions and the partial index go with it
    conn.execute(sa.text(axis_drift_view_sql(axes, drift, wh.is_postgres)))
    after = conn.execute(sa.text(f"SELECT count(*) FROM {axes}")).scalar_one()
    if before != after:
        raise RuntimeError(f"drift axes migration check failed ({before:,} axis rows before, {after:,} after); nothing was changed")
    return f"drift axes: {before:,} customer_axis_drift rows -> customer_drift.axes (customer_axis_drift is a view)"


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


def _index_names(wh, conn: sa.Connection, table: str) -> set[str]:
    return {i["name"] for i in sa.inspect(conn).get_indexes(table, schema=PG_SCHEMA if wh.is_postgres else None)}


def _flag_index_narrowed(wh, conn: sa.Connection) -> str | None:
    """customer_outlier_flags' index over every row replaced by the one over its flagged rows."""
    if FULL_INDEX not in _index_names(wh, conn, "customer_outlier_flags"):
        return None
    conn.execute(sa.text(f"DROP INDEX {wh.qualified(FULL_INDEX)}"))
    for index in customer_outlier_flags.indexes:
        index.create(conn, checkfirst=True)
    return f"outlier flags: the index of every row ({FULL_INDEX}) replaced by one of the flagged rows only"


def _profiles_updated_in_place(wh, conn: sa.Connection) -> str | None:
    """customer_profiles without its (store_id, profile_date) index, and on PostgreSQL with pages half filled by
    inserts: each date's update of a row then stays in its page (profile_tables.py says why)."""
    names = _index_names(wh, conn, "customer_profiles")
    options = conn.execute(sa.text("SELECT reloptions FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                           {"t": wh.qualified("customer_profiles")}).scalar_one() if wh.is_postgres else None
    fill = f"fillfactor={PROFILES_FILLFACTOR}"
    if DATE_INDEX not in names and (not wh.is_postgres or fill in (options or [])):
        return None
    conn.execute(sa.text(f"DROP INDEX IF EXISTS {wh.qualified(DATE_INDEX)}"))
    if wh.is_postgres:
        # New pages only: the rows already stored move to half-filled pages as the next date updates them.
        conn.execute(sa.text(f"ALTER TABLE {wh.qualified('customer_profiles')} SET (fillfactor = {PROFILES_FILLFACTOR})"))
    return (f"customer profiles: the (store, profile date) index ({DATE_INDEX}) dropped"
            + (f" and pages {PROFILES_FILLFACTOR}% filled by inserts" if wh.is_postgres else "")
            + ": a date's write updates each row in place")
