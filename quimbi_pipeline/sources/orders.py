"""Orders sources and validation (DESIGN "Inputs: orders").

Sources: a CSV or Parquet path, `sql:<table>` in the warehouse, `demo[:key=value,...]`.
Every source goes through `validate_orders`, which normalizes types and reports problems per store,
so that one store's bad rows never stop the others.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from quimbi_pipeline.runtime.memory import release_memory
from quimbi_pipeline.settings import deployment
from quimbi_pipeline.sources.keys import repeated as repeated_keys
from quimbi_pipeline.sources.sql_table import distinct_values, read_table

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("order_id", "customer_id", "order_ts", "order_total")
OPTIONAL_COLUMNS = ("store_id", "discount_total", "item_count", "category")
DEFAULT_STORE = "default"
# The longest store, customer or order id (characters): a longer one is a bad row of its store. The read API's paths
# take ids of this length too; PostgreSQL indexes refuse keys of a few kilobytes.
MAX_ID_LENGTH = 200
MAX_ROWS_NAMED = 10
# Larger values are bad rows, not data: a total of 1e308 overflowed lifetime_value to Infinity.
MAX_AMOUNT = {"order_total": 1e12, "discount_total": 1e12, "item_count": 1e9}


class OrdersSourceError(ValueError):
    """The source as a whole is unusable (unreadable file, missing required column, unknown URI)."""


@dataclass(frozen=True)
class OrderProblem:
    store_id: str
    column: str
    message: str
    rows: tuple[int, ...]  # 0-based row numbers in the source (data rows, header excluded)
    n_rows: int
    first_line: int | None = None  # a CSV's line of data row 0 (2: after the header): rows are named as lines

    def describe(self) -> str:
        store = self.store_id if len(self.store_id) <= 60 else self.store_id[:60] + "…"
        where = "row(s)" if self.first_line is None else "line(s)"
        shown = ", ".join(str(r + (self.first_line or 0)) for r in self.rows)
        more = f" (and {self.n_rows - len(self.rows)} more)" if self.n_rows > len(self.rows) else ""
        return f"store {store!r}, column {self.column!r}: {self.message} in {self.n_rows} {where}: {shown}{more}"


@dataclass
class ValidatedOrders:
    orders: pd.DataFrame  # clean rows of the stores that passed
    problems: list[OrderProblem] = field(default_factory=list)
    rejected_stores: dict[str, list[OrderProblem]] = field(default_factory=dict)
    optional_columns: tuple[str, ...] = ()
    n_future_dated: int = 0
    n_exact_duplicates: int = 0

    @property
    def stores(self) -> list[str]:
        return sorted(self.orders["store_id"].unique().tolist())


CSV_SUFFIXES = (".csv", ".csv.gz", ".txt")


def file_suffix(path: Path) -> str:
    """A source file's kind: its suffix, with .gz's the one before it (".csv.gz")."""
    return "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()


def read_orders_source(uri: str, warehouse_url: str | None = None) -> pd.DataFrame:
    """Read raw rows from a source URI (no validation)."""
    if uri == "demo" or uri.startswith("demo:"):
        from quimbi_pipeline.sources.demo import demo_from_uri

        return demo_from_uri(uri).orders
    if uri.startswith("sql:"):
        return read_table(uri[len("sql:") :], warehouse_url)
    path = Path(uri)
    if not path.exists():
        raise OrdersSourceError(f"orders source {uri!r}: file not found (expected a CSV/Parquet path, sql:<table> or demo)")
    suffix = file_suffix(path)
    if suffix in CSV_SUFFIXES:
        return read_orders_csv(path)
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
            duplicated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
            if duplicated:
                raise OrdersSourceError(f"orders file {uri!r}: column(s) {', '.join(duplicated)} appear more than once")
            return frame
    except (ValueError, OSError) as exc:
        if isinstance(exc, OrdersSourceError):
            raise
        raise OrdersSourceError(f"orders source {uri!r} could not be read: {exc}") from exc
    raise OrdersSourceError(f"orders source {uri!r}: unsupported file type {suffix!r} (use .csv, .csv.gz or .parquet)")


UNDECODABLE = "\ufffd"  # what undecodable bytes become: their rows are bad rows of their store


def read_orders_csv(path: Path) -> pd.DataFrame:
    """A CSV as text columns (validation parses them), read by Arrow, or an OrdersSourceError naming the
    line when the file is structurally broken: a row with another number of fields than the header (a
    truncated last line), an unterminated quoted field (an odd number of quote characters), duplicated
    header names, or a header without rows. Bytes that are not UTF-8 do not fail the file: their cells
    become U+FFFD and validate_orders reports those rows, with their store, as undecodable."""
    import csv

    import pyarrow as pa
    import pyarrow.csv as pa_csv

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except EOFError as exc:
        raise OrdersSourceError(f"orders file {str(path)!r} is truncated (the compressed stream ends early): nothing was read") from exc
    except OSError as exc:
        raise OrdersSourceError(f"orders file {str(path)!r} could not be read: {exc}") from exc
    text_start = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    first_line = text_start.split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")
    header = next(csv.reader([first_line]), [])
    if not header or all(not h.strip() for h in header):
        raise OrdersSourceError(f"orders file {str(path)!r} is empty (no header line)")
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise OrdersSourceError(f"orders file {str(path)!r}: column(s) {', '.join(duplicated)} appear more than once in the header (line 1)")
    if text_start.count(b'"') % 2:
        line = text_start.count(b"\n", 0, text_start.rfind(b'"')) + 1
        raise OrdersSourceError(f"orders file {str(path)!r}: a quoted field opened on line {line} is never closed: "
                                "the file is truncated or broken; nothing was read")
    broken: list[str] = []

    def wrong_width(row) -> str:
        broken.append(row.text)
        return "skip"

    def parse(payload: bytes) -> pa.Table:
        return pa_csv.read_csv(pa.py_buffer(payload), read_options=pa_csv.ReadOptions(use_threads=False),
                               parse_options=pa_csv.ParseOptions(newlines_in_values=True, invalid_row_handler=wrong_width),
                               convert_options=pa_csv.ConvertOptions(column_types={h: pa.string() for h in header}, strings_can_be_null=True,
                                                                     null_values=[""], quoted_strings_can_be_null=True))
    try:
        try:
            table = parse(text_start)
        except pa.ArrowInvalid as exc:
            if "UTF8" not in str(exc):
                raise
            broken.clear()
            table = parse(text_start.decode("utf-8", "replace").encode("utf-8"))
    except pa.ArrowInvalid as exc:
        raise OrdersSourceError(f"orders file {str(path)!r} could not be parsed: {exc}") from exc
    if broken:
        lines = [str(text_start.count(b"\n", 0, max(text_start.find(row.encode("utf-8", "replace")), 0)) + 1) for row in broken[:5]]
        raise OrdersSourceError(f"orders file {str(path)!r}: line(s) {', '.join(lines)} have another number of fields than the header's "
                                f"{len(header)} ({broken[0][:60]!r}): the file is truncated or broken; nothing was read")
    if table.num_rows == 0:
        raise OrdersSourceError(f"orders file {str(path)!r} has a header but no order rows")
    return table.to_pandas()


def _problem(store_ids: pd.Series, mask: np.ndarray, column: str, message: str, first_line: int | None = None) -> list[OrderProblem]:
    bad = np.flatnonzero(mask)
    if bad.size == 0:
        return []
    out = []
    bad_stores = store_ids.iloc[bad]
    for store, rows in pd.Series(bad, index=bad_stores.values).groupby(level=0, sort=True):
        out.append(OrderProblem(str(store), column, message, tuple(int(r) for r in rows.values[:MAX_ROWS_NAMED]), int(rows.size), first_line))
    return out


def _to_utc_naive(values: pd.Series, ts_format: str | None = None) -> pd.Series:
    """Parse timestamps as ISO 8601 (with or without an offset), or by `ts_format` (strftime codes) when one is named:
    a format is never guessed (10/03 is October 3rd or March 10th). Naive values are UTC, aware ones are converted
    to UTC. Unparseable -> NaT."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
        if getattr(parsed.dt, "tz", None) is None:
            return parsed.astype("datetime64[us]")
    else:
        parsed = pd.to_datetime(values.astype("string"), utc=True, errors="coerce", format=ts_format or "ISO8601")
    return parsed.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]")


