"""Drift, anomalies and recommendations judged against planted truth (planted.py), beside simple baselines.

The real pipeline (profiles, snapshots, drift: pipeline.run_profiles_partition / run_drift_partition)
runs every day of a range into a warehouse; then the tables are read back and scored:

- a changer is flagged when customer_axis_drift shows their changed axis moving the planted way
  (direction improving / degrading) in the 28-day window; delay = first such as_of - change date, also
  counted in orders since the change; recall within 28 and 60 days of the change;
- the evidence day, whatever the detector: the second order after the change, or for a frequency drop
  three usual gaps of silence since the last order before it; "evidence within 28 days" is the share of
  changers whose orders hold it by then (the ceiling of recall within 28 days for a detector that wants
  it: a monthly buyer has rarely ordered twice), and recall 28 days after the evidence is judged on the
  changers whose evidence day leaves 28 scored days;
- it still shows 60 days later when its profile's dominant segment on that axis then differs from the
  one before the change the planted way (ladder position), or the 90-day window still flags it;
- a false flag is a customer who never changed with any axis moving in the 28-day window on any day;
  precision = flagged changers / (flagged changers + falsely flagged customers), over the run;
- anomalies: the share of unchanged customers with any anomaly, the share of changers with one on the
  right axis within 28 days, and the anomalies on segment-refit dates against the other dates' median;
- recommendations: the share of unchanged customers given any (28-day window), and the share of
  recommendations that name their evidence.

Baselines, from the same orders: "yearly" = the plan's flags only (the original 365-day features:
ENABLE_ADAPTIVE_WINDOWS off), "recency" = an analyst's rule on each customer's own orders (frequency: no
order for twice their average gap; value: the last two orders below half their yearly average).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quimbi_pipeline.drift.measures import segment_position
from quimbi_pipeline.evaluation.planted import PlantedData
from quimbi_pipeline.model.segment_identity import refit_anchor
from quimbi_pipeline.run import run_drift_partition, run_profiles_partition
from quimbi_pipeline.settings import PipelineSettings, RetentionPolicy
from quimbi_pipeline.sources.orders import ValidatedOrders, validate_orders
from quimbi_pipeline.storage import Warehouse

log = logging.getLogger(__name__)
DIRECTIONS = {"improving": 1, "degrading": -1}
EVERY_DRIFT_DATE = RetentionPolicy(drift=36500)


@dataclass
class SignalScores:
    summary: dict[str, float]  # the headline figures
    by_kind: pd.DataFrame  # per change kind (and buyer type): recall, delays, stickiness
    changers: pd.DataFrame  # per planted changer: delay, orders to detect, still shown at +60 days, anomaly


def run_days(validated: ValidatedOrders, days: pd.DatetimeIndex, warehouse_url: str, settings: PipelineSettings) -> pd.DataFrame:
    """Each day as the daily schedule runs it, the default snapshot retention applied after it (so drift reads
    the history production keeps); every date's drift rows are kept for scoring (production keeps the newest:
    drift is computed from the snapshots alone, so keeping its past changes no figure). Returns each day's dominant segments (customer_id, snapshot_date, dominant),
    kept aside because retention prunes the daily snapshots."""
    wh = Warehouse(warehouse_url)
    segments = []
    try:
        for day in days:
            report = run_profiles_partition(validated, day, wh, settings)
            failed = [o.error for o in report.failed] + [o.error for o in run_drift_partition(wh, day, settings, retention=EVERY_DRIFT_DATE) if not o.ok]
            if failed:
                raise RuntimeError(f"{day.date()}: {failed}")
            segments.append(_read(wh, f"SELECT customer_id, snapshot_date, CAST(dominant_segments AS TEXT) AS dominant "
                                      f"FROM {wh.qualified('customer_profile_snapshots')} WHERE snapshot_type = 'daily' AND snapshot_date = :d",
                                  {"d": day.date()}))
            wh.prune_snapshots(RetentionPolicy())
    finally:
        wh.dispose()
    return pd.concat(segments, ignore_index=True)


def _read(wh: Warehouse, sql: str, params: dict) -> pd.DataFrame:
    frame = wh.read_sql(sql, params)
    for column in ("as_of_date", "anomaly_date", "profile_date", "snapshot_date"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column])
    return frame


def score(data: PlantedData, warehouse_url: str, scored_from, scored_to, settings: PipelineSettings, segments: pd.DataFrame) -> SignalScores:
    """Scores over as_of dates in [scored_from, scored_to]; changes are scored when they fall in [scored_from, scored_to - 60 days]."""
    start, end = pd.Timestamp(scored_from), pd.Timestamp(scored_to)
    wh = Warehouse(warehouse_url)
    params = {"a": start.date(), "b": end.date()}
    try:
        flags = _read(wh, f"SELECT customer_id, as_of_date, window_days, axis, direction FROM {wh.qualified('customer_axis_drift')} "
                          "WHERE as_of_date BETWEEN :a AND :b AND direction <> 'stable' AND window_days IN (28, 90)", params)
        anomalies = _read(wh, f"SELECT customer_id, as_of_date, anomaly_type, axis FROM {wh.qualified('customer_drift_anomalies')} "
                              "WHERE as_of_date BETWEEN :a AND :b", params)
        recs = _read(wh, f"SELECT customer_id, as_of_date, CAST(recommendations AS TEXT) AS recommendations FROM {wh.qualified('customer_drift')} "
                         "WHERE as_of_date BETWEEN :a AND :b AND window_days = 28 AND CAST(recommendations AS TEXT) <> '[]'", params)
        seen = wh.read_sql(f"SELECT DISTINCT customer_id FROM {wh.qualified('customer_drift')} WHERE as_of_date BETWEEN :a AND :b", params)
    finally:
        wh.dispose()
    truth = data.customers.set_index("customer_id")
    seen_ids = pd.Index(seen["customer_id"].astype(str))
    unchanged = truth.index[truth["change_kind"].isna()].intersection(seen_ids)
    changers = truth[truth["change_kind"].notna()].copy()
    changers["change_day"] = changers["change_ts"].dt.normalize()
    changers = changers[(changers["change_day"] >= start) & (changers["change_day"] <= end - pd.Timedelta(days=60))]
    changers = changers.loc[changers.index.intersection(seen_ids)]

    f28 = flags[flags["window_days"] == 28]
    hits = f28.merge(changers[["change_axis", "change_direction", "change_day"]], left_on="customer_id", right_index=True)
    hits = hits[(hits["axis"] == hits["change_axis"]) & (hits["direction"] == hits["change_direction"]) & (hits["as_of_date"] >= hits["change_day"])]
    first = hits.groupby("customer_id")["as_of_date"].min()
    changers["delay_days"] = (first.reindex(changers.index) - changers["change_day"]).dt.days
    changers["orders_to_detect"] = _orders_between(data.orders, changers, first)
    changers["evidence_day"] = _evidence_day(data.orders, changers)
    changers["delay_after_evidence_days"] = (first.reindex(changers.index) - changers["evidence_day"]).dt.days
    has_evidence = changers["evidence_day"] <= end - pd.Timedelta(days=28)  # 28 days after it are in the scored range
    changers["still_shown_60d"] = _still_shown(changers, segments, flags)
    changers["anomaly_28d"] = _anomaly_on_axis_until(anomalies, changers, changers["change_day"] + pd.Timedelta(days=28))
    changers["anomaly_28d_after_evidence"] = _anomaly_on_axis_until(anomalies, changers, changers["evidence_day"] + pd.Timedelta(days=28))
    changers["evidence_28d"] = changers["evidence_day"] <= changers["change_day"] + pd.Timedelta(days=28)

    false_flagged = set(f28["customer_id"]) & set(unchanged)
    detected = int(changers["delay_days"].notna().sum())
    refit_days = {d for d in pd.date_range(start, end) if refit_anchor(d, settings.segment_refit_days) == d} if settings.enable_stable_segments else set()
    per_day = anomalies.groupby("as_of_date").size().reindex(pd.date_range(start, end), fill_value=0)
    on_refit = per_day[per_day.index.isin(list(refit_days))]
    other = per_day[~per_day.index.isin(list(refit_days))]
    rec_items = [item for text in recs["recommendations"] for item in json.loads(text)]
    weekly = changers[(changers["change_kind"] == "frequency_drop") & (changers["cadence_days"] == 7)]
    summary = {
        "changers": len(changers), "unchanged": len(unchanged), "days": len(per_day),
        "recall_28d": float((changers["delay_days"] <= 28).mean()), "recall_60d": float((changers["delay_days"] <= 60).mean()),
        "evidence_within_28d": float(changers["evidence_28d"].mean()),
        "recall_28d_after_evidence": float((changers.loc[has_evidence, "delay_after_evidence_days"] <= 28).mean()),
        "median_delay_after_evidence_days": float(changers.loc[has_evidence, "delay_after_evidence_days"].median()),
        "precision_28d_window": detected / (detected + len(false_flagged)) if detected + len(false_flagged) else float("nan"),
        "unchanged_falsely_flagged": len(false_flagged) / max(len(unchanged), 1),
        "median_delay_days": float(changers["delay_days"].median()),
        "weekly_frequency_drop_median_delay_days": float(weekly["delay_days"].median()),
        "weekly_frequency_drop_regular_median_delay_days": float(weekly.loc[weekly["buyer_type"] == "regular", "delay_days"].median()),
        "weekly_frequency_drop_poisson_median_delay_days": float(weekly.loc[weekly["buyer_type"] == "poisson", "delay_days"].median()),
        "value_drop_median_orders_to_detect": float(changers.loc[changers["change_kind"] == "value_drop", "orders_to_detect"].median()),
        "still_shown_60d": float(changers["still_shown_60d"].mean()),
        "still_shown_60d_of_detected": float(changers.loc[changers["delay_days"] <= 60, "still_shown_60d"].mean()),
        "unchanged_with_anomaly": float(pd.Index(unchanged).isin(anomalies["customer_id"]).mean()),
        "changers_with_anomaly_28d": float(changers["anomaly_28d"].mean()),
        "changers_with_anomaly_28d_after_evidence": float(changers.loc[has_evidence, "anomaly_28d_after_evidence"].mean()),
        "anomalies_per_refit_day": float(on_refit.mean()) if len(on_refit) else float("nan"),
        "anomalies_per_other_day_median": float(other.median()),
        "anomalies_per_other_day_mean": float(other.mean()),
        "refit_days_share_of_anomalies": float(on_refit.sum() / max(per_day.sum(), 1)) if len(on_refit) else float("nan"),
        "refit_days_share_of_days": len(on_refit) / max(len(per_day), 1),
        "unchanged_with_recommendation": float(pd.Index(unchanged).isin(recs["customer_id"]).mean()),
        "recommendations_with_evidence": float(np.mean(["evidence" in item for item in rec_items])) if rec_items else float("nan"),
    }
    by_kind = (changers.assign(recall_28d=changers["delay_days"] <= 28, recall_60d=changers["delay_days"] <= 60,
                               after_evidence_28d=(changers["delay_after_evidence_days"] <= 28).where(has_evidence),
                               anomaly_after_evidence_28d=changers["anomaly_28d_after_evidence"].astype(float).where(has_evidence))
               .groupby(["change_kind", "buyer_type"])
               .agg(n=("delay_days", "size"), recall_28d=("recall_28d", "mean"), evidence_28d=("evidence_28d", "mean"),
                    after_evidence_28d=("after_evidence_28d", "mean"), recall_60d=("recall_60d", "mean"),
                    median_delay_days=("delay_days", "median"), median_orders_to_detect=("orders_to_detect", "median"),
                    still_shown_60d=("still_shown_60d", "mean"), anomaly_28d=("anomaly_28d", "mean"),
                    anomaly_after_evidence_28d=("anomaly_after_evidence_28d", "mean")))
    return SignalScores(summary, by_kind, changers)


def _orders_between(orders: pd.DataFrame, changers: pd.DataFrame, first: pd.Series) -> pd.Series:
    """Orders from the change to the first detection (that day included), per detected changer; NaN when never detected."""
    detected = first.reindex(changers.index)
    o = orders.loc[orders["customer_id"].isin(changers.index), ["customer_id", "order_ts"]]
    o = o.assign(change_ts=o["customer_id"].map(changers["change_ts"]), detected=o["customer_id"].map(detected))
    o = o[(pd.to_datetime(o["order_ts"]) >= o["change_ts"]) & (pd.to_datetime(o["order_ts"]) < o["detected"] + pd.Timedelta(days=1))]
    return o.groupby("customer_id").size().reindex(changers.index).fillna(0).where(detected.notna())


def _anomaly_on_axis_until(anomalies: pd.DataFrame, changers: pd.DataFrame, until: pd.Series) -> np.ndarray:
    """Per changer: an anomaly on their changed axis dated from the change day to `until` (per changer)."""
    hits = anomalies.merge(changers[["change_axis", "change_day"]].assign(until=until), left_on="customer_id", right_index=True)
    hits = hits[(hits["axis"] == hits["change_axis"]) & (hits["as_of_date"] >= hits["change_day"]) & (hits["as_of_date"] <= hits["until"])]
    return changers.index.isin(hits["customer_id"])


def _evidence_day(orders: pd.DataFrame, changers: pd.DataFrame) -> pd.Series:
    """The day the orders first hold the evidence of each planted change, whatever the detector: the second
    order after the change (one odd order is no change), or for a frequency drop the day the customer has
    been silent for three of their usual gaps since their last order before it. NaT when not by the data's end."""
    o = orders.loc[orders["customer_id"].isin(changers.index), ["customer_id", "order_ts"]].copy()
    o["order_ts"] = pd.to_datetime(o["order_ts"])
    o = o.sort_values(["customer_id", "order_ts"], kind="stable")
    change_ts = o["customer_id"].map(changers["change_ts"])
    after = o[o["order_ts"] >= change_ts]
    second = after.groupby("customer_id")["order_ts"].nth(1)
    second = pd.Series(second.to_numpy(), index=after.loc[second.index, "customer_id"]).dt.normalize()
    last_before = o[o["order_ts"] < change_ts].groupby("customer_id")["order_ts"].max().dt.normalize()
    silent = last_before + pd.to_timedelta(3 * changers["cadence_days"].reindex(last_before.index), unit="D")
    drop = changers["change_kind"] == "frequency_drop"
    return pd.Series(np.where(drop, np.maximum(silent.reindex(changers.index), changers["change_day"]), second.reindex(changers.index)),
                     index=changers.index, dtype="datetime64[ns]")


