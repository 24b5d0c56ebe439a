"""What backs a drift: the one model the history is scored with, and the evidence of each change.

- One model. A store's snapshots were scored with the models in force on their dates; a refit moves
  every customer's memberships although nobody changed. Drift at D therefore re-scores every snapshot
  of its window with the models in force at D, from the features the snapshots froze: a refit is never
  drift, and a customer's drift is their features' movement seen through today's segments.
- Evidence. With ENABLE_ADAPTIVE_WINDOWS the profiles step detects changes in each customer's own
  order stream (change_points.py) and freezes the evidence in the snapshot blocks: since when, the
  signal before and after. A direction (improving / degrading), an anomaly and a recommendation need
  evidence on their axis that agrees with them; the evidence is named in the text.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa

from quimbi_pipeline.history.snapshot_blocks import FEATURE_PREFIX
from quimbi_pipeline.model.features import CHANGE_PREFIX
from quimbi_pipeline.model.segmentation import AxisModel

NS_PER_DAY = 86_400 * 10**9
# Per axis: the detected signal, how it reads, whether a higher value is better on the axis' ladder,
# and how to show a level of it (the mean shift detectors work on log1p of values and items).
EVIDENCE = {
    "purchase_frequency": ("orders per month", True, lambda v: v),
    "purchase_value": ("typical order value", True, np.expm1),
    "basket_size": ("typical items per order", True, np.expm1),
    "discount_sensitivity": ("share of orders discounted", False, lambda v: v),
    "category_exploration": ("share of orders in the favourite category", False, lambda v: v),
}


def rescored_memberships(frame: pd.DataFrame, models: dict[str, AxisModel]) -> tuple[list[str], np.ndarray]:
    """("axis.segment" names, sorted; their memberships under `models`, the models in force at D, one row per row of
    `frame`, column-major), computed from its "f:axis.feature" columns. Missing features (null in old JSON) take
    the column median."""
    names, blocks = [], []
    for axis, model in models.items():
        columns = [f"{FEATURE_PREFIX}{axis}.{f}" for f in model.feature_names]
        if not set(columns) <= set(frame.columns):
            raise ValueError(f"snapshot features of axis {axis} are missing: cannot score the history with model {axis}")
        raw = frame[columns].to_numpy("float64")
        if np.isnan(raw).any():
            filled = frame[columns].astype("float64")
            raw = filled.fillna(filled.median()).fillna(0.0).to_numpy()
        blocks.append(model.memberships(raw))
        names += [f"{axis}.{name}" for name in model.segment_names]
    order = sorted(range(len(names)), key=names.__getitem__)
    sources = [(block, j) for block in blocks for j in range(block.shape[1])]
    matrix = np.empty((len(frame), len(names)), dtype="float64", order="F")
    for j, i in enumerate(order):  # the axes' blocks side by side, in name order
        block, column = sources[i]
        matrix[:, j] = block[:, column]
    return [names[i] for i in order], matrix


def rescored_names(models: dict[str, AxisModel]) -> list[str]:
    """The "axis.segment" names of rescored_memberships' columns, in its order."""
    return sorted(f"{axis}.{name}" for axis, model in models.items() for name in model.segment_names)


def block_memberships(models: dict[str, AxisModel], table: pa.Table) -> np.ndarray | None:
    """rescored_memberships' rows for one snapshot block's customers (an Arrow table with "f:axis.feature" columns);
    None when a feature is missing or null there (rescored_memberships fills those with the whole frame's median)."""
    columns = [f"{FEATURE_PREFIX}{axis}.{f}" for axis, model in models.items() for f in model.feature_names]
    if not set(columns) <= set(table.column_names) or any(table[c].null_count for c in columns):
        return None
    frame = pd.DataFrame({c: table[c].to_numpy() for c in dict.fromkeys(columns)})
    if np.isnan(frame.to_numpy("float64")).any():
        return None
    return rescored_memberships(frame, models)[1]


def models_tag(models: dict[str, AxisModel]) -> str:
    """A key naming what the models score: their axes, features, scalers and centroids (a cache of scored rows)."""
    digest = hashlib.sha1()
    for axis, model in sorted(models.items()):
        digest.update(repr((axis, model.algorithm, model.feature_names, model.segment_names)).encode())
        for part in (model.log_scale, model.scaler_mean, model.scaler_scale, model.centroids, model.weights, model.covariances):
            digest.update(b"-" if part is None else np.ascontiguousarray(part).tobytes())
    return f"scored:{digest.hexdigest()}"


def with_memberships(frame: pd.DataFrame, names: list[str], matrix: np.ndarray) -> pd.DataFrame:
    """`frame` with its "axis.segment" membership columns replaced by `names` holding `matrix` (rescored_memberships)."""
    membership_columns = [c for c in frame.columns if ":" not in c and "." in c]
    return pd.concat([frame.drop(columns=membership_columns), pd.DataFrame(matrix, columns=names, index=frame.index)], axis=1)


def evidence_arrays(frame: pd.DataFrame) -> dict[str, dict[str, np.ndarray]]:
    """{axis: {"since": days since epoch (nan: none), "before", "after"}} from a history frame's evidence columns."""
    out: dict[str, dict[str, np.ndarray]] = {}
    prefix = f"{FEATURE_PREFIX}{CHANGE_PREFIX}"
    for column in frame.columns:
        if column.startswith(prefix):
            axis, field = column[len(prefix):].rsplit(".", 1)
            if field in ("since", "before", "after"):
                out.setdefault(axis, {})[field] = frame[column].to_numpy("float64")
    return {a: e for a, e in out.items() if {"since", "before", "after"} <= set(e)}


def evidence_sign(axis: str, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """+1 when the change improves the customer on the axis' ladder, -1 when it degrades, 0 without a change."""
    better_if_higher = EVIDENCE[axis][1] if axis in EVIDENCE else True
    with np.errstate(invalid="ignore"):
        sign = np.sign(after - before) * (1.0 if better_if_higher else -1.0)
    return np.nan_to_num(sign, nan=0.0).astype("int64")


# Below this many dates numpy's ISO text, above it pandas' strftime (numpy's is 2x slower at 1M dates; pandas' costs
# 0.1 ms a call, and a small store's drift makes a few hundred calls).
SMALL_DAY_TEXT = 10_000


def day_text(days) -> pd.Series:
    """Whole days since 1970-01-01 as YYYY-MM-DD text (the dates in transitions, anomalies and recommendations)."""
    days = np.asarray(days, dtype="int64")
    if days.size < SMALL_DAY_TEXT:
        return pd.Series(np.datetime_as_string(days.astype("datetime64[D]"), unit="D").astype(object), dtype=object)
    return pd.Series((days * NS_PER_DAY).astype("datetime64[ns]")).dt.strftime("%Y-%m-%d")


def describe(axis: str, since: np.ndarray, before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(feature name, before, after, since date text) per row, as they appear in recommendations and anomalies."""
    label, _, shown = EVIDENCE.get(axis, (axis, True, lambda v: v))
    date_text = day_text(np.nan_to_num(since, nan=0.0)).to_numpy(object)
    return np.full(since.shape, label, dtype=object), np.round(shown(before), 2), np.round(shown(after), 2), date_text
