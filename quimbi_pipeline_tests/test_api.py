"""The read API (`quimbi serve`) on SQLite and PostgreSQL: response shapes and values as the pipeline wrote
them, errors as JSON with a clear detail, per-store keys on every endpoint, the features-off answers, and a
real uvicorn server started by the CLI."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pandas as pd
import psycopg
import pytest
from fastapi.testclient import TestClient

from quimbi_pipeline.api import reads
from quimbi_pipeline.api.access import Access, load_keys
from quimbi_pipeline.api.app import create_app
from quimbi_pipeline.api.direct_routes import DirectRoutes
from quimbi_pipeline.api.launch import LISTENING, local_server, tcp_sockets
from quimbi_pipeline.api.routes import (
    MAX_DAYS,
    MAX_ID_LENGTH,
    ROUTES,
    direct_route,
    direct_values,
)
from quimbi_pipeline.cli import main as quimbi
from quimbi_pipeline.run import (
    drift_on_demand,
    run_drift_partition,
    run_profiles_partition,
)
from quimbi_pipeline.settings import StoreSettings
from quimbi_pipeline.sources.demo import generate_demo
from quimbi_pipeline.sources.orders import validate_orders
from quimbi_pipeline.storage import Warehouse
from quimbi_pipeline_tests.conftest import _reset_pg

DAYS = [f"2026-10-{d}" for d in range(20, 32)]
FLAGS = {"ENABLE_DRIFT_ANALYSIS": "1", "ENABLE_OUTLIER_DETECTION": "1"}
NEWCOMER = "c-newcomer"
KEY_A, KEY_B = "key-for-store-a-0123456789", "key-for-store-b-0123456789"
ENDPOINTS = ["/stores/{store}/customers/{customer}", "/stores/{store}/customers/{customer}/drift?window=28d",
             "/stores/{store}/customers/{customer}/history?days=28", "/stores/{store}/population?days=30"]


@pytest.fixture(autouse=True)
def drift_flags(monkeypatch):
    for name, value in FLAGS.items():
        monkeypatch.setenv(name, value)


def build(url: str, n_stores: int = 2, days=DAYS) -> pd.DataFrame:
    """The pipeline run over `days` into the warehouse at `url`; returns the orders it read (validated)."""
    old = {k: os.environ.get(k) for k in FLAGS}
    os.environ.update(FLAGS)
    try:
        settings = StoreSettings()
        demo = generate_demo(n_customers=200 * n_stores, n_stores=n_stores, seed=31, change_share=0.3).orders
        # A newcomer whose one order is on the last day: one snapshot, so no drift.
        newcomer = demo.iloc[[0]].assign(order_id="o-newcomer", customer_id=NEWCOMER, store_id="store_a",
                                         order_ts=pd.Timestamp(days[-1]) + pd.Timedelta(hours=12))
        orders = validate_orders(pd.concat([demo, newcomer], ignore_index=True))
        wh = Warehouse(url)
        for day in days:
            assert not run_profiles_partition(orders, day, wh, settings).failed
            assert all(o.ok for o in run_drift_partition(wh, day, settings))
        wh.dispose()
        return orders.orders
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def sqlite_served(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('api') / 'warehouse.sqlite'}"
    build(url)
    return url


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def served(request) -> str:
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_served")
    url = request.getfixturevalue("postgres_url")
    _reset_pg(url)
    build(url)
    return url


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.yaml"
    path.write_text(f"{KEY_A}: [store_a]\n{KEY_B}: [store_b]\n")
    return path


@pytest.fixture
def client():
    """client(url[, access]): a TestClient of the app with its lifespan started, as under uvicorn (on PostgreSQL the
    event loop then reads through its held connection), ended at the test's teardown."""
    opened: list[TestClient] = []

    def open_client(url: str, access: Access | None = None) -> TestClient:
        api = TestClient(create_app(url, access or Access(None)))
        opened.append(api.__enter__())
        return api

    yield open_client
    for api in opened:
        api.__exit__(None, None, None)


