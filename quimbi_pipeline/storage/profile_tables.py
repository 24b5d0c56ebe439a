"""customer_profiles: each customer's newest profile; the write of a store's partition D (one transaction
that also replaces D's snapshots, models, transitions and outlier flags through their families)."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import sqlalchemy as sa

from quimbi_pipeline.history.snapshot_values import (
    VALUE_COLUMNS,
    SnapshotValues,
    archetype_dictionary,
    values_from_json,
)
from quimbi_pipeline.storage.connection import (
    PG_SCHEMA,
    Json,
    metadata,
    staging_metadata,
)

PROFILES_FILLFACTOR = 45  # percent of a page filled by inserts: room for each row's next version (rows under 2 kB)

customer_profiles = sa.Table(
    "customer_profiles", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("archetype_id", sa.Text, nullable=False),
    sa.Column("archetype_level", sa.Integer, nullable=False),
    sa.Column("archetype_name", sa.Text, nullable=False),
    sa.Column("dominant_segments", Json, nullable=False),
    sa.Column("fuzzy_memberships", Json, nullable=False),
    sa.Column("behavioral_features", Json, nullable=False),
    sa.Column("churn_risk_score", sa.Float, nullable=False),
    sa.Column("churn_risk_level", sa.Text, nullable=False),
    sa.Column("predicted_ltv", sa.Float, nullable=False),
    # Expected purchases over the churn horizon (added with the P(no purchase) churn score; NULL in rows written before).
    sa.Column("expected_purchases", sa.Float),
    sa.Column("total_orders", sa.Integer, nullable=False),
    sa.Column("lifetime_value", sa.Float, nullable=False),
    sa.Column("days_since_first_order", sa.Integer, nullable=False),
    sa.Column("tenure_months", sa.Float, nullable=False),
    sa.Column("profile_date", sa.Date, nullable=False),
    sa.Column("model_version", sa.Text, nullable=False),
    # Added with the renewal churn model (NULL in rows written before): the expected date of the customer's next
    # order, and what their churn and segments stand on (model/churn.py evidence_of).
    sa.Column("next_order_date", sa.Date),
    sa.Column("history_basis", Json),
    sa.Index("ix_customer_profiles_store_archetype", "store_id", "archetype_id"),
    # A date's write updates every active customer's row. With no index on profile_date (which every update changes)
    # and half of each page left free, PostgreSQL updates a row within its page (a HOT update: no new index entries,
    # the old version pruned in place): at 889k rows the upsert took 10-11 s instead of 22-23 s, and the table stays
    # at twice its packed size instead of growing by a version of every row each date until a vacuum.
    postgresql_with={"fillfactor": PROFILES_FILLFACTOR},
)
# The (store_id, profile_date) index the table had until 2026-12-07 (quimbi migrate drops it).
DATE_INDEX = "ix_customer_profiles_store_date"

# Which store dates (and customer ranges: a shard's) have had profiles written, so that a write of D looks for rows
# dated D to remove only when an earlier write of D may have left some: without the date index that look is a scan
# of the store's rows (a second at 1M customers, far more for a sharded store of millions, per shard).
# A range is [range_start, range_end) of customer ids in code-point order, '' meaning unbounded (a whole store: both).
profile_writes = sa.Table(
    "profile_writes", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("profile_date", sa.Date, primary_key=True),
    sa.Column("range_start", sa.Text, primary_key=True),
    sa.Column("range_end", sa.Text, primary_key=True),
    sa.Column("written_at", sa.Text, nullable=False),
)

# The staged profiles of a write with snapshots: the profile columns and the snapshot rows' value arrays.
profile_values_stage = sa.Table(
    "customer_profiles_with_values", staging_metadata,
    *[sa.Column(c.name, c.type) for c in customer_profiles.columns],
    *[sa.Column(c, sa.Text) for c in VALUE_COLUMNS],
    # False: the row only feeds the snapshots; a later date of the same run writes the customer's profile (NULL: written).
    sa.Column("write_profile", sa.Boolean),
)


JSON_COLUMNS = ("dominant_segments", "fuzzy_memberships", "behavioral_features")
# JSON columns that may be NULL (rows written before they existed).
OPTIONAL_JSON_COLUMNS = ("history_basis",)


def normalize_profiles(frame: pd.DataFrame) -> pd.DataFrame:
    """Profiles read back from either database in one canonical form (JSON as sorted-key text, dates as ISO).

    For tests and analysts' small reads: it parses JSON row by row.
    """
    out = frame.copy()
    for col in JSON_COLUMNS + OPTIONAL_JSON_COLUMNS:
        if col in out:
            out[col] = [None if v is None else json.dumps(v if not isinstance(v, str) else json.loads(v), sort_keys=True) for v in out[col]]
    if "next_order_date" in out:
        out["next_order_date"] = pd.to_datetime(out["next_order_date"]).dt.strftime("%Y-%m-%d").where(out["next_order_date"].notna(), None)
    if "profile_date" in out:
        out["profile_date"] = pd.to_datetime(out["profile_date"]).dt.strftime("%Y-%m-%d")
    return out


class ProfileStore:
    # ---- writes ---------------------------------------------------------------------------------
    def write_profiles_partition(
        self, store_id: str, as_of, profiles: pd.DataFrame, models: pd.DataFrame, snapshot_types: list[str] | tuple = (),
        changed: pd.Index | None = None, transitions: pd.DataFrame | None = None, outliers: pd.DataFrame | None = None,
        snapshot_customers: pd.Index | None = None, blocks: list[dict] | None = None, snapshot_values: SnapshotValues | None = None,
        deferred: np.ndarray | None = None, analyze: bool = True, shard=None, state_digest: str = "", snapshot_rows: bool = True,
    ) -> dict:
        """Replace store S's rows of partition D in one transaction.

        customer_profiles holds each customer's newest profile: rows dated D are replaced, and a
        staged row only overwrites an existing row whose profile_date <= D (a backfill of an old
        date never overwrites a newer profile). segment_models rows of D's model_version are replaced.
        With snapshot_types, the store's snapshots dated D are replaced by one copy of D's profiles per
        type; without, snapshots are not touched (snapshots off = the original outputs only).
        `changed` customers also get a "profile_change" snapshot of D. `transitions` (MONIC, of a refit
        written in `models`) replace the rows of their model versions; `outliers` (ENABLE_OUTLIER_DETECTION)
        replace the store's customer_outlier_flags of D. `snapshot_customers` (a rollout share) limits
        the snapshots to those customers. `blocks` (snapshot_blocks.encode_blocks of the same customers)
        replace the store's snapshot_blocks of D with the snapshots. `snapshot_values` (profiles.values_of, the
        same customers in the same order) are the snapshot rows' value arrays; without them they are derived from
        the profiles' JSON text (snapshot_values.values_from_json, slower). `deferred` (a boolean per profile row): rows
        whose customer_profiles row a later date of the same run writes (a backfill's range); they feed the snapshots
        only, and their JSON objects may be empty; with it, the date's unflagged outlier rows are left out too (the
        next date's write cuts them). `analyze=False`: the date's snapshot partition is left for the
        caller's analyze_date_partitions (a run of several stores).
        `shard` (run/shards.Shard, with the `state_digest` of the store state its rows were scored against): the
        rows are one shard of the store's customers: only its customer range is replaced (the profiles, snapshots,
        blocks and outlier flags of D), the first shard alone writes `models` and `transitions`, and the shard is
        recorded in store_shards; the store's outlier_rates of D are written once every shard is.
        `snapshot_rows=False` (with snapshot_types): the store's snapshot rows of D are removed and none are written, only
        `blocks` (a backfill range's date the retention policy expires by the range's end; snapshot_sources reads a date
        with blocks and no rows as holding its calendar types).
        """
        as_of_date = pd.Timestamp(as_of).date()
        customer_range = (None, None) if shard is None else shard.customer_range
        cols = [c.name for c in customer_profiles.columns]
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in ("store_id", "customer_id"))
        target = self.qualified("customer_profiles")
        with_snapshot_rows = bool(snapshot_types) and snapshot_rows  # not snapshots off, nor blocks alone
        self.prepare_date_partitions((["profile_snapshots"] if with_snapshot_rows else []) + (["customer_outlier_flags"] if outliers is not None else []),
                                     as_of_date)
        dated_d = sa.delete(customer_profiles).where(customer_profiles.c.store_id == store_id, customer_profiles.c.profile_date == as_of_date,
                                                     self.customer_range_clause(customer_profiles.c.customer_id, customer_range))
        with self.engine.begin() as conn:
            rewrite = self._written_before(conn, store_id, as_of_date, customer_range)
            deleted = conn.execute(dated_d).rowcount if rewrite and not len(profiles) else 0
            written, stage_ref, values, archetypes = 0, None, None, None
            if len(profiles):
                staged, stage_table, which = profiles[cols], customer_profiles, "true"
                if with_snapshot_rows:
                    values = snapshot_values if snapshot_values is not None else values_from_json(profiles)
                    if not np.array_equal(values.frame["customer_id"].astype(str).to_numpy(object), profiles["customer_id"].astype(str).to_numpy(object)):
                        raise ValueError(f"store {store_id}: the snapshot values are not of the profiles' customers in their order")
                    staged = pd.concat([staged.reset_index(drop=True), values.frame[list(VALUE_COLUMNS)].reset_index(drop=True)], axis=1)
                    stage_table, archetypes = profile_values_stage, archetype_dictionary(values.frame["dominant_positions"], profiles)
                    if deferred is not None:
                        staged["write_profile"], which = ~np.asarray(deferred, dtype=bool), "write_profile"
                elif deferred is not None:
                    staged = staged.loc[~np.asarray(deferred, dtype=bool)]
                stage_ref = self._stage(conn, stage_table, staged, two_sessions=True)
                # Rows dated D that no staged row replaces go (a customer no longer active, or one a later date of the run
                # writes); the others are updated in place by the upsert below, not deleted and inserted again, so that a
                # re-run of D updates within the page as the next date's run does.
                if rewrite:
                    deleted = conn.execute(dated_d.where(sa.text(
                        f"NOT EXISTS (SELECT 1 FROM {stage_ref} s WHERE s.customer_id = customer_profiles.customer_id"
                        f"{' AND s.write_profile' if which == 'write_profile' else ''})"))).rowcount
                written = conn.execute(sa.text(
                    f"INSERT INTO {target} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM {stage_ref} WHERE {which} "
                    f"ON CONFLICT (store_id, customer_id) DO UPDATE SET {updates} "
                    f"WHERE {target}.profile_date <= excluded.profile_date"
                )).rowcount
            self.insert_new(conn, profile_writes, [{"store_id": store_id, "profile_date": as_of_date, "range_start": customer_range[0] or "",
                                                    "range_end": customer_range[1] or "", "written_at": pd.Timestamp.now(tz="UTC").isoformat()}],
                            update=["written_at"])
            snapshot_started = time.perf_counter()
            snapshots = 0
            if snapshot_types:
                snapshots = self._replace_snapshots(conn, store_id, as_of_date, stage_ref if len(profiles) and with_snapshot_rows else None,
                                                    snapshot_types, changed, snapshot_customers, values, archetypes, customer_range)
            snapshot_seconds = time.perf_counter() - snapshot_started
            blocks_started = time.perf_counter()
            if snapshot_types:
                self.replace_snapshot_blocks(conn, store_id, as_of_date, blocks if len(profiles) else None, shard)
                self._log_snapshot_write(conn, store_id, as_of_date)
            block_seconds = time.perf_counter() - blocks_started
            if shard is None or shard.first:  # the shards' shared models: one shard writes them
                self._replace_models(conn, store_id, models)
                self._replace_transitions(conn, store_id, transitions)
            if outliers is not None:
                self._replace_outlier_flags(conn, store_id, as_of_date, outliers, left_to_next=deferred is not None, shard=shard)
            if shard is not None:
                self._record_shard(conn, store_id, as_of_date, shard, state_digest, len(profiles), outliers)
        if shard is not None and outliers is not None:
            self.write_shard_outlier_rates(store_id, as_of_date, shard.shards)  # after the commit: the last shard's sees every shard
        analyze_started = time.perf_counter()
        if with_snapshot_rows and analyze:
            self.analyze_date_partition("profile_snapshots", as_of_date, written=int(snapshots or 0))
        return {"deleted": int(deleted or 0), "written": int(written or 0), "snapshots": int(snapshots or 0),
                "snapshot_seconds": snapshot_seconds, "block_seconds": block_seconds, "analyze_seconds": time.perf_counter() - analyze_started}

    def _written_before(self, conn: sa.Connection, store_id: str, day, customer_range: tuple[str | None, str | None]) -> bool:
        """Whether an earlier write of the store's date D covered customers of `customer_range` (profile_writes), so that
        rows dated D may be there to replace."""
        rows = conn.execute(sa.select(profile_writes.c.range_start, profile_writes.c.range_end).where(
            profile_writes.c.store_id == store_id, profile_writes.c.profile_date == day)).all()
        lo, hi = customer_range
        return any((hi is None or start < hi) and (end == "" or lo is None or lo < end) for start, end in rows)

    def newest_profile_date(self, store_id: str):
        """The store's newest profile date (None before its first write), from profile_writes' key; from customer_profiles
        (a read of the store's rows) in a warehouse no run of this version has opened yet (a read API started first on an
        upgraded warehouse), where profile_writes is missing or not filled."""
        if not self.__dict__.get("_profile_writes_seen"):
            with self.engine.connect() as conn:
                self._profile_writes_seen = sa.inspect(conn).has_table("profile_writes", schema=PG_SCHEMA if self.is_postgres else None)
        if self._profile_writes_seen:
            found = self.fetch_rows(f"SELECT max(profile_date) AS d FROM {self.qualified('profile_writes')} WHERE store_id = :s", {"s": store_id})[0]["d"]
            if found is not None:
                return found
        return self.fetch_rows(f"SELECT max(profile_date) AS d FROM {self.qualified('customer_profiles')} WHERE store_id = :s", {"s": store_id})[0]["d"]

    def record_earlier_profile_writes(self, conn: sa.Connection) -> None:
        """profile_writes filled from customer_profiles when it is empty and the profiles are not (a warehouse written
        before the table existed): every stored (store, date) counts as written whole. One scan, at the first start;
        a start that finds the table filled returns at one look (SQLite runs the fill's statement over the profiles'
        key even then: 0.09 s at 2M rows)."""
        if conn.execute(sa.select(profile_writes.c.store_id).limit(1)).first() is not None:
            return
        self.fill_profile_writes(conn)

    def fill_profile_writes(self, conn: sa.Connection) -> None:
        """The fill itself, as one statement that is safe beside runs starting and writing at the same time: the look
        above is a read of its own, so another run may write profiles and their profile_writes rows after it (eight
        first runs on an empty warehouse did). The statement fills only while the table is still empty, and leaves any
        key another run writes meanwhile as that run wrote it (on an empty warehouse it inserts nothing)."""
        written = self.qualified("profile_writes")
        conn.execute(sa.text(
            f"INSERT INTO {written} (store_id, profile_date, range_start, range_end, written_at) "
            f"SELECT DISTINCT store_id, profile_date, '', '', 'before profile_writes' FROM {self.qualified('customer_profiles')} "
            f"WHERE NOT EXISTS (SELECT 1 FROM {written}) ON CONFLICT DO NOTHING"))

    def profiles(self, store_id: str | None = None, profile_date=None) -> pd.DataFrame:
        clauses, params = [], {}
        if store_id is not None:
            clauses.append("store_id = :store_id")
            params["store_id"] = store_id
        if profile_date is not None:
            clauses.append("profile_date = :profile_date")
            params["profile_date"] = pd.Timestamp(profile_date).date()
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        frame = self.read_sql(f"SELECT * FROM {self.qualified('customer_profiles')}{where} ORDER BY store_id, customer_id", params)
        return normalize_profiles(frame)

    def profile_dates_since(self, store_id: str, profile_date, customer_range: tuple[str | None, str | None] = (None, None)) -> pd.DataFrame:
        """customer_id and profile_date of the store's rows dated D or later (of the customers in `customer_range`)."""
        params = {"s": store_id, "d": pd.Timestamp(profile_date).date()}
        sql = f"SELECT customer_id, profile_date FROM {self.qualified('customer_profiles')} WHERE store_id = :s AND profile_date >= :d"
        frame = self.read_sql(sql + self.customer_range_sql(customer_range, params), params)
        frame["customer_id"] = frame["customer_id"].astype(str)
        frame["profile_date"] = pd.to_datetime(frame["profile_date"])
        return frame

    def membership_sum_violations(self, store_id: str, profile_date, tolerance: float = 1e-4, customer_range: tuple[str | None, str | None] = (None, None)) -> int:
        """Rows of (store, D) where some axis' memberships do not sum to 1 within `tolerance`, counted in SQL;
        only customers in `customer_range` [lo, hi) (customer_range_sql), so that disjoint ranges can be counted side
        by side and added."""
        if self.is_postgres:
            # The sum as a LATERAL subquery, not a correlated one: PostgreSQL memoizes it over equal axis objects
            # (at 814k customers 11.4 s instead of 15-17 s).
            sql = (
                f"SELECT count(DISTINCT p.customer_id) FROM {self.qualified('customer_profiles')} p "
                "CROSS JOIN LATERAL jsonb_each(p.fuzzy_memberships) a "
                "CROSS JOIN LATERAL (SELECT sum(m.value::float8) AS total FROM jsonb_each_text(a.value) m) t "
                "WHERE p.store_id = :s AND p.profile_date = :d AND abs(t.total - 1) > :tol"
            )
        else:
            sql = (
                "SELECT count(DISTINCT p.customer_id) FROM customer_profiles p, json_each(p.fuzzy_memberships) a "
                "WHERE p.store_id = :s AND p.profile_date = :d "
                "AND abs((SELECT sum(m.value) FROM json_each(a.value) m) - 1) > :tol"
            )
        params = {"s": store_id, "d": pd.Timestamp(profile_date).date(), "tol": tolerance}
        sql += self.customer_range_sql(customer_range, params, "p.customer_id")
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(sql), params).scalar_one())
