"""churn_risk_score ranks lapsers better than recency and RFM on the real CDNOW holdout, with monotone bands."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quimbi_pipeline.evaluation.churn import LEVELS, evaluate_churn
from quimbi_pipeline.model import btyd, renewal
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.sources.cdnow import read_cdnow_orders
from quimbi_pipeline.sources.demo import generate_demo
from quimbi_pipeline.sources.orders import validate_orders

CDNOW = Path(__file__).parent / "data" / "CDNOW_sample.txt"


@pytest.fixture(scope="module")
def cdnow_orders():
    return validate_orders(read_cdnow_orders(CDNOW)).orders


def test_score_beats_recency_and_rfm_on_the_cdnow_holdout(cdnow_orders):
    e = evaluate_churn(cdnow_orders, "1997-09-30", horizon_days=90)
    assert e.customers == 2357
    assert e.auc["churn_risk_score"] > max(e.auc["recency"], e.auc["rfm_quintiles"]) and e.auc["churn_risk_score"] > 0.785, e.auc


def test_at_39_weeks_the_score_trails_the_baselines_by_little(cdnow_orders):
    """A known cost of the renewal model on this mature store (docs/signals.md): at 39 weeks it ranks 0.771 against
    recency 0.771, RFM 0.775 and the previous BG/NBD model 0.779."""
    e = evaluate_churn(cdnow_orders, "1997-09-30", horizon_days=273)
    assert e.auc["churn_risk_score"] > max(e.auc["recency"], e.auc["rfm_quintiles"], e.auc["previous_model"]) - 0.015, e.auc


def test_levels_are_monotone_in_observed_lapse_rate(cdnow_orders):
    for horizon in (90, 273):
        bands = evaluate_churn(cdnow_orders, "1997-09-30", horizon_days=horizon).bands
        assert list(bands.index) == list(LEVELS)
        assert bands["lapse_rate"].is_monotonic_increasing, bands


def test_one_time_buyers_get_a_real_risk_that_varies(cdnow_orders):
    e = evaluate_churn(cdnow_orders, "1997-09-30", horizon_days=90)
    low, high = e.one_time_score_range
    assert 0 < low < high < 1 and high - low > 0.01
    # On CDNOW (one cohort: at 1997-09-30 every one-time buyer has been silent 6+ months) the store's own earlier window
    # says one-time buyers lapse most, and the recalibrated score ranks every repeat buyer under their median (the
    # renewal model alone put 24 above it). The interleaving shows where one-time buyers joined at any time:
    # A store whose one-time buyers joined at any time spreads them over the bands.
    demo = validate_orders(generate_demo(n_customers=3000, n_stores=1, seed=3).orders).orders
    bands = evaluate_churn(demo, "2026-07-31", horizon_days=90).bands
    assert (bands["one_time_buyers"] > 0).sum() >= 3, bands


def test_aggregate_forecast_is_reported_with_its_bias(cdnow_orders):
    e = evaluate_churn(cdnow_orders, "1997-09-30", horizon_days=273)
    # The renewal model underpredicts CDNOW's holdout (which holds the 1997 Christmas season) by 28% in purchase days
    # (the BG/NBD over purchase weeks: 9%): it counts purchase days, and after the first purchase in the horizon
    # renews at the customer's usual gap, which for CDNOW's clumped buyers is long.
    assert -0.35 < e.forecast_bias < 0


def test_p_no_purchase_closed_form_matches_simulating_the_model():
    p = btyd.BGParams(r=0.8, alpha=5.0, a=0.6, b=2.5)
    rng = np.random.default_rng(1)
    x, t_x, T, horizon = 2, 10.0, 20.0, 13.0
    # Posterior draws: alive with P(alive); lambda | alive ~ Gamma(r + x, alpha + T); dead customers never buy.
    n = 400_000
    alive = rng.random(n) < btyd.mbgnbd_p_alive(p, x, t_x, T)
    lam = rng.gamma(p.r + x, 1.0 / (p.alpha + T), n)
    first_wait = rng.exponential(1.0 / lam)
    simulated = np.mean(~alive | (first_wait > horizon))
    assert btyd.mbgnbd_p_no_purchase(p, horizon, x, t_x, T) == pytest.approx(simulated, abs=0.003)


@pytest.mark.parametrize("cut", ["1997-02-28", "1997-09-30"])
def test_the_renewal_fits_gradient_is_the_objectives(cdnow_orders, cut):
    """_MapObjective's exact gradient against central differences of its own value, at the start, the optimum and a
    point far from it (the fit trusts the gradient: L-BFGS-B with jac=True)."""
    from scipy.optimize import approx_fprime

    from quimbi_pipeline.model.features import compute_customer_features
    from quimbi_pipeline.sources.orders import orders_as_of

    day = pd.Timestamp(cut)
    f = compute_customer_features(orders_as_of(cdnow_orders, day), day, occasion_days=PipelineSettings().btyd_occasion_days)
    n, log_mean, log_ss, silence = (f[c].to_numpy("float64") for c in ("gap_count", "gap_log_mean", "gap_log_ss", "days_since_last_order"))
    d0, s0 = renewal.spread_prior(n, log_ss)
    objective = renewal._MapObjective(n, log_mean, silence, renewal.own_spread2(n, log_ss, d0, s0), 0.5, 40.0)
    fit = renewal.fit_renewal(n, log_mean, log_ss, silence)
    optimum = np.array([fit.mu0, np.log(fit.between_sd), np.log(fit.a / fit.b), np.log(fit.a + fit.b)])
    for theta in (np.array([3.8, 0.0, 0.0, 0.0]), optimum, np.array([2.0, -1.0, 2.5, 3.0])):
        value, gradient = objective.value_and_gradient(theta)
        numeric = approx_fprime(theta, lambda t: objective.value_and_gradient(t)[0], 1e-6)
        assert np.isfinite(value)
        assert gradient == pytest.approx(numeric, rel=1e-4, abs=1e-6), (theta, gradient, numeric)
    assert np.abs(objective.value_and_gradient(optimum)[1]).max() < 1e-6  # the fit ends where the gradient vanishes


def test_fits_converge_on_every_demo_store_date():
    from quimbi_pipeline.model.features import compute_customer_features
    from quimbi_pipeline.sources.orders import orders_as_of

    orders = validate_orders(generate_demo(n_customers=2000, n_stores=3, seed=8).orders).orders
    for day in pd.date_range("2026-04-01", "2026-10-31", freq="30D"):
        for _, g in orders_as_of(orders, day).groupby("store_id"):
            f = compute_customer_features(g, day, occasion_days=PipelineSettings().btyd_occasion_days)
            assert renewal.fit_renewal(f["gap_count"], f["gap_log_mean"], f["gap_log_ss"], f["days_since_last_order"]).converged
            assert btyd.fit_gamma_gamma(f["btyd_x"], f["btyd_monetary"]).converged


@pytest.mark.parametrize(("customers", "months", "seed"), [(50, 3, 1), (300, 4, 1), (200, 6, 1), (1000, 6, 1)])
def test_young_store_of_regular_buyers_is_told_who_lapses(customers, months, seed):
    """issue 33's young stores: the BG/NBD fit saw no dropout and scored lapsers 0.03, keepers 0.02 (AUC 0.71-0.79)."""
    from quimbi_pipeline.sources.young import generate_young

    store = generate_young(customers, months, seed=seed)
    e = evaluate_churn(validate_orders(store.orders).orders, store.as_of, 90)
    best_baseline = max(e.auc["recency"], e.auc["silence_over_usual_gap"])
    assert e.auc["churn_risk_score"] >= best_baseline - 0.02 and e.auc["churn_risk_score"] > e.auc["previous_model"] + 0.1, e.auc
    assert e.mean_risk_lapsed >= 0.6 and e.mean_risk_kept <= 0.3, (e.mean_risk_lapsed, e.mean_risk_kept)
    assert e.next_order_mae["model"] <= e.next_order_mae["naive"], e.next_order_mae


