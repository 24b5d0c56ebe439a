"""Drift and anomalies on a young store: the planted-change scorer (signals.py) run on sources/young.py's store.

A store of `months` is generated with a fifth of its customers stopping, and some others' order value rising
4-fold, 61 to 90 days before D; the real pipeline runs every day of D's last 90 days with drift on. Each
stop is a planted "frequency_drop" and each rise a "value_rise" for the scorer, so the figures are the
planted store's: recall within 28 days of the evidence (three usual gaps of silence; the second changed
order), precision, and the unchanged customers who got any anomaly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quimbi_pipeline.evaluation.planted import CHANGE_KINDS, PlantedData
from quimbi_pipeline.evaluation.signals import SignalScores, evaluate
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.sources.young import generate_young

CHANGES_BEFORE_DAYS = (61.0, 90.0)  # a change needs 60 scored days after it
SCORED_DAYS = 90


def young_planted(customers: int = 300, months: int = 4, seed: int = 0, value_rise_share: float = 0.15) -> tuple[PlantedData, pd.Timestamp]:
    store = generate_young(customers, months, seed, horizon_days=0, stop_before_days=CHANGES_BEFORE_DAYS, value_rise_share=value_rise_share)
    c = store.customers
    kind = np.where(c["stopped_before"], "frequency_drop", np.where(c["value_change_ts"].notna(), "value_rise", None))
    truth = pd.DataFrame({
        "customer_id": c["customer_id"], "buyer_type": c["buyer_type"], "cadence_days": c["cadence_days"],
        "change_kind": kind,
        "change_axis": [CHANGE_KINDS[k][0] if k else None for k in kind],
        "change_direction": [CHANGE_KINDS[k][1] if k else None for k in kind],
        "change_ts": c["stop_ts"].where(c["stopped_before"], c["value_change_ts"]),
    })
    return PlantedData(store.orders, truth), store.as_of


def evaluate_young(warehouse_url: str, settings: PipelineSettings, customers: int = 300, months: int = 4, seed: int = 0) -> SignalScores:
    data, as_of = young_planted(customers, months, seed)
    start = as_of - pd.Timedelta(days=SCORED_DAYS)
    return evaluate(data, pd.date_range(start, as_of), start, as_of, warehouse_url, settings)


def judged_stoppers(orders: pd.DataFrame, customers: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """The regular stoppers whose evidence (three usual gaps of silence) leaves 28 scored days, by customer_id, with
    their gaps before the stop (purchase days less one) and the evidence day."""
    stop = customers[(customers["change_kind"] == "frequency_drop") & (customers["buyer_type"] == "regular")].set_index("customer_id")
    mine = orders[orders["customer_id"].isin(stop.index)]
    last = mine.groupby("customer_id")["order_ts"].max().dt.normalize()
    stop["gaps"] = mine.assign(day=mine["order_ts"].dt.normalize()).groupby("customer_id")["day"].nunique() - 1
    stop["evidence"] = np.maximum(last + pd.to_timedelta(3 * stop["cadence_days"], unit="D"), stop["change_ts"].dt.normalize())
    return stop[stop["evidence"] <= as_of - pd.Timedelta(days=28)]


def stoppers_found_by_gaps(data: PlantedData, as_of: pd.Timestamp, scores: SignalScores) -> pd.DataFrame:
    """Per gaps before the stop (0-1, 2, 3+): the judged regular stoppers and those the loop gave a frequency direction
    within 28 days of their evidence (`scores` from evaluate_young). A stopper with 0-1 gaps has no usual gap to be
    silent against."""
    judged = judged_stoppers(data.orders, data.customers, as_of)
    found = scores.changers["delay_after_evidence_days"].reindex(judged.index) <= 28
    bucket = pd.cut(judged["gaps"], [-1, 1, 2, np.inf], labels=["0-1", "2", "3+"])
    return pd.DataFrame({"judged": judged.groupby(bucket, observed=False).size(), "found": found.groupby(bucket, observed=False).sum()})

