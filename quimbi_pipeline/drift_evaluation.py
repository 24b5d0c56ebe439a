"""Drift detection scored against the demo's planted behavior changes (recall, precision, delay).

Runs the real pipeline (profiles, snapshots, stable segments, drift) into a warehouse for every date
of a range, then reads customer_axis_drift back and asks, per window W:
- recall: of the customers with a planted change on axis A at date c (c far enough inside the range
  to be scored), the share flagged on A — a transition dated in [c, D] or a degrading/improving
  direction — at some as_of D in [c, c + 14 days];
- precision: of all (customer, changeable axis) pairs flagged at any as_of of the scored range, the
  share that are planted (flagged within their 14 days).
Pairs that are neither positive nor negative are left out: plants outside the scored range (their
aftermath is real drift) and the frequency axis of customers who stop buying (death is a real
frequency change). "Observable" plants have at least 3 purchases in the 14 days after the change:
before that there is no evidence in the orders, whatever the method. "Well-separated" plants are
observable moves between the two extreme planted classes (0 <-> 2: 9x the order value, 1.3 vs 16
items, 1/4 vs 3 times the order rate).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quimbi_pipeline.demo import CHANGEABLE_AXES, DemoData
from quimbi_pipeline.drift import WINDOWS
from quimbi_pipeline.orders import validate_orders
from quimbi_pipeline.pipeline import run_drift_partition, run_profiles_partition
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.warehouse import Warehouse

log = logging.getLogger(__name__)
DETECTION_DAYS = 14
OBSERVABLE_PURCHASES = 3
WARMUP_DAYS = 15  # snapshots before the first scored change


@dataclass
class DriftEvaluation:
    scores: pd.DataFrame  # one row per window and population: recall, precision, positives, flagged, median delay
    positives: pd.DataFrame  # the scored plants with their detection per window


def run_range(demo: DemoData, start, end, warehouse_url: str, settings: PipelineSettings) -> None:
    validated = validate_orders(demo.orders)
    wh = Warehouse(warehouse_url)
    try:
        for day in pd.date_range(start, end, freq="D"):
            report = run_profiles_partition(validated, day, wh, settings)
            failed = [o.error for o in report.failed] + [o.error for o in run_drift_partition(wh, day, settings) if not o.ok]
            if failed:
                raise RuntimeError(f"{day.date()}: {failed}")
    finally:
        wh.dispose()


def _flags(warehouse: Warehouse, start, end) -> pd.DataFrame:
    """(customer_id, axis, window_days, as_of_date, flag_date) of every flag: a non-stable direction
    (flag_date = as_of) or a transition (flag_date = its date)."""
    rows = warehouse.read_sql(
        f"SELECT customer_id, as_of_date, window_days, axis, direction, n_transitions, CAST(transitions AS TEXT) AS transitions "
        f"FROM {warehouse.qualified('customer_axis_drift')} WHERE as_of_date BETWEEN :a AND :b AND (direction <> 'stable' OR n_transitions > 0)",
        {"a": pd.Timestamp(start).date(), "b": pd.Timestamp(end).date()})
    rows = rows[rows["axis"].isin(CHANGEABLE_AXES)]
    rows["as_of_date"] = pd.to_datetime(rows["as_of_date"])
    directional = rows.loc[rows["direction"] != "stable", ["customer_id", "axis", "window_days", "as_of_date"]].assign(flag_date=lambda f: f["as_of_date"])
    moves = rows.loc[rows["n_transitions"] > 0, ["customer_id", "axis", "window_days", "as_of_date", "transitions"]]
    moves = moves.assign(flag_date=moves["transitions"].str.findall(r'"date": "(\d{4}-\d{2}-\d{2})"')).explode("flag_date")
    moves["flag_date"] = pd.to_datetime(moves["flag_date"])
    return pd.concat([directional, moves.drop(columns="transitions")], ignore_index=True)


def score(demo: DemoData, warehouse_url: str, start, end) -> DriftEvaluation:
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    scored_from = start + pd.Timedelta(days=WARMUP_DAYS)
    scored_to = end - pd.Timedelta(days=DETECTION_DAYS)
    wh = Warehouse(warehouse_url)
    try:
        flags = _flags(wh, scored_from, end)
        seen = wh.read_sql(f"SELECT DISTINCT customer_id FROM {wh.qualified('customer_axis_drift')} WHERE as_of_date BETWEEN :a AND :b",
                           {"a": scored_from.date(), "b": end.date()})["customer_id"].astype(str)
    finally:
        wh.dispose()
    truth = demo.customers.set_index("customer_id")
    change_day = truth["change_ts"].dt.normalize()
    pairs = pd.MultiIndex.from_product([pd.Index(seen.unique(), name="customer_id"), pd.Index(CHANGEABLE_AXES, name="axis")]).to_frame(index=False)
    pairs["change_axis"] = pairs["customer_id"].map(truth["change_axis"])
    pairs["change_day"] = pairs["customer_id"].map(change_day)
    planted = pairs["change_axis"].eq(pairs["axis"])
    in_range = pairs["change_day"].between(scored_from, scored_to)
    death = pairs["customer_id"].map(truth["death_ts"])
    dies = death.notna() & (death >= start - pd.Timedelta(days=365)) & (death <= end + pd.Timedelta(days=1))
    pairs["role"] = np.select([planted & in_range, planted, dies & pairs["axis"].eq("purchase_frequency")], ["positive", "excluded", "excluded"], "negative")
    # Evidence: purchases in the 14 days after the change.
    orders = demo.orders[demo.orders["order_total"] >= 0]
    positives = pairs[pairs["role"] == "positive"].copy()
    after = orders.merge(positives[["customer_id", "change_day"]], on="customer_id")
    after = after[(after["order_ts"] >= after["change_day"]) & (after["order_ts"] < after["change_day"] + pd.Timedelta(days=DETECTION_DAYS + 1))]
    positives["purchases_after"] = positives["customer_id"].map(after.groupby("customer_id").size()).fillna(0).astype(int)
    positives["observable"] = positives["purchases_after"] >= OBSERVABLE_PURCHASES
    positives["class_before"] = [truth.at[c, f"planted_{a}"] for c, a in zip(positives["customer_id"], positives["axis"])]
    positives["class_after"] = positives["customer_id"].map(truth["class_after"]).to_numpy()
    positives["well_separated"] = positives["observable"] & ((positives["class_after"] - positives["class_before"]).abs() == 2)

    results = []
    for window in WINDOWS:
        f = flags[flags["window_days"] == window]
        # A positive is detected by a flag dated on/after its change, seen at an as_of within 14 days of it.
        hit = f.merge(positives[["customer_id", "axis", "change_day"]], on=["customer_id", "axis"])
        hit = hit[(hit["flag_date"] >= hit["change_day"]) & (hit["as_of_date"] <= hit["change_day"] + pd.Timedelta(days=DETECTION_DAYS))]
        delay = (hit.groupby(["customer_id", "axis"])["as_of_date"].min() - hit.groupby(["customer_id", "axis"])["change_day"].first()).dt.days
        key = pd.MultiIndex.from_frame(positives[["customer_id", "axis"]])
        positives[f"detected_{window}"] = key.isin(delay.index)
        positives[f"delay_{window}"] = delay.reindex(key).to_numpy()
        negatives = pairs.loc[pairs["role"] == "negative", ["customer_id", "axis"]]
        false_flags = f.merge(negatives, on=["customer_id", "axis"])[["customer_id", "axis"]].drop_duplicates()
        for population, mask in (("well_separated", positives["well_separated"]), ("observable", positives["observable"]),
                                 ("all", np.ones(len(positives), dtype=bool))):
            tp = int(positives.loc[mask, f"detected_{window}"].sum())
            n_pos = int(mask.sum())
            # Precision counts the false flags against the true positives of this population.
            results.append({
                "window_days": window, "plants": population, "positives": n_pos, "detected": tp,
                "recall": tp / n_pos if n_pos else float("nan"),
                "false_flags": len(false_flags), "negatives": len(negatives),
                "precision": tp / (tp + len(false_flags)) if tp + len(false_flags) else float("nan"),
                "false_flag_rate": len(false_flags) / len(negatives) if len(negatives) else float("nan"),
                "median_delay_days": float(np.nanmedian(positives.loc[mask, f"delay_{window}"])) if positives.loc[mask, f"detected_{window}"].any() else float("nan"),
            })
    return DriftEvaluation(pd.DataFrame(results), positives)


def evaluate(demo: DemoData, start, end, warehouse_url: str, settings: PipelineSettings) -> DriftEvaluation:
    run_range(demo, start, end, warehouse_url, settings)
    return score(demo, warehouse_url, start, end)