def a_customer_with_drift(url: str, store: str = "store_a") -> str:
    wh = Warehouse(url, create=False)
    frame = wh.read_sql(f"SELECT customer_id FROM {wh.qualified('customer_drift')} WHERE store_id = :s AND window_days = 28 "
                        "ORDER BY overall_drift DESC, customer_id LIMIT 1", {"s": store})
    wh.dispose()
    return frame["customer_id"].iloc[0]


def test_profile_drift_history_and_population_answer_what_the_pipeline_wrote(served, client):
    api = client(served)
    customer = a_customer_with_drift(served)
    assert api.get("/health").json()["status"] == "ok"

    profile = api.get(f"/stores/store_a/customers/{customer}").json()
    wh = Warehouse(served, create=False)
    row = wh.profiles("store_a").set_index("customer_id").loc[customer]
    assert (profile["customer_id"], profile["archetype"]["name"], profile["churn_risk_level"]) == (customer, row["archetype_name"], row["churn_risk_level"])
    assert profile["churn_risk_score"] == pytest.approx(row["churn_risk_score"], abs=0)
    assert set(profile["fuzzy_memberships"]) == set(profile["dominant_segments"]) and len(profile["dominant_segments"]) >= 5
    # The next order's date and what the churn risk stands on, as written (keys in one order on both databases).
    assert profile["next_order_date"] == row["next_order_date"] and profile["next_order_date"] > profile["profile_date"]
    assert list(profile["history_basis"]) == ["purchase_days", "days_observed", "store_customers", "store_days", "churn_model",
                                              "churn_recalibrated", "little_history"]
    assert profile["history_basis"] == json.loads(row["history_basis"]) and profile["history_basis"]["churn_model"] == "store fit"
    # A demo store with two years of orders has hundreds of lapsers in its last 90 days: its churn is recalibrated.
    assert profile["history_basis"]["churn_recalibrated"] is True
    assert "recalibrated on who of its customers bought again" in api.get("/ui/stores/store_a").text

    drift = api.get(f"/stores/store_a/customers/{customer}/drift", params={"window": "28d"}).json()
    stored = wh.customer_drift("store_a", customer, 28)
    assert drift["as_of_date"] == DAYS[-1] and drift["computed_on_demand"] is False and drift["analysis_window"] == "28d"
    assert drift["overall_drift"] == pytest.approx(float(stored["overall_drift"].iloc[0]), abs=0)
    assert {a: d["drift_score"] for a, d in drift["axis_drift"].items()} == pytest.approx(dict(zip(stored["axis"], stored["drift_score"])), abs=0)
    assert drift["archetype_journey"] and {"archetype", "date"} <= set(drift["archetype_journey"][0])
    moved = wh.read_sql(f"SELECT customer_id, axis, CAST(transitions AS TEXT) AS t FROM {wh.qualified('customer_axis_drift')} "
                        "WHERE store_id = 'store_a' AND window_days = 28 AND n_transitions > 0 ORDER BY customer_id, axis LIMIT 1")
    assert len(moved) == 1, "the fixture should hold a segment transition within 28 days"
    served_axis = api.get(f"/stores/store_a/customers/{moved['customer_id'].iloc[0]}/drift").json()["axis_drift"][moved["axis"].iloc[0]]
    assert served_axis["transitions"] == json.loads(moved["t"].iloc[0])  # the keys as stored: from, to, date

    past = DAYS[-4]
    then = api.get(f"/stores/store_a/customers/{customer}/drift", params={"window": "28d", "as_of": past}).json()
    computed = drift_on_demand(wh, "store_a", past, StoreSettings(), customer_id=customer).customers
    assert then["computed_on_demand"] is True and then["as_of_date"] == past
    assert then["overall_drift"] == pytest.approx(float(computed.loc[computed["window_days"] == 28, "overall_drift"].iloc[0]), abs=0)

    history = api.get(f"/stores/store_a/customers/{customer}/history", params={"days": 5}).json()
    dates = [s["snapshot_date"] for s in history["snapshots"]]
    assert history["customer_id"] == customer and dates == sorted(dates) and dates[-1] == DAYS[-1] and len(dates) == len(set(dates)) == 6
    daily = api.get(f"/stores/store_a/customers/{customer}/history", params={"days": 28, "snapshot_type": "daily"}).json()["snapshots"]
    assert {s["snapshot_type"] for s in daily} == {"daily"}

    series = api.get("/stores/store_a/population", params={"days": 30}).json()["series"]
    assert {p["as_of_date"] for p in series} == set(DAYS[1:]) and all(p["segment_shares"] for p in series)
    wh.dispose()


