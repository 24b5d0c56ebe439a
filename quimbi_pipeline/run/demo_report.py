"""What `quimbi demo` prints after its runs: what the product found, and the first queries to try."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import yaml

from quimbi_pipeline.drift.alerts import ALERT_WINDOW_DAYS, alert_episodes
from quimbi_pipeline.run.alerts import store_alerts
from quimbi_pipeline.settings import StoreSettings
from quimbi_pipeline.storage import Warehouse, data_dir, masked_url

DEMO_FLAGS_FILE = "demo_flags.yaml"
DEMO_PARTITIONS_FILE = "demo_partitions.env"


def write_demo_flags(flags: dict[str, bool]) -> Path:
    """The demo's flags file (data/demo_flags.yaml): `make dev` passes it to the UI's runs, so a run launched
    from the UI computes what the demo computed. The project's defaults stay off."""
    path = data_dir() / DEMO_FLAGS_FILE
    path.write_text("# Written by `quimbi demo`: the flags of the demo warehouse (make dev and make serve use this file).\n"
                    + yaml.safe_dump({"defaults": flags}, sort_keys=False))
    return path


def write_demo_partitions(start: pd.Timestamp, end: pd.Timestamp, orders: str) -> Path:
    """data/demo_partitions.env: `make dev` shows the Dagster UI's daily partitions over the demo's dates only (the
    production default starts in 2024 and runs up to today: 97% of its partitions would show as missing), its
    runs read the demo's orders (with the young store), and `make serve`'s customer pages show those orders."""
    path = data_dir() / DEMO_PARTITIONS_FILE
    path.write_text(f"QUIMBI_PARTITIONS_START={start:%Y-%m-%d}\nQUIMBI_PARTITIONS_END={end:%Y-%m-%d}\nQUIMBI_ORDERS={orders}\n")
    return path


def demo_report(warehouse_url: str, as_of: pd.Timestamp, out=None) -> None:
    out = out or sys.stdout
    wh = Warehouse(warehouse_url)
    day = {"d": as_of.date()}
    try:
        prof = wh.read_sql(f"SELECT store_id, archetype_name, churn_risk_level, predicted_ltv, history_basis "
                           f"FROM {wh.qualified('customer_profiles')} WHERE profile_date = :d", day)
        print(f"\nProfiles dated {as_of.date()}: {len(prof):,}", file=out)
        for store, g in prof.groupby("store_id"):
            churn = g["churn_risk_level"].value_counts(normalize=True)
            print(f"  {store}: {len(g):,} customers, mean predicted 12-month LTV {g['predicted_ltv'].mean():.2f}, churn risk "
                  + ", ".join(f"{k} {v:.0%}" for k, v in churn.items()), file=out)
            basis = [b if isinstance(b, dict) else json.loads(b) for b in g["history_basis"].dropna()]
            if basis:
                little = sum(b["little_history"] for b in basis)
                recalibrated = ", recalibrated on its own last churn horizon" if basis[0].get("churn_recalibrated") else ""
                print(f"      {basis[0]['store_days']} days of orders, churn model: {basis[0]['churn_model']}{recalibrated}; "
                      f"little history: {little:,} customer(s) ({little / len(basis):.0%})", file=out)
            for name, n in g["archetype_name"].value_counts().head(3).items():
                print(f"      {n:5d}  {name}", file=out)
        moved = wh.read_sql(
            f"SELECT store_id, customer_id, axis, direction, drift_score, transitions FROM {wh.qualified('customer_axis_drift')} "
            "WHERE as_of_date = :d AND window_days = 28 AND direction <> 'stable' ORDER BY drift_score DESC, store_id, customer_id LIMIT 5", day)
        print("\nMost drifted customers over the last 28 days (customer_axis_drift):", file=out)
        for r in moved.itertuples():
            print(f"  {r.store_id} {r.customer_id}  {r.axis} {r.direction} (drift {r.drift_score:.2f})", file=out)
        if moved.empty:
            print("  none", file=out)
        week = {"a": (as_of - pd.Timedelta(days=6)).date(), "d": as_of.date()}
        anomalies = wh.read_sql(
            f"SELECT as_of_date, store_id, customer_id, anomaly_type, axis, description FROM {wh.qualified('customer_drift_anomalies')} "
            "WHERE as_of_date BETWEEN :a AND :d ORDER BY as_of_date DESC, store_id, customer_id, anomaly_type, axis", week)
        print(f"\nAnomalies of the last 7 days (customer_drift_anomalies): {len(anomalies)}", file=out)
        for r in anomalies.head(5).itertuples():
            print(f"  {r.as_of_date} {r.store_id} {r.customer_id}  {r.anomaly_type}: {r.description}", file=out)
        outliers = wh.read_sql(
            f"SELECT store_id, method, flagged AS outliers, customers "
            f"FROM {wh.qualified('outlier_rates')} WHERE flag_date = :d ORDER BY store_id, method", day)
        print("\nOutliers (outlier_rates):", file=out)
        for r in outliers.itertuples():
            print(f"  {r.store_id} {r.method}: {int(r.outliers)} of {int(r.customers):,}", file=out)
        episodes = alert_episodes(store_alerts(wh, StoreSettings(), as_of - pd.Timedelta(days=ALERT_WINDOW_DAYS - 1), as_of))
        print(f"\nAlerts on the stores' mix over the last {ALERT_WINDOW_DAYS} days (/stores/{{store}}/alerts, the store page): {len(episodes)}", file=out)
        for r in episodes.itertuples():
            days = f"{r.first} to {r.last} ({r.days} days)" if r.days > 1 else f"{r.first}"
            print(f"  {r.store_id} {r.severity} {days}: {r.message}", file=out)
    finally:
        wh.dispose()
    print(f"\nWarehouse: {masked_url(warehouse_url)}. First queries to try (sqlite3 {warehouse_url.removeprefix('sqlite:///')}):\n"
          f"  SELECT customer_id, axis, direction, drift_score FROM customer_axis_drift WHERE as_of_date = '{as_of.date()}'\n"
          "    AND window_days = 28 AND direction <> 'stable' ORDER BY drift_score DESC LIMIT 20;\n"
          "  SELECT as_of_date, customer_id, anomaly_type, axis, description FROM customer_drift_anomalies ORDER BY as_of_date DESC LIMIT 20;\n"
          "  SELECT customer_id, churn_risk_score, predicted_ltv FROM customer_profiles ORDER BY churn_risk_score DESC LIMIT 20;\n"
          "More in README.md (Tables for analysts). Open the UI with `make dev`: the demo's runs are in it.\n"
          "The read API and pages: `make serve`, then http://localhost:8000/ui/stores/store_a and http://localhost:8000/docs.", file=out)
