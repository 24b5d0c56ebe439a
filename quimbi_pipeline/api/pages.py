"""The pages: a customer page and a store page (HTML, Jinja2 with autoescape), charts rendered in the page by
the vendored vega-embed (/ui/static), so nothing is fetched from the network at view time.

Pages take the same store access as the API (a key may come as ?api_key= and is then carried by the
page's links). Every score shown comes with a plain-language explanation of what it measures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlencode

import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from quimbi_pipeline.api import charts, reads
from quimbi_pipeline.api.routes import ID, link_id, path_id
from quimbi_pipeline.drift.alerts import ALERT_WINDOW_DAYS, outlier_rate_jumps
from quimbi_pipeline.drift.measures import segment_position
from quimbi_pipeline.model.segmentation import SINGLE_SEGMENT_NAME
from quimbi_pipeline.settings import StoreSettings
from quimbi_pipeline.settings.deployment import value
from quimbi_pipeline.settings.store import settings_for_store
from quimbi_pipeline.sources.customer_orders import customer_orders
from quimbi_pipeline.storage import Warehouse

HERE = Path(__file__).resolve().parent
HISTORY_DAYS = 365
MAX_ALERTS_SHOWN = 20
EXPLAIN = {
    "churn_risk_score": "The probability that this customer makes no purchase in the next 90 days (the churn horizon): how long "
                        "they have been silent measured against their own usual gap between orders (a weekly buyer silent five "
                        "weeks is at risk, an occasional one is not), with the store's dropout rate. 'unknown' when the store is "
                        "too small or too young for a statement.",
    "next_order_date": "When the customer's next order is expected if they keep buying: the middle of their next gap given how "
                       "long they have been silent.",
    "little_history": "Little history: few orders, a new customer, or a store too small or young for its own churn model. Read "
                      "the churn risk and segments as tentative.",
    "predicted_ltv": "Expected spend over the next 365 days: the expected number of purchases times the expected spend per "
                     "purchase (Gamma-Gamma model).",
    "expected_purchases": "Expected purchases over the churn horizon, from the same model as the churn risk.",
    "drift": "How far the customer's segment memberships moved over the window: 0 = the same memberships at its start and "
             "end, 1 = moved entirely from one segment to another. A direction (improving, degrading) needs a change detected in "
             "the customer's own orders on that axis, which the anomalies and recommendations name as their evidence.",
    "overall_drift": "The mean of the axes' drift scores over the window: one axis moving alone shows as a small mean (0.99 on "
                     "one of six axes reads 0.17), so each axis is listed too.",
    "behaviour": "The customer's orders per month and typical order value as each day's profile measured them (over the "
                 "orders since a detected change when there is one), with the detected changes and anomalies dashed. The "
                 "shading is the store's segment model: the segment a value would put the customer in, their other "
                 "measures staying as they are today.",
    "orders": "Each of the customer's orders up to the profile's date, as the orders source (QUIMBI_ORDERS) holds it: its "
              "value, and the days since the order before it.",
    "compared": "The store's active customers by where their dominant segment sits on each axis' ladder against this "
                "customer's (population drift's newest segment shares; with drift analysis on).",
    "archetype": "The combination of the customer's dominant segments on every axis; level 1 is the worst rung on every axis, 5 the best.",
    "population_drift": "Total variation between the store's dominant-segment shares now and on the reference date: 0 = the same "
                        "mix of customers, 1 = an entirely different one.",
    "alerts": "A store-mix alert is raised when an axis' segment mix (total variation of its dominant-segment shares against the "
              "reference date), its features' distribution (PSI) or an outlier method's flagged share reaches its threshold "
              "(QUIMBI_ALERT_*, docs/settings.md); stores with fewer than QUIMBI_ALERT_MIN_CUSTOMERS active customers raise none.",
    "outlier_rate": "The share of the store's customers each method flags as an outlier that day (ENABLE_OUTLIER_DETECTION).",
}

_templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
_templates.filters["seg"] = link_id  # an id as a path segment of a link ("/" and the rest encoded)


def _link(request: Request):
    """A function making page links that carry the request's ?api_key= (when it came that way)."""
    key = request.query_params.get("api_key")

    def link(path: str, **query) -> str:
        params = {k: v for k, v in query.items() if v} | ({"api_key": key} if key else {})
        return path + ("?" + urlencode(params) if params else "")
    return link


def compared_with_store(dominant: dict[str, str], newest: list[dict]) -> list[dict]:
    """Per axis: the customer's dominant segment and the shares of the store's active customers whose dominant segment
    is on a lower rung of the axis' ladder, the same one, or a higher one (population drift's newest shares; rungs by
    segment_position). An axis of one segment places nobody."""
    out = []
    for p in newest:
        axis, segment = p["axis"], dominant.get(p["axis"])
        if segment in (None, SINGLE_SEGMENT_NAME):
            continue
        rung = segment_position(axis, segment)
        shares = [(segment_position(axis, s), v["current"]) for s, v in p["segment_shares"].items() if s != SINGLE_SEGMENT_NAME]
        out.append({"axis": axis, "segment": segment, "below": sum(v for r, v in shares if r < rung),
                    "same": sum(v for r, v in shares if r == rung), "above": sum(v for r, v in shares if r > rung), "as_of_date": p["as_of_date"]})
    return out


