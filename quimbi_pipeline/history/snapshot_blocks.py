"""A columnar copy of each snapshot date, for the drift step (pure: encode and decode, no I/O).

Drift reads every customer's memberships on every snapshot date of its window (about 11 dates in 28
days under the default retention). From the snapshot rows that is the fuzzy_memberships JSON, about
870 bytes a row: 11M rows and 9.5 GB of text at 1M customers, a minute of PostgreSQL output alone.
So the profiles step also writes, in the same transaction as the date's calendar snapshots, the
numbers drift needs as blocks of customers (sorted by id; QUIMBI_SNAPSHOT_BLOCK_CUSTOMERS, 50,000) in Arrow IPC (Feather v2, lz4):

- `memberships`: customer_id, churn_risk_score, archetype_name and one int32 column per "axis.segment"
  holding the membership in millionths. The JSON holds memberships rounded to 6 decimals, so
  k / 1e6 is exactly the double the JSON text parses to: both sources give identical drift.
- `features`: customer_id and one float64 column per "axis.feature" (population drift, and the history
  scored again with D's models).

The rows are the snapshot rows' own values; the blocks are a derived copy, never the source of truth
(docs/snapshots.md), and are pruned with the calendar snapshots of their date.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather

from quimbi_pipeline.sources.keys import is_in

MICRO = 1_000_000
FEATURE_PREFIX = "f:"  # features beside memberships in a snapshot history frame: f:<axis>.<feature>
ID_COLUMNS = ["customer_id", "churn_risk_score", "archetype_name"]


@dataclass
class SnapshotColumns:
    """The numbers of one date's snapshot rows, one row per customer (index = customer_id as str)."""

    base: pd.DataFrame  # churn_risk_score, archetype_name
    memberships: pd.DataFrame  # "axis.segment" -> membership rounded to 6 decimals
    features: pd.DataFrame  # "axis.feature" -> value rounded to 6 decimals, NaN where the JSON has null

    def subset(self, customers: pd.Index) -> SnapshotColumns:
        keep = is_in(self.base.index, customers)
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


def join_block_tables(members: pa.Table, features: pa.Table | None) -> pa.Table:
    """A block's memberships and, for the same customers in the same order, its "f:"-prefixed features."""
    if features is None:
        return members
    features = features.drop_columns(["customer_id"])
    return pa.Table.from_arrays(members.columns + features.columns,
                                names=members.column_names + [FEATURE_PREFIX + n for n in features.column_names])


def decode_tables(tables: list[pa.Table], days: list[pd.Timestamp]) -> pd.DataFrame:
    """The blocks' tables of the dates (one table per date, join_block_tables) as one frame: customer_id, snapshot_date,
    churn_risk_score, archetype_name, "axis.segment" memberships as float64 and any "f:" features. Each value is
    copied once, where concatenating pandas frames per block and per date copied it four times (1M: ~1 s a slice).
    Dates scored with other segments lack some columns: NaN there, as a concat by name gives."""
    table = pa.concat_tables(tables, promote_options="permissive")
    members = [n for n in table.column_names if n not in ID_COLUMNS and not n.startswith(FEATURE_PREFIX)]
    features = [n for n in table.column_names if n.startswith(FEATURE_PREFIX)]
    # One column-major float64 block; memberships from millionths to the doubles the JSON parses to (above).
    values = np.empty((table.num_rows, len(members) + len(features)), dtype="float64", order="F")
    for j, name in enumerate(members + features):
        column = table[name]
        values[:, j] = (pc.fill_null(column.cast(pa.float64()), np.nan) if column.null_count else column).to_numpy()
    values[:, :len(members)] /= MICRO
    frame = pd.DataFrame(values, columns=members + features, copy=False)
    base = {"customer_id": pd.Series(table["customer_id"].to_numpy(), dtype=object),
            "snapshot_date": np.repeat(pd.Series(days).to_numpy(), [t.num_rows for t in tables]),
            "churn_risk_score": table["churn_risk_score"].to_numpy(), "archetype_name": table["archetype_name"].to_pandas()}
    for position, (name, column) in enumerate(base.items()):
        frame.insert(position, name, column)
    return frame
