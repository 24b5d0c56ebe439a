"""A columnar copy of each snapshot date, for the drift step (pure: encode and decode, no I/O).

Drift reads every customer's memberships on every snapshot date of its window (about 11 dates in 28
days under the default retention). From the snapshot rows that is the fuzzy_memberships JSON, about
870 bytes a row: 11M rows and 9.5 GB of text at 1M customers, a minute of PostgreSQL output alone.
So the profiles step also writes, in the same transaction as the date's calendar snapshots, the
numbers drift needs as blocks of customers (sorted by id; QUIMBI_SNAPSHOT_BLOCK_CUSTOMERS, 50,000) in Arrow IPC (Feather v2, lz4):

- `memberships`: customer_id, churn_risk_score, archetype_name and one int32 column per "axis.segment"
  holding the membership in millionths. The JSON holds memberships rounded to 6 decimals, so
  k / 1e6 is exactly the double the JSON text parses to: both sources give identical drift.
- `features`: customer_id and one float64 column per "axis.feature" (read only for population drift).

The rows are the snapshot rows' own values; the blocks are a derived copy, never the source of truth
(docs/snapshots.md), and are pruned with the calendar snapshots of their date.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather

MICRO = 1_000_000
ID_COLUMNS = ["customer_id", "churn_risk_score", "archetype_name"]


@dataclass
class SnapshotColumns:
    """The numbers of one date's snapshot rows, one row per customer (index = customer_id as str)."""

    base: pd.DataFrame  # churn_risk_score, archetype_name
    memberships: pd.DataFrame  # "axis.segment" -> membership rounded to 6 decimals
    features: pd.DataFrame  # "axis.feature" -> value rounded to 6 decimals, NaN where the JSON has null

    def subset(self, customers: pd.Index) -> SnapshotColumns:
        keep = self.base.index.isin(customers)
        return SnapshotColumns(self.base[keep], self.memberships[keep], self.features[keep])


def _ipc_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    feather.write_feather(pa.Table.from_pandas(frame, preserve_index=False), buffer, compression="lz4")
    return buffer.getvalue()


def encode_blocks(columns: SnapshotColumns, rows_per_block: int) -> list[dict]:
    """Blocks of customers sorted by id (code-point order, as PostgreSQL's "C" collation and Python compare)."""
    ids = columns.base.index.astype(str).to_numpy(object)
    order = np.argsort(ids, kind="stable")
    micro = np.rint(columns.memberships.to_numpy("float64") * MICRO)
    if micro.size and not np.all(np.abs(micro / MICRO - columns.memberships.to_numpy("float64")) == 0):
        raise ValueError("memberships must be rounded to 6 decimals before they are written as blocks")
    blocks = []
    for block, start in enumerate(range(0, len(order), rows_per_block)):
        rows = order[start:start + rows_per_block]
        member_frame = pd.DataFrame({"customer_id": ids[rows],
                                     "churn_risk_score": columns.base["churn_risk_score"].to_numpy("float64")[rows],
                                     # A few dozen distinct names: dictionary-encoded.
                                     "archetype_name": pd.Categorical(columns.base["archetype_name"].astype(str).to_numpy(object)[rows])})
        member_frame = pd.concat([member_frame, pd.DataFrame(micro[rows].astype("int32"), columns=columns.memberships.columns)], axis=1)
        feature_frame = pd.concat([pd.DataFrame({"customer_id": ids[rows]}),
                                   pd.DataFrame(columns.features.to_numpy("float64")[rows], columns=columns.features.columns)], axis=1)
        blocks.append({"block": block, "first_customer_id": str(ids[rows[0]]), "last_customer_id": str(ids[rows[-1]]),
                       "n_customers": len(rows), "memberships": _ipc_bytes(member_frame), "features": _ipc_bytes(feature_frame)})
    return blocks


def read_block(data: bytes) -> pa.Table:
    """A block's Arrow table as written (memberships in millionths)."""
    return feather.read_table(pa.BufferReader(data))


def decode_memberships(data: bytes) -> pd.DataFrame:
    """customer_id, churn_risk_score, archetype_name and "axis.segment" memberships as float64."""
    frame = read_block(data).to_pandas()
    members = [c for c in frame.columns if c not in ID_COLUMNS]
    out = frame[ID_COLUMNS].copy()
    out["customer_id"] = out["customer_id"].astype(object)
    values = frame[members].to_numpy("float64") / MICRO
    return pd.concat([out, pd.DataFrame(values, columns=members, index=out.index)], axis=1)


def decode_features(data: bytes) -> pd.DataFrame:
    """customer_id and "axis.feature" columns."""
    frame = read_block(data).to_pandas()
    frame["customer_id"] = frame["customer_id"].astype(object)
    return frame
