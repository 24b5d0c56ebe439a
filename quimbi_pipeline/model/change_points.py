"""Change points in each customer's own order stream: has this customer's behavior changed, since when,
from what to what, and how sure are we? (pure, vectorized: no loop over customers)

The 365-day aggregates move a few percent a week when a customer changes, so segments follow a change
months late, and a single odd order moves nothing. Here every customer is tested against their own
history, per axis, with a single change point (the newest significant one wins):

- order values, basket sizes, discount rates, repeat-category shares (`mean_shift_change`): the newest
  m purchases against the older ones, a two-sample t statistic with the pooled within-customer variance
  of that split shrunk towards the store's (a customer with few orders borrows the store's spread);
  evidence = t^2 / 2, the log-likelihood ratio of a Gaussian mean shift. At least `min_after` purchases
  after the change: one odd order is not a change, unless it alone is decisive (`decisive_evidence` after 6 steady
  orders: |t| >= 5.1, a value x5 after orders within +-25%).
- purchase rate (`rate_change`): purchase days as a renewal process. Silence: the open gap against the
  customer's own gap distribution, a Gamma with the customer's mean gap and shape (regular buyers have a
  large shape, Poisson-like buyers 1), evidence = -log P(a gap this long); a customer with many gaps takes their
  shape from the store's mixture of shapes (regular and Poisson-like buyers; empirical Bayes, gap_shapes.py).
  Bursts and slowdowns with purchases since: the Poisson log-likelihood ratio of two rates, times the
  customer's gap shape (a regular buyer's counts vary less than a Poisson's).

A change is reported when its evidence reaches `rule.evidence` (about 2e-6 for a fixed split of a
Gaussian shift; splits tried per customer are at most `max_after`). Its `since` is the time of the
customer's last purchase before the change, `before` and `after` the signal's level on each side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaincc, gammainccinv

from quimbi_pipeline.model import gap_shapes
from quimbi_pipeline.model.gap_shapes import ShapePrior

NS_PER_DAY = 86_400 * 10**9
DAYS_PER_MONTH = 30.4375
MIN_CV2 = 1e-3  # floor of an observed gap CV^2 before the log (k is capped at max_shape anyway)


@dataclass(frozen=True)
class ChangeRule:
    evidence: float = 13.0  # log-likelihood ratio of a mean shift or a rate change: t^2 / 2 >= 13 is |t| >= 5.1
    # ... of a 0/1 rate change (a Bernoulli LLR grows by at most ~2 per order): discounted orders, and orders in the
    # customer's favourite category. The favourite is read from the same orders, so its share is noisier under no
    # change: at 7 it gave the planted store 3 more unchanged customers with an anomaly and no change found sooner,
    # while discounts at 7 found 5 more rises within 28 days for 1 more. docs/signals.md has the figures.
    binary_evidence: float = 7.0
    category_evidence: float = 8.0
    silence_evidence: float = 10.0  # -log P(a gap this long): P < 5e-5
    min_before: int = 4  # purchases (or gaps) before the change
    # ...of a mean shift (order value, basket size), with at least min_after purchases after it: one is enough, since
    # the store's spread stands in for the customer's own (prior_weight), so a single earlier order is judged with
    # the spread orders have in this store. (2 until 2026-12-05: a young store's 4-fold rise after one order went
    # unflagged; with 1 the planted store, CDNOW and the young stores' unchanged customers get no more flags.)
    shift_min_before: int = 1
    min_after: int = 2  # purchases after the change (mean shifts); a silence needs none
    # ...unless the first changed purchase alone is decisive: t^2 / 2 >= this (|t| >= 5.1, the evidence of any mean
    # shift; a $30 order after a dozen of $300 +- 15% is |t| ~ 17, a 5-fold one after orders +- 25% |t| ~ 6) after at
    # least decisive_min_before purchases. Weaker evidence waits for a second. docs/signals.md: 13 against 20 and 40.
    decisive_evidence: float = 13.0
    decisive_min_before: int = 6
    max_after: int = 60  # the newest purchases a change can hold
    prior_weight: float = 4.0  # pseudo-observations of the store's spread in a customer's (mean shifts)
    shape_prior_gaps: float = 2.0  # pseudo degrees of freedom of a Poisson buyer's spread in a customer's log gap CV^2
    min_before_days: int = 28  # history before a rate change
    max_shape: float = 20.0  # cap of a customer's gap shape (how regular their gaps can be believed to be)
    # floor of the gap shape in the silence test (0.5 = the shape's own floor: a bursty buyer's long gaps are
    # normal for them). benchmarks/silence.py: a floor of 1 cuts bursty buyers' delays by a quarter and
    # doubles their false silences.
    silence_min_shape: float = 0.5
    # A silence needs fewer gaps (and days) before it than a change with purchases after it: a young store's weekly
    # buyers have a few weeks of history; the silence evidence itself still has to reach its threshold.
    silence_min_before: int = 2
    silence_min_before_days: int = 14
    # From this many gaps a silence is judged under the customer's place in the store's mixture of gap shapes
    # (ShapePrior) instead of their own shrunk shape: 8+ gaps place a customer in it. Below, the mixture's weight on
    # Poisson-like buyers delayed a young store's stoppers with 3-7 gaps (found 0.59 / 0.48 -> 0.38 / 0.22); from 8 it
    # found more planted changes and gave fewer unchanged customers an anomaly. docs/signals.md has the figures.
    shape_mixture_min_gaps: int = 8
    # The mixture's evidence is a posterior predictive tail (the shape's uncertainty integrated, not a point estimate's),
    # so it reaches a false-alarm rate at less evidence: it is held to silence_evidence minus this.
    mixture_silence_credit: float = 1.0

    @classmethod
    def from_settings(cls, settings) -> ChangeRule:
        """The rule with a PipelineSettings' evidence thresholds (QUIMBI_CHANGE_*_EVIDENCE)."""
        return cls(evidence=settings.change_evidence, binary_evidence=settings.change_binary_evidence,
                   category_evidence=settings.change_category_evidence, silence_evidence=settings.change_silence_evidence,
                   decisive_evidence=settings.change_decisive_evidence)


