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
    adaptive: AdaptiveWindow | None = None,
) -> pd.DataFrame:
    """One row per customer with at least one purchase, indexed by customer_id (sorted).

    Columns: summary (total_orders, lifetime_value, first/last order, days_since_*, tenure_months),
    BTYD inputs in weeks (btyd_x repeat purchase days, btyd_t_x, btyd_T, btyd_monetary mean of the
    repeat days' spend), and every available axis feature.
    Frequency uses the last `window_days` before D; value, basket, discount and category features use
    the customer's own last `window_days` of purchases, so a lapsed customer keeps their profile of taste.
    With `adaptive` (the responsive option, off by default) each axis' features are computed over the
    customer's purchases after a detected change of that axis' per-order signal (adaptive_cut), so a
    change shows within a few orders while an unchanged customer keeps the full, low-noise window.
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
    # One int64 key per (customer, day), ordered as (customer, day): lighter than a two-column group-by.
    first_day_all = int(day.min()) if day.size else 0
    span = int(day.max()) - first_day_all + 1 if day.size else 1
    day_key = codes.astype("int64") * span + (day - first_day_all)
    spend_per_day = pd.Series(total).groupby(day_key, sort=True).sum()
    day_codes = (spend_per_day.index.to_numpy() // span).astype(codes.dtype)
    day_spend = spend_per_day.to_numpy()
    n_days = _group_sum(day_codes, n_all)
    is_first_day = np.r_[True, day_codes[1:] != day_codes[:-1]] if day_codes.size else np.zeros(0, dtype=bool)
    first_day_spend = np.full(n_all, np.nan)
    first_day_spend[day_codes[is_first_day]] = day_spend[is_first_day]
    day_spend_sum = _group_sum(day_codes, n_all, day_spend)
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

    def purchase_column(name: str) -> np.ndarray:
        # One column of the purchases (a copy of the whole orders frame is 1.8 GB at 20M orders).
        return orders[name].to_numpy()[purchase]

    rank = _rank_from_newest(codes, ts) if adaptive is not None else None

    def window_for(signal) -> np.ndarray:
        """The purchases an axis' features are computed over: the window, cut after a detected change of
        the per-purchase `signal()` (adaptive; the signal is only computed then)."""
        if adaptive is None:
            return in_rel
        x = signal()
        cut = adaptive_cut(codes, rank, in_rel & np.isfinite(x), x, n_all, adaptive)
        return np.where(cut[codes] > 0, rank < cut[codes], in_rel)

    if adaptive is not None:
        recent_days, recent_n = adaptive_rate_cut(codes, ts, end_ns, days_since_first, n_all, adaptive, window_days, days_since_last)
        cut = recent_days > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            out["orders_per_month"] = np.where(cut, recent_n / np.maximum(recent_days, 1) * DAYS_PER_MONTH, out["orders_per_month"].to_numpy())
            out["avg_days_between_orders"] = np.where(
                cut, np.where(recent_n > 0, recent_days / np.maximum(recent_n, 1), np.maximum(recent_days, days_since_last)),
                out["avg_days_between_orders"].to_numpy())

    use = window_for(lambda: np.log1p(np.maximum(total, 0.0)))
    rel_total = total[use]
    rel_n = _group_sum(codes[use], n_all)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["avg_order_value"] = _group_sum(codes[use], n_all, rel_total) / rel_n
    out["median_order_value"] = pd.Series(rel_total).groupby(codes[use]).median().reindex(range(n_all)).to_numpy()

    if "discount_total" in optional_columns:
        disc_all = purchase_column("discount_total").astype("float64")
        with np.errstate(invalid="ignore", divide="ignore"):
            use = window_for(lambda: np.where(total + disc_all > 0, disc_all / (total + disc_all), 0.0))
        dc, disc, n_use = codes[use], disc_all[use], _group_sum(codes[use], n_all)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["discounted_order_share"] = _group_sum(dc, n_all, (disc > 0).astype("float64")) / n_use
            gross = _group_sum(dc, n_all, total[use] + disc)
            out["avg_discount_rate"] = np.where(gross > 0, _group_sum(dc, n_all, disc) / gross, 0.0)
    if "item_count" in optional_columns:
        items_all = purchase_column("item_count").astype("float64")
        use = window_for(lambda: np.log1p(np.maximum(items_all, 0.0)))
        ic, items, n_use = codes[use], items_all[use], _group_sum(codes[use], n_all)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["avg_items_per_order"] = _group_sum(ic, n_all, items) / n_use
            out["multi_item_order_share"] = _group_sum(ic, n_all, (items >= 2).astype("float64")) / n_use
    rc = codes[in_rel]
    rel_n = _group_sum(rc, n_all)
    if "category" in optional_columns:
        # Codes from the Arrow strings (no Python string per order); pairs (customer, category) as one int64
        # key, grouped in order of first appearance as a two-column group-by would.
        category_codes, _ = pd.factorize(orders["category"])
        cat_codes = category_codes[purchase][in_rel]
        n_categories = np.unique(cat_codes).size
        code_span = int(cat_codes.max()) + 1 if cat_codes.size else 1
        pair_key = rc.astype("int64") * code_span + cat_codes
        pair = pd.Series(pair_key).groupby(pair_key, sort=False).size()
        pc = pair.index.to_numpy() // code_span
        cnt = pair.to_numpy().astype("float64")
        top = pd.Series(cnt).groupby(pc).max().reindex(range(n_all), fill_value=0.0).to_numpy()
        nlogn = _group_sum(pc, n_all, cnt * np.log(cnt))
        with np.errstate(invalid="ignore", divide="ignore"):
            entropy = np.where(rel_n > 0, np.log(np.maximum(rel_n, 1)) - nlogn / rel_n, 0.0)
        norm = np.log(n_categories) if n_categories > 1 else 1.0
        with np.errstate(invalid="ignore", divide="ignore"):
            out["top_category_share"] = np.where(rel_n > 0, top / rel_n, 1.0)
        out["category_entropy"] = np.clip(entropy / norm, 0.0, 1.0)

    return out.loc[has_purchase]


@dataclass(frozen=True)
class AdaptiveWindow:
    """ADWIN-style cut (Bifet & Gavaldà 2007, simplified to one cut): the newest m purchases form the
    window when their mean differs from the older purchases' by at least `z` standard errors; the
    purchase rate is cut the same way with Poisson tests (adaptive_rate_cut)."""

    z: float = 4.0
    min_recent: int = 2
    max_recent: int = 10
    min_older: int = 3
    # Purchase rate (frequency axis): a burst of the newest purchases, or a silence, against a Poisson of the older rate.
    rate_p: float = 3e-5  # about z = 4, one-sided
    min_older_days: int = 28


def adaptive_cut(codes: np.ndarray, rank: np.ndarray, eligible: np.ndarray, x: np.ndarray, n_all: int, rule: AdaptiveWindow) -> np.ndarray:
    """Per customer, the number m of newest eligible purchases after a change of x's mean (0: no change).

    z_m = (mean of the newest m - mean of the older ones) / (sigma * sqrt(1/m + 1/n_older)), sigma the
    store's pooled within-customer standard deviation of x; m is the one of largest |z| >= rule.z with
    rule.min_recent <= m <= rule.max_recent and at least rule.min_older older purchases. Vectorized:
    one bincount per m over the purchases of rank m - 1, nothing per customer.
    """
    c, r, v = codes[eligible], rank[eligible], x[eligible]
    n = _group_sum(c, n_all)
    total = _group_sum(c, n_all, v)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1), 0.0)
    dof = max(v.size - int((n > 0).sum()), 1)
    sigma = max(float(np.sqrt(np.sum((v - mean[c]) ** 2) / dof)), 1e-9)
    # Ranks among eligible purchases (an ineligible newest purchase, e.g. a first order without a gap, is skipped).
    order = np.lexsort((r, c))
    starts = np.flatnonzero(np.r_[True, c[order][1:] != c[order][:-1]]) if c.size else np.zeros(0, dtype="int64")
    eligible_rank = np.empty(c.size, dtype="int64")
    eligible_rank[order] = np.arange(c.size) - np.repeat(starts, np.diff(np.r_[starts, c.size]))
    n_recent = np.zeros(n_all)
    s_recent = np.zeros(n_all)
    best_z = np.zeros(n_all)
    best_m = np.zeros(n_all, dtype="int64")
    for m in range(1, rule.max_recent + 1):
        at = eligible_rank == m - 1
        n_recent += _group_sum(c[at], n_all)
        s_recent += _group_sum(c[at], n_all, v[at])
        if m < rule.min_recent:
            continue
        n_older = n - n_recent
        ok = (n_recent == m) & (n_older >= rule.min_older)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.abs(s_recent / n_recent - (total - s_recent) / n_older) / (sigma * np.sqrt(1.0 / n_recent + 1.0 / n_older))
        better = ok & (z >= rule.z) & (z > best_z)
        best_z[better] = z[better]
        best_m[better] = m
    # best_m counts eligible purchases; the caller cuts by rank among all purchases: map m to that rank.
    cut = np.zeros(n_all, dtype="int64")
    has = best_m > 0
    if has.any():
        at_cut = eligible_rank == (best_m[c] - 1)
        pick = at_cut & has[c]
        cut[c[pick]] = r[pick] + 1
    return cut


def adaptive_rate_cut(codes: np.ndarray, ts: np.ndarray, end_ns: int, days_since_first: np.ndarray, n_all: int,
                      rule: AdaptiveWindow, window_days: int, days_since_last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per customer, (L days, purchases in them) when the recent purchase rate is implausible under
    the customer's older rate, else (0, 0).

    Faster: the newest m purchases (m in [min_recent, max_recent]) fell within the last L days, with
    P(N(L) >= m) under Poisson(older rate * L) below rule.rate_p; slower: no purchase for the last L
    days (L = days since the last one), P = exp(-rate * L). The most significant wins. Older rate =
    the window's other purchases over its other days (at least min_older_days). Vectorized.
    """
    from scipy.stats import poisson

    history = np.clip(days_since_first + 1, 0, window_days)
    in_window = ts >= end_ns - window_days * NS_PER_DAY
    total_n = _group_sum(codes[in_window], n_all)
    rank = _rank_from_newest(codes, ts)
    best_p = np.full(n_all, rule.rate_p)
    best_days = np.zeros(n_all)
    best_n = np.zeros(n_all)
    for m in range(rule.min_recent, rule.max_recent + 1):
        at = in_window & (rank == m - 1)
        span = np.zeros(n_all)
        span[codes[at]] = np.maximum((end_ns - ts[at]) / NS_PER_DAY, 1.0)
        older_days = history - span
        ok = (span > 0) & (older_days >= rule.min_older_days)
        rate = np.maximum(total_n - m, 1.0) / np.maximum(older_days, 1.0)  # at least one purchase: no zero rate
        p = poisson.sf(m - 1, rate * span)
        better = ok & (p < best_p)
        best_p[better], best_days[better], best_n[better] = p[better], span[better], m
    silence = np.maximum(days_since_last, 1.0)
    older_days = history - silence
    rate = np.maximum(total_n, 1.0) / np.maximum(older_days, 1.0)
    p = np.exp(-rate * silence)
    better = (older_days >= rule.min_older_days) & (p < best_p)
    best_p[better], best_days[better], best_n[better] = p[better], silence[better], 0.0
    return best_days, best_n


def _rank_from_newest(codes: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """0 for each customer's newest purchase, 1 for the one before, ... (vectorized, ties by position)."""
    order = np.lexsort((-ts, codes))
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, sorted_codes.size]))
    rank = np.empty(codes.size, dtype="int64")
    rank[order] = np.arange(codes.size) - group_start
    return rank


def active_mask(features: pd.DataFrame, active_days: int) -> np.ndarray:
    """Active at D: a purchase within the last `active_days` days up to and including D."""
    return (features["days_since_last_order"] <= active_days).to_numpy()
