"""`quimbi run` on a CSV in the documented format: one profile per active customer, SQLite and PostgreSQL."""

import io

import pandas as pd
import pytest

from quimbi_pipeline.cli import main, run_dates
from quimbi_pipeline.model.features import active_mask, compute_customer_features
from quimbi_pipeline.sources.demo import generate_demo
from quimbi_pipeline.sources.orders import load_orders, orders_as_of
from quimbi_pipeline.storage import Warehouse


def test_quimbi_run_on_csv_gives_one_profile_per_active_customer(tmp_path, warehouse_url, monkeypatch, capsys):
    path = tmp_path / "orders.csv"
    generate_demo(n_customers=500, n_stores=2, seed=9).orders.to_csv(path, index=False)
    monkeypatch.setenv("QUIMBI_ORDERS", str(path))
    assert main(["run", "--from", "2026-09-29", "--to", "2026-09-30", "--warehouse", warehouse_url]) == 0
    out = capsys.readouterr().out
    assert "[2/2] 2026-09-30  ok" in out
    v = load_orders(str(path))
    profiles = Warehouse(warehouse_url).profiles(profile_date="2026-09-30")
    for store, orders in orders_as_of(v.orders, "2026-09-30").groupby("store_id"):
        f = compute_customer_features(orders, pd.Timestamp("2026-09-30"))
        active = set(f.index[active_mask(f, 365)])
        assert set(profiles.loc[profiles.store_id == store, "customer_id"]) == active


def test_quimbi_run_reports_failures_and_exit_code(tmp_path, sqlite_url):
    path = tmp_path / "orders.csv"
    pd.DataFrame([{"order_id": "1", "customer_id": None, "order_ts": "2026-01-01", "order_total": 3}]).to_csv(path, index=False)
    out = io.StringIO()
    assert run_dates(pd.Timestamp("2026-01-01"), pd.Timestamp("2026-01-01"), orders=str(path), warehouse=sqlite_url, stores=None, out=out) == 1
    assert "FAILED" in out.getvalue() and "customer_id" in out.getvalue()


def test_quimbi_run_rejects_a_reversed_range(sqlite_url):
    import pytest

    with pytest.raises(SystemExit, match="before --from"):
        main(["run", "--from", "2026-01-02", "--to", "2026-01-01", "--warehouse", sqlite_url])


