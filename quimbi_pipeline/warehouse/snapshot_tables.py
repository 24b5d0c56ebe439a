"""customer_profile_snapshots (frozen copies of a date's profiles per calendar type), their columnar copy
snapshot_blocks, the write log snapshot_writes, the one-row-per-date history view; reads, expiry, prune."""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from quimbi_pipeline.snapshots import PROFILE_CHANGE, RETAINED_TYPES, SNAPSHOT_TYPES
from quimbi_pipeline.warehouse.connection import PG_SCHEMA, metadata, staging_metadata
from quimbi_pipeline.warehouse.profile_tables import JSON_COLUMNS, customer_profiles

SNAPSHOT_COPIED_COLUMNS = [
    "archetype_id", "archetype_level", "archetype_name", "dominant_segments", "fuzzy_memberships", "behavioral_features",
    "churn_risk_score", "churn_risk_level", "predicted_ltv", "expected_purchases", "total_orders", "lifetime_value", "days_since_first_order",
    "tenure_months", "model_version",
]

# The seed's snapshot table, with store_id in the unique key. No surrogate id or created_at: a re-run
# of a date must leave byte-identical rows.
customer_profile_snapshots = sa.Table(
    "customer_profile_snapshots", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("snapshot_date", sa.Date, primary_key=True),
    sa.Column("snapshot_type", sa.Text, primary_key=True),
    *[sa.Column(c.name, c.type, nullable=c.nullable) for c in customer_profiles.columns if c.name in SNAPSHOT_COPIED_COLUMNS],
    sa.Index("ix_snapshots_store_date_type", "store_id", "snapshot_date", "snapshot_type"),
    # PostgreSQL: one partition per snapshot date (created on first write). Measured: writes 1.75x
    # faster (smaller per-partition indexes) and pruning a fully expired date is a DROP, 5x faster
    # than DELETE (benchmarks/snapshot_partitioning.py, docs/snapshots.md).
    postgresql_partition_by="RANGE (snapshot_date)",
)

SNAPSHOT_PARTITION_PREFIX = "customer_profile_snapshots_p"

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

# One row per (store, customer, date): the finest cadence of that date (all types hold the same profile).
HISTORY_VIEW = "customer_snapshot_history"

HISTORY_VIEW_SQL = """
CREATE VIEW {view} AS
SELECT store_id, customer_id, snapshot_date, snapshot_type, archetype_id, archetype_name, archetype_level,
       dominant_segments, fuzzy_memberships, churn_risk_score, churn_risk_level, predicted_ltv, model_version
FROM (
  SELECT s.*, ROW_NUMBER() OVER (
      PARTITION BY store_id, customer_id, snapshot_date
      ORDER BY CASE snapshot_type WHEN 'daily' THEN 0 WHEN 'weekly' THEN 1 WHEN 'monthly' THEN 2
                                  WHEN 'quarterly' THEN 3 WHEN 'yearly' THEN 4 ELSE 5 END) AS rank_in_date
  FROM {table} s
) ranked
WHERE rank_in_date = 1
"""

changed_customers = sa.Table("changed_customers", staging_metadata, sa.Column("customer_id", sa.Text, primary_key=True))

rollout_customers = sa.Table("rollout_customers", staging_metadata, sa.Column("customer_id", sa.Text, primary_key=True))


