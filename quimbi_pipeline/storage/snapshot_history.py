"""A store's snapshot history as numbers, for the drift step: per date from its snapshot blocks
(snapshot_blocks.py), else from the snapshot rows' JSON (dates written before the blocks existed, or
whose calendar snapshots were pruned and only profile_change rows remain). Both give the same values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from quimbi_pipeline.history.snapshot_blocks import (
    FEATURE_PREFIX,
    ID_COLUMNS,
    decode_tables,
    join_block_tables,
    read_block,
)
from quimbi_pipeline.model.features import CHANGE_PREFIX
from quimbi_pipeline.model.memberships import parse_memberships
from quimbi_pipeline.storage import Warehouse

BASE_COLUMNS = ["customer_id", "snapshot_date", "churn_risk_score", "archetype_name"]
EVIDENCE_PREFIX = FEATURE_PREFIX + CHANGE_PREFIX  # a history frame's change evidence columns: f:change:<axis>.<field>


def numeric_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Snapshot rows with JSON text -> BASE_COLUMNS + "axis.segment" membership columns."""
    rows = rows.reset_index(drop=True)
    return pd.concat([rows[BASE_COLUMNS], parse_memberships(rows["fuzzy_memberships"])], axis=1)


def _id_range(table: pa.Table, lo: str | None, hi: str | None) -> tuple[int, int]:
    """[start, stop): the rows of a table sorted by customer_id with lo <= id < hi."""
    ids = table["customer_id"]
    start = 0 if lo is None else pc.sum(pc.less(ids, lo)).as_py() or 0
    stop = table.num_rows if hi is None else pc.sum(pc.less(ids, hi)).as_py() or 0
    return start, stop


# Decoded snapshot blocks a run of several dates keeps (BlockCache): a 100,000-customer date's are ~28 MiB (a window of
# 18 dates 506 MiB, measured); at 1M customers 3-4 dates of a window fit.
BLOCK_CACHE_BYTES = 1 << 30


def _blocks_per_slice(blocks: pd.DataFrame, every_customers: int) -> int:
    """How many of a date's blocks (snapshot_block_index rows) make a slice of about every_customers."""
    return max(1, round(every_customers / max(int(blocks["n_customers"].max()), 1)))


