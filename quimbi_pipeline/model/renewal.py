"""A renewal model of each customer's own gaps, with dropout: who is silent for longer than they usually are.

Why: the BG/NBD family's purchases are Poisson while a customer is alive, so a weekly buyer's five
silent weeks read as noise, and on a store where nobody has dropped out yet the fitted dropout is ~0
and no silence can mean churn. Here each customer's gaps between purchase days are log-normal with
their own location and spread (a regular weekly buyer: gaps 7 +- 2 days; a Poisson-like buyer: the
spread of an exponential), shrunk towards the store's customers when they have few gaps (normal-normal
shrinkage of the location; the spread moderated by the store's fitted spread prior, spread_prior). After
each purchase a customer drops out with probability p ~ Beta(a, b) across customers, as in the modified
BG/NBD (Batislam et al. 2007); with S(s) = P(gap > s) under the customer's predictive gap distribution and
x repeat purchase days:

    P(alive | silent s days) = (b + x) S(s) / ((b + x) S(s) + a)
    P(no purchase in (s, s + h]) = 1 - P(alive) (1 - S(s + h) / S(s))

The store's gap location prior and (a, b) are fitted jointly by maximum a posteriori (fit_renewal) with
a Beta prior on the mean dropout a / (a + b) worth PRIOR_CUSTOMERS customers: a store of 50 customers
leans on the prior, one of 50,000 on its own evidence. Everything is closed form per customer (numpy/scipy, no loops over customers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import betaln, digamma, log_ndtr, ndtri, polygamma

# Prior for a store's dropout: the mean per-purchase dropout probability and its weight in customers. The mean
# is about what this model fits on the CDNOW sample at its mature dates (0.46-0.48 from 1997-09-30 on);
# measured on young stores and early cuts of CDNOW (docs/signals.md), 0.5 with the weight of 40 customers
# calibrated both better than 0.25 or 0.4, or a weight of 100.
PRIOR_DROPOUT = 0.5
PRIOR_CUSTOMERS = 40.0
# Weak priors on the gap location prior, so a store with few or no repeat buyers still has one: the typical
# customer's usual gap log(days) ~ N(log 45, 1.5^2) and log(between_sd) ~ N(0, 0.75^2).
PRIOR_LOG_GAP = float(np.log(45.0))
PRIOR_LOG_GAP_SD = 1.5
PRIOR_LOG_BETWEEN_SD = 0.75
# The four store parameters are fitted on a fixed-seed sample of at most this many customers (fixed, so every
# machine fits the same parameters): 0.24 s at 20,000 on this 2-core machine.
FIT_SAMPLE_SIZE = 20_000
# a + b of the dropout Beta at most this: beyond it every customer has the same dropout, to 1%.
MAX_CONCENTRATION = 1e4
# Pseudo-gaps of DEFAULT_WITHIN_SD in a customer's log-gap spread when fewer than 3 customers have two gaps (no
# spread prior can be fitted from their own spreads).
SPREAD_PSEUDO_GAPS = 3.0
MAX_SPREAD_PRIOR_GAPS = 1000.0  # customers all alike: their spread is the store's
# Store defaults when no customer has two gaps / one gap: log-gap spread of a fairly regular buyer, a monthly gap.
DEFAULT_WITHIN_SD = 0.6
DEFAULT_LOG_GAP = float(np.log(30.0))
DEFAULT_BETWEEN_SD = 1.0
MIN_SD = 0.05  # floors: a customer with identical gaps is not certain to the day
MIN_SILENCE_DAYS = 0.5
STATIONARY_GRADIENT = 1e-6  # per customer: a fit that stops there is converged (_stationary)


@dataclass(frozen=True)
class RenewalParams:
    """The store's fitted parameters: dropout Beta(a, b); log-gap location prior N(mu0, between_sd^2);
    pooled within-customer log-gap spread; how many customers informed each."""
    a: float
    b: float
    mu0: float
    between_sd: float
    within_sd: float
    spread_prior_gaps: float  # d0 and s0 of the customers' log-gap variance prior (spread_prior)
    spread_prior_sd: float
    customers: int
    repeat_buyers: int
    converged: bool = True
    prior_weight: float = 0.0  # the dropout prior's share of the evidence: prior_customers / (prior_customers + customers)


@dataclass(frozen=True)
class GapPosterior:
    """Per customer: the predictive log-gap distribution N(mu, sd^2) in log days."""
    mu: np.ndarray
    sd: np.ndarray


def store_gap_prior(gap_count: np.ndarray, log_mean: np.ndarray, log_ss: np.ndarray) -> tuple[float, float, float]:
    """(mu0, between_sd, within_sd) from the customers' gaps: the pooled within-customer spread, the mean of
    the customers' mean log gaps and their spread net of the within-customer noise (method of moments)."""
    within_sd = pooled_within_sd(gap_count, log_ss)
    one = gap_count >= 1
    if one.sum() >= 2:
        means = log_mean[one]
        mu0 = float(means.mean())
        between_var = float(means.var(ddof=1)) - within_sd**2 * float(np.mean(1.0 / gap_count[one]))
        between_sd = float(np.sqrt(max(between_var, MIN_SD**2)))
    elif one.sum() == 1:
        mu0, between_sd = float(log_mean[one][0]), DEFAULT_BETWEEN_SD
    else:
        mu0, between_sd = DEFAULT_LOG_GAP, DEFAULT_BETWEEN_SD
    return mu0, between_sd, within_sd