@pytest.mark.parametrize("cut", ["1997-02-28", "1997-03-31"])
def test_cdnow_cut_early_ranks_above_recency_with_a_calibrated_mean(cdnow_orders, cut):
    """CDNOW as a young store: the first 2 or 3 months of its cohort, the next 90 days as the truth."""
    e = evaluate_churn(cdnow_orders, cut, 90)
    assert e.auc["churn_risk_score"] > e.auc["recency"], e.auc
    assert abs(e.mean_risk - e.lapse_rate) <= 0.05, (e.mean_risk, e.lapse_rate)
    assert e.next_order_mae["model"] < e.next_order_mae["naive"], e.next_order_mae


def test_the_spread_prior_lets_a_regular_customers_own_gaps_count_where_buyers_differ():
    """A store of alike buyers: every customer's log-gap spread is close to the store's (d0 large). A store that mixes
    clockwork and Poisson-like buyers: d0 is small, so a clockwork buyer's own spread counts (the 6-month young
    stores' lapsers went from 0.47-0.57 to 0.61-0.75 mean risk with it, docs/signals.md)."""
    rng = np.random.default_rng(4)
    d = np.full(400, 8.0)  # 9 gaps each
    poisson = rng.chisquare(d) / d * 1.6  # sample variances of log exponential-like gaps around 1.6
    d0, s0 = renewal.spread_prior(d + 1, poisson * d)
    assert d0 >= 30 and abs(s0**2 - 1.6) < 0.2, (d0, s0)
    # Customers whose variances differ less than sampling would make them: d0 at its cap, s0^2 the pooled mean.
    assert renewal.spread_prior(d + 1, np.full(400, 1.6) * d) == (renewal.MAX_SPREAD_PRIOR_GAPS, pytest.approx(np.sqrt(1.6)))
    regular = rng.chisquare(d[:280]) / d[:280] * 0.06
    mixed = np.r_[regular, poisson[:120]]
    d0, s0 = renewal.spread_prior(d + 1, mixed * d)
    assert d0 < 5, d0
    one_regular = renewal.own_spread2(np.array([9.0]), np.array([0.06 * 8]), d0, s0)[0]
    assert one_regular < 0.5 * renewal.own_spread2(np.array([9.0]), np.array([0.06 * 8]), renewal.SPREAD_PSEUDO_GAPS, 0.73)[0]


