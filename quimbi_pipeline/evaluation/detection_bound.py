"""How much of the planted changes any detector could find: CUSUMs that know what each change looks like.

A real detector (change_points.py) knows neither when a customer changes, nor what into: it scans every
split of every customer's orders on every day, for every axis and both ways, and must keep its false
alarms over all of that low. The detector here is told the second: for each kind of change in
planted.py, the customer's parameters before and after (their cadence, order value, basket, discount
share, category loyalty, and the kind's new value). It runs, per customer and kind, the CUSUM of the
log-likelihood ratio "changed" vs "unchanged" of each order (for the purchase-rate kinds: of each gap
between orders, plus at every day's end the open gap since the last one), and alarms when it reaches a
threshold. For a change of known form at an unknown time the CUSUM is the optimal detector (Lorden
1971, Moustakides 1986: the least worst-case delay at a given rate of false alarms), so what it cannot
find at a precision, a detector that must also guess the form will not find either (up to the difference
between that optimality and this evaluation's figures, which are recall within h days and precision).

Scored as evaluation/signals.py scores the pipeline: a changer is found when their kind's CUSUM alarms on
or after the change day; an unchanged customer is falsely flagged when any kind's CUSUM (every kind the
planted generator could give them) alarms on any scored day.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from quimbi_pipeline.evaluation.planted import (
    BASKET_EXTRA_AFTER,
    CADENCE_AFTER,
    CATEGORY_LOYALTY,
    DISCOUNT_SHARE_AFTER,
    ORDER_VALUE_NOISE,
    VALUE_FACTOR_AFTER,
    PlantedData,
    eligible_kinds,
)
from quimbi_pipeline.sources.demo import CATEGORIES

DAY_S = 86_400.0
MARK_KINDS = ("value_drop", "value_rise", "basket_rise", "discount_rise", "category_spread")


def _log_sf(x: np.ndarray, shape: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return stats.gamma.logsf(np.maximum(x, 0.0), shape, scale=scale)


def mark_llr(kind: np.ndarray, log_value: np.ndarray, value_level: np.ndarray, items: np.ndarray, basket_extra: np.ndarray,
             discounted: np.ndarray, discount_share: np.ndarray, in_favorite: np.ndarray) -> np.ndarray:
    """Per order: log f(changed) - log f(unchanged) of its mark for its customer's kind of change."""
    factor = np.select([kind == k for k in VALUE_FACTOR_AFTER], list(VALUE_FACTOR_AFTER.values()), 1.0)
    mu0 = np.log(value_level)
    mu1 = mu0 + np.log(factor)
    value = ((log_value - mu0) ** 2 - (log_value - mu1) ** 2) / (2 * ORDER_VALUE_NOISE**2)
    extra = np.maximum(basket_extra, 1e-9)
    basket = (items - 1) * np.log(BASKET_EXTRA_AFTER / extra) - (BASKET_EXTRA_AFTER - extra)
    discount = np.where(discounted, np.log(DISCOUNT_SHARE_AFTER / discount_share), np.log((1 - DISCOUNT_SHARE_AFTER) / (1 - discount_share)))
    spread = 1.0 / len(CATEGORIES)
    p_favorite = CATEGORY_LOYALTY + (1 - CATEGORY_LOYALTY) * spread
    category = np.where(in_favorite, np.log(spread / p_favorite), np.log(spread / ((1 - CATEGORY_LOYALTY) * spread)))
    return np.select([np.isin(kind, list(VALUE_FACTOR_AFTER)), kind == "basket_rise", kind == "discount_rise", kind == "category_spread"],
                     [value, basket, discount, category], 0.0)


@dataclass
class KnownChangeBound:
    threshold: float
    recall: dict[int, float]  # within h days of the change -> share of changers
    precision: float
    unchanged_flagged: float
    changers: pd.DataFrame  # per changer: first alarm day on or after the change day (NaT: none)
    curve: pd.DataFrame  # per threshold: recall within each horizon, precision, unchanged flagged


