"""The one module that reads and writes warehouse tables (SQLAlchemy 2 Core).

QUIMBI_WAREHOUSE_URL chooses the database: SQLite by default (a file under the project's data
folder), PostgreSQL in production (tables in schema `platform`, JSON as JSONB, bulk loads by COPY).
A partition's write for one store is one transaction: staged rows are merged, so a re-run replaces
exactly that partition's rows and a failure leaves the previous rows intact.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from queue import Empty, Queue

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from quimbi_pipeline.snapshots import PROFILE_CHANGE, RETAINED_TYPES, SNAPSHOT_TYPES

log = logging.getLogger(__name__)
PG_SCHEMA = "platform"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
COPY_CHUNK_ROWS = 200_000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")

metadata = sa.MetaData()
Json = sa.JSON().with_variant(JSONB(), "postgresql")

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
    sa.Index("ix_customer_profiles_store_date", "store_id", "profile_date"),
    sa.Index("ix_customer_profiles_store_archetype", "store_id", "archetype_id"),
)

segment_models = sa.Table(
    "segment_models", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("model_version", sa.Text, primary_key=True),
    sa.Column("axis", sa.Text, primary_key=True),
    sa.Column("algorithm", sa.Text, nullable=False),
    sa.Column("k", sa.Integer, nullable=False),
    sa.Column("silhouette", sa.Float),
    sa.Column("segment_names", Json, nullable=False),
    sa.Column("centroids", Json, nullable=False),
    sa.Column("scaler", Json, nullable=False),
    sa.Column("n_customers", sa.Integer, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("fitted_on", sa.Date, nullable=False),
)


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

# MONIC transitions recorded at each refit of a stable segment model (ENABLE_STABLE_SEGMENTS).
segment_transitions = sa.Table(
    "segment_transitions", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("model_version", sa.Text, primary_key=True),
    sa.Column("axis", sa.Text, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("previous_version", sa.Text),
    sa.Column("transition", sa.Text, nullable=False),
    sa.Column("old_segments", Json, nullable=False),
    sa.Column("new_segments", Json, nullable=False),
    sa.Column("overlap", sa.Float, nullable=False),
)

# Drift tables (ENABLE_DRIFT_ANALYSIS). PostgreSQL: one partition per as_of_date, like the snapshots.
customer_drift = sa.Table(
    "customer_drift", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("as_of_date", sa.Date, primary_key=True),
    sa.Column("window_days", sa.Integer, primary_key=True),
    sa.Column("overall_drift", sa.Float, nullable=False),
    sa.Column("drift_velocity", sa.Float, nullable=False),
    sa.Column("predicted_30d_drift", sa.Float, nullable=False),
    sa.Column("churn_risk_trend", sa.Float, nullable=False),
    sa.Column("start_date", sa.Date, nullable=False),
    sa.Column("end_date", sa.Date, nullable=False),
    sa.Column("n_snapshots", sa.Integer, nullable=False),
    sa.Column("archetype_journey", Json, nullable=False),
    sa.Column("recommendations", Json, nullable=False),
    sa.Index("ix_customer_drift_store_date_window", "store_id", "as_of_date", "window_days"),
    postgresql_partition_by="RANGE (as_of_date)",
)
customer_axis_drift = sa.Table(
    "customer_axis_drift", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("as_of_date", sa.Date, primary_key=True),
    sa.Column("window_days", sa.Integer, primary_key=True),
    sa.Column("axis", sa.Text, primary_key=True),
    sa.Column("drift_score", sa.Float, nullable=False),
    sa.Column("direction", sa.Text, nullable=False),
    sa.Column("velocity", sa.Float, nullable=False),
    sa.Column("n_transitions", sa.Integer, nullable=False),
    sa.Column("transitions", Json, nullable=False),
    postgresql_partition_by="RANGE (as_of_date)",
)
# Analysts look for the customers who moved (README: degraded frequency); "stable" is most rows (99.6%
# in the 1M benchmark): a partial index costs the daily COPY almost nothing to maintain.
sa.Index("ix_customer_axis_drift_moved", customer_axis_drift.c.store_id, customer_axis_drift.c.as_of_date, customer_axis_drift.c.window_days,
         customer_axis_drift.c.axis, customer_axis_drift.c.direction,
         postgresql_where=customer_axis_drift.c.direction != "stable", sqlite_where=customer_axis_drift.c.direction != "stable")
customer_drift_anomalies = sa.Table(
    "customer_drift_anomalies", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("as_of_date", sa.Date, primary_key=True),
    sa.Column("anomaly_type", sa.Text, primary_key=True),
    sa.Column("axis", sa.Text, primary_key=True),
    sa.Column("anomaly_date", sa.Date, primary_key=True),
    sa.Column("severity", sa.Float, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Index("ix_customer_drift_anomalies_store_date_type", "store_id", "as_of_date", "anomaly_type"),
)
population_drift = sa.Table(
    "population_drift", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("as_of_date", sa.Date, primary_key=True),
    sa.Column("axis", sa.Text, primary_key=True),
    sa.Column("reference_date", sa.Date, nullable=False),
    sa.Column("n_reference", sa.Integer, nullable=False),
    sa.Column("n_current", sa.Integer, nullable=False),
    sa.Column("segment_share_shift", sa.Float, nullable=False),
    sa.Column("feature_psi", sa.Float),
    sa.Column("segment_shares", Json, nullable=False),
    sa.Column("feature_psi_by_feature", Json, nullable=False),
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
drift_inputs = sa.Table(
    "drift_inputs", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("as_of_date", sa.Date, primary_key=True),
    sa.Column("history_days", sa.Integer, nullable=False),
    sa.Column("signature", sa.Text, nullable=False),  # sha1 of the (snapshot_date, written_at) pairs read
)
# Outlier flags (ENABLE_OUTLIER_DETECTION): one row per customer, date and method.
customer_outlier_flags = sa.Table(
    "customer_outlier_flags", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("flag_date", sa.Date, primary_key=True),
    sa.Column("method", sa.Text, primary_key=True),
    sa.Column("is_outlier", sa.Boolean, nullable=False),
    sa.Column("outlier_score", sa.Float, nullable=False),
    sa.Column("outlier_axes", Json, nullable=False),
    sa.Column("explanation", sa.Text),  # NULL when not an outlier
    sa.Index("ix_customer_outlier_flags_store_date_method", "store_id", "flag_date", "method", "is_outlier"),
    postgresql_partition_by="RANGE (flag_date)",
)
# Tables partitioned by a date column on PostgreSQL (a partition per date, created on first write).
DATE_PARTITIONED = {"customer_profile_snapshots": "snapshot_date", "customer_drift": "as_of_date", "customer_axis_drift": "as_of_date",
                    "customer_outlier_flags": "flag_date"}
DRIFT_TABLES = (customer_drift, customer_axis_drift, customer_drift_anomalies, population_drift)

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


# Staging-only tables (temporary, never created in the warehouse).
staging_metadata = sa.MetaData()
changed_customers = sa.Table("changed_customers", staging_metadata, sa.Column("customer_id", sa.Text, primary_key=True))
rollout_customers = sa.Table("rollout_customers", staging_metadata, sa.Column("customer_id", sa.Text, primary_key=True))


def data_dir() -> Path:
    """The project's data folder (QUIMBI_DATA_DIR moves it), created if missing."""
    path = Path(os.environ.get("QUIMBI_DATA_DIR", PROJECT_ROOT / "data"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_warehouse_url() -> str:
    return f"sqlite:///{data_dir() / 'quimbi.sqlite'}"


def resolve_warehouse_url(url: str | None = None) -> str:
    return url or os.environ.get("QUIMBI_WAREHOUSE_URL") or default_warehouse_url()


def masked_url(url: str) -> str:
    """A warehouse URL fit for output and logs: the password replaced by ***."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<not a SQLAlchemy URL>"


def _python_rows(frame: pd.DataFrame) -> list[tuple]:
    """Rows as tuples of plain Python values (dates as ISO text, NaN as None) for DBAPI executemany."""
    cols = []
    for name in frame.columns:
        values = frame[name]
        if values.dtype == object and len(values) and hasattr(values.iloc[0], "isoformat"):
            values = pd.to_datetime(values).dt.strftime("%Y-%m-%d")  # dates as ISO text, vectorized
        arr = values.to_numpy(dtype=object)
        if values.dtype.kind == "f":
            arr[pd.isna(values).to_numpy()] = None
        cols.append(arr)
    return list(zip(*cols))


class Warehouse:
    def __init__(self, url: str | None = None, *, create: bool = True):
        self.url = resolve_warehouse_url(url)
        kwargs: dict = {}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 120}
        engine = sa.create_engine(self.url, **kwargs)
        self.is_postgres = engine.dialect.name == "postgresql"
        if self.is_postgres:
            engine = engine.execution_options(schema_translate_map={None: PG_SCHEMA})
        else:
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        self.engine = engine
        if create:
            self.create_tables()
        self.partitioned = self._partitioned_tables()

    # ---- schema -------------------------------------------------------------------------------
    def create_tables(self) -> None:
        """Create missing tables, views and columns; safe when several runs start at once on an empty
        warehouse (PostgreSQL: under an advisory lock; SQLite: under a lock file beside the database)."""
        with self._schema_lock(), self.engine.begin() as conn:
            if self.is_postgres:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('quimbi.schema'))"))
                conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}"))
            metadata.create_all(conn, checkfirst=True)
            self._add_missing_columns(conn)
            if self.is_postgres:
                # The blocks are lz4-compressed already: TOAST out of line without compressing again.
                for column in ("memberships", "features"):
                    conn.execute(sa.text(f"ALTER TABLE {self.qualified('snapshot_blocks')} ALTER COLUMN {column} SET STORAGE EXTERNAL"))
            if HISTORY_VIEW not in sa.inspect(conn).get_view_names(schema=PG_SCHEMA if self.is_postgres else None):
                conn.execute(sa.text(HISTORY_VIEW_SQL.format(view=self.qualified(HISTORY_VIEW), table=self.qualified("customer_profile_snapshots"))))

    def _schema_lock(self):
        """A process-exclusive lock for schema changes on SQLite (PostgreSQL locks inside the transaction)."""
        import contextlib
        import fcntl

        database = sa.engine.make_url(self.url).database if not self.is_postgres else None
        if not database or database == ":memory:":
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def locked():
            with open(f"{database}.schema-lock", "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        return locked()

    def _add_missing_columns(self, conn: sa.Connection) -> None:
        """Upgrade in place: columns added to a table since the warehouse was created (nullable ones only)."""
        inspector = sa.inspect(conn)
        schema = PG_SCHEMA if self.is_postgres else None
        for table in metadata.sorted_tables:
            present = {c["name"] for c in inspector.get_columns(table.name, schema=schema)}
            for column in table.columns:
                if column.name not in present and column.nullable:
                    conn.execute(sa.text(f"ALTER TABLE {self.qualified(table.name)} ADD COLUMN {column.name} "
                                         f"{column.type.compile(dialect=conn.dialect)}"))

    def _partitioned_tables(self) -> set[str]:
        """PostgreSQL tables created partitioned (older unpartitioned tables keep working)."""
        if not self.is_postgres:
            return set()
        frame = self.read_sql(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :schema AND c.relkind = 'p'", {"schema": PG_SCHEMA})
        return set(frame["relname"]) & set(DATE_PARTITIONED)

    @property
    def snapshots_partitioned(self) -> bool:
        return "customer_profile_snapshots" in self.partitioned

    def _ensure_date_partition(self, conn: sa.Connection, table: str, day) -> None:
        if table not in self.partitioned:
            return
        day = pd.Timestamp(day)
        # Concurrent store batches of one date would race on CREATE TABLE: serialize them.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('quimbi.date_partitions'))"))
        conn.execute(sa.text(
            f"CREATE TABLE IF NOT EXISTS {self._date_partition_name(table, day)} PARTITION OF {self.qualified(table)} "
            f"FOR VALUES FROM ('{day:%Y-%m-%d}') TO ('{day + pd.Timedelta(days=1):%Y-%m-%d}')"))

    def _date_partition_name(self, table: str, day) -> str:
        """The date's partition of a date-partitioned table (the table itself when not partitioned), qualified."""
        if table not in self.partitioned:
            return self.qualified(table)
        return f"{PG_SCHEMA}.{table}_p{pd.Timestamp(day):%Y%m%d}"

    def analyze_date_partition(self, table: str, day) -> None:
        """PostgreSQL: fresh statistics for a date's rows just bulk-written. Without them the first lookups
        after a daily load were planned on stale ones (drift lookup p95 166 ms at 100k customers; 3 ms after
        ANALYZE, which samples: 0.5 s)."""
        if not self.is_postgres:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.text(f"ANALYZE {self._date_partition_name(table, day)}"))
        except sa.exc.SQLAlchemyError as exc:  # after the commit: slower lookups until autovacuum runs, nothing lost
            log.warning("ANALYZE of %s for %s failed after the rows were committed: %s", table, pd.Timestamp(day).date(),
                        str(getattr(exc, "orig", None) or exc).strip().splitlines()[0])

    def date_partitions(self, table: str, conn: sa.Connection | None = None) -> list[str]:
        """The table's date partitions (PostgreSQL), as `conn`'s transaction sees them when given (it may have dropped some)."""
        if table not in self.partitioned:
            return []
        query = sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
            "JOIN pg_namespace n ON n.oid = p.relnamespace WHERE n.nspname = :schema AND p.relname = :table ORDER BY 1")
        params = {"schema": PG_SCHEMA, "table": table}
        if conn is not None:
            return list(conn.execute(query, params).scalars())
        with self.engine.connect() as own:
            return list(own.execute(query, params).scalars())

    def snapshot_partitions(self) -> list[str]:
        return self.date_partitions("customer_profile_snapshots")

    def qualified(self, table: str) -> str:
        return f"{PG_SCHEMA}.{table}" if self.is_postgres else table

    # ---- bulk load ------------------------------------------------------------------------------
    def _stage(self, conn: sa.Connection, table: sa.Table, frame: pd.DataFrame) -> str:
        """Load `frame` into a temporary copy of `table` on this connection; returns its name (as referenced)."""
        stage = f"stage_{table.name}"
        # The temporary table is declared from the SQLAlchemy table, on both databases.
        columns_ddl = ", ".join(f"{c.name} {c.type.compile(dialect=conn.dialect)}" for c in table.columns)
        if self.is_postgres:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {stage}"))
            conn.execute(sa.text(f"CREATE TEMP TABLE {stage} ({columns_ddl}) ON COMMIT DROP"))
        else:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS temp.{stage}"))
            conn.execute(sa.text(f"CREATE TEMP TABLE {stage} ({columns_ddl})"))
            stage = f"temp.{stage}"
        self._bulk_load(conn, stage, frame)
        return stage

    def _bulk_load(self, conn: sa.Connection, target: str, frame: pd.DataFrame) -> None:
        """Append `frame` to the table `target` (as referenced in SQL): COPY on PostgreSQL, executemany on SQLite."""
        payload = _csv_pieces(frame) if self.is_postgres else frame  # one piece in memory at a time
        self._load_serialized(conn, target, list(frame.columns), payload)

    def _serialize(self, frame: pd.DataFrame) -> list[memoryview] | pd.DataFrame:
        """A frame as what _load_serialized sends, made now: CSV pieces for COPY on PostgreSQL, the frame itself on SQLite."""
        return list(_csv_pieces(frame)) if self.is_postgres else frame

    def _load_serialized(self, conn: sa.Connection, target: str, cols: list[str], payload) -> None:
        """Send CSV pieces (any iterable) by COPY on PostgreSQL; insert the frame's rows on SQLite."""
        col_list = ", ".join(cols)
        raw = conn.connection.driver_connection
        if self.is_postgres:
            with raw.cursor() as cur, cur.copy(f"COPY {target} ({col_list}) FROM STDIN WITH (FORMAT csv)") as copy:
                for text in payload:
                    copy.write(text)
        else:
            placeholders = ", ".join("?" for _ in cols)
            raw.executemany(f"INSERT INTO {target} ({col_list}) VALUES ({placeholders})", _python_rows(payload))

    # ---- writes ---------------------------------------------------------------------------------
    def write_profiles_partition(
        self, store_id: str, as_of, profiles: pd.DataFrame, models: pd.DataFrame, snapshot_types: list[str] | tuple = (),
        changed: pd.Index | None = None, transitions: pd.DataFrame | None = None, outliers: pd.DataFrame | None = None,
        snapshot_customers: pd.Index | None = None, blocks: list[dict] | None = None,
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
        replace the store's snapshot_blocks of D with the snapshots.
        """
        as_of_date = pd.Timestamp(as_of).date()
        cols = [c.name for c in customer_profiles.columns]
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in ("store_id", "customer_id"))
        target = self.qualified("customer_profiles")
        with self.engine.begin() as conn:
            deleted = conn.execute(
                sa.delete(customer_profiles).where(customer_profiles.c.store_id == store_id, customer_profiles.c.profile_date == as_of_date)
            ).rowcount
            written = 0
            if len(profiles):
                stage_ref = self._stage(conn, customer_profiles, profiles[cols])
                written = conn.execute(sa.text(
                    f"INSERT INTO {target} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM {stage_ref} WHERE true "
                    f"ON CONFLICT (store_id, customer_id) DO UPDATE SET {updates} "
                    f"WHERE {target}.profile_date <= excluded.profile_date"
                )).rowcount
            snapshots = 0
            snapshot_started = time.perf_counter()
            if snapshot_types:
                self._ensure_date_partition(conn, "customer_profile_snapshots", as_of_date)
                snap = customer_profile_snapshots
                conn.execute(sa.delete(snap).where(snap.c.store_id == store_id, snap.c.snapshot_date == as_of_date))
                if len(profiles):
                    types_sql = " UNION ALL ".join(f"SELECT '{t}' AS snapshot_type" for t in snapshot_types)
                    source = f"{stage_ref} p"
                    if snapshot_customers is not None:
                        rollout_ref = self._stage(conn, rollout_customers, pd.DataFrame({"customer_id": pd.Series(snapshot_customers, dtype="string")}))
                        source += f" JOIN {rollout_ref} r ON r.customer_id = p.customer_id"
                    snapshots = self._insert_snapshots(conn, "t.snapshot_type", f"{source} CROSS JOIN ({types_sql}) t")
                if changed is not None and len(changed) and len(profiles):
                    changed_ref = self._stage(conn, changed_customers, pd.DataFrame({"customer_id": pd.Series(changed, dtype="string")}))
                    snapshots += self._insert_snapshots(conn, f"'{PROFILE_CHANGE}'", f"{stage_ref} p JOIN {changed_ref} c ON c.customer_id = p.customer_id")
            snapshot_seconds = time.perf_counter() - snapshot_started
            blocks_started = time.perf_counter()
            if snapshot_types:
                self.replace_snapshot_blocks(conn, store_id, as_of_date, blocks if len(profiles) else None)
                conn.execute(sa.delete(snapshot_writes).where(snapshot_writes.c.store_id == store_id, snapshot_writes.c.snapshot_date == as_of_date))
                conn.execute(sa.insert(snapshot_writes), [{"store_id": store_id, "snapshot_date": as_of_date,
                                                           "written_at": pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%f")}])
            block_seconds = time.perf_counter() - blocks_started
            if len(models):
                conn.execute(sa.delete(segment_models).where(
                    segment_models.c.store_id == store_id, segment_models.c.model_version.in_(models["model_version"].unique().tolist())))
                conn.execute(sa.insert(segment_models), _model_records(models))
            if outliers is not None:
                self._ensure_date_partition(conn, "customer_outlier_flags", as_of_date)
                flags = customer_outlier_flags
                conn.execute(sa.delete(flags).where(flags.c.store_id == store_id, flags.c.flag_date == as_of_date))
                if len(outliers):
                    self._bulk_load(conn, self.qualified(flags.name), outliers.assign(store_id=store_id)[[c.name for c in flags.columns]])
            if transitions is not None and len(transitions):
                conn.execute(sa.delete(segment_transitions).where(
                    segment_transitions.c.store_id == store_id, segment_transitions.c.model_version.in_(transitions["model_version"].unique().tolist())))
                conn.execute(sa.insert(segment_transitions), _model_records(transitions))
        analyze_started = time.perf_counter()
        if snapshot_types:
            self.analyze_date_partition("customer_profile_snapshots", as_of_date)
        return {"deleted": int(deleted or 0), "written": int(written or 0), "snapshots": int(snapshots or 0),
                "snapshot_seconds": snapshot_seconds, "block_seconds": block_seconds, "analyze_seconds": time.perf_counter() - analyze_started}

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

    def write_drift_partition(self, store_id: str, as_of, chunks, population: pd.DataFrame) -> tuple[dict[str, int], float]:
        """Replace store S's drift rows of as_of D in one transaction.

        `chunks` yields (customer_drift, customer_axis_drift, customer_drift_anomalies) frames, one per
        slice of customers, so a store of millions is never held in memory at once. On PostgreSQL the
        slices are computed and serialized in a background thread while the server ingests the previous
        slice's COPY (two cores: the client's work and the server's overlap). Returns (rows written per
        table, seconds spent waiting on the loads and the statistics update).
        """
        day = pd.Timestamp(as_of).date()
        tables = (customer_drift, customer_axis_drift, customer_drift_anomalies)
        written = {t.name: 0 for t in (*tables, population_drift)}
        columns = {t.name: [c.name for c in t.columns] for t in tables}

        def serialized():
            for frames in chunks:
                yield [(table, len(frame), self._serialize(frame.assign(store_id=store_id)[columns[table.name]]) if len(frame) else None)
                       for table, frame in zip(tables, frames)]

        copy_seconds = 0.0
        with self.engine.begin() as conn:
            for table in tables:
                self._ensure_date_partition(conn, table.name, day)
                conn.execute(sa.delete(table).where(table.c.store_id == store_id, table.c.as_of_date == day))
            for loads in (prefetched(serialized()) if self.is_postgres else serialized()):
                started = time.perf_counter()
                for table, n, payload in loads:
                    if n:
                        self._load_serialized(conn, self.qualified(table.name), columns[table.name], payload)
                    written[table.name] += n
                copy_seconds += time.perf_counter() - started
            conn.execute(sa.delete(population_drift).where(population_drift.c.store_id == store_id, population_drift.c.as_of_date == day))
            if len(population):
                records = population.assign(store_id=store_id).to_dict(orient="records")
                for r in records:
                    for key in ("as_of_date", "reference_date"):
                        r[key] = pd.Timestamp(r[key]).date()
                conn.execute(sa.insert(population_drift), _model_records(pd.DataFrame(records)))
            written[population_drift.name] = len(population)
        started = time.perf_counter()
        for table in tables:
            self.analyze_date_partition(table.name, day)
        copy_seconds += time.perf_counter() - started
        return written, copy_seconds

    # ---- dates that arrive out of order ---------------------------------------------------------
    def snapshot_signature(self, store_id: str, start, end) -> str:
        """A digest of when each of the store's snapshot dates in [start, end] was written."""
        import hashlib

        rows = self.read_sql(f"SELECT snapshot_date, written_at FROM {self.qualified('snapshot_writes')} "
                             "WHERE store_id = :s AND snapshot_date BETWEEN :a AND :b ORDER BY snapshot_date",
                             {"s": store_id, "a": pd.Timestamp(start).date(), "b": pd.Timestamp(end).date()})
        text = ";".join(f"{pd.Timestamp(d):%Y-%m-%d}@{w}" for d, w in zip(rows["snapshot_date"], rows["written_at"]))
        return hashlib.sha1(text.encode()).hexdigest()

    def record_drift_inputs(self, store_id: str, as_of, history_days: int) -> None:
        day = pd.Timestamp(as_of)
        signature = self.snapshot_signature(store_id, day - pd.Timedelta(days=history_days), day)
        with self.engine.begin() as conn:
            conn.execute(sa.delete(drift_inputs).where(drift_inputs.c.store_id == store_id, drift_inputs.c.as_of_date == day.date()))
            conn.execute(sa.insert(drift_inputs), [{"store_id": store_id, "as_of_date": day.date(), "history_days": history_days, "signature": signature}])

    def stale_drift_dates(self, store_id: str, after) -> list[pd.Timestamp]:
        """Later drift dates of the store whose snapshot inputs changed since their drift was computed (an earlier
        date was backfilled or re-run after them), oldest first."""
        rows = self.read_sql(f"SELECT as_of_date, history_days, signature FROM {self.qualified('drift_inputs')} "
                             "WHERE store_id = :s AND as_of_date > :d ORDER BY as_of_date",
                             {"s": store_id, "d": pd.Timestamp(after).date()})
        stale = []
        for day, days, signature in zip(pd.to_datetime(rows["as_of_date"]), rows["history_days"], rows["signature"]):
            if day - pd.Timedelta(days=int(days)) <= pd.Timestamp(after) and self.snapshot_signature(store_id, day - pd.Timedelta(days=int(days)), day) != signature:
                stale.append(day)
        return stale

    # ---- reads ----------------------------------------------------------------------------------
    def read_sql(self, sql: str, params: dict | None = None) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.read_sql(sa.text(sql), conn, params=params or {})

    def _source_ref(self, name: str) -> str:
        """A user-named table (`table` or `schema.table`) as SQL; unqualified names live in the warehouse schema."""
        if not _IDENT.match(name):
            raise ValueError(f"not a table name: {name!r}")
        return name if "." in name or not self.is_postgres else self.qualified(name)

    def read_table(self, name: str) -> pd.DataFrame:
        ref = self._source_ref(name)
        try:
            return self.read_sql(f"SELECT * FROM {ref}")
        except (sa.exc.SQLAlchemyError, pd.errors.DatabaseError) as exc:
            raise ValueError(f"cannot read table {name!r} from the warehouse: {str(exc).splitlines()[0]}") from exc

    def distinct_values(self, table: str, column: str, default: str) -> list[str]:
        """Distinct values of a source table's column; [default] when the column does not exist."""
        ref = self._source_ref(table)
        columns = self.read_sql(f"SELECT * FROM {ref} WHERE 1 = 0").columns
        if column not in columns:
            return [default]
        values = self.read_sql(f"SELECT DISTINCT {column} FROM {ref}")[column]
        return [default if v is None or str(v).strip() == "" else str(v).strip() for v in values]

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

    def profile_dates_since(self, store_id: str, profile_date) -> pd.DataFrame:
        """customer_id and profile_date of the store's rows dated D or later."""
        frame = self.read_sql(
            f"SELECT customer_id, profile_date FROM {self.qualified('customer_profiles')} WHERE store_id = :s AND profile_date >= :d",
            {"s": store_id, "d": pd.Timestamp(profile_date).date()},
        )
        frame["customer_id"] = frame["customer_id"].astype(str)
        frame["profile_date"] = pd.to_datetime(frame["profile_date"])
        return frame

    def membership_sum_violations(self, store_id: str, profile_date, tolerance: float = 1e-4) -> int:
        """Rows of (store, D) where some axis' memberships do not sum to 1 within `tolerance`, counted in SQL."""
        if self.is_postgres:
            sql = (
                f"SELECT count(DISTINCT p.customer_id) FROM {self.qualified('customer_profiles')} p, "
                "jsonb_each(p.fuzzy_memberships) a "
                "WHERE p.store_id = :s AND p.profile_date = :d "
                "AND abs((SELECT sum(m.value::float8) FROM jsonb_each_text(a.value) m) - 1) > :tol"
            )
        else:
            sql = (
                "SELECT count(DISTINCT p.customer_id) FROM customer_profiles p, json_each(p.fuzzy_memberships) a "
                "WHERE p.store_id = :s AND p.profile_date = :d "
                "AND abs((SELECT sum(m.value) FROM json_each(a.value) m) - 1) > :tol"
            )
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(sql), {"s": store_id, "d": pd.Timestamp(profile_date).date(), "tol": tolerance}).scalar_one())

    def drift_violations(self, store_id: str, as_of) -> int:
        """customer_drift / customer_axis_drift rows of (store, D) with fewer than 2 snapshots or a score outside [0, 1]."""
        params = {"s": store_id, "d": pd.Timestamp(as_of).date()}
        with self.engine.connect() as conn:
            bad = conn.execute(sa.text(
                f"SELECT count(*) FROM {self.qualified('customer_drift')} WHERE store_id = :s AND as_of_date = :d "
                "AND (n_snapshots < 2 OR overall_drift < 0 OR overall_drift > 1 OR predicted_30d_drift < 0 OR predicted_30d_drift > 1)"), params).scalar_one()
            bad += conn.execute(sa.text(
                f"SELECT count(*) FROM {self.qualified('customer_axis_drift')} WHERE store_id = :s AND as_of_date = :d "
                "AND (drift_score < 0 OR drift_score > 1)"), params).scalar_one()
        return int(bad)

    # ---- segment models -------------------------------------------------------------------------
    def segment_model_records(self, store_id: str, model_version: str) -> list[dict]:
        """segment_models rows of one version, JSON columns parsed."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(segment_models).where(
                segment_models.c.store_id == store_id, segment_models.c.model_version == model_version)).mappings().all()
        return [dict(r) for r in rows]

    def previous_model_version(self, store_id: str, prefix: str, before_version: str) -> str | None:
        """The newest version `prefix...` older than `before_version` (versions end in a date: text order is date order)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(segment_models.c.model_version)).where(
                segment_models.c.store_id == store_id, segment_models.c.model_version.like(prefix + "%"),
                segment_models.c.model_version < before_version)).scalar()

    def segment_transition_rows(self, store_id: str) -> pd.DataFrame:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(segment_transitions).where(segment_transitions.c.store_id == store_id)
                                .order_by(segment_transitions.c.model_version, segment_transitions.c.axis, segment_transitions.c.seq)).mappings().all()
        return pd.DataFrame([dict(r) for r in rows], columns=[c.name for c in segment_transitions.columns])

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

    def customer_drift(self, store_id: str, customer_id: str, window_days: int = 28, as_of=None) -> pd.DataFrame:
        """One customer's drift row for a window (newest as_of unless given) and its axis rows (one query each)."""
        params: dict = {"s": store_id, "c": customer_id, "w": window_days}
        date_clause = "as_of_date = :d" if as_of is not None else (
            f"as_of_date = (SELECT max(as_of_date) FROM {self.qualified('customer_drift')} WHERE store_id = :s AND customer_id = :c AND window_days = :w)")
        if as_of is not None:
            params["d"] = pd.Timestamp(as_of).date()
        return self.read_sql(
            f"SELECT d.*, a.axis, a.drift_score, a.direction, a.velocity, a.n_transitions FROM {self.qualified('customer_drift')} d "
            f"JOIN {self.qualified('customer_axis_drift')} a ON a.store_id = d.store_id AND a.customer_id = d.customer_id "
            "AND a.as_of_date = d.as_of_date AND a.window_days = d.window_days "
            f"WHERE d.store_id = :s AND d.customer_id = :c AND d.window_days = :w AND d.{date_clause} ORDER BY a.axis", params)


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

        Without snapshot_type: one row per date (the history view); with it: that cadence only.
        """
        params: dict = {"s": store_id, "c": customer_id}
        source = self.qualified(HISTORY_VIEW) if snapshot_type is None else self.qualified("customer_profile_snapshots")
        type_clause = ""
        if snapshot_type is not None:
            type_clause = " AND snapshot_type = :t"
            params["t"] = snapshot_type
        if as_of is None:
            newest = self.read_sql(f"SELECT max(snapshot_date) AS d FROM {source} WHERE store_id = :s AND customer_id = :c{type_clause}", params)["d"].iloc[0]
            if newest is None or pd.isna(newest):
                return pd.DataFrame()
            as_of = newest
        end = pd.Timestamp(as_of).date()
        params.update({"start": (pd.Timestamp(end) - pd.Timedelta(days=days)).date(), "end": end})
        return self.read_sql(
            f"SELECT * FROM {source} WHERE store_id = :s AND customer_id = :c AND snapshot_date BETWEEN :start AND :end{type_clause} "
            "ORDER BY snapshot_date, snapshot_type", params)

    def table_bytes(self, table: str) -> int | None:
        """Bytes of a table with its indexes (PostgreSQL only; None elsewhere)."""
        if not self.is_postgres:
            return None
        with self.engine.connect() as conn:
            # A partitioned table's own size is 0: add its partitions.
            return int(conn.execute(sa.text(
                "SELECT pg_total_relation_size(CAST(:t AS regclass)) + coalesce((SELECT sum(pg_total_relation_size(inhrelid)) "
                "FROM pg_inherits WHERE inhparent = CAST(:t AS regclass)), 0)"), {"t": self.qualified(table)}).scalar_one())

    def dispose(self) -> None:
        self.engine.dispose()


def _csv_pieces(frame: pd.DataFrame) -> Iterator[memoryview]:
    """CSV for COPY, COPY_CHUNK_ROWS rows a piece, by Arrow's CSV writer (C++, 7x pandas' to_csv here):
    strings quoted, nulls as unquoted empty fields (NULL to COPY), doubles in shortest round-trip
    form, dates as YYYY-MM-DD."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for start in range(0, table.num_rows, COPY_CHUNK_ROWS):
        sink = pa.BufferOutputStream()
        pa_csv.write_csv(table.slice(start, COPY_CHUNK_ROWS), sink, pa_csv.WriteOptions(include_header=False))
        yield memoryview(sink.getvalue())


