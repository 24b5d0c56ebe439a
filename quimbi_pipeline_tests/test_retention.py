"""Retention for every table (prune.py): drift kept as the current state with any past date computed on demand
to the numbers the daily step wrote; the prune job and `quimbi prune` remove exactly the expired rows of each
table and nothing a kept row needs."""

from __future__ import annotations

import pandas as pd
import pytest

from quimbi_pipeline.cli import main as quimbi
from quimbi_pipeline.history.snapshots import TABLE_RETENTION
from quimbi_pipeline.run import (
    drift_on_demand,
    run_drift_partition,
    run_profiles_partition,
)
from quimbi_pipeline.settings import RetentionPolicy
from quimbi_pipeline.sources.demo import generate_demo
from quimbi_pipeline.sources.orders import validate_orders
from quimbi_pipeline.storage import Warehouse, customer_drift_anomalies
from quimbi_pipeline.storage.prune import expiry, prune
from quimbi_pipeline_tests.test_reliability import ALL_ON, _canonical, tables

DAYS = [f"2026-10-{d}" for d in range(24, 32)]
KEEP_ALL = RetentionPolicy(drift=3650, anomalies=3650, outliers=3650)
AXIS_COMPARED = ["customer_id", "window_days", "axis", "drift_score", "direction", "velocity", "n_transitions"]
CUSTOMER_COMPARED = ["customer_id", "window_days", "overall_drift", "drift_velocity", "predicted_30d_drift", "churn_risk_trend", "n_snapshots"]


@pytest.fixture(scope="module")
def orders():
    return validate_orders(generate_demo(n_customers=300, n_stores=2, seed=17, change_share=0.3).orders)


def _run(wh: Warehouse, orders, days, retention: RetentionPolicy) -> None:
    for day in days:
        assert not run_profiles_partition(orders, day, wh, ALL_ON).failed
        assert all(o.ok for o in run_drift_partition(wh, day, ALL_ON, retention=retention))


def _rows(wh: Warehouse, table: str, where: str = "", params: dict | None = None) -> pd.DataFrame:
    return wh.read_sql(f"SELECT * FROM {wh.qualified(table)} {where}", params)


def _dates(frame: pd.DataFrame, column: str = "as_of_date") -> set[str]:
    return set(pd.to_datetime(frame[column]).dt.strftime("%Y-%m-%d"))


@pytest.mark.heavy
def test_drift_is_the_current_state_and_any_past_date_is_computed_on_demand_to_the_written_numbers(warehouse_url, orders, tmp_path):
    wh = Warehouse(warehouse_url)
    _run(wh, orders, DAYS, RetentionPolicy())
    assert _dates(_rows(wh, "customer_drift")) == {DAYS[-1]} == _dates(_rows(wh, "customer_axis_drift"))
    assert _dates(_rows(wh, "population_drift")) == set(DAYS[1:])  # the store series of every day is kept

    # A warehouse that kept every date: what the daily step wrote on a past date is what on demand computes now.
    everything = Warehouse(f"sqlite:///{tmp_path / 'everything.sqlite'}")
    _run(everything, orders, DAYS, KEEP_ALL)
    past = DAYS[-3]
    key = ["store_id", "customer_id", "as_of_date", "anomaly_type", "axis", "anomaly_date"]
    # Events of every day, as text (dates are dates on PostgreSQL, text on SQLite: an empty frame hid that until
    # 2026-12-07, when this store's first anomaly appeared).
    pd.testing.assert_frame_equal(_rows(wh, "customer_drift_anomalies").map(_canonical).sort_values(key).reset_index(drop=True),
                                  _rows(everything, "customer_drift_anomalies").map(_canonical).sort_values(key).reset_index(drop=True))
    for store in ("store_a", "store_b"):
        written = _rows(everything, "customer_axis_drift", "WHERE store_id = :s AND as_of_date = :d", {"s": store, "d": pd.Timestamp(past).date()})
        computed = drift_on_demand(wh, store, past, ALL_ON)
        key = ["customer_id", "window_days", "axis"]
        assert len(written) > 100 and (written["drift_score"] > 0).any()  # numbers worth comparing
        pd.testing.assert_frame_equal(written[AXIS_COMPARED].sort_values(key).reset_index(drop=True),
                                      computed.axes[AXIS_COMPARED].sort_values(key).reset_index(drop=True), check_dtype=False)
        written = _rows(everything, "customer_drift", "WHERE store_id = :s AND as_of_date = :d", {"s": store, "d": pd.Timestamp(past).date()})
        pd.testing.assert_frame_equal(written[CUSTOMER_COMPARED].sort_values(["customer_id", "window_days"]).reset_index(drop=True),
                                      computed.customers[CUSTOMER_COMPARED].sort_values(["customer_id", "window_days"]).reset_index(drop=True),
                                      check_dtype=False)
        one = written["customer_id"].iloc[0]
        single = drift_on_demand(wh, store, past, ALL_ON, customer_id=one)
        assert set(single.customers["customer_id"]) == {one} and len(single.customers) == (written["customer_id"] == one).sum()
    assert drift_on_demand(wh, "store_a", "2026-09-01", ALL_ON) is None  # no snapshot dated then

    # A backfilled older date writes its events, not a state older than the current one.
    _run(wh, orders, [DAYS[2]], RetentionPolicy())
    assert _dates(_rows(wh, "customer_drift")) == {DAYS[-1]}
    wh.dispose()
    everything.dispose()