def test_drift_answers_the_anomalies_reported_in_its_window_as_stored(served, client):
    # On PostgreSQL the stored state and its anomalies come in one statement; on SQLite in two: both as the table holds them.
    wh = Warehouse(served, create=False)
    stored = wh.read_sql(f"SELECT customer_id, anomaly_type, axis, anomaly_date, severity, description "
                         f"FROM {wh.qualified('customer_drift_anomalies')} WHERE store_id = 'store_b' "
                         "ORDER BY customer_id, as_of_date, anomaly_type, axis")
    drifted = wh.read_sql(f"SELECT customer_id FROM {wh.qualified('customer_drift')} WHERE store_id = 'store_b' AND window_days = 28 "
                          "ORDER BY customer_id")["customer_id"]
    wh.dispose()
    assert len(stored) >= 2, "the fixture should hold anomalies (all within 28 days of its last date)"
    api = client(served)
    for customer, expected in stored.groupby("customer_id"):
        served_anomalies = api.get(f"/stores/store_b/customers/{customer}/drift", params={"window": "28d"}).json()["anomalies"]
        assert served_anomalies == [{"anomaly_type": r.anomaly_type, "axis": r.axis, "date": str(r.anomaly_date)[:10], "severity": r.severity,
                                     "description": r.description} for r in expected.itertuples()]
    quiet = next(c for c in drifted if c not in set(stored["customer_id"]))
    assert api.get(f"/stores/store_b/customers/{quiet}/drift", params={"window": "28d"}).json()["anomalies"] == []


@pytest.mark.parametrize("path, status, detail", [
    ("/stores/store_a/customers/nobody", 404, "unknown customer 'nobody' in store 'store_a'"),
    ("/stores/store_x/customers/c0000001", 404, "unknown store 'store_x'"),
    ("/stores/store_a/customers/nobody/drift", 404, "unknown customer 'nobody' in store 'store_a'"),
    ("/customers/c0000001", 404, "the warehouse holds 2 stores: use /stores/{store}/customers/{id}"),
])
def test_errors_are_json_with_a_clear_detail(served, path, status, detail, client):
    response = client(served).get(path)
    assert (response.status_code, response.json()) == (status, {"detail": detail})


@pytest.mark.parametrize("query, detail", [
    ("window=13d", "window must be one of 7d, 28d, 90d, 180d, 365d (got '13d')."),
    ("window=28", "window must be one of 7d, 28d, 90d, 180d, 365d (got '28')."),
    ("as_of=yesterday", "as_of must be a date (YYYY-MM-DD) from 1900-01-01 to 2999-12-31 (got 'yesterday')."),
    ("days=0", "days must be a whole number from 1 to 3650 (got '0')."),
    ("days=99999", "days must be a whole number from 1 to 3650 (got '99999')."),
    ("snapshot_type=hourly", "snapshot_type must be one of daily, weekly, monthly, quarterly, yearly, profile_change (got 'hourly')."),
])
def test_a_bad_window_days_date_or_type_is_422_in_one_sentence(served, query, detail, client):
    customer = a_customer_with_drift(served)
    path = "drift" if query.startswith(("window", "as_of")) else "history"
    response = client(served).get(f"/stores/store_a/customers/{customer}/{path}?{query}")
    assert (response.status_code, response.json()) == (422, {"detail": detail})


def test_a_customer_without_two_snapshots_has_insufficient_data(served, client):
    api = client(served)
    assert api.get(f"/stores/store_a/customers/{NEWCOMER}").json()["total_orders"] == 1
    response = api.get(f"/stores/store_a/customers/{NEWCOMER}/drift")
    assert (response.status_code, response.json()) == (404, {"detail": "Insufficient data for drift analysis"})
    assert len(api.get(f"/stores/store_a/customers/{NEWCOMER}/history").json()["snapshots"]) == 1