def _still_shown(changers: pd.DataFrame, segments: pd.DataFrame, flags: pd.DataFrame) -> pd.Series:
    """At change + 60 days: the dominant segment moved the planted way since the day before the change, or the 90-day window flags it."""
    segment = segments.assign(customer_id=segments["customer_id"].astype(str)).set_index(["customer_id", "snapshot_date"])["dominant"]
    keys_before = list(zip(changers.index, changers["change_day"] - pd.Timedelta(days=1)))
    keys_after = list(zip(changers.index, changers["change_day"] + pd.Timedelta(days=60)))
    before = segment.reindex(keys_before).to_numpy(object)
    after = segment.reindex(keys_after).to_numpy(object)
    moved = []
    for axis, want, b, a in zip(changers["change_axis"], changers["change_direction"], before, after):  # one per planted changer
        b_seg = json.loads(b).get(axis) if isinstance(b, str) else None
        a_seg = json.loads(a).get(axis) if isinstance(a, str) else None
        moved.append(bool(b_seg and a_seg and np.sign(segment_position(axis, a_seg) - segment_position(axis, b_seg)) == DIRECTIONS[want]))
    f90 = flags[flags["window_days"] == 90].merge(changers[["change_axis", "change_direction", "change_day"]], left_on="customer_id", right_index=True)
    f90 = f90[(f90["axis"] == f90["change_axis"]) & (f90["direction"] == f90["change_direction"])
              & (f90["as_of_date"] == f90["change_day"] + pd.Timedelta(days=60))]
    return pd.Series(moved, index=changers.index) | changers.index.isin(f90["customer_id"])


