"""Part of one store's orders read from a source without the rest: its customer ids, and the rows of some of its
customers (a range of ids and a list of ids: a shard of a sharded store and the sample its models are fitted on).

A Parquet file is scanned by Arrow with the filter applied batch by batch, a `sql:` table is filtered in its query, so
neither holds the other customers' rows; a CSV file or the demo are read whole and cut (their memory is the whole
source's). Ids compare as validation leaves them: stripped of surrounding blanks, in code-point order; a row without a
store id belongs to the default store. The rows returned are raw, for validate_orders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import sqlalchemy as sa

from quimbi_pipeline.runtime.memory import release_memory
from quimbi_pipeline.sources.orders import (
    DEFAULT_STORE,
    OrdersSourceError,
    file_suffix,
    read_orders_source,
)
from quimbi_pipeline.sources.sql_table import _engine, table_ref

SCAN_BATCH_ROWS = 1_000_000
SCAN_READAHEAD_BATCHES = 2


def _parquet(uri: str) -> Path | None:
    if uri.startswith(("sql:", "demo")):
        return None
    path = Path(uri)
    return path if path.exists() and file_suffix(path) in (".parquet", ".pq") else None


def store_customer_ids(uri: str, store: str, warehouse_url: str | None = None) -> np.ndarray:
    """The distinct ids of the store's customers in the source (sorted, object array of str)."""
    path = _parquet(uri)
    if path is not None:
        dataset = ds.dataset(path, format="parquet")
        parts = []  # each batch's distinct ids: 10M customers' ids as Arrow strings, not a set of Python strings
        for batch in dataset.to_batches(columns=["customer_id"], filter=_store_filter(dataset, store), batch_size=SCAN_BATCH_ROWS):
            ids = pc.utf8_trim_whitespace(pc.cast(batch.column(0), pa.string()))
            parts.append(pc.unique(ids.filter(pc.greater(pc.utf8_length(ids), 0))))
        found = pc.unique(pa.chunked_array(parts, type=pa.string())) if parts else pa.array([], pa.string())
        return np.sort(found.to_numpy(zero_copy_only=False).astype(object))
    if uri.startswith("sql:"):
        with _engine(warehouse_url) as engine, engine.connect() as conn:
            ref, where, params = _sql_store(conn, uri, store)
            rows = conn.execute(sa.text(f"SELECT DISTINCT trim(customer_id) AS c FROM {ref} WHERE {where} AND trim(customer_id) <> ''"), params)
            return np.array(sorted(r[0] for r in rows if r[0] is not None), dtype=object)
    raw = _whole_store(uri, store, warehouse_url)
    ids = raw["customer_id"].astype("string").str.strip()
    return np.array(sorted(ids[ids.notna() & (ids != "")].unique()), dtype=object)


def store_rows_of(uri: str, store: str, customer_range: tuple[str | None, str | None], customer_ids: np.ndarray,
                  warehouse_url: str | None = None) -> pd.DataFrame:
    """The source's raw rows of the store whose customer id is in [lo, hi) or among `customer_ids`."""
    lo, hi = customer_range
    wanted = pa.array(np.asarray(customer_ids, dtype=object), type=pa.string())
    path = _parquet(uri)
    if path is not None:
        dataset = ds.dataset(path, format="parquet")
        ident = _trimmed("customer_id")
        in_range = ds.scalar(True)
        if lo is not None:
            in_range = in_range & (ident >= lo)
        if hi is not None:
            in_range = in_range & (ident < hi)
        chosen = in_range | ident.isin(wanted)
        # Two batches read ahead, not Arrow's 16 (and 4 files): at 10M customers the shard's scan peaked 1.2 GiB lower.
        scanner = dataset.scanner(filter=_store_filter(dataset, store) & chosen, batch_size=SCAN_BATCH_ROWS,
                                  batch_readahead=SCAN_READAHEAD_BATCHES, fragment_readahead=1)
        table = scanner.to_table()
        release_memory()  # the decoded row groups' pages (3 GiB at 10M), which pandas' heap could not reuse
        return table.to_pandas(split_blocks=True, self_destruct=True)  # each column's Arrow buffers freed as it is converted
    if uri.startswith("sql:"):
        with _engine(warehouse_url) as engine, engine.begin() as conn:
            ref, where, params = _sql_store(conn, uri, store)
            postgres = engine.dialect.name == "postgresql"
            collate = ' COLLATE "C"' if postgres else ""
            conn.execute(sa.text("CREATE TEMP TABLE quimbi_part_ids (customer_id TEXT PRIMARY KEY)"))
            if len(customer_ids):
                conn.execute(sa.text("INSERT INTO quimbi_part_ids VALUES (:c)"), [{"c": str(c)} for c in customer_ids])
            bounds = "".join([f" AND trim(customer_id){collate} >= :lo" if lo is not None else "", f" AND trim(customer_id){collate} < :hi" if hi is not None else ""])
            params.update({"lo": lo, "hi": hi})
            query = (f"SELECT * FROM {ref} WHERE {where} AND ((1 = 1{bounds}) "
                     "OR trim(customer_id) IN (SELECT customer_id FROM quimbi_part_ids))")
            frame = pd.read_sql(sa.text(query), conn, params=params)
            conn.execute(sa.text("DROP TABLE quimbi_part_ids"))
            return frame
    raw = _whole_store(uri, store, warehouse_url)
    ids = raw["customer_id"].astype("string").str.strip()
    keep = ids.isin(pd.Index(np.asarray(customer_ids, dtype=object))).fillna(False).to_numpy(bool)
    return raw.loc[keep | in_customer_range(ids, customer_range)].reset_index(drop=True)