def test_a_key_for_one_store_never_reads_another_on_any_endpoint(served, keys_file, caplog, client):
    api = client(served, Access(load_keys(keys_file)))
    customer_a, customer_b = a_customer_with_drift(served, "store_a"), a_customer_with_drift(served, "store_b")
    for template in ENDPOINTS:
        own, other = template.format(store="store_a", customer=customer_a), template.format(store="store_b", customer=customer_b)
        assert api.get(own).status_code == 401 and api.get(own, headers={"X-API-Key": "not-a-key-0123456789"}).status_code == 401
        assert api.get(own, headers={"X-API-Key": KEY_A}).status_code == 200
        assert api.get(own, headers={"Authorization": f"Bearer {KEY_A}"}).status_code == 200
        assert api.get(own + ("&" if "?" in own else "?") + f"api_key={KEY_A}").status_code == 200
        refused = api.get(other, headers={"X-API-Key": KEY_A})
        assert (refused.status_code, refused.json()) == (403, {"detail": "this API key does not grant store 'store_b'"})
        assert api.get(template.format(store="store_zz", customer="c1"), headers={"X-API-Key": KEY_A}).status_code == 403
        assert KEY_A not in refused.text
    assert api.get("/health").status_code == 200  # no key needed
    assert KEY_A not in caplog.text and "api_key" not in caplog.text


def test_with_drift_and_snapshots_off_the_profile_answers_and_the_others_say_off(served, monkeypatch, client):
    for name in FLAGS:
        monkeypatch.delenv(name)
    api = client(served)
    customer = a_customer_with_drift(served)
    assert api.get(f"/stores/store_a/customers/{customer}").status_code == 200
    drift = api.get(f"/stores/store_a/customers/{customer}/drift")
    assert (drift.status_code, drift.json()) == (404, {"detail": "drift analysis is off for store 'store_a' (ENABLE_DRIFT_ANALYSIS)"})


def test_the_store_list_is_read_by_a_skip_scan_and_a_store_written_since_answers_at_once(served, client, monkeypatch):
    import sqlalchemy as sa

    from quimbi_pipeline.api import reads
    from quimbi_pipeline.storage import customer_profiles

    wh = Warehouse(served, create=False)
    distinct = wh.read_sql(f"SELECT DISTINCT store_id FROM {wh.qualified('customer_profiles')} ORDER BY store_id")["store_id"].tolist()
    assert reads.stores(wh) == distinct == ["store_a", "store_b"]
    listings = []
    monkeypatch.setattr(reads, "stores", lambda w: listings.append(1) or distinct)
    api = client(served)
    customer = a_customer_with_drift(served)
    assert api.get(f"/stores/store_a/customers/{customer}").status_code == 200
    for _ in range(3):  # an unknown store: one probe each, the list is not read again
        assert api.get(f"/stores/store_c/customers/{customer}").json() == {"detail": "unknown store 'store_c'"}
    assert len(listings) == 1
    try:
        with wh.engine.begin() as conn:
            row = conn.execute(sa.select(customer_profiles).where(customer_profiles.c.store_id == "store_a",
                                                                  customer_profiles.c.customer_id == customer)).mappings().one()
            conn.execute(sa.insert(customer_profiles), [{**row, "store_id": "store_c"}])
        assert api.get(f"/stores/store_c/customers/{customer}").json()["customer_id"] == customer  # not 30 s later
    finally:
        with wh.engine.begin() as conn:
            conn.execute(sa.delete(customer_profiles).where(customer_profiles.c.store_id == "store_c"))
        wh.dispose()


def test_unscoped_paths_answer_for_a_warehouse_of_one_store(tmp_path, client):
    url = f"sqlite:///{tmp_path / 'one.sqlite'}"
    build(url, n_stores=1, days=DAYS[-3:])
    api = client(url)
    customer = a_customer_with_drift(url)
    assert api.get(f"/customers/{customer}").json()["customer_id"] == customer
    assert api.get(f"/customers/{customer}/drift?window=7d").json()["analysis_window"] == "7d"
    assert len(api.get(f"/customers/{customer}/history?days=7").json()["snapshots"]) == 3
    assert "/stores/{store}/customers/{customer}/drift" in api.get("/openapi.json").json()["paths"]


