"""Features as of D on hand-computed cases; point in time; optional columns."""

import numpy as np
import pandas as pd
import pytest

from quimbi_pipeline.model.change_points import ChangeRule
from quimbi_pipeline.model.features import (
    AXES,
    available_axes,
    compute_customer_features,
    sum_by_key,
)
from quimbi_pipeline.sources.orders import orders_as_of, validate_orders


def orders(rows):
    return validate_orders(pd.DataFrame(rows)).orders


ROWS = [
    # c1: three purchases on two days, one return; c2: one purchase.
    {"order_id": "1", "customer_id": "c1", "order_ts": "2026-01-01 09:00", "order_total": 100.0, "discount_total": 10.0, "item_count": 2, "category": "books"},
    {"order_id": "2", "customer_id": "c1", "order_ts": "2026-01-01 18:00", "order_total": 50.0, "discount_total": 0.0, "item_count": 1, "category": "music"},
    {"order_id": "3", "customer_id": "c1", "order_ts": "2026-01-15 12:00", "order_total": 30.0, "discount_total": 0.0, "item_count": 1, "category": "books"},
    {"order_id": "4", "customer_id": "c1", "order_ts": "2026-01-20 12:00", "order_total": -20.0, "discount_total": 0.0, "item_count": 0, "category": "books"},
    {"order_id": "5", "customer_id": "c2", "order_ts": "2026-01-10 12:00", "order_total": 40.0, "discount_total": 0.0, "item_count": 1, "category": "toys"},
]
OPTIONAL = ("discount_total", "item_count", "category")


def test_hand_computed_features():
    f = compute_customer_features(orders(ROWS), pd.Timestamp("2026-01-31"), optional_columns=OPTIONAL)
    c1, c2 = f.loc["c1"], f.loc["c2"]
    assert c1.total_orders == 3 and c1.lifetime_value == pytest.approx(160.0)
    assert c1.days_since_first_order == 30 and c1.days_since_last_order == pytest.approx(16.5)
    # BTYD: purchase days Jan 1 and Jan 15 -> x = 1, t_x = 2 weeks, T = 30/7 weeks; repeat spend 30.
    assert (c1.btyd_x, c1.btyd_t_x, c1.btyd_T, c1.btyd_monetary) == pytest.approx((1, 2.0, 30 / 7, 30.0))
    assert c1.avg_order_value == pytest.approx(60.0) and c1.median_order_value == pytest.approx(50.0)
    assert c1.orders_per_month == pytest.approx(3 / 31 * 30.4375)
    assert c1.avg_days_between_orders == pytest.approx(14.0)
    assert c1.discounted_order_share == pytest.approx(1 / 3)
    assert c1.avg_discount_rate == pytest.approx(10 / 190)
    assert c1.avg_items_per_order == pytest.approx(4 / 3) and c1.multi_item_order_share == pytest.approx(1 / 3)
    assert c1.top_category_share == pytest.approx(2 / 3)
    # One-time buyer: no repeat, gap is its age, entropy 0.
    assert c2.btyd_x == 0 and c2.btyd_monetary == 0 and c2.avg_days_between_orders == 21
    assert c2.category_entropy == 0 and c2.top_category_share == 1


def test_orders_after_d_change_nothing_at_d():
    base = orders(ROWS)
    later = orders(ROWS + [
        {"order_id": "6", "customer_id": "c1", "order_ts": "2026-02-01 00:00", "order_total": 999.0, "discount_total": 0.0, "item_count": 9, "category": "toys"},
        {"order_id": "7", "customer_id": "c3", "order_ts": "2026-02-03 00:00", "order_total": 5.0, "discount_total": 0.0, "item_count": 1, "category": "toys"},
    ])
    d = pd.Timestamp("2026-01-31")
    a = compute_customer_features(orders_as_of(base, d), d, optional_columns=OPTIONAL)
    b = compute_customer_features(orders_as_of(later, d), d, optional_columns=OPTIONAL)
    pd.testing.assert_frame_equal(a, b)


