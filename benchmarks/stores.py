"""Many small stores against one large one: the per-store fixed cost of the daily profiles partition.

    .venv/bin/python benchmarks/stores.py --stores 100 --customers-per-store 1000 [--postgres URL] [--daily-job]

Runs the daily partition of D (profiles with every flag off, as pipeline.run_profiles_partition runs it for
the daily job) once for N stores x C customers and once for one store of N x C customers, with the same
demo behavior and order count, into fresh warehouses; prints wall time, the ratio, the mean seconds per
store of each stage (features, segments, churn_ltv, assemble, write, verify) for both runs, so the fixed
cost of a store and where it goes can be read off, and the peak memory of the run and of its store workers
(store_pool.py; `--stores 50` is one schedule batch). Prints figures; asserts nothing.

--daily-job: with every flag of the daily job (snapshots, drift, outliers; stable segment models fitted once per
28-day period, periods starting on Mondays) as the schedule runs it: 2026-10-30 untimed (it fits the models of the
period from 2026-10-05), then two timed dates, each its profiles and its drift: 2026-10-31 (an ordinary day: the
period's models are read) and 2026-11-02 (the first day of the next period: every store refits on its own customers).
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quimbi_pipeline.run import run_drift_partition, run_profiles_partition  # noqa: E402
from quimbi_pipeline.settings import PipelineSettings  # noqa: E402
from quimbi_pipeline.sources.demo import generate_demo  # noqa: E402
from quimbi_pipeline.sources.orders import validate_orders  # noqa: E402
from quimbi_pipeline.storage import Warehouse, drop_postgres_schema  # noqa: E402

DAY = "2026-10-31"
STAGES = ("features", "segments", "stable_models", "churn_ltv", "assemble", "write", "verify")


def peak_gib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024**2  # KiB on Linux; RUSAGE_CHILDREN: the largest finished child


DAILY_JOB = PipelineSettings(enable_temporal_snapshots=True, enable_drift_analysis=True, enable_outlier_detection=True)
DAILY_DATES = {"2026-10-30": False, "2026-10-31": True, "2026-11-02": True}  # date: timed


def run(orders: pd.DataFrame, url: str, daily_job: bool = False) -> dict[str, tuple[float, float, pd.DataFrame, int]]:
    """{date: (profiles seconds, drift seconds, per-store stage seconds, profiles)} of the timed dates."""
    validated = validate_orders(orders)
    wh = Warehouse(url)
    settings = DAILY_JOB if daily_job else PipelineSettings()
    out = {}
    for day, timed in (DAILY_DATES.items() if daily_job else ((DAY, True),)):
        started = time.perf_counter()
        report = run_profiles_partition(validated, day, wh, settings)
        seconds = time.perf_counter() - started
        if report.failed:
            raise RuntimeError([o.error for o in report.failed])
        started = time.perf_counter()
        drift_failed = [o.error for o in run_drift_partition(wh, day, settings) if not o.ok] if daily_job else []
        if drift_failed:
            raise RuntimeError(drift_failed)
        if timed:
            stages = pd.DataFrame([{s: o.metrics.get(f"seconds/{s}", 0.0) for s in STAGES} for o in report.outcomes])
            out[day] = (seconds, time.perf_counter() - started if daily_job else 0.0, stages, report.n_profiles)
    wh.dispose()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=int, default=100)
    parser.add_argument("--customers-per-store", type=int, default=1000)
    parser.add_argument("--postgres", help="a PostgreSQL URL (its schema `platform` is dropped first); default: SQLite files")
    parser.add_argument("--daily-job", action="store_true", help="every flag of the daily job, an ordinary day and a refit day, drift included")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    total = args.stores * args.customers_per_store
    many = generate_demo(n_customers=total, n_stores=1, seed=11, start="2024-11-01", end=DAY).orders
    # The same orders, customers dealt round-robin into stores of equal size.
    codes, _ = pd.factorize(many["customer_id"], sort=True)
    split = many.assign(store_id=pd.Series(codes % args.stores).map(lambda i: f"store_{i:05d}").to_numpy())
    flags = "every flag of the daily job" if args.daily_job else "every flag off"
    print(f"# {args.stores} stores x {args.customers_per_store} customers vs 1 store x {total} customers, {len(many):,} orders, {flags}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, orders in ((f"{args.stores} stores", split), ("1 store", many)):
            if args.postgres:
                drop_postgres_schema(args.postgres)
                url = args.postgres
            else:
                url = f"sqlite:///{Path(tmp) / (name.replace(' ', '_') + '.sqlite')}"
            results[name] = run(orders, url, args.daily_job)
            for day, (seconds, drift_seconds, stages, profiles) in results[name].items():
                total_s = seconds + drift_seconds
                print(f"{name:>12} {day}: {total_s:8.1f} s (profiles {seconds:.1f}, drift {drift_seconds:.1f}), {profiles:,} profiles, "
                      f"{profiles / total_s:,.0f} profiles/s; mean per store: " + ", ".join(f"{s} {stages[s].mean():.3f}s" for s in STAGES), flush=True)
            print(f"{'':>12}  peak RSS so far: this process {peak_gib(resource.RUSAGE_SELF):.2f} GiB, "
                  f"largest store worker {peak_gib(resource.RUSAGE_CHILDREN):.2f} GiB", flush=True)
    for day in results["1 store"]:
        many_s, one_s = (sum(results[k][day][:2]) for k in (f"{args.stores} stores", "1 store"))
        print(f"{day}: ratio {many_s / one_s:.2f}x; fixed cost per store (many - one) / stores = {(many_s - one_s) / args.stores:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
