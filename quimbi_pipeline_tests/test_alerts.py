"""Alerts on the store's mix: thresholds (drift/alerts.py), the stored dates' alerts on both databases, and on a real
run of a planted store whose mix shifts against a steady one: the asset check, the sensor, the report job with its
webhook, the API and the store page."""

import dataclasses
import json
import threading
from datetime import date
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from quimbi_pipeline.drift.alerts import AlertThresholds, alert_episodes, mix_alerts
from quimbi_pipeline.run.alerts import store_alerts
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.storage import Warehouse
from quimbi_pipeline.storage.drift_tables import population_drift
from quimbi_pipeline.storage.outlier_tables import outlier_rates


def population_rows(store="s", day="2026-10-31", n=500, **shifts) -> pd.DataFrame:
    """One population_drift row per axis given as axis=(share shift, psi)."""
    return pd.DataFrame([{"store_id": store, "as_of_date": day, "axis": axis, "reference_date": "2026-10-03", "n_current": n,
                          "segment_share_shift": shift, "feature_psi": psi} for axis, (shift, psi) in shifts.items()])


def rate_rows(store="s", day="2026-10-31", customers=500, **flagged) -> pd.DataFrame:
    return pd.DataFrame([{"store_id": store, "flag_date": day, "method": m, "customers": customers, "flagged": f} for m, f in flagged.items()])


NO_RATES = rate_rows()
DEFAULT = AlertThresholds.from_settings(PipelineSettings())  # the documented defaults


def test_each_measure_warns_then_errors_at_its_thresholds_with_a_sentence_each():
    population = population_rows(purchase_value=(0.12, 0.05), purchase_frequency=(0.25, 0.6), basket_size=(0.02, 0.3))
    alerts = mix_alerts(population, rate_rows(density=20, membership=5), DEFAULT)
    assert alerts[["kind", "axis", "severity"]].values.tolist() == [
        ["feature_distribution", "purchase_frequency", "error"], ["segment_mix", "purchase_frequency", "error"],
        ["feature_distribution", "basket_size", "warn"], ["outlier_rate", "density", "warn"], ["segment_mix", "purchase_value", "warn"]]
    assert alerts["message"].tolist() == [
        "purchase_frequency: its features' distribution moved by PSI 0.60 since 2026-10-03 (error from 0.5)",
        "purchase_frequency: the segment mix shifted by 25% of customers since 2026-10-03 (error from 20%)",
        "basket_size: its features' distribution moved by PSI 0.30 since 2026-10-03 (warn from 0.25)",
        "4.0% of customers (20 of 500) flagged by the density outlier method (warn from 2.0%)",
        "purchase_value: the segment mix shifted by 12% of customers since 2026-10-03 (warn from 10%)"]
    assert alerts["threshold"].tolist() == [0.5, 0.2, 0.25, 0.02, 0.1]
    assert (alerts["as_of_date"] == date(2026, 10, 31)).all()


def test_small_stores_unwatched_axes_and_values_below_the_thresholds_raise_nothing():
    assert mix_alerts(population_rows(n=150, purchase_value=(0.5, 2.0)), rate_rows(customers=150, density=50), DEFAULT).empty
    # loyalty_trajectory is not watched by default: its tenure grows with the calendar.
    assert mix_alerts(population_rows(loyalty_trajectory=(0.4, 3.0)), NO_RATES, DEFAULT).empty
    watched = dataclasses.replace(DEFAULT, axes=("loyalty_trajectory",))
    assert mix_alerts(population_rows(loyalty_trajectory=(0.4, 3.0)), NO_RATES, watched)["severity"].tolist() == ["error", "error"]
    below = mix_alerts(population_rows(purchase_value=(0.0999, 0.2499)), rate_rows(density=9), DEFAULT)
    assert below.empty
    assert mix_alerts(population_rows(purchase_value=(0.5, None)), NO_RATES, DEFAULT)["kind"].tolist() == ["segment_mix"]