def test_missing_optional_columns_skip_their_axes(caplog):
    caplog.set_level("INFO")
    axes = [a.name for a in available_axes(())]
    assert axes == ["purchase_frequency", "purchase_value", "loyalty_trajectory"]
    assert "axis basket_size skipped" in caplog.text
    assert [a.name for a in available_axes(OPTIONAL)] == [a.name for a in AXES]


def test_customer_with_only_returns_has_no_profile_row():
    rows = ROWS + [{"order_id": "9", "customer_id": "c9", "order_ts": "2026-01-05", "order_total": -5.0, "discount_total": 0.0, "item_count": 0, "category": "books"}]
    f = compute_customer_features(orders(rows), pd.Timestamp("2026-01-31"), optional_columns=OPTIONAL)
    assert "c9" not in f.index and len(f) == 2


def test_every_feature_is_finite_on_demo(demo_small):
    v = validate_orders(demo_small.orders)
    d = pd.Timestamp("2026-10-31")
    f = compute_customer_features(orders_as_of(v.orders, d), d, optional_columns=v.optional_columns)
    names = [name for axis in AXES for name in axis.feature_names]
    assert np.isfinite(f[names].to_numpy()).all()


def test_adaptive_windows_follow_a_change_and_leave_steady_customers_alone():
    from quimbi_pipeline.model.change_points import ChangeRule

    days = pd.date_range("2026-01-05", periods=30, freq="7D")  # weekly orders
    rng = np.random.default_rng(0)
    rows = []
    for customer, values in (("steady", np.full(30, 50.0)), ("changed", np.r_[np.full(27, 20.0), np.full(3, 180.0)])):
        for i, (day, value) in enumerate(zip(days, values * np.exp(rng.normal(0, 0.1, 30)))):
            rows.append({"order_id": f"{customer}{i}", "customer_id": customer, "order_ts": day, "order_total": round(value, 2)})
    # A customer who bought monthly, then 8 times in the last week.
    burst = [pd.Timestamp("2026-01-03") + pd.Timedelta(days=30 * i) for i in range(7)] + list(pd.date_range("2026-07-22", periods=8, freq="D"))
    rows += [{"order_id": f"b{i}", "customer_id": "burst", "order_ts": t, "order_total": 40.0} for i, t in enumerate(burst)]
    # A customer who bought every 7 days like clockwork until 6 weeks ago.
    quiet = list(pd.date_range("2025-12-01", "2026-06-15", freq="7D"))
    rows += [{"order_id": f"q{i}", "customer_id": "quiet", "order_ts": t, "order_total": 40.0} for i, t in enumerate(quiet)]
    orders = pd.DataFrame(rows)
    day = pd.Timestamp("2026-07-29")
    plain = compute_customer_features(orders, day)
    adaptive = compute_customer_features(orders, day, adaptive=ChangeRule())
    # The changed customer's value features are those of the last 3 orders; the steady customer's are unchanged.
    assert adaptive.at["changed", "avg_order_value"] == pytest.approx(180, rel=0.15)
    assert plain.at["changed", "avg_order_value"] < 50
    assert adaptive.at["steady", "avg_order_value"] == plain.at["steady", "avg_order_value"]
    # The burst shows as a purchase rate of about 8 a week.
    assert adaptive.at["burst", "orders_per_month"] > 20 > plain.at["burst", "orders_per_month"]
    assert adaptive.at["steady", "orders_per_month"] == plain.at["steady", "orders_per_month"]
    # A silence far beyond a regular customer's gaps: no purchase since the change.
    assert adaptive.at["quiet", "orders_per_month"] == 0 < plain.at["quiet", "orders_per_month"]
    # The evidence: since when, from what to what, how strong; nothing for the steady customer.
    since = pd.Timestamp(adaptive.at["quiet", "change:purchase_frequency.since"] * 86_400, unit="s")
    assert since == quiet[-1] and adaptive.at["quiet", "change:purchase_frequency.before"] == pytest.approx(30.4375 / 7, rel=0.01)
    assert adaptive.at["changed", "change:purchase_value.after"] > adaptive.at["changed", "change:purchase_value.before"]
    assert adaptive.loc["steady", [c for c in adaptive.columns if c.startswith("change:")]].isna().all()