def change_marks(drift: dict | None) -> list[dict]:
    """Dates to mark on the behaviour chart: each change the drift's recommendations stand on (its `since`: the last
    order before it) and each anomaly of the window, with what it was."""
    if not drift:
        return []
    marks = [{"date": a["date"], "what": f"{a['anomaly_type']} on {a['axis']}"} for a in drift.get("anomalies", [])]
    for r in drift.get("recommendations", []):
        e = r.get("evidence") or {}
        if e.get("since"):
            marks.append({"date": e["since"], "what": f"change on {e['axis']}: {e['feature']} {e['before']} -> {e['after']}"})
    return marks


def add_pages(app: FastAPI, warehouse: Warehouse, settings: StoreSettings, allowed) -> None:
    orders_uri = value("QUIMBI_ORDERS")  # the source the pipeline reads: the customer page's orders come from it
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/ui/stores/{store}/customers/{customer}", response_class=HTMLResponse, summary="Customer page")
    def customer_page(request: Request, customer: ID, store: str = Depends(allowed)) -> HTMLResponse:
        customer = path_id(customer)
        profile = reads.profile(warehouse, store, customer)
        if profile is None:
            raise HTTPException(404, f"unknown customer {customer!r} in store {store!r}")
        snapshots = reads.history(warehouse, store, customer, HISTORY_DAYS, None, with_features=True)
        drift = reads.drift(warehouse, settings, store, customer, "28d") if reads.drift_is_on(settings, store) else None
        specs = {"memberships": charts.memberships(profile["fuzzy_memberships"], profile["dominant_segments"])}
        marks = change_marks(drift)
        if len(snapshots) >= 2:
            specs |= {"drift": charts.drift_over_time(snapshots), "churn": charts.churn_trend(snapshots), "journey": charts.archetype_journey(snapshots)}
            bands = reads.segment_bands(warehouse, store, profile["model_version"], {axis: f for axis, f, _ in charts.BEHAVIOUR},
                                        profile["behavioral_features"], charts.behaviour_range(snapshots))
            behaviour = charts.behaviour_over_time(snapshots, marks, bands)
            if behaviour is not None:
                specs["behaviour"] = behaviour
        found = customer_orders(orders_uri, store, customer, profile["profile_date"], warehouse.engine)
        orders = charts.orders_over_time([{"date": f"{ts:%Y-%m-%d}", "value": float(v)} for ts, v in found.orders.itertuples(index=False)],
                                         marks)
        if orders is not None:
            specs["orders"] = orders
        newest = reads.population(warehouse, store, 1)  # the rows of the store's newest date
        html = _templates.get_template("customer.html").render(
            store=store, profile=profile, drift=drift, snapshots=snapshots, specs=specs, explain=EXPLAIN, link=_link(request),
            compared=compared_with_store(profile["dominant_segments"], newest), orders_unavailable=found.unavailable)
        return HTMLResponse(html)

    @app.get("/ui/stores/{store}", response_class=HTMLResponse, summary="Store page")
    def store_page(request: Request, store: str = Depends(allowed), axis: str | None = Query(None, description="movers on this axis only"),
                   direction: Literal["degrading", "improving"] | None = Query(None, description="movers moving this way only")) -> HTMLResponse:
        series = reads.population(warehouse, store, HISTORY_DAYS)
        day = reads.newest_drift_date(warehouse, store)
        rates = reads.outlier_rates(warehouse, store)
        specs = {}
        thresholds = settings_for_store(settings, store)
        if series:
            specs |= {"shares": charts.segment_shares(series),
                      "population": charts.population_drift(series, thresholds.alert_segment_mix_warn, thresholds.alert_segment_mix_error)}
        jumps = []
        if rates:
            refits = reads.model_refits(warehouse, store)
            specs["outliers"] = charts.outlier_rate(rates, refits)
            jumps = outlier_rate_jumps(pd.DataFrame(rates), set(refits)).to_dict("records")
        html = _templates.get_template("store.html").render(
            store=store, day=day, specs=specs, churn=reads.churn_summary(warehouse, store), alerts=reads.alert_episodes(warehouse, settings, store, ALERT_WINDOW_DAYS),
            alert_days=ALERT_WINDOW_DAYS, max_alerts=MAX_ALERTS_SHOWN, alert_axes=thresholds.alert_axes, jumps=jumps, anomalies=reads.anomalies_of(warehouse, store, day) if day else [],
            movers=reads.movers(warehouse, store, day, axis, direction) if day else [], axis=axis, direction=direction,
            drifted=reads.most_drifted(warehouse, store) if day else [], explain=EXPLAIN, link=_link(request))
        return HTMLResponse(html)