def test_quimbi_serve_starts_a_real_server_on_localhost_without_keys(sqlite_served, tmp_path, capsys):
    served = sqlite_served
    env = {k: v for k, v in os.environ.items() if k != "QUIMBI_API_KEYS"}
    with local_server(served, env=env, capture=True) as server:
        assert httpx.get(server.base + "/health", timeout=5).json() == {"status": "ok", "stores": 2}
        assert httpx.get(server.base + "/docs", timeout=5).status_code == 200
    out, err, port = server.stdout, server.stderr, server.port
    assert f"http://127.0.0.1:{port} (API docs /docs)" in out and "localhost only" in out
    assert "GET /health 200" in err  # the request log: path and status, never a query

    assert quimbi(["serve", "--warehouse", f"sqlite:///{tmp_path / 'missing.sqlite'}"]) == 1
    assert "no warehouse at" in capsys.readouterr().err
    assert quimbi(["serve", "--warehouse", served, "--host", "0.0.0.0"]) == 1
    assert "localhost only" in capsys.readouterr().err


def test_a_captured_server_keeps_answering_past_a_pipe_of_log(sqlite_served):
    """local_server(capture=True) keeps the output in files: with a pipe read only at the end, the server blocked on
    its request log at the 1,328th request (64 KiB)."""
    env = {k: v for k, v in os.environ.items() if k != "QUIMBI_API_KEYS"}
    with local_server(sqlite_served, env=env, capture=True) as server, httpx.Client(base_url=server.base, timeout=5) as http:
        answered = sum(http.get("/health").status_code == 200 for _ in range(1_600))
    assert answered == 1_600
    assert server.stderr.count("GET /health 200") > 1_600 and len(server.stderr) > 65_536


