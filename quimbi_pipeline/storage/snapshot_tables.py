"""profile_snapshots (a date's frozen profiles, one row per customer and date with its calendar types as a
set) and the analysts' views over it (customer_profile_snapshots: a row per type; the one-row-per-date
history view), their columnar copy snapshot_blocks, the write log snapshot_writes; reads, expiry, prune."""

from __future__ import annotations

import bisect
import time
from datetime import date, timedelta
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import pandas as pd
import psycopg
import sqlalchemy as sa

from quimbi_pipeline.history.snapshot_values import (
    ARCHETYPE_COLUMNS,
    MODEL,
    VALUE_COLUMNS,
    SnapshotLayout,
    SnapshotValues,
    expand_values,
    layout_id,
    row_objects,
)
from quimbi_pipeline.history.snapshots import (
    CALENDAR_MASK,
    PROFILE_CHANGE,
    RETAINED_TYPES,
    TYPE_BITS,
    finest_type,
    snapshot_types_for,
    type_kept_at,
    type_mask,
)
from quimbi_pipeline.storage.connection import (
    PG_SCHEMA,
    metadata,
    staging_metadata,
    stores_left_out,
)
from quimbi_pipeline.storage.drift_tables import AXIS_DRIFT_VIEW
from quimbi_pipeline.storage.partition_rewrites import (
    REWRITE_WAIT_SECONDS,
    request_rewrites,
    rewrite_requested,
)
from quimbi_pipeline.storage.profile_tables import JSON_COLUMNS, customer_profiles

# Copied from the profile as they are. The three JSON objects are stored as arrays of their values in the
# order of a layout kept once in snapshot_layouts (with the rows' model_version), and the archetype, a
# function of the dominant segments, once per layout and dominant segments in snapshot_archetypes
# (snapshot_values.py).
SNAPSHOT_COPIED_COLUMNS = [
    "churn_risk_score", "churn_risk_level", "predicted_ltv", "expected_purchases", "total_orders", "lifetime_value",
    "days_since_first_order", "tenure_months",
]
# What a row does not store but the views and reads give back: the JSON objects, the archetype, the model.
DERIVED_COLUMNS = (*JSON_COLUMNS, *ARCHETYPE_COLUMNS, "model_version")

SNAPSHOTS = "profile_snapshots"
SNAPSHOTS_VIEW = "customer_profile_snapshots"  # the analysts' name: a row per (customer, date, type)
LAYOUTS = "snapshot_layouts"
# Snapshot block numbers per shard of a sharded store (run/shards.py): shard k's blocks are k * SHARD_BLOCKS onwards.
SHARD_BLOCKS = 1_000_000


class HistoryWindow(NamedTuple):
    """A customer's snapshot rows as stored (customer_history_window) and {layout_id: (layout, archetypes or None)}."""

    rows: list[dict]
    layouts: dict[int, tuple[SnapshotLayout, dict | None]]


# One row per (store, customer, date): every type of the date holds the same profile, so the types are a
# bit set (snapshots.TYPE_BITS) and expiring a type clears its bit. No surrogate id or created_at: a re-run
# of a date must leave byte-identical rows.
profile_snapshots = sa.Table(
    SNAPSHOTS, metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("snapshot_date", sa.Date, primary_key=True),
    sa.Column("snapshot_types", sa.SmallInteger, nullable=False),
    sa.Column("layout_id", sa.Integer, nullable=False),  # snapshot_layouts of the store: the names of the value arrays
    *[sa.Column(c.name, c.type, nullable=c.nullable) for c in customer_profiles.columns if c.name in SNAPSHOT_COPIED_COLUMNS],
    *[sa.Column(c, sa.Text, nullable=False) for c in VALUE_COLUMNS],  # JSON arrays as text (snapshot_values.py)
    sa.Index("ix_profile_snapshots_store_date_types", "store_id", "snapshot_date", "snapshot_types"),
    # PostgreSQL: one partition per snapshot date (created on first write). Measured: writes 1.75x
    # faster (smaller per-partition indexes) and pruning a fully expired date is a DROP, 5x faster
    # than DELETE (benchmarks/snapshot_partitioning.py, docs/snapshots.md).
    postgresql_partition_by="RANGE (snapshot_date)",
)