def pooled_within_sd(gap_count: np.ndarray, log_ss: np.ndarray) -> float:
    """The customers' pooled within-customer spread of log gaps (DEFAULT_WITHIN_SD below 2 degrees of freedom)."""
    two = gap_count >= 2
    within_df = float((gap_count[two] - 1).sum())
    within_sd = float(np.sqrt(log_ss[two].sum() / within_df)) if within_df >= 2 else DEFAULT_WITHIN_SD
    return max(within_sd, MIN_SD)


def spread_prior(gap_count: np.ndarray, log_ss: np.ndarray) -> tuple[float, float]:
    """(d0, s0): the prior of the customers' log-gap variances, s^2 ~ s0^2 F(d, d0), fitted to the customers' own
    sample variances by moments of log s^2 (empirical Bayes, Smyth 2004, as limma's fitFDist). In a store of
    alike buyers d0 is large and every customer's spread is the store's; in one that mixes clockwork and
    Poisson-like buyers d0 is small, so a regular customer's own few gaps already count."""
    d = np.asarray(gap_count, dtype="float64") - 1.0
    two = d >= 1
    if two.sum() < 3:
        return SPREAD_PSEUDO_GAPS, DEFAULT_WITHIN_SD
    d = d[two]
    s2 = np.maximum(np.asarray(log_ss, dtype="float64")[two] / d, MIN_SD**2)
    z = np.log(s2) - digamma(d / 2) + np.log(d / 2)
    centre, spread = float(z.mean()), float(z.var(ddof=1))
    # The excess over the sampling noise, less one standard error of the variance: a few customers who happen to
    # differ do not make a store of mixed buyers (13 of CDNOW's early customers gave d0 = 1.4 where 153 give 1000).
    excess = float(spread * (1.0 - np.sqrt(2.0 / (d.size - 1))) - polygamma(1, d / 2).mean())
    d0 = min(2.0 * _trigamma_inverse(excess), MAX_SPREAD_PRIOR_GAPS) if excess > 0 else MAX_SPREAD_PRIOR_GAPS
    if d0 >= MAX_SPREAD_PRIOR_GAPS:
        # Customers alike: their common variance is the pooled mean of theirs, unbiased whatever the gaps' shape. The
        # log moments read skewed log gaps as tighter (a store of Poisson-like buyers: s0 1.08 against 1.28).
        return d0, pooled_within_sd(np.asarray(gap_count, dtype="float64"), np.asarray(log_ss, dtype="float64"))
    return d0, float(np.sqrt(np.exp(centre + digamma(d0 / 2) - np.log(d0 / 2))))


def _trigamma_inverse(x: float) -> float:
    """y with trigamma(y) = x (Newton's iteration on 1 / trigamma, as limma's trigammaInverse)."""
    if x > 1e7:
        return 1.0 / np.sqrt(x)
    if x < 1e-6:
        return 1.0 / x
    y = 0.5 + 1.0 / x
    for _ in range(50):
        tri = float(polygamma(1, y))
        step = tri * (1.0 - tri / x) / float(polygamma(2, y))
        y += step
        if -step / y < 1e-8:
            break
    return y


def own_spread2(n: np.ndarray, log_ss: np.ndarray, d0: float, s0: float) -> np.ndarray:
    """Each customer's log-gap variance: their own sample variance moderated by the store's prior (d0 pseudo-gaps of s0^2)."""
    return (np.where(n >= 2, log_ss, 0.0) + d0 * s0**2) / (np.maximum(n - 1, 0) + d0)


