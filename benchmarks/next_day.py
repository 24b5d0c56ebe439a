"""The schedule's path: a store's dates one after the other, each its profiles step, as the daily job writes them.

    .venv/bin/python benchmarks/next_day.py --postgres URL [--customers 1000000] [--dates 2026-10-29,2026-10-30,2026-10-31]

`generate_demo(n_customers=N, seed=7)` (3 stores), validated once; the schema `platform` of URL dropped first; then the
profiles partition of each date in turn with every flag of the daily job (snapshots, drift's inputs, outliers), so that
each date after the first updates the rows of the date before, as a daily run does (benchmarks/run.py re-runs one
date instead). Prints each date's wall time and each store's stage seconds. For the database's own share, set
`log_min_duration_statement` on the database and read its log. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quimbi_pipeline.run import run_profiles_partition  # noqa: E402
from quimbi_pipeline.settings import PipelineSettings  # noqa: E402
from quimbi_pipeline.sources.demo import generate_demo  # noqa: E402
from quimbi_pipeline.sources.orders import validate_orders  # noqa: E402
from quimbi_pipeline.storage import Warehouse, drop_postgres_schema  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", required=True, help="a PostgreSQL URL (its schema `platform` is dropped first)")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--dates", default="2026-10-29,2026-10-30,2026-10-31")
    args = parser.parse_args()
    validated = validate_orders(generate_demo(n_customers=args.customers, seed=7).orders)
    drop_postgres_schema(args.postgres)
    warehouse = Warehouse(args.postgres)
    settings = PipelineSettings(enable_temporal_snapshots=True, enable_drift_analysis=True, enable_outlier_detection=True)
    for day in args.dates.split(","):
        started = time.perf_counter()
        report = run_profiles_partition(validated, day, warehouse, settings)
        if report.failed:
            raise SystemExit(f"{day}: {[o.error for o in report.failed]}")
        print(f"{day} ({time.strftime('%H:%M:%S')} UTC): {time.perf_counter() - started:.1f} s", flush=True)
        for outcome in report.outcomes:
            stages = " ".join(f"{k.split('/', 1)[1]} {v:.1f}" for k, v in outcome.metrics.items() if k.startswith("seconds/"))
            print(f"  {outcome.store_id}: {stages}", flush=True)
    warehouse.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
