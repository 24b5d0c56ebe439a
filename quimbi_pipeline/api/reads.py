"""What the read API serves, read from the warehouse as the pipeline wrote it (no model fitting here).

Every query is a bound-parameter statement over fixed table names: no SQL text is built from request
values. Functions return plain dicts shaped like the API's response models, or None when there is
nothing for the customer (the caller answers 404).
"""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pandas as pd

from quimbi_pipeline.drift.alerts import ALERT_COLUMNS, SEVERITY_RANK
from quimbi_pipeline.drift.alerts import alert_episodes as episodes_of
from quimbi_pipeline.drift.measures import EVIDENCE_AXIS, DriftTables, axis_entries
from quimbi_pipeline.history.snapshots import RETAINED_TYPES
from quimbi_pipeline.model.segmentation import AxisModel
from quimbi_pipeline.run import drift_on_demand
from quimbi_pipeline.run.alerts import store_alerts
from quimbi_pipeline.settings import StoreSettings
from quimbi_pipeline.storage import Warehouse

WINDOWS = {"7d": 7, "28d": 28, "90d": 90, "180d": 180, "365d": 365}
SNAPSHOT_TYPES = RETAINED_TYPES


def _json(value):
    """A JSON column as Python (SQLite gives text, PostgreSQL parsed JSONB; on-demand drift gives text)."""
    return json.loads(value) if isinstance(value, str) else value


def _day(value) -> str | None:
    """A date as YYYY-MM-DD: PostgreSQL gives dates, SQLite text (a date or a timestamp), on-demand drift Timestamps."""
    if value is None:
        return None
    if isinstance(value, str):
        return value[:10]
    if type(value) is date:  # PostgreSQL's (the check that follows costs more than the rest of this function)
        return value.isoformat()
    return None if pd.isna(value) else value.isoformat()[:10]


def stores(wh: Warehouse) -> list[str]:
    """The warehouse's stores, by a skip scan of customer_profiles' index (one probe per store: 0.27 ms at 1M customers).
    A plain DISTINCT reads every customer's entry (72 ms at 1M), and each API worker ran it every 30 s on its event
    loop, holding up the worker's other requests meanwhile."""
    table = wh.qualified("customer_profiles")
    rows = wh.fetch_rows(
        f"WITH RECURSIVE s(store_id) AS (SELECT min(store_id) FROM {table} UNION ALL "
        f"SELECT (SELECT min(store_id) FROM {table} WHERE store_id > s.store_id) FROM s WHERE s.store_id IS NOT NULL) "
        "SELECT store_id FROM s WHERE store_id IS NOT NULL ORDER BY store_id", {})
    return [r["store_id"] for r in rows]


def has_store(wh: Warehouse, store: str) -> bool:
    """Whether the warehouse holds the store (one index probe)."""
    return bool(wh.fetch_rows(f"SELECT 1 AS found FROM {wh.qualified('customer_profiles')} WHERE store_id = :s LIMIT 1", {"s": store}))


BASIS_KEYS = ("purchase_days", "days_observed", "store_customers", "store_days", "churn_model", "churn_recalibrated", "little_history")
BASIS_ADDED = {"churn_recalibrated": False}  # keys added later: their value in rows written before


def _basis(value) -> dict | None:
    """history_basis in one key order on both databases (PostgreSQL's jsonb keeps its own)."""
    if value is None:
        return None
    basis = {**BASIS_ADDED, **_json(value)}
    return {k: basis[k] for k in BASIS_KEYS}


def profile(wh: Warehouse, store: str, customer: str) -> dict | None:
    rows = wh.fetch_rows(f"SELECT * FROM {wh.qualified('customer_profiles')} WHERE store_id = :s AND customer_id = :c", {"s": store, "c": customer})
    if not rows:
        return None
    r = rows[0]
    return {
        "store_id": r["store_id"], "customer_id": r["customer_id"], "profile_date": _day(r["profile_date"]), "model_version": r["model_version"],
        "archetype": {"id": r["archetype_id"], "name": r["archetype_name"], "level": int(r["archetype_level"])},
        "dominant_segments": _json(r["dominant_segments"]), "fuzzy_memberships": _json(r["fuzzy_memberships"]),
        "behavioral_features": _json(r["behavioral_features"]),
        "churn_risk_score": float(r["churn_risk_score"]), "churn_risk_level": r["churn_risk_level"],
        "predicted_ltv": float(r["predicted_ltv"]),
        "expected_purchases": None if r["expected_purchases"] is None else float(r["expected_purchases"]),
        "total_orders": int(r["total_orders"]), "lifetime_value": float(r["lifetime_value"]),
        "days_since_first_order": int(r["days_since_first_order"]), "tenure_months": float(r["tenure_months"]),
        "next_order_date": _day(r["next_order_date"]) if r.get("next_order_date") is not None else None,
        "history_basis": _basis(r.get("history_basis")),
    }


