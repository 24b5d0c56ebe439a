"""Orders with planted behavior changes, for judging the signals (drift, anomalies, recommendations).

Unlike the demo's (demo.py: Poisson buyers, changes between three classes), each customer here buys
as a renewal process that is either regular (Gamma gaps, shape 16: a weekly buyer's gaps are 7 +- 1.75
days) or Poisson-like (exponential gaps), at a weekly, fortnightly or monthly cadence, with their own
order value, basket size, discount habit and category habit. A share of customers changes exactly one
thing at a known date (CHANGE_KINDS): the truth says who, what, which way and when. Everyone else
never changes and never stops: whatever the pipeline reports about them is a false alarm.
Vectorized numpy; the same arguments give the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from quimbi_pipeline.sources.demo import CATEGORIES, id_strings
from quimbi_pipeline.sources.young import (
    CADENCE_DAYS,
    DAY_S,
    REGULAR_SHAPE,
    renewal_times,
)

CADENCE_P = np.array([0.35, 0.3, 0.35])
VALUE_LEVELS = np.array([20.0, 60.0, 300.0])
BASKET_EXTRA = np.array([0.2, 2.0, 8.0])  # items = 1 + Poisson(extra)
ORDER_VALUE_NOISE = 0.25  # sd of log(order value) around the customer's level
CATEGORY_LOYALTY = 0.9  # a category-loyal customer's orders in their favourite (the rest uniform over all)
# What a change changes to (the kinds below): cadence in days, order value factor, discount share, basket extra.
CADENCE_AFTER = {"frequency_drop": 90.0, "frequency_rise": 7.0}
VALUE_FACTOR_AFTER = {"value_drop": 0.1, "value_rise": 5.0}
DISCOUNT_SHARE_AFTER = 0.8
BASKET_EXTRA_AFTER = 8.0
# kind -> (axis, direction of the change on the axis' ladder)
CHANGE_KINDS = {
    "frequency_drop": ("purchase_frequency", "degrading"),  # to one order a quarter
    "frequency_rise": ("purchase_frequency", "improving"),  # monthly buyers to weekly
    "value_drop": ("purchase_value", "degrading"),  # to a tenth of the order value ($300 -> $30)
    "value_rise": ("purchase_value", "improving"),  # to five times
    "basket_rise": ("basket_size", "improving"),  # 1.2 items -> 9 items
    "discount_rise": ("discount_sensitivity", "degrading"),  # full price -> 80% of orders discounted
    "category_spread": ("category_exploration", "improving"),  # one favourite category -> all of them
}


@dataclass(frozen=True)
class PlantedData:
    orders: pd.DataFrame
    # customers, the truth: customer_id, buyer_type, cadence_days, change_kind, change_axis, change_direction, change_ts, and each
    # customer's own parameters (gap_shape, order_value, basket_extra, discount_share, category_loyal, favorite_category)
    customers: pd.DataFrame


def eligible_kinds(cadence_days, order_value, basket_extra, discount_share, category_loyal) -> dict[str, np.ndarray]:
    """Per kind of change, which customers it can happen to (arrays of the customers' parameters in, masks out):
    the rise of frequency applies to monthly buyers, a basket rise to small baskets, a discount rise to full-price
    buyers, a category spread to loyal ones. generate_planted assigns kinds by it; detection_bound scores by it."""
    cadence_days, order_value = np.asarray(cadence_days, float), np.asarray(order_value, float)
    return {
        "frequency_drop": np.ones(cadence_days.size, dtype=bool),
        "frequency_rise": cadence_days == 30.0,
        "value_drop": order_value >= 40,
        "value_rise": order_value <= 200,
        "basket_rise": np.asarray(basket_extra, float) <= 1.0,
        "discount_rise": np.asarray(discount_share, float) <= 0.5,
        "category_spread": np.asarray(category_loyal, bool),
    }


def generate_planted(n_customers: int = 3000, seed: int = 0, start: str = "2025-06-01", end: str = "2026-10-31",
                     changes_from: str = "2026-03-01", change_share: float = 0.25, store_id: str = "planted") -> PlantedData:
    """Changes fall uniformly in [changes_from, end - 60 days], so every change has 60 days after it."""
    rng = np.random.default_rng(seed)
    n = n_customers
    t0, t_end = pd.Timestamp(start).value / 1e9, (pd.Timestamp(end) + pd.Timedelta(days=1)).value / 1e9
    c0, c1 = pd.Timestamp(changes_from).value / 1e9, t_end - 60 * DAY_S
    regular = rng.random(n) < 0.5
    shape = np.where(regular, REGULAR_SHAPE, 1.0)
    cadence = CADENCE_DAYS[rng.choice(3, n, p=CADENCE_P)]
    value = VALUE_LEVELS[rng.choice(3, n, p=[0.4, 0.4, 0.2])] * np.exp(rng.normal(0, 0.15, n))
    basket = BASKET_EXTRA[rng.choice(3, n, p=[0.5, 0.3, 0.2])]
    discount_share = np.where(rng.random(n) < 0.3, 0.7, 0.05)
    favorite = rng.integers(0, len(CATEGORIES), n)
    loyal_to_category = rng.random(n) < 0.6
    join = t0 + rng.uniform(0, 90, n) * DAY_S

    kinds = np.array(list(CHANGE_KINDS))
    kind = np.where(rng.random(n) < change_share, kinds[rng.integers(0, len(kinds), n)], "")
    # A kind needs room to change: a frequency rise that has none becomes a drop, a value change the other one.
    room = eligible_kinds(cadence, value, basket, discount_share, loyal_to_category)
    kind = np.where((kind == "frequency_rise") & ~room["frequency_rise"], "frequency_drop", kind)
    kind = np.where((kind == "value_drop") & ~room["value_drop"], "value_rise", kind)
    kind = np.where((kind == "value_rise") & ~room["value_rise"], "value_drop", kind)
    for without_room in ("basket_rise", "discount_rise", "category_spread"):
        kind = np.where((kind == without_room) & ~room[without_room], "", kind)
    changed = kind != ""
    change_t = np.where(changed, rng.uniform(c0, c1, n), np.inf)

    cadence_after = np.select([kind == k for k in CADENCE_AFTER], list(CADENCE_AFTER.values()), cadence)
    # The joining order starts the clock: the first gap is a whole one (a running start made it a fraction of the cadence).
    c_before, t_before = renewal_times(join, np.minimum(change_t, t_end), cadence, shape, rng, running=False)
    has_after = np.flatnonzero(changed)
    c_after, t_after = renewal_times(change_t[has_after], np.full(has_after.size, t_end), cadence_after[has_after], shape[has_after], rng)
    c_after = has_after[c_after]
    cust = np.concatenate([np.arange(n), c_before, c_after])  # everyone's first order at joining
    ts = np.concatenate([join, t_before, t_after])
    order = np.lexsort((ts, cust))
    cust, ts = cust[order], ts[order]
    after = ts >= change_t[cust]
    m = cust.size

    k = kind[cust]
    factor = np.select([after & (k == kind_) for kind_ in VALUE_FACTOR_AFTER], list(VALUE_FACTOR_AFTER.values()), 1.0)
    gross = np.round(value[cust] * factor * np.exp(rng.normal(0, ORDER_VALUE_NOISE, m)), 2)
    share = np.where(after & (k == "discount_rise"), DISCOUNT_SHARE_AFTER, discount_share[cust])
    discounted = rng.random(m) < share
    discount = np.round(np.where(discounted, gross * rng.uniform(0.1, 0.25, m), 0.0), 2)
    extra = np.where(after & (k == "basket_rise"), BASKET_EXTRA_AFTER, basket[cust])
    items = 1 + rng.poisson(extra)
    loyal = loyal_to_category[cust] & ~(after & (k == "category_spread"))
    category = np.where(loyal & (rng.random(m) < CATEGORY_LOYALTY), favorite[cust], rng.integers(0, len(CATEGORIES), m))

    customer_ids = id_strings("p", np.arange(n), width=6)
    secs = np.floor(ts).astype("int64")
    orders = pd.DataFrame({
        "order_id": id_strings("q", np.arange(m), width=8), "customer_id": customer_ids[cust], "store_id": store_id,
        "order_ts": (secs * 1_000_000).astype("datetime64[us]"), "order_total": np.round(gross - discount, 2),
        "discount_total": discount, "item_count": items.astype("int64"),
        "category": pd.Categorical.from_codes(category, categories=CATEGORIES).astype(str),
    })
    axis = np.array([CHANGE_KINDS[x][0] if x else None for x in kinds], dtype=object)
    direction = np.array([CHANGE_KINDS[x][1] if x else None for x in kinds], dtype=object)
    kind_index = {x: i for i, x in enumerate(kinds)}
    codes = np.array([kind_index.get(x, -1) for x in kind])  # len(kinds) names, n customers: an index lookup
    customers = pd.DataFrame({
        "customer_id": customer_ids.to_numpy(object), "buyer_type": np.where(regular, "regular", "poisson"), "cadence_days": cadence,
        "change_kind": np.where(changed, kind, None), "change_axis": np.where(codes >= 0, axis[np.maximum(codes, 0)], None),
        "change_direction": np.where(codes >= 0, direction[np.maximum(codes, 0)], None),
        "change_ts": pd.to_datetime(np.where(changed, change_t, np.nan), unit="s"),
        "gap_shape": shape, "order_value": value, "basket_extra": basket, "discount_share": discount_share,
        "category_loyal": loyal_to_category, "favorite_category": CATEGORIES[favorite],
    })
    return PlantedData(orders, customers)
