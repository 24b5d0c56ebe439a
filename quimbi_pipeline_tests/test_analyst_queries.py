"""The README's drift queries, run as written on SQLite and PostgreSQL after a month of the drift pipeline."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from quimbi_pipeline.run import run_drift_partition, run_profiles_partition
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.sources.demo import generate_demo
from quimbi_pipeline.sources.orders import validate_orders
from quimbi_pipeline.storage import PG_SCHEMA, Warehouse

README = Path(__file__).resolve().parent.parent / "README.md"
DAY = "2026-10-31"


def readme_queries() -> dict[str, str]:
    text = README.read_text()
    return dict(re.findall(r"<!-- query: (\w+) -->\s*```sql\n(.*?)```", text, flags=re.S))


def run_query(wh: Warehouse, sql: str, params: dict) -> pd.DataFrame:
    with wh.engine.connect() as conn:
        if wh.is_postgres:
            conn.execute(sa.text(f"SET search_path TO {PG_SCHEMA}"))
        return pd.read_sql(sa.text(sql), conn, params=params)


@pytest.fixture(scope="module")
def demo():
    # Seed 13: on the last day its month holds frequency degraders and anomalies, so no query below is vacuous.
    return generate_demo(n_customers=500, n_stores=1, seed=13, change_share=0.3)


def test_readme_has_the_three_queries():
    assert set(readme_queries()) == {"degraded_frequency", "archetype_journey", "anomalies_today"}


@pytest.mark.heavy
def test_readme_queries_on_a_month_of_drift(warehouse_url, demo):
    settings = PipelineSettings(enable_temporal_snapshots=True, enable_drift_analysis=True, enable_stable_segments=True)
    validated = validate_orders(demo.orders)
    wh = Warehouse(warehouse_url)
    for day in pd.date_range("2026-10-01", DAY):
        assert not run_profiles_partition(validated, day, wh, settings).failed
        assert all(o.ok for o in run_drift_partition(wh, day, settings))
    queries = readme_queries()

    degraded = run_query(wh, queries["degraded_frequency"], {"store": "store_a", "day": DAY})
    truth = wh.read_sql(f"SELECT customer_id, drift_score FROM {wh.qualified('customer_axis_drift')} WHERE store_id = 'store_a' "
                        "AND as_of_date = :d AND window_days = 28 AND axis = 'purchase_frequency' AND direction = 'degrading'", {"d": pd.Timestamp(DAY).date()})
    assert len(degraded) == min(len(truth), 100) and len(degraded) > 0
    assert degraded["drift_score"].is_monotonic_decreasing
    assert degraded["drift_score"].iloc[0] == truth["drift_score"].max()

    customer = degraded["customer_id"].iloc[0]
    journey = run_query(wh, queries["archetype_journey"], {"store": "store_a", "customer": customer})
    assert len(journey) == 1 and str(journey["as_of_date"].iloc[0]) == DAY
    steps = journey["archetype_journey"].iloc[0]
    steps = json.loads(steps) if isinstance(steps, str) else steps
    assert steps and steps[0]["date"] == "2026-10-01" and all({"date", "archetype"} == set(s) for s in steps)

    anomalies = run_query(wh, queries["anomalies_today"], {"store": "store_a", "day": DAY})
    stored = wh.read_sql(f"SELECT count(*) AS n FROM {wh.qualified('customer_drift_anomalies')} WHERE store_id = 'store_a' AND as_of_date = :d",
                         {"d": pd.Timestamp(DAY).date()})["n"].iloc[0]
    assert anomalies["customers"].sum() == stored > 0
    assert set(anomalies["anomaly_type"]) <= {"sudden_drift", "reversal", "velocity_spike"}
    # Every window has rows on the last day (history starts 2026-10-01: the long windows hold the whole month).
    windows = wh.read_sql(f"SELECT DISTINCT window_days FROM {wh.qualified('customer_drift')} WHERE as_of_date = :d", {"d": pd.Timestamp(DAY).date()})
    assert sorted(windows["window_days"]) == [7, 28, 90, 180, 365]
    assert wh.drift_violations("store_a", DAY) == 0
    wh.dispose()
