"""Deterministic synthetic orders with planted segments and planted behavior changes.

Each customer gets a planted class on five axes (frequency, value, basket size, discount
sensitivity, category exploration), ranked worse -> better as the pipeline orders segments. Some
customers stop buying (death_ts) and some change class on one axis at a known date (change_ts).
The ground truth is returned beside the orders so tests can check what the pipeline finds.
Everything is vectorized numpy; the same arguments give the same rows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

CATEGORIES = np.array(["books", "music", "electronics", "home", "fashion", "beauty", "toys", "sports"])
# Planted class parameters, index = rank worse -> better.
FREQUENCY_PER_MONTH = np.array([0.25, 1.0, 3.0])
ORDER_VALUE = np.array([20.0, 60.0, 180.0])
EXTRA_ITEMS = np.array([0.3, 3.0, 15.0])  # items per order = 1 + Poisson(lambda)
DISCOUNT_SHARE = np.array([0.7, 0.05])  # rank 0 = deal-dependent, rank 1 = full price
DISCOUNT_RATE = np.array([0.25, 0.10])
FAVORITE_SHARE = np.array([0.92, 0.0])  # rank 0 = single-category, rank 1 = explorer (uniform)
PLANTED_AXES = ("purchase_frequency", "purchase_value", "basket_size", "discount_sensitivity", "category_exploration")
CHANGEABLE_AXES = ("purchase_frequency", "purchase_value", "basket_size")
DAY_S = 86_400.0


@dataclass(frozen=True)
class DemoData:
    orders: pd.DataFrame
    customers: pd.DataFrame  # ground truth: one row per customer

    def planted(self, axis: str) -> pd.Series:
        """Planted class (rank worse -> better) on `axis` at the end of history, indexed by customer_id."""
        after = self.customers["change_axis"].eq(axis)
        cls = self.customers[f"planted_{axis}"].where(~after, self.customers["class_after"])
        return pd.Series(cls.to_numpy(), index=self.customers["customer_id"].to_numpy(), name=axis)


def generate_demo(
    n_customers: int = 3000,
    n_stores: int = 3,
    seed: int = 7,
    start: str = "2024-01-01",
    end: str = "2026-10-31",
    change_share: float = 0.10,
    death_share: float = 0.2,
    return_share: float = 0.02,
    one_time_share: float = 0.15,
    rate_scale: float = 1.0,
    young_customers: int = 0,
) -> DemoData:
    """`rate_scale` multiplies every purchase rate (1.0 = 0.25, 1 and 3 orders a month by frequency class).
    `young_customers` > 0 adds YOUNG_STORE: a store opened 4 months before `end` (sources/young.py), where a fifth
    of the regular buyers stopped 3 to 8 weeks ago; `quimbi demo` shows it with 300."""
    if n_customers < 1 or n_stores < 1:
        raise ValueError("demo needs at least one customer and one store")
    if not rate_scale > 0:
        raise ValueError(f"demo rate_scale must be > 0, got {rate_scale}")
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp(start).value / 1e9
    t_end = (pd.Timestamp(end) + pd.Timedelta(days=1)).value / 1e9
    span = t_end - t0
    n = n_customers

    # Stores of decreasing size (store_a is largest).
    weights = 1.0 / np.arange(1, n_stores + 1)
    store_idx = rng.choice(n_stores, size=n, p=weights / weights.sum())
    store_names = np.array(demo_store_names(n_stores))

    join = t0 + rng.uniform(0, 0.5, n) * span
    dies = rng.random(n) < death_share
    death = np.where(dies, join + rng.uniform(60 * DAY_S, span, n), np.inf)
    death = np.where(death >= t_end, np.inf, death)
    # One-time buyers join any time and never come back (dead one second after their first order).
    one_time = rng.random(n) < one_time_share
    join = np.where(one_time, t0 + rng.uniform(0, 1, n) * (span - DAY_S), join)
    death = np.where(one_time, join + 1.0, death)

    classes = {
        "purchase_frequency": np.where(one_time, 0, rng.choice(3, n, p=[0.45, 0.4, 0.15])),
        "purchase_value": rng.choice(3, n, p=[0.4, 0.4, 0.2]),
        "basket_size": rng.choice(3, n, p=[0.5, 0.3, 0.2]),
        "discount_sensitivity": rng.choice(2, n, p=[0.3, 0.7]),
        "category_exploration": rng.choice(2, n, p=[0.6, 0.4]),
    }
    favorite = rng.integers(0, len(CATEGORIES), n)
    value_mult = np.exp(rng.normal(0, 0.12, n))

    # Planted changes in the last 120 days, for customers alive then.
    change_ts = t_end - rng.uniform(10, 120, n) * DAY_S
    changed = (rng.random(n) < change_share) & (death > change_ts) & (join < change_ts - 90 * DAY_S)
    change_axis_idx = rng.integers(0, len(CHANGEABLE_AXES), n)
    shift = rng.integers(1, 3, n)  # move to another of the three classes
    class_after = np.full(n, -1)
    for j, axis in enumerate(CHANGEABLE_AXES):
        sel = changed & (change_axis_idx == j)
        class_after[sel] = (classes[axis][sel] + shift[sel]) % 3
    change_ts = np.where(changed, change_ts, np.inf)

    # Orders: one at join, then a Poisson process at the customer's rate until death or end,
    # with the rate switching at change_ts for frequency changes.
    stop = np.minimum(death, t_end)
    freq_after = np.where(changed & (change_axis_idx == 0), class_after, classes["purchase_frequency"])
    rate_before = FREQUENCY_PER_MONTH[classes["purchase_frequency"]] * rate_scale / (30.4375 * DAY_S)
    rate_after = FREQUENCY_PER_MONTH[freq_after] * rate_scale / (30.4375 * DAY_S)
    seg1_end = np.minimum(stop, change_ts)
    len1 = np.maximum(seg1_end - join, 0)
    len2 = np.maximum(stop - np.maximum(change_ts, join), 0)
    n1 = rng.poisson(rate_before * len1)
    n2 = rng.poisson(rate_after * len2)
    cust = np.concatenate([np.arange(n), np.repeat(np.arange(n), n1), np.repeat(np.arange(n), n2)])
    ts = np.concatenate([
        join,
        np.repeat(join, n1) + rng.random(n1.sum()) * np.repeat(len1, n1),
        np.repeat(np.maximum(change_ts, join), n2) + rng.random(n2.sum()) * np.repeat(len2, n2),
    ])
    order = np.lexsort((ts, cust))
    cust, ts = cust[order], ts[order]
    m = cust.size

    def class_at(axis: str) -> np.ndarray:
        cls = classes[axis][cust]
        if axis in CHANGEABLE_AXES:
            j = CHANGEABLE_AXES.index(axis)
            after = changed[cust] & (change_axis_idx[cust] == j) & (ts >= change_ts[cust])
            cls = np.where(after, class_after[cust], cls)
        return cls

    gross = ORDER_VALUE[class_at("purchase_value")] * value_mult[cust] * np.exp(rng.normal(0, 0.3, m))
    disc_cls = classes["discount_sensitivity"][cust]
    discounted = rng.random(m) < DISCOUNT_SHARE[disc_cls]
    discount = np.where(discounted, gross * DISCOUNT_RATE[disc_cls], 0.0)
    net = np.round(gross - discount, 2)
    discount = np.round(discount, 2)
    items = 1 + rng.poisson(EXTRA_ITEMS[class_at("basket_size")])
    explorer = classes["category_exploration"][cust] == 1
    pick_favorite = ~explorer & (rng.random(m) < FAVORITE_SHARE[0])
    category = np.where(pick_favorite, favorite[cust], rng.integers(0, len(CATEGORIES), m))

    # Returns: a few orders are partly refunded a few days later, as a negative order.
    ret = rng.random(m) < return_share
    ret_ts = ts[ret] + rng.uniform(2, 20, ret.sum()) * DAY_S
    keep_ret = ret_ts < t_end
    ret_idx = np.flatnonzero(ret)[keep_ret]
    ret_ts = ret_ts[keep_ret]
    r = ret_idx.size
    all_cust = np.concatenate([cust, cust[ret_idx]])
    all_ts = np.floor(np.concatenate([ts, ret_ts])).astype("int64")  # whole seconds: CSV round trips are exact
    chrono = np.lexsort((np.arange(all_ts.size), all_ts))  # order ids follow time
    all_cust, all_ts = all_cust[chrono], all_ts[chrono]
    all_net = np.concatenate([net, -np.round(net[ret_idx] * rng.uniform(0.2, 1.0, r), 2)])[chrono]
    all_disc = np.concatenate([discount, np.zeros(r)])[chrono]
    all_items = np.concatenate([items, np.zeros(r, dtype=items.dtype)])[chrono]
    all_cat = np.concatenate([category, category[ret_idx]])[chrono]

    customer_ids = id_strings("c", np.arange(n), width=7)
    orders = pd.DataFrame({
        "order_id": id_strings("o", np.arange(all_cust.size), width=9),
        "customer_id": customer_ids[all_cust],
        "store_id": pd.Categorical.from_codes(store_idx[all_cust], categories=store_names).astype("string[pyarrow]"),
        "order_ts": (all_ts * 1_000_000).astype("datetime64[us]"),
        "order_total": all_net,
        "discount_total": all_disc,
        "item_count": all_items.astype("int64"),
        "category": pd.Categorical.from_codes(all_cat, categories=CATEGORIES).astype("string[pyarrow]"),
    })

    def to_ts(seconds: np.ndarray) -> pd.Series:
        finite = np.isfinite(seconds)
        out = pd.Series(pd.NaT, index=range(n), dtype="datetime64[us]")
        out[finite] = pd.to_datetime(np.floor(seconds[finite]).astype("int64"), unit="s")
        return out

    customers = pd.DataFrame({
        "customer_id": customer_ids,
        "store_id": store_names[store_idx],
        "join_ts": to_ts(join),
        "death_ts": to_ts(death),
        **{f"planted_{axis}": classes[axis] for axis in PLANTED_AXES},
        "change_axis": pd.Series(np.where(changed, np.array(CHANGEABLE_AXES)[change_axis_idx], None), dtype="object"),
        "change_ts": to_ts(change_ts),
        "class_after": np.where(changed, class_after, -1),
    })
    if young_customers > 0:
        orders, customers = _with_young_store(orders, customers, young_customers, seed, end)
    return DemoData(orders=orders, customers=customers)


YOUNG_STORE = "store_new"


def _with_young_store(orders: pd.DataFrame, customers: pd.DataFrame, n: int, seed: int, end: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    from quimbi_pipeline.sources.young import generate_young

    opened = pd.Timestamp(end) - pd.DateOffset(months=4) + pd.Timedelta(days=1)
    young = generate_young(n, 4, seed=seed, start=str(opened.date()), store_id=YOUNG_STORE)
    extra = young.orders[young.orders["order_ts"] < pd.Timestamp(end) + pd.Timedelta(days=1)]
    extra = extra.assign(order_id="n" + extra["order_id"].astype(str), discount_total=0.0)
    combined = pd.concat([orders, extra[orders.columns].astype({c: orders[c].dtype for c in orders.columns})], ignore_index=True)
    first = extra.groupby("customer_id")["order_ts"].min()
    truth = pd.DataFrame({"customer_id": pd.array(first.index, dtype="string[pyarrow]"), "store_id": YOUNG_STORE,
                          "join_ts": first.to_numpy("datetime64[us]")})
    return combined, pd.concat([customers, truth], ignore_index=True)


def demo_store_names(n_stores: int) -> list[str]:
    return [f"store_{chr(ord('a') + i)}" if i < 26 else f"store_{i}" for i in range(n_stores)]


def id_strings(prefix: str, numbers: np.ndarray, width: int) -> pd.Series:
    """prefix + zero-padded number, built in Arrow (no Python string per row)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    digits = pc.utf8_lpad(pc.cast(pa.array(numbers, type=pa.int64()), pa.string()), width=width, padding="0")
    return pd.array(pc.binary_join_element_wise(prefix, digits, ""), dtype="string[pyarrow]")