def drift_is_on(settings: StoreSettings, store: str) -> bool:
    """Whether the store's settings (the server's environment and flags file, as the pipeline reads them) have drift on."""
    return settings.for_store(store).drift_active


def snapshots_are_on(settings: StoreSettings, store: str) -> bool:
    return settings.for_store(store).enable_temporal_snapshots


def _drift_response(window: str, customer: dict, axes: list[dict], anomalies: list[dict], as_of: str, computed: bool) -> dict:
    return {
        "customer_id": customer["customer_id"], "analysis_window": window, "as_of_date": as_of, "computed_on_demand": computed,
        "overall_drift": float(customer["overall_drift"]), "drift_velocity": float(customer["drift_velocity"]),
        "predicted_30d_drift": float(customer["predicted_30d_drift"]), "churn_risk_trend": float(customer["churn_risk_trend"]),
        "start_date": _day(customer["start_date"]), "end_date": _day(customer["end_date"]), "n_snapshots": int(customer["n_snapshots"]),
        "axis_drift": {a["axis"]: {"drift_score": float(a["drift_score"]), "direction": a["direction"], "velocity": float(a["velocity"]),
                                   "transitions": _json(a["transitions"])} for a in axes},
        "archetype_journey": _json(customer["archetype_journey"]),
        "anomalies": [{"anomaly_type": a["anomaly_type"], "axis": a["axis"], "date": _day(a["anomaly_date"]), "severity": float(a["severity"]),
                       "description": a["description"]} for a in anomalies],
        "recommendations": _json(customer["recommendations"]),
    }


def _current_with_anomalies(wh: Warehouse) -> str:
    """PostgreSQL: the customer's newest drift row of a window, with the anomalies reported in that window up to its
    date as a JSON array (ordered and keyed as the two-statement path reads them)."""
    return (f"SELECT d.*, (SELECT coalesce(json_agg(json_build_object('anomaly_type', a.anomaly_type, 'axis', a.axis, "
            "'anomaly_date', a.anomaly_date, 'severity', a.severity, 'description', a.description) "
            "ORDER BY a.as_of_date, a.anomaly_type, a.axis), '[]'::json) "
            f"FROM {wh.qualified('customer_drift_anomalies')} a WHERE a.store_id = d.store_id AND a.customer_id = d.customer_id "
            "AND a.as_of_date > d.as_of_date - d.window_days AND a.as_of_date <= d.as_of_date) AS window_anomalies "
            f"FROM {wh.qualified('customer_drift')} d WHERE d.store_id = :s AND d.customer_id = :c AND d.window_days = :w "
            "ORDER BY d.as_of_date DESC LIMIT 1")


def drift(wh: Warehouse, settings: StoreSettings, store: str, customer: str, window: str, as_of: date | None = None) -> dict | None:
    """The customer's drift over the window: the stored current state (newest as_of), or for an older as_of
    computed on demand from the snapshots (pipeline.drift_on_demand). Anomalies: those reported in the
    window up to that date. None when there is no drift for the customer (fewer than 2 snapshots)."""
    days = WINDOWS[window]
    params = {"s": store, "c": customer, "w": days}
    if wh.is_postgres and as_of is None:
        # The stored state and its window's anomalies in one statement: a round trip costs the server about as much
        # CPU as the rest of the request's reads.
        rows = wh.fetch_rows(_current_with_anomalies(wh), params)
        if not rows:
            return None
        row = rows[0]
        return _drift_response(window, row, axis_entries(row["axes"]), row["window_anomalies"], _day(row["as_of_date"]), False)
    current = wh.fetch_rows(f"SELECT * FROM {wh.qualified('customer_drift')} WHERE store_id = :s AND customer_id = :c AND window_days = :w "
                            "ORDER BY as_of_date DESC LIMIT 1", params)
    if current and (as_of is None or pd.Timestamp(current[0]["as_of_date"]).date() == as_of):
        row, computed = current[0], False
        params["d"] = pd.Timestamp(row["as_of_date"]).date()
    elif as_of is not None:
        tables: DriftTables | None = drift_on_demand(wh, store, as_of, settings, customer_id=customer)
        if tables is None:
            return None
        found = tables.customers[tables.customers["window_days"] == days]
        if found.empty:
            return None
        row, computed = found.iloc[0].to_dict(), True
        params["d"] = as_of
    else:
        return None
    axes = axis_entries(row["axes"])  # in the row: no statement over the view
    day = pd.Timestamp(params["d"])
    anomalies = wh.fetch_rows(f"SELECT * FROM {wh.qualified('customer_drift_anomalies')} WHERE store_id = :s AND customer_id = :c "
                              "AND as_of_date > :start AND as_of_date <= :d ORDER BY as_of_date, anomaly_type, axis",
                              {"s": store, "c": customer, "d": day.date(), "start": (day - pd.Timedelta(days=days)).date()})
    return _drift_response(window, row, axes, anomalies, str(day.date()), computed)