def test_bad_keys_files_are_refused_before_the_server_starts(sqlite_served, tmp_path, monkeypatch, capsys):
    served = sqlite_served
    for text, message in [("key: [store_a]\n", "at least 16 characters"), (f"{KEY_A}: store_a\n", "non-empty list"),
                          ("[unclosed\n", "is not YAML"), ("", "must map each key")]:
        path = tmp_path / "keys.yaml"
        path.write_text(text)
        monkeypatch.setenv("QUIMBI_API_KEYS", str(path))
        assert quimbi(["serve", "--warehouse", served]) == 1
        assert message in capsys.readouterr().err
    monkeypatch.setenv("QUIMBI_API_KEYS", str(tmp_path / "absent.yaml"))
    assert quimbi(["serve", "--warehouse", served]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_the_history_endpoint_reads_one_row_per_date(served, client):
    customer = a_customer_with_drift(served)
    wh = Warehouse(served, create=False)
    rows = wh.customer_history("store_a", customer, 28)
    wh.dispose()
    snapshots = client(served).get(f"/stores/store_a/customers/{customer}/history?days=28").json()["snapshots"]
    assert [s["snapshot_date"] for s in snapshots] == [str(pd.Timestamp(d).date()) for d in rows["snapshot_date"]]


@pytest.mark.parametrize("path, found", [
    ("/stores/store_a/customers/c1", ("store_a", "c1", "profile")),
    ("/stores/store_a/customers/c1/drift", ("store_a", "c1", "drift")),
    ("/stores/store_a/customers/c1/history", ("store_a", "c1", "history")),
    ("/customers/c1", (None, "c1", "profile")),
    ("/customers/c1/history", (None, "c1", "history")),
    ("/stores/store_a/customers/c1/", None), ("/stores/store_a/customers/c1/other", None), ("/stores//customers/c1", None),
    ("/stores/store_a/customers/" + "c" * 201, None), ("/stores/store_a/population", None), ("/ui/stores/store_a/customers/c1", None),
    ("/customers/", None), ("customers/c1", None), ("/health", None), ("/stores/store_a/customers/c1/drift/x", None),
])
def test_the_direct_routes_take_only_the_hot_paths(path, found):
    route = direct_route(path)
    assert (None if route is None else (route[1].get("store"), route[1]["customer"], route[0].kind)) == found


@pytest.mark.parametrize("kind, query, args", [
    ("profile", {"window": "13d"}, {}),  # a parameter the route does not take is ignored, by both
    ("drift", {}, {"window": "28d", "as_of": None}), ("drift", {"window": "365d", "api_key": "k"}, {"window": "365d", "as_of": None}),
    ("drift", {"window": "13d"}, None), ("drift", {"window": "28d", "as_of": "2026-10-01"}, None),
    ("history", {}, {"days": 28, "snapshot_type": None}), ("history", {"days": "3650", "snapshot_type": "weekly"}, {"days": 3650, "snapshot_type": "weekly"}),
    ("history", {"days": "0"}, None), ("history", {"days": "3651"}, None), ("history", {"days": "+5"}, None), ("history", {"days": " 5"}, None),
    ("history", {"days": "\u0665"}, None), ("history", {"days": "5.0"}, None), ("history", {"snapshot_type": ""}, None),
    ("history", {"snapshot_type": "hourly"}, None),
])
def test_the_direct_routes_take_only_well_formed_parameters(kind, query, args):
    route = next(r for r in ROUTES if r.kind == kind and r.direct)
    assert direct_values(route, query) == args


def test_both_routers_come_from_the_one_routing_table(served):
    """Every route of the table is a FastAPI route (what /docs shows) with the table's parameters and limits, and each
    direct route's own path is what the direct path matches to it."""
    app = create_app(served, Access(None))
    schema = app.api.openapi()
    app.state.warehouse.dispose()
    for route in ROUTES:
        operation = schema["paths"][route.path]["get"]
        assert operation["operationId"].startswith(route.name) and operation["summary"] == route.summary
        params = {p["name"]: p for p in operation["parameters"]}
        assert list(params) == route.path_names + [q.name for q in route.query]
        for name in route.path_names:
            assert params[name]["schema"]["maxLength"] == MAX_ID_LENGTH
        for q in route.query:
            if q.type is int:
                assert (params[q.name]["schema"]["minimum"], params[q.name]["schema"]["maximum"]) == (q.low, q.high) == (1, MAX_DAYS)
        sample = route.path.replace("{store}", "s1").replace("{customer}", "c1")
        assert (direct_route(sample) or (None,))[0] == (route if route.direct else None), route.path


def test_the_direct_routes_answer_byte_for_byte_as_the_routes(served, keys_file, client, monkeypatch):
    """Every hot read a direct route answers is the FastAPI route's answer, byte for byte (a repeated parameter sends
    the same request to the route); errors and anything malformed are the route's own."""
    direct = []
    answer = DirectRoutes.answer

    async def spied(self, scope):
        response = await answer(self, scope)
        direct.append(response is not None)
        return response

    monkeypatch.setattr(DirectRoutes, "answer", spied)
    api = client(served, Access(load_keys(keys_file)))
    customers = [("store_a", a_customer_with_drift(served, "store_a")), ("store_a", NEWCOMER), ("store_b", a_customer_with_drift(served, "store_b")),
                 ("store_a", "nobody")]
    queries = {"": [""], "/drift": ["", "?window=7d", "?window=365d"], "/history": ["?days=5", "", "?days=28&snapshot_type=daily", "?snapshot_type=weekly"]}
    answered = 0
    for store, customer in customers:
        key = KEY_A if store == "store_a" else KEY_B
        for suffix, variants in queries.items():
            for query in variants:
                path = f"/stores/{store}/customers/{customer}{suffix}{query}"
                direct.clear()
                fast = api.get(path, headers={"X-API-Key": key})
                routed = api.get(path + ("&" if query else "?") + "repeated=1&repeated=2", headers={"X-API-Key": key})
                assert direct == [fast.status_code == 200, False], path
                assert (fast.status_code, fast.headers["content-type"], fast.content) == (routed.status_code, routed.headers["content-type"], routed.content), path
                answered += fast.status_code == 200
    assert answered == 3 * 8 - 3  # all but the newcomer's three drifts (insufficient data) and everything of "nobody"
    direct.clear()
    refused = api.get(f"/stores/store_b/customers/{customers[2][1]}", headers={"X-API-Key": KEY_A})
    assert (refused.status_code, direct) == (403, [False])


def test_what_a_direct_answer_raises_is_logged_and_the_route_answers(sqlite_served, monkeypatch, caplog):
    """The direct routes sit outside FastAPI's error handling: what a direct answer raises unexpectedly is logged and
    the route reads again, so a passing fault (a dropped connection) costs one retry and a lasting one is the route's
    JSON 500, never uvicorn's plain-text page."""
    customer, real = a_customer_with_drift(sqlite_served), reads.profile
    calls = []

    def fails_first(*args):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("server closed the connection")
        return real(*args)

    def fails_always(*args):
        raise RuntimeError("no such table")

    path = f"/stores/store_a/customers/{customer}"
    with TestClient(create_app(sqlite_served, Access(None)), raise_server_exceptions=False) as api:
        monkeypatch.setattr(reads, "profile", fails_first)
        retried = api.get(path)
        assert (retried.status_code, retried.json()["customer_id"], len(calls)) == (200, customer, 2)
        monkeypatch.setattr(reads, "profile", fails_always)
        failed = api.get(path)
        assert (failed.status_code, failed.json()) == (500, {"detail": "internal error (logged on the server)"})
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "quimbi_pipeline.api"]
    assert logged == [
        ("WARNING", f"GET {path}: the direct answer failed (RuntimeError: server closed the connection); the route answers"),
        ("WARNING", f"GET {path}: the direct answer failed (RuntimeError: no such table); the route answers"),
        ("ERROR", f"GET {path} failed: RuntimeError: no such table"),
    ]


