"""BTYD models against the published CDNOW figures (../shared/data/cdnow/README.md)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quimbi_pipeline.model import btyd
from quimbi_pipeline.model.features import compute_customer_features
from quimbi_pipeline.sources.cdnow import read_cdnow_orders
from quimbi_pipeline.sources.orders import orders_as_of, validate_orders

CDNOW = Path(__file__).parent / "data" / "CDNOW_sample.txt"
CALIBRATION_END = "1997-09-30"

PUBLISHED_BG = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_BG_LL = -9582.4
PUBLISHED_GG = {"p": 6.25, "q": 3.74, "v": 15.45}


@pytest.fixture(scope="module")
def cdnow():
    """BTYD inputs in weeks, computed by the pipeline's own feature code as of the calibration end."""
    orders = validate_orders(read_cdnow_orders(CDNOW)).orders
    feats = compute_customer_features(orders_as_of(orders, CALIBRATION_END), pd.Timestamp(CALIBRATION_END))
    return pd.DataFrame({"x": feats["btyd_x"], "t_x": feats["btyd_t_x"], "T": feats["btyd_T"], "monetary": feats["btyd_monetary"]})


def test_cdnow_summary_matches_paper(cdnow):
    assert len(cdnow) == 2357
    assert int((cdnow["x"] > 0).sum()) == 946  # 1411 of 2357 made no repeat purchase in weeks 1-39


def test_bgnbd_reproduces_published_parameters(cdnow):
    fit = btyd.fit_bgnbd(cdnow["x"], cdnow["t_x"], cdnow["T"])
    for name, published in PUBLISHED_BG.items():
        assert getattr(fit, name) == pytest.approx(published, rel=0.01), name
    assert abs(fit.log_likelihood - PUBLISHED_BG_LL) < 0.1


def test_bgnbd_published_customer_predictions(cdnow):
    fit = btyd.fit_bgnbd(cdnow["x"], cdnow["t_x"], cdnow["T"])
    x, t_x, T = np.array([2, 7]), np.array([30.43, 29.43]), np.array([38.86, 38.86])
    np.testing.assert_allclose(btyd.bgnbd_p_alive(fit, x, t_x, T), [0.7266, 0.6418], atol=5e-4)
    np.testing.assert_allclose(btyd.bgnbd_expected_purchases(fit, 39, x, t_x, T), [1.226, 3.337], atol=2e-3)


def test_bgnbd_gives_one_time_buyers_no_risk_but_modified_model_does(cdnow):
    bg = btyd.fit_bgnbd(cdnow["x"], cdnow["t_x"], cdnow["T"])
    mbg = btyd.fit_mbgnbd(cdnow["x"], cdnow["t_x"], cdnow["T"])
    T = np.array([5.0, 20.0, 38.86])
    zeros = np.zeros(3)
    assert np.all(btyd.bgnbd_p_alive(bg, zeros, zeros, T) == 1.0)
    p = btyd.mbgnbd_p_alive(mbg, zeros, zeros, T)
    assert np.all(p < 1.0) and np.all(np.diff(p) < 0)  # longer silence, lower P(alive)
    # The modified model fits CDNOW about as well as BG/NBD.
    assert abs(mbg.log_likelihood - bg.log_likelihood) < 5