def test_purchase_occasions_count_clumped_purchases_once():
    rows = [("c", f"2026-01-{d:02d}", v) for d, v in ((1, 10.0), (3, 5.0), (8, 20.0), (9, 1.0), (31, 40.0))]
    frame = pd.DataFrame(rows, columns=["customer_id", "order_ts", "order_total"]).assign(order_ts=lambda f: pd.to_datetime(f["order_ts"]))
    days = compute_customer_features(frame, pd.Timestamp("2026-02-10"))
    weeks = compute_customer_features(frame, pd.Timestamp("2026-02-10"), occasion_days=7)
    assert days.loc["c", ["btyd_x", "btyd_t_x", "btyd_monetary"]].tolist() == [4, 30 / 7, 66 / 4]
    # Weeks from the first purchase: days 0-6 {1, 3}, 7-13 {8, 9}, 28-34 {31}: two repeat occasions, the last from day 30.
    assert weeks.loc["c", ["btyd_x", "btyd_t_x", "btyd_monetary", "btyd_days_per_occasion"]].tolist() == [2, 30 / 7, (21 + 40) / 2, 5 / 3]
    assert weeks.loc["c", "btyd_T"] == days.loc["c", "btyd_T"]
    assert weeks.loc["c", "avg_days_between_orders"] == days.loc["c", "avg_days_between_orders"]  # a segment feature: days, always


def test_change_detection_by_customer_slices_finds_the_same_changes(monkeypatch):
    """The detectors read a store's purchases a slice of customers at a time (bounded memory at 1M customers);
    slices change nothing but the order of floating-point sums."""
    from quimbi_pipeline.model import features
    from quimbi_pipeline.sources.demo import generate_demo

    v = validate_orders(generate_demo(n_customers=1500, n_stores=1, seed=5, start="2025-09-01", end="2026-10-31").orders)
    day = pd.Timestamp("2026-10-31")
    whole = compute_customer_features(orders_as_of(v.orders, day), day, optional_columns=v.optional_columns, adaptive=ChangeRule())
    monkeypatch.setattr(features, "DETECTOR_SLICE_ROWS", 2_000)
    sliced = compute_customer_features(orders_as_of(v.orders, day), day, optional_columns=v.optional_columns, adaptive=ChangeRule())
    assert (v.orders["order_ts"] <= day + pd.Timedelta(days=1)).sum() > 5 * 2_000  # several slices
    since = [c for c in whole.columns if c.endswith(".since")]
    assert len(since) == 5 and whole[since].notna().sum().sum() > 20  # changes were found on every kind of axis
    pd.testing.assert_frame_equal(whole[since], sliced[since])  # the same changes, since the same purchase
    pd.testing.assert_frame_equal(whole, sliced, check_exact=False, rtol=1e-9)


def test_sum_by_key_is_pandas_sorted_group_sum_bit_for_bit():
    """Groups of one value (0.0, -0.0, tiny, huge), several values where Kahan's compensation differs from a plain
    sum, NaN and infinities, keys in any order, as the spend per purchase day is summed."""
    rng = np.random.default_rng(5)
    n = 200_000
    keys = rng.integers(0, 150_000, n) * 400 + rng.integers(0, 3, n)
    values = np.exp(rng.normal(3, 2, n)) * rng.choice([1.0, 1.0, 1.0, -1.0], n)
    special = rng.choice(n, 2_000, replace=False)
    values[special] = rng.choice([0.0, -0.0, np.nan, np.inf, -np.inf, 1e16, -1e16, 5e-324, 1e308], special.size)
    for k in (keys, keys[::-1].copy(), np.sort(keys), np.array([], dtype="int64")):
        v = values[: k.size]
        expected = pd.Series(v).groupby(k, sort=True).sum()
        unique, sums = sum_by_key(v, k)
        assert np.array_equal(unique, expected.index.to_numpy())
        assert np.array_equal(sums.view("int64"), expected.to_numpy().view("int64"))  # -0.0 and NaN bits too
    kahan = np.array([1e16, 1.0, 1.0, -1e16, 3.0])  # Kahan keeps the ones a plain left-to-right sum loses
    _, sums = sum_by_key(kahan, np.zeros(5, dtype="int64"))
    assert sums[0] == pd.Series(kahan).groupby(np.zeros(5, dtype="int64")).sum().iloc[0] != float(np.cumsum(kahan)[-1])


