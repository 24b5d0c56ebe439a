"""Benchmark one daily partition end to end on N demo customers and print one row per stage.

    python benchmarks/run.py --customers 100000 [--postgres URL] [--sqlite PATH] [--date 2026-10-31]

Stages: demo generation, validation, the floor baseline (one pandas group-by aggregation per
customer over the same orders), then per store: features, segments, churn/LTV, assembly, write,
verify. Each row: wall seconds, rows/s, and the process's peak RSS so far. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quimbi_pipeline.demo import generate_demo  # noqa: E402
from quimbi_pipeline.orders import orders_as_of, validate_orders  # noqa: E402
from quimbi_pipeline.pipeline import run_profiles_partition  # noqa: E402
from quimbi_pipeline.settings import PipelineSettings  # noqa: E402
from quimbi_pipeline.warehouse import Warehouse  # noqa: E402


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is KiB on Linux


class Table:
    def __init__(self):
        print(f"{'stage':<34}{'seconds':>10}{'rows':>13}{'rows/s':>13}{'peak RSS GiB':>14}", flush=True)

    def row(self, stage: str, seconds: float, rows: int | None = None) -> None:
        rate = f"{rows / seconds:,.0f}" if rows and seconds > 0 else ""
        print(f"{stage:<34}{seconds:>10.2f}{(f'{rows:,}' if rows else ''):>13}{rate:>13}{peak_rss_gib():>14.2f}", flush=True)


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def floor_baseline(orders: pd.DataFrame) -> int:
    """The least any profile pipeline must do: one group-by aggregation per customer."""
    agg = orders.groupby(["store_id", "customer_id"], sort=False).agg(
        n=("order_total", "size"), total=("order_total", "sum"), first=("order_ts", "min"), last=("order_ts", "max"))
    return len(agg)


def run_partition(label: str, url: str, validated, date: str, table: Table, snapshots: bool) -> None:
    wh = Warehouse(url)
    settings = PipelineSettings(enable_temporal_snapshots=snapshots)
    report, secs = timed(lambda: run_profiles_partition(validated, date, wh, settings))
    for o in report.outcomes:
        if not o.ok:
            print(f"  store {o.store_id} FAILED: {o.error}")
            continue
        for key, value in o.metrics.items():
            if key.startswith("seconds/"):
                rows = sum(o.snapshot_rows.values()) if key == "seconds/write_snapshots" else o.n_profiles
                table.row(f"{label} {o.store_id} {key[8:]}", value, rows)
    table.row(f"{label} partition total", secs, report.n_profiles)
    for name in ("customer_profile_snapshots", "customer_profiles"):
        size = wh.table_bytes(name)
        if size:
            n = wh.read_sql(f"SELECT count(*) AS n FROM {wh.qualified(name)}")["n"].iloc[0]
            print(f"  {name}: {n:,} rows, {size / 2**20:,.1f} MiB with indexes, {size / max(n, 1):,.0f} bytes/row")
    wh.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--stores", type=int, default=1)
    parser.add_argument("--date", default="2026-10-31")
    parser.add_argument("--postgres", help="PostgreSQL SQLAlchemy URL (tables in schema platform are replaced)")
    parser.add_argument("--sqlite", help="SQLite file (default: a temporary file)")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--snapshots", action="store_true", help="write the date's snapshots too (ENABLE_TEMPORAL_SNAPSHOTS)")
    args = parser.parse_args()

    print(f"# quimbi benchmark: {args.customers:,} customers, {args.stores} store(s), date {args.date}")
    print(f"# machine: {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    table = Table()
    demo, secs = timed(lambda: generate_demo(n_customers=args.customers, n_stores=args.stores, start="2024-11-01", end=args.date))
    table.row("generate demo orders", secs, len(demo.orders))
    validated, secs = timed(lambda: validate_orders(demo.orders))
    table.row("validate orders", secs, len(demo.orders))
    cut, secs = timed(lambda: orders_as_of(validated.orders, args.date))
    table.row("point-in-time cut", secs, len(cut))
    started = time.perf_counter()
    n = floor_baseline(cut)
    table.row("baseline: one group-by (floor)", time.perf_counter() - started, n)
    del cut  # the partition run cuts the orders itself

    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            path = args.sqlite or os.path.join(tmp, "bench.sqlite")
            run_partition("sqlite", f"sqlite:///{path}", validated, args.date, table, args.snapshots)
    if args.postgres:
        import sqlalchemy as sa

        engine = sa.create_engine(args.postgres)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA IF EXISTS platform CASCADE"))
        engine.dispose()
        run_partition("postgres", args.postgres, validated, args.date, table, args.snapshots)


if __name__ == "__main__":
    main()