HISTORY_STORED = ("churn_risk_score", "churn_risk_level", "predicted_ltv")


def history(wh: Warehouse, store: str, customer: str, days: int, snapshot_type: str | None, with_features: bool = False) -> list[dict]:
    """The customer's snapshots over the `days` days up to their newest, oldest first (one per date without a type),
    shaped straight from the stored rows (no row of the view in between: this is most of a history read's CPU);
    with `with_features` each also carries its behavioral_features (the customer page's behaviour chart)."""
    window = wh.customer_history_window(store, customer, days, snapshot_type=snapshot_type, stored=HISTORY_STORED, with_archetypes=True)
    out = []
    for r in window.rows:
        layout, archetypes = window.layouts[r["layout_id"]]
        archetype = archetypes[r["dominant_positions"]]
        out.append({
            "snapshot_date": _day(r["snapshot_date"]), "snapshot_type": r["snapshot_type"],
            "archetype": {"id": archetype["archetype_id"], "name": archetype["archetype_name"], "level": int(archetype["archetype_level"])},
            "dominant_segments": layout.dominant_segments(r["dominant_positions"]), "fuzzy_memberships": layout.memberships_of(r["membership_values"]),
            "churn_risk_score": float(r["churn_risk_score"]), "churn_risk_level": r["churn_risk_level"],
            "predicted_ltv": float(r["predicted_ltv"]), "model_version": layout.model_version,
        })
        if with_features:
            out[-1]["behavioral_features"] = layout.features_of(r["feature_values"])
    return out


def population(wh: Warehouse, store: str, days: int) -> list[dict]:
    """The store's population drift and segment shares per axis over the `days` days up to its newest date."""
    table = wh.qualified("population_drift")
    newest = wh.fetch_rows(f"SELECT max(as_of_date) AS d FROM {table} WHERE store_id = :s", {"s": store})[0]["d"]
    if newest is None:
        return []
    start = (pd.Timestamp(newest) - pd.Timedelta(days=days)).date()
    rows = wh.fetch_rows(f"SELECT * FROM {table} WHERE store_id = :s AND as_of_date > :start ORDER BY as_of_date, axis", {"s": store, "start": start})
    return [{"as_of_date": _day(r["as_of_date"]), "axis": r["axis"], "reference_date": _day(r["reference_date"]),
             "segment_share_shift": float(r["segment_share_shift"]), "feature_psi": None if r["feature_psi"] is None else float(r["feature_psi"]),
             "segment_shares": _json(r["segment_shares"]), "n_current": int(r["n_current"])} for r in rows]


def outlier_rates(wh: Warehouse, store: str) -> list[dict]:
    """Share of the store's flagged customers per date and method (outlier_rates, as retained)."""
    rows = wh.fetch_rows(f"SELECT flag_date, method, customers, flagged FROM {wh.qualified('outlier_rates')} "
                         "WHERE store_id = :s ORDER BY flag_date, method", {"s": store})
    return [{"date": _day(r["flag_date"]), "method": r["method"], "rate": int(r["flagged"]) / max(int(r["customers"]), 1)} for r in rows]


def _store_alerts(wh: Warehouse, settings: StoreSettings, store: str, days: int) -> pd.DataFrame:
    """The store's mix alerts (run/alerts.py) over the `days` days up to its newest population drift or outlier date."""
    newest = wh.fetch_rows(f"SELECT max(d) AS d FROM (SELECT max(as_of_date) AS d FROM {wh.qualified('population_drift')} WHERE store_id = :s "
                           f"UNION ALL SELECT max(flag_date) AS d FROM {wh.qualified('outlier_rates')} WHERE store_id = :s) newest", {"s": store})[0]["d"]
    if newest is None:
        return pd.DataFrame(columns=ALERT_COLUMNS)
    end = pd.Timestamp(newest)
    return store_alerts(wh, settings, end - pd.Timedelta(days=days - 1), end, [store])