def _cusum(codes: np.ndarray, increments: np.ndarray) -> np.ndarray:
    """Per row (rows grouped by customer, in time order): max(0, W_prev + x), W = 0 before a customer's first row."""
    cum = np.cumsum(increments)
    start = np.r_[True, codes[1:] != codes[:-1]] if codes.size else np.zeros(0, dtype=bool)
    base = np.repeat(cum[start] - increments[start], np.diff(np.r_[np.flatnonzero(start), codes.size]))
    s = cum - base  # the running sum within the customer
    low = pd.Series(np.minimum(s, 0.0)).groupby(codes).cummin().to_numpy()
    return s - low


def known_change_alarms(data: PlantedData, days: pd.DatetimeIndex, thresholds: np.ndarray, from_day: np.ndarray) -> dict[str, np.ndarray]:
    """Per kind of change: each customer's (rows of data.customers) first alarm day on or after their
    `from_day`, at each threshold (indexes into `days`; len(days) = no alarm). The alarm: a CUSUM of the
    kind's known log-likelihood ratio over the customer's orders, checked at the end of every day; for
    the purchase-rate kinds the ratio of each closed gap, plus the open gap's at the day's end."""
    truth = data.customers.reset_index(drop=True)
    ids = pd.Index(truth["customer_id"])
    o = data.orders.assign(code=ids.get_indexer(data.orders["customer_id"]))
    o = o.sort_values(["code", "order_ts"], kind="stable")
    code = o["code"].to_numpy()
    t = o["order_ts"].to_numpy("datetime64[us]").astype("int64") / 1e6 / DAY_S
    day_index = days.to_numpy("datetime64[D]").astype("int64")
    order_day = np.floor(t).astype("int64")
    first = np.r_[True, code[1:] != code[:-1]]
    gap = np.where(first, np.nan, t - np.r_[t[0], t[:-1]])
    shape, cadence = truth["gap_shape"].to_numpy(float), truth["cadence_days"].to_numpy(float)
    gross = o["order_total"].to_numpy(float) + o["discount_total"].to_numpy(float)
    n, n_days = len(truth), len(days)
    out = {}
    room = eligible_kinds(truth["cadence_days"], truth["order_value"], truth["basket_extra"], truth["discount_share"], truth["category_loyal"])
    for kind in ("frequency_drop", "frequency_rise", *MARK_KINDS):
        eligible = room[kind]
        if kind in CADENCE_AFTER:
            k, s0, s1 = shape[code], cadence[code] / shape[code], CADENCE_AFTER[kind] / shape[code]
            x = np.where(first, 0.0, stats.gamma.logpdf(np.maximum(np.nan_to_num(gap), 1e-9), k, scale=s1)
                         - stats.gamma.logpdf(np.maximum(np.nan_to_num(gap), 1e-9), k, scale=s0))
            w = _cusum(code, x)
            # At the end of each day: W after the customer's last order so far plus the open gap's ratio.
            stat = np.full((n, n_days), -np.inf)
            key = code.astype("float64") * 1e6 + t  # t < 1e6 days: one sorted key per customer and time
            everyone = np.arange(n)
            for i, d in enumerate(day_index):  # one vectorized step per day
                last = np.searchsorted(key, everyone * 1e6 + d + 1.0, side="left") - 1
                ok = (last >= 0) & (code[np.maximum(last, 0)] == everyone) & (i >= from_day)
                open_gap = d + 1.0 - t[np.maximum(last, 0)]
                silence = _log_sf(open_gap, shape, CADENCE_AFTER[kind] / shape) - _log_sf(open_gap, shape, cadence / shape)
                stat[:, i] = np.where(ok, w[np.maximum(last, 0)] + silence, -np.inf)
            over = stat[:, :, None] >= thresholds[None, None, :]
            first_day = np.where(over.any(axis=1), over.argmax(axis=1), n_days)
        else:
            x = mark_llr(np.full(code.size, kind, dtype=object), np.log(np.maximum(gross, 0.01)), truth["order_value"].to_numpy(float)[code],
                         o["item_count"].to_numpy(float), truth["basket_extra"].to_numpy(float)[code], o["discount_total"].to_numpy(float) > 0,
                         truth["discount_share"].to_numpy(float)[code], o["category"].to_numpy(object) == truth["favorite_category"].to_numpy(object)[code])
            w = _cusum(code, np.where(eligible[code], x, 0.0))
            pos = np.searchsorted(day_index, order_day, side="left")  # the day an order is first seen
            in_range = (order_day >= day_index[0]) & (order_day <= day_index[-1])
            first_day = np.full((n, thresholds.size), n_days)
            for j, c in enumerate(thresholds):  # one vectorized step per threshold
                hit = in_range & (w >= c) & (pos >= from_day[code])
                found = pd.Series(pos[hit]).groupby(code[hit]).min()
                first_day[found.index.to_numpy(), j] = found.to_numpy()
        out[kind] = np.where(eligible[:, None], first_day, n_days)
    return out