def in_customer_range(customer_ids: pd.Series, customer_range: tuple[str | None, str | None]) -> np.ndarray:
    """Which ids are in [lo, hi) (None: unbounded; a missing id is in none): Arrow strings compare by code point, as
    Python and the warehouse's range conditions (Connection.customer_range_sql) do."""
    lo, hi = customer_range
    keep = customer_ids.notna().to_numpy(bool).copy()
    if lo is not None:
        keep &= (customer_ids >= lo).fillna(False).to_numpy(bool)
    if hi is not None:
        keep &= (customer_ids < hi).fillna(False).to_numpy(bool)
    return keep


def _store_filter(dataset: ds.Dataset, store: str) -> ds.Expression:
    """The rows of `store` (no store_id column: every row is the default store's)."""
    if "store_id" not in dataset.schema.names:
        return ds.scalar(store == DEFAULT_STORE)
    trimmed = _trimmed("store_id")
    if store == DEFAULT_STORE:
        return ds.field("store_id").is_null() | (trimmed == "") | (trimmed == store)
    return trimmed == store


def _trimmed(column: str) -> ds.Expression:
    """The column as text without surrounding blanks, as validation reads ids (a scan expression)."""
    return pc.Expression._call("utf8_trim_whitespace", [ds.field(column).cast(pa.string())])


def _sql_store(conn: sa.Connection, uri: str, store: str) -> tuple[str, str, dict]:
    """(table reference, the store's WHERE condition, its parameters) of a sql: source."""
    try:
        ref = table_ref(uri[len("sql:"):], conn.dialect.name == "postgresql")
        columns = pd.read_sql(sa.text(f"SELECT * FROM {ref} WHERE 1 = 0"), conn).columns
    except (ValueError, sa.exc.SQLAlchemyError, pd.errors.DatabaseError) as exc:
        raise OrdersSourceError(f"orders source {uri!r} could not be read: {str(exc).splitlines()[0]}") from exc
    if "store_id" not in columns:
        return ref, ("1 = 1" if store == DEFAULT_STORE else "1 = 0"), {}
    if store == DEFAULT_STORE:
        return ref, "(store_id IS NULL OR trim(store_id) = '' OR trim(store_id) = :store)", {"store": store}
    return ref, "trim(store_id) = :store", {"store": store}


def _whole_store(uri: str, store: str, warehouse_url: str | None) -> pd.DataFrame:
    raw = read_orders_source(uri, warehouse_url)
    if "store_id" not in raw.columns:
        return raw if store == DEFAULT_STORE else raw.iloc[:0]
    stores = raw["store_id"].astype("string").str.strip()
    stores = stores.fillna(DEFAULT_STORE).mask(stores == "", DEFAULT_STORE)
    return raw.loc[(stores == store).to_numpy(bool)].reset_index(drop=True)
