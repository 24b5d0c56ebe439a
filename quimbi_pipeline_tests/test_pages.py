"""The customer and store pages in a real headless browser (Chromium from the Debian packages): the pages load
from a real `quimbi serve`, every chart renders with its data points, the links work and carry the key.

Chromium: QUIMBI_CHROMIUM, else `chromium` on the PATH. Without it these tests skip with a message, unless
QUIMBI_REQUIRE_BROWSER=1 (.ci/run sets it and installs Chromium) makes that a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import httpx
import pandas as pd
import pytest

from quimbi_pipeline.api.launch import local_server
from quimbi_pipeline.storage import Warehouse
from quimbi_pipeline_tests.test_api import FLAGS, KEY_A, KEY_B, build

GUIDES = ("title", "axis", "legend")  # Vega's SVG renderer marks guides as graphics-symbol too


def data_points(chart: str) -> int:
    """Data marks (bars, points, lines, areas) in a rendered chart: its data drawn, guides left out."""
    return sum(1 for kind in re.findall(r'role="graphics-symbol" aria-roledescription="([^"]+)"', chart) if kind not in GUIDES)



@pytest.fixture(scope="module")
def chromium() -> str:
    path = os.environ.get("QUIMBI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        message = "page tests need Chromium (apt-get install chromium, or QUIMBI_CHROMIUM=/path)"
        if os.environ.get("QUIMBI_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " (QUIMBI_REQUIRE_BROWSER=1)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real `quimbi serve` with keys over a two-store warehouse; yields its base URL."""
    folder = tmp_path_factory.mktemp("pages")
    url = f"sqlite:///{folder / 'warehouse.sqlite'}"
    orders = build(url)
    wh = Warehouse(url, create=False)
    orders.to_sql("source_orders", wh.engine, index=False)  # the orders source the customer pages read (sql:)
    wh.dispose()
    keys = folder / "keys.yaml"
    keys.write_text(f"{KEY_A}: [store_a]\n{KEY_B}: [store_b]\n")
    env = {**os.environ, **FLAGS, "QUIMBI_API_KEYS": str(keys), "QUIMBI_ORDERS": "sql:source_orders"}
    with local_server(url, env=env, args=("--host", "127.0.0.1"), start_timeout_s=90) as running:
        yield running.base, url


