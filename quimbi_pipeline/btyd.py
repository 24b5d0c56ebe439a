"""Buy-till-you-die models, vectorized on numpy/scipy (no lifetimes dependency).

- BG/NBD (Fader, Hardie & Lee 2005): reproduces the published CDNOW fit; one-time buyers get
  P(alive) = 1, so it is not used for churn risk.
- Modified BG/NBD (Batislam, Denizel & Filiztekin 2007): a customer may drop out right after the
  first purchase too, so one-time buyers get a real P(alive) < 1. Used for churn_risk_score.
- Gamma-Gamma spend (Fader, Hardie & Lee 2005b) for the expected value of a purchase.

Inputs per customer: x = repeat purchase days, t_x = time of last purchase, T = age, all measured
from the first purchase in one time unit (the pipeline uses weeks). Fitting maximizes the summed
log-likelihood over the unique (x, t_x, T) rows weighted by their counts (L-BFGS-B on log
parameters), so a million customers cost about as much as their distinct histories.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import gammaln, hyp2f1


@dataclass(frozen=True)
class BGParams:
    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float = float("nan")
    converged: bool = True


@dataclass(frozen=True)
class GammaGammaParams:
    p: float
    q: float
    v: float
    log_likelihood: float = float("nan")
    converged: bool = True

    @property
    def population_mean_spend(self) -> float:
        return self.p * self.v / (self.q - 1) if self.q > 1 else float("nan")


def _compress(*columns: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    frame = pd.DataFrame({f"c{i}": c for i, c in enumerate(columns)})
    grouped = frame.groupby(list(frame.columns), sort=True).size()
    idx = grouped.index.to_frame(index=False)
    return [idx[c].to_numpy("float64") for c in frame.columns], grouped.to_numpy("float64")


def bgnbd_loglik(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    r, alpha, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(x > 0, np.log(a) - np.log(b + x - 1) - (r + x) * np.log(alpha + t_x), -np.inf)
    return a1 + a2 + np.logaddexp(a3, a4)


def mbgnbd_loglik(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    r, alpha, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x + 1) - gammaln(b) - gammaln(a + b + x + 1)
    a3 = -(r + x) * np.log(alpha + T)
    a4 = np.log(a) - np.log(b + x) - (r + x) * np.log(alpha + t_x)
    return a1 + a2 + np.logaddexp(a3, a4)


def _fit_bg_family(loglik, x, t_x, T, sample_size: int | None, random_state: int) -> BGParams:
    x, t_x, T = (np.asarray(v, dtype="float64") for v in (x, t_x, T))
    if sample_size is not None and x.size > sample_size:
        idx = np.sort(np.random.default_rng(random_state).choice(x.size, sample_size, replace=False))
        x, t_x, T = x[idx], t_x[idx], T[idx]
    (ux, ut, uT), w = _compress(x, t_x, T)
    # Rescale time so the optimizer sees alpha near 1; alpha is scaled back afterwards.
    scale = 10.0 / max(float(uT.max()), 1e-9)
    ut, uT = ut * scale, uT * scale

    def objective(log_params: np.ndarray) -> float:
        ll = loglik(np.exp(log_params), ux, ut, uT)
        value = -(w * ll).sum() / w.sum()
        return value if np.isfinite(value) else 1e10

    best = None
    for start in (np.zeros(4), np.log([0.5, 1.0, 0.5, 2.0])):
        res = minimize(objective, start, method="L-BFGS-B", bounds=[(-12, 12)] * 4, options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9})
        if best is None or res.fun < best.fun:
            best = res
    r, alpha, a, b = np.exp(best.x)
    params = np.array([r, alpha / scale, a, b])
    # The log-likelihood in the caller's time unit (rescaling time shifts it by -x log(scale)).
    ll = float((w * loglik(params, ux, ut / scale, uT / scale)).sum())
    return BGParams(*(float(v) for v in params), ll, bool(best.success))


def fit_bgnbd(x, t_x, T, *, sample_size: int | None = None, random_state: int = 42) -> BGParams:
    return _fit_bg_family(bgnbd_loglik, x, t_x, T, sample_size, random_state)


def fit_mbgnbd(x, t_x, T, *, sample_size: int | None = None, random_state: int = 42) -> BGParams:
    return _fit_bg_family(mbgnbd_loglik, x, t_x, T, sample_size, random_state)


def bgnbd_p_alive(p: BGParams, x, t_x, T) -> np.ndarray:
    x, t_x, T = (np.asarray(v, dtype="float64") for v in (x, t_x, T))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log(p.a) - np.log(p.b + x - 1) + (p.r + x) * (np.log(p.alpha + T) - np.log(p.alpha + t_x))
    return np.where(x > 0, 1.0 / (1.0 + np.exp(np.minimum(log_ratio, 700))), 1.0)


def mbgnbd_p_alive(p: BGParams, x, t_x, T) -> np.ndarray:
    x, t_x, T = (np.asarray(v, dtype="float64") for v in (x, t_x, T))
    log_ratio = np.log(p.a) - np.log(p.b + x) + (p.r + x) * (np.log(p.alpha + T) - np.log(p.alpha + t_x))
    return 1.0 / (1.0 + np.exp(np.minimum(log_ratio, 700)))


def bgnbd_expected_purchases(p: BGParams, t: float, x, t_x, T) -> np.ndarray:
    """E[purchases in (T, T + t] | x, t_x, T] under BG/NBD."""
    x, t_x, T = (np.asarray(v, dtype="float64") for v in (x, t_x, T))
    r, alpha, a, b = p.r, p.alpha, p.a, p.b
    hyp = hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + T + t))
    numerator = (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp)
    return numerator * bgnbd_p_alive(p, x, t_x, T)


def mbgnbd_expected_purchases(p: BGParams, t: float, x, t_x, T) -> np.ndarray:
    """E[purchases in (T, T + t] | x, t_x, T] under the modified BG/NBD."""
    x, t_x, T = (np.asarray(v, dtype="float64") for v in (x, t_x, T))
    r, alpha, a, b = p.r, p.alpha, p.a, p.b
    hyp = hyp2f1(r + x, b + x + 1, a + b + x, t / (alpha + T + t))
    numerator = (a + b + x) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp)
    return numerator * mbgnbd_p_alive(p, x, t_x, T)


def gamma_gamma_loglik(params: np.ndarray, x: np.ndarray, m: np.ndarray) -> np.ndarray:
    p, q, v = params
    px = p * x
    return gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(v) + (px - 1) * np.log(m) + px * np.log(x) - (px + q) * np.log(x * m + v)


def fit_gamma_gamma(x, m, *, sample_size: int | None = None, random_state: int = 42) -> GammaGammaParams:
    """Fit on repeat buyers (x >= 1) with a positive mean spend m of their repeat purchases."""
    x, m = np.asarray(x, dtype="float64"), np.asarray(m, dtype="float64")
    keep = (x >= 1) & (m > 0) & np.isfinite(m)
    x, m = x[keep], m[keep]
    if x.size < 2:
        raise ValueError("Gamma-Gamma needs at least two repeat buyers with positive spend")
    if sample_size is not None and x.size > sample_size:
        idx = np.sort(np.random.default_rng(random_state).choice(x.size, sample_size, replace=False))
        x, m = x[idx], m[idx]
    scale = 1.0 / float(np.median(m))  # spend in units of the median: v is scaled back afterwards
    ms = m * scale

    def objective(log_params: np.ndarray) -> float:
        value = -gamma_gamma_loglik(np.exp(log_params), x, ms).mean()
        return value if np.isfinite(value) else 1e10

    best = None
    for start in (np.zeros(3), np.log([5.0, 3.0, 10.0 * scale])):
        res = minimize(objective, start, method="L-BFGS-B", bounds=[(-12, 12)] * 3, options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9})
        if best is None or res.fun < best.fun:
            best = res
    p, q, v = np.exp(best.x)
    params = GammaGammaParams(float(p), float(q), float(v / scale), float("nan"), bool(best.success))
    ll = float(gamma_gamma_loglik(np.array([params.p, params.q, params.v]), x, m).sum())
    return GammaGammaParams(params.p, params.q, params.v, ll, params.converged)


def gamma_gamma_expected_spend(g: GammaGammaParams, x, m) -> np.ndarray:
    """E[spend per purchase | x, m]; customers without repeat purchases get the population mean."""
    x, m = np.asarray(x, dtype="float64"), np.asarray(m, dtype="float64")
    pop = g.population_mean_spend
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = g.p * x / (g.p * x + g.q - 1)
        cond = (1 - weight) * pop + weight * m
    return np.where((x >= 1) & (m > 0), cond, pop)
