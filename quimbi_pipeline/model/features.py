"""Behavioral features of each customer as of a date, grouped by axis (pure pandas/numpy).

Point in time: callers pass orders already cut at D + 1 day (orders.orders_as_of); nothing here
looks at later orders. Purchases are orders with order_total >= 0; negative totals are returns,
which count in lifetime_value (net) but not as purchases.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quimbi_pipeline.model import gap_shapes
from quimbi_pipeline.model.change_points import (
    AxisChange,
    ChangeRule,
    binary_shift_change,
    count_dispersion,
    count_shift_change,
    mean_shift_change,
    merge_changes,
    newest_first_order,
    rate_change,
    unchanged_within_variance,
)
from quimbi_pipeline.sources import orders as orders_mod

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


@dataclass(frozen=True)
class FeatureStatistics:
    """The store's numbers that a customer's features are measured against: the change detectors' store priors
    (ENABLE_ADAPTIVE_WINDOWS) and the categories. Fitted over the customers whose features are computed, or given
    (compute_customer_features' `statistics`): customers computed in parts against the same statistics get the
    rows of one computation over them all."""

    shape_prior: gap_shapes.ShapePrior | None = None  # the mixture of gap shapes (adaptive)
    value_variance: float | None = None  # pooled within-customer variance of log order values (adaptive)
    items_dispersion: float | None = None  # quasi-Poisson dispersion of items beyond the first (adaptive)
    # In order of first appearance: a customer's modal category among ties is the earliest (features._modal).
    categories: tuple[str, ...] | None = None
    used_categories: int | None = None  # distinct categories of the purchases in the customers' windows (entropy's scale)


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


def sum_by_key(values: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct int64 keys ascending, the sum of `values` over each), exactly as
    `pd.Series(values).groupby(keys, sort=True).sum()` gives them, bit for bit.

    pandas hashes every key and then sorts the distinct ones (2.3 s of a 200,000-customer store's 6.5 s of
    features, spend per purchase day); one sort of the keys does both. pandas sums a group with Kahan
    compensation in row order, skipping NaN: a group of one finite value sums to 0.0 + value, and every other
    group (several values, or a non-finite one) is handed to pandas itself with its rows in their order."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]] if keys.size else np.zeros(0, dtype=bool)
    first_rows = np.flatnonzero(starts)
    first_values = values[order[first_rows]]
    sums = 0.0 + first_values  # -0.0 becomes 0.0, as in pandas' sum starting from 0.0
    several = np.diff(np.r_[first_rows, keys.size]) > 1
    pandas_groups = several | ~np.isfinite(first_values)
    if pandas_groups.any():
        rows = np.sort(order[pandas_groups[np.cumsum(starts) - 1]])  # those groups' rows, in the order given
        sums[pandas_groups] = pd.Series(values[rows]).groupby(keys[rows], sort=True).sum().to_numpy()
    return sorted_keys[first_rows], sums


def compute_customer_features(
    orders: pd.DataFrame,
    as_of: pd.Timestamp,
    *,
    optional_columns: tuple[str, ...] | list[str] = (),
    window_days: int = 365,
    adaptive: ChangeRule | None = None,
    occasion_days: int = 1,
    rows: np.ndarray | None = None,
) -> pd.DataFrame:
    """features_and_statistics' features: see there."""
    return features_and_statistics(orders, as_of, optional_columns=optional_columns, window_days=window_days, adaptive=adaptive,
                                   occasion_days=occasion_days, rows=rows)[0]


def features_and_statistics(
    orders: pd.DataFrame,
    as_of: pd.Timestamp,
    *,
    optional_columns: tuple[str, ...] | list[str] = (),
    window_days: int = 365,
    adaptive: ChangeRule | None = None,
    occasion_days: int = 1,
    rows: np.ndarray | None = None,
    statistics: FeatureStatistics | None = None,
) -> tuple[pd.DataFrame, FeatureStatistics]:
    """(features, the store's FeatureStatistics they were measured against). Features: one row per customer with at least one purchase, indexed by customer_id (sorted).

    Columns: summary (total_orders, lifetime_value, first/last order, days_since_*, tenure_months),
    BTYD inputs in weeks over purchase occasions of `occasion_days` (btyd_x repeat occasions, btyd_t_x the
    start of the last one, btyd_T, btyd_monetary mean spend of the repeat occasions, btyd_days_per_occasion;
    1 = purchase days, as in CDNOW's published fits), and every available axis feature.
    Frequency uses the last `window_days` before D; value, basket, discount and category features use
    the customer's own last `window_days` of purchases, so a lapsed customer keeps their profile of taste.
    With `adaptive` (ENABLE_ADAPTIVE_WINDOWS, off by default) each axis' features are computed over the
    customer's purchases after a change of that axis' behavior detected in their own order stream
    (change_points.py), so a change shows within a few orders and stays shown while it lasts, while an
    unchanged customer keeps the full, low-noise window; the evidence of each change is returned in
    CHANGE_PREFIX columns (`change:<axis>.since|before|after|evidence`).
    `rows` (a boolean mask) limits the orders read, as `orders.loc[rows]` would without copying the frame
    (a refit's cut at an earlier date: the whole frame is 1.9 GB at 20M orders).
    `statistics`: the store's, fitted elsewhere (a store's customers computed in parts); None: fitted on these orders.
    Every other number of a customer's row comes from their own orders only.
    """
    if statistics is not None and adaptive is not None and statistics.shape_prior is None:
        raise ValueError("feature statistics fitted without adaptive windows cannot measure features with them")
    as_of_day = orders_mod.as_of_day(as_of)
    end_ns = (as_of_day + pd.Timedelta(days=1)).value
    as_of_day_ns = as_of_day.value
    index = None if rows is None else np.flatnonzero(rows)

    def read(name: str) -> pd.Series:
        return orders[name] if index is None else orders[name].take(index)

    codes_all, customers = pd.factorize(read("customer_id"), sort=True)
    ts_all = read("order_ts").to_numpy("datetime64[ns]").view("int64")
    total_all = read("order_total").to_numpy("float64")
    n_all = customers.size

    lifetime_value = _group_sum(codes_all, n_all, total_all)
    purchase = total_all >= 0
    # Per-order arrays are dropped (del) as soon as their section is done: kept to the end, they were 240
    # bytes an order at the function's peak (5 GB at 20M orders).
    if purchase.all():  # no returns: the purchases are the orders, no copies
        codes, ts, total = codes_all, ts_all, total_all
    else:
        codes, ts, total = codes_all[purchase], ts_all[purchase], total_all[purchase]
    del codes_all, ts_all, total_all
    n_purchases = _group_sum(codes, n_all)
    has_purchase = n_purchases > 0
    if not has_purchase.all():
        log.info("%d customer(s) have only returns and no purchase: no profile", int((~has_purchase).sum()))

    # Unbuffered min / max on the dense codes (a pandas group-by factorized the 20M codes first: 3.2 s against 0.24).
    first_ts = np.full(n_all, np.iinfo(np.int64).max)
    np.minimum.at(first_ts, codes, ts)
    last_ts = np.full(n_all, np.iinfo(np.int64).min)
    np.maximum.at(last_ts, codes, ts)
    first_ts[~has_purchase] = last_ts[~has_purchase] = end_ns

    first_day = (first_ts // NS_PER_DAY) * NS_PER_DAY
    days_since_first = (as_of_day_ns - first_day) / NS_PER_DAY
    days_since_last = (end_ns - last_ts) / NS_PER_DAY

    # BTYD inputs: purchase days (several orders on one day are one purchase, as in CDNOW).
    day = ts // NS_PER_DAY
    # One int64 key per (customer, day), ordered as (customer, day): lighter than a two-column group-by.
    first_day_all = int(day.min()) if day.size else 0
    span = int(day.max()) - first_day_all + 1 if day.size else 1
    day_key = codes.astype("int64") * span + (day - first_day_all)
    del day
    day_keys, day_spend = sum_by_key(total, day_key)
    del day_key
    day_codes = (day_keys // span).astype(codes.dtype)
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
    if occasion_days == 1:
        out["btyd_x"], out["btyd_t_x"], out["btyd_monetary"] = x, t_x_weeks, monetary
        out["btyd_days_per_occasion"] = 1.0
    else:
        occ_x, occ_t_x, occ_monetary = _purchase_occasions(day_codes, day_keys % span + first_day_all,
                                                           day_spend, first_day // NS_PER_DAY, occasion_days, n_all)
        out["btyd_x"], out["btyd_t_x"], out["btyd_monetary"] = occ_x, occ_t_x, occ_monetary
        out["btyd_days_per_occasion"] = n_days / np.maximum(occ_x + 1, 1)
    out["btyd_T"] = T_weeks
    out["gap_count"], out["gap_log_mean"], out["gap_log_ss"] = _gap_statistics(day_codes, day_keys, span, n_all)
    # The store's mixture of gap shapes, from its customers' whole histories: one fit, shared by the detector's slices.
    if adaptive is None:
        shape_prior = None
    elif statistics is not None:
        shape_prior = statistics.shape_prior
    else:
        shape_prior = gap_shapes.store_prior(day_codes, day_keys, out["gap_count"].to_numpy())
    del day_keys, day_codes, day_spend, is_first_day

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

    purchase_rows = np.flatnonzero(purchase) if index is None else index[purchase]

    def purchase_column(name: str) -> np.ndarray:
        # One column of the purchases (a copy of the whole orders frame is 1.8 GB at 20M orders).
        return orders[name].to_numpy()[purchase_rows]

    changes: dict[str, AxisChange] = {}
    slices = functools.cache(lambda: customer_slices(codes, ts, in_rel, n_all))  # the same purchases for every detector

    def window_for(axis: str, detect) -> np.ndarray:
        """The purchases an axis' features are computed over: the customer's window, or (adaptive) the
        purchases after a detected change of that axis (`detect(purchases in the window)` -> AxisChange)."""
        if adaptive is None:
            return in_rel
        change = _detect_by_customer_slices(slices(), n_all, detect)
        changes[axis] = change
        after = change.changed[codes] & (ts > change.since_ns[codes])
        return np.where(change.changed[codes], after, in_rel)

    if adaptive is not None:
        # The customer's own window (the 365 days up to their last purchase), not the absolute one: an old order
        # leaving the absolute window changed the before-rate with no new information and could carry a change
        # over its threshold on a day the customer did nothing. This window moves only with a new purchase;
        # the silence still runs to D.
        rate = _detect_by_customer_slices(slices(), n_all, lambda w: rate_change(codes[w], ts[w], end_ns, n_all, adaptive, shape_prior))
        changes["purchase_frequency"] = rate
        cut = rate.changed
        days_after = (end_ns - rate.since_ns) / NS_PER_DAY
        with np.errstate(invalid="ignore", divide="ignore"):
            out["orders_per_month"] = np.where(cut, rate.after_n / np.maximum(days_after, 1.0) * DAYS_PER_MONTH, out["orders_per_month"].to_numpy())
            out["avg_days_between_orders"] = np.where(cut, days_after / np.maximum(rate.after_n, 1), out["avg_days_between_orders"].to_numpy())

    log_value = np.log1p(np.maximum(total, 0.0)) if adaptive is not None else None
    value_var = None
    if adaptive is not None:
        value_var = statistics.value_variance if statistics is not None else unchanged_within_variance(codes[in_rel], log_value[in_rel], n_all)
    use = window_for("purchase_value", lambda w: mean_shift_change(codes[w], ts[w], log_value[w], n_all, adaptive, value_var))
    rel_total = total[use]
    rel_n = _group_sum(codes[use], n_all)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["avg_order_value"] = _group_sum(codes[use], n_all, rel_total) / rel_n
    out["median_order_value"] = pd.Series(rel_total).groupby(codes[use]).median().reindex(range(n_all)).to_numpy()
    del log_value, rel_total, use

    if "discount_total" in optional_columns:
        disc_all = purchase_column("discount_total").astype("float64")
        use = window_for("discount_sensitivity", lambda w: binary_shift_change(codes[w], ts[w], (disc_all[w] > 0).astype("float64"), n_all, adaptive))
        dc, disc, n_use = codes[use], disc_all[use], _group_sum(codes[use], n_all)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["discounted_order_share"] = _group_sum(dc, n_all, (disc > 0).astype("float64")) / n_use
            gross = _group_sum(dc, n_all, total[use] + disc)
            out["avg_discount_rate"] = np.where(gross > 0, _group_sum(dc, n_all, disc) / gross, 0.0)
        del disc_all, use, dc, disc
    items_dispersion = None
    if "item_count" in optional_columns:
        items_all = purchase_column("item_count").astype("float64")
        # Items beyond the first, a count (change_points.count_shift_change); NaN stays NaN.
        extra_items = np.maximum(items_all - 1.0, 0.0) if adaptive is not None else None
        if adaptive is not None:
            items_dispersion = statistics.items_dispersion if statistics is not None else count_dispersion(codes[in_rel], extra_items[in_rel], n_all)
        use = window_for("basket_size", lambda w: count_shift_change(codes[w], ts[w], extra_items[w], n_all, adaptive, items_dispersion))
        ic, items, n_use = codes[use], items_all[use], _group_sum(codes[use], n_all)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["avg_items_per_order"] = _group_sum(ic, n_all, items) / n_use
            out["multi_item_order_share"] = _group_sum(ic, n_all, (items >= 2).astype("float64")) / n_use
        del items_all, extra_items, use, ic, items
    categories = n_categories = None
    if "category" in optional_columns:
        if statistics is not None and statistics.categories is None:
            raise ValueError("feature statistics fitted on orders without categories cannot measure the category features")
        # Codes from the Arrow strings (no Python string per order); pairs (customer, category) as one int64
        # key, grouped in order of first appearance as a two-column group-by would.
        category_codes, categories = _category_codes(read("category"), None if statistics is None else statistics.categories)
        cat_all = category_codes[purchase]
        del category_codes
        use = window_for("category_exploration", lambda w: binary_shift_change(
            codes[w], ts[w], (cat_all[w] == _modal(codes[w], cat_all[w], n_all)[codes[w]]).astype("float64"), n_all, adaptive, adaptive.category_evidence))
        rc = codes[use]
        rel_n = _group_sum(rc, n_all)
        cat_codes = cat_all[use]
        n_categories = np.unique(cat_codes).size if statistics is None else statistics.used_categories
        code_span = int(cat_codes.max()) + 1 if cat_codes.size else 1
        pair_key = rc.astype("int64") * code_span + cat_codes
        pair = pd.Series(pair_key).groupby(pair_key, sort=False).size()
        pc = pair.index.to_numpy() // code_span
        cnt = pair.to_numpy().astype("float64")
        top = np.zeros(n_all)
        np.maximum.at(top, pc, cnt)
        nlogn = _group_sum(pc, n_all, cnt * np.log(cnt))
        with np.errstate(invalid="ignore", divide="ignore"):
            entropy = np.where(rel_n > 0, np.log(np.maximum(rel_n, 1)) - nlogn / rel_n, 0.0)
        norm = np.log(n_categories) if n_categories > 1 else 1.0
        with np.errstate(invalid="ignore", divide="ignore"):
            out["top_category_share"] = np.where(rel_n > 0, top / rel_n, 1.0)
        out["category_entropy"] = np.clip(entropy / norm, 0.0, 1.0)

    fitted = statistics if statistics is not None else FeatureStatistics(shape_prior, value_var, items_dispersion, categories, n_categories)
    for axis, change in changes.items():  # the evidence of each detected change (adaptive only)
        on = change.changed
        out[f"{CHANGE_PREFIX}{axis}.since"] = np.where(on, change.since_ns / NS_PER_DAY, np.nan)  # days since 1970-01-01
        out[f"{CHANGE_PREFIX}{axis}.before"] = np.where(on, change.before, np.nan)
        out[f"{CHANGE_PREFIX}{axis}.after"] = np.where(on, change.after, np.nan)
        out[f"{CHANGE_PREFIX}{axis}.evidence"] = np.where(on, change.evidence, np.nan)
    return out.loc[has_purchase], fitted


def _category_codes(values: pd.Series, known: tuple[str, ...] | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Codes of the orders' categories (-1 missing) and the categories in code order. Without `known`: in order of
    first appearance (pd.factorize). With: `known`'s codes, and categories not in it after them, sorted by name, so
    that any part of the store's customers codes a category alike."""
    if known is None:
        codes, uniques = pd.factorize(values)
        return codes, tuple(map(str, uniques))
    vocabulary = pd.Index(known, dtype="object")
    codes = vocabulary.get_indexer(values)
    unseen = (codes < 0) & values.notna().to_numpy()
    if unseen.any():
        extra = pd.Index(sorted(set(values[unseen].astype(str))), dtype="object")
        codes[unseen] = len(vocabulary) + extra.get_indexer(values[unseen].astype(str))
    return codes, tuple(known)


# Purchase days per slice of the gap statistics: the gaps' temporaries stay ~50 MB instead of 0.4 GB at 16M days.
GAP_SLICE_ROWS = 1_000_000


def _gap_statistics(day_codes: np.ndarray, day_keys: np.ndarray, span: int, n_all: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gaps, mean log gap, sum of squared deviations of the log gaps) per customer, over the gaps in days between
    consecutive purchase days: the renewal churn model's evidence of a customer's own rhythm. `day_keys` are
    customer * span + day, sorted; read a slice of whole customers at a time."""
    # Every gap counts, however short: leaving out gaps under 3 or 5 days (clumped purchases) lifted the young-store
    # figures but cost CDNOW's (AUC 0.789 -> 0.780 at 1997-09-30; below recency on early 200-customer cuts).
    count, mean, ss = np.zeros(n_all), np.full(n_all, np.nan), np.zeros(n_all)
    start, n = 0, day_codes.size
    while start < n:
        stop = min(start + GAP_SLICE_ROWS, n)
        if stop < n:  # to the end of the last customer in the slice
            stop = int(np.searchsorted(day_codes, day_codes[stop - 1], side="right"))
        c = day_codes[start:stop]
        first = int(c[0])
        same = c[1:] == c[:-1]
        owner = (c[1:][same] - first).astype("int64")
        log_gap = np.log(np.diff(day_keys[start:stop])[same].astype("float64"))  # same customer: key gaps are day gaps
        width = int(c[-1]) - first + 1
        k = np.bincount(owner, minlength=width).astype("float64")
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.where(k > 0, np.bincount(owner, log_gap, width) / k, np.nan)
        count[first:first + width], mean[first:first + width] = k, m
        ss[first:first + width] = np.bincount(owner, (log_gap - m[owner]) ** 2, width)
        start = stop
    return count, mean, ss


def _purchase_occasions(day_codes: np.ndarray, days: np.ndarray, day_spend: np.ndarray, first_day: np.ndarray, occasion_days: int,
                        n_all: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(repeat occasions x, start of the last occasion in weeks since the first purchase, mean spend of the repeat
    occasions) from purchase days sorted by customer then day. An occasion is an `occasion_days` bin counted from
    the customer's first purchase day: purchases clumped within it (a collection bought over a few days) are one
    event of the BTYD model, whose purchases while alive are Poisson."""
    since_first = days - first_day[day_codes]
    bin_index = since_first // occasion_days
    new = np.r_[True, (day_codes[1:] != day_codes[:-1]) | (bin_index[1:] != bin_index[:-1])] if days.size else np.zeros(0, dtype=bool)
    occ_code = day_codes[new]
    occ_start = since_first[new].astype("float64")
    occ_spend = np.add.reduceat(day_spend, np.flatnonzero(new)) if days.size else np.zeros(0)
    n_occ = np.bincount(occ_code, minlength=n_all).astype("float64")
    x = np.maximum(n_occ - 1, 0)
    last_start = np.zeros(n_all)
    last_start[occ_code] = occ_start  # rows ascending per customer: the last assignment is the last occasion
    first_spend = np.zeros(n_all)
    is_first = np.r_[True, occ_code[1:] != occ_code[:-1]] if occ_code.size else np.zeros(0, dtype=bool)
    first_spend[occ_code[is_first]] = occ_spend[is_first]
    with np.errstate(invalid="ignore", divide="ignore"):
        monetary = np.where(x > 0, (np.bincount(occ_code, occ_spend, n_all) - first_spend) / x, 0.0)
    return x, last_start / 7.0, monetary


# Purchases per detector call: the detectors hold a dozen arrays per purchase they read, so a store's purchases are
# read a slice of customers at a time (at 1M customers, 16M purchases: 32 slices). A fixed size, not a share of
# memory or threads, so every machine detects the same changes.
DETECTOR_SLICE_ROWS = 500_000


def customer_slices(codes: np.ndarray, ts: np.ndarray, mask: np.ndarray, n_all: int) -> list[np.ndarray]:
    """The purchases in `mask` as the detectors read them: the row positions of successive slices of customers of
    about DETECTOR_SLICE_ROWS purchases each (one slice when there are no more; a customer's purchases always in one
    slice), each slice ordered by customer, newest first (ties in their row order). That is the order every detector
    sorts its purchases into (change_points.newest_first_order), so sorted here once per slice it is found sorted there:
    one sort per slice instead of one per slice and detector. One grouping for every detector: a mask per slice and
    detector passed over every purchase (at 1M customers: 30 slices x 5 detectors x 20M purchases)."""
    rows = np.flatnonzero(mask)
    if rows.size <= DETECTOR_SLICE_ROWS:
        return [_newest_first_rows(codes, ts, rows)]
    per_customer = np.bincount(codes[rows], minlength=n_all)
    ends = np.searchsorted(np.cumsum(per_customer), np.arange(DETECTOR_SLICE_ROWS, rows.size, DETECTOR_SLICE_ROWS), side="right")
    bounds = np.unique(np.r_[0, ends, n_all])
    slice_of_row = np.searchsorted(bounds, codes[rows], side="right") - 1
    # Grouped by slice, ascending within one (as a mask's rows); int16 keys sort by radix (2.5x int64's stable sort).
    slice_key = slice_of_row.astype(np.int16) if bounds.size <= np.iinfo(np.int16).max else slice_of_row
    rows = rows[np.argsort(slice_key, kind="stable")]
    cuts = np.r_[0, np.cumsum(np.bincount(slice_of_row, minlength=bounds.size - 1))]
    return [_newest_first_rows(codes, ts, rows[cuts[i]:cuts[i + 1]]) for i in range(bounds.size - 1)]


def _newest_first_rows(codes: np.ndarray, ts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Ascending row positions in the detectors' order (change_points.newest_first_order)."""
    return rows[newest_first_order(codes[rows], ts[rows])]


def _detect_by_customer_slices(slices: list[np.ndarray], n_all: int, detect) -> AxisChange:
    """`detect(purchases)` -> AxisChange over each of customer_slices' slices (a boolean mask or row positions), merged."""
    parts = [detect(rows) for rows in slices]
    return parts[0] if len(parts) == 1 else merge_changes(parts, n_all)


def _modal(codes: np.ndarray, values: np.ndarray, n_all: int) -> np.ndarray:
    """Each customer's most frequent value (ties: the smallest code); -1 for customers without one."""
    out = np.full(n_all, -1, dtype="int64")
    if codes.size:
        span = int(values.max()) + 1
        keys, counts = np.unique(codes.astype("int64") * span + values, return_counts=True)
        cust, val = keys // span, keys % span
        order = np.lexsort((val, -counts, cust))
        first = np.r_[True, cust[order][1:] != cust[order][:-1]]
        out[cust[order][first]] = val[order][first]
    return out


CHANGE_PREFIX = "change:"  # evidence columns: change:<axis>.<field>


def active_mask(features: pd.DataFrame, active_days: int) -> np.ndarray:
    """Active at D: a purchase within the last `active_days` days up to and including D."""
    return (features["days_since_last_order"] <= active_days).to_numpy()


def active_orders(orders: pd.DataFrame, as_of, active_days: int) -> np.ndarray:
    """The orders that make their customer active at D (active_mask), as a boolean mask: purchases seen at D within the
    last `active_days` days, by the same arithmetic as days_since_last_order. A customer is active at D iff one of
    their orders is in it, so the active customers are known from the orders alone (no features)."""
    end_ns = (orders_mod.as_of_day(as_of) + pd.Timedelta(days=1)).value
    ts = orders["order_ts"].to_numpy("datetime64[ns]").view("int64")
    return (ts < end_ns) & (orders["order_total"].to_numpy("float64") >= 0) & ((end_ns - ts) / NS_PER_DAY <= active_days)
