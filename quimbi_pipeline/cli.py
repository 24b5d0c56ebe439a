"""`quimbi`: run the daily pipeline for a date range, in process, through the Dagster job."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import pandas as pd

DEMO_END = "2026-10-31"  # the demo's history ends here (fixed, so the demo is reproducible)
DEMO_DAYS = 14


def _date(text: str) -> pd.Timestamp:
    try:
        return pd.Timestamp(text).normalize()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD)") from exc


def run_dates(
    start: pd.Timestamp, end: pd.Timestamp, *, orders: str | None, warehouse: str | None, stores: list[str] | None,
    log_level: str = "WARNING", out=None,
) -> int:
    """Materialize the daily_pipeline job for each date in [start, end], in order. Returns the number of failed dates."""
    out = out or sys.stdout
    import dagster as dg

    from quimbi_pipeline.definitions import defs
    from quimbi_pipeline.defs.drift.assets import DRIFT_KEYS, DRIFT_STEP
    from quimbi_pipeline.defs.profiles.assets import DAILY_STEP, OUTLIERS_KEY, PROFILES_KEY, SNAPSHOT_KEYS
    from quimbi_pipeline.defs.profiles.jobs import DAILY_PIPELINE_JOB

    if end < start:
        raise SystemExit(f"--to {end.date()} is before --from {start.date()}")
    job = defs.resolve_job_def(DAILY_PIPELINE_JOB)
    run_config: dict = {"resources": {}, "loggers": {"console": {"config": {"log_level": log_level}}}}
    if warehouse:
        run_config["resources"]["warehouse"] = {"config": {"url": warehouse}}
    if orders:
        run_config["resources"]["orders_source"] = {"config": {"uri": orders}}
    if stores:
        run_config["ops"] = {step: {"config": {"stores": stores}} for step in (DAILY_STEP, DRIFT_STEP)}
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    failed = 0
    dates = pd.date_range(start, end, freq="D")
    for i, day in enumerate(dates, 1):
        key = f"{day:%Y-%m-%d}"
        started = time.perf_counter()
        result = job.execute_in_process(run_config=run_config, instance=instance, partition_key=key, raise_on_error=False)
        secs = time.perf_counter() - started
        rows = stores_ok = 0
        snapshots = []
        outlier_rows = None
        snapshot_kinds = {k: t for t, k in SNAPSHOT_KEYS.items()}
        for materialization in result.asset_materializations_for_node(DAILY_STEP):
            if materialization.asset_key == PROFILES_KEY:
                rows = materialization.metadata["rows"].value
                stores_ok = materialization.metadata["stores_ok"].value
            elif materialization.asset_key == OUTLIERS_KEY:
                outlier_rows = materialization.metadata["rows"].value
            else:
                snapshots.append(f"{snapshot_kinds[materialization.asset_key]} {materialization.metadata['rows'].value:,}")
        drift_rows = {m.asset_key.path[-1]: m.metadata["rows"].value for m in result.asset_materializations_for_node(DRIFT_STEP)}
        status = "ok" if result.success else "FAILED"
        snap_text = f"  snapshots: {', '.join(snapshots)}" if snapshots else ""
        if outlier_rows is not None:
            snap_text += f"  outlier flags: {outlier_rows:,}"
        if drift_rows:
            snap_text += "  drift: " + ", ".join(f"{name} {drift_rows[name]:,}" for name in DRIFT_KEYS if name in drift_rows)
        print(f"[{i}/{len(dates)}] {key}  {status:6}  stores ok {stores_ok}  profiles {rows:>9,}  {secs:6.1f}s{snap_text}", file=out, flush=True)
        if not result.success:
            failed += 1
            for event in result.all_events:
                if event.is_step_failure and event.step_failure_data.error:
                    print(f"    {event.step_key}: {event.step_failure_data.error.message.strip()}", file=out)
                    user = event.step_failure_data.user_failure_data
                    for k, v in (user.metadata if user else {}).items():
                        print(f"    {k}: {v.value}", file=out)
    return failed


def demo_summary(warehouse_url: str, as_of: pd.Timestamp, out=None) -> None:
    out = out or sys.stdout
    from quimbi_pipeline.warehouse import Warehouse

    wh = Warehouse(warehouse_url)
    prof = wh.read_sql(
        f"SELECT store_id, archetype_name, churn_risk_level, predicted_ltv FROM {wh.qualified('customer_profiles')} WHERE profile_date = :d",
        {"d": as_of.date()},
    )
    print(f"\nProfiles dated {as_of.date()}: {len(prof):,}", file=out)
    for store, g in prof.groupby("store_id"):
        churn = g["churn_risk_level"].value_counts(normalize=True)
        top = g["archetype_name"].value_counts().head(3)
        print(f"  {store}: {len(g):,} customers, mean predicted 12-month LTV {g['predicted_ltv'].mean():.2f}, "
              f"churn risk " + ", ".join(f"{k} {v:.0%}" for k, v in churn.items()), file=out)
        for name, n in top.items():
            print(f"      {n:5d}  {name}", file=out)
    print(f"\nWarehouse: {warehouse_url}", file=out)
    print("Tables: customer_profiles, segment_models; with flags (docs/flags.md): customer_profile_snapshots "
          "(ENABLE_TEMPORAL_SNAPSHOTS), customer_drift and friends (ENABLE_DRIFT_ANALYSIS), customer_outlier_flags "
          "(ENABLE_OUTLIER_DETECTION). Open the UI with `make dev` (see README).", file=out)
    wh.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quimbi", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize the daily pipeline for each date from --from to --to")
    run.add_argument("--from", dest="start", type=_date, required=True)
    run.add_argument("--to", dest="end", type=_date, required=True)
    run.add_argument("--orders", help="orders source (default: QUIMBI_ORDERS, else demo)")
    run.add_argument("--warehouse", help="SQLAlchemy URL (default: QUIMBI_WAREHOUSE_URL, else the project's SQLite file)")
    run.add_argument("--stores", help="comma-separated store ids (default: all)")
    demo = sub.add_parser("demo", help=f"run the last {DEMO_DAYS} days of the demo orders into the default SQLite warehouse")
    demo.add_argument("--days", type=int, default=DEMO_DAYS)
    demo.add_argument("--warehouse", help="SQLAlchemy URL (default: the project's SQLite file)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each stage")
    args = parser.parse_args(argv)
    level = "INFO" if args.verbose else "WARNING"
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "run":
        stores = [s.strip() for s in args.stores.split(",") if s.strip()] if args.stores else None
        failed = run_dates(args.start, args.end, orders=args.orders, warehouse=args.warehouse, stores=stores, log_level=level)
        return 1 if failed else 0

    from quimbi_pipeline.warehouse import default_warehouse_url

    url = args.warehouse or default_warehouse_url()
    end = pd.Timestamp(DEMO_END)
    start = end - pd.Timedelta(days=max(args.days, 1) - 1)
    print(f"quimbi demo: demo orders, {start.date()} .. {end.date()}, warehouse {url}")
    failed = run_dates(start, end, orders="demo", warehouse=url, stores=None, log_level=level)
    demo_summary(url, end)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
