"""population_drift: per axis, how a store's mix of dominant segments and its feature distributions moved between a
reference date and D.

A date's population is read slice by slice of its customers (PopulationSide.add) and only what the measures need
is kept: its customers, the counts of each axis' dominant segment and, for the features, the reference's values
(until its PSI bins are cut) or the current date's counts in those bins. Any slicing gives the numbers the whole
frames give, bit for bit: counts are integers and quantiles do not depend on the order of the values.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from quimbi_pipeline.history.snapshot_blocks import FEATURE_PREFIX

POPULATION_REFERENCE_DAYS = 28
PSI_BINS = 10
PSI_EPSILON = 1e-4
POPULATION_COLUMNS = ["as_of_date", "axis", "reference_date", "n_reference", "n_current", "segment_share_shift", "feature_psi",
                      "segment_shares", "feature_psi_by_feature"]


class SlicesDiffer(ValueError):
    """The slices of a date have different columns, so the whole date's column order is not known from them."""


def psi_bins(reference: np.ndarray, bins: int = PSI_BINS) -> np.ndarray:
    """The inner edges of the reference's quantile bins (finite values only)."""
    return np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))


def bin_counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)


def psi_of_counts(p_counts: np.ndarray, p_size: int, q_counts: np.ndarray, q_size: int) -> float:
    p, q = np.maximum(p_counts / p_size, PSI_EPSILON), np.maximum(q_counts / q_size, PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def psi(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of `current` against `reference` on the reference's quantile bins."""
    reference, current = reference[np.isfinite(reference)], current[np.isfinite(current)]
    if reference.size == 0 or current.size == 0:
        return float("nan")
    edges = psi_bins(reference, bins)
    return psi_of_counts(bin_counts(edges, reference), reference.size, bin_counts(edges, current), current.size)


class PopulationSide:
    """One date's population as population_rows reads it, added slice by slice of its customers.

    Frames: one row per customer, "axis.segment" membership columns and "f:axis.feature" features. The reference
    side keeps its features' finite values until `binned()` cuts its bins; a current side (`reference=` a binned
    reference) keeps only its counts in those bins.
    """

    def __init__(self, reference: PopulationSide | None = None):
        self.columns: list[str] | None = None
        self.rows = 0
        self.dominant: dict[str, Counter] = {}  # axis -> {column: customers whose one largest membership it is}
        self.tied: dict[str, Counter] = {}  # axis -> {(columns sharing the largest membership): customers}
        self.values: dict[str, list[np.ndarray]] = {}  # reference: each feature's finite values, slice by slice
        self.edges: dict[str, np.ndarray | None] = {} if reference is None else reference.edges
        self.counts: dict[str, tuple[np.ndarray, int] | None] = {}  # feature -> (counts in the bins, values)
        self.is_reference = reference is None

    def add(self, frame: pd.DataFrame) -> None:
        columns = list(frame.columns)
        if self.columns is None:
            self.columns = columns
        elif columns != self.columns:
            raise SlicesDiffer("the date's slices have different columns")
        self.rows += len(frame)
        members = [c for c in columns if not c.startswith(FEATURE_PREFIX)]
        for axis in dict.fromkeys(c.split(".", 1)[0] for c in members):
            cols = [c for c in members if c.startswith(axis + ".")]
            block = frame[cols].fillna(0.0).to_numpy()
            has = block.sum(axis=1) > 0
            block = block[has]
            top = block.max(axis=1, initial=0.0)
            at_top = block == top[:, None]
            tied = at_top.sum(axis=1) > 1
            dominant = self.dominant.setdefault(axis, Counter())
            for j, n in enumerate(np.bincount(block[~tied].argmax(axis=1), minlength=len(cols))):
                if n:
                    dominant[cols[j]] += int(n)
            if tied.any():  # rare (equal memberships): who wins depends on both dates' columns, known at the end
                ties = self.tied.setdefault(axis, Counter())
                for pattern, n in zip(*np.unique(at_top[tied], axis=0, return_counts=True)):
                    ties[tuple(c for c, t in zip(cols, pattern) if t)] += int(n)
        for c in columns:
            if not c.startswith(FEATURE_PREFIX):
                continue
            values = frame[c].to_numpy("float64")
            values = values[np.isfinite(values)]
            if self.is_reference:
                self.values.setdefault(c, []).append(values)
            elif self.edges.get(c) is not None:
                counts, size = self.counts.get(c) or (np.zeros(self.edges[c].size + 1, dtype="int64"), 0)
                self.counts[c] = (counts + bin_counts(self.edges[c], values), size + values.size)

    def binned(self) -> PopulationSide:
        """The reference side with its features' bins cut and counted, their values let go."""
        for c, parts in self.values.items():
            values = np.concatenate(parts) if parts else np.empty(0)
            self.edges[c] = psi_bins(values) if values.size else None
            self.counts[c] = (bin_counts(self.edges[c], values), values.size) if values.size else None
        self.values = {}
        return self

    def shares(self, axis: str, cols: list[str]) -> np.ndarray:
        """Each column's share of the customers with a membership on the axis; ties go to the first column in `cols`."""
        dominant = self.dominant.get(axis, Counter())
        counts = np.array([dominant.get(c, 0) for c in cols], dtype="int64")
        position = {c: j for j, c in enumerate(cols)}
        for tie, n in self.tied.get(axis, Counter()).items():
            counts[min(position[c] for c in tie)] += n
        return counts / max(int(counts.sum()), 1)

    def psi(self, reference: PopulationSide, column: str) -> float:
        ours, theirs = self.counts.get(column), reference.counts.get(column)
        if ours is None or theirs is None or ours[1] == 0:
            return float("nan")
        return psi_of_counts(theirs[0], theirs[1], ours[0], ours[1])


def population_rows(reference: PopulationSide, current: PopulationSide, reference_date, as_of) -> pd.DataFrame:
    """Per axis: total-variation shift of dominant-segment shares and PSI of the features, current vs reference
    (the reference binned; Reference = the store's oldest snapshot date in the last 28 days)."""
    ref_columns, cur_columns = pd.Index(reference.columns or []), pd.Index(current.columns or [])
    member_cols = [c for c in ref_columns.union(cur_columns) if not c.startswith(FEATURE_PREFIX)]
    common = ref_columns.intersection(cur_columns)
    rows = []
    for axis in dict.fromkeys(c.split(".", 1)[0] for c in member_cols):
        cols = [c for c in member_cols if c.startswith(axis + ".")]
        names = [c.split(".", 1)[1] for c in cols]
        before, after = reference.shares(axis, cols), current.shares(axis, cols)
        shift = 0.5 * float(np.abs(after - before).sum())
        feature_cols = [c for c in common if c.startswith(f"{FEATURE_PREFIX}{axis}.")]
        by_feature = {c.split(".", 1)[1]: round(current.psi(reference, c), 6) for c in feature_cols}
        finite = [v for v in by_feature.values() if np.isfinite(v)]
        rows.append({
            "as_of_date": f"{pd.Timestamp(as_of):%Y-%m-%d}", "axis": axis, "reference_date": f"{pd.Timestamp(reference_date):%Y-%m-%d}",
            "n_reference": reference.rows, "n_current": current.rows, "segment_share_shift": round(shift, 6),
            "feature_psi": round(float(np.mean(finite)), 6) if finite else None,
            "segment_shares": {n: {"reference": round(float(p), 6), "current": round(float(q), 6)} for n, p, q in zip(names, before, after)},
            "feature_psi_by_feature": by_feature,
        })
    return pd.DataFrame(rows, columns=POPULATION_COLUMNS)


def population_drift(reference: pd.DataFrame, current: pd.DataFrame, reference_date, as_of) -> pd.DataFrame:
    """population_rows of two whole frames (one row per customer, "axis.segment" memberships, "f:axis.feature")."""
    ref = PopulationSide()
    ref.add(reference)
    cur = PopulationSide(ref.binned())
    cur.add(current)
    return population_rows(ref, cur, reference_date, as_of)