@pytest.mark.postgres
def test_a_held_reader_is_its_threads_one_connection_and_reconnects_after_the_server_drops_it(postgres_url):
    wh = Warehouse(postgres_url)

    def backend() -> int:
        return wh.fetch_rows("SELECT pg_backend_pid() AS pid", {})[0]["pid"]

    pooled = backend()
    wh.hold_reader()
    held = backend()
    assert backend() == held != pooled  # one connection of its own, kept between reads
    with ThreadPoolExecutor(1) as other:
        assert other.submit(backend).result() == pooled  # another thread reads through the pool
    with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (held,)).fetchone()[0]
        with pytest.raises(psycopg.OperationalError):
            backend()  # the one read that finds it gone fails...
        again = backend()  # ...and the next reconnects
        assert again not in (held, pooled) and backend() == again
        wh.dispose()
        for _ in range(50):  # dispose closes it (the server notices within moments)
            if not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (again,)).fetchone():
                break
            time.sleep(0.1)
        else:
            pytest.fail("dispose left the held connection open")


@pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT spreads connections over sockets on Linux")
def test_serve_workers_listen_on_sockets_of_their_own_and_share_the_connections(sqlite_served, capsys):
    env = {k: v for k, v in os.environ.items() if k != "QUIMBI_API_KEYS"}
    with local_server(sqlite_served, env=env, workers=2) as server:  # returns once both workers listen
        assert len(tcp_sockets(server.port, LISTENING)) == 2  # uvicorn's shared socket would be one
        clients = [httpx.Client(base_url=server.base, timeout=10) for _ in range(24)]
        try:
            assert [c.get("/health").status_code for c in clients] == [200] * 24
            # 24 connections over two sockets by the kernel's hash: all on one would have odds of 2 in 2**24.
            spread = server.connections_per_worker()
            assert len(spread) == 2 and sum(spread) == 24, spread
        finally:
            for c in clients:
                c.close()
        # A second server on the port fails as it would without SO_REUSEPORT, rather than sharing the connections.
        assert quimbi(["serve", "--warehouse", sqlite_served, "--port", str(server.port), "--workers", "2"]) == 1
        assert f"127.0.0.1:{server.port} is in use" in capsys.readouterr().err


