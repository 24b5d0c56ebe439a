"""Checks before a write: every numeric column finite and within its documented range.

A value outside its range is a bug or an input the validation let through; writing it would hand
analysts an Infinity or a probability of 1.3. The store's write is refused instead (the store fails,
its previous rows stay, the other stores go on), with the column, the count and an example customer.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

INF = math.inf
# column -> (lowest, highest) allowed; every listed column must also be finite (NULL is allowed where the table allows it).
RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "customer_profiles": {
        "churn_risk_score": (0.0, 1.0), "predicted_ltv": (0.0, INF), "expected_purchases": (0.0, INF), "lifetime_value": (-INF, INF),
        "total_orders": (1, INF), "days_since_first_order": (0, INF), "tenure_months": (0.0, INF), "archetype_level": (1, 5),
    },
    "customer_outlier_flags": {"outlier_score": (0.0, 1.0)},
    "customer_drift": {"overall_drift": (0.0, 1.0), "drift_velocity": (0.0, INF), "predicted_30d_drift": (0.0, 1.0),
                       "churn_risk_trend": (-1.0, 1.0), "n_snapshots": (2, INF)},
    "customer_axis_drift": {"drift_score": (0.0, 1.0), "velocity": (0.0, INF), "n_transitions": (0, INF)},
    "customer_drift_anomalies": {"severity": (0.0, 1.0)},
}


class OutOfRangeError(ValueError):
    """A frame about to be written holds a value that is not finite or outside its column's range."""


def check_rows(table: str, frame: pd.DataFrame | None) -> None:
    if frame is None or frame.empty:
        return
    for column, (low, high) in RANGES[table].items():
        if column not in frame:
            continue
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy("float64")  # a non-number becomes NaN: bad
        with np.errstate(invalid="ignore"):
            bad = frame[column].notna().to_numpy() & (~np.isfinite(values) | (values < low) | (values > high))
        if bad.any():
            example = frame["customer_id"].iloc[int(np.flatnonzero(bad)[0])] if "customer_id" in frame else "?"
            raise OutOfRangeError(f"{table}.{column}: {int(bad.sum())} value(s) not finite or outside [{low:g}, {high:g}] "
                                  f"(e.g. customer {example!r}: {values[bad][0]!r}); nothing of this store was written")