def test_detectors_read_rows_presorted_by_customer_slices_exactly_as_they_sort_them():
    """customer_slices hands each detector its purchases by customer, newest first; a detector then skips its own
    sort. Same-time purchases (ties) keep their row order either way, so every change is bit for bit the same."""
    from dataclasses import asdict

    from quimbi_pipeline.model import change_points
    from quimbi_pipeline.model.features import customer_slices

    rng = np.random.default_rng(11)
    n_rows, n_all = 20_000, 600
    codes = rng.integers(0, n_all, n_rows)
    ts = rng.integers(0, 400, n_rows) * 86_400 * 10**9  # many purchases share a day: ties
    changed = (codes % 7 == 0) & (ts > 300 * 86_400 * 10**9)  # a seventh of the customers spend 4x in their last 100 days
    x = np.where(rng.random(n_rows) < 0.05, np.nan, rng.lognormal(3, 0.5, n_rows) * np.where(changed, 4.0, 1.0))
    rule = ChangeRule(evidence=2.0)
    (presorted,) = customer_slices(codes, ts, np.ones(n_rows, dtype=bool), n_all)
    order, _, _ = change_points._newest_first(codes[presorted], ts[presorted])
    assert (order == np.arange(n_rows)).all()  # found sorted: not sorted again
    for detect in (lambda w: change_points.mean_shift_change(codes[w], ts[w], np.log1p(x[w]), n_all, rule, 0.25),
                   lambda w: change_points.binary_shift_change(codes[w], ts[w], (x[w] > 30).astype("float64"), n_all, rule),
                   lambda w: change_points.count_shift_change(codes[w], ts[w], np.floor(x[w] / 20), n_all, rule, 1.5)):
        as_given, as_sliced = asdict(detect(np.arange(n_rows))), asdict(detect(presorted))
        assert (as_given["after_n"] >= 0).sum() >= 20  # changes were found
        for field, values in as_given.items():
            np.testing.assert_array_equal(values, as_sliced[field], err_msg=field)


def test_a_decisive_first_changed_order_is_a_change_a_moderate_one_waits():
    """issue 33: a $30 order after a dozen monthly orders of $300 +- 15% is a 17-sigma event, a change at that order;
    a $200 order (a third less, |t| ~ 3) is evidence too weak alone: the change waits for a second changed order. (Until
    2026-12-07 the moderate order was $150; with the store's spread measured on its unchanged customers
    (unchanged_within_variance) a halving after these twelve orders is |t| ~ 5.5, at the decisive bar.)"""
    from quimbi_pipeline.model.change_points import ChangeRule

    days = pd.date_range("2025-06-01", periods=13, freq="30D")
    rng = np.random.default_rng(3)
    rows = []
    # Twenty steady customers give the store its usual spread of order values.
    for customer, last in (("drop", 30.0), ("third_less", 200.0), *((f"steady{i}", 300.0) for i in range(20))):
        values = np.r_[300.0 * np.exp(rng.normal(0, 0.15, 12)), last]
        rows += [{"order_id": f"{customer}{i}", "customer_id": customer, "order_ts": d, "order_total": round(v, 2)}
                 for i, (d, v) in enumerate(zip(days, values))]
    day = days[-1] + pd.Timedelta(days=1)
    f = compute_customer_features(pd.DataFrame(rows), day, adaptive=ChangeRule())
    assert f.at["drop", "change:purchase_value.evidence"] >= ChangeRule().decisive_evidence
    assert f.at["drop", "avg_order_value"] == 30.0  # the value features follow the change at once
    assert np.isnan(f.at["third_less", "change:purchase_value.evidence"]) and f.filter(like="steady", axis=0)["change:purchase_value.evidence"].isna().all()
    waits = compute_customer_features(pd.DataFrame(rows), day, adaptive=ChangeRule(decisive_evidence=1e9))
    assert np.isnan(waits.at["drop", "change:purchase_value.evidence"])  # without the rule: one order is never a change