def test_prune_removes_exactly_the_expired_rows_of_every_table_and_keeps_what_kept_rows_need(warehouse_url, orders):
    wh = Warehouse(warehouse_url)
    _run(wh, orders, DAYS, KEEP_ALL)
    # Anomalies are rare on 8 days of demo orders: one per store and date is planted for the prune to act on.
    planted = pd.DataFrame([{"store_id": s, "customer_id": "c0000001", "as_of_date": pd.Timestamp(d).date(), "anomaly_type": "sudden_drift",
                             "axis": "purchase_frequency", "anomaly_date": pd.Timestamp(d).date(), "severity": 0.5, "description": "planted"}
                            for s in ("store_a", "store_b") for d in DAYS])
    with wh.engine.begin() as conn:
        conn.execute(customer_drift_anomalies.insert(), planted.to_dict(orient="records"))
    before = {table: _rows(wh, table) for table in TABLE_RETENTION}
    models_before = _rows(wh, "segment_models")
    policy = RetentionPolicy(drift=2, anomalies=3, outliers=4, population=5, models=1)
    expired = expiry(wh, policy)
    counts = prune(wh, policy)
    for table, (column, field) in TABLE_RETENTION.items():
        frame = before[table]
        dates = pd.to_datetime(frame[column])
        newest = dates.groupby(frame["store_id"]).transform("max")
        kept = dates >= newest - pd.Timedelta(days=policy.days(field) - 1)
        after = _rows(wh, table)
        assert len(after) == int(kept.sum()) and kept.sum() > 0, table
        assert _dates(after, column) == _dates(frame[kept], column), table
        assert counts.loc[counts["table"] == table, "deleted"].sum() == int((~kept).sum()), table
        assert expired.loc[expired["table"] == table, "expired"].sum() == int((~kept).sum()), table
    # models=1 day, yet every model a kept profile or snapshot names stays.
    named = set(_rows(wh, "customer_profiles")["model_version"]) | set(_rows(wh, "customer_profile_snapshots")["model_version"])
    assert named <= set(_rows(wh, "segment_models")["model_version"]) <= set(models_before["model_version"])
    assert expiry(wh, policy)["expired"].sum() == 0
    wh.dispose()


def test_quimbi_prune_counts_then_deletes_with_the_environments_policy(sqlite_url, orders, monkeypatch, capsys):
    wh = Warehouse(sqlite_url)
    _run(wh, orders, DAYS[:4], KEEP_ALL)
    flags = _rows(wh, "customer_outlier_flags")
    n_flags = len(flags)
    dates = pd.to_datetime(flags["flag_date"])
    n_expired = int((dates < dates.groupby(flags["store_id"]).transform("max")).sum())
    monkeypatch.setenv("QUIMBI_RETENTION_OUTLIERS_DAYS", "1")
    monkeypatch.setenv("QUIMBI_RETENTION_DAILY_DAYS", "2")
    assert quimbi(["prune", "--warehouse", sqlite_url, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert f"customer_outlier_flags: would delete {n_expired:,} rows" in dry
    assert len(_rows(wh, "customer_outlier_flags")) == n_flags  # a dry run deletes nothing
    assert quimbi(["prune", "--warehouse", sqlite_url]) == 0
    assert "customer_outlier_flags: deleted" in capsys.readouterr().out
    assert _dates(_rows(wh, "customer_outlier_flags"), "flag_date") == {DAYS[3]}
    assert quimbi(["prune", "--warehouse", sqlite_url, "--dry-run"]) == 0
    assert "total: would delete 0 rows" in capsys.readouterr().out
    monkeypatch.setenv("QUIMBI_RETENTION_DRIFT_DAYS", "0")
    assert quimbi(["prune", "--warehouse", sqlite_url]) == 1
    assert "QUIMBI_RETENTION_*_DAYS" in capsys.readouterr().err
    wh.dispose()


@pytest.mark.heavy
def test_drift_reads_what_the_policy_keeps_at_its_date_whenever_pruning_ran(warehouse_url, orders, tmp_path):
    """Drift at D reads the snapshots the retention policy keeps at D, not whatever pruning has left: the daily
    schedule prunes between dates, a backfill's lease holds pruning off, and both must give the same drift. Dailies
    kept 2 days, so most of these dates' drift sees pruned ones."""
    policy = RetentionPolicy(daily=2, weekly=8, drift=3650, anomalies=3650)
    days = [f"2026-10-{d}" for d in range(25, 32)]  # a Monday (weekly) among them
    pruned, held = Warehouse(warehouse_url), Warehouse(f"sqlite:///{tmp_path / 'held.sqlite'}")
    for day in days:
        _run(pruned, orders, [day], policy)
        prune(pruned, policy)
    _run(held, orders, days, policy)
    assert expiry(held, policy)["expired"].sum() > 0 == expiry(pruned, policy)["expired"].sum()  # the two differ in what is stored
    a, b = tables(pruned), tables(held)
    for table in ("customer_drift", "customer_axis_drift", "customer_drift_anomalies", "population_drift"):
        assert table == "customer_drift_anomalies" or set(a[table]["as_of_date"]) == set(days[1:]), table
        pd.testing.assert_frame_equal(a[table], b[table], obj=table)
    pruned.dispose()
    held.dispose()
