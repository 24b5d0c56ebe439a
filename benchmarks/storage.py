"""Storage of a run of daily partitions with every flag on under the default retention, table by table.

    .venv/bin/python benchmarks/storage.py [--customers 10000] [--days 60] [--end 2026-10-31] [--postgres URL]

Runs D = end - days + 1 .. end as production does (profiles with snapshots and outlier flags, drift of the
five windows, then the prune the retention sensor launches), into a fresh SQLite file (or the PostgreSQL
URL's `platform` schema, dropped first). On PostgreSQL each day ends with a plain VACUUM of the tables:
the 60 days run in minutes, and without it the rows rewritten every day (customer_profiles, the drift state,
outlier scores) are measured with the dead versions autovacuum would have made reusable in the day between
two runs (measured without it: customer_profiles 26 KB a row). Prints, per table: rows, bytes with indexes,
bytes per row; then the issue 13 figures:

- bytes per active customer per daily run (all tables and indexes / active customers / runs; target <= 400);
- steady state after a year at 1M customers: each table's rows a customer keeps under the policy after
  365 daily runs (snapshots: a row per retained date, whatever its types: 7 daily, ~9 weekly, 12 monthly,
  4 quarterly, 1 yearly, counted from the calendar, on ~26 dates) times the bytes per row measured here,
  times 1M (target <= 25 GB on PostgreSQL);
- growth per month per 100k customers in that first year (what is added each month and not expired:
  the monthly date's snapshot row per customer (quarterly and yearly dates are monthly dates too) and its
  blocks; target <= 500 MB).

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quimbi_pipeline.history.snapshots import snapshot_types_for  # noqa: E402
from quimbi_pipeline.run import run_drift_partition, run_profiles_partition  # noqa: E402
from quimbi_pipeline.settings import (
    PipelineSettings,  # noqa: E402
    RetentionPolicy,  # noqa: E402
)
from quimbi_pipeline.sources.demo import generate_demo  # noqa: E402
from quimbi_pipeline.sources.orders import validate_orders  # noqa: E402
from quimbi_pipeline.storage import drop_postgres_schema, metadata  # noqa: E402
from quimbi_pipeline.storage.prune import prune  # noqa: E402

TABLES = [t.name for t in metadata.sorted_tables]


def retained_snapshot_rows(policy: RetentionPolicy, runs: int, end: pd.Timestamp) -> tuple[float, float]:
    """(snapshot rows, distinct snapshot dates) a customer active every day keeps after `runs` daily runs up to end."""
    days = pd.date_range(end=end, periods=runs, freq="D")
    rows, dates = 0, set()
    for day in days:
        for snapshot_type in snapshot_types_for(day):
            if (end - day).days < policy.days(snapshot_type):
                rows += 1
                dates.add(day)
    return rows, len(dates)


def vacuum(wh) -> None:
    """PostgreSQL: what autovacuum does in the day between two daily runs (dead rows' space reusable; no FULL)."""
    import sqlalchemy as sa

    with wh.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in TABLES:
            conn.execute(sa.text(f"VACUUM {wh.qualified(table)}"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--end", default="2026-10-31")
    parser.add_argument("--postgres", help="a PostgreSQL URL (its schema `platform` is dropped first); default: a SQLite file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    end = pd.Timestamp(args.end)
    days = pd.date_range(end=end, periods=args.days, freq="D")
    validated = validate_orders(generate_demo(n_customers=args.customers, n_stores=1, seed=23, end=args.end, change_share=0.2).orders)
    settings = PipelineSettings(enable_drift_analysis=True, enable_outlier_detection=True)
    policy = RetentionPolicy()
    with tempfile.TemporaryDirectory() as tmp:
        if args.postgres:
            drop_postgres_schema(args.postgres)
            url = args.postgres
        else:
            url = f"sqlite:///{Path(tmp) / 'storage.sqlite'}"
        from quimbi_pipeline.storage import Warehouse

        wh = Warehouse(url)
        print(f"# {args.customers:,} demo customers, {args.days} daily runs {days[0].date()} .. {end.date()}, every flag on, "
              f"default retention, {'PostgreSQL' if wh.is_postgres else 'SQLite'}", flush=True)
        started = time.perf_counter()
        for i, day in enumerate(days, 1):
            report = run_profiles_partition(validated, day, wh, settings)
            drift = run_drift_partition(wh, day, settings, retention=policy)
            if report.failed or not all(o.ok for o in drift):
                raise RuntimeError(f"{day.date()}: {[o.error for o in report.failed]} {[o.error for o in drift if not o.ok]}")
            prune(wh, policy)
            if wh.is_postgres:
                vacuum(wh)
            if i % 10 == 0 or i == len(days):
                print(f"  [{i}/{len(days)}] {day.date()} {time.perf_counter() - started:,.0f} s", flush=True)
        active = report.n_profiles
        sizes = {t: (wh.table_bytes(t), int(wh.read_sql(f"SELECT count(*) AS n FROM {wh.qualified(t)}")["n"].iloc[0])) for t in TABLES}
        anomaly_days = wh.read_sql(f"SELECT count(DISTINCT as_of_date) AS n FROM {wh.qualified('customer_drift_anomalies')}")["n"].iloc[0]
        wh.dispose()

    total = sum(b for b, _ in sizes.values())
    print(f"\n{'table':<28}{'rows':>12}{'MiB':>10}{'bytes/row':>11}{'bytes/customer/run':>20}")
    for table, (size, rows) in sorted(sizes.items(), key=lambda kv: -kv[1][0]):
        print(f"{table:<28}{rows:>12,}{size / 2**20:>10.1f}{size / max(rows, 1):>11,.0f}{size / active / len(days):>20.1f}")
    print(f"{'total':<28}{sum(r for _, r in sizes.values()):>12,}{total / 2**20:>10.1f}{'':>11}{total / active / len(days):>20.1f}")
    print(f"\nactive customers at {end.date()}: {active:,}; bytes per active customer per daily run: {total / active / len(days):,.0f} (target <= 400)")

    # Steady state after a year, per active customer: each table's measured bytes per row times the rows it keeps.
    def per_row(table: str) -> float:
        size, rows = sizes[table]
        return size / rows if rows else 0.0

    snap_rows_now, dates_now = retained_snapshot_rows(policy, len(days), end)
    snap_rows_year, dates_year = retained_snapshot_rows(policy, 365, end)
    per_customer = {
        "customer_profiles": sizes["customer_profiles"][0] / active,
        "profile_snapshots": per_row("profile_snapshots") * dates_year,
        "snapshot_blocks": sizes["snapshot_blocks"][0] / active / max(dates_now, 1) * dates_year,
        "customer_drift (axes included)": sizes["customer_drift"][0] / active,
        "customer_drift_anomalies": sizes["customer_drift_anomalies"][0] / active / max(anomaly_days, 1) * policy.anomalies,
        "customer_outlier_flags": sizes["customer_outlier_flags"][0] / active,  # already at its 28-day steady state
    }
    small = total - sum(sizes[t][0] for t in ("customer_profiles", "profile_snapshots", "snapshot_blocks", "customer_drift",
                                               "customer_drift_anomalies", "customer_outlier_flags"))
    year = sum(per_customer.values()) * 1_000_000 + small
    print(f"\nsteady state after a year at 1M customers (snapshot rows per customer: one per date, {dates_year} dates, "
          f"{snap_rows_year} types; here {dates_now} dates, {snap_rows_now} types):")
    for name, b in per_customer.items():
        print(f"  {name:<38}{b:>10,.0f} bytes/customer{b * 1e6 / 1e9:>10.2f} GB")
    print(f"  total {year / 1e9:,.2f} GB (target <= 25 GB on PostgreSQL)")
    monthly = per_row("profile_snapshots") + sizes["snapshot_blocks"][0] / active / max(dates_now, 1)
    print(f"growth per month per 100k customers in the first year: {monthly * 100_000 / 1e6:,.0f} MB (target <= 500 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
