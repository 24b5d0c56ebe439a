"""Fuzzy memberships as flat numeric frames, and how far they moved (pure, vectorized).

Columns are "axis.segment". Parsing JSON text goes through Arrow's JSON reader (C, not a Python loop
per customer); keys missing on one side count as membership 0 (the union of segments).
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow.json as pa_json

SQRT2 = np.sqrt(2.0)


def parse_memberships(json_texts: pd.Series) -> pd.DataFrame:
    """{"axis": {"segment": u}} per row -> columns "axis.segment" (NaN where a row lacks the key)."""
    if json_texts.empty:
        return pd.DataFrame(index=json_texts.index)
    table = pa_json.read_json(io.BytesIO("\n".join(json_texts.astype(str)).encode()))
    frame = table.flatten().to_pandas()
    frame.index = json_texts.index
    return frame.astype("float64")


def memberships_frame(segmentations: dict, index: pd.Index) -> pd.DataFrame:
    """The in-memory memberships of a store's segmentation in the same flat form."""
    columns = {}
    for axis, seg in segmentations.items():
        for j, name in enumerate(seg.model.segment_names):
            columns[f"{axis}.{name}"] = seg.memberships[:, j]
    return pd.DataFrame(columns, index=index)


def membership_shift(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Per axis ||m_after - m_before||_2 / sqrt(2) over the union of segments, capped at 1.

    Rows are aligned on the index; only rows present in both frames are returned.
    """
    rows = before.index.intersection(after.index)
    columns = before.columns.union(after.columns)
    b = before.reindex(index=rows, columns=columns).fillna(0.0).to_numpy()
    a = after.reindex(index=rows, columns=columns).fillna(0.0).to_numpy()
    axes = pd.Index([c.split(".", 1)[0] for c in columns])
    out = {}
    for axis in pd.unique(axes):
        cols = np.flatnonzero(axes == axis)
        diff = a[:, cols] - b[:, cols]
        out[axis] = np.minimum(np.sqrt(np.einsum("ij,ij->i", diff, diff)) / SQRT2, 1.0)
    return pd.DataFrame(out, index=rows)
