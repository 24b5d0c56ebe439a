"""numpy/pandas (what the pipeline runs) against Polars and DuckDB on the work where pandas used to be the cost.

    .venv/bin/python benchmarks/engines.py --customers 1000000 --threads 2 [--repeats 2]

Issue 32 asks for a columnar engine where pandas is the cost, chosen by measurement on validation, features and change
detection. The same demo orders (`generate_demo(n_customers, seed=7)`, one store) go through four kernels, each written
once per engine and checked against the pipeline's answer before it is timed:

- duplicates: which rows repeat a (store_id, order_id) key (validation; the pipeline: sources/keys.repeated);
- summary: per customer the orders, their total, first and last order, purchase days, the spend on the first purchase
  day and the mean spend of the repeat days (BTYD's monetary), the orders in the 365 days before D and the median
  order over the customer's own last 365 days (features; the pipeline's primitives: factorize, bincount, ufunc.at,
  features.sum_by_key, a pandas group-by median);
- gaps: the gaps between each customer's purchase days, their count and the mean and sum of squares of their logs
  (the churn model's input; the pipeline: features._gap_statistics after the purchase-day keys);
- rate change: the purchase-rate detector (change detection's costliest test): each customer's purchase days newest
  first, every split's Gamma likelihood ratio and the silence since the last one, the best split per customer (the
  pipeline: change_points.rate_change). Polars and DuckDB do the relational part (purchase days, newest-first
  positions, running sums) and hand the rows to the pipeline's own arithmetic (change_points.rate_splits: numpy, and
  scipy's incomplete gamma function, which neither engine has).

Then the pipeline's whole `compute_customer_features` of D, without and with change detection, for scale. Prints the
best of `--repeats` wall times per kernel and engine, orders per second, and the conversion of the frame into each
engine (Polars' from_pandas; DuckDB scans the pandas frame in place). `--threads` is the threads Polars and DuckDB
may use (the numpy path is one thread). Prints figures; asserts nothing (the equality checks stop the run).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quimbi_pipeline.model.gap_shapes import CONTINUITY_DAYS, LOG_QUANTUM

D = pd.Timestamp("2026-10-31")
NS_PER_DAY = 86_400 * 10**9
WINDOW_DAYS = 365


def best_of(repeats: int, fn):
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


# --- numpy / pandas: the pipeline's own code and primitives -------------------------------------------------------

def numpy_duplicates(orders: pd.DataFrame) -> int:
    from quimbi_pipeline.sources.keys import repeated
    return int(repeated(orders, ["store_id", "order_id"]).sum())


def numpy_summary(orders: pd.DataFrame) -> pd.DataFrame:
    from quimbi_pipeline.model.features import sum_by_key
    codes, customers = pd.factorize(orders["customer_id"], sort=True)
    n = customers.size
    ts = orders["order_ts"].to_numpy("datetime64[ns]").view("int64")
    total = orders["order_total"].to_numpy("float64")
    end_ns = (D + pd.Timedelta(days=1)).value
    count = np.bincount(codes, minlength=n)
    spend = np.bincount(codes, weights=total, minlength=n)
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, codes, ts)
    last = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(last, codes, ts)
    day = ts // NS_PER_DAY
    span = int(day.max() - day.min()) + 1
    day_keys, day_spend = sum_by_key(total, codes.astype("int64") * span + (day - day.min()))
    day_codes = day_keys // span
    n_days = np.bincount(day_codes, minlength=n)
    is_first = np.r_[True, day_codes[1:] != day_codes[:-1]]
    first_day_spend = np.full(n, np.nan)
    first_day_spend[day_codes[is_first]] = day_spend[is_first]
    x = n_days - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        monetary = np.where(x > 0, (np.bincount(day_codes, weights=day_spend, minlength=n) - first_day_spend) / x, 0.0)
    in_window = np.bincount(codes[ts >= end_ns - WINDOW_DAYS * NS_PER_DAY], minlength=n)
    own = ts >= last[codes] - WINDOW_DAYS * NS_PER_DAY
    median = pd.Series(total[own]).groupby(codes[own]).median().reindex(range(n)).to_numpy()
    return pd.DataFrame({"orders": count, "spend": spend, "first_ts": first, "last_ts": last, "purchase_days": n_days,
                         "monetary": monetary, "orders_in_window": in_window, "median_order": median},
                        index=pd.Index(np.asarray(customers, dtype=object), name="customer_id"))


def numpy_gaps(orders: pd.DataFrame) -> pd.DataFrame:
    from quimbi_pipeline.model.features import _gap_statistics, sum_by_key
    codes, customers = pd.factorize(orders["customer_id"], sort=True)
    n = customers.size
    day = orders["order_ts"].to_numpy("datetime64[ns]").view("int64") // NS_PER_DAY
    first = int(day.min())
    span = int(day.max()) - first + 1
    day_keys, _ = sum_by_key(orders["order_total"].to_numpy("float64"), codes.astype("int64") * span + (day - first))
    count, log_mean, log_ss = _gap_statistics(day_keys // span, day_keys, span, n)
    return pd.DataFrame({"gaps": count, "log_mean": log_mean, "log_ss": log_ss},
                        index=pd.Index(np.asarray(customers, dtype=object), name="customer_id"))


def numpy_rate_change(orders: pd.DataFrame) -> pd.DataFrame:
    from quimbi_pipeline.model.change_points import ChangeRule, rate_change
    codes, customers = pd.factorize(orders["customer_id"], sort=True)
    ts = orders["order_ts"].to_numpy("datetime64[ns]").view("int64")
    change = rate_change(codes.astype("int64"), ts, (D + pd.Timedelta(days=1)).value, customers.size, ChangeRule())
    return rate_frame(np.asarray(customers, dtype=object), change.after_n, change.since_ns // NS_PER_DAY, change.evidence)


def rate_frame(customers, after_n, since_day, evidence) -> pd.DataFrame:
    """Customers with a change: purchases after it, its day and its evidence (the detector's output)."""
    has = np.asarray(after_n) >= 0
    return pd.DataFrame({"after_n": np.asarray(after_n)[has], "since_day": np.asarray(since_day)[has], "evidence": np.asarray(evidence)[has]},
                        index=pd.Index(np.asarray(customers, dtype=object)[has], name="customer_id"))


def rate_scores(split: pd.DataFrame) -> pd.DataFrame:
    """The detector's arithmetic (change_points.rate_splits, as rate_change runs it) on split rows an engine made
    (customer_id, day, j, n_days, first_day, newest_day, newest_sq, sq_all, log_sum_all), then the best split per customer."""
    from quimbi_pipeline.model.change_points import (
        ChangeRule,
        rate_splits,
        rows_shape_prior,
    )
    # The pipeline's row order (customers ascending, newest first), so the store's shape mixture sums its customers alike.
    split = split.sort_values(["customer_id", "j"], kind="stable", ignore_index=True)
    j, dd = split["j"].to_numpy("float64"), split["day"].to_numpy("float64")
    n_days, first_day, newest_day, newest_sq, sq_all, log_sum_all = (split[c].to_numpy("float64") for c in (
        "n_days", "first_day", "newest_day", "newest_sq", "sq_all", "log_sum_all"))
    prior = rows_shape_prior(j, n_days, first_day, newest_day, log_sum_all)
    scored = rate_splits(dd, j, n_days, first_day, newest_day, newest_sq, sq_all, log_sum_all, (D + pd.Timedelta(days=1)).value, ChangeRule(), prior)
    evidence = np.where(j == 0, scored.silence, scored.gaps_evidence)
    rows = pd.DataFrame({"customer_id": split["customer_id"].to_numpy(object), "j": j, "score": scored.score, "day": dd, "evidence": evidence})
    # Per customer the highest score, ties to the fewest purchases after (change_points._best_per_customer's rule).
    rows = rows[scored.score >= 1.0].sort_values(["customer_id", "score", "j"], ascending=[True, False, True], kind="stable")
    best = rows.drop_duplicates("customer_id")
    return rate_frame(best["customer_id"].to_numpy(object), best["j"].to_numpy("int64"), best["day"].to_numpy("int64"),
                      best["evidence"].to_numpy("float64"))


# --- Polars ---------------------------------------------------------------------------------------------------------

def polars_frame(orders: pd.DataFrame):
    import polars as pl
    return pl.from_pandas(orders[["store_id", "order_id", "customer_id", "order_ts", "order_total"]])


def polars_duplicates(frame) -> int:
    return int(frame.select(["store_id", "order_id"]).is_duplicated().sum())


def polars_summary(frame) -> pd.DataFrame:
    import polars as pl
    end = D + pd.Timedelta(days=1)
    lazy = frame.lazy().with_columns(pl.col("order_ts").dt.truncate("1d").alias("day"))
    days = (lazy.group_by("customer_id", "day").agg(pl.col("order_total").sum().alias("day_spend"))
            .group_by("customer_id").agg(pl.len().alias("purchase_days"), pl.col("day_spend").sum().alias("day_total"),
                                         pl.col("day_spend").sort_by("day").first().alias("first_day_spend")))
    per = lazy.with_columns(pl.col("order_ts").max().over("customer_id").alias("last")).group_by("customer_id").agg(
        pl.len().alias("orders"), pl.col("order_total").sum().alias("spend"),
        pl.col("order_ts").min().alias("first_ts"), pl.col("order_ts").max().alias("last_ts"),
        (pl.col("order_ts") >= pl.lit(end - pd.Timedelta(days=WINDOW_DAYS))).sum().alias("orders_in_window"),
        pl.col("order_total").filter(pl.col("order_ts") >= pl.col("last") - pl.duration(days=WINDOW_DAYS)).median().alias("median_order"))
    out = (per.join(days, on="customer_id").with_columns(
        pl.when(pl.col("purchase_days") > 1).then((pl.col("day_total") - pl.col("first_day_spend")) / (pl.col("purchase_days") - 1))
        .otherwise(0.0).alias("monetary")).sort("customer_id").collect())
    return out.to_pandas().set_index("customer_id")


def polars_gaps(frame) -> pd.DataFrame:
    import polars as pl
    day = (pl.col("order_ts").dt.epoch("d")).alias("day")
    out = (frame.lazy().select("customer_id", day).unique().sort("customer_id", "day")
           .with_columns(pl.col("day").diff().over("customer_id").log().alias("log_gap"))
           .group_by("customer_id").agg(pl.col("log_gap").drop_nulls().len().alias("gaps"),
                                        pl.col("log_gap").drop_nulls().mean().alias("log_mean"),
                                        ((pl.col("log_gap") - pl.col("log_gap").mean()) ** 2).sum().alias("log_ss"))
           .sort("customer_id").collect())
    return out.to_pandas().set_index("customer_id")


def polars_rate_change(frame) -> pd.DataFrame:
    import polars as pl
    by = "customer_id"
    split = (frame.lazy().select(by, pl.col("order_ts").dt.epoch("d").alias("day")).unique()
             .sort([by, "day"], descending=[False, True])
             .with_columns((pl.col("day") - pl.col("day").shift(-1).over(by)).fill_null(0).cast(pl.Float64).alias("gap"))
             .with_columns(pl.int_range(pl.len()).over(by).alias("j"), pl.len().over(by).alias("n_days"),
                           pl.col("day").min().over(by).alias("first_day"), pl.col("day").max().over(by).alias("newest_day"),
                           ((pl.col("gap") ** 2).cum_sum().over(by) - pl.col("gap") ** 2).alias("newest_sq"),
                           (pl.col("gap") ** 2).sum().over(by).alias("sq_all"),
                           pl.when(pl.col("gap") > 0).then(((pl.col("gap") - CONTINUITY_DAYS).log() * LOG_QUANTUM).round() / LOG_QUANTUM)
                           .otherwise(0.0).sum().over(by).alias("log_sum_all"))
             .collect())
    return rate_scores(split.to_pandas())


# --- DuckDB ---------------------------------------------------------------------------------------------------------

def duckdb_duplicates(con, orders: pd.DataFrame) -> int:
    return int(con.execute("SELECT coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM orders GROUP BY store_id, order_id "
                           "HAVING count(*) > 1)").fetchone()[0])


def duckdb_summary(con, orders: pd.DataFrame) -> pd.DataFrame:
    end = D + pd.Timedelta(days=1)
    return con.execute(f"""
        WITH o AS (SELECT customer_id, order_ts, order_total, max(order_ts) OVER (PARTITION BY customer_id) AS last FROM orders),
        per AS (SELECT customer_id, count(*) AS orders, sum(order_total) AS spend, min(order_ts) AS first_ts, max(order_ts) AS last_ts,
                       count(*) FILTER (WHERE order_ts >= TIMESTAMP '{end - pd.Timedelta(days=WINDOW_DAYS)}') AS orders_in_window,
                       median(order_total) FILTER (WHERE order_ts >= last - INTERVAL {WINDOW_DAYS} DAY) AS median_order
                FROM o GROUP BY customer_id),
        d AS (SELECT customer_id, date_trunc('day', order_ts) AS day, sum(order_total) AS day_spend FROM orders GROUP BY 1, 2),
        days AS (SELECT customer_id, count(*) AS purchase_days, sum(day_spend) AS day_total, arg_min(day_spend, day) AS first_day_spend
                 FROM d GROUP BY customer_id)
        SELECT per.*, days.purchase_days,
               CASE WHEN purchase_days > 1 THEN (day_total - first_day_spend) / (purchase_days - 1) ELSE 0.0 END AS monetary
        FROM per JOIN days USING (customer_id) ORDER BY customer_id""").df().set_index("customer_id")


def duckdb_gaps(con, orders: pd.DataFrame) -> pd.DataFrame:
    return con.execute("""
        WITH d AS (SELECT DISTINCT customer_id, date_trunc('day', order_ts) AS day FROM orders),
        g AS (SELECT customer_id, ln(date_diff('day', lag(day) OVER (PARTITION BY customer_id ORDER BY day), day)) AS log_gap FROM d)
        SELECT customer_id, count(log_gap) AS gaps, avg(log_gap) AS log_mean,
               coalesce(var_pop(log_gap) * count(log_gap), 0) AS log_ss
        FROM g GROUP BY customer_id ORDER BY customer_id""").df().set_index("customer_id")


def duckdb_rate_change(con, orders: pd.DataFrame) -> pd.DataFrame:
    split = con.execute(f"""
        WITH d AS (SELECT DISTINCT customer_id, date_diff('day', TIMESTAMP '1970-01-01', date_trunc('day', order_ts)) AS day FROM orders),
        g AS (SELECT customer_id, day, coalesce(day - lead(day) OVER w, 0)::DOUBLE AS gap,
                     row_number() OVER w - 1 AS j FROM d WINDOW w AS (PARTITION BY customer_id ORDER BY day DESC))
        SELECT customer_id, day, j, count(*) OVER c AS n_days, min(day) OVER c AS first_day, max(day) OVER c AS newest_day,
               sum(gap * gap) OVER (PARTITION BY customer_id ORDER BY j ROWS UNBOUNDED PRECEDING) - gap * gap AS newest_sq,
               sum(gap * gap) OVER c AS sq_all, sum(CASE WHEN gap > 0 THEN round(ln(gap - {CONTINUITY_DAYS}) * {LOG_QUANTUM}) / {LOG_QUANTUM} ELSE 0 END) OVER c AS log_sum_all
        FROM g WINDOW c AS (PARTITION BY customer_id)""").df()
    return rate_scores(split)


# --- checks ---------------------------------------------------------------------------------------------------------

def same(name: str, engine: str, expected: pd.DataFrame, got: pd.DataFrame) -> str:
    """Stops the run unless every column agrees to 1e-9 (relative); returns the columns that are not bit for bit the
    pipeline's ("" when all are): a sum in another order differs in the last bits, which the flags-off promise forbids."""
    if not got.index.sort_values().equals(expected.index.sort_values()):
        raise SystemExit(f"{name}, {engine}: {len(got)} customers against the pipeline's {len(expected)}")
    got = got.reindex(expected.index)
    inexact = []
    for column in expected.columns:
        e, g = expected[column], got[column]
        if e.dtype.kind == "i" and str(g.dtype).startswith("datetime"):
            g = g.astype("datetime64[ns]").astype("int64")
        e, g = np.asarray(e, dtype="float64"), np.asarray(g, dtype="float64")
        if column == "log_mean":  # customers without gaps: NaN in the pipeline, NULL elsewhere
            e, g = np.nan_to_num(e), np.nan_to_num(g)
        if not np.allclose(e, g, rtol=1e-9, atol=1e-9, equal_nan=True):
            bad = np.flatnonzero(~np.isclose(e, g, rtol=1e-9, atol=1e-9, equal_nan=True))
            raise SystemExit(f"{name}, {engine}: column {column} differs at {bad.size} customers (first: {expected.index[bad[0]]}: "
                             f"{e[bad[0]]!r} against {g[bad[0]]!r})")
        if not np.array_equal(e, g, equal_nan=True):
            inexact.append(column)
    return ", ".join(inexact)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=2, help="threads Polars and DuckDB may use")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ["POLARS_MAX_THREADS"] = str(args.threads)  # read when polars is imported
    import duckdb
    import polars as pl

    from quimbi_pipeline.model.change_points import ChangeRule
    from quimbi_pipeline.model.features import compute_customer_features
    from quimbi_pipeline.sources.demo import generate_demo
    from quimbi_pipeline.sources.orders import orders_as_of, validate_orders

    print(f"# benchmarks/engines.py --customers {args.customers} --threads {args.threads} --repeats {args.repeats}, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}; polars {pl.__version__}, duckdb {duckdb.__version__}, pandas {pd.__version__}, "
          f"numpy {np.__version__}; {os.cpu_count()} cores", flush=True)
    started = time.perf_counter()
    demo = generate_demo(n_customers=args.customers, n_stores=1, seed=7)
    orders = validate_orders(demo.orders).orders
    orders = orders_as_of(orders, D).reset_index(drop=True)
    n = len(orders)
    print(f"{n:,} orders of {orders['customer_id'].nunique():,} customers up to {D.date()} ({time.perf_counter() - started:.0f} s to make)",
          flush=True)

    def row(kernel: str, engine: str, seconds: float, inexact: str = "") -> None:
        note = f"  not bit for bit: {inexact}" if inexact else ""
        print(f"  {kernel:<12} {engine:<28} {seconds:7.2f} s  {n / seconds / 1e6:6.2f} M orders/s{note}", flush=True)

    seconds, frame = best_of(args.repeats, lambda: polars_frame(orders))
    row("convert", "polars (from_pandas)", seconds)
    con = duckdb.connect()
    con.execute(f"SET threads = {args.threads}")
    con.register("orders", orders[["store_id", "order_id", "customer_id", "order_ts", "order_total"]])

    seconds, expected = best_of(args.repeats, lambda: numpy_duplicates(orders))
    row("duplicates", "numpy (pipeline)", seconds)
    for engine, fn in (("polars", lambda: polars_duplicates(frame)), ("duckdb", lambda: duckdb_duplicates(con, orders))):
        seconds, got = best_of(args.repeats, fn)
        if got != expected:
            raise SystemExit(f"duplicates, {engine}: {got} repeated rows against the pipeline's {expected}")
        row("duplicates", engine, seconds)

    for kernel, ours, theirs in (("summary", numpy_summary, (polars_summary, duckdb_summary)),
                                 ("gaps", numpy_gaps, (polars_gaps, duckdb_gaps)),
                                 ("rate change", numpy_rate_change, (polars_rate_change, duckdb_rate_change))):
        seconds, expected = best_of(args.repeats, lambda ours=ours: ours(orders))
        row(kernel, "numpy (pipeline)", seconds)
        for engine, fn in (("polars", lambda f=theirs[0]: f(frame)), ("duckdb", lambda f=theirs[1]: f(con, orders))):
            seconds, got = best_of(args.repeats, fn)
            row(kernel, engine, seconds, same(kernel, engine, expected, got))

    for label, rule in (("no detection", None), ("change detection", ChangeRule())):
        seconds, _ = best_of(args.repeats, lambda rule=rule: compute_customer_features(orders, D, adaptive=rule))
        row("features", f"pipeline, {label}", seconds)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