def known_change_bound(data: PlantedData, days: pd.DatetimeIndex, changers: pd.Index, unchanged: pd.Index, horizons=(28, 60),
                       precision: float = 0.9, thresholds: np.ndarray | None = None) -> KnownChangeBound:
    """The known-change CUSUMs scored as evaluation/signals.py scores the pipeline: a changer is found when their
    kind's CUSUM alarms on or after the change day (recall within each horizon), an unchanged customer is
    falsely flagged when any kind's does on any day; the threshold is the one with the highest recall within
    the first horizon among those with at least `precision`."""
    thresholds = np.arange(0.5, 20.01, 0.25) if thresholds is None else thresholds
    truth = data.customers.reset_index(drop=True)
    ids = pd.Index(truth["customer_id"])
    change_day = truth["change_ts"].dt.normalize()
    from_day = np.where(ids.isin(changers), days.get_indexer(change_day.fillna(days[0])), 0)
    from_day = np.where(from_day < 0, len(days), from_day)
    alarms = known_change_alarms(data, days, thresholds, from_day)
    is_changer, is_unchanged = ids.isin(changers), ids.isin(unchanged)
    kind = truth["change_kind"].to_numpy(object)
    own = np.full((len(truth), thresholds.size), len(days))
    for k, first in alarms.items():
        own = np.where((kind == k)[:, None], first, own)
    any_alarm = np.min(np.stack(list(alarms.values())), axis=0) < len(days)
    detected = (own < len(days)) & is_changer[:, None]
    delay = np.where(detected, own - from_day[:, None], np.inf)
    recall = {h: (delay[is_changer] <= h).mean(axis=0) for h in horizons}
    flagged = (any_alarm & is_unchanged[:, None]).sum(axis=0)
    found = detected.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        achieved = found / (found + flagged)
    curve = pd.DataFrame({"threshold": thresholds, **{f"recall_{h}d": r for h, r in recall.items()}, "precision": achieved,
                          "unchanged_flagged": flagged / max(int(is_unchanged.sum()), 1)})
    ok = np.flatnonzero(achieved >= precision)
    best = ok[np.argmax(recall[horizons[0]][ok])] if ok.size else len(thresholds) - 1
    first_alarm = pd.Series(np.where(own[:, best] < len(days), days[np.minimum(own[:, best], len(days) - 1)], pd.NaT), index=ids)
    per = truth.set_index("customer_id").loc[changers, ["change_kind", "buyer_type", "cadence_days"]].assign(
        alarm_day=first_alarm.reindex(changers).to_numpy(),
        delay_days=pd.Series(delay[:, best], index=ids).replace(np.inf, np.nan).reindex(changers).to_numpy())
    return KnownChangeBound(float(thresholds[best]), {h: float(r[best]) for h, r in recall.items()}, float(achieved[best]),
                            float(curve["unchanged_flagged"].iloc[best]), per, curve)