@dataclass
class AxisChange:
    """Per customer (index = customer code): the newest significant change of one axis' signal."""

    after_n: np.ndarray  # purchases after the change (0 with a silence; -1 = no change)
    since_ns: np.ndarray  # int64 time of the last purchase before the change (meaningless without one)
    before: np.ndarray  # the signal's level before (nan without a change)
    after: np.ndarray  # ... and after
    evidence: np.ndarray  # log-likelihood ratio of the best split (0 without one)

    @property
    def changed(self) -> np.ndarray:
        return self.after_n >= 0

    @classmethod
    def none(cls, n: int) -> AxisChange:
        return cls(np.full(n, -1, dtype="int64"), np.zeros(n, dtype="int64"), np.full(n, np.nan), np.full(n, np.nan), np.zeros(n))


def merge_changes(parts: list[AxisChange], n_all: int) -> AxisChange:
    """One AxisChange from detections over disjoint sets of customers (each holds only its own customers' changes)."""
    out = AxisChange.none(n_all)
    for part in parts:
        has = part.changed
        out.after_n[has], out.since_ns[has] = part.after_n[has], part.since_ns[has]
        out.before[has], out.after[has], out.evidence[has] = part.before[has], part.after[has], part.evidence[has]
    return out


def newest_first_order(codes: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """The rows' order by customer, then newest first, equal times in their given order (a stable sort). Rows given in
    that order already (features.customer_slices sorts each slice once by this) are not sorted again: the identity."""
    ordered = codes.size < 2 or bool(np.all((codes[1:] > codes[:-1]) | ((codes[1:] == codes[:-1]) & (ts[1:] <= ts[:-1]))))
    return np.arange(codes.size) if ordered else np.lexsort((-ts, codes))


def _newest_first(codes: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, group start per sorted row, position from newest) for rows sorted by customer then newest first."""
    order = newest_first_order(codes, ts)
    c = codes[order]
    new = np.r_[True, c[1:] != c[:-1]] if c.size else np.zeros(0, dtype=bool)
    starts = np.flatnonzero(new)
    group_start = np.repeat(starts, np.diff(np.r_[starts, c.size]))
    return order, group_start, np.arange(c.size) - group_start


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """np.unique(keys) of int64 keys by a sort: numpy 2's default hash path took 0.2-0.35 s per 500k keys, the sort 0.03."""
    ordered = np.sort(keys)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if ordered.size else ordered


def _best_per_customer(c: np.ndarray, score: np.ndarray, valid: np.ndarray, n_all: int) -> np.ndarray:
    """Row index of each customer's largest valid score (-1 when none); ties go to the fewest purchases after."""
    idx = np.flatnonzero(valid)
    best = np.full(n_all, -1, dtype="int64")
    if idx.size:
        order = idx[np.lexsort((idx, -score[idx], c[idx]))]  # per customer: highest score, then the newest split
        first = np.r_[True, c[order][1:] != c[order][:-1]]
        best[c[order][first]] = order[first]
    return best


@dataclass
class _Splits:
    """Each customer's values newest first: per row, the split after its m = position + 1 newest values."""

    c: np.ndarray  # customer code per row
    t: np.ndarray  # time per row
    m: np.ndarray  # values after the split (float)
    n: np.ndarray  # the row's customer's count of values (float)
    group_start: np.ndarray

    @classmethod
    def of(cls, codes: np.ndarray, ts: np.ndarray, x: np.ndarray, n_all: int) -> tuple[_Splits, np.ndarray] | None:
        """The splits of the finite values of `x`, and those values in the rows' order; None when there are none."""
        keep = np.isfinite(x)
        if not keep.any():
            return None
        codes, ts, x = codes[keep], ts[keep], x[keep].astype("float64")
        order, group_start, pos = _newest_first(codes, ts)
        c = codes[order]
        return cls(c, ts[order], (pos + 1).astype("float64"), np.bincount(c, minlength=n_all).astype("float64")[c], group_start), x[order]

    def newest(self, values: np.ndarray) -> np.ndarray:
        """Per row, the sum of `values` (sorted as the rows) over the row's customer's m newest."""
        cum = np.cumsum(values)
        before = np.where(self.group_start > 0, self.group_start - 1, -1)
        return cum - np.where(before >= 0, cum[np.maximum(before, 0)], 0.0)

    def newest_within(self, values: np.ndarray, limit: int) -> np.ndarray:
        """newest() summed within each customer, for the rows with m <= limit (NaN beyond): a customer's own values
        added in order, the bits a store of that customer alone gives. newest()'s running sum over all rows rounds a
        customer's non-integer sums by the customers before them in the rows (integer values are exact either way)."""
        out = np.full(values.size, np.nan)
        starts = np.flatnonzero(self.m == 1.0)
        sizes = np.diff(np.r_[starts, values.size])
        order = np.argsort(-sizes, kind="stable")
        starts, sizes = starts[order], sizes[order]
        out[starts] = values[starts]
        for p in range(1, min(limit, int(sizes[0])) if sizes.size else 0):  # the customers with more than p values
            rows = starts[: np.searchsorted(-sizes, -p, side="left")] + p
            out[rows] = out[rows - 1] + values[rows]
        return out

    def before_split(self) -> np.ndarray:
        """Per row, the time of the newest value before the split (the change happened after it)."""
        return self.t[np.minimum(np.arange(self.t.size) + 1, self.t.size - 1)]


def _within_sums(codes: np.ndarray, x: np.ndarray, n_all: int) -> tuple[np.ndarray, np.ndarray]:
    """Per customer: the sum of squares of the finite values of `x` about their own mean, and its degrees of freedom."""
    keep = np.isfinite(x)
    c, v = codes[keep], x[keep].astype("float64")
    count = np.bincount(c, minlength=n_all).astype("float64")
    mean_c = np.divide(np.bincount(c, v, n_all), count, out=np.zeros(n_all), where=count > 0)
    return np.bincount(c, (v - mean_c[c]) ** 2, n_all), (count - 1).clip(min=0)


def pooled_within_variance(codes: np.ndarray, x: np.ndarray, n_all: int) -> float:
    """The pooled within-customer variance of a per-purchase signal's finite values."""
    ss, dof = _within_sums(codes, x, n_all)
    return max(float(ss.sum()) / max(float(dof.sum()), 1.0), 1e-12)


def unchanged_within_variance(codes: np.ndarray, x: np.ndarray, n_all: int, tail: float = 1e-3, rounds: int = 8) -> float:
    """The store's spread of a per-purchase signal: pooled_within_variance over the customers whose own spread it
    explains. A customer whose sum of squares is beyond `tail` of chi^2(n - 1) times the pooled variance is left out,
    and the pool recomputed until no customer leaves. The spread is the yardstick for changes, so the customers who
    changed stay out of it: pooled with them, a young store where a sixth of customers' orders rose 4-fold read 4.5
    times its unchanged customers' spread (CDNOW: 0.31 against 0.30; planted.py's store 0.093 against 0.063)."""
    ss, dof = _within_sums(codes, x, n_all)
    has = np.flatnonzero(dof > 0)
    ss, dof = ss[has], dof[has]
    # The tail's bound on ss / var per customer, from the few distinct degrees of freedom: P(chi^2(dof) >= 2 * bound) = tail.
    levels, which = np.unique(dof, return_inverse=True)
    bound = 2.0 * gammainccinv(levels / 2, tail)[which]
    inside = np.ones(ss.size, dtype=bool)
    var = 1e-12
    for _ in range(rounds):
        var = max(float(ss[inside].sum()) / max(float(dof[inside].sum()), 1.0), 1e-12)
        now = ss <= bound * var
        if np.array_equal(now, inside):
            break
        inside = now
    return var


def mean_shift_change(codes: np.ndarray, ts: np.ndarray, x: np.ndarray, n_all: int, rule: ChangeRule,
                      store_var: float | None = None) -> AxisChange:
    """The newest-m split of each customer's per-purchase signal `x` (finite values only) with the largest t^2/2.
    `store_var`: the store's spread (unchanged_within_variance of the whole store; default: of the purchases given)."""
    prepared = _Splits.of(codes, ts, x, n_all)
    if prepared is None:
        return AxisChange.none(n_all)
    split, v = prepared
    c, m, n = split.c, split.m, split.n
    total, total2 = np.bincount(c, v, n_all)[c], np.bincount(c, v * v, n_all)[c]
    if store_var is None:
        store_var = unchanged_within_variance(codes, x, n_all)
    s_after, q_after = split.newest_within(v, rule.max_after), split.newest_within(v * v, rule.max_after)
    n_before = n - m
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_after = s_after / m
        mean_before = (total - s_after) / n_before
        ss = (q_after - s_after * mean_after) + ((total2 - q_after) - (total - s_after) * mean_before)
        var = (np.maximum(ss, 0.0) + rule.prior_weight * store_var) / (n - 2 + rule.prior_weight)
        tstat = (mean_after - mean_before) / np.sqrt(var * (1.0 / m + 1.0 / n_before))
    return _shift_report(n_all, split, rule, 0.5 * tstat * tstat, mean_before, mean_after)


def _shift_report(n_all: int, split: _Splits, rule: ChangeRule, llr: np.ndarray, before: np.ndarray, after: np.ndarray) -> AxisChange:
    """The newest significant split of a shift test (mean or count) from its per-split evidence `llr`: at least
    shift_min_before purchases before and min_after after, or a single decisive purchase after decisive_min_before."""
    m, n_before = split.m, split.n - split.m
    valid = (m >= rule.min_after) & (m <= rule.max_after) & (n_before >= rule.shift_min_before)
    decisive = (m == 1) & (n_before >= rule.decisive_min_before) & np.isfinite(llr)
    score = np.where(valid, llr, np.where(decisive & (llr >= rule.decisive_evidence), llr, 0.0))
    valid = valid | decisive
    return _report(n_all, split, _best_per_customer(split.c, score, valid & (score >= rule.evidence), n_all), before, after, score)


def count_dispersion(codes: np.ndarray, counts: np.ndarray, n_all: int) -> float:
    """The store's quasi-Poisson dispersion of a per-purchase count: within-customer variance over the mean,
    pooled (Pearson); at least 1, so an under-dispersed store is tested as Poisson."""
    keep = np.isfinite(counts)
    c, y = codes[keep], counts[keep].astype("float64")
    n = np.bincount(c, minlength=n_all).astype("float64")
    mean_c = np.divide(np.bincount(c, y, n_all), n, out=np.zeros(n_all), where=n > 0)
    mu = mean_c[c]
    pearson = np.divide((y - mu) ** 2, mu, out=np.zeros(y.size), where=mu > 0)
    dof = float((n - 1).clip(min=0)[mean_c > 0].sum())
    return max(float(pearson.sum()) / dof, 1.0) if dof > 0 else 1.0


def count_shift_change(codes: np.ndarray, ts: np.ndarray, counts: np.ndarray, n_all: int, rule: ChangeRule,
                       dispersion: float | None = None) -> AxisChange:
    """As mean_shift_change for a per-purchase count (the extra items of a basket beyond the first): the
    quasi-Poisson log-likelihood ratio of two rates, S1 log(r1 / r) + S0 log(r0 / r), over the store's dispersion.
    A Gaussian t on counts takes a customer whose baskets were always one item as having no spread, so two
    two-item orders read as a 7-sigma change (1 + Poisson(0.2) items: a pair like that comes once in 30 pairs).
    before / after are log1p of the mean count (the display shows expm1)."""
    prepared = _Splits.of(codes, ts, counts, n_all)
    if prepared is None:
        return AxisChange.none(n_all)
    split, v = prepared
    c, m, n = split.c, split.m, split.n
    if dispersion is None:
        dispersion = count_dispersion(codes, counts, n_all)
    total = np.bincount(c, v, n_all)[c]
    s_after = split.newest(v)
    n_before, s_before = n - m, total - s_after
    with np.errstate(invalid="ignore", divide="ignore"):
        rate_after, rate_before, rate = s_after / m, s_before / n_before, total / n
        llr = (_xlogy(s_after, rate_after) + _xlogy(s_before, rate_before) - _xlogy(total, rate)) / dispersion
    return _shift_report(n_all, split, rule, llr, np.log1p(rate_before), np.log1p(rate_after))


def _report(n_all: int, split: _Splits, best: np.ndarray, before: np.ndarray, after: np.ndarray, evidence: np.ndarray) -> AxisChange:
    out = AxisChange.none(n_all)
    has = best >= 0
    rows = best[has]
    out.after_n[has] = split.m[rows].astype("int64")
    out.since_ns[has] = split.before_split()[rows]
    out.before[has], out.after[has], out.evidence[has] = before[rows], after[rows], evidence[rows]
    return out


def rate_change(codes: np.ndarray, ts: np.ndarray, end_ns: int, n_all: int, rule: ChangeRule, shape_prior: ShapePrior | None = None) -> AxisChange:
    """The newest significant change of each customer's purchase rate (purchase days), or a silence too long for them.

    Gaps between purchase days are a customer's Gamma(k) renewal process with their own shape k. A split
    after the j newest purchase days (j >= 1) compares the mean gap of the j newest gaps with the older
    ones: the Gamma log-likelihood ratio with k known, k [n0 log(g/g0) + n1 log(g/g1)]. The open gap
    (j = 0) is a silence: -log P(gap >= days since the last purchase); from rule.shape_mixture_min_gaps gaps, P under
    the customer's posterior over `shape_prior`, the store's mixture of gap shapes (default: fitted on these customers;
    compute_customer_features fits one per store and date). before / after are purchases per month: after = j
    purchases over the days since the change (0 for a silence).
    """
    out = AxisChange.none(n_all)
    if codes.size == 0:
        return out
    day = ts // NS_PER_DAY
    span = int(day.max()) + 2
    key = _sorted_unique(codes.astype("int64") * span + day)  # one row per customer and purchase day, ascending
    c_days, d = key // span, key % span
    # Keys ascending by (customer, day), days distinct: newest first is each customer's run reversed, as
    # _newest_first's lexsort orders them, without the sort.
    starts = np.flatnonzero(np.r_[True, c_days[1:] != c_days[:-1]])
    sizes = np.diff(np.r_[starts, c_days.size])
    group_start = np.repeat(starts, sizes)
    pos = np.arange(c_days.size) - group_start
    order = group_start + np.repeat(sizes, sizes) - 1 - pos
    c, dd = c_days[order], d[order].astype("float64")
    end_day = end_ns / NS_PER_DAY
    n_days = np.bincount(c, minlength=n_all).astype("float64")
    oldest = np.flatnonzero(np.r_[c[1:] != c[:-1], True])
    first_day = np.full(n_all, np.nan)
    first_day[c[oldest]] = dd[oldest]
    newest_day = dd[group_start]  # per row: its customer's newest purchase day
    has_prev = np.r_[c[1:] == c[:-1], False]
    gap = np.where(has_prev, dd - np.r_[dd[1:], 0.0], 0.0)  # the gap before each purchase day (0 for the oldest)
    cum2 = np.cumsum(gap * gap)
    at_start = np.where(group_start > 0, group_start - 1, -1)
    newest_sq = np.where(pos > 0, cum2 - np.where(at_start >= 0, cum2[np.maximum(at_start, 0)], 0.0) - gap * gap, 0.0)
    j = pos.astype("float64")  # purchases after a split at this row's day
    log_gap = np.zeros(gap.size)
    log_gap[has_prev] = gap_shapes.corrected_log(gap[has_prev])
    log_sum = np.bincount(c, log_gap, n_all)[c]  # per row, its customer's
    if shape_prior is None:
        shape_prior = rows_shape_prior(j, n_days[c], first_day[c], newest_day, log_sum)
    split = rate_splits(dd, j, n_days[c], first_day[c], newest_day, newest_sq, np.bincount(c, gap * gap, n_all)[c], log_sum, end_ns, rule,
                        shape_prior)
    score, mean_before = split.score, split.mean_before
    best = _best_per_customer(c, score, score >= 1.0, n_all)  # an invalid split scores 0
    has = best >= 0
    rows = best[has]
    out.after_n[has] = j[rows].astype("int64")
    out.since_ns[has] = (dd[rows] * NS_PER_DAY).astype("int64")
    out.before[has] = DAYS_PER_MONTH / mean_before[rows]
    out.after[has] = j[rows] / (end_day - dd[rows]) * DAYS_PER_MONTH
    out.evidence[has] = np.where(j[rows] == 0, split.silence[rows], split.gaps_evidence[rows])
    return out


@dataclass
class RateSplits:
    """Per split row of rate_change: its score (evidence over its threshold, 0 where the split is not valid), the
    evidence of a silence (open gaps only, 0 elsewhere) and of a rate change, and the mean gap before the split."""

    score: np.ndarray
    silence: np.ndarray
    gaps_evidence: np.ndarray
    mean_before: np.ndarray


def rate_splits(dd: np.ndarray, j: np.ndarray, n_days: np.ndarray, first_day: np.ndarray, newest_day: np.ndarray,
                newest_sq: np.ndarray, sq_all: np.ndarray, log_sum_all: np.ndarray, end_ns: int, rule: ChangeRule,
                shape_prior: ShapePrior) -> RateSplits:
    """rate_change's arithmetic on its split rows: each a customer's purchase day `dd` (days since 1970), newest first,
    with j purchase days after it; per row the customer's purchase days, first and newest day, the sum of squared gaps
    before the j newest purchase days (newest_sq), of all their gaps (sq_all) and of gap_shapes.corrected_log of all
    their gaps (log_sum_all); `shape_prior` the store's mixture of gap shapes. benchmarks/engines.py hands it rows made by Polars
    and DuckDB."""
    end_day = end_ns / NS_PER_DAY  # D + 1 day: the silence runs to the end of D
    n_before_gaps = n_days - 1 - j
    sq_before = sq_all - newest_sq
    # The gaps' Gamma shape k (1 / CV^2) from the spread of the gaps on both sides of each split, each side around
    # its own mean (a change moves the mean, not the shape; the gaps after a Poisson buyer's random slowdown are as
    # spread as ever), shrunk towards k = 1 (Poisson) on the log scale with `shape_prior_gaps` pseudo degrees of
    # freedom: a customer is believed regular only on evidence. The log of a spread estimate has about the same
    # uncertainty at any level (2 / dof), so a regular buyer's 10 gaps at CV^2 0.06 give k = 10 (it was 6.4 with one
    # pseudo-gap at CV^2 1 averaged in) and a Poisson buyer's k stays near 1. (Shrinking towards the store's mean
    # CV^2 instead found 5 more of 18 young fortnightly stoppers but raised the planted store's unchanged customers
    # with an anomaly from 2.2% to 3.3%.) docs/signals.md has the figures.
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_b = (dd - first_day) / n_before_gaps
        mean_a = (newest_day - dd) / np.maximum(j, 1.0)
        # Squared deviations from each side's mean, relative to it: sum((g / mean)^2) - n on each side.
        spread_b = np.nan_to_num(np.maximum(sq_before / (mean_b * mean_b) - n_before_gaps, 0.0))
        spread_a = np.where(j >= 2, np.nan_to_num(np.maximum(newest_sq / (mean_a * mean_a) - j, 0.0)), 0.0)
        dof = np.maximum(n_before_gaps - 1, 0) + np.maximum(j - 1, 0)
        observed = np.maximum(np.divide(spread_b + spread_a, dof, out=np.ones_like(dof), where=dof > 0), MIN_CV2)
        cv2 = np.exp(dof * np.log(observed) / (rule.shape_prior_gaps + dof))
        k = np.clip(1.0 / cv2, 0.5, rule.max_shape)

    n_after, s_after = j, newest_day - dd  # the j newest closed gaps
    n_before, s_before = n_before_gaps, dd - first_day
    open_gap = j == 0
    valid = ((n_before >= np.where(open_gap, rule.silence_min_before, rule.min_before))
             & (s_before >= np.where(open_gap, rule.silence_min_before_days, rule.min_before_days)) & (j <= rule.max_after))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_before = s_before / n_before
        mean_all = (s_before + s_after) / (n_before + n_after)
        gaps_evidence = k * (n_before * np.log(mean_all / mean_before) + _xlogy(n_after, mean_all) - _xlogy(n_after, s_after / np.maximum(n_after, 1)))
        silence_days = end_day - dd
        # The incomplete gamma on the open gaps only (one row per customer; the others never read it): on every row it
        # was 2.6 s of a 1M-customer store's 20.9M orders.
        # Each open gap by one test: the store's mixture from shape_mixture_min_gaps gaps (a silence longer than the
        # mean gap, the only ones scored), the customer's own shrunk shape otherwise.
        gap_rows = np.flatnonzero(open_gap)
        by_mixture = ((rule.shape_mixture_min_gaps > 0) & (silence_days[gap_rows] > mean_before[gap_rows])
                      & (n_before[gap_rows] >= rule.shape_mixture_min_gaps))
        own, mixed = gap_rows[~by_mixture], gap_rows[by_mixture]
        k_silence = np.maximum(k[own], rule.silence_min_shape)
        silence = np.zeros(dd.size)
        silence[own] = -np.log(np.maximum(gammaincc(k_silence, k_silence * silence_days[own] / mean_before[own]), 1e-300))
        silence[mixed] = gap_shapes.silence_evidence(n_before[mixed], s_before[mixed], log_sum_all[mixed], silence_days[mixed] / mean_before[mixed],
                                                     shape_prior, rule.silence_min_shape)
        silence_threshold = np.full(dd.size, rule.silence_evidence)
        silence_threshold[mixed] -= rule.mixture_silence_credit
    # Each kind of evidence in units of its own threshold, so the best split is the most significant one.
    score = np.where(j == 0, np.where(silence_days > mean_before, silence / silence_threshold, 0.0), gaps_evidence / rule.evidence)
    score = np.where(valid & np.isfinite(score), score, 0.0)
    return RateSplits(score, silence, gaps_evidence, mean_before)


def rows_shape_prior(j: np.ndarray, n_days: np.ndarray, first_day: np.ndarray, newest_day: np.ndarray, log_sum_all: np.ndarray) -> ShapePrior:
    """gap_shapes.fit_prior on the customers of rate_splits' rows (their open-gap rows, one per customer)."""
    own = j == 0
    return gap_shapes.fit_prior(n_days[own] - 1, newest_day[own] - first_day[own], log_sum_all[own])


def binary_shift_change(codes: np.ndarray, ts: np.ndarray, y: np.ndarray, n_all: int, rule: ChangeRule,
                        threshold: float | None = None) -> AxisChange:
    """As mean_shift_change for a 0/1 signal (a discounted order, an order in the customer's favourite category),
    with the Bernoulli log-likelihood ratio of two rates (rates smoothed by half a pseudo-count each way), against
    `threshold` (default: rule.binary_evidence)."""
    prepared = _Splits.of(codes, ts, y, n_all)
    if prepared is None:
        return AxisChange.none(n_all)
    split, v = prepared
    c, m, n = split.c, split.m, split.n
    total = np.bincount(c, v, n_all)[c]
    k_after = split.newest(v)
    n_before, k_before = n - m, total - k_after
    valid = (m >= rule.min_after) & (m <= rule.max_after) & (n_before >= rule.min_before)
    score = np.where(valid, _bernoulli_ll(k_after, m) + _bernoulli_ll(k_before, n_before) - _bernoulli_ll(total, n), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        before, after = k_before / n_before, k_after / m
    return _report(n_all, split, _best_per_customer(c, score, valid & (score >= (rule.binary_evidence if threshold is None else threshold)), n_all), before, after, score)


def _bernoulli_ll(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Maximized Bernoulli log-likelihood of k successes in n, at the rate smoothed by half a pseudo-count."""
    with np.errstate(invalid="ignore", divide="ignore"):
        p = (k + 0.5) / (n + 1.0)
        return np.where(n > 0, k * np.log(p) + (n - k) * np.log1p(-p), 0.0)


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x log y with 0 log 0 = 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(x > 0, x * np.log(np.where(y > 0, y, 1.0)), 0.0)
