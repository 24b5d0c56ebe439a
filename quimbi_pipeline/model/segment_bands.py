"""Honest segments (ENABLE_HONEST_SEGMENTS): names that mean the same in every store and for every k,
and no feature dominating an axis by a spread that means nothing.

Without the flag a segment takes the name of its rank on the axis' ladder: with k = 2 the better half
of a store is "very_frequent" even if it buys twice a year, and "very_frequent" in one store is
"regular" in another. With the flag a segment is named by where its centroid falls in fixed bands of
the axis' naming feature (BANDS; money relative to the store's median, since price levels differ
between stores), and two segments in one band are told apart by a suffix (`regular_2`).

And every feature is standardized by at least a floor spread (MIN_SPREAD: the smallest difference
that matters, e.g. 25% of tenure) instead of its standard deviation alone: in a store whose customers
all joined within weeks, tenure's tiny spread no longer turns into the main axis of loyalty.
"""

from __future__ import annotations

import numpy as np

# axis -> (naming feature, band lower edges between the ladder's six names, relative to the store median?)
BANDS: dict[str, tuple[str, tuple[float, ...], bool]] = {
    "purchase_frequency": ("orders_per_month", (0.25, 0.5, 1.0, 2.0, 4.0), False),
    "purchase_value": ("avg_order_value", (0.35, 0.6, 0.85, 1.5, 3.0), True),
    "category_exploration": ("category_entropy", (0.1, 0.3, 0.5, 0.7, 0.85), False),
    # the ladder runs deal_dependent (worst) .. full_price: a lower discounted share is a better rung
    "discount_sensitivity": ("discounted_order_share", (-0.8, -0.6, -0.4, -0.2, -0.05), False),
    "basket_size": ("avg_items_per_order", (1.25, 2.0, 3.0, 5.0, 10.0), False),
}
# loyalty_trajectory (fading, cooling, steady, committed, growing, loyal) is named by two features:
# activity_trend (recent 90-day rate / 365-day rate) below 0.5 fading, below 0.85 cooling; otherwise by
# tenure: under 180 days steady (or growing at a trend of 1.2 and more), under 730 days committed, else loyal.
LOYALTY_TREND = (0.5, 0.85, 1.2)
LOYALTY_TENURE_DAYS = (180, 730)
# Smallest standardization scale per feature (in the clustered units: log1p for counts and money).
MIN_SPREAD = {
    "orders_per_month": 0.1, "avg_days_between_orders": 0.1, "avg_order_value": 0.1, "median_order_value": 0.1,
    "tenure_days": 0.25, "activity_trend": 0.1, "top_category_share": 0.05, "category_entropy": 0.05,
    "discounted_order_share": 0.05, "avg_discount_rate": 0.02, "avg_items_per_order": 0.1, "multi_item_order_share": 0.05,
}


def band_names(axis: str, ladder: tuple[str, ...], centroids_raw: dict[str, np.ndarray], reference: dict[str, float]) -> list[str]:
    """One name per centroid (in the given order) from its raw feature values; repeats suffixed _2, _3."""
    if axis == "loyalty_trajectory":
        trend, tenure = centroids_raw["activity_trend"], centroids_raw["tenure_days"]
        rung = np.select(
            [trend < LOYALTY_TREND[0], trend < LOYALTY_TREND[1], tenure < LOYALTY_TENURE_DAYS[0], tenure < LOYALTY_TENURE_DAYS[1]],
            [0, 1, np.where(trend >= LOYALTY_TREND[2], 4, 2), 3], default=5)
    else:
        feature, edges, relative = BANDS[axis]
        value = centroids_raw[feature] / max(reference.get(feature, 1.0), 1e-12) if relative else centroids_raw[feature]
        if axis == "discount_sensitivity":
            value = -value
        rung = np.searchsorted(np.asarray(edges), value, side="right")
    names, seen = [], {}
    for r in rung.astype(int):
        base = ladder[r]
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def floor_scale(feature_names: list[str], std: np.ndarray) -> np.ndarray:
    """max(std, the feature's floor spread); a constant feature keeps scale 1 as StandardScaler does."""
    floors = np.array([MIN_SPREAD.get(f, 0.0) for f in feature_names])
    return np.where(std > 0, np.maximum(std, floors), 1.0)