def test_a_store_too_small_for_a_churn_statement_says_so(tmp_path, client):
    """issue 33: 12 customers over 3 weeks: churn_risk_level 'unknown', and 'little history' on the profile and pages."""
    from quimbi_pipeline.cli import run_dates

    rows = [{"order_id": f"o{c}-{w}", "customer_id": f"c{c}", "store_id": "tiny", "order_total": 25.0,
             "order_ts": str(pd.Timestamp("2026-10-10") + pd.Timedelta(days=7 * w + c % 5))} for c in range(12) for w in range(3)]
    orders = tmp_path / "orders.csv"
    pd.DataFrame(rows).to_csv(orders, index=False)
    url = f"sqlite:///{tmp_path / 'tiny.sqlite'}"
    assert run_dates(pd.Timestamp("2026-10-31"), pd.Timestamp("2026-10-31"), orders=str(orders), warehouse=url, stores=None, out=io.StringIO()) == 0
    api = client(url)
    profile = api.get("/stores/tiny/customers/c1").json()
    assert profile["churn_risk_level"] == "unknown"
    assert profile["history_basis"] == {"purchase_days": 3, "days_observed": 20, "store_customers": 12, "store_days": 21,
                                        "churn_model": "prior", "churn_recalibrated": False, "little_history": True}
    store_page = api.get("/ui/stores/tiny").text
    assert "12 active customers on 2026-10-31: unknown 12." in store_page and "Little history</strong> behind 12 of them" in store_page
    assert "too small or too young for its own churn model" in store_page
    assert "Little history." in api.get("/ui/stores/tiny/customers/c1").text


def test_the_store_page_says_who_is_changing_how_and_why(sqlite_served, client, tmp_path):
    """Today's movers: customer, axis, direction, strength, churn risk and the evidence in their orders, filterable.
    Twelve days of a small demo hold no customer with a direction, so two are given one (a copy of the warehouse)."""
    import re
    import shutil
    import sqlite3

    copy = tmp_path / "w.sqlite"
    shutil.copy(sqlite_served.removeprefix("sqlite:///"), copy)
    with sqlite3.connect(copy) as conn:
        day = conn.execute("SELECT max(as_of_date) FROM customer_drift WHERE store_id = 'store_a'").fetchone()[0]
        first, second = [r[0] for r in conn.execute(
            "SELECT customer_id FROM customer_drift WHERE store_id = 'store_a' AND as_of_date = ? AND window_days = 28 ORDER BY customer_id LIMIT 2", (day,))]
        for customer, direction, (before, after) in ((first, "degrading", (2.5, 0.0)), (second, "improving", (0.5, 4.0))):
            evidence = {"axis": "purchase_frequency", "feature": "orders per month", "before": before, "after": after, "since": "2026-10-01"}
            conn.execute("UPDATE customer_drift SET axes = json_set(axes, '$.purchase_frequency[1]', ?), recommendations = ? "
                         "WHERE store_id = 'store_a' AND customer_id = ? AND as_of_date = ? AND window_days = 28",
                         (direction, json.dumps([{"code": "x", "text": "y", "evidence": evidence}]), customer, day))
    api = client(f"sqlite:///{copy}")
    page = api.get("/ui/stores/store_a").text
    assert re.findall(r'<td class="(degrading|improving)">', page) == ["degrading", "improving"]  # degrading first
    assert f">{first}</a></td><td><a href=\"/ui/stores/store_a?axis=purchase_frequency\">purchase_frequency</a>" in page
    assert "<td>orders per month 2.5 → 0 since 2026-10-01</td>" in page and "<td>orders per month 0.5 → 4 since 2026-10-01</td>" in page
    improving = api.get("/ui/stores/store_a", params={"direction": "improving"}).text
    assert re.findall(r'<td class="(degrading|improving)">', improving) == ["improving"]
    assert api.get("/ui/stores/store_a", params={"direction": "sideways"}).status_code == 422


def test_history_basis_written_before_the_recalibration_reads_as_not_recalibrated():
    from quimbi_pipeline.api.reads import _basis

    old = '{"purchase_days":3,"days_observed":20,"store_customers":12,"store_days":21,"churn_model":"prior","little_history":true}'
    assert _basis(old) == {"purchase_days": 3, "days_observed": 20, "store_customers": 12, "store_days": 21, "churn_model": "prior",
                           "churn_recalibrated": False, "little_history": True}
