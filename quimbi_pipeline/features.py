"""Behavioral features of each customer as of a date, grouped by axis (pure pandas/numpy).

Point in time: callers pass orders already cut at D + 1 day (orders.orders_as_of); nothing here
looks at later orders. Purchases are orders with order_total >= 0; negative totals are returns,
which count in lifetime_value (net) but not as purchases.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quimbi_pipeline import orders as orders_mod

log = logging.getLogger(__name__)

DAYS_PER_MONTH = 30.4375
NS_PER_DAY = 86_400 * 10**9


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    higher_is_better: bool
    log_scale: bool  # clustered as log1p(value): counts and money are heavy-tailed


@dataclass(frozen=True)
class AxisSpec:
    name: str
    features: tuple[FeatureSpec, ...]
    requires: str | None  # optional order column the axis needs
    ladder: tuple[str, ...]  # segment names, worse -> better

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


AXES: tuple[AxisSpec, ...] = (
    AxisSpec(
        "purchase_frequency",
        (FeatureSpec("orders_per_month", True, True), FeatureSpec("avg_days_between_orders", False, True)),
        None,
        ("rare", "infrequent", "occasional", "regular", "frequent", "very_frequent"),
    ),
    AxisSpec(
        "purchase_value",
        (FeatureSpec("avg_order_value", True, True), FeatureSpec("median_order_value", True, True)),
        None,
        ("minimal_spender", "low_spender", "budget_spender", "mid_spender", "high_spender", "premium_spender"),
    ),
    AxisSpec(
        "loyalty_trajectory",
        (FeatureSpec("tenure_days", True, True), FeatureSpec("activity_trend", True, False)),
        None,
        ("fading", "cooling", "steady", "committed", "growing", "loyal"),
    ),
    AxisSpec(
        "category_exploration",
        (FeatureSpec("top_category_share", False, False), FeatureSpec("category_entropy", True, False)),
        "category",
        ("single_category", "narrow", "focused", "varied", "broad", "explorer"),
    ),
    AxisSpec(
        "discount_sensitivity",
        (FeatureSpec("discounted_order_share", False, False), FeatureSpec("avg_discount_rate", False, False)),
        "discount_total",
        ("deal_dependent", "deal_driven", "deal_responsive", "occasional_deal", "mostly_full_price", "full_price"),
    ),
    AxisSpec(
        "basket_size",
        (FeatureSpec("avg_items_per_order", True, True), FeatureSpec("multi_item_order_share", True, False)),
        "item_count",
        ("single_item", "small_basket", "modest_basket", "medium_basket", "large_basket", "bulk_buyer"),
    ),
)
AXIS_BY_NAME = {a.name: a for a in AXES}
TREND_DAYS = 90


def available_axes(optional_columns: tuple[str, ...] | list[str]) -> list[AxisSpec]:
    axes = []
    for axis in AXES:
        if axis.requires is None or axis.requires in optional_columns:
            axes.append(axis)
        else:
            log.info("axis %s skipped: orders have no %r column", axis.name, axis.requires)
    return axes


def _group_sum(codes: np.ndarray, n: int, weights: np.ndarray | None = None) -> np.ndarray:
    return np.bincount(codes, weights=weights, minlength=n).astype("float64")


def compute_customer_features(
    orders: pd.DataFrame,
    as_of: pd.Timestamp,
    *,
    optional_columns: tuple[str, ...] | list[str] = (),
    window_days: int = 365,
) -> pd.DataFrame:
    """One row per customer with at least one purchase, indexed by customer_id (sorted).

    Columns: summary (total_orders, lifetime_value, first/last order, days_since_*, tenure_months),
    BTYD inputs in weeks (btyd_x repeat purchase days, btyd_t_x, btyd_T, btyd_monetary mean of the
    repeat days' spend), and every available axis feature.
    Frequency uses the last `window_days` before D; value, basket, discount and category features use
    the customer's own last `window_days` of purchases, so a lapsed customer keeps their profile of taste.
    """
    as_of_day = orders_mod.as_of_day(as_of)
    end_ns = (as_of_day + pd.Timedelta(days=1)).value
    as_of_day_ns = as_of_day.value
    codes_all, customers = pd.factorize(orders["customer_id"], sort=True)
    ts_all = orders["order_ts"].to_numpy("datetime64[ns]").view("int64")
    total_all = orders["order_total"].to_numpy("float64")
    n_all = customers.size

    lifetime_value = _group_sum(codes_all, n_all, total_all)
    purchase = total_all >= 0
    codes = codes_all[purchase]
    ts = ts_all[purchase]
    total = total_all[purchase]
    n_purchases = _group_sum(codes, n_all)
    has_purchase = n_purchases > 0
    if not has_purchase.all():
        log.info("%d customer(s) have only returns and no purchase: no profile", int((~has_purchase).sum()))

    by_customer = pd.Series(ts).groupby(codes)
    first_ts = by_customer.min().reindex(range(n_all), fill_value=end_ns).to_numpy()
    last_ts = by_customer.max().reindex(range(n_all), fill_value=end_ns).to_numpy()

    first_day = (first_ts // NS_PER_DAY) * NS_PER_DAY
    days_since_first = (as_of_day_ns - first_day) / NS_PER_DAY
    days_since_last = (end_ns - last_ts) / NS_PER_DAY

    # BTYD inputs: purchase days (several orders on one day are one purchase, as in CDNOW).
    day = ts // NS_PER_DAY
    day_frame = pd.DataFrame({"c": codes, "d": day, "v": total})
    per_day = day_frame.groupby(["c", "d"], sort=True)["v"].sum().reset_index()
    n_days = _group_sum(per_day["c"].to_numpy(), n_all)
    first_day_spend = per_day.groupby("c")["v"].first().reindex(range(n_all)).to_numpy()
    day_spend_sum = _group_sum(per_day["c"].to_numpy(), n_all, per_day["v"].to_numpy())
    x = np.maximum(n_days - 1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        monetary = np.where(x > 0, (day_spend_sum - first_day_spend) / x, 0.0)
    t_x_weeks = ((last_ts // NS_PER_DAY) * NS_PER_DAY - first_day) / NS_PER_DAY / 7.0
    T_weeks = days_since_first / 7.0

    out = pd.DataFrame(index=pd.Index(customers, name="customer_id"))
    out["total_orders"] = n_purchases.astype("int64")
    out["lifetime_value"] = lifetime_value
    out["first_order_ts"] = pd.to_datetime(first_ts, unit="ns", errors="coerce")
    out["last_order_ts"] = pd.to_datetime(last_ts, unit="ns", errors="coerce")
    out["days_since_first_order"] = days_since_first
    out["days_since_last_order"] = days_since_last
    out["tenure_months"] = days_since_first / DAYS_PER_MONTH
    out["btyd_x"] = x
    out["btyd_t_x"] = t_x_weeks
    out["btyd_T"] = T_weeks
    out["btyd_monetary"] = monetary

    # Frequency over the absolute window before D (a customer who stops buying slows down).
    window_ns = window_days * NS_PER_DAY
    in_abs_window = ts >= end_ns - window_ns
    eff_window = np.clip(days_since_first + 1, 30, window_days)
    out["orders_per_month"] = _group_sum(codes[in_abs_window], n_all) / eff_window * DAYS_PER_MONTH
    recent = ts >= end_ns - TREND_DAYS * NS_PER_DAY
    recent_rate = _group_sum(codes[recent], n_all) / np.clip(days_since_first + 1, 1, TREND_DAYS)
    window_rate = _group_sum(codes[in_abs_window], n_all) / np.clip(days_since_first + 1, 1, window_days)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["activity_trend"] = np.clip(np.where(window_rate > 0, recent_rate / window_rate, 0.0), 0.0, 5.0)
    out["tenure_days"] = days_since_first
    # Lifetime mean gap between purchase days; a one-time buyer's gap is at least their age.
    with np.errstate(invalid="ignore", divide="ignore"):
        out["avg_days_between_orders"] = np.where(x > 0, t_x_weeks * 7.0 / np.maximum(x, 1), days_since_first)

    # Taste features over the customer's own last window of purchases.
    in_rel = ts >= last_ts[codes] - window_ns
    rc = codes[in_rel]
    rel_n = _group_sum(rc, n_all)
    rel_total = total[in_rel]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["avg_order_value"] = _group_sum(rc, n_all, rel_total) / rel_n
    out["median_order_value"] = pd.Series(rel_total).groupby(rc).median().reindex(range(n_all)).to_numpy()

    pur_orders = orders.loc[purchase]
    if "discount_total" in optional_columns:
        disc = pur_orders["discount_total"].to_numpy("float64")[in_rel]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["discounted_order_share"] = _group_sum(rc, n_all, (disc > 0).astype("float64")) / rel_n
            gross = _group_sum(rc, n_all, rel_total + disc)
            out["avg_discount_rate"] = np.where(gross > 0, _group_sum(rc, n_all, disc) / gross, 0.0)
    if "item_count" in optional_columns:
        items = pur_orders["item_count"].to_numpy("float64")[in_rel]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["avg_items_per_order"] = _group_sum(rc, n_all, items) / rel_n
            out["multi_item_order_share"] = _group_sum(rc, n_all, (items >= 2).astype("float64")) / rel_n
    if "category" in optional_columns:
        cat_codes, cats = pd.factorize(pur_orders["category"].to_numpy()[in_rel])
        pair = pd.DataFrame({"c": rc, "k": cat_codes}).groupby(["c", "k"], sort=False).size()
        pc = pair.index.get_level_values(0).to_numpy()
        cnt = pair.to_numpy().astype("float64")
        top = pd.Series(cnt).groupby(pc).max().reindex(range(n_all), fill_value=0.0).to_numpy()
        nlogn = _group_sum(pc, n_all, cnt * np.log(cnt))
        with np.errstate(invalid="ignore", divide="ignore"):
            entropy = np.where(rel_n > 0, np.log(np.maximum(rel_n, 1)) - nlogn / rel_n, 0.0)
        norm = np.log(len(cats)) if len(cats) > 1 else 1.0
        with np.errstate(invalid="ignore", divide="ignore"):
            out["top_category_share"] = np.where(rel_n > 0, top / rel_n, 1.0)
        out["category_entropy"] = np.clip(entropy / norm, 0.0, 1.0)

    return out.loc[has_purchase]


def active_mask(features: pd.DataFrame, active_days: int) -> np.ndarray:
    """Active at D: a purchase within the last `active_days` days up to and including D."""
    return (features["days_since_last_order"] <= active_days).to_numpy()