class SnapshotStore:
    def _finish_snapshot_schema(self, conn: sa.Connection) -> None:
        """Storage settings and the history view (create_tables)."""
        if self.is_postgres:
            # The blocks are lz4-compressed already: TOAST out of line without compressing again.
            for column in ("memberships", "features"):
                conn.execute(sa.text(f"ALTER TABLE {self.qualified('snapshot_blocks')} ALTER COLUMN {column} SET STORAGE EXTERNAL"))
        if HISTORY_VIEW not in sa.inspect(conn).get_view_names(schema=PG_SCHEMA if self.is_postgres else None):
            conn.execute(sa.text(HISTORY_VIEW_SQL.format(view=self.qualified(HISTORY_VIEW), table=self.qualified("customer_profile_snapshots"))))

    def _replace_snapshots(self, conn: sa.Connection, store_id: str, day, stage_ref: str | None, snapshot_types,
                           changed: pd.Index | None, snapshot_customers: pd.Index | None) -> int:
        """In the caller's transaction: the store's snapshots dated `day` become one copy per type of the staged
        profiles (`stage_ref`; None: no profiles), limited to `snapshot_customers`, plus a profile_change copy of
        the `changed` customers. Returns the rows written."""
        self._ensure_date_partition(conn, "customer_profile_snapshots", day)
        snap = customer_profile_snapshots
        conn.execute(sa.delete(snap).where(snap.c.store_id == store_id, snap.c.snapshot_date == day))
        if stage_ref is None:
            return 0
        types_sql = " UNION ALL ".join(f"SELECT '{t}' AS snapshot_type" for t in snapshot_types)
        source = f"{stage_ref} p"
        if snapshot_customers is not None:
            rollout_ref = self._stage(conn, rollout_customers, pd.DataFrame({"customer_id": pd.Series(snapshot_customers, dtype="string")}))
            source += f" JOIN {rollout_ref} r ON r.customer_id = p.customer_id"
        written = self._insert_snapshots(conn, "t.snapshot_type", f"{source} CROSS JOIN ({types_sql}) t")
        if changed is not None and len(changed):
            changed_ref = self._stage(conn, changed_customers, pd.DataFrame({"customer_id": pd.Series(changed, dtype="string")}))
            written += self._insert_snapshots(conn, f"'{PROFILE_CHANGE}'", f"{stage_ref} p JOIN {changed_ref} c ON c.customer_id = p.customer_id")
        return written

    def _log_snapshot_write(self, conn: sa.Connection, store_id: str, day) -> None:
        """snapshot_writes: when the store's snapshots of the date were written (drift_tables reads it)."""
        conn.execute(sa.delete(snapshot_writes).where(snapshot_writes.c.store_id == store_id, snapshot_writes.c.snapshot_date == day))
        conn.execute(sa.insert(snapshot_writes), [{"store_id": store_id, "snapshot_date": day,
                                                   "written_at": pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%f")}])

    @property
    def snapshots_partitioned(self) -> bool:
        return "customer_profile_snapshots" in self.partitioned

    def snapshot_partitions(self) -> list[str]:
        return self.date_partitions("customer_profile_snapshots")

    def replace_snapshot_blocks(self, conn: sa.Connection, store_id: str, day, blocks: list[dict] | None) -> None:
        """In the caller's transaction: the store's snapshot_blocks of the date become `blocks`."""
        day = pd.Timestamp(day).date()
        conn.execute(sa.delete(snapshot_blocks).where(snapshot_blocks.c.store_id == store_id, snapshot_blocks.c.snapshot_date == day))
        if blocks:
            conn.execute(sa.insert(snapshot_blocks), [{**b, "store_id": store_id, "snapshot_date": day} for b in blocks])

    def _insert_snapshots(self, conn: sa.Connection, snapshot_type_sql: str, from_sql: str) -> int:
        """Copy staged profiles (aliased p in from_sql) into customer_profile_snapshots."""
        copied = ", ".join(SNAPSHOT_COPIED_COLUMNS)
        return conn.execute(sa.text(
            f"INSERT INTO {self.qualified('customer_profile_snapshots')} (store_id, customer_id, snapshot_date, snapshot_type, {copied}) "
            f"SELECT p.store_id, p.customer_id, p.profile_date, {snapshot_type_sql}, {', '.join('p.' + c for c in SNAPSHOT_COPIED_COLUMNS)} "
            f"FROM {from_sql}"
        )).rowcount

    # ---- snapshots ------------------------------------------------------------------------------
    def snapshot_sources(self, store_id: str, start, end) -> pd.DataFrame:
        """Per snapshot date of the store in [start, end]: the type drift reads (snapshot_date, snapshot_type).

        All types of a date hold the same profile: the finest calendar type present (every snapshot
        customer of the date has it), else profile_change (a date whose calendar rows were pruned)."""
        params = {"s": store_id, "a": pd.Timestamp(start).date(), "b": pd.Timestamp(end).date()}
        table = self.qualified("customer_profile_snapshots")
        if self.snapshots_partitioned:
            days = [d for d in (pd.Timestamp(p[len(SNAPSHOT_PARTITION_PREFIX):]) for p in self.snapshot_partitions()) if params["a"] <= d.date() <= params["b"]]
            # One index probe per (date, type) with literals, instead of a DISTINCT over every row of the range
            # (11M rows at 1M customers: 3.5-6 s right after a daily write, before autovacuum has run).
            probes = [f"SELECT DATE '{d:%Y-%m-%d}' AS snapshot_date, '{t}' AS snapshot_type WHERE EXISTS (SELECT 1 FROM {PG_SCHEMA}.{SNAPSHOT_PARTITION_PREFIX}{d:%Y%m%d} "
                      f"WHERE store_id = :s AND snapshot_date = DATE '{d:%Y-%m-%d}' AND snapshot_type = '{t}')" for d in days for t in RETAINED_TYPES]
            kinds = self.read_sql(" UNION ALL ".join(probes), params) if probes else pd.DataFrame(columns=["snapshot_date", "snapshot_type"])
        else:
            kinds = self.read_sql(f"SELECT DISTINCT snapshot_date, snapshot_type FROM {table} WHERE store_id = :s AND snapshot_date BETWEEN :a AND :b", params)
        rank = {t: i for i, t in enumerate(RETAINED_TYPES)}
        kinds["rank"] = kinds["snapshot_type"].map(rank).fillna(len(rank))
        kinds["snapshot_date"] = pd.to_datetime(kinds["snapshot_date"])
        return kinds.sort_values(["snapshot_date", "rank"]).drop_duplicates("snapshot_date")[["snapshot_date", "snapshot_type"]].reset_index(drop=True)

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
            params[f"d{i}"], params[f"t{i}"] = day.date(), kind
            pairs.append(f"(snapshot_date = :d{i} AND snapshot_type = :t{i})")
        lo, hi = customer_range
        collate = ' COLLATE "C"' if self.is_postgres else ""  # SQLite compares text by code point already
        bounds = ""
        if lo is not None:
            bounds += f" AND customer_id{collate} >= :lo"
            params["lo"] = lo
        if hi is not None:
            bounds += f" AND customer_id{collate} < :hi"
            params["hi"] = hi
        select = ", ".join(f"CAST({c} AS TEXT) AS {c}" if c in JSON_COLUMNS else c for c in columns)
        frame = self.read_sql(f"SELECT {select} FROM {self.qualified('customer_profile_snapshots')} WHERE store_id = :s AND ({' OR '.join(pairs)}){bounds}", params)
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
            f"SELECT DISTINCT customer_id FROM {self.qualified('customer_profile_snapshots')} WHERE store_id = :s AND snapshot_date = :d",
            {"s": store_id, "d": pd.Timestamp(day).date()})["customer_id"].astype(str).sort_values(kind="stable").to_numpy()
        return [str(v) for v in ids[chunk_customers::chunk_customers]]

    def snapshot_stats(self, store_id: str, snapshot_date) -> dict:
        """Rows per type and duplicate keys of a store's snapshots dated D (the checks' inputs)."""
        params = {"s": store_id, "d": pd.Timestamp(snapshot_date).date()}
        table = self.qualified("customer_profile_snapshots")
        per_type = self.read_sql(
            f"SELECT snapshot_type, count(*) AS n FROM {table} WHERE store_id = :s AND snapshot_date = :d GROUP BY snapshot_type", params)
        dupes = self.read_sql(
            f"SELECT count(*) AS n FROM (SELECT 1 FROM {table} WHERE store_id = :s AND snapshot_date = :d "
            "GROUP BY customer_id, snapshot_type HAVING count(*) > 1) d", params)
        return {"rows_by_type": dict(zip(per_type["snapshot_type"], per_type["n"].astype(int))), "duplicate_keys": int(dupes["n"].iloc[0])}

    def last_snapshot_memberships(self, store_id: str, before) -> pd.Series:
        """Each customer's fuzzy_memberships (JSON text) from their newest snapshot dated before D."""
        frame = self.read_sql(
            "SELECT customer_id, memberships FROM ("
            " SELECT customer_id, CAST(fuzzy_memberships AS TEXT) AS memberships,"
            "  ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY snapshot_date DESC) AS newest_first"
            f" FROM {self.qualified('customer_profile_snapshots')} WHERE store_id = :s AND snapshot_date < :d"
            ") ranked WHERE newest_first = 1",
            {"s": store_id, "d": pd.Timestamp(before).date()},
        )
        return pd.Series(frame["memberships"].to_numpy(), index=pd.Index(frame["customer_id"].astype(str), name="customer_id"))

    def _snapshot_cutoffs(self, policy) -> dict[tuple[str, str], tuple]:
        """{(store, type): (the store's newest snapshot date, the type's cutoff)}: rows dated before the cutoff are expired."""
        newest = self.read_sql(f"SELECT store_id, max(snapshot_date) AS newest FROM {self.qualified('customer_profile_snapshots')} GROUP BY store_id")
        return {(store, t): (date.date(), policy.cutoff(t, date).date())
                for store, date in zip(newest["store_id"], pd.to_datetime(newest["newest"])) for t in RETAINED_TYPES}

    def snapshot_expiry(self, policy) -> pd.DataFrame:
        """Per store and type: newest snapshot date of the store, cutoff, and the number of expired rows."""
        table = self.qualified("customer_profile_snapshots")
        rows = []
        with self.engine.connect() as conn:
            for (store, snapshot_type), (newest, cutoff) in self._snapshot_cutoffs(policy).items():
                n = conn.execute(sa.text(
                    f"SELECT count(*) FROM {table} WHERE store_id = :s AND snapshot_type = :t AND snapshot_date < :c"),
                    {"s": store, "t": snapshot_type, "c": cutoff}).scalar_one()
                rows.append({"store_id": store, "snapshot_type": snapshot_type, "newest": newest, "cutoff": cutoff, "expired": int(n)})
        return pd.DataFrame(rows, columns=["store_id", "snapshot_type", "newest", "cutoff", "expired"])

    def prune_snapshots(self, policy) -> pd.DataFrame:
        """Delete expired snapshots in bulk, per store and type, in one transaction; returns the counts.

        On a partitioned PostgreSQL table, a date partition whose every row is expired is dropped
        whole (its rows are counted first); the rest is deleted per store and type.
        """
        table = customer_profile_snapshots
        cutoffs = {key: cutoff for key, (_, cutoff) in self._snapshot_cutoffs(policy).items()}
        counts = {key: 0 for key in cutoffs}
        with self.engine.begin() as conn:
            for partition in self.snapshot_partitions():
                day = pd.Timestamp(partition[len(SNAPSHOT_PARTITION_PREFIX):]).date()
                held = conn.execute(sa.text(
                    f"SELECT store_id, snapshot_type, count(*) FROM {PG_SCHEMA}.{partition} GROUP BY store_id, snapshot_type")).all()
                if all(day < cutoffs.get((store, t), day) for store, t, _ in held):
                    conn.execute(sa.text(f"DROP TABLE {PG_SCHEMA}.{partition}"))
                    for store, t, n in held:
                        counts[(store, t)] += int(n)
            for (store, snapshot_type), cutoff in cutoffs.items():
                deleted = conn.execute(sa.delete(table).where(
                    table.c.store_id == store, table.c.snapshot_type == snapshot_type, table.c.snapshot_date < cutoff)).rowcount
                counts[(store, snapshot_type)] += int(deleted or 0)
            # A date's blocks copy its calendar snapshots: they go when the last of those goes.
            snap = self.qualified("customer_profile_snapshots")
            conn.execute(sa.text(
                f"DELETE FROM {self.qualified('snapshot_blocks')} WHERE NOT EXISTS (SELECT 1 FROM {snap} s "
                f"WHERE s.store_id = {self.qualified('snapshot_blocks')}.store_id AND s.snapshot_date = {self.qualified('snapshot_blocks')}.snapshot_date "
                f"AND s.snapshot_type IN ({', '.join(repr(t) for t in SNAPSHOT_TYPES)}))"))
        rows = [{"store_id": s, "snapshot_type": t, "cutoff": cutoffs[(s, t)], "deleted": n} for (s, t), n in counts.items()]
        return pd.DataFrame(rows, columns=["store_id", "snapshot_type", "cutoff", "deleted"])

    def customer_history(self, store_id: str, customer_id: str, days: int, as_of=None, snapshot_type: str | None = None) -> pd.DataFrame:
        """One customer's snapshots over the `days` days up to as_of (default: their newest), oldest first.

        Without snapshot_type: one row per date (the rows of the history view); with it: that cadence only.
        """
        return pd.DataFrame(self.customer_history_rows(store_id, customer_id, days, as_of, snapshot_type))

    def customer_history_rows(self, store_id: str, customer_id: str, days: int, as_of=None, snapshot_type: str | None = None,
                              columns: tuple[str, ...] | None = None) -> list[dict]:
        """customer_history as row dicts (the read API's path: no DataFrame per request); `columns` (default all) of
        the snapshot table, snapshot_date and snapshot_type always (the API leaves out behavioral_features, the
        largest JSON to decode)."""
        if columns is None:
            select = "*"
        else:
            unknown = set(columns) - set(customer_profile_snapshots.c.keys())
            if unknown:
                raise ValueError(f"not columns of customer_profile_snapshots: {sorted(unknown)}")
            select = ", ".join(dict.fromkeys(("snapshot_date", "snapshot_type", *columns)))
        # The table, not the history view: its key (store, customer, date, type) serves both queries on SQLite and
        # PostgreSQL (SQLite scanned the view's window function: 7 ms per call at 10k customers); the finest type
        # of each date is kept here, as the view keeps it.
        params: dict = {"s": store_id, "c": customer_id}
        source = self.qualified("customer_profile_snapshots")
        type_clause = ""
        if snapshot_type is not None:
            type_clause = " AND snapshot_type = :t"
            params["t"] = snapshot_type
        with self.engine.connect() as conn:
            if as_of is None:
                as_of = conn.execute(sa.text(f"SELECT max(snapshot_date) FROM {source} WHERE store_id = :s AND customer_id = :c{type_clause}"),
                                     params).scalar()
                if as_of is None:
                    return []
            end = pd.Timestamp(as_of).date()
            params.update({"start": (pd.Timestamp(end) - pd.Timedelta(days=days)).date(), "end": end})
            rows = [dict(r) for r in conn.execute(sa.text(
                f"SELECT {select} FROM {source} WHERE store_id = :s AND customer_id = :c AND snapshot_date BETWEEN :start AND :end{type_clause} "
                "ORDER BY snapshot_date"), params).mappings()]
        rank = {t: i for i, t in enumerate(RETAINED_TYPES)}
        finest: dict = {}
        for row in rows:
            kept = finest.get(row["snapshot_date"])
            if kept is None or rank[row["snapshot_type"]] < rank[kept["snapshot_type"]]:
                finest[row["snapshot_date"]] = row
        return list(finest.values()) if snapshot_type is None else rows
