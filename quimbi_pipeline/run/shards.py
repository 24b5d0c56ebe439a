"""A store's customers in shards: runs of one store that the run launcher can spread over machines.

A store with QUIMBI_STORE_SHARDS = N > 1 is scored in N shards, ranges of its customer ids (code-point order, as
Python and PostgreSQL's "C" collation compare). Each shard's run fits the store's state at D (model/store_state.py:
segment models, churn, the detectors' priors) on the same sample of the store's customers, the
QUIMBI_SHARD_SAMPLE_CUSTOMERS with the smallest MD5 of their id, so every run on any machine fits the same state;
the sample's ids also set the ranges. A shard's rows are its customers scored against that state, written in a
transaction that replaces its range only (Warehouse.write_profiles_partition's `shard`). A run without a shard runs
the N shards one after the other and leaves the same tables.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quimbi_pipeline.model.store_state import StoreState
from quimbi_pipeline.sources.store_part import in_customer_range


@dataclass(frozen=True)
class Shard:
    """One shard of a store at a date: its index, the store's shard count and its customer id range [lo, hi)."""

    index: int
    shards: int
    lo: str | None
    hi: str | None

    @property
    def customer_range(self) -> tuple[str | None, str | None]:
        return self.lo, self.hi

    @property
    def first(self) -> bool:
        """The shard that writes what the store's shards share (segment models, transitions)."""
        return self.index == 0

    def label(self) -> str:
        return f"shard {self.index + 1} of {self.shards}"


@dataclass(frozen=True)
class ShardWork:
    """What a shard's run scores and writes with, the same in every shard run of the store's date."""

    shard: Shard
    state: StoreState  # fitted on the plan's sample
    version: str  # the model version of the rows
    model_frame: pd.DataFrame  # segment_models rows the first shard writes (a stable model fitted now; else none)
    transitions: pd.DataFrame | None  # its MONIC transitions
    digest: str  # of the plan and the state's inputs: shards scored against different states do not make a whole date


@dataclass(frozen=True)
class ShardPlan:
    shards: int
    bounds: tuple[str, ...]  # shards - 1 ascending ids: shard k holds the ids in [bounds[k - 1], bounds[k])
    sample: np.ndarray  # the sampled customer ids, ascending

    def shard(self, index: int) -> Shard:
        if not 0 <= index < self.shards:
            raise ValueError(f"shard {index + 1} does not exist: the store has {self.shards} shard(s)")
        edges = (None, *self.bounds, None)
        return Shard(index, self.shards, edges[index], edges[index + 1])


def sample_keys(customer_ids: np.ndarray) -> np.ndarray:
    """The first 4 bytes of each id's MD5 (of its UTF-8 bytes) as an unsigned integer: the same on any machine, and in
    SQL (PostgreSQL: ('x' || substr(md5(customer_id), 1, 8))::bit(32)::bigint), so a source could pick the sample."""
    return np.fromiter((int.from_bytes(hashlib.md5(str(c).encode()).digest()[:4], "big") for c in customer_ids), dtype=np.uint32,
                       count=len(customer_ids))


def plan_shards(customer_ids: np.ndarray, shards: int, sample_customers: int) -> ShardPlan:
    """The sample (the `sample_customers` ids with the smallest sample_keys, ties by id) and the shards' ranges (the
    sample's `shards`-quantiles) of a store's customers (distinct ids, in any order)."""
    ids = np.asarray(customer_ids, dtype=object)
    if ids.size > sample_customers:
        keys = sample_keys(ids)
        cut = np.partition(keys, sample_customers - 1)[sample_customers - 1]  # the largest key taken
        below = ids[keys < cut]
        tied = np.sort(ids[keys == cut])[: sample_customers - below.size]
        chosen = np.concatenate([below, tied])
    else:
        chosen = ids
    sample = np.sort(chosen)
    bounds = tuple(str(sample[(k * sample.size) // shards]) for k in range(1, shards)) if sample.size else ()
    return ShardPlan(shards, bounds, sample)


def shard_orders(orders: pd.DataFrame, shard: Shard) -> pd.DataFrame:
    """The orders of the shard's customers."""
    return orders.loc[in_customer_range(orders["customer_id"], shard.customer_range)]


def sample_orders(orders: pd.DataFrame, plan: ShardPlan) -> pd.DataFrame:
    """The orders of the plan's sampled customers."""
    return orders.loc[orders["customer_id"].isin(pd.Index(plan.sample, dtype="object"))]