# The (axis, name) of each position of a snapshot row's value arrays, per store and layout (a content hash:
# a layout is written once and never changes, so readers may keep it).
snapshot_layouts = sa.Table(
    LAYOUTS, metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("layout_id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),  # m: membership_values (and dominant_positions), f: feature_values, v: model_version
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("axis", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
)

# A row's archetype by its store, layout and dominant segments (a handful per layout).
ARCHETYPES = "snapshot_archetypes"
snapshot_archetypes = sa.Table(
    ARCHETYPES, metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("layout_id", sa.Integer, primary_key=True),
    sa.Column("dominant_positions", sa.Text, primary_key=True),
    *[sa.Column(c.name, c.type, nullable=False) for c in customer_profiles.columns if c.name in ARCHETYPE_COLUMNS],
)

SNAPSHOT_PARTITION_PREFIX = f"{SNAPSHOTS}_p"

# The numbers of each date's calendar snapshots as columnar blocks, for the drift step
# (snapshot_blocks.py): a derived copy written with the snapshots, pruned with them.
snapshot_blocks = sa.Table(
    "snapshot_blocks", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("snapshot_date", sa.Date, primary_key=True),
    sa.Column("block", sa.Integer, primary_key=True),
    sa.Column("first_customer_id", sa.Text, nullable=False),
    sa.Column("last_customer_id", sa.Text, nullable=False),
    sa.Column("n_customers", sa.Integer, nullable=False),
    sa.Column("memberships", sa.LargeBinary, nullable=False),
    sa.Column("features", sa.LargeBinary, nullable=False),
)

# Bookkeeping for dates that arrive out of order: when each store's snapshots of a date were written, and
# which snapshot writes each drift date read. A backfill of an earlier date changes a later date's inputs;
# the drift step then recomputes that later date (pipeline.run_drift_partition).
snapshot_writes = sa.Table(
    "snapshot_writes", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("snapshot_date", sa.Date, primary_key=True),
    sa.Column("written_at", sa.Text, nullable=False),  # a time with microseconds, as text (same on both databases)
)

_TYPES_SQL = " UNION ALL ".join(f"SELECT '{t}' AS snapshot_type, {bit} AS bit" for t, bit in TYPE_BITS.items())
_FINEST_SQL = "CASE " + " ".join(f"WHEN (s.snapshot_types & {bit}) <> 0 THEN '{t}'" for t, bit in TYPE_BITS.items()) + " END"


def _json_sql(postgres: bool, layouts: str) -> dict[str, str]:
    """SQL expressions (over the snapshot row `s`) rebuilding its three JSON objects from the value arrays and
    the layout: jsonb on PostgreSQL, JSON text on SQLite (keys in layout order)."""
    def layout(kind: str, position: str) -> str:
        return (f"JOIN {layouts} l ON l.store_id = s.store_id AND l.layout_id = s.layout_id AND l.kind = '{kind}' "
                f"AND l.position = {position}")

    def nested(column: str, kind: str) -> str:
        if postgres:
            return (f"(SELECT jsonb_object_agg(axis, obj) FROM (SELECT l.axis, jsonb_object_agg(l.name, j.v) AS obj "
                    f"FROM jsonb_array_elements(s.{column}::jsonb) WITH ORDINALITY j(v, n) {layout(kind, 'j.n - 1')} GROUP BY l.axis) a)")
        return (f"(SELECT json_group_object(axis, json(obj)) FROM (SELECT l.axis AS axis, json_group_object(l.name, j.value) AS obj, "
                f"min(l.position) AS first FROM json_each(s.{column}) j {layout(kind, 'j.key')} GROUP BY l.axis ORDER BY first))")

    if postgres:
        dominant = (f"(SELECT jsonb_object_agg(l.axis, l.name) FROM jsonb_array_elements_text(s.dominant_positions::jsonb) j(v) "
                    f"{layout('m', 'j.v::int')})")
    else:
        dominant = f"(SELECT json_group_object(l.axis, l.name) FROM json_each(s.dominant_positions) j {layout('m', 'j.value')})"
    return {"dominant_segments": dominant, "fuzzy_memberships": nested("membership_values", "m"),
            "behavioral_features": nested("feature_values", "f")}


def _column_sql(column: str, json_sql: dict[str, str]) -> str:
    if column in json_sql:
        return f"{json_sql[column]} AS {column}"
    if column in ARCHETYPE_COLUMNS:
        return f"a.{column}"
    return "v.name AS model_version" if column == "model_version" else f"s.{column}"


def _lookups(archetypes: str, layouts: str) -> str:
    """The joins giving a snapshot row `s` its archetype (a) and model version (v)."""
    return (f" JOIN {archetypes} a ON a.store_id = s.store_id AND a.layout_id = s.layout_id AND a.dominant_positions = s.dominant_positions"
            f" JOIN {layouts} v ON v.store_id = s.store_id AND v.layout_id = s.layout_id AND v.kind = '{MODEL}'")


# The seed's shape, a row per (store, customer, date, type), for analysts and the README's queries.
VIEW_COLUMNS = ["archetype_id", "archetype_level", "archetype_name", "dominant_segments", "fuzzy_memberships", "behavioral_features",
                "churn_risk_score", "churn_risk_level", "predicted_ltv", "expected_purchases", "total_orders", "lifetime_value",
                "days_since_first_order", "tenure_months", "model_version"]


def snapshots_view_sql(view: str, table: str, postgres: bool, layouts: str, archetypes: str) -> str:
    json_sql = _json_sql(postgres, layouts)
    return (f"CREATE VIEW {view} AS SELECT s.store_id, s.customer_id, s.snapshot_date, t.snapshot_type, "
            f"{', '.join(_column_sql(c, json_sql) for c in VIEW_COLUMNS)} "
            f"FROM {table} s JOIN ({_TYPES_SQL}) t ON (s.snapshot_types & t.bit) <> 0{_lookups(archetypes, layouts)}")


# One row per (store, customer, date), shown as the finest type of the date.
HISTORY_VIEW = "customer_snapshot_history"
HISTORY_VIEW_COLUMNS = ["archetype_id", "archetype_name", "archetype_level", "dominant_segments", "fuzzy_memberships", "churn_risk_score",
                   "churn_risk_level", "predicted_ltv", "model_version"]


def history_view_sql(view: str, table: str, postgres: bool, layouts: str, archetypes: str) -> str:
    json_sql = _json_sql(postgres, layouts)
    return (f"CREATE VIEW {view} AS SELECT s.store_id, s.customer_id, s.snapshot_date, {_FINEST_SQL} AS snapshot_type, "
            f"{', '.join(_column_sql(c, json_sql) for c in HISTORY_VIEW_COLUMNS)} FROM {table} s{_lookups(archetypes, layouts)}")


class NeedsMigration(RuntimeError):
    """The warehouse was written by an earlier version in a shape this one does not read (storage/migrate.py)."""


def old_snapshot_shape(conn: sa.Connection) -> str | None:
    """The earlier snapshot shape this warehouse holds: 'types' (customer_profile_snapshots a table with a row
    per type), 'json' (profile_snapshots rows holding JSON objects), or None (this version's)."""
    schema = PG_SCHEMA if conn.dialect.name == "postgresql" else None
    inspector = sa.inspect(conn)
    tables = inspector.get_table_names(schema=schema)
    if SNAPSHOTS_VIEW in tables:
        return "types"
    if SNAPSHOTS in tables and "fuzzy_memberships" in {c["name"] for c in inspector.get_columns(SNAPSHOTS, schema=schema)}:
        return "json"
    return None


def pending_migration(conn: sa.Connection) -> str | None:
    """Why this warehouse must be migrated before use, or None."""
    shape = old_snapshot_shape(conn)
    if shape == "types":
        held = f"{SNAPSHOTS_VIEW} is a table with a row per type"
    elif shape == "json":
        held = f"{SNAPSHOTS} holds JSON objects, not value arrays"
    elif AXIS_DRIFT_VIEW in sa.inspect(conn).get_table_names(schema=PG_SCHEMA if conn.dialect.name == "postgresql" else None):
        held = f"{AXIS_DRIFT_VIEW} is a table, not a view of customer_drift.axes"
    else:
        return None
    return f"this warehouse was written by an older quimbi_pipeline ({held}): upgrade it once with `quimbi migrate [--warehouse URL]`"


def possible_type_sets(day) -> list[int]:
    """Every type set a row dated `day` can hold: a subset of the date's calendar types (retention clears
    bits; a run may write a subset), with or without profile_change; never empty."""
    calendar = [TYPE_BITS[t] for t in snapshot_types_for(day)]
    subsets = {sum(b for i, b in enumerate(calendar) if pick >> i & 1) for pick in range(1 << len(calendar))}
    return sorted(m | change for m in subsets for change in (0, TYPE_BITS[PROFILE_CHANGE]) if m | change)


def has_type(bit_of: str) -> str:
    """SQL: the row's type set holds the type (a literal bit: the planner sees a constant)."""
    return f"(snapshot_types & {TYPE_BITS[bit_of]}) <> 0"


changed_customers = sa.Table("changed_customers", staging_metadata, sa.Column("customer_id", sa.Text, primary_key=True))

rollout_customers = sa.Table("rollout_customers", staging_metadata, sa.Column("customer_id", sa.Text, primary_key=True))


@lru_cache(maxsize=512)
def _union_sql(outer: str, columns: str, where: str, days: tuple[date, ...]) -> str:
    """`[outer,] columns` of the rows `where` in the date partitions of `days`, by date: the text is kept (a read API
    worker builds the same few statements all day; formatting a dozen partition names was 3% of a history read)."""
    union = " UNION ALL ".join(f"SELECT {columns} FROM {PG_SCHEMA}.{SNAPSHOT_PARTITION_PREFIX}{d:%Y%m%d} {where}" for d in days)
    return f"SELECT {outer + ', ' if outer else ''}w.* FROM ({union}) w ORDER BY snapshot_date"


class SnapshotStore:
    def _finish_snapshot_schema(self, conn: sa.Connection) -> None:
        """Storage settings and the views (create_tables)."""
        if self.is_postgres:
            # The blocks are lz4-compressed already: TOAST out of line without compressing again.
            for column in ("memberships", "features"):
                conn.execute(sa.text(f"ALTER TABLE {self.qualified('snapshot_blocks')} ALTER COLUMN {column} SET STORAGE EXTERNAL"))
        reason = pending_migration(conn)
        if reason:
            raise NeedsMigration(reason)
        views = sa.inspect(conn).get_view_names(schema=PG_SCHEMA if self.is_postgres else None)
        for name, sql in ((SNAPSHOTS_VIEW, snapshots_view_sql), (HISTORY_VIEW, history_view_sql)):
            if name not in views:
                conn.execute(sa.text(sql(self.qualified(name), self.qualified(SNAPSHOTS), self.is_postgres, self.qualified(LAYOUTS),
                                         self.qualified(ARCHETYPES))))

    def _replace_snapshots(self, conn: sa.Connection, store_id: str, day, stage_ref: str | None, snapshot_types,
                           changed: pd.Index | None, snapshot_customers: pd.Index | None, values: SnapshotValues | None,
                           archetypes: pd.DataFrame | None, customer_range: tuple[str | None, str | None] = (None, None)) -> int:
        """In the caller's transaction: the store's snapshots dated `day` become the staged profiles
        (`stage_ref`, staged with their value arrays in `values.layout`; None: no profiles) with the date's
        calendar types, limited to `snapshot_customers`, and the profile_change type for the `changed`
        customers; `archetypes` (archetype_dictionary) are the profiles' archetypes; `customer_range`: only the store's
        snapshots of those customers are replaced (a shard). Returns the rows written (a row per customer)."""
        if stage_ref is not None:  # without rows to write, no new date partition (a range's expired dates)
            self._ensure_date_partition(conn, SNAPSHOTS, day)
        snap = profile_snapshots
        conn.execute(sa.delete(snap).where(snap.c.store_id == store_id, snap.c.snapshot_date == day,
                                           self.customer_range_clause(snap.c.customer_id, customer_range)))
        if stage_ref is None or values is None or archetypes is None:
            return 0
        calendar, change = type_mask(snapshot_types), TYPE_BITS[PROFILE_CHANGE]
        source = f"{stage_ref} p"
        calendar_sql = str(calendar)
        if snapshot_customers is not None:
            rollout_ref = self._stage(conn, rollout_customers, pd.DataFrame({"customer_id": pd.Series(snapshot_customers, dtype="string")}))
            source += f" LEFT JOIN {rollout_ref} r ON r.customer_id = p.customer_id"
            calendar_sql = f"CASE WHEN r.customer_id IS NULL THEN 0 ELSE {calendar} END"
        change_sql = "0"
        if changed is not None and len(changed):
            changed_ref = self._stage(conn, changed_customers, pd.DataFrame({"customer_id": pd.Series(changed, dtype="string")}))
            source += f" LEFT JOIN {changed_ref} c ON c.customer_id = p.customer_id"
            change_sql = f"CASE WHEN c.customer_id IS NULL THEN 0 ELSE {change} END"
        ident = self._write_layout(conn, store_id, values.layout, archetypes)
        return self._insert_snapshots(conn, ident, f"({calendar_sql}) + ({change_sql})", source)

    def _write_layout(self, conn: sa.Connection, store_id: str, layout: SnapshotLayout, archetypes: pd.DataFrame) -> int:
        """The layout's rows for the store unless already there (content-addressed), and the archetypes it does not
        have yet; returns the layout's id."""
        ident = layout_id(layout)
        known = conn.execute(sa.select(sa.func.count()).select_from(snapshot_layouts).where(
            snapshot_layouts.c.store_id == store_id, snapshot_layouts.c.layout_id == ident)).scalar_one()
        # insert_new: the shards of a store, written side by side, may both find a layout or an archetype missing.
        if not known:
            self.insert_new(conn, snapshot_layouts, [{**row, "store_id": store_id, "layout_id": ident} for row in layout.rows().to_dict("records")])
        held = set(conn.execute(sa.select(snapshot_archetypes.c.dominant_positions).where(
            snapshot_archetypes.c.store_id == store_id, snapshot_archetypes.c.layout_id == ident)).scalars())
        new = archetypes[~archetypes["dominant_positions"].isin(held)]
        self.insert_new(conn, snapshot_archetypes, [{**row, "store_id": store_id, "layout_id": ident} for row in new.to_dict("records")])
        return ident

    def _insert_snapshots(self, conn: sa.Connection, ident: int, mask_sql: str, from_sql: str) -> int:
        """Copy staged profiles with their value arrays (aliased p in from_sql) and type set into profile_snapshots
        with layout `ident`; rows without a type are skipped."""
        copied = [*SNAPSHOT_COPIED_COLUMNS, *VALUE_COLUMNS]
        return int(conn.execute(sa.text(
            f"INSERT INTO {self.qualified(SNAPSHOTS)} (store_id, customer_id, snapshot_date, snapshot_types, layout_id, {', '.join(copied)}) "
            f"SELECT p.store_id, p.customer_id, p.profile_date, {mask_sql}, {ident}, {', '.join('p.' + c for c in copied)} "
            f"FROM {from_sql} WHERE {mask_sql} <> 0")).rowcount or 0)

    def snapshot_layout(self, store_id: str, ident: int) -> SnapshotLayout:
        """A store's layout by id (kept per process: a layout never changes)."""
        key = (store_id, int(ident))
        cache = self.__dict__.setdefault("_layouts", {})
        if key not in cache:
            rows = self.read_sql(f"SELECT kind, position, axis, name FROM {self.qualified(LAYOUTS)} WHERE store_id = :s AND layout_id = :l",
                                 {"s": store_id, "l": int(ident)})
            if rows.empty:
                raise LookupError(f"store {store_id}: snapshot layout {ident} is missing")
            cache[key] = SnapshotLayout.from_rows(rows)
        return cache[key]

    def _archetypes(self, store_id: str, ident: int, wanted) -> tuple[pd.DataFrame, dict]:
        """The layout's archetypes (ARCHETYPE_COLUMNS) as a frame indexed by dominant_positions and as
        {dominant_positions: {column: value}}, holding every one `wanted` (kept per process and read again when a
        later write added an archetype to the layout)."""
        key = (store_id, int(ident))
        cache = self.__dict__.setdefault("_archetype_cache", {})
        if key not in cache or any(w not in cache[key][1] for w in wanted):
            frame = self.read_sql(f"SELECT dominant_positions, {', '.join(ARCHETYPE_COLUMNS)} FROM {self.qualified(ARCHETYPES)} "
                                  "WHERE store_id = :s AND layout_id = :l", {"s": store_id, "l": int(ident)}).set_index("dominant_positions")
            cache[key] = (frame, frame.to_dict("index"))
            missing = [w for w in wanted if w not in cache[key][1]]
            if missing:
                raise LookupError(f"store {store_id}: snapshot layout {ident} has no archetype for dominant segments {missing[:3]}")
        return cache[key]

    def _with_profile_columns(self, store_id: str, rows: pd.DataFrame, columns) -> pd.DataFrame:
        """Rows with layout_id and (some of) VALUE_COLUMNS -> the same rows with `columns` of DERIVED_COLUMNS: the
        JSON objects as text, the archetype, the model version."""
        rows = rows.reset_index(drop=True)
        objects = [c for c in JSON_COLUMNS if c in columns]
        derived = [c for c in (*ARCHETYPE_COLUMNS, "model_version") if c in columns]
        out = {c: np.empty(len(rows), dtype=object) for c in (*objects, *derived)}
        for ident, group in rows.groupby("layout_id", sort=False):
            at = group.index.to_numpy()
            layout = self.snapshot_layout(store_id, ident)
            for column, text in expand_values(group, layout, objects).items():
                out[column][at] = text.to_numpy(object)
            if "model_version" in derived:
                out["model_version"][at] = layout.model_version
            archetype = [c for c in derived if c in ARCHETYPE_COLUMNS]
            if archetype:
                positions = group["dominant_positions"].astype(str)
                found = self._archetypes(store_id, ident, positions.unique())[0].reindex(positions)
                for column in archetype:
                    out[column][at] = found[column].to_numpy(object)
        return rows.drop(columns=["layout_id", *VALUE_COLUMNS], errors="ignore").assign(**out)

    def _log_snapshot_write(self, conn: sa.Connection, store_id: str, day) -> None:
        """snapshot_writes: when the store's snapshots of the date were written (drift_tables reads it)."""
        self.insert_new(conn, snapshot_writes, [{"store_id": store_id, "snapshot_date": day,
                                                 "written_at": pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%f")}], update=["written_at"])

    @property
    def snapshots_partitioned(self) -> bool:
        return SNAPSHOTS in self.partitioned

    def snapshot_partitions(self) -> list[str]:
        return self.date_partitions(SNAPSHOTS)

    PARTITION_DAYS_TTL_SECONDS = 30.0

    def _kept(self, key, read, refresh: bool = False):
        """`read()`, kept per process under `key` and read again after PARTITION_DAYS_TTL_SECONDS or on `refresh`."""
        cache = self.__dict__.setdefault("_kept_reads", {})
        found = cache.get(key)
        if refresh or found is None or time.monotonic() - found[1] > self.PARTITION_DAYS_TTL_SECONDS:
            found = cache[key] = (read(), time.monotonic())
        return found[0]

    def _partition_days(self, start: date, end: date, refresh: bool = False) -> list[date]:
        """The dates from `start` to `end` that have a profile_snapshots partition. All such dates are kept (`_kept`),
        and read again at once when a date past the newest kept is wanted (a date written since): so a past date
        backfilled into a new partition shows in a history within PARTITION_DAYS_TTL_SECONDS."""

        def read() -> list[date]:
            names = self.snapshot_partitions()
            return sorted({pd.Timestamp(n[len(SNAPSHOT_PARTITION_PREFIX):]).date() for n in names if n.startswith(SNAPSHOT_PARTITION_PREFIX)})

        days = self._kept("partition_days", read, refresh)
        if not days or end > days[-1]:
            days = self._kept("partition_days", read, refresh=True)
        return days[bisect.bisect_left(days, start):bisect.bisect_right(days, end)]

    def _window_rows(self, columns: str, where: str, params: dict, outer: str = "") -> list[dict]:
        """`SELECT [outer,] columns FROM profile_snapshots where ORDER BY snapshot_date` for the dates :start to :end,
        through fetch_rows. On PostgreSQL with date partitions, over the window's own partitions (a UNION ALL) instead
        of the parent: a statement over the parent is planned anew each time, and its planning grows with every
        partition the retention keeps (0.8 ms a read with 80 partitions, the default policy's steady state).
        `outer`: expressions computed once per statement, not per partition (a scalar subquery)."""
        if not self.snapshots_partitioned:
            if outer:
                raise ValueError("outer expressions are for the partitioned table's reads")
            return self.fetch_rows(f"SELECT {columns} FROM {self.qualified(SNAPSHOTS)} {where} ORDER BY snapshot_date", params)

        def over_partitions(refresh: bool) -> list[dict]:
            days = self._partition_days(params["start"], params["end"], refresh)
            if not days:
                return []
            return self.fetch_rows(_union_sql(outer, columns, where, tuple(days)), params)

        try:
            return over_partitions(refresh=False)
        except psycopg.errors.UndefinedTable:  # a partition dropped (a prune) since the dates were read
            return over_partitions(refresh=True)

    def _newest_profile_date(self, store_id: str, refresh: bool = False) -> date | None:
        """The store's newest profile date (`_kept`)."""
        return self._kept(("newest_profile_date", store_id), lambda: self.newest_profile_date(store_id), refresh)

    def _rows_up_to_the_stores_newest(self, columns: str, where: str, params: dict, days: int) -> list[dict] | None:
        """PostgreSQL with date partitions: a customer's window up to their profile date in one statement, taking that
        date to be the store's newest profile date (a daily run profiles every customer of the store) and reading the
        customer's own with the rows to check it. None when it cannot tell (the dates differ, no snapshot in the
        window, or no partitions): the caller then reads the profile date first, a statement more."""
        if not self.snapshots_partitioned:
            return None
        guess = self._newest_profile_date(params["s"])
        if guess is None:
            return None
        own = f"(SELECT profile_date FROM {self.qualified('customer_profiles')} WHERE store_id = :s AND customer_id = :c) AS profile_date"
        rows = self._window_rows(columns, where, {**params, "start": guess - timedelta(days=days), "end": guess}, outer=own)
        if not rows:
            return None
        own_date = rows[0]["profile_date"]
        if own_date != guess:
            if own_date is not None and own_date > guess:
                self._newest_profile_date(params["s"], refresh=True)  # a newer date was written since
            return None
        return rows if rows[-1]["snapshot_date"] == guess else None

    def replace_snapshot_blocks(self, conn: sa.Connection, store_id: str, day, blocks: list[dict] | None, shard=None) -> None:
        """In the caller's transaction: the store's snapshot_blocks of the date become `blocks`; a `shard`'s (run/shards.Shard)
        are numbered from index * SHARD_BLOCKS and replace that shard's (the last shard's, every block from there)."""
        day = pd.Timestamp(day).date()
        b = snapshot_blocks
        first = 0 if shard is None else shard.index * SHARD_BLOCKS
        within = sa.true() if shard is None else sa.and_(b.c.block >= first, sa.true() if shard.index == shard.shards - 1 else b.c.block < first + SHARD_BLOCKS)
        conn.execute(sa.delete(b).where(b.c.store_id == store_id, b.c.snapshot_date == day, within))
        if blocks:
            if len(blocks) > SHARD_BLOCKS:
                raise ValueError(f"store {store_id}: {len(blocks)} snapshot blocks in one shard (at most {SHARD_BLOCKS:,})")
            conn.execute(sa.insert(b), [{**block, "block": first + block["block"], "store_id": store_id, "snapshot_date": day} for block in blocks])

    # ---- snapshots ------------------------------------------------------------------------------
    def snapshot_sources(self, store_id: str, start, end, kept_at: tuple | None = None, block_dates=None) -> pd.DataFrame:
        """Per snapshot date of the store in [start, end]: the type drift reads (snapshot_date, snapshot_type).

        All types of a date hold the same profile: the finest calendar type present (every snapshot
        customer of the date has it), else profile_change (a date whose calendar types were pruned).
        kept_at = (as_of, RetentionPolicy): only what the daily run of as_of holds under the policy
        (history.snapshots.type_kept_at), so the answer does not depend on when pruning last ran.
        `block_dates`: the dates of the store's snapshot blocks in [start, end] when the caller read them already
        (snapshot_block_index), for the dates written as blocks alone."""
        params = {"s": store_id, "a": pd.Timestamp(start).date(), "b": pd.Timestamp(end).date()}
        if self.snapshots_partitioned:
            days = [d for d in (pd.Timestamp(p[len(SNAPSHOT_PARTITION_PREFIX):]) for p in self.snapshot_partitions()) if params["a"] <= d.date() <= params["b"]]
            # One index probe per (date, type set) a date can hold (the sets of its calendar types, with or without
            # profile_change), equality on the index's third column, instead of a DISTINCT over every row of the
            # range (11M rows at 1M customers: 3.5-6 s right after a daily write) or a test of each type's bit
            # (a missing type scans the whole date: 34-59 s at 1M).
            probes = [f"SELECT DATE '{d:%Y-%m-%d}' AS snapshot_date, {mask} AS snapshot_types WHERE EXISTS (SELECT 1 FROM "
                      f"{PG_SCHEMA}.{SNAPSHOT_PARTITION_PREFIX}{d:%Y%m%d} WHERE store_id = :s AND snapshot_date = DATE '{d:%Y-%m-%d}' "
                      f"AND snapshot_types = {mask})" for d in days for mask in possible_type_sets(d)]
            sets = self.read_sql(" UNION ALL ".join(probes), params) if probes else pd.DataFrame(columns=["snapshot_date", "snapshot_types"])
        else:
            sets = self.read_sql(f"SELECT DISTINCT snapshot_date, snapshot_types FROM {self.qualified(SNAPSHOTS)} "
                                 "WHERE store_id = :s AND snapshot_date BETWEEN :a AND :b", params)
        sets = self._with_blocks_only_dates(sets, params, block_dates)
        if kept_at is not None:
            as_of, policy = kept_at
            present = sets.assign(snapshot_types=sets["snapshot_types"].astype("int64")).groupby("snapshot_date")["snapshot_types"].agg(np.bitwise_or.reduce)
            kinds = pd.DataFrame([(day, type_kept_at(day, as_of, policy, int(mask))) for day, mask in present.items()],
                                 columns=["snapshot_date", "snapshot_type"]).dropna()
        else:
            kinds = pd.DataFrame([(day, finest_type(int(mask))) for day, mask in zip(sets["snapshot_date"], sets["snapshot_types"])],
                                 columns=["snapshot_date", "snapshot_type"])
        rank = {t: i for i, t in enumerate(RETAINED_TYPES)}
        kinds["rank"] = kinds["snapshot_type"].map(rank).fillna(len(rank))
        kinds["snapshot_date"] = pd.to_datetime(kinds["snapshot_date"])
        return kinds.sort_values(["snapshot_date", "rank"]).drop_duplicates("snapshot_date")[["snapshot_date", "snapshot_type"]].reset_index(drop=True)

    def _with_blocks_only_dates(self, sets: pd.DataFrame, params: dict, block_dates=None) -> pd.DataFrame:
        """`sets` (snapshot_date, snapshot_types) and a row per date of the store's snapshot blocks in [:a, :b] (given as
        `block_dates`, or read) that has no snapshot row: a backfill range wrote its blocks alone (expired_on_arrival),
        for its calendar types. (A prune removes a date's blocks with its last calendar row, so blocks without rows mean
        nothing else.)"""
        sets = sets.assign(snapshot_date=pd.to_datetime(sets["snapshot_date"]))
        if block_dates is None:
            block_dates = self.read_sql(f"SELECT DISTINCT snapshot_date FROM {self.qualified('snapshot_blocks')} "
                                        "WHERE store_id = :s AND snapshot_date BETWEEN :a AND :b", params)["snapshot_date"]
        alone = sorted(set(pd.to_datetime(list(block_dates))) - set(sets["snapshot_date"]))
        if not alone:
            return sets
        return pd.concat([sets, pd.DataFrame({"snapshot_date": alone, "snapshot_types": [type_mask(snapshot_types_for(d)) for d in alone]})],
                         ignore_index=True)

    def snapshot_rows(self, store_id: str, sources: pd.DataFrame, with_features: bool = False,
                      customer_range: tuple[str | None, str | None] = (None, None)) -> pd.DataFrame:
        """The snapshot rows of the given (snapshot_date, snapshot_type) pairs, JSON as text; optionally
        only customers in [lo, hi) (code-point order, as Python compares them)."""
        columns = ["customer_id", "snapshot_date", "archetype_name", "churn_risk_score", "fuzzy_memberships"] + (["behavioral_features"] if with_features else [])
        if sources.empty:
            return pd.DataFrame(columns=columns)
        params: dict = {"s": store_id}
        pairs = []
        for i, (day, kind) in enumerate(zip(pd.to_datetime(sources["snapshot_date"]), sources["snapshot_type"])):
            params[f"d{i}"] = day.date()
            pairs.append(f"(snapshot_date = :d{i} AND {has_type(kind)})")
        bounds = self.customer_range_sql(customer_range, params)
        stored = [c for c in columns if c not in DERIVED_COLUMNS] + ["layout_id", *VALUE_COLUMNS]
        frame = self.read_sql(f"SELECT {', '.join(stored)} FROM {self.qualified(SNAPSHOTS)} WHERE store_id = :s AND ({' OR '.join(pairs)}){bounds}", params)
        frame = self._with_profile_columns(store_id, frame, columns)[columns]
        frame["customer_id"] = frame["customer_id"].astype(str)
        frame["snapshot_date"] = pd.to_datetime(frame["snapshot_date"])
        return frame

    def snapshot_history(self, store_id: str, start, end, with_features: bool = False, customer_range: tuple[str | None, str | None] = (None, None)) -> pd.DataFrame:
        """The store's snapshots dated in [start, end], one row per customer and date (snapshot_sources), JSON as text."""
        return self.snapshot_rows(store_id, self.snapshot_sources(store_id, start, end), with_features, customer_range)

    def snapshot_block_index(self, store_id: str, start, end) -> pd.DataFrame:
        """The snapshot blocks of the store's dates in [start, end]: snapshot_date, block, first/last customer id."""
        frame = self.read_sql(
            f"SELECT snapshot_date, block, first_customer_id, last_customer_id, n_customers FROM {self.qualified('snapshot_blocks')} "
            "WHERE store_id = :s AND snapshot_date BETWEEN :a AND :b ORDER BY snapshot_date, block",
            {"s": store_id, "a": pd.Timestamp(start).date(), "b": pd.Timestamp(end).date()})
        frame["snapshot_date"] = pd.to_datetime(frame["snapshot_date"])
        return frame

    def snapshot_customers_by_store(self, day) -> dict[str, int]:
        """{store: customers in its snapshot blocks dated `day`} (stores whose snapshots have no blocks are left out)."""
        frame = self.read_sql(f"SELECT store_id, sum(n_customers) AS n FROM {self.qualified('snapshot_blocks')} WHERE snapshot_date = :d "
                              "GROUP BY store_id", {"d": pd.Timestamp(day).date()})
        return dict(zip(frame["store_id"].astype(str), frame["n"].astype("int64")))

    def snapshot_block_data(self, store_id: str, day, blocks: list[int], column: str) -> dict[int, bytes]:
        """{block: bytes} of the "memberships" or "features" column of a date's blocks."""
        if column not in ("memberships", "features"):
            raise ValueError(f"snapshot_blocks has no data column {column!r}")
        table = snapshot_blocks
        day = pd.Timestamp(day).date()
        with self.engine.connect() as conn:
            if self.is_postgres:
                # Binary results: bytea in text format is hex, twice the bytes to encode, send and decode (3-4x slower).
                with conn.connection.driver_connection.cursor(binary=True) as cur:
                    rows = cur.execute(f"SELECT block, {column} FROM {self.qualified(table.name)} "
                                       "WHERE store_id = %s AND snapshot_date = %s AND block = ANY(%s)", (store_id, day, list(blocks))).fetchall()
            else:
                rows = conn.execute(sa.select(table.c.block, table.c[column]).where(
                    table.c.store_id == store_id, table.c.snapshot_date == day, table.c.block.in_(list(blocks)))).all()
        return {int(block): bytes(data) for block, data in rows}

    def snapshot_customer_bounds(self, store_id: str, day, chunk_customers: int) -> list[str]:
        """Customer ids that cut the store's snapshot customers of D into chunks of about chunk_customers (sorted)."""
        ids = self.read_sql(
            f"SELECT customer_id FROM {self.qualified(SNAPSHOTS)} WHERE store_id = :s AND snapshot_date = :d",
            {"s": store_id, "d": pd.Timestamp(day).date()})["customer_id"].astype(str).sort_values(kind="stable").to_numpy()
        return [str(v) for v in ids[chunk_customers::chunk_customers]]

    def _rows_by_type(self, conn: sa.Connection, store_id: str, snapshot_date, customer_range: tuple[str | None, str | None] = (None, None)) -> dict[str, int]:
        """{type: rows} of a store's snapshots dated D (of the customers in `customer_range`), as rows of the view
        (grouped by the date's few type sets)."""
        params = {"s": store_id, "d": pd.Timestamp(snapshot_date).date()}
        within = self.customer_range_sql(customer_range, params)
        sets = conn.execute(sa.text(f"SELECT snapshot_types, count(*) FROM {self.qualified(SNAPSHOTS)} WHERE store_id = :s AND snapshot_date = :d "
                                    f"{within} GROUP BY snapshot_types"), params).all()
        counts = {t: sum(int(n) for mask, n in sets if int(mask) & bit) for t, bit in TYPE_BITS.items()}
        return {t: n for t, n in counts.items() if n}

    def snapshot_stats(self, store_id: str, snapshot_date, customer_range: tuple[str | None, str | None] = (None, None)) -> dict:
        """Rows per type and duplicate keys of a store's snapshots dated D (of the customers in `customer_range`): the
        checks' inputs."""
        params = {"s": store_id, "d": pd.Timestamp(snapshot_date).date()}
        within = self.customer_range_sql(customer_range, params)
        dupes = (f"SELECT count(*) FROM (SELECT 1 FROM {self.qualified(SNAPSHOTS)} WHERE store_id = :s AND snapshot_date = :d "
                 f"{within} GROUP BY customer_id HAVING count(*) > 1) d")
        with self.engine.connect() as conn:
            return {"rows_by_type": self._rows_by_type(conn, store_id, snapshot_date, customer_range),
                    "duplicate_keys": int(conn.execute(sa.text(dupes), params).scalar_one())}

    def snapshot_stores(self, day) -> list[str]:
        """The stores with snapshots dated `day`: rows, or blocks alone (a backfill range's expired dates)."""
        return self.read_sql(
            f"SELECT store_id FROM {self.qualified(SNAPSHOTS)} WHERE snapshot_date = :d "
            f"UNION SELECT store_id FROM {self.qualified('snapshot_blocks')} WHERE snapshot_date = :d ORDER BY 1",
            {"d": pd.Timestamp(day).date()})["store_id"].tolist()

    def newest_snapshot_date(self, store_id: str):
        """The store's newest snapshot date (what retention counts from), None before its first snapshot."""
        return self.fetch_rows(f"SELECT max(snapshot_date) AS d FROM {self.qualified(SNAPSHOTS)} WHERE store_id = :s", {"s": store_id})[0]["d"]

    def last_snapshot_memberships(self, store_id: str, before) -> pd.Series:
        """Each customer's fuzzy_memberships (JSON text) from their newest snapshot dated before D."""
        frame = self.read_sql(
            "SELECT customer_id, layout_id, membership_values FROM ("
            " SELECT customer_id, layout_id, membership_values,"
            "  ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY snapshot_date DESC) AS newest_first"
            f" FROM {self.qualified(SNAPSHOTS)} WHERE store_id = :s AND snapshot_date < :d"
            ") ranked WHERE newest_first = 1",
            {"s": store_id, "d": pd.Timestamp(before).date()},
        )
        frame = self._with_profile_columns(store_id, frame, ["fuzzy_memberships"])
        return pd.Series(frame["fuzzy_memberships"].to_numpy(), index=pd.Index(frame["customer_id"].astype(str), name="customer_id"))

    def _snapshot_cutoffs(self, policy) -> dict[tuple[str, str], tuple]:
        """{(store, type): (the store's newest snapshot date, the type's cutoff)}: rows dated before the cutoff are expired."""
        newest = self.read_sql(f"SELECT store_id, max(snapshot_date) AS newest FROM {self.qualified(SNAPSHOTS)} GROUP BY store_id")
        return {(store, t): (date.date(), policy.cutoff(t, date).date())
                for store, date in zip(newest["store_id"], pd.to_datetime(newest["newest"])) for t in RETAINED_TYPES}

    def snapshot_expiry(self, policy) -> pd.DataFrame:
        """Per store and type: newest snapshot date of the store, cutoff, and the number of expired rows (a row per type)."""
        table = self.qualified(SNAPSHOTS)
        rows = []
        with self.engine.connect() as conn:
            for (store, snapshot_type), (newest, cutoff) in self._snapshot_cutoffs(policy).items():
                n = conn.execute(sa.text(
                    f"SELECT count(*) FROM {table} WHERE store_id = :s AND {has_type(snapshot_type)} AND snapshot_date < :c"),
                    {"s": store, "c": cutoff}).scalar_one()
                rows.append({"store_id": store, "snapshot_type": snapshot_type, "newest": newest, "cutoff": cutoff, "expired": int(n)})
        return pd.DataFrame(rows, columns=["store_id", "snapshot_type", "newest", "cutoff", "expired"])

    def prune_snapshots(self, policy, leased: frozenset[str] = frozenset(), rewrite: bool = True,
                        rewrite_wait_seconds: float = REWRITE_WAIT_SECONDS) -> pd.DataFrame:
        """Expire snapshots in bulk, per store and type, in one transaction; returns the counts (a row per type).

        An expired type's bit is cleared and a row left with no type is deleted. On a partitioned PostgreSQL
        table, a date partition whose every type is expired is dropped whole (its rows are counted first), and
        a partition whose rows were updated is recorded in the same transaction and rewritten after the commit
        (VACUUM FULL once no session holds a snapshot from before it, waiting up to `rewrite_wait_seconds`;
        partition_rewrites.py; `rewrite=False`: left to rewrite_snapshot_partitions): an old date never receives
        new rows to reuse its dead versions' space, which doubled it for good (measured: 1,072 bytes a row in the
        updated partitions, 538 in the others). The `leased` stores (a run uses them) are left alone.
        """
        table = self.qualified(SNAPSHOTS)
        cutoffs = {key: cutoff for key, (_, cutoff) in self._snapshot_cutoffs(policy).items() if key[0] not in leased}
        counts = {key: 0 for key in cutoffs}
        updated = []
        with self.engine.begin() as conn:
            for partition in self.snapshot_partitions():
                day = pd.Timestamp(partition[len(SNAPSHOT_PARTITION_PREFIX):]).date()
                held = conn.execute(sa.text(
                    f"SELECT store_id, snapshot_types, count(*) FROM {PG_SCHEMA}.{partition} GROUP BY store_id, snapshot_types")).all()
                per_type = [(store, t, int(n)) for store, mask, n in held for t in RETAINED_TYPES if int(mask) & TYPE_BITS[t]]
                expired = [day < cutoffs.get((store, t), day) for store, t, _ in per_type]
                if all(expired):
                    conn.execute(sa.text(f"DROP TABLE {PG_SCHEMA}.{partition}"))
                    for store, t, n in per_type:
                        counts[(store, t)] += n
                elif any(expired):
                    updated.append(partition)
            for (store, snapshot_type), cutoff in cutoffs.items():
                cleared = conn.execute(sa.text(
                    f"UPDATE {table} SET snapshot_types = snapshot_types - {TYPE_BITS[snapshot_type]} "
                    f"WHERE store_id = :s AND snapshot_date < :c AND {has_type(snapshot_type)}"), {"s": store, "c": cutoff}).rowcount
                counts[(store, snapshot_type)] += int(cleared or 0)
            for store in {store for store, _ in cutoffs}:
                latest_cutoff = max(c for (s, _), c in cutoffs.items() if s == store)  # no bit is cleared from a later date
                conn.execute(sa.text(f"DELETE FROM {table} WHERE store_id = :s AND snapshot_date < :c AND snapshot_types = 0"),
                             {"s": store, "c": latest_cutoff})
            # A layout goes with the last row that uses it (a scan of the store's rows, as the models' prune does).
            layouts = self.qualified(LAYOUTS)
            for store in conn.execute(sa.text(f"SELECT DISTINCT store_id FROM {layouts}")).scalars().all():
                if store in leased:
                    continue
                used = conn.execute(sa.text(f"SELECT DISTINCT layout_id FROM {table} WHERE store_id = :s"), {"s": store}).scalars().all()
                for table_ in (snapshot_layouts, snapshot_archetypes):
                    conn.execute(sa.delete(table_).where(table_.c.store_id == store, table_.c.layout_id.not_in(used)))
            # A date's blocks copy its calendar snapshots: they go when the last of those goes, or when there were none
            # (a backfill range's expired dates, written as blocks alone). A leased store's are left: its run reads them.
            blocks = self.qualified("snapshot_blocks")
            not_leased, params = stores_left_out(leased)
            conn.execute(sa.text(
                f"DELETE FROM {blocks} WHERE NOT EXISTS (SELECT 1 FROM {table} s WHERE s.store_id = {blocks}.store_id "
                f"AND s.snapshot_date = {blocks}.snapshot_date AND (s.snapshot_types & {CALENDAR_MASK}) <> 0){not_leased}"), params)
            request_rewrites(conn, updated)
        if rewrite:
            self.rewrite_snapshot_partitions(rewrite_wait_seconds)
        rows = [{"store_id": s, "snapshot_type": t, "cutoff": cutoffs[(s, t)], "deleted": n} for (s, t), n in counts.items()]
        return pd.DataFrame(rows, columns=["store_id", "snapshot_type", "cutoff", "deleted"])

    def rewrite_snapshot_partitions(self, wait_seconds: float = REWRITE_WAIT_SECONDS) -> list[str]:
        """Rewrite the date partitions prunes recorded (partition_rewrites.py); returns those left for the next prune."""
        if not self.snapshots_partitioned:
            return []
        return rewrite_requested(self.engine, lambda conn: self.date_partitions(SNAPSHOTS, conn), wait_seconds)

    def customer_history(self, store_id: str, customer_id: str, days: int, as_of=None, snapshot_type: str | None = None) -> pd.DataFrame:
        """One customer's snapshots over the `days` days up to as_of (default: their newest), oldest first.

        Without snapshot_type: one row per date (the rows of the history view); with it: that cadence only.
        """
        return pd.DataFrame(self.customer_history_rows(store_id, customer_id, days, as_of, snapshot_type))

    def customer_history_rows(self, store_id: str, customer_id: str, days: int, as_of=None, snapshot_type: str | None = None,
                              columns: tuple[str, ...] | None = None) -> list[dict]:
        """customer_history as row dicts (no DataFrame); `columns` (default all) of the customer_profile_snapshots view,
        snapshot_date and snapshot_type always. A row's snapshot_type is the one asked for, else the finest type of its
        date."""
        view_columns = ["store_id", "customer_id", "snapshot_date", *VIEW_COLUMNS]
        if columns is None:
            wanted = view_columns
        else:
            unknown = set(columns) - set(view_columns) - {"snapshot_type"}
            if unknown:
                raise ValueError(f"not columns of customer_profile_snapshots: {sorted(unknown)}")
            wanted = [c for c in dict.fromkeys(("snapshot_date", *columns)) if c != "snapshot_type"]
        objects = [c for c in wanted if c in DERIVED_COLUMNS]
        stored = [c for c in wanted if c not in DERIVED_COLUMNS]
        window = self.customer_history_window(store_id, customer_id, days, as_of, snapshot_type, stored,
                                              with_archetypes=any(c in ARCHETYPE_COLUMNS for c in objects))
        order = [*wanted[:wanted.index("snapshot_date") + 1], "snapshot_type", *wanted[wanted.index("snapshot_date") + 1:]]
        out = []
        for row in window.rows:
            merged = dict(row)
            if objects:
                layout, archetypes = window.layouts[row["layout_id"]]
                merged.update(row_objects(layout, row, objects), model_version=layout.model_version)
                if archetypes is not None:
                    merged.update(archetypes[row["dominant_positions"]])
            out.append({column: merged[column] for column in order})
        return out

    def customer_history_window(self, store_id: str, customer_id: str, days: int, as_of=None, snapshot_type: str | None = None,
                                stored: list[str] | tuple[str, ...] = (), with_archetypes: bool = False) -> HistoryWindow:
        """The rows under customer_history: the customer's snapshots over the `days` days up to as_of (default: their
        newest), oldest first, one per date without snapshot_type, as profile_snapshots holds them: `stored` columns
        (of profile_snapshots) with snapshot_date, snapshot_types, layout_id and VALUE_COLUMNS, and each row's
        snapshot_type (the one asked for, else the finest of its date); with each layout the rows use and, with
        with_archetypes, its archetypes {dominant_positions: {column: value}}. The read API shapes its answer from
        these directly."""
        params: dict = {"s": store_id, "c": customer_id}
        source = self.qualified(SNAPSHOTS)
        if snapshot_type is not None and snapshot_type not in TYPE_BITS:
            return HistoryWindow([], {})
        type_clause = f" AND {has_type(snapshot_type)}" if snapshot_type is not None else ""
        selected = f"snapshot_types, {', '.join(dict.fromkeys(('snapshot_date', *stored, 'layout_id', *VALUE_COLUMNS)))}"
        where = f"WHERE store_id = :s AND customer_id = :c AND snapshot_date BETWEEN :start AND :end{type_clause}"

        def window(end) -> dict:
            end = pd.Timestamp(end).date()
            return {**params, "start": end - timedelta(days=days), "end": end}

        # Through the driver's cursor (Connection.fetch_rows): the read API's path, where SQLAlchemy's execution
        # layer cost as much CPU as the reads.
        rows = None
        if as_of is None and snapshot_type is None:
            rows = self._rows_up_to_the_stores_newest(selected, where, params, days)
        if rows is None and as_of is None and snapshot_type is None:
            # The customer's newest snapshot is almost always dated their profile's date (a snapshot comes with
            # the profile of its date, and customer_profiles holds the newest): one lookup by key, then the window.
            found = self.fetch_rows(f"SELECT profile_date FROM {self.qualified('customer_profiles')} WHERE store_id = :s AND customer_id = :c",
                                    params)
            if found:
                newest = found[0]["profile_date"]
                rows = self._window_rows(selected, where, window(newest))
                if not rows or pd.Timestamp(rows[-1]["snapshot_date"]) != pd.Timestamp(newest):
                    rows = None  # no snapshot on the profile's date: find the newest below
        if rows is None:
            if as_of is None:
                as_of = self.fetch_rows(f"SELECT max(snapshot_date) AS d FROM {source} WHERE store_id = :s AND customer_id = :c{type_clause}",
                                        params)[0]["d"]
                if as_of is None:
                    return HistoryWindow([], {})
            rows = self._window_rows(selected, where, window(as_of))
        # Each layout and its archetypes once per call, not per row (a customer's rows share one or two layouts).
        positions: dict[int, list[str]] = {}
        for row in rows:
            row["snapshot_type"] = snapshot_type or finest_type(int(row["snapshot_types"]))
            positions.setdefault(row["layout_id"], []).append(row["dominant_positions"])
        layouts = {ident: (self.snapshot_layout(store_id, ident), self._archetypes(store_id, ident, found)[1] if with_archetypes else None)
                   for ident, found in positions.items()}
        return HistoryWindow(rows, layouts)
