"""A backfill of one store over N dates: a run per date against runs of several dates, beside the last date alone.

    .venv/bin/python benchmarks/backfill.py --customers 20000 --dates 30 [--per-run 30] [--postgres URL] [--skip-per-date]

Every flag of the daily job on (ENABLE_DRIFT_ANALYSIS, which turns on snapshots, stable segments and adaptive
windows; ENABLE_OUTLIER_DETECTION). The orders are a demo store written to a CSV file, so that each run reads and
validates a file as a production run does. Each run is its own process (`quimbi run`), as the UI's run launcher
starts one process per run; every measure starts on an empty warehouse:

1. the last date alone (one run);
2. the N dates with a run per date (QUIMBI_BACKFILL_DATES_PER_RUN=1: N processes, one after the other, as the
   default run queue of one run at a time launches them);
3. the N dates in runs of --per-run dates (what a backfill launched in the UI does by default).

Prints wall seconds, seconds per date after the first, the ratio to the last date alone and the largest peak
RSS of the runs. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quimbi_pipeline.sources.demo import generate_demo
from quimbi_pipeline.storage import drop_postgres_schema

FLAGS = {"ENABLE_DRIFT_ANALYSIS": "1", "ENABLE_OUTLIER_DETECTION": "1"}


def quimbi_run(start: str, end: str, orders: str, url: str, per_run: int) -> float:
    """`quimbi run --from start --to end` in a process of its own; its wall seconds (it must succeed)."""
    env = {**os.environ, **FLAGS, "QUIMBI_BACKFILL_DATES_PER_RUN": str(per_run)}
    env.pop("DAGSTER_HOME", None)  # an ephemeral instance: no run storage grows between measures
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "quimbi_pipeline.cli", "run", "--from", start, "--to", end, "--orders", orders,
                           "--warehouse", url], env=env, capture_output=True, text=True, check=False)
    secs = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"quimbi run {start}..{end} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return secs


def fresh_warehouse(postgres: str | None, folder: Path, name: str) -> str:
    if postgres:
        drop_postgres_schema(postgres)
        return postgres
    return f"sqlite:///{folder / f'{name}.sqlite'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--dates", type=int, default=30)
    parser.add_argument("--per-run", type=int, default=30, help="dates per run of the batched backfill")
    parser.add_argument("--end", default="2026-10-31", help="the backfill's last date")
    parser.add_argument("--skip-per-date", action="store_true", help="measure the last date alone and the batched runs only")
    parser.add_argument("--postgres", help="a PostgreSQL URL (its schema `platform` is dropped before each measure); default: SQLite files")
    args = parser.parse_args()
    end = pd.Timestamp(args.end)
    start = end - pd.Timedelta(days=args.dates - 1)
    first, last = f"{start:%Y-%m-%d}", f"{end:%Y-%m-%d}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        orders = folder / "orders.csv"
        generate_demo(n_customers=args.customers, n_stores=1, seed=7).orders.to_csv(orders, index=False)
        size = orders.stat().st_size
        print(f"backfill of {args.dates} dates ({first} to {last}), one store of {args.customers:,} customers "
              f"({size / 1e6:.0f} MB of CSV), every flag of the daily job, {'PostgreSQL' if args.postgres else 'SQLite'}; "
              f"{platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
        alone = quimbi_run(last, last, str(orders), fresh_warehouse(args.postgres, folder, "alone"), 1)
        print(f"{'the last date alone':<34} {alone:8.1f} s")
        measures = []
        if not args.skip_per_date:
            url = fresh_warehouse(args.postgres, folder, "per_date")
            measures.append((f"a run per date ({args.dates} runs)",
                             sum(quimbi_run(f"{day:%Y-%m-%d}", f"{day:%Y-%m-%d}", str(orders), url, 1) for day in pd.date_range(start, end))))
        url = fresh_warehouse(args.postgres, folder, "batched")
        measures.append((f"runs of up to {args.per_run} dates ({-(-args.dates // args.per_run)} runs)",
                         quimbi_run(first, last, str(orders), url, args.per_run)))
        for name, secs in measures:
            after = (secs - alone) / max(args.dates - 1, 1)
            print(f"{name:<34} {secs:8.1f} s  {after:6.1f} s per date after the first  {secs / alone:5.1f}x the last date alone")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        print(f"largest peak RSS of a run: {peak:.2f} GiB")


if __name__ == "__main__":
    main()
