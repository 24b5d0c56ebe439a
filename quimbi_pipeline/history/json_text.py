"""Profile JSON as text, built column-wise: every row of a store has the same keys in the same order, numbers
rounded to 6 decimals (NaN and inf as null). Deterministic: the same numbers give the same bytes."""

from __future__ import annotations

import numpy as np
import pandas as pd

DECIMALS = 6


def rounded_number(values: np.ndarray) -> np.ndarray:
    """The number json_number writes: rounded to 6 decimals, NaN for its null (NaN and inf)."""
    values = np.asarray(values, dtype="float64")
    return np.where(np.isfinite(values), np.round(values, DECIMALS) + 0.0, np.nan)  # + 0.0 turns -0.0 into 0.0


def json_number(values: np.ndarray) -> pd.Series:
    """Numbers as JSON text, rounded to 6 decimals; NaN and inf become null."""
    rounded = rounded_number(values)
    return pd.Series(rounded).astype(str).where(np.isfinite(rounded), "null")


def json_object(items: list[tuple[str, pd.Series]]) -> pd.Series:
    """'{"k1": v1, "k2": v2}' per row from already-serialized JSON values, vectorized."""
    if not items:
        raise ValueError("json_object needs at least one item")
    out = None
    for i, (key, value) in enumerate(items):
        prefix = ("{" if i == 0 else ", ") + f'"{key}": '
        part = prefix + value.reset_index(drop=True)
        out = part if out is None else out + part
    return out + "}"


def json_string(values: np.ndarray) -> pd.Series:
    # Segment names come from fixed ladders ([a-z_0-9]): no escaping needed.
    return '"' + pd.Series(values, dtype="string") + '"'
