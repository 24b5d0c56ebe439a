"""The warehouse's shared layer: URLs, the engine, the schema's creation and in-place upgrade, date
partitions (PostgreSQL), bulk loads (COPY on PostgreSQL, executemany on SQLite) and plain reads.

The table families (profile_tables, snapshot_tables, drift_tables, outlier_tables, model_tables)
declare their tables on `metadata` and add their writes and reads to `Connection`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import re
import threading
from collections.abc import Iterator
from queue import Empty, Queue

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads
from pydantic_core import from_json
from sqlalchemy.dialects.postgresql import JSONB

from quimbi_pipeline.settings.locations import (  # noqa: F401 (re-exported)
    PG_SCHEMA,
    data_dir,
    default_warehouse_url,
    resolve_warehouse_url,
)
from quimbi_pipeline.sources.sql_table import read_sql_table
from quimbi_pipeline.storage import parallel_stage

log = logging.getLogger("quimbi_pipeline.storage")
# Rows per COPY piece: pieces of 200,000 profile rows (about 0.45 GB of CSV each) raised the 1M-customer write's peak
# from 5.59 to 6.82 GiB against pieces of 25,000, at the same speed.
COPY_CHUNK_ROWS = 25_000
# A date partition is analyzed after a store's write when its rows changed by this share since its last ANALYZE.
ANALYZE_CHANGED_SHARE = 0.1

_NAMED_BIND = re.compile(r"(?<![:\w]):(\w+)")  # :name, not a ::cast

metadata = sa.MetaData()

Json = sa.JSON().with_variant(JSONB(), "postgresql")

# Tables partitioned by a date column on PostgreSQL (a partition per date, created on first write).
DATE_PARTITIONED = {"profile_snapshots": "snapshot_date", "customer_drift": "as_of_date",
                    "customer_outlier_flags": "flag_date"}  # outlier flags: partitioned only in warehouses created before 2026-11-26

# Staging-only tables (temporary, never created in the warehouse).
staging_metadata = sa.MetaData()


def stores_left_out(leased) -> tuple[str, dict]:
    """(" AND store_id NOT IN (…)", its parameters) for the `leased` stores a prune leaves alone; ("", {}) for none."""
    names = sorted(leased)
    if not names:
        return "", {}
    return f" AND store_id NOT IN ({', '.join(f':l{i}' for i in range(len(names)))})", {f"l{i}": s for i, s in enumerate(names)}


@functools.lru_cache(maxsize=512)
def driver_sql(sql: str, postgres: bool) -> str:
    """A statement's `:name` binds in the driver's style: psycopg takes `%(name)s` (a literal % doubled), sqlite3 `:name`."""
    return _NAMED_BIND.sub(r"%(\1)s", sql.replace("%", "%%")) if postgres else sql


def existing_only(url: str) -> str:
    """A SQLite file URL that opens the file only if it exists (never creates an empty one: a server whose warehouse
    file was moved away answers 503, not an empty warehouse); other URLs as they are."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:" or "uri" in parsed.query:
        return url
    return f"sqlite:///file:{parsed.database}?mode=rw&uri=true"