TS_FORMAT_SETTING = "QUIMBI_ORDER_TS_FORMAT"
MOSTLY = 0.5  # a file with more unparseable timestamps than this share is in another format, not a few bad rows


def _check_timestamp_format(raw: pd.Series, parsed: pd.Series, ts_format: str | None) -> None:
    """Most timestamps unparseable: the file is in another format than the one expected; say which setting names it."""
    given = raw.notna()
    failed = parsed.isna() & given
    if given.sum() == 0 or failed.sum() <= MOSTLY * given.sum():
        return
    example = str(raw[failed].iloc[0])
    expected = f"the format {TS_FORMAT_SETTING}={ts_format!r}" if ts_format else "ISO 8601 (e.g. 2026-10-13 10:00 or 2026-10-13T10:00:00+02:00)"
    raise OrdersSourceError(f"order_ts: {int(failed.sum()):,} of {int(given.sum()):,} timestamps are not {expected}, e.g. {example!r}; "
                            f"dates are never guessed: name the file's format with {TS_FORMAT_SETTING} (strftime codes, "
                            "e.g. %d/%m/%Y %H:%M)")


def _numeric(values: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype("float64")
    return pd.to_numeric(values.astype("string").str.strip(), errors="coerce").astype("float64")


def list_stores(uri: str, warehouse_url: str | None = None) -> list[str]:
    """The store ids of a source, cheaply (one column), for schedules that batch stores."""
    if uri == "demo" or uri.startswith("demo:"):
        from quimbi_pipeline.sources.demo import (
            demo_store_names,
            generate_demo,
            parse_demo_uri,
        )

        n_stores = parse_demo_uri(uri).get("n_stores", generate_demo.__defaults__[1])
        return demo_store_names(n_stores)
    if uri.startswith("sql:"):
        return sorted(distinct_values(uri[len("sql:"):], "store_id", DEFAULT_STORE, warehouse_url))
    path = Path(uri)
    if not path.exists():
        raise OrdersSourceError(f"orders source {uri!r}: file not found")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            if "store_id" not in pq.read_schema(path).names:
                return [DEFAULT_STORE]
            values = pd.read_parquet(path, columns=["store_id"])["store_id"]
        else:
            header = pd.read_csv(path, nrows=0).columns
            if "store_id" not in header:
                return [DEFAULT_STORE]
            values = pd.read_csv(path, usecols=["store_id"], dtype=str, keep_default_na=False)["store_id"]
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise OrdersSourceError(f"orders source {uri!r} could not be read: {exc}") from exc
    cleaned = values.astype("string").str.strip().fillna("").replace("", DEFAULT_STORE)
    return sorted(cleaned.unique().tolist())


def validate_orders(raw: pd.DataFrame, *, now: pd.Timestamp | None = None, bad_rows: str = "reject_store",
                    ts_format: str | None = None, first_line: int | None = None) -> ValidatedOrders:
    """Normalize and check raw order rows.

    - A missing required column raises OrdersSourceError naming it.
    - order_ts is ISO 8601 unless `ts_format` names another format; a file whose timestamps are mostly not in
      that format raises OrdersSourceError naming the setting (QUIMBI_ORDER_TS_FORMAT).
    - Row problems (null or blank ids, unparseable order_ts, non-numeric totals, conflicting duplicate
      order_ids, non-numeric optional values) are reported per store. With bad_rows="reject_store"
      (default) a store with any problem is left out whole, so nothing of it is half-processed; with
      "quarantine" only the bad rows are dropped. Either way each problem is logged with its rows.
    - Exact duplicate rows are collapsed to one (logged). Orders dated after `now` are kept but can only
      be seen by partitions after their date (logged as future-dated).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise OrdersSourceError(f"orders are missing required column(s): {', '.join(missing)} (have: {', '.join(map(str, raw.columns))})")
    present_optional = tuple(c for c in OPTIONAL_COLUMNS if c in raw.columns and c != "store_id")
    for c in OPTIONAL_COLUMNS:
        if c != "store_id" and c not in raw.columns:
            log.info("orders have no %r column: features that need it are skipped", c)

    raw = raw.reset_index(drop=True)
    out = pd.DataFrame(index=raw.index)
    if "store_id" in raw.columns:
        store = raw["store_id"].astype("string").str.strip()
        store = store.fillna(DEFAULT_STORE).mask(store == "", DEFAULT_STORE)
    else:
        store = pd.Series(DEFAULT_STORE, index=raw.index, dtype="string")
    out["store_id"] = store
    problems: list[OrderProblem] = []
    bad_rows_mask = np.zeros(len(raw), dtype=bool)  # exactly the rows problems report: what quarantine drops

    def flag(mask, column: str, message: str) -> None:
        nonlocal bad_rows_mask
        mask = np.asarray(mask, dtype=bool)
        problems.extend(_problem(store, mask, column, message, first_line))
        bad_rows_mask |= mask

    for col in raw.columns:
        if pd.api.types.is_string_dtype(raw[col]) or raw[col].dtype == object:
            undecodable = raw[col].astype("string").str.contains(UNDECODABLE, regex=False).fillna(False).to_numpy(bool)
            if undecodable.any():
                flag(undecodable, str(col), "bytes that are not UTF-8")

    for col in ("order_id", "customer_id"):
        text = raw[col].astype("string").str.strip()
        flag((text.isna() | (text == "")).to_numpy(), col, "null or blank value")
        out[col] = text
    for col in ("store_id", "order_id", "customer_id"):
        text = out[col]
        flag((text.str.len() > MAX_ID_LENGTH).fillna(False).to_numpy(bool), col, f"longer than {MAX_ID_LENGTH} characters")
        flag(text.str.contains("\x00", regex=False).fillna(False).to_numpy(bool), col, "a NUL character")

    out["order_ts"] = _to_utc_naive(raw["order_ts"], ts_format)
    _check_timestamp_format(raw["order_ts"], out["order_ts"], ts_format)
    not_parsed = f"not in the format {TS_FORMAT_SETTING}={ts_format!r}" if ts_format else "not an ISO 8601 timestamp"
    flag((out["order_ts"].isna() & raw["order_ts"].notna()).to_numpy(), "order_ts", f"unparseable timestamp ({not_parsed})")
    flag(raw["order_ts"].isna().to_numpy(), "order_ts", "missing timestamp")

    for col in ("order_total",) + tuple(c for c in ("discount_total", "item_count") if c in present_optional):
        values = _numeric(raw[col])
        non_numeric = (values.isna() & raw[col].notna()).to_numpy().copy()
        if col == "order_total":
            non_numeric |= raw[col].isna().to_numpy()
        non_numeric |= ~np.isfinite(values.fillna(0.0).to_numpy())
        flag(non_numeric, col, "non-numeric or non-finite value")
        finite = values.where(~non_numeric)
        flag((finite.abs() > MAX_AMOUNT[col]).fillna(False).to_numpy(bool), col, f"out of range (more than {MAX_AMOUNT[col]:g} in absolute value)")
        if col != "order_total":
            flag((finite < 0).fillna(False).to_numpy(bool), col, "negative value")
        out[col] = values
    if "category" in present_optional:
        out["category"] = raw["category"].astype("string").str.strip().fillna("unknown")

    # Duplicates: identical rows collapse to one; same (store, order_id) with different content is a problem.
    # Full-row comparison only among rows whose key repeats (usually none): the key check is the cheap one.
    exact_dup = np.zeros(len(out), dtype=bool)
    key_dup = np.zeros(len(out), dtype=bool)
    repeated = repeated_keys(out, ["store_id", "order_id"])
    if repeated.any():
        sub = out.loc[repeated]
        exact_dup[repeated] = sub.duplicated(keep="first").to_numpy()
        key_dup[repeated] = ~sub.duplicated(keep=False).to_numpy()
    n_exact = int(exact_dup.sum())
    if n_exact:
        log.warning("dropping %d exact duplicate order row(s)", n_exact)
    flag(key_dup, "order_id", "duplicate order_id with conflicting values")

    rejected: dict[str, list[OrderProblem]] = {}
    for p in problems:
        log.error("invalid orders: %s", p.describe())
        rejected.setdefault(p.store_id, []).append(p)
    if bad_rows == "reject_store":
        drop = out["store_id"].isin(list(rejected)).to_numpy() if rejected else np.zeros(len(out), dtype=bool)
    else:
        drop = bad_rows_mask
        if problems:
            log.warning("quarantined %d invalid order row(s)", int(drop.sum()))
        rejected = {}
    keep = ~(drop | exact_dup)
    clean = out if keep.all() else out.loc[keep].reset_index(drop=True)  # no copy of millions of rows when all are kept

    now = pd.Timestamp.now(tz="UTC").tz_localize(None) if now is None else now
    n_future = int((clean["order_ts"] > now).sum())
    if n_future:
        log.warning("%d order(s) are dated after now (%s): no partition up to today sees them", n_future, now)
    for col in ("discount_total", "item_count"):
        if col in clean:
            clean[col] = clean[col].fillna(0.0)
    clean["store_id"] = clean["store_id"].astype(str)
    return ValidatedOrders(clean, problems, rejected, present_optional, n_future, n_exact)


def load_orders(uri: str, *, warehouse_url: str | None = None, now: pd.Timestamp | None = None, bad_rows: str = "reject_store") -> ValidatedOrders:
    """A source read and validated; order_ts in the format QUIMBI_ORDER_TS_FORMAT names (ISO 8601 when unset)."""
    csv = not uri.startswith(("sql:", "demo")) and file_suffix(Path(uri)) in CSV_SUFFIXES
    first_line = 2 if csv else None  # a CSV's data rows start on line 2: problems name lines
    validated = validate_orders(read_orders_source(uri, warehouse_url), now=now, bad_rows=bad_rows,
                                ts_format=deployment.value(TS_FORMAT_SETTING), first_line=first_line)
    release_memory()  # the raw rows are gone: their pages too
    return validated


@functools.lru_cache(maxsize=2)
def _load_immutable(uri: str, stamp: tuple, bad_rows: str, ts_format: str | None) -> ValidatedOrders:
    return load_orders(uri, bad_rows=bad_rows)


class OrdersChanged(OrdersSourceError):
    """The orders file changed while a run that reads one version of it was going on."""


def file_version(uri: str) -> tuple:
    """What tells two versions of an orders file apart without reading it: size, modification time, inode (a file
    replaced by a move keeps neither); () for a missing file or a source that is not a file."""
    if uri.startswith(("sql:", "demo")):
        return ()
    try:
        stat = Path(uri).stat()
    except OSError:
        return ()
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino)


_held: dict[str, tuple] = {}  # uri -> the version a run in this process holds (one_version)


@contextlib.contextmanager
def one_version(uri: str) -> Iterator[None]:
    """Within the block, every load of `uri` is the version the block started with: a file that changed since
    (another size, modification time or inode) raises OrdersChanged instead of being read, so the tables never mix
    two versions of a file within a run. The cache keeps that version's validated rows, so it is read once."""
    _held[uri] = file_version(uri)
    try:
        yield
    finally:
        _held.pop(uri, None)


def load_orders_cached(uri: str, *, warehouse_url: str | None = None, bad_rows: str = "reject_store") -> ValidatedOrders:
    """As load_orders, cached per process for sources that cannot change under a run (demo, a file of
    unchanged size and mtime), so a multi-date run reads and validates them once. Callers must not mutate."""
    if uri.startswith("sql:"):
        return load_orders(uri, warehouse_url=warehouse_url, bad_rows=bad_rows)
    ts_format = deployment.value(TS_FORMAT_SETTING)
    if uri == "demo" or uri.startswith("demo:"):
        return _load_immutable(uri, (), bad_rows, ts_format)
    stamp = file_version(uri)
    held = _held.get(uri)
    if held is not None and stamp != held:
        raise OrdersChanged(f"orders file {uri!r} changed while this run was reading it (size, modification time or "
                            "inode differ from the run's start): the run reads one version of its orders, so this date "
                            "and the ones after it were not run; run them again")
    return _load_immutable(uri, stamp, bad_rows, ts_format)


def as_of_day(value) -> pd.Timestamp:
    """A partition date as a naive UTC midnight (accepts 'YYYY-MM-DD', dates, aware or naive timestamps)."""
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.normalize()


def seen_at(orders: pd.DataFrame, as_of) -> np.ndarray:
    """Point in time: partition D sees only orders with order_ts < D + 1 day (a boolean mask)."""
    return (orders["order_ts"] < as_of_day(as_of) + pd.Timedelta(days=1)).to_numpy()


def orders_as_of(orders: pd.DataFrame, as_of) -> pd.DataFrame:
    return orders.loc[seen_at(orders, as_of)]