def test_thresholds_come_from_the_settings_and_a_warning_must_come_before_its_error():
    settings = PipelineSettings(alert_segment_mix_warn=0.3, alert_segment_mix_error=0.4, alert_axes="purchase_value", alert_min_customers=10)
    t = AlertThresholds.from_settings(settings)
    assert (t.segment_mix, t.axes, t.min_customers) == ((0.3, 0.4), ("purchase_value",), 10)
    with pytest.raises(ValueError, match="QUIMBI_ALERT_OUTLIER_RATE_WARN=0.1 is above QUIMBI_ALERT_OUTLIER_RATE_ERROR=0.05"):
        PipelineSettings(alert_outlier_rate_warn=0.1)
    with pytest.raises(ValueError, match=r"unknown axes \['loyalty'\]"):
        PipelineSettings(alert_axes="purchase_value,loyalty")


def test_consecutive_days_of_one_alert_are_one_episode():
    days = [f"2026-10-{d:02d}" for d in (1, 2, 3, 10)]
    population = pd.concat([population_rows(day=d, purchase_value=(v, 0.0)) for d, v in zip(days, (0.12, 0.22, 0.15, 0.11))])
    episodes = alert_episodes(mix_alerts(population, NO_RATES, DEFAULT))
    assert episodes[["first", "last", "days", "severity"]].astype(str).values.tolist() == [
        ["2026-10-10", "2026-10-10", "1", "warn"], ["2026-10-01", "2026-10-03", "3", "error"]]
    assert episodes["peak"].tolist() == [0.11, 0.22]


def test_stored_alerts_per_store_and_date_on_both_databases(warehouse_url):
    wh = Warehouse(warehouse_url)
    try:
        rows = pd.concat([population_rows("a", "2026-10-30", purchase_value=(0.15, 0.1)), population_rows("a", "2026-10-31", purchase_value=(0.05, 0.1)),
                          population_rows("b", "2026-10-31", basket_size=(0.3, 0.1))])
        with wh.engine.begin() as conn:
            conn.execute(population_drift.insert(), [{**r, "as_of_date": date.fromisoformat(r["as_of_date"]), "reference_date": date(2026, 10, 3), "n_reference": 500,
                                                      "segment_shares": {}, "feature_psi_by_feature": {}} for r in rows.to_dict("records")])
            conn.execute(outlier_rates.insert(), [{**r, "flag_date": date.fromisoformat(r["flag_date"])} for r in rate_rows("b", density=40).to_dict("records")])
        every = store_alerts(wh, PipelineSettings(), "2026-10-30", "2026-10-31")
        assert every[["store_id", "as_of_date", "kind", "axis", "severity"]].astype(str).values.tolist() == [
            ["a", "2026-10-30", "segment_mix", "purchase_value", "warn"],
            ["b", "2026-10-31", "outlier_rate", "density", "error"], ["b", "2026-10-31", "segment_mix", "basket_size", "error"]]
        assert store_alerts(wh, PipelineSettings(), "2026-10-31", stores=["a"]).empty
        assert store_alerts(wh, PipelineSettings(alert_segment_mix_error=0.5), "2026-10-31", stores=["b"])["kind"].tolist() == ["outlier_rate", "segment_mix"]
        # The read API's and the store page's reads (the newest date over both tables, then the window before it).
        from quimbi_pipeline.api import reads

        assert [(a["as_of_date"], a["kind"], a["severity"]) for a in reads.alerts(wh, PipelineSettings(), "b", 28)] == [
            ("2026-10-31", "outlier_rate", "error"), ("2026-10-31", "segment_mix", "error")]
        assert [(e["first"], e["last"], e["days"]) for e in reads.alert_episodes(wh, PipelineSettings(), "a", 28)] == [("2026-10-30", "2026-10-30", 1)]
        assert reads.alerts(wh, PipelineSettings(), "nobody", 28) == []
    finally:
        wh.dispose()


# ---- a real run: a planted store whose mix shifts, and a steady one ----------------------------------------------------

RUN = PipelineSettings(enable_drift_analysis=True, enable_outlier_detection=True, drift_windows=(28,))
DAYS = pd.date_range("2026-09-02", "2026-10-31")  # 60 days
SHIFT_FROM = "2026-09-15"


