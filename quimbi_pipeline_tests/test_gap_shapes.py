"""A store's mixture of gap shapes (model/gap_shapes.py) and the silence test that reads customers through it."""

from dataclasses import replace

import numpy as np

from quimbi_pipeline.model import gap_shapes
from quimbi_pipeline.model.change_points import NS_PER_DAY, ChangeRule, rate_change


def purchase_days(n: int, gaps: int, shape: np.ndarray, mean_gap: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """(customer, customer * span + day) of each purchase day, sorted: Gamma renewal times cut to whole days, two
    purchases on one day one purchase day."""
    t = np.cumsum(rng.gamma(shape[:, None], mean_gap / shape[:, None], (n, gaps + 1)), axis=1)
    day = np.floor(t).astype("int64")
    span = int(day.max()) + 1
    keys = np.unique((np.arange(n)[:, None] * span + day).ravel())
    return keys // span, keys


def test_a_store_mixture_finds_its_regular_and_its_poisson_like_buyers():
    rng = np.random.default_rng(3)
    n = 2000
    shape = np.where(np.arange(n) < n // 2, 16.0, 1.0)  # half clockwork weekly buyers, half Poisson-like
    codes, keys = purchase_days(n, 30, shape, 7.0, rng)
    weights = np.exp(gap_shapes.store_prior(codes, keys, np.bincount(codes, minlength=n) - 1.0).log_weights)
    grid = gap_shapes.SHAPE_GRID
    assert abs(weights.sum() - 1.0) < 1e-9
    assert 0.45 <= weights[grid >= 10].sum() <= 0.55  # measured 0.498
    assert 0.45 <= weights[grid <= 1.4].sum() <= 0.55  # 0.502
    # Whole days make a weekly Poisson buyer's gaps look like shape 1.37 (0.99 of the weight there without the
    # continuity correction); counted as g - 1/2 days they read as Poisson again.
    assert weights[np.argmin(np.abs(grid - 1.0))] > 2 * weights[np.argmin(np.abs(grid - 1.37))]  # 0.411 against 0.091
    # A store of 20 leans on the prior's Poisson-like pseudo-customers: regular only on evidence.
    small = np.where(np.arange(20) < 10, 16.0, 1.0)
    codes, keys = purchase_days(20, 30, small, 7.0, rng)
    weights = np.exp(gap_shapes.store_prior(codes, keys, np.bincount(codes, minlength=20) - 1.0).log_weights)
    assert weights[grid <= 1.4].sum() >= 0.6  # 0.667


def test_the_mixture_finds_regular_buyers_silences_sooner_and_raises_fewer_false_ones():
    """A store of half clockwork (shape 16) and half Poisson-like weekly buyers, each silent for the same number of
    their own mean gaps on one evaluation day; silences found under the store's mixture against each customer's own
    shrunk shape (the test below 8 gaps, and for everyone before 2026-12-07)."""
    rng = np.random.default_rng(5)

    def silences(n, gaps, silent_gaps, rule):
        shape = np.where(np.arange(n) < n // 2, 16.0, 1.0)
        g = np.maximum(np.round(rng.gamma(shape[:, None], 7.0 / shape[:, None], (n, gaps))), 1)
        days = np.c_[np.zeros(n), np.cumsum(g, axis=1)]
        end_day = days[:, -1] + round(silent_gaps * 7.0)
        days += (end_day.max() - end_day)[:, None]  # every customer's silence ends on the same day
        change = rate_change(np.repeat(np.arange(n), gaps + 1), (days.ravel() * NS_PER_DAY).astype("int64"),
                             int((end_day.max() + 1) * NS_PER_DAY), n, rule)
        silent = change.after_n == 0
        return silent[shape > 1].mean(), silent[shape == 1].mean()

    own = replace(ChangeRule(), shape_mixture_min_gaps=0)
    regular, _ = silences(4000, 12, 2.5, ChangeRule())
    regular_own, _ = silences(4000, 12, 2.5, own)
    assert regular >= 0.8 and regular_own <= 0.7  # measured 0.90 against 0.57: 12 clockwork gaps are believed
    _, poisson = silences(4000, 40, 6.0, ChangeRule())
    _, poisson_own = silences(4000, 40, 6.0, own)
    assert poisson <= 0.02 and poisson_own >= 0.03  # 0.95% against 4.5%: 40 Poisson-like gaps are not
    _, poisson = silences(4000, 40, 3.0, ChangeRule())
    assert poisson == 0.0


def test_corrected_logs_sum_to_the_same_bits_in_any_order():
    gaps = np.random.default_rng(1).integers(1, 400, 10_000).astype("float64")
    logs = gap_shapes.corrected_log(gaps)
    assert np.sum(logs) == np.sum(logs[::-1]) == np.sum(np.sort(logs))
    np.testing.assert_allclose(logs, np.log(gaps - 0.5), atol=2**-30)