@pytest.mark.slow
def test_quimbi_run_over_60_demo_days_fills_the_drift_tables(tmp_path, monkeypatch, capsys):
    for flag in ("ENABLE_TEMPORAL_SNAPSHOTS", "ENABLE_DRIFT_ANALYSIS", "ENABLE_STABLE_SEGMENTS"):
        monkeypatch.setenv(flag, "1")
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    assert main(["run", "--from", "2026-09-02", "--to", "2026-10-31", "--orders", "demo:customers=1000,stores=1,seed=5", "--warehouse", url]) == 0
    out = capsys.readouterr().out
    assert "[60/60] 2026-10-31  ok" in out and "drift: customer_drift" in out
    wh = Warehouse(url)
    for table in ("customer_drift", "customer_axis_drift"):
        windows = wh.read_sql(f"SELECT as_of_date, window_days FROM {table} GROUP BY as_of_date, window_days")
        last = windows[windows["as_of_date"].astype(str) == "2026-10-31"]
        assert sorted(last["window_days"]) == [7, 28, 90, 180, 365], table
        # The drift state is the newest date's (default retention); past dates are computed on demand.
        assert len(windows) == 5
    population = wh.read_sql("SELECT DISTINCT as_of_date FROM population_drift ORDER BY 1")["as_of_date"].astype(str)
    assert (population.iloc[0], population.iloc[-1], len(population)) == ("2026-09-03", "2026-10-31", 59)  # every date after the first
    # Anomalies need a change in the customer's own orders, new at their date (1,000 demo customers: 25 in 60 days).
    anomalies = wh.read_sql("SELECT anomaly_type, description FROM customer_drift_anomalies")
    assert set(anomalies["anomaly_type"]) >= {"sudden_drift", "velocity_spike"}
    assert anomalies["description"].str.contains("; evidence: ").all()
    # Evidence dated more than 28 days before its anomaly says why it still counts.
    dated = wh.read_sql("SELECT as_of_date, description FROM customer_drift_anomalies")
    since = pd.to_datetime(dated["description"].str.extract(r"since (\d{4}-\d{2}-\d{2})")[0])
    old = (pd.to_datetime(dated["as_of_date"]) - since).dt.days > 28
    assert old.any() and dated.loc[old, "description"].str.contains(r"\((?:no order since|the last order before the change)").all()
    assert not dated.loc[~old, "description"].str.contains(r"\((?:no order since|the last order before the change)").any()
    assert not wh.read_sql("SELECT * FROM population_drift WHERE as_of_date = '2026-10-31'").empty
    wh.dispose()
    # What `quimbi demo` prints after its runs, the store-mix alerts included (a line each, or none).
    from quimbi_pipeline.run.alerts import store_alerts
    from quimbi_pipeline.run.demo_report import demo_report
    from quimbi_pipeline.settings import PipelineSettings

    report = io.StringIO()
    demo_report(url, pd.Timestamp("2026-10-31"), out=report)
    alerts = store_alerts(Warehouse(url), PipelineSettings(), "2026-10-04", "2026-10-31")
    assert "Alerts on the stores' mix over the last 28 days (/stores/{store}/alerts, the store page): " in report.getvalue()
    # A demo store with two years of orders: its churn is recalibrated on its own last 90 days, and the report says so.
    assert "churn model: store fit, recalibrated on its own last churn horizon; little history: " in report.getvalue()
    assert all(message in report.getvalue() for message in alerts.drop_duplicates(["store_id", "kind", "axis"], keep="last")["message"])


@pytest.mark.parametrize("where", ["before", "after"])
def test_v_works_before_or_after_the_subcommand(sqlite_url, capsys, caplog, where):
    """Every error says "(run with -v for details)"; `quimbi run ... -v` was refused ("unrecognized arguments")."""
    args = ["run", "--from", "2026-10-31", "--to", "2026-10-31", "--orders", "demo:customers=50", "--warehouse", sqlite_url, "--stores", "nope"]
    assert main(["-v", *args] if where == "before" else [*args, "-v"]) == 1
    err = capsys.readouterr().err
    assert "no orders for store(s) nope" in err and "(run with -v for details)" not in err
    assert [r.exc_info is not None for r in caplog.records if r.getMessage() == "quimbi failed"] == [True]  # the details
    assert main(args) == 1 and "(run with -v for details)" in capsys.readouterr().err


def test_the_demo_partitions_file_bounds_the_daily_partitions(tmp_path, monkeypatch):
    """`make dev` sources data/demo_partitions.env (written by `quimbi demo`): the UI's partitions are the demo's dates,
    not 2024 to today (97% 'missing'); the production default is unchanged."""
    import os
    import subprocess
    import sys

    from quimbi_pipeline.run.demo_report import write_demo_partitions

    monkeypatch.setenv("QUIMBI_DATA_DIR", str(tmp_path))
    path = write_demo_partitions(pd.Timestamp("2026-09-27"), pd.Timestamp("2026-10-31"), "demo:young_customers=300")
    env = dict(os.environ, **dict(line.split("=", 1) for line in path.read_text().split()))
    assert env["QUIMBI_ORDERS"] == "demo:young_customers=300"  # the UI's runs read what the demo read
    code = "from quimbi_pipeline.defs.partitions import daily_partitions as p; k = p.get_partition_keys(); print(len(k), k[0], k[-1])"
    bounded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert bounded == ["35", "2026-09-27", "2026-10-31"]
    default = {k: v for k, v in os.environ.items() if not k.startswith("QUIMBI_PARTITIONS_")}
    first = subprocess.run([sys.executable, "-c", code], env=default, capture_output=True, text=True, check=True).stdout.split()[1]
    assert first == "2024-01-01"