def masked_url(url: str) -> str:
    """A warehouse URL fit for output and logs: the password replaced by ***."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<not a SQLAlchemy URL>"

def drop_postgres_schema(url: str) -> None:
    """Remove every table this pipeline keeps in a PostgreSQL database (schema `platform`, cascading): for
    benchmarks and tests that start from an empty warehouse. Refuses anything but PostgreSQL."""
    if not url.startswith("postgresql"):
        raise ValueError("drop_postgres_schema: not a PostgreSQL URL")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE"))
    finally:
        engine.dispose()


SQLITE_INSERT_ROWS = 100_000  # rows per executemany on SQLite


def _python_rows(frame: pd.DataFrame) -> list[tuple]:
    """Rows as tuples of plain Python values (dates as ISO text, NaN and missing text as None) for DBAPI executemany."""
    cols = []
    for name in frame.columns:
        values = frame[name]
        if values.dtype == object and len(values):
            known = values.dropna()
            if len(known) and hasattr(known.iloc[0], "isoformat"):
                text = pd.to_datetime(values).dt.strftime("%Y-%m-%d")  # dates as ISO text, vectorized; NULL stays NULL
                values = text.astype(object).where(text.notna(), None)
        arr = values.to_numpy(dtype=object)
        if values.dtype.kind == "f" or isinstance(values.dtype, pd.StringDtype):
            arr[pd.isna(values).to_numpy()] = None
        cols.append(arr)
    return list(zip(*cols))


class Connection:
    """The engine of one warehouse URL and what every table family shares."""

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
        self._reader: tuple[int, object] | None = None  # (thread id, its own PostgreSQL connection or None yet): hold_reader
        if create:
            self.create_tables()
        self.partitioned = self._partitioned_tables()

    # ---- schema -------------------------------------------------------------------------------
    def create_tables(self) -> None:
        """Create missing tables, views and columns; safe when several runs start at once on an empty
        warehouse (PostgreSQL: under an advisory lock; SQLite: under a lock file beside the database)."""
        with self._schema_transaction() as conn:
            self._create_missing(conn)

    @contextlib.contextmanager
    def _schema_transaction(self) -> Iterator[sa.Connection]:
        """A transaction no other schema change runs beside (create_tables, migrate.py), in the schema."""
        with self._schema_lock(), self.engine.begin() as conn:
            if self.is_postgres:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('quimbi.schema'))"))
                conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}"))
            yield conn

    def _create_missing(self, conn: sa.Connection) -> None:
        """In the caller's transaction: missing tables, nullable columns added since, then views and settings."""
        metadata.create_all(conn, checkfirst=True)
        self._add_missing_columns(conn)
        self._finish_schema(conn)

    def _finish_schema(self, conn: sa.Connection) -> None:
        """What the table families add after the tables exist (storage settings, views); see Warehouse."""

    def _schema_lock(self):
        """A process-exclusive lock for schema changes on SQLite (PostgreSQL locks inside the transaction)."""
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

    def _partitioned_tables(self, conn: sa.Connection | None = None) -> set[str]:
        """PostgreSQL tables created partitioned (older unpartitioned tables keep working), as `conn` sees them when given."""
        if not self.is_postgres:
            return set()
        with contextlib.nullcontext(conn) if conn is not None else self.engine.connect() as c:
            names = set(c.execute(sa.text("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                          "WHERE n.nspname = :schema AND c.relkind = 'p'"), {"schema": PG_SCHEMA}).scalars())
        return names & set(DATE_PARTITIONED)

    def prepare_date_partitions(self, tables, day) -> None:
        """Create the date's missing partitions of `tables`, each in a short transaction of its own, before a write's
        transaction starts. Creating a partition locks its table exclusively: inside a long write that lock
        stopped every reader of the table for the write's length, and took part in deadlocks with readers of two
        such tables."""
        for table in tables:
            if table in self.partitioned:
                with self.engine.begin() as conn:
                    self._ensure_date_partition(conn, table, day)

    def _ensure_date_partition(self, conn: sa.Connection, table: str, day) -> None:
        if table not in self.partitioned:
            return
        day = pd.Timestamp(day)
        name = self._date_partition_name(table, day)
        if conn.execute(sa.text("SELECT to_regclass(:n) IS NOT NULL"), {"n": name}).scalar_one():
            return  # a catalog lookup: no lock on the table (prepare_date_partitions made it)
        # Concurrent store batches of one date would race on CREATE TABLE: serialize them.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('quimbi.date_partitions'))"))
        conn.execute(sa.text(
            f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {self.qualified(table)} "
            f"FOR VALUES FROM ('{day:%Y-%m-%d}') TO ('{day + pd.Timedelta(days=1):%Y-%m-%d}')"))

    def _date_partition_name(self, table: str, day) -> str:
        """The date's partition of a date-partitioned table (the table itself when not partitioned), qualified."""
        if table not in self.partitioned:
            return self.qualified(table)
        return f"{PG_SCHEMA}.{table}_p{pd.Timestamp(day):%Y%m%d}"

    def analyze_date_partition(self, table: str, day, written: int | None = None) -> None:
        """PostgreSQL: fresh statistics for a date's rows just bulk-written. Without them the first lookups
        after a daily load were planned on stale ones (drift lookup p95 166 ms at 100k customers; 3 ms after
        ANALYZE, which samples: 0.5 s). With `written` (the rows a store just wrote), only when the partition's
        rows changed since its last ANALYZE by at least ANALYZE_CHANGED_SHARE of them: a date's partition holds
        every store's rows, and 1,000 small stores each analyzing it after its own write re-sampled it 1,000 times."""
        if not self.is_postgres:
            return
        name = self._date_partition_name(table, day)
        try:
            with self.engine.begin() as conn:
                if written is not None:
                    analyzed, changed = conn.execute(sa.text(
                        "SELECT c.reltuples, coalesce(s.n_mod_since_analyze, 0) FROM pg_class c "
                        "LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid WHERE c.oid = to_regclass(:name)"), {"name": name}).one()
                    if analyzed > 0 and max(changed, written) < ANALYZE_CHANGED_SHARE * analyzed:
                        return
                conn.execute(sa.text(f"ANALYZE {name}"))
        except sa.exc.SQLAlchemyError as exc:  # after the commit: slower lookups until autovacuum runs, nothing lost
            log.warning("ANALYZE of %s for %s failed after the rows were committed: %s", table, pd.Timestamp(day).date(),
                        str(getattr(exc, "orig", None) or exc).strip().splitlines()[0])

    def analyze_date_partitions(self, tables, day) -> None:
        """analyze_date_partition of each of `tables`' partitions of `day` that exists, whatever was written. A run of
        several stores writes theirs without (`analyze=False`) and calls this once after them: each small store's
        ANALYZE of the date's growing partition (a sample of up to 30,000 rows, 0.1-0.5 s) cost more than its write."""
        if not self.is_postgres:
            return
        with self.engine.connect() as conn:
            existing = [table for table in tables if conn.execute(sa.text("SELECT to_regclass(:n) IS NOT NULL"),
                                                                  {"n": self._date_partition_name(table, day)}).scalar_one()]
        for table in existing:
            self.analyze_date_partition(table, day)

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

    def qualified(self, table: str) -> str:
        return f"{PG_SCHEMA}.{table}" if self.is_postgres else table

    def insert_new(self, conn: sa.Connection, table: sa.Table, rows: list[dict], update: list[str] | None = None) -> None:
        """Insert `rows`, leaving a row whose key is already there as it is, or with `update`, setting those columns
        from the new row: safe beside another transaction writing the same keys (store shards written side by side),
        where reading first and inserting what is missing is not. The rows go in key order: two such transactions
        inserting overlapping keys each in its own order waited for each other's row (PostgreSQL: deadlock detected; the
        archetypes of shards written side by side)."""
        if not rows:
            return
        from sqlalchemy.dialects import postgresql, sqlite

        insert = (postgresql if self.is_postgres else sqlite).insert(table)
        keys = [c.name for c in table.primary_key.columns]
        rows = sorted(rows, key=lambda row: tuple(str(row[k]) for k in keys))
        statement = (insert.on_conflict_do_nothing(index_elements=keys) if not update else
                     insert.on_conflict_do_update(index_elements=keys, set_={c: insert.excluded[c] for c in update}))
        conn.execute(statement, rows)

    def customer_range_clause(self, column: sa.ColumnElement, customer_range: tuple[str | None, str | None]) -> sa.ColumnElement:
        """customer_range_sql as a SQLAlchemy condition on `column` (true when the range is unbounded)."""
        lo, hi = customer_range
        compared = column.collate("C") if self.is_postgres else column
        clauses = ([compared >= lo] if lo is not None else []) + ([compared < hi] if hi is not None else [])
        return sa.and_(sa.true(), *clauses)

    def customer_range_sql(self, customer_range: tuple[str | None, str | None], params: dict, column: str = "customer_id") -> str:
        """" AND ..." conditions keeping `column` in [lo, hi) (None: unbounded) in code-point order, as Python compares
        ids (slice bounds and split points are computed in Python); lo and hi are added to `params`."""
        lo, hi = customer_range
        collate = ' COLLATE "C"' if self.is_postgres else ""  # SQLite compares text by code point already
        sql = ""
        if lo is not None:
            sql += f" AND {column}{collate} >= :lo"
            params["lo"] = lo
        if hi is not None:
            sql += f" AND {column}{collate} < :hi"
            params["hi"] = hi
        return sql

    # ---- bulk load ------------------------------------------------------------------------------
    def _stage(self, conn: sa.Connection, table: sa.Table, frame: pd.DataFrame, two_sessions: bool = False) -> str:
        """Load `frame` into a temporary copy of `table` on this connection; returns its name (as referenced).
        `two_sessions`: on PostgreSQL, from PARALLEL_STAGE_ROWS rows on, half of them COPYed by a second session
        (parallel_stage.py; worth it for wide rows whose parsing is the cost, the profiles')."""
        stage = f"stage_{table.name}"
        # The temporary table is declared from the SQLAlchemy table, on both databases.
        columns_ddl = ", ".join(f"{c.name} {c.type.compile(dialect=conn.dialect)}" for c in table.columns)
        if self.is_postgres:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {stage}"))
            conn.execute(sa.text(f"CREATE TEMP TABLE {stage} ({columns_ddl}) ON COMMIT DROP"))
            if two_sessions and len(frame) >= parallel_stage.PARALLEL_STAGE_ROWS:
                parallel_stage.stage_in_two(self, conn, stage, columns_ddl, frame, PG_SCHEMA)
                return stage
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
            # A slice of rows at a time: every row as a tuple of Python objects at once was the SQLite write's peak
            # (0.4 GiB more once profiles gained two columns, at 875k rows).
            for start in range(0, len(payload), SQLITE_INSERT_ROWS):
                raw.executemany(f"INSERT INTO {target} ({col_list}) VALUES ({placeholders})",
                                _python_rows(payload.iloc[start:start + SQLITE_INSERT_ROWS]))

    # ---- reads ----------------------------------------------------------------------------------
    def hold_reader(self) -> None:
        """From now on the calling thread's `fetch_rows` go through one PostgreSQL connection of its own, kept open
        in autocommit outside the pool (no-op on SQLite). For the read API's event loop, which reads one request at a
        time: a pool checkout and return per read, with autocommit switched on and off, was a tenth of a profile
        request's CPU. Other threads keep using the pool. Closed by `dispose`."""
        if self.is_postgres:
            self._release_reader()
            self._reader = (threading.get_ident(), None)

    def _reader_connection(self):
        """The calling thread's held connection (opened now if it has none yet), or None when it holds none."""
        held = self._reader
        if held is None or held[0] != threading.get_ident():
            return None
        if held[1] is None or held[1].closed:
            dialect = self.engine.dialect
            cargs, cparams = dialect.create_connect_args(self.engine.url)
            driver = dialect.connect(*cargs, **cparams)
            driver.autocommit = True
            # JSON columns parsed by pydantic's parser: a quarter of json.loads' CPU (a profile's three columns: 6 against
            # 20 us), and the same values (compared on 240,000 stored documents of every JSON column).
            set_json_loads(from_json, driver)
            self._reader = held = (held[0], driver)
        return held[1]

    def _release_reader(self) -> None:
        if self._reader is not None and self._reader[1] is not None:
            self._reader[1].close()
        self._reader = None

    def fetch_rows(self, sql: str, params: dict) -> list[dict]:
        """A small read's rows as dicts, through the driver's cursor (`:name` binds). For the read API: SQLAlchemy's
        execution layer cost as much CPU as the read itself (a profile row on PostgreSQL: 0.32 against 0.16 ms),
        and a request makes one to three reads. Autocommit on PostgreSQL: a read needs no transaction, and one
        would cost a BEGIN and a ROLLBACK round trip."""
        held = self._reader_connection() if self.is_postgres else None
        if held is not None:
            try:
                return self._pg_rows(held, sql, params)
            except Exception:
                if held.broken:
                    # The server closed it (a restart, a terminated backend): probably the pool's too. Drop both, so that
                    # one request fails and the next reconnects.
                    self._reader = (self._reader[0], None)
                    held.close()
                    self.engine.dispose()
                raise
        raw = self.engine.raw_connection()
        try:
            driver = raw.driver_connection
            if self.is_postgres:
                driver.autocommit = True
            try:
                if self.is_postgres:
                    return self._pg_rows(driver, sql, params)
                cursor = raw.cursor()
                cursor.execute(driver_sql(sql, False), params)
                names = [d[0] for d in cursor.description]
                return [dict(zip(names, row)) for row in cursor.fetchall()]
            except Exception as exc:
                if self.is_postgres and driver.broken:
                    # The server closed it (a restart, a terminated backend): so probably the pool's other connections
                    # too. Drop them all, as SQLAlchemy's own execution does on a disconnect, so that one request
                    # fails, not one per pooled connection.
                    raw.invalidate(exc)
                    self.engine.dispose()
                raise
            finally:
                if self.is_postgres and not driver.broken:
                    driver.autocommit = False  # the pool's default, as SQLAlchemy's connections expect it
        finally:
            raw.close()  # back to the pool (an invalidated connection is closed instead)

    @staticmethod
    def _pg_rows(driver, sql: str, params: dict) -> list[dict]:
        # psycopg's dict_row names the columns from the result directly: `cursor.description` builds a Column object
        # per column per statement, 10% of a profile request's CPU.
        cursor = driver.cursor(row_factory=dict_row)
        cursor.execute(driver_sql(sql, True), params)
        return cursor.fetchall()

    def read_sql(self, sql: str, params: dict | None = None) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.read_sql(sa.text(sql), conn, params=params or {})

    def read_table(self, name: str) -> pd.DataFrame:
        """Every row of a table (`table` or `schema.table`; unqualified names live in the warehouse schema)."""
        return read_sql_table(self.engine, name)

    def table_bytes(self, table: str) -> int:
        """Bytes of a table with its indexes (and partitions): PostgreSQL's relation sizes, SQLite's dbstat pages."""
        with self.engine.connect() as conn:
            if not self.is_postgres:
                return int(conn.execute(sa.text(
                    "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN (SELECT name FROM sqlite_master WHERE tbl_name = :t)"),
                    {"t": table}).scalar_one())
            # A partitioned table's own size is 0: add its partitions.
            return int(conn.execute(sa.text(
                "SELECT pg_total_relation_size(CAST(:t AS regclass)) + coalesce((SELECT sum(pg_total_relation_size(inhrelid)) "
                "FROM pg_inherits WHERE inhparent = CAST(:t AS regclass)), 0)"), {"t": self.qualified(table)}).scalar_one())

    def dispose(self) -> None:
        self._release_reader()
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