def segment_bands(wh: Warehouse, store: str, model_version: str, features: dict[str, str], customer: dict[str, dict[str, float]],
                  shown: dict[str, tuple[float, float]], points: int = 240) -> dict[str, list[dict]]:
    """{axis: [{segment, low, high}]}: the segment bands of one feature per axis (`features`: {axis: feature}) over
    the range `shown` on the chart, at the customer's other features (`customer`: the profile's
    behavioral_features), from the segment model the profile was scored with (AxisModel.regions_along)."""
    models = {r["axis"]: AxisModel.from_record(r) for r in wh.segment_model_records(store, model_version) if r["axis"] in shown}
    out = {}
    for axis, model in models.items():
        low, high = shown[axis]
        values = (np.geomspace(low, high, points) if low > 0 else np.linspace(low, high, points))
        raw = np.array([customer.get(axis, {}).get(f, np.nan) for f in model.feature_names], dtype=float)
        bands = model.regions_along(raw, features[axis], values)
        if bands:
            out[axis] = [{"segment": s, "low": round(lo, 4), "high": round(hi, 4)} for s, lo, hi in bands]
    return out


def model_refits(wh: Warehouse, store: str) -> list[str]:
    """The dates the store's segment model was fitted (segment_models, as retained), oldest first."""
    rows = wh.fetch_rows(f"SELECT DISTINCT fitted_on FROM {wh.qualified('segment_models')} WHERE store_id = :s ORDER BY fitted_on", {"s": store})
    return [_day(r["fitted_on"]) for r in rows]


def alerts(wh: Warehouse, settings: StoreSettings, store: str, days: int) -> list[dict]:
    """The store's mix alerts of the `days` days up to its newest date, newest first, errors first."""
    found = _store_alerts(wh, settings, store, days)
    found = found.assign(_rank=found["severity"].map(SEVERITY_RANK)).sort_values(["as_of_date", "_rank"], ascending=[False, True], kind="stable")
    return [{"as_of_date": _day(r["as_of_date"]), **{k: r[k] for k in ("kind", "axis", "severity", "message")},
             "value": float(r["value"]), "threshold": float(r["threshold"])} for r in found.to_dict("records")]


def alert_episodes(wh: Warehouse, settings: StoreSettings, store: str, days: int) -> list[dict]:
    """The same alerts with consecutive days of one kind and axis as one row (drift/alerts.py alert_episodes)."""
    return [{**r, "first": _day(r["first"]), "last": _day(r["last"])} for r in episodes_of(_store_alerts(wh, settings, store, days)).to_dict("records")]


# SQLite's JSON text, PostgreSQL's jsonb. The patterns are binds: a ':true' inside the SQL's own text is read as a bind
# by the driver's `:name` translation (it broke the store page on PostgreSQL until 2026-12-05).
LITTLE_HISTORY_SQL = "CAST(history_basis AS TEXT) LIKE :little_compact OR CAST(history_basis AS TEXT) LIKE :little_spaced"
LITTLE_HISTORY_PATTERNS = {"little_compact": '%"little_history":true%', "little_spaced": '%"little_history": true%'}


def churn_summary(wh: Warehouse, store: str) -> dict | None:
    """The store's newest profiles by churn_risk_level, with how much history they stand on (history_basis)."""
    table = wh.qualified("customer_profiles")
    newest = wh.newest_profile_date(store)  # profile_writes: customer_profiles has no index on profile_date
    rows = [] if newest is None else wh.fetch_rows(
        f"SELECT churn_risk_level AS level, count(*) AS n, sum(CASE WHEN {LITTLE_HISTORY_SQL} THEN 1 ELSE 0 END) AS little "
        f"FROM {table} WHERE store_id = :s AND profile_date = :d GROUP BY churn_risk_level", {"s": store, "d": newest, **LITTLE_HISTORY_PATTERNS})
    if not rows:
        return None
    basis = wh.fetch_rows(f"SELECT profile_date, history_basis FROM {table} WHERE store_id = :s AND profile_date = :d AND history_basis IS NOT NULL "
                          "LIMIT 1", {"s": store, "d": newest})
    order = ["unknown", "low", "medium", "high", "critical"]
    levels = sorted(({"level": r["level"], "customers": int(r["n"])} for r in rows), key=lambda r: order.index(r["level"]) if r["level"] in order else 9)
    store_basis = _basis(basis[0]["history_basis"]) if basis else None
    return {"levels": levels, "customers": sum(r["customers"] for r in levels), "little_history": sum(int(r["little"] or 0) for r in rows),
            "churn_model": store_basis["churn_model"] if store_basis else None, "store_days": store_basis["store_days"] if store_basis else None,
            "churn_recalibrated": store_basis["churn_recalibrated"] if store_basis else False,
            "profile_date": _day(basis[0]["profile_date"]) if basis else None}


