"""The store-mix alerts of stored dates (drift/alerts.py over population_drift and outlier_rates), each store with
its own thresholds; and their delivery to a webhook (QUIMBI_ALERT_WEBHOOK_URL)."""

from __future__ import annotations

import json
import logging
import urllib.request
from datetime import date

import pandas as pd

from quimbi_pipeline.drift.alerts import (
    ALERT_COLUMNS,
    AlertThresholds,
    mix_alerts,
    sorted_alerts,
)
from quimbi_pipeline.settings import PipelineSettings, StoreSettings
from quimbi_pipeline.settings.store import settings_for_store
from quimbi_pipeline.storage import Warehouse

log = logging.getLogger(__name__)
WEBHOOK_TIMEOUT_S = 10


def _rows(wh: Warehouse, table: str, date_column: str, columns: str, start: date, end: date, stores: list[str] | None) -> pd.DataFrame:
    where = f"{date_column} BETWEEN :start AND :end"
    params: dict = {"start": start, "end": end}
    if stores:
        where += " AND store_id IN (" + ", ".join(f":s{i}" for i in range(len(stores))) + ")"
        params |= {f"s{i}": s for i, s in enumerate(stores)}
    return wh.read_sql(f"SELECT {columns} FROM {wh.qualified(table)} WHERE {where}", params)


def store_alerts(wh: Warehouse, settings: PipelineSettings | StoreSettings, start, end=None, stores: list[str] | None = None) -> pd.DataFrame:
    """The alerts of the dates in [start, end] (end = start when not given), of `stores` (None = every store)."""
    start = pd.Timestamp(start).date()
    end = pd.Timestamp(end).date() if end is not None else start
    population = _rows(wh, "population_drift", "as_of_date", "store_id, as_of_date, axis, reference_date, n_current, segment_share_shift, "
                       "feature_psi", start, end, stores)
    rates = _rows(wh, "outlier_rates", "flag_date", "store_id, flag_date, method, customers, flagged", start, end, stores)
    names = sorted(set(population["store_id"]) | set(rates["store_id"]))
    # One pass per distinct set of thresholds (most stores share the defaults), not one per store: thousands of stores.
    by_thresholds: dict[AlertThresholds, list[str]] = {}
    for store in names:
        by_thresholds.setdefault(AlertThresholds.from_settings(settings_for_store(settings, store)), []).append(store)
    parts = [mix_alerts(population[population["store_id"].isin(group)], rates[rates["store_id"].isin(group)], thresholds)
             for thresholds, group in by_thresholds.items()]
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=ALERT_COLUMNS)
    return sorted_alerts(pd.concat(parts, ignore_index=True))


def post_alerts(url: str, alerts: pd.DataFrame) -> list[str]:
    """POST each alert as JSON to `url`; returns the errors (one line each) of the posts that failed, so one
    unreachable hook neither loses the other alerts nor fails the caller."""
    errors = []
    for alert in alerts.to_dict("records"):
        body = json.dumps({**alert, "as_of_date": str(alert["as_of_date"])}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:
                response.read()
        except OSError as exc:  # URLError, HTTPError and timeouts are OSErrors
            errors.append(f"{alert['store_id']} {alert['as_of_date']} {alert['kind']}: {exc}")
    return errors