def test_mbgnbd_expected_purchases_match_monte_carlo():
    """The closed form agrees with simulating the model's own story for a customer."""
    p = btyd.BGParams(r=0.8, alpha=5.0, a=0.6, b=2.5)
    rng = np.random.default_rng(0)
    n = 400_000
    lam = rng.gamma(p.r, 1 / p.alpha, n)
    drop = rng.beta(p.a, p.b, n)
    # Simulate 20 weeks of history then 30 weeks ahead; condition on x=0 (one purchase at 0, none since).
    horizon, T = 30.0, 20.0
    alive = rng.random(n) >= drop  # modified model: may die right after the first purchase
    # For x=0: no purchase in (0, T] while alive; the next event would be a purchase or death.
    waits = rng.exponential(1 / lam)
    silent = ~alive | (waits > T)
    # Memorylessness: given silence and still alive, future purchases are Poisson(lam) with geometric death.
    still = alive & (waits > T)
    count = np.zeros(n)
    t = np.full(n, T)
    active = still.copy()
    while active.any():
        step = rng.exponential(1 / lam[active])
        t_new = t[active] + step
        within = t_new <= T + horizon
        idx = np.flatnonzero(active)
        count[idx[within]] += 1
        t[idx] = t_new
        dies = rng.random(idx.size) < drop[idx]
        active[idx[~within | dies]] = False
    empirical = count[silent].mean()
    closed = btyd.mbgnbd_expected_purchases(p, horizon, np.array([0.0]), np.array([0.0]), np.array([T]))[0]
    assert closed == pytest.approx(empirical, rel=0.03)
    p_alive_emp = still[silent].mean()
    assert btyd.mbgnbd_p_alive(p, np.array([0.0]), np.array([0.0]), np.array([T]))[0] == pytest.approx(p_alive_emp, rel=0.02)


def test_gamma_gamma_matches_lifetimes_fit(cdnow):
    fit = btyd.fit_gamma_gamma(cdnow["x"], cdnow["monetary"])
    for name, published in PUBLISHED_GG.items():
        assert getattr(fit, name) == pytest.approx(published, rel=0.01), name
    spend = btyd.gamma_gamma_expected_spend(fit, np.array([0, 1, 10]), np.array([0.0, 50.0, 50.0]))
    assert spend[0] == pytest.approx(fit.population_mean_spend)
    assert spend[0] < spend[1] < spend[2] < 50.0  # shrunk towards the population mean, less with more purchases


def test_gamma_gamma_terms_equal_the_formula_row_by_row_and_their_gradient_is_exact(cdnow):
    """GammaGammaTerms evaluates the (di)gamma functions on the distinct purchase counts only: each row must still be
    the float the full formula gives, and the gradient must be the derivative of the value."""
    from scipy.special import digamma, gammaln

    keep = cdnow["x"] >= 1
    x, m = cdnow.loc[keep, "x"].to_numpy("float64"), cdnow.loc[keep, "monetary"].to_numpy("float64")
    terms = btyd.GammaGammaTerms(x, m)
    for p, q, v in [(6.25, 3.74, 15.44), (0.3, 40.0, 0.01), (120.0, 1.5, 2.0)]:
        px = p * x
        formula = gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(v) + (px - 1) * np.log(m) + px * np.log(x) - (px + q) * np.log(x * m + v)
        assert np.array_equal(terms.loglik(np.array([p, q, v])), formula)
        d_p = x * (digamma(px + q) - digamma(px) + np.log(m) + np.log(x) - np.log(x * m + v))
        assert np.array_equal(terms.grad(np.array([p, q, v]))[0], d_p)
        grad = terms.grad(np.array([p, q, v])).sum(axis=1)
        for i in range(3):
            step = np.zeros(3)
            step[i] = 1e-6 * [p, q, v][i]
            numeric = (terms.loglik(np.array([p, q, v]) + step).sum() - terms.loglik(np.array([p, q, v]) - step).sum()) / (2 * step[i])
            assert grad[i] == pytest.approx(numeric, rel=1e-4, abs=1e-3)


def test_fit_uses_weighted_unique_rows_so_duplicates_do_not_change_the_fit(cdnow):
    single = btyd.fit_mbgnbd(cdnow["x"], cdnow["t_x"], cdnow["T"])
    tripled = btyd.fit_mbgnbd(*(np.tile(cdnow[c].to_numpy(), 3) for c in ("x", "t_x", "T")))
    assert tripled.r == pytest.approx(single.r, rel=1e-3)
    assert tripled.log_likelihood == pytest.approx(3 * single.log_likelihood, rel=1e-6)


def test_gamma_gamma_needs_repeat_buyers():
    with pytest.raises(ValueError, match="repeat buyers"):
        btyd.fit_gamma_gamma(np.array([0, 0, 1]), np.array([0.0, 0.0, 10.0]))