@pytest.mark.parametrize(("end", "horizon"), [("1997-06-30", 90), ("1997-09-30", 90), ("1997-09-30", 180), ("1997-12-31", 180)])
def test_on_a_mature_store_churn_ranks_at_least_as_well_as_a_logistic_regression_on_rfm(cdnow_orders, end, horizon):
    """issue 33: the renewal model alone was under the analyst's logistic regression on log RFM (trained on the store's
    own earlier window) at 5 of CDNOW's 7 holdouts; recalibrated on that same window it is at or above it (docs/signals.md:
    +0.002..+0.034 at these four; 1997-12-31 at 90 days is 0.0005 under, within this test's 0.002)."""
    e = evaluate_churn(cdnow_orders, end, horizon)
    assert e.auc["churn_risk_score"] >= e.auc["rfm_logistic"] - 0.002, e.auc


def test_recalibration_keeps_the_models_level_and_consistent_scores(cdnow_orders):
    from quimbi_pipeline.model.churn import (
        contradictory,
        fit_churn_model,
        fit_store_churn,
        score_churn,
    )
    from quimbi_pipeline.model.features import compute_customer_features
    from quimbi_pipeline.sources.orders import orders_as_of

    end = pd.Timestamp("1997-09-30")
    settings = PipelineSettings()
    seen = orders_as_of(cdnow_orders, end)
    features = compute_customer_features(seen, end, occasion_days=settings.btyd_occasion_days)
    plain = score_churn(fit_churn_model(features, settings), features, settings)
    model = fit_store_churn(features, seen, end, settings)
    assert model.recalibration is not None and model.recalibration.lapsers >= 30
    scores = score_churn(model, features, settings)
    assert abs(scores.churn_risk_score.mean() - plain.churn_risk_score.mean()) < 1e-9  # the level is the renewal model's
    assert not np.allclose(scores.churn_risk_score, plain.churn_risk_score)  # the ranking is not
    assert not contradictory(scores.churn_risk_score, scores.expected_purchases, scores.predicted_ltv).any()
    assert (scores.expected_purchases >= 1.0 - scores.churn_risk_score - 1e-9).all()


def test_a_young_store_is_not_recalibrated():
    """A store whose earlier window holds fewer than 30 lapsers keeps the renewal model and its prior (a handful of
    lapses would set the ranking wrong)."""
    from quimbi_pipeline.model.churn_recalibration import fit_recalibration
    from quimbi_pipeline.model.features import compute_customer_features
    from quimbi_pipeline.sources.orders import orders_as_of
    from quimbi_pipeline.sources.young import generate_young

    store = generate_young(300, 4, seed=1)
    orders = orders_as_of(validate_orders(store.orders).orders, store.as_of)
    features = compute_customer_features(orders, store.as_of, occasion_days=7)
    assert fit_recalibration(features, orders, store.as_of, 90, occasion_days=7, window_days=365, random_state=42) is None