def newest_drift_date(wh: Warehouse, store: str) -> str | None:
    return _day(wh.fetch_rows(f"SELECT max(as_of_date) AS d FROM {wh.qualified('customer_drift')} WHERE store_id = :s", {"s": store})[0]["d"])


def anomalies_of(wh: Warehouse, store: str, day: str) -> list[dict]:
    rows = wh.fetch_rows(f"SELECT customer_id, anomaly_type, axis, severity, description FROM {wh.qualified('customer_drift_anomalies')} "
                         "WHERE store_id = :s AND as_of_date = :d ORDER BY severity DESC, customer_id LIMIT 100",
                         {"s": store, "d": pd.Timestamp(day).date()})
    return [{**r, "severity": float(r["severity"])} for r in rows]


def movers(wh: Warehouse, store: str, day: str, axis: str | None = None, direction: str | None = None, limit: int = 50) -> list[dict]:
    """Who is changing, how and why on `day` (28-day window): customer, axis, direction, strength, churn risk and the
    evidence in their own orders (from the recommendation on that axis). Degrading first, then by churn risk x
    strength: the customers an analyst should look at first."""
    clauses, params = ["a.store_id = :s", "a.as_of_date = :d", "a.window_days = 28", "a.direction <> 'stable'"], {"s": store, "d": pd.Timestamp(day).date(), "n": limit}
    if axis:
        clauses.append("a.axis = :axis")
        params["axis"] = axis
    if direction:
        clauses.append("a.direction = :direction")
        params["direction"] = direction
    rows = wh.fetch_rows(
        f"SELECT a.customer_id, a.axis, a.direction, a.drift_score, p.churn_risk_score, CAST(d.recommendations AS TEXT) AS recommendations "
        f"FROM {wh.qualified('customer_axis_drift')} a "
        f"JOIN {wh.qualified('customer_drift')} d ON d.store_id = a.store_id AND d.customer_id = a.customer_id "
        "AND d.as_of_date = a.as_of_date AND d.window_days = a.window_days "
        f"LEFT JOIN {wh.qualified('customer_profiles')} p ON p.store_id = a.store_id AND p.customer_id = a.customer_id "
        f"WHERE {' AND '.join(clauses)} "
        "ORDER BY CASE WHEN a.direction = 'degrading' THEN 0 ELSE 1 END, COALESCE(p.churn_risk_score, 0) * a.drift_score DESC, a.customer_id "
        "LIMIT :n", params)
    out = []
    for r in rows:
        source = EVIDENCE_AXIS.get(r["axis"], r["axis"])  # loyalty moves on the purchase rate's evidence
        evidence = next((item["evidence"] for item in _json(r["recommendations"] or "[]") if item.get("evidence", {}).get("axis") == source), None)
        out.append({"customer_id": r["customer_id"], "axis": r["axis"], "direction": r["direction"], "drift_score": float(r["drift_score"]),
                    "churn_risk_score": None if r["churn_risk_score"] is None else float(r["churn_risk_score"]),
                    "evidence": (f"{evidence['feature']} {evidence['before']:g} → {evidence['after']:g} since {evidence['since']}" if evidence else "")})
    return out


def most_drifted(wh: Warehouse, store: str, window: str = "28d", limit: int = 20) -> list[dict]:
    rows = wh.fetch_rows(f"SELECT customer_id, as_of_date, overall_drift, churn_risk_trend FROM {wh.qualified('customer_drift')} "
                         "WHERE store_id = :s AND window_days = :w ORDER BY as_of_date DESC, overall_drift DESC, customer_id LIMIT :n",
                         {"s": store, "w": WINDOWS[window], "n": limit})
    return [{"customer_id": r["customer_id"], "overall_drift": float(r["overall_drift"]), "churn_risk_trend": float(r["churn_risk_trend"])} for r in rows]