def test_the_stores_spread_of_order_values_is_its_unchanged_customers_spread():
    """issue 33: a customer with few orders is judged with the store's spread of order values. Pooled over every
    customer, a store where a sixth of them had their orders rise 4-fold read 4.5 times its unchanged customers'
    spread, and a rise after one steady order (the young store's monthly buyers) stayed under the evidence bar."""
    from quimbi_pipeline.model.change_points import (
        pooled_within_variance,
        unchanged_within_variance,
    )

    rng = np.random.default_rng(5)
    days = pd.date_range("2026-01-05", periods=4, freq="30D")
    rows = []
    for i in range(60):
        risen = i < 10  # one order at the usual value, then three at 4 times it
        base = 60.0 * np.exp(rng.normal(0, 0.8))
        values = base * np.exp(rng.normal(0, 0.15, 4)) * np.where(risen & (np.arange(4) >= 1), 4.0, 1.0)
        rows += [{"order_id": f"{i}-{k}", "customer_id": f"{'rise' if risen else 'steady'}{i:02d}", "order_ts": d, "order_total": round(v, 2)}
                 for k, (d, v) in enumerate(zip(days, values))]
    frame = pd.DataFrame(rows)
    codes, _ = pd.factorize(frame["customer_id"])
    log_value = np.log1p(frame["order_total"].to_numpy())
    steady = frame["customer_id"].str.startswith("steady").to_numpy()
    unchanged_spread = pooled_within_variance(pd.factorize(frame.loc[steady, "customer_id"])[0], log_value[steady], 50)
    assert pooled_within_variance(codes, log_value, 60) > 3 * unchanged_spread
    assert unchanged_within_variance(codes, log_value, 60) == pytest.approx(unchanged_spread, rel=0.1)

    f = compute_customer_features(frame, days[-1] + pd.Timedelta(days=1), adaptive=ChangeRule())
    evidence = f["change:purchase_value.evidence"]
    assert evidence.filter(like="rise").notna().all()  # each of the ten rises is a change
    assert evidence.filter(like="steady").isna().all()


def test_gap_statistics_by_slices_are_those_of_the_whole(demo_small, monkeypatch):
    """The renewal model's gap statistics are read a slice of customers at a time (memory at 16M purchase days):
    the same numbers, bit for bit, whatever the slice size."""
    import quimbi_pipeline.model.features as features_module

    v = validate_orders(demo_small.orders)
    day = pd.Timestamp("2026-10-31")
    whole = compute_customer_features(orders_as_of(v.orders, day), day)[["gap_count", "gap_log_mean", "gap_log_ss"]]
    monkeypatch.setattr(features_module, "GAP_SLICE_ROWS", 97)
    sliced = compute_customer_features(orders_as_of(v.orders, day), day)[["gap_count", "gap_log_mean", "gap_log_ss"]]
    pd.testing.assert_frame_equal(whole, sliced, check_exact=True)
    seen = orders_as_of(v.orders, day)
    purchases = seen[seen["order_total"] >= 0]
    days = purchases.assign(d=purchases["order_ts"].dt.normalize()).groupby("customer_id")["d"].nunique()
    assert (whole["gap_count"].to_numpy() == days.reindex(whole.index).to_numpy() - 1).all()