def planted_orders(shift: bool) -> pd.DataFrame:
    from quimbi_pipeline.evaluation.planted import generate_planted

    orders = generate_planted(n_customers=300, seed=3, start="2025-06-01", end="2026-10-31", changes_from="2026-05-01", change_share=0.0).orders
    if shift:  # half the customers' orders become 4 times dearer
        half = pd.Series(orders["customer_id"].unique()).sample(frac=0.5, random_state=0)
        dearer = orders["customer_id"].isin(half) & (orders["order_ts"] >= SHIFT_FROM)
        orders.loc[dearer, "order_total"] *= 4
    return orders


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from quimbi_pipeline.evaluation.signals import run_days
    from quimbi_pipeline.sources.orders import validate_orders

    out = {}
    for name in ("steady", "shifted"):
        orders = planted_orders(name == "shifted")
        url = f"sqlite:///{tmp_path_factory.mktemp(name) / 'w.sqlite'}"
        run_days(validate_orders(orders), DAYS, url, RUN)
        out[name] = (url, orders)
    return out


@pytest.mark.slow
def test_a_steady_store_raises_no_alert_in_60_days_and_a_shifted_mix_raises_one(runs):
    steady = store_alerts(Warehouse(runs["steady"][0]), RUN, DAYS[0], DAYS[-1])
    assert steady.empty, steady["message"].tolist()
    shifted = store_alerts(Warehouse(runs["shifted"][0]), RUN, DAYS[0], DAYS[-1])
    assert set(shifted["axis"]) == {"purchase_value"} and "segment_mix" in set(shifted["kind"])
    first = pd.Timestamp(shifted["as_of_date"].min())
    assert pd.Timestamp(SHIFT_FROM) < first <= pd.Timestamp(SHIFT_FROM) + pd.Timedelta(days=28)