def prefetched(items: Iterator, depth: int = 1) -> Iterator:
    """Iterate `items` in a background thread, at most `depth` items ahead; its exception is raised here.

    Used where the consumer mostly waits on the database (which releases the GIL), so the producer's
    numpy/pandas work runs meanwhile on the other core.
    """
    done = object()
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                queue.put(item)
            queue.put(done)
        except BaseException as exc:  # handed to the consumer, which raises it
            queue.put(exc)

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = queue.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue, then let it finish
            try:
                queue.get_nowait()
            except Empty:
                worker.join(timeout=0.1)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the single writer
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _model_records(models: pd.DataFrame) -> list[dict]:
    records = models.to_dict(orient="records")
    for r in records:
        for key, value in r.items():
            if isinstance(value, float) and np.isnan(value):
                r[key] = None
    return records


JSON_COLUMNS = ("dominant_segments", "fuzzy_memberships", "behavioral_features")


def normalize_profiles(frame: pd.DataFrame) -> pd.DataFrame:
    """Profiles read back from either database in one canonical form (JSON as sorted-key text, dates as ISO).

    For tests and analysts' small reads: it parses JSON row by row.
    """
    out = frame.copy()
    for col in JSON_COLUMNS:
        if col in out:
            out[col] = [json.dumps(v if not isinstance(v, str) else json.loads(v), sort_keys=True) for v in out[col]]
    if "profile_date" in out:
        out["profile_date"] = pd.to_datetime(out["profile_date"]).dt.strftime("%Y-%m-%d")
    return out
