"""Outlier flags of a store's customers, three methods, vectorized over customers (pure).

- membership: the seed's rule. An axis is an outlier axis when its largest membership is < 0.3;
  score = 1 - mean over axes of the largest membership; flagged at score >= 0.7. With k <= 3 the
  largest membership is at least 1/k >= 0.33, so the rule cannot fire on such axes.
- membership_normalized: the same with the largest membership rescaled by k, u' = (u_max - 1/k) / (1 - 1/k)
  (0 = uniform over the segments, 1 = certain); one-segment axes count as certain.
- density: an absolute distance score. Per axis, the Euclidean distance to the nearest centroid in
  the axis' standardized space (log1p for money and counts), i.e. in the store's standard deviations;
  an axis is an outlier axis at >= 4; score = min(1, max distance / 8) (0.5 at the threshold);
  flagged when any axis is. A far-away customer who is still nearest one centroid is caught; a store
  without far-out customers gets no flags (not a fixed share). A customer whose dominant segment
  holds at most 0.5% of the store's customers is an outlier on that axis too (score 1): k-means
  gives a far-out customer (a bot, a $100k order) a segment of its own, where their distance is 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

METHODS = ("membership", "membership_normalized", "density")
SEED_AXIS_MAX = 0.3
SEED_FLAG_SCORE = 0.7
DENSITY_DISTANCE = 4.0  # standard deviations from the nearest centroid
MICRO_SEGMENT_SHARE = 0.005  # a segment this small (share of the store's customers) is an outlier's own
OUTLIER_COLUMNS = ["customer_id", "flag_date", "method", "is_outlier", "outlier_score", "outlier_axes", "explanation"]


def _axes_list(mask: np.ndarray, axes: list[str]) -> pd.Series:
    """JSON lists of the axes flagged per row, built column by column (no loop over customers)."""
    text = pd.Series([""] * mask.shape[0], dtype="object")
    for j, axis in enumerate(axes):
        item = f'"{axis}"'
        text = text + np.where(mask[:, j], np.where(text == "", item, ", " + item), "")
    return "[" + text + "]"


def _rows(customers, flag_date, method, flagged, score, axis_mask, axes, explanation) -> pd.DataFrame:
    return pd.DataFrame({
        "customer_id": customers, "flag_date": flag_date, "method": method, "is_outlier": flagged.astype(bool),
        "outlier_score": np.round(score, 6) + 0.0, "outlier_axes": _axes_list(axis_mask, axes).to_numpy(object),
        "explanation": explanation.to_numpy(object),
    })


def outlier_flags(segmentations: dict, scaled: dict[str, np.ndarray], customers: np.ndarray, flag_date: str,
                  segment_sizes: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Rows of customer_outlier_flags (without store_id) for every customer and method.

    `segmentations`: axis -> AxisSegmentation (memberships, model); `scaled`: axis -> the customers'
    features in the model's scaled space; `segment_sizes`: axis -> customers per segment in the whole store
    (store_state.StoreState, when these customers are a part of it); None: counted over these customers.
    """
    axes = list(segmentations)
    u_max = np.column_stack([segmentations[a].memberships.max(axis=1) for a in axes])
    k = np.array([segmentations[a].model.k for a in axes], dtype="float64")
    frames = []

    with np.errstate(invalid="ignore", divide="ignore"):
        normalized = np.where(k > 1, (u_max - 1.0 / k) / (1.0 - 1.0 / np.maximum(k, 2)), 1.0)
    # The seed's rule on the largest membership, and the same rule on it rescaled by k.
    for method, certainty, text in (("membership", u_max, "fits no segment well (mean largest membership "),
                                    ("membership_normalized", normalized, "memberships close to uniform over the segments (mean certainty ")):
        score = 1.0 - certainty.mean(axis=1)
        flagged = score >= SEED_FLAG_SCORE
        frames.append(_rows(customers, flag_date, method, flagged, score, certainty < SEED_AXIS_MAX, axes,
                            _explain(flagged, text + pd.Series(np.round(1 - score, 3)).astype(str) + ")")))

    z, micro = _density(segmentations, scaled, segment_sizes)
    dens_axes = (z >= DENSITY_DISTANCE) | micro
    dens_score = np.where(micro.any(axis=1), 1.0, np.clip(z.max(axis=1) / (2 * DENSITY_DISTANCE), 0.0, 1.0))
    dens_flag = dens_axes.any(axis=1)
    reason = np.where(micro.any(axis=1), "in a segment of its own (at most 0.5% of the store's customers)",
                      "far from every segment: " + pd.Series(np.round(z.max(axis=1), 1)).astype(str).to_numpy(object)
                      + " standard deviations from the nearest segment")
    frames.append(_rows(customers, flag_date, "density", dens_flag, dens_score, dens_axes, axes, _explain(dens_flag, pd.Series(reason))))
    return pd.concat(frames, ignore_index=True)[OUTLIER_COLUMNS]


def density_outliers(segmentations: dict, scaled: dict[str, np.ndarray], segment_sizes: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The default method's verdict per customer (density: far from every segment, or in a segment of its own):
    the customers left out of the fits when ENABLE_OUTLIER_DETECTION is on (profiles.build_store_profiles).
    `segment_sizes` as in outlier_flags."""
    z, micro = _density(segmentations, scaled, segment_sizes)
    return ((z >= DENSITY_DISTANCE) | micro).any(axis=1)


def _density(segmentations: dict, scaled: dict[str, np.ndarray], segment_sizes: dict[str, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """(distance to the nearest centroid, in a segment of its own) per customer and axis."""
    axes = list(segmentations)
    if segment_sizes is None:
        segment_sizes = {a: np.bincount(segmentations[a].dominant, minlength=segmentations[a].model.k) for a in axes}
    z = np.column_stack([_nearest_distance(scaled[a], segmentations[a].model.centroids) for a in axes])
    micro = np.column_stack([_in_micro_segment(segmentations[a].dominant, segmentations[a].model.k, segment_sizes[a]) for a in axes])
    return z, micro


def _explain(flagged: np.ndarray, text: pd.Series) -> pd.Series:
    return pd.Series(np.where(flagged, text.to_numpy(object), None), dtype="object")  # NULL when not an outlier


def _in_micro_segment(dominant: np.ndarray, k: int, size: np.ndarray) -> np.ndarray:
    """`size`: customers per segment (of the store: its sum is the store's customers)."""
    return size[dominant] <= max(1.0, MICRO_SEGMENT_SHARE * size.sum()) if k > 1 else np.zeros(dominant.size, dtype=bool)


def _nearest_distance(scaled: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    d2 = np.full(scaled.shape[0], np.inf)
    for c in centroids:  # a few centroids, not customers
        diff = scaled - c
        d2 = np.minimum(d2, np.einsum("ij,ij->i", diff, diff))
    return np.sqrt(d2)


def outlier_rates(flags: pd.DataFrame) -> dict[str, float]:
    return {m: round(float(g["is_outlier"].mean()), 6) for m, g in flags.groupby("method")}