def dom(chromium: str, page_url: str) -> str:
    """The page's DOM after its scripts ran (charts drawn), as Chromium renders it headless."""
    result = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000", "--dump-dom", page_url],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def charts(page: str) -> dict[str, str]:
    """{chart name: its rendered DOM} of the page's chart containers."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(r'<div[^>]*id="chart-([a-z]+)"', page)]
    return {name: page[start:(starts[i + 1][0] if i + 1 < len(starts) else len(page))] for i, (start, name) in enumerate(starts)}


def drifted_customer(url: str) -> str:
    wh = Warehouse(url, create=False)
    frame = wh.read_sql("SELECT customer_id FROM customer_drift WHERE store_id = 'store_a' AND window_days = 28 ORDER BY overall_drift DESC LIMIT 1")
    wh.dispose()
    return frame["customer_id"].iloc[0]


def test_the_customer_page_draws_every_chart_with_its_data_points(chromium, server):
    base, url = server
    customer = drifted_customer(url)
    page = dom(chromium, f"{base}/ui/stores/store_a/customers/{customer}?api_key={KEY_A}")
    assert f"Customer {customer}" in page and "The probability that this customer makes no purchase" in page
    assert re.search(r"Next order expected</div><div class=\"value\">\d{4}-\d{2}-\d{2}<", page)
    drawn = charts(page)
    assert set(drawn) == {"memberships", "behaviour", "orders", "drift", "churn", "journey"}
    for name, chart in drawn.items():
        assert 'data-rendered="true"' in chart and data_points(chart) >= 1, name
    profile = httpx.get(f"{base}/stores/store_a/customers/{customer}", headers={"X-API-Key": KEY_A}).json()
    assert data_points(drawn["memberships"]) == sum(len(s) for s in profile["fuzzy_memberships"].values())  # one bar per segment
    assert data_points(drawn["churn"]) >= 12  # a point per snapshot date (and the line)
    wh = Warehouse(url, create=False)
    seen = wh.read_sql(f"SELECT count(*) AS n FROM source_orders WHERE store_id = 'store_a' AND customer_id = '{customer}' "
                       f"AND order_ts < '{pd.Timestamp(profile['profile_date']) + pd.Timedelta(days=1):%Y-%m-%d}'")["n"].iloc[0]
    wh.dispose()
    assert seen >= 2 and data_points(drawn["orders"]) == 2 * seen  # a point per order and the line; a gap bar per order after the first
    assert "Anomalies" in page and "Recommendations" in page


def test_the_store_page_draws_its_charts_and_its_links_open_customer_pages(chromium, server):
    base, _ = server
    page = dom(chromium, f"{base}/ui/stores/store_a?api_key={KEY_A}")
    drawn = charts(page)
    assert set(drawn) == {"shares", "population", "outliers"}
    assert re.search(r"\d+ active customers on \d{4}-\d{2}-\d{2}: low \d+", page) and "The store's churn model: store fit" in page
    for name, chart in drawn.items():
        assert 'data-rendered="true"' in chart and data_points(chart) >= 1, name
    links = re.findall(r'href="(/ui/stores/store_a/customers/[^"]+)"', page)
    assert len(links) >= 5 and all(f"api_key={KEY_A}" in link for link in links)  # the key travels with the links
    for link in links[:2]:
        customer = re.search(r"/customers/([^?]+)", link).group(1)
        followed = dom(chromium, base + link.replace("&amp;", "&"))
        assert f"Customer {customer}" in followed and 'data-rendered="true"' in followed
    assert '<a href="/ui/stores/store_a?api_key=' in followed  # and back to the store


def test_pages_keep_to_the_keys_store_and_need_no_network(chromium, server):
    base, url = server
    customer = drifted_customer(url)
    assert httpx.get(f"{base}/ui/stores/store_b?api_key={KEY_A}").status_code == 403
    assert httpx.get(f"{base}/ui/stores/store_a").status_code == 401
    page = httpx.get(f"{base}/ui/stores/store_a/customers/{customer}?api_key={KEY_A}").text
    scripts = re.findall(r'<script src="([^"]+)"', page)
    assert scripts and all(src.startswith("/ui/static/") for src in scripts)  # every asset served by the app
    assert all(httpx.get(base + src).status_code == 200 for src in scripts)


def test_the_api_docs_page_works_offline(chromium, server):
    """/docs loaded Swagger UI from a CDN: blank without internet. Now its script, style and icon are the app's own,
    and headless Chromium (no network) renders the operations."""
    base, _ = server
    page = httpx.get(f"{base}/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(a.startswith("/ui/static/swagger/") for a in assets), assets
    assert all(httpx.get(base + a).status_code == 200 for a in assets)
    rendered = dom(chromium, f"{base}/docs")
    assert "quimbi_pipeline read API" in rendered and "/stores/{store}/customers/{customer}/history" in rendered


@pytest.mark.parametrize(("width", "mobile"), [(1400, False), (390, True)], ids=["desktop", "phone"])
def test_pages_lay_out_without_cut_or_overlapping_labels_at_desktop_and_phone_widths(chromium, server, width, mobile):
    """Every chart label inside its chart, none shortened or on top of another, and the page no wider than the
    window (a wide chart or table scrolls in its own box), measured from the rendered SVG text boxes."""
    from quimbi_pipeline_tests.browser import chromium_page, layout_problems

    base, url = server
    pages = [f"{base}/ui/stores/store_a?api_key={KEY_A}", f"{base}/ui/stores/store_a/customers/{drifted_customer(url)}?api_key={KEY_A}"]
    with chromium_page(chromium) as page:
        for address in pages:
            page.open(address, width, mobile=mobile)
            assert page.evaluate("document.querySelectorAll('.chart svg').length") >= 3, address
            assert layout_problems(page, width) == [], address


def test_the_behaviour_chart_shows_the_features_and_marks_the_changes_within_its_dates():
    from quimbi_pipeline.api import charts
    from quimbi_pipeline.api.pages import change_marks

    snapshots = [{"snapshot_date": d, "behavioral_features": {"purchase_frequency": {"orders_per_month": f}, "purchase_value": {"avg_order_value": v}}}
                 for d, f, v in (("2026-10-01", 1.0, 20.0), ("2026-10-09", 1.0, 227.0), ("2026-10-10", 0.9, float("nan")))]
    drift = {"anomalies": [{"anomaly_type": "sudden_drift", "axis": "purchase_value", "date": "2026-10-09"}],
             "recommendations": [{"evidence": {"axis": "purchase_value", "feature": "typical order value", "before": 20.24, "after": 227.27,
                                               "since": "2026-05-05"}}, {"evidence": None}]}
    marks = change_marks(drift)
    assert marks == [{"date": "2026-10-09", "what": "sudden_drift on purchase_value"},
                     {"date": "2026-05-05", "what": "change on purchase_value: typical order value 20.24 -> 227.27"}]
    spec = charts.behaviour_over_time(snapshots, marks)
    assert [p["title"] for p in spec["vconcat"]] == ["orders per month", "typical order value"]
    values = spec["vconcat"][0]["layer"][0]["data"]["values"]
    assert len(values) == 5  # the NaN order value is left out
    assert spec["vconcat"][0]["layer"][1]["data"]["values"] == [marks[0]]  # the May change is before the chart's dates
    assert charts.behaviour_over_time([{"snapshot_date": "2026-10-01"}], marks) is None
    bands = {"purchase_value": [{"segment": "mid_spender", "low": 0.0, "high": 150.0}, {"segment": "premium_spender", "low": 150.0, "high": 310.0}]}
    assert charts.behaviour_range(snapshots)["purchase_value"] == (0.0, 227.0 + 0.4 * 207.0)
    with_bands = charts.behaviour_over_time(snapshots, marks, bands)
    value_panel = with_bands["vconcat"][1]["layer"]
    assert [layer["mark"]["type"] for layer in value_panel] == ["rect", "text", "line", "rule"]  # bands behind the line
    assert [b["rung"] for b in value_panel[0]["data"]["values"]] == ["4", "6 best"]  # mid_spender is the 4th of purchase_value's 6 rungs
    assert [b["segment"] for b in value_panel[1]["data"]["values"]] == ["mid_spender", "premium_spender"]
    assert len(with_bands["vconcat"][0]["layer"]) == 2  # no bands given for orders per month
    assert change_marks(None) == []


def test_a_customer_is_placed_on_each_axis_ladder_beside_the_stores_customers():
    from quimbi_pipeline.api.pages import compared_with_store

    newest = [{"axis": "purchase_value", "as_of_date": "2026-10-31", "segment_shares": {
        "minimal_spender": {"current": 0.3}, "mid_spender": {"current": 0.5}, "premium_spender": {"current": 0.2}}},
        {"axis": "basket_size", "as_of_date": "2026-10-31", "segment_shares": {"all_customers": {"current": 1.0}}}]
    compared = compared_with_store({"purchase_value": "mid_spender", "basket_size": "all_customers"}, newest)
    assert [(c["axis"], c["segment"]) for c in compared] == [("purchase_value", "mid_spender")]  # off the ladder: not placed
    assert (compared[0]["below"], compared[0]["same"], compared[0]["above"]) == pytest.approx((0.3, 0.5, 0.2))