def parse_demo_uri(uri: str) -> dict:
    """`demo` or `demo:customers=100000,stores=3,seed=7,start=2024-01-01,end=2026-10-31,young_customers=300`."""
    params: dict = {}
    if ":" in uri:
        for part in uri.split(":", 1)[1].split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep:
                raise ValueError(f"demo source {uri!r}: expected key=value, got {part!r}")
            if key in ("customers", "stores", "seed", "young_customers"):
                params[{"customers": "n_customers", "stores": "n_stores"}.get(key, key)] = int(value)
            elif key in ("start", "end"):
                params[key] = str(pd.Timestamp(value).date())
            elif key in ("change_share", "death_share", "return_share", "one_time_share", "rate_scale"):
                params[key] = float(value)
            else:
                raise ValueError(f"demo source {uri!r}: unknown parameter {key!r} (customers, stores, seed, start, end, change_share, death_share, return_share, one_time_share, rate_scale, young_customers)")
    return params


@functools.lru_cache(maxsize=2)
def _cached_demo(items: tuple) -> DemoData:
    return generate_demo(**dict(items))


def demo_from_uri(uri: str) -> DemoData:
    """Cached per process: a multi-date run generates the demo once."""
    return _cached_demo(tuple(sorted(parse_demo_uri(uri).items())))