RECEIVED: list[dict] = []  # what the test webhook was sent


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        RECEIVED.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_the_check_the_sensor_the_report_with_its_webhook_and_the_pages_show_the_alerts(runs, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from quimbi_pipeline.api.app import create_app
    from quimbi_pipeline.defs.drift.alerts import (
        report_store_mix_alerts_job,
        store_mix_alert_sensor,
    )
    from quimbi_pipeline.defs.drift.assets import MIX_CHECK, daily_drift
    from quimbi_pipeline.defs.profiles.assets import daily_profiles
    from quimbi_pipeline.defs.resources import OrdersResource, WarehouseResource

    url, orders = runs["shifted"]
    alerts = store_alerts(Warehouse(url), RUN, DAYS[0], DAYS[-1])
    day = str(alerts["as_of_date"].max())
    path = tmp_path / "orders.csv"
    orders.to_csv(path, index=False)
    for name in ("ENABLE_DRIFT_ANALYSIS", "ENABLE_OUTLIER_DETECTION"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("QUIMBI_DRIFT_WINDOWS", "28")
    resources = {"warehouse": WarehouseResource(url=url), "orders_source": OrdersResource(uri=str(path))}
    result = dg.materialize([daily_profiles, daily_drift], partition_key=day, resources=resources, instance=dg.DagsterInstance.ephemeral())
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == MIX_CHECK)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "purchase_value: the segment mix shifted by" in check.metadata["alerts/planted"].value

    # The sensor's first tick looks a week back from the newest drift date; one run request per date with alerts.
    tick = store_mix_alert_sensor(dg.build_sensor_context(resources={"warehouse": WarehouseResource(url=url)}))
    newest = str(pd.Timestamp(DAYS[-1]).date())
    recent = alerts[pd.to_datetime(alerts["as_of_date"]) > pd.Timestamp(newest) - pd.Timedelta(days=7)]
    if recent.empty:
        assert isinstance(tick, dg.SkipReason)
    else:
        assert sorted(r.tags["quimbi/alert_date"] for r in tick) == sorted(str(d) for d in recent["as_of_date"].unique())
    again = store_mix_alert_sensor(dg.build_sensor_context(resources={"warehouse": WarehouseResource(url=url)}, cursor=newest))
    assert isinstance(again, dg.SkipReason)

    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    RECEIVED.clear()
    monkeypatch.setenv("QUIMBI_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_address[1]}/hook")
    try:
        report = report_store_mix_alerts_job.execute_in_process(run_config={"ops": {"report_store_mix_alerts": {"config": {"date": day}}}},
                                                                resources={"warehouse": WarehouseResource(url=url)})
    finally:
        server.shutdown()
    assert report.success
    expected = alerts[alerts["as_of_date"].astype(str) == day]
    assert [(h["store_id"], h["as_of_date"], h["kind"], h["axis"]) for h in RECEIVED] == [
        ("planted", day, k, a) for k, a in zip(expected["kind"], expected["axis"])]

    monkeypatch.setenv("QUIMBI_ALERT_WEBHOOK_URL", "http://127.0.0.1:9/unreachable")
    failed = report_store_mix_alerts_job.execute_in_process(run_config={"ops": {"report_store_mix_alerts": {"config": {"date": day}}}},
                                                            resources={"warehouse": WarehouseResource(url=url)}, raise_on_error=False)
    assert not failed.success  # a hook that cannot be reached fails the report run (re-run it), never silently

    client = TestClient(create_app(url).api)
    answer = client.get("/stores/planted/alerts", params={"days": 60}).json()["alerts"]
    assert len(answer) == len(alerts) and answer[0]["as_of_date"] >= answer[-1]["as_of_date"]
    page = client.get("/ui/stores/planted").text
    assert "Alerts on the store's mix" in page and "purchase_value: the segment mix shifted by" in page
    steady_page = TestClient(create_app(runs["steady"][0]).api).get("/ui/stores/planted").text
    assert "None: every axis' mix and the outlier rates are within their thresholds." in steady_page
    assert np.isfinite([a["value"] for a in answer]).all()


def test_outlier_rate_jumps_name_a_refit_of_the_segment_model_as_their_cause():
    from quimbi_pipeline.drift.alerts import outlier_rate_jumps

    rates = pd.DataFrame({"date": ["2026-10-03", "2026-10-04", "2026-10-05", "2026-10-06", "2026-10-07", "2026-10-08"] * 2,
                          "method": ["density"] * 6 + ["membership"] * 6,
                          "rate": [0.002, 0.002, 0.016, 0.015, 0.004, 0.005, 0.0, 0.0, 0.001, 0.004, 0.004, 0.004]})
    jumps = outlier_rate_jumps(rates, {date(2026, 10, 5)})
    assert jumps[["date", "method"]].values.tolist() == [["2026-10-07", "density"], ["2026-10-05", "density"]]
    assert jumps["cause"].tolist() == ["no refit that day: the customers' own behaviour moved",
                                       "the segment model was refitted that day: outliers are judged against the new segments"]
    assert outlier_rate_jumps(rates.iloc[:0], set()).empty


def test_the_store_charts_draw_the_alert_thresholds_and_the_refits():
    from quimbi_pipeline.api import charts

    series = [{"as_of_date": f"2026-10-0{d}", "axis": "purchase_value", "segment_share_shift": 0.01 * d,
               "segment_shares": {"mid_spender": {"current": 0.6}, "all_customers": {"current": 0.4}}} for d in (1, 2)]
    drift = charts.population_drift(series, 0.1, 0.2)
    assert [layer["mark"]["type"] for layer in drift["layer"]] == ["line", "rule", "text"]
    assert drift["layer"][1]["data"]["values"] == [{"threshold": 0.1, "level": "warn 10%"}, {"threshold": 0.2, "level": "error 20%"}]
    shares = charts.segment_shares(series)
    assert {v["segment"]: v["rung"] for v in shares["data"]["values"]} == {"mid_spender": "4", "all_customers": "other"}
    points = [{"date": d, "method": "density", "rate": 0.01} for d in ("2026-10-01", "2026-10-09")]
    outliers = charts.outlier_rate(points, ["2026-09-07", "2026-10-05"])
    assert outliers["layer"][1]["data"]["values"] == [{"date": "2026-10-05", "what": "segment model refitted"}]
    assert "layer" not in charts.outlier_rate(points, [])