def evaluate(data: PlantedData, days: pd.DatetimeIndex, scored_from, scored_to, warehouse_url: str, settings: PipelineSettings) -> SignalScores:
    segments = run_days(validate_orders(data.orders), days, warehouse_url, settings)
    return score(data, warehouse_url, scored_from, scored_to, settings, segments)


def analyst_baseline(data: PlantedData, scored_from, scored_to) -> dict[str, float]:
    """The rules a skeptical analyst writes on the orders themselves, run on every day of the range:
    frequency dropped = no order for twice the customer's average gap of the year before; value dropped =
    the mean of the last two orders below half the year's average. Scored as the pipeline's flags are."""
    start, end = pd.Timestamp(scored_from), pd.Timestamp(scored_to)
    o = validate_orders(data.orders).orders
    o = o[o["order_total"] >= 0].sort_values(["customer_id", "order_ts"], kind="stable")
    codes, customers = pd.factorize(o["customer_id"], sort=True)
    ts = o["order_ts"].to_numpy("datetime64[ns]").view("int64") // (86_400 * 10**9)
    value = o["order_total"].to_numpy("float64")
    n = customers.size
    flagged = {"frequency_drop": {}, "value_drop": {}}
    for day in pd.date_range(start, end):
        d = int(day.value // (86_400 * 10**9))
        seen = (ts <= d) & (ts > d - 365)
        c, t, v = codes[seen], ts[seen], value[seen]
        count = np.bincount(c, minlength=n).astype("float64")
        first = pd.Series(t).groupby(c).min().reindex(range(n)).to_numpy("float64")
        last = pd.Series(t).groupby(c).max().reindex(range(n)).to_numpy("float64")
        with np.errstate(invalid="ignore", divide="ignore"):
            gap = (last - first) / (count - 1)
            freq = (count >= 4) & ((d - last) > 2 * gap)
        mean = np.bincount(c, v, n) / np.maximum(count, 1)
        newest = pd.DataFrame({"c": c, "v": v}).groupby("c").tail(2).groupby("c")["v"].mean().reindex(range(n)).to_numpy("float64")
        val = (count >= 4) & (newest < 0.5 * mean)
        for kind, mask in (("frequency_drop", freq), ("value_drop", val)):
            for i in np.flatnonzero(mask):
                flagged[kind].setdefault(customers[i], day)
    truth = data.customers.set_index("customer_id")
    out = {}
    unchanged = truth.index[truth["change_kind"].isna()]
    for kind, first_flag in flagged.items():
        target = truth[(truth["change_kind"] == kind) & truth["change_ts"].dt.normalize().between(start, end - pd.Timedelta(days=60))]
        when = pd.Series(first_flag)
        hit = [(c, (when.get(c) - t.normalize()).days) for c, t in target["change_ts"].items()
               if c in when.index and when[c] >= t.normalize()]
        delays = pd.Series(dict(hit), dtype="float64")
        false = len(set(when.index) & set(unchanged))
        out[f"{kind}_recall_60d"] = float((delays <= 60).sum() / max(len(target), 1))
        out[f"{kind}_median_delay_days"] = float(delays.median()) if len(delays) else float("nan")
        out[f"{kind}_unchanged_flagged"] = false / max(len(unchanged), 1)
        out[f"{kind}_precision"] = len(delays) / (len(delays) + false) if len(delays) + false else float("nan")
    return out