def test_basket_size_changes_are_judged_as_counts():
    """issue 33: basket sizes are counts. A customer whose 22 baskets were one item each, then two of two items, has
    not changed (with 1 + Poisson(0.2) items such a pair comes once in 30): a t statistic took the 22 equal baskets
    as no spread and called it a 7-sigma change. A rise to 9 items shows at the second order (and at the first when
    it alone is decisive: an 11-item basket after 20 baskets of about one)."""
    from quimbi_pipeline.model.change_points import count_dispersion, count_shift_change

    days = pd.date_range("2026-01-05", periods=24, freq="7D")
    rng = np.random.default_rng(5)
    baskets = {
        "pair": [1] * 22 + [2, 2],
        "rise": [1] * 22 + [9, 10],
        "first": [1] * 23 + [11],
        **{f"steady{i}": list(1 + rng.poisson(0.2, 24)) for i in range(20)},
    }
    rows = [{"order_id": f"{c}{i}", "customer_id": c, "order_ts": d, "order_total": 40.0, "item_count": n}
            for c, items in baskets.items() for i, (d, n) in enumerate(zip(days, items))]
    day = days[-1] + pd.Timedelta(days=1)
    f = compute_customer_features(pd.DataFrame(rows), day, optional_columns=("item_count",), adaptive=ChangeRule())
    evidence = f["change:basket_size.evidence"]
    assert np.isnan(evidence["pair"]) and evidence.filter(like="steady").isna().all()
    assert evidence["rise"] >= ChangeRule().evidence and evidence["first"] >= ChangeRule().decisive_evidence
    assert np.expm1(f.at["rise", "change:basket_size.after"]) == pytest.approx(8.5)  # the mean extra items after
    assert f.at["rise", "avg_items_per_order"] == 9.5  # the basket features follow the change
    # The hand-computed quasi-Poisson ratio of "rise": 17 extra items in 2 orders against none in 22.
    codes = np.repeat(np.arange(2), 24)
    counts = np.r_[np.zeros(22), 8.0, 9.0, np.full(24, 1.0)]
    change = count_shift_change(codes, np.tile(np.arange(24), 2), counts, 2, ChangeRule(), dispersion=1.0)
    assert change.evidence[0] == pytest.approx(17 * np.log(24 / 2)) and change.after_n[0] == 2 and not change.changed[1]
    # Dispersion: Poisson counts give about 1; equal counts (no spread) are tested as Poisson, not as certain.
    assert count_dispersion(np.zeros(24, dtype=int), np.full(24, 1.0), 1) == 1.0
    assert count_dispersion(np.zeros(5000, dtype=int), rng.negative_binomial(2, 0.5, 5000).astype(float), 1) == pytest.approx(2.0, rel=0.1)


def test_a_regular_rhythm_is_believed_from_a_few_gaps_a_poisson_one_is_not():
    """issue 33: a regular buyer's gap shape is shrunk towards Poisson on the log scale (2 pseudo degrees of freedom),
    so 3-4 clockwork gaps already make a silence of 3 gaps a change for a quarter to a third of them at the shipped
    silence evidence 10 (with one pseudo-gap at CV^2 1 averaged in, 0-0.6% were), while Poisson-like buyers' ordinary
    gaps stay ordinary. Simulated, one evaluation day each."""
    from quimbi_pipeline.model.change_points import NS_PER_DAY, rate_change

    rng = np.random.default_rng(7)

    def flagged(n, gaps, shape, mean_gap, silent_gaps):
        g = np.maximum(np.round(rng.gamma(shape, mean_gap / shape, (n, gaps))), 1)
        days = np.c_[np.zeros(n), np.cumsum(g, axis=1)]
        end_day = days[:, -1] + round(silent_gaps * mean_gap)
        days += (end_day.max() - end_day)[:, None]  # every customer's silence ends on the same day
        change = rate_change(np.repeat(np.arange(n), gaps + 1), (days.ravel() * NS_PER_DAY).astype("int64"),
                             int((end_day.max() + 1) * NS_PER_DAY), n, ChangeRule())
        return (change.after_n == 0).mean(), (change.after_n > 0).mean()  # (a silence, a rate change with purchases after)

    assert flagged(2000, 3, 16.0, 7, 3.0)[0] >= 0.2  # measured 0.25 (0.00 before; 0.44 at silence evidence 8)
    assert flagged(2000, 4, 16.0, 7, 3.0)[0] >= 0.3  # 0.39 (0.006; 0.59)
    assert flagged(2000, 10, 16.0, 14, 3.0)[0] >= 0.7  # 0.77 (0.25; 0.94)
    for gaps, mean_gap in ((4, 7), (10, 14), (30, 7)):
        silence, rate = flagged(2000, gaps, 1.0, mean_gap, 1.0)
        assert silence <= 0.005 and rate <= 0.005  # measured 0-0.2%