class BlockCache:
    """Snapshot blocks fetched and decoded once for a run's dates (the drift step of a backfill's range), where each
    date's window shares all but one of its snapshot dates with the date before: (store, date, block, column) -> the
    block's Arrow table. A date's blocks do not change during the drift step (its profiles step wrote them; pruning
    waits for the run's lease), so a cached block is the stored one.

    Bounded by `max_bytes`: a reader drops the store's dates that left its window (keep_days: the run's dates come in
    order), and a block that would pass the bound is not kept. Not least-recently-used eviction: every date reads its
    whole window in the same order, and a window larger than the bound would evict each block before its next use.
    """

    def __init__(self, max_bytes: int = BLOCK_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = self.reads = 0  # blocks found here, blocks read from the warehouse
        self._tables: dict[tuple, pa.Table] = {}
        self._kept: dict[tuple, object] = {}  # small results of a date's blocks (population drift's binned reference)

    def tables(self, warehouse: Warehouse, store_id: str, day, blocks: list[int], column: str) -> dict[int, pa.Table]:
        """{block: its table} of the date's blocks' `column`, read from the warehouse only where not held."""
        day = pd.Timestamp(day)
        found, missing = {}, []
        for block in blocks:
            key = (store_id, day, block, column)
            if key in self._tables:
                found[block] = self._tables[key]
            else:
                missing.append(block)
        self.hits += len(found)
        if missing:
            self.reads += len(missing)
            for block, table in read_block_tables(warehouse, store_id, day, missing, column).items():
                found[block] = table
                self._put((store_id, day, block, column), table)
        return found

    def array(self, key: tuple, compute: Callable[[], np.ndarray | None]) -> np.ndarray | None:
        """The array held under `key` = (store, date, ...), else compute()'s (kept within the bound; None is not kept)."""
        if key in self._tables:
            return self._tables[key]
        value = compute()
        if value is not None:
            self._put(key, value)
        return value

    def kept(self, key: tuple, compute: Callable[[], object]) -> object:
        """The small object held under `key` = (store, date, ...), else compute()'s, kept while its date is in the window
        (not counted against the bound: a few kilobytes)."""
        if key not in self._kept:
            self._kept[key] = compute()
        return self._kept[key]

    def keep_days(self, store_id: str, days) -> None:
        """Drop the store's blocks of dates not in `days` (those that left the window)."""
        keep = {pd.Timestamp(d) for d in days}
        for key in [k for k in self._tables if k[0] == store_id and k[1] not in keep]:
            self.nbytes -= self._tables.pop(key).nbytes
        for key in [k for k in self._kept if k[0] == store_id and k[1] not in keep]:
            del self._kept[key]

    def _put(self, key: tuple, table: pa.Table | np.ndarray) -> None:
        if self.nbytes + table.nbytes <= self.max_bytes:
            self._tables[key] = table
            self.nbytes += table.nbytes


def read_block_tables(warehouse: Warehouse, store_id: str, day, blocks: list[int], column: str) -> dict[int, pa.Table]:
    """{block: its table} of the date's blocks' `column` (memberships or features), read from the warehouse."""
    data = warehouse.snapshot_block_data(store_id, day, blocks, column)
    return {block: read_block(data[block]) for block in blocks}


def changed_customers(tables: dict[pd.Timestamp, pa.Table], day: pd.Timestamp) -> np.ndarray | None:
    """Per customer of `day`'s table (sorted by id): whether the "since" of any change evidence column differs on
    another date's table (a value against none counts). None when `day` has no evidence columns (change detection
    off: every customer can have anomalies). A customer whose evidence never moves in the window holds no change
    new at any of its snapshots, and with evidence every anomaly needs one (measures.anomalies_at)."""
    at_day = tables[day]
    names = set(at_day.column_names)
    # An axis' evidence counts with its three fields (drift.evidence.evidence_arrays reads no other).
    since = [n for n in at_day.column_names if n.startswith(EVIDENCE_PREFIX) and n.endswith(".since")
             and {n[:-len("since")] + f for f in ("before", "after")} <= names]
    if not since:
        return None
    changed = np.zeros(at_day.num_rows, dtype=bool)
    ids = at_day["customer_id"]
    at_day_since = {name: at_day[name].to_numpy(zero_copy_only=False).astype("float64") for name in since}
    for other, table in tables.items():
        if other == day or not table.num_rows:
            continue
        position = pc.index_in(table["customer_id"], value_set=ids)  # each row's place in `day`'s table, null: not there
        present = position.is_valid().to_numpy(zero_copy_only=False)
        at = position.drop_null().to_numpy()
        for name in since:
            now = at_day_since[name][at]
            then = (table[name].to_numpy(zero_copy_only=False).astype("float64")[present] if name in table.column_names
                    else np.full(at.size, np.nan))
            moved = ~((now == then) | (np.isnan(now) & np.isnan(then)))
            changed[at[moved]] = True
    return changed


def _changed_only(found: dict, day_parts: dict, day: pd.Timestamp) -> tuple[dict, dict]:
    """found's tables and day_parts' rows of changed_customers(found, day) only (as they are without evidence)."""
    if day not in found:
        return found, day_parts
    changed = changed_customers(found, day)
    if changed is None:
        return found, day_parts
    keep_ids = found[day]["customer_id"].filter(pa.array(changed))
    kept, kept_parts = {}, {}
    for d, table in found.items():
        mask = changed if d == day else pc.is_in(table["customer_id"], value_set=keep_ids).to_numpy(zero_copy_only=False)
        if mask.any():
            kept[d] = table.filter(pa.array(mask))
            if d in day_parts:
                kept_parts[d] = [np.concatenate(day_parts[d])[mask]]
    return kept, kept_parts


class SnapshotHistoryReader:
    """Reads a store's snapshot history in [start, end] slice by slice of customers, in ascending id order.

    Each block is fetched and decoded once: a slice keeps, per date, the block it ended in for the next; a run's
    BlockCache (`cache`) keeps them for its later dates.
    """

    def __init__(self, warehouse: Warehouse, store_id: str, start, end, kept_at: tuple | None = None, cache: BlockCache | None = None):
        """kept_at = (as_of, RetentionPolicy): only what the daily run of as_of holds under the policy (Warehouse.snapshot_sources)."""
        self.warehouse, self.store_id, self.cache = warehouse, store_id, cache
        index = warehouse.snapshot_block_index(store_id, start, end)
        self.sources = warehouse.snapshot_sources(store_id, start, end, kept_at, block_dates=index["snapshot_date"].unique())
        calendar_days = set(self.sources.loc[self.sources["snapshot_type"] != "profile_change", "snapshot_date"])
        self.blocks = {day: group.reset_index(drop=True) for day, group in index.groupby("snapshot_date") if day in calendar_days}
        if cache is not None:
            cache.keep_days(store_id, self.blocks)
        self.row_sources = self.sources[~self.sources["snapshot_date"].isin(list(self.blocks))]
        self._held: dict[pd.Timestamp, tuple[int, pa.Table]] = {}  # date -> (block, its table)

    def slice_bounds(self, day, every_customers: int) -> list[str] | None:
        """Customer ids cutting the customers of `day` into slices of whole blocks of about every_customers;
        None when the date has no blocks."""
        blocks = self.blocks.get(pd.Timestamp(day))
        if blocks is None:
            return None
        step = _blocks_per_slice(blocks, every_customers)
        return blocks["first_customer_id"].iloc[step::step].tolist()

    def _day_blocks(self, day: pd.Timestamp, lo: str | None, hi: str | None, with_features: bool) -> tuple[list[int], dict[int, pa.Table]]:
        """The date's blocks holding customers with lo <= id < hi, in order, and their tables as stored."""
        blocks = self.blocks[day]
        overlaps = np.ones(len(blocks), dtype=bool)
        if hi is not None:
            overlaps &= (blocks["first_customer_id"] < hi).to_numpy(bool)
        if lo is not None:
            overlaps &= (blocks["last_customer_id"] >= lo).to_numpy(bool)
        wanted = blocks.loc[overlaps, "block"].astype(int).tolist()
        held_block, held = self._held.get(day, (None, None))
        tables = self._read_blocks(day, [b for b in wanted if b != held_block], with_features)
        if held_block in wanted:
            tables[held_block] = held
        if wanted:
            self._held[day] = (wanted[-1], tables[wanted[-1]])
        return wanted, tables

    def _read_blocks(self, day: pd.Timestamp, blocks: list[int], with_features: bool) -> dict[int, pa.Table]:
        """{block: its memberships (and features) table}, through the run's cache when there is one."""
        if not blocks:
            return {}
        read = read_block_tables if self.cache is None else self.cache.tables
        members = read(self.warehouse, self.store_id, day, blocks, "memberships")
        features = read(self.warehouse, self.store_id, day, blocks, "features") if with_features else {}
        return {b: join_block_tables(members[b], features[b] if with_features else None) for b in blocks}

    def history(self, lo: str | None = None, hi: str | None = None, with_features: bool = False) -> pd.DataFrame:
        """BASE_COLUMNS + "axis.segment" memberships of customers with lo <= id < hi, one row per customer and date;
        with_features also "f:axis.feature" features and "f:change:axis.field" change evidence (blocks only)."""
        return self._history(lo, hi, with_features)[0]

    def scored_history(self, lo: str | None, hi: str | None, score: Callable[[pa.Table], np.ndarray | None], tag: str,
                       changed_at=None) -> tuple[pd.DataFrame, np.ndarray | None]:
        """history(lo, hi, with_features=True) and score's rows for it, column-major. score(a block's table) gives one row
        per customer of the block, each row from that customer's values alone, or None when the block cannot be scored
        alone; a run's BlockCache keeps each (date, block, tag)'s, which its later dates reuse (a backfill's windows share
        all but one date). The rows are None when a block says None or some dates come from snapshot rows' JSON.
        With rows, the frame holds no membership or feature columns but the change evidence (the rows stand for them).
        `changed_at` (a date): only the customers of that date whose change evidence moved in the window
        (changed_customers), when every date is read from blocks; the others' anomalies need no history."""
        return self._history(lo, hi, True, (score, tag), changed_at)

    def _history(self, lo, hi, with_features: bool, scoring: tuple | None = None, changed_at=None) -> tuple[pd.DataFrame, np.ndarray | None]:
        found, day_parts = {}, {}
        scorable = scoring is not None and self.row_sources.empty
        for day in self.blocks:
            wanted, tables = self._day_blocks(day, lo, hi, with_features)
            if not tables:
                continue
            whole = pa.concat_tables([tables[b] for b in wanted], promote_options="permissive")
            start, stop = _id_range(whole, lo, hi)
            if stop <= start:
                continue
            found[day] = whole.slice(start, stop - start)
            if scorable:
                offset = 0
                for b in wanted:  # each block's rows inside [start, stop) of the date's
                    n = tables[b].num_rows
                    a, z = max(start - offset, 0), min(stop - offset, n)
                    if z > a:
                        rows = self._scored_block(day, b, tables[b], *scoring)
                        if rows is None:
                            scorable = False
                            break
                        day_parts.setdefault(day, []).append(rows[a:z])
                    offset += n
        if changed_at is not None and scorable and found:
            found, day_parts = _changed_only(found, day_parts, pd.Timestamp(changed_at))
        parts = [rows for day in found for rows in day_parts.get(day, [])]
        if scorable and parts:  # the rows stand for the memberships and features: only the evidence is decoded
            found = {day: table.select([n for n in table.column_names if n in ID_COLUMNS or n.startswith(EVIDENCE_PREFIX)])
                     for day, table in found.items()}
        frames = [decode_tables(list(found.values()), list(found))] if found else []
        if not self.row_sources.empty:
            rows = self.warehouse.snapshot_rows(self.store_id, self.row_sources, with_features=with_features, customer_range=(lo, hi))
            frame = numeric_rows(rows)
            if with_features and len(rows):
                frame = pd.concat([frame, parse_memberships(rows["behavioral_features"].reset_index(drop=True)).add_prefix(FEATURE_PREFIX)], axis=1)
            frames.append(frame)
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame(columns=BASE_COLUMNS), None
        frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        if not (scorable and parts):
            return frame, None
        scored = np.empty((len(frame), parts[0].shape[1]), dtype="float64", order="F")
        at = 0
        for rows in parts:
            scored[at:at + len(rows)] = rows
            at += len(rows)
        return frame, scored

    def _scored_block(self, day: pd.Timestamp, block: int, table: pa.Table, score, tag: str) -> np.ndarray | None:
        if self.cache is None:
            return score(table)
        return self.cache.array((self.store_id, day, block, tag), lambda: score(table))

    def population_frame(self, day) -> pd.DataFrame:
        """Every snapshot customer of `day`: "axis.segment" memberships and "f:axis.feature" features (population drift)."""
        return self._population(pd.Timestamp(day))[0]

    def scored_population_frame(self, day, score: Callable[[pa.Table], np.ndarray | None], tag: str) -> tuple[pd.DataFrame, np.ndarray | None]:
        """population_frame(day) and score's rows for it, as scored_history gives them (None: score it whole)."""
        return self._population(pd.Timestamp(day), (score, tag))

    def population_slices(self, day, every_customers: int, scoring: tuple | None = None) -> Iterator[tuple[pd.DataFrame, np.ndarray | None]]:
        """population_frame(day) slice by slice of whole blocks of about every_customers, in id order, each with the
        rows of scoring = (score, tag) as scored_population_frame gives them (a date stored in blocks only: `blocks`)."""
        day = pd.Timestamp(day)
        blocks = self.blocks[day]
        step = _blocks_per_slice(blocks, every_customers)
        ids = blocks["block"].astype(int).tolist()
        for i in range(0, len(ids), step):
            wanted = ids[i:i + step]
            yield self._population_of(day, wanted, self._read_blocks(day, wanted, True), scoring)

    def _population_of(self, day: pd.Timestamp, wanted: list[int], tables: dict[int, pa.Table],
                       scoring: tuple | None) -> tuple[pd.DataFrame, np.ndarray | None]:
        frame = decode_tables([pa.concat_tables([tables[b] for b in wanted], promote_options="permissive")], [day])
        frame = frame[[c for c in frame.columns if c not in BASE_COLUMNS and not c.startswith(EVIDENCE_PREFIX)]]
        rows = None if scoring is None else [self._scored_block(day, b, tables[b], *scoring) for b in wanted]
        if rows is None or any(r is None for r in rows):
            return frame, None
        return frame, np.asfortranarray(np.concatenate(rows))

    def _population(self, day: pd.Timestamp, scoring: tuple | None = None) -> tuple[pd.DataFrame, np.ndarray | None]:
        if day in self.blocks:
            wanted, tables = self._day_blocks(day, None, None, True)
            return self._population_of(day, wanted, tables, scoring)
        sources = self.sources[self.sources["snapshot_date"] == day]
        rows = self.warehouse.snapshot_rows(self.store_id, sources, with_features=True).reset_index(drop=True)
        return pd.concat([parse_memberships(rows["fuzzy_memberships"]), parse_memberships(rows["behavioral_features"]).add_prefix("f:")], axis=1), None