def gap_posterior(gap_count: np.ndarray, log_mean: np.ndarray, log_ss: np.ndarray, mu0: float, between_sd: float,
                  d0: float, s0: float) -> GapPosterior:
    """Each customer's predictive log-gap distribution: own spread moderated by the store's spread prior (d0, s0),
    own location shrunk towards mu0 by the normal-normal rule, the location's uncertainty added."""
    n = np.asarray(gap_count, dtype="float64")
    mu, sd, _ = _posterior_terms(n, log_mean, own_spread2(n, log_ss, d0, s0), mu0, between_sd)
    return GapPosterior(mu, np.maximum(sd, MIN_SD))


def _posterior_terms(n: np.ndarray, log_mean: np.ndarray, spread2: np.ndarray, mu0: float, between_sd: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """gap_posterior's (location, spread before its floor, location precision), given each customer's spread2: the
    fit's gradient needs the precision and the unfloored spread too."""
    precision = n / spread2 + 1.0 / between_sd**2
    mu = (n * np.where(n >= 1, log_mean, 0.0) / spread2 + mu0 / between_sd**2) / precision
    return mu, np.sqrt(spread2 + 1.0 / precision), precision


def log_survival(post: GapPosterior, days: np.ndarray) -> np.ndarray:
    """log P(gap > days) under each customer's predictive log-normal."""
    z = (np.log(np.maximum(days, MIN_SILENCE_DAYS)) - post.mu) / post.sd
    return log_ndtr(-z)


def _unpack(theta: np.ndarray) -> tuple[float, float, float, float]:
    """(mu0, between_sd, a, b) of the fit's unconstrained parameters (mu0, log between_sd, logit of the mean dropout,
    log(a + b))."""
    m = 1.0 / (1.0 + np.exp(-theta[2]))
    phi = np.exp(theta[3])
    return theta[0], np.exp(theta[1]), m * phi, (1.0 - m) * phi


class _MapObjective:
    """fit_renewal's negative log posterior per customer and its exact gradient in the unconstrained parameters.

    The value is the sum of three parts: each repeat buyer's mean log gap N(mu0, tau^2 + spread^2 / n); each customer's
    silence, log E[(1 - p)^x (p + (1 - p) S(s))] with S from gap_posterior (which moves with mu0 and tau); the priors.
    The gradient follows the same terms by the chain rule (d log S / dz = -phi(z) / Phi(-z); the Beta terms' digammas
    once per distinct purchase count); test_churn checks it against finite differences."""

    def __init__(self, n, log_mean, silence_days, spread2, prior_dropout, prior_customers):
        self.n, self.log_mean, self.spread2 = n, log_mean, spread2  # spread2: own_spread2, fixed through the fit
        self.rep = n >= 1
        self.values, self.index = np.unique(n, return_inverse=True)
        self.log_days = np.log(np.maximum(silence_days, MIN_SILENCE_DAYS))
        self.k1, self.k0 = prior_customers * prior_dropout, prior_customers * (1.0 - prior_dropout)

    def value_and_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        mu, tau, a, b = _unpack(theta)
        n, rep, size = self.n, self.rep, self.n.size
        # Repeat buyers' mean log gaps.
        v = tau**2 + self.spread2[rep] / n[rep]
        r = self.log_mean[rep] - mu
        gaps = -0.5 * (np.log(v) + r**2 / v)
        d_gaps_mu = float((r / v).sum())
        d_gaps_theta1 = float((-0.5 * (1.0 / v - r**2 / v**2) * 2.0 * tau**2).sum())
        # Silences, through each customer's predictive log-gap N(post_mu, post_sd^2).
        post_mu, raw_sd, precision = _posterior_terms(n, self.log_mean, self.spread2, mu, tau)
        post = GapPosterior(post_mu, np.maximum(raw_sd, MIN_SD))  # gap_posterior's, its spread2 computed once per fit
        z = (self.log_days - post.mu) / post.sd
        log_s = log_ndtr(-z)
        mills = np.exp(-0.5 * z**2 - 0.5 * np.log(2.0 * np.pi) - log_s)  # phi(z) / Phi(-z): d log S / dz = -mills
        d_post_mu_mu = 1.0 / (tau**2 * precision)
        d_post_mu_theta1 = 2.0 * (post.mu - mu) / (tau**2 * precision)
        d_sd_theta1 = np.where(raw_sd > MIN_SD, 1.0 / (raw_sd * tau**2 * precision**2), 0.0)
        d_log_s_mu = -mills * (-d_post_mu_mu / post.sd)
        d_log_s_theta1 = -mills * (-d_post_mu_theta1 / post.sd - z * d_sd_theta1 / post.sd)
        x = self.values
        base = betaln(a, b)
        stay_beta, leave_beta = betaln(a, b + x + 1) - base, betaln(a + 1, b + x) - base
        stay = stay_beta[self.index] + log_s
        leave = leave_beta[self.index]
        silence = np.logaddexp(stay, leave)
        w = np.exp(stay - silence)  # the share of "still buying" in each customer's silence likelihood
        psi_ab, psi_all = digamma(a + b), digamma(a + b + x + 1)
        d_stay_a, d_stay_b = psi_ab - psi_all, digamma(b + x + 1) - psi_all - digamma(b) + psi_ab
        d_leave_a = digamma(a + 1) - psi_all - digamma(a) + psi_ab
        d_leave_b = digamma(b + x) - psi_all - digamma(b) + psi_ab
        d_silence_a = float((w * d_stay_a[self.index] + (1.0 - w) * d_leave_a[self.index]).sum())
        d_silence_b = float((w * d_stay_b[self.index] + (1.0 - w) * d_leave_b[self.index]).sum())
        # Priors.
        m = a / (a + b)
        prior = (self.k1 * np.log(m) + self.k0 * np.log1p(-m) - 0.5 * (theta[3] / 2.0) ** 2
                 - 0.5 * ((mu - PRIOR_LOG_GAP) / PRIOR_LOG_GAP_SD) ** 2 - 0.5 * (theta[1] / PRIOR_LOG_BETWEEN_SD) ** 2)
        value = -(gaps.sum() + silence.sum() + prior) / size  # per customer: the tolerances mean the same at any size
        dm = m * (1.0 - m)  # d m / d theta2; a = m phi, b = (1 - m) phi
        gradient = -np.array([
            d_gaps_mu + float((w * d_log_s_mu).sum()) - (mu - PRIOR_LOG_GAP) / PRIOR_LOG_GAP_SD**2,
            d_gaps_theta1 + float((w * d_log_s_theta1).sum()) - theta[1] / PRIOR_LOG_BETWEEN_SD**2,
            (d_silence_a - d_silence_b) * (a + b) * dm + self.k1 * (1.0 - m) - self.k0 * m,
            d_silence_a * a + d_silence_b * b - theta[3] / 4.0,
        ]) / size
        if not (np.isfinite(value) and np.isfinite(gradient).all()):
            return 1e300, np.zeros(4)
        return float(value), gradient


def _stationary(x: np.ndarray, gradient: np.ndarray, bounds: list[tuple[float, float]]) -> bool:
    """A fit whose line search ended without a decrease is converged where its projected gradient is ~0: with the exact
    gradient L-BFGS-B can stop "abnormally" at the optimum, where the objective no longer falls in floating point
    (a demo store: |gradient| 1.4e-8, the same point as the central-difference fit to 7 digits)."""
    low, high = np.array(bounds).T
    projected = np.where(((x <= low) & (gradient > 0)) | ((x >= high) & (gradient < 0)), 0.0, gradient)
    return bool(np.all(np.isfinite(projected)) and np.abs(projected).max() <= STATIONARY_GRADIENT)


def fit_renewal(gap_count, log_mean, log_ss, silence_days, *, prior_dropout: float = PRIOR_DROPOUT,
                prior_customers: float = PRIOR_CUSTOMERS, sample_size: int = FIT_SAMPLE_SIZE, random_state: int = 42) -> RenewalParams:
    """The store's parameters by maximum a posteriori over its customers (a fixed-seed sample of `sample_size`).

    The within-customer spread is pooled by moments. The location prior (mu0, between_sd) and the dropout Beta(a, b)
    are fitted jointly, because they trade off: a young store only sees gaps shorter than its age, so the moments
    of the observed gaps say "everyone buys every few weeks" and every silent one-time buyer looks dead. In the
    joint likelihood each customer contributes their observed mean log gap, N(mu0, between_sd^2 + spread^2 / n),
    and their current silence, E[(1 - p)^x (p + (1 - p) S(s))]: long silences can be long gaps or dropout, and the
    customers who came back after long gaps say which. Priors: the mean dropout a / (a + b) ~
    Beta(prior_customers * prior_dropout, prior_customers * (1 - prior_dropout)); log(a + b) ~ N(0, 2^2); the weak
    PRIOR_LOG_GAP ones on (mu0, between_sd)."""
    gap_count, log_mean, log_ss, silence_days = (np.asarray(v, dtype="float64") for v in (gap_count, log_mean, log_ss, silence_days))
    customers, repeat_buyers = int(gap_count.size), int((gap_count >= 1).sum())
    if gap_count.size > sample_size:
        idx = np.sort(np.random.default_rng(random_state).choice(gap_count.size, sample_size, replace=False))
        gap_count, log_mean, log_ss, silence_days = gap_count[idx], log_mean[idx], log_ss[idx], silence_days[idx]
    mu0, between_sd, within_sd = store_gap_prior(gap_count, log_mean, log_ss)
    d0, s0 = spread_prior(gap_count, log_ss)
    n = gap_count
    spread2 = own_spread2(n, log_ss, d0, s0)

    objective = _MapObjective(n, log_mean, silence_days, spread2, prior_dropout, prior_customers)
    start = np.array([mu0, np.log(between_sd), np.log(prior_dropout / (1 - prior_dropout)), 0.0])
    # Bounded: when every customer has much the same dropout the likelihood keeps rising as a + b -> infinity, and an
    # unbounded simplex walked that ridge for minutes; at the bound the fit stops (the predictions no longer move).
    bounds = [(np.log(0.5), np.log(3650.0)), (np.log(MIN_SD), np.log(5.0)), (-12.0, 12.0), (np.log(0.01), np.log(MAX_CONCENTRATION))]
    start = np.clip(start, [b[0] for b in bounds], [b[1] for b in bounds])
    # L-BFGS-B on the exact gradient (_MapObjective.value_and_gradient): one evaluation of the likelihood and its gradient per step,
    # where central differences took nine (docs/performance.md, "The renewal fit on its exact gradient").
    res = minimize(objective.value_and_gradient, start, method="L-BFGS-B", jac=True, bounds=bounds,
                   options={"ftol": 1e-15, "gtol": 1e-9, "maxiter": 500})
    mu, tau, a, b = _unpack(res.x)
    converged = bool(res.success) or _stationary(res.x, res.jac, bounds)
    return RenewalParams(float(a), float(b), float(mu), float(tau), within_sd, d0, s0, customers, repeat_buyers, converged,
                         prior_weight=prior_customers / (prior_customers + customers))


@dataclass(frozen=True)
class RenewalState:
    """Each customer at D under the store's parameters: what every horizon's scores share, computed once."""
    silence: np.ndarray  # days since the last purchase
    p_alive: np.ndarray
    log_s_now: np.ndarray  # log P(gap > silence)
    post: GapPosterior
    next_order_days: np.ndarray  # days from the last purchase to the median next purchase, if alive
    usual_gap: np.ndarray  # the predictive mean gap
    stay_p: np.ndarray  # P(surviving dropout at each later purchase): the posterior mean (b + x + 1) / (a + b + x + 1)

    def over(self, horizon_days: float) -> tuple[np.ndarray, np.ndarray]:
        """(P(no purchase in the next horizon_days), expected purchase days in them): the first purchase as the
        customer's next gap ends within the horizon, then renewals at their usual gap while they stay."""
        buy_if_alive = -np.expm1(log_survival(self.post, self.silence + horizon_days) - self.log_s_now)
        room = np.clip(self.silence + horizon_days - self.next_order_days, 0.0, None) / self.usual_gap
        more = self.stay_p * (1.0 - self.stay_p**room) / np.maximum(1.0 - self.stay_p, 1e-12)
        return 1.0 - self.p_alive * buy_if_alive, self.p_alive * buy_if_alive * (1.0 + more)


def renewal_state(params: RenewalParams, gap_count, log_mean, log_ss, silence_days) -> RenewalState:
    gap_count, log_mean, log_ss, s = (np.asarray(v, dtype="float64") for v in (gap_count, log_mean, log_ss, silence_days))
    post = gap_posterior(gap_count, log_mean, log_ss, params.mu0, params.between_sd, params.spread_prior_gaps, params.spread_prior_sd)
    log_s_now = log_survival(post, s)
    stay = np.log(params.b + gap_count) + log_s_now
    p_alive = np.exp(stay - np.logaddexp(stay, np.log(params.a)))
    # Next purchase date if alive: the conditional median of the gap given it exceeds s.
    half = log_s_now + np.log(0.5)
    next_days = np.maximum(np.exp(post.mu + post.sd * ndtri(-np.expm1(half))), s)
    usual_gap = np.exp(post.mu + 0.5 * post.sd**2)
    stay_p = (params.b + gap_count + 1) / (params.a + params.b + gap_count + 1)
    return RenewalState(s, p_alive, log_s_now, post, next_days, usual_gap, stay_p)
