"""A store's mixture of gap shapes: how regular its customers' purchase rhythms are (pure, vectorized).

A customer's gaps between purchase days are a Gamma renewal process with their own shape k: a clockwork buyer's
k is about 16, a Poisson-like buyer's 1. One customer's gaps say little about k, so the silence test
(change_points.rate_change) reads a customer with many gaps through the store's distribution of shapes
(empirical Bayes): the weights of a grid of shapes across the store's customers, fitted by EM, and each
customer's posterior over the grid given the proportions of their own gaps. A Poisson-like buyer whose gaps
happen to look tighter is pulled back to the store's Poisson-like buyers, a clockwork buyer up to its
clockwork ones.

Purchase days are whole days: a buyer at Poisson times has geometric day gaps, whose spread reads as a
shape of 1.1-1.4 (more for frequent buyers). The likelihood counts each gap as g - 1/2 days (a geometric's
continuity correction), which reads them as shape 1.0-1.05 again (benchmarks: docs/signals.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaincc, gammaln

SHAPE_GRID = np.geomspace(0.5, 20.0, 12)  # shapes the mixture is fitted on (0.5 bursty, 1 Poisson, 14-20 clockwork)
PRIOR_SAMPLE = 20_000  # customers a store's mixture is fitted on (a fixed-seed sample beyond)
POISSON_CUSTOMERS = 10.0  # pseudo-customers at shape 1 in every store's mixture: regular only on evidence
CONTINUITY_DAYS = 0.5
LOG_QUANTUM = 2.0**30
_POISSON = int(np.argmin(np.abs(np.log(SHAPE_GRID))))


@dataclass(frozen=True)
class ShapePrior:
    """A store's mixture: the log weight of each SHAPE_GRID shape across its customers."""

    log_weights: np.ndarray


def corrected_log(gap_days: np.ndarray) -> np.ndarray:
    """log(gap - 1/2) of gaps in whole days, rounded to a multiple of 2^-30, so that sums of them are exact in any
    order (a customer's gaps summed by Polars or DuckDB give the pipeline's bits: benchmarks/engines.py)."""
    return np.round(np.log(np.asarray(gap_days, dtype="float64") - CONTINUITY_DAYS) * LOG_QUANTUM) / LOG_QUANTUM


def log_likelihood(n_gaps: np.ndarray, sum_days: np.ndarray, sum_corrected_log: np.ndarray) -> np.ndarray:
    """log P(the proportions of a customer's gaps | shape k), per customer (rows) and SHAPE_GRID shape (columns),
    from their gaps' count, their sum in days and the sum of corrected_log: n Gamma(k) gaps divided by their sum are
    Dirichlet(k, ..., k) whatever the mean gap. Fewer than 2 gaps say nothing (0)."""
    n = np.asarray(n_gaps, dtype="float64")
    counts, which = np.unique(n, return_inverse=True)  # the normalizing constant per gap count, not per customer
    k = SHAPE_GRID[None, :]
    norm = gammaln(counts[:, None] * k) - counts[:, None] * gammaln(k)
    total = np.asarray(sum_days, dtype="float64") - CONTINUITY_DAYS * n
    with np.errstate(invalid="ignore", divide="ignore"):
        ll = norm[which.ravel()] + (k - 1.0) * np.asarray(sum_corrected_log, dtype="float64")[:, None] - k * (n * np.log(total))[:, None]
    return np.where((n[:, None] >= 2) & np.isfinite(ll), ll, 0.0)


def prior_sample(n_gaps: np.ndarray) -> np.ndarray:
    """The customers (positions) a store's mixture is fitted on: those with 2+ gaps, a fixed-seed sample of
    PRIOR_SAMPLE of them beyond that many, ascending."""
    rows = np.flatnonzero(np.asarray(n_gaps) >= 2)
    if rows.size > PRIOR_SAMPLE:
        rows = np.sort(np.random.default_rng(0).choice(rows, PRIOR_SAMPLE, replace=False))
    return rows


def fit_prior(n_gaps: np.ndarray, sum_days: np.ndarray, sum_corrected_log: np.ndarray, iterations: int = 300) -> ShapePrior:
    """The store's mixture by EM over SHAPE_GRID (a nonparametric maximum likelihood) on prior_sample's customers,
    with POISSON_CUSTOMERS more at shape 1 (a store of 20 customers leans on them; one of 20,000 does not)."""
    rows = prior_sample(n_gaps)
    ll = log_likelihood(np.asarray(n_gaps)[rows], np.asarray(sum_days)[rows], np.asarray(sum_corrected_log)[rows])
    likelihood = np.exp(ll - ll.max(axis=1, keepdims=True))  # each customer's, up to a factor of their own
    pseudo = np.zeros(SHAPE_GRID.size)
    pseudo[_POISSON] = POISSON_CUSTOMERS
    weights = np.full(SHAPE_GRID.size, 1.0 / SHAPE_GRID.size)
    for _ in range(iterations):
        post = likelihood * weights
        post /= post.sum(axis=1, keepdims=True)
        new = (post.sum(axis=0) + pseudo) / (rows.size + POISSON_CUSTOMERS)
        done = np.abs(new - weights).max() < 1e-7
        weights = new
        if done:
            break
    with np.errstate(divide="ignore"):
        return ShapePrior(np.log(weights))


def store_prior(day_codes: np.ndarray, day_keys: np.ndarray, n_gaps: np.ndarray) -> ShapePrior:
    """fit_prior from a store's purchase days: `day_keys` customer * span + day, sorted, `day_codes` their customers,
    `n_gaps` per customer. Only the sampled customers' days are read."""
    sampled = np.zeros(n_gaps.size, dtype=bool)
    sampled[prior_sample(n_gaps)] = True
    rows = sampled[day_codes]
    c, keys = day_codes[rows], day_keys[rows]
    same = c[1:] == c[:-1]
    owner, gap = c[1:][same], np.diff(keys)[same].astype("float64")  # one customer's keys differ by their day gaps
    count = np.bincount(owner, minlength=n_gaps.size).astype("float64")
    return fit_prior(count, np.bincount(owner, gap, n_gaps.size), np.bincount(owner, corrected_log(gap), n_gaps.size))


def silence_evidence(n_gaps: np.ndarray, sum_days: np.ndarray, sum_corrected_log: np.ndarray, silence_in_gaps: np.ndarray,
                     prior: ShapePrior, min_shape: float) -> np.ndarray:
    """-log P(a gap of `silence_in_gaps` mean gaps or more) under each customer's posterior over the store's shapes
    (each shape's tail at no less than `min_shape`, as the plug-in test)."""
    post = log_likelihood(n_gaps, sum_days, sum_corrected_log) + prior.log_weights[None, :]
    post = np.exp(post - post.max(axis=1, keepdims=True))
    post /= post.sum(axis=1, keepdims=True)
    tail = np.zeros(post.shape[0])
    for i, k in enumerate(np.maximum(SHAPE_GRID, min_shape)):  # per shape, over the customers it has any weight for
        rows = np.flatnonzero(post[:, i] > 1e-15)  # less weight changes no evidence under 34
        tail[rows] += post[rows, i] * gammaincc(k, k * silence_in_gaps[rows])
    return -np.log(np.maximum(tail, 1e-300))
