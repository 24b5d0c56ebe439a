"""Rollout of a customer-level flag to a stable share of a store's customers (pure, vectorized).

A customer is in the rollout of flag F at p% when hash(F + ":" + customer_id) mod 10,000 < 100 p:
the same customers on every date and every run (pandas' hash_pandas_object, a fixed-key SipHash),
independent between flags, and growing p only adds customers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BUCKETS = 10_000


def in_rollout(customer_ids, flag: str, share: float) -> np.ndarray:
    ids = pd.Series(np.asarray(customer_ids, dtype=object)).astype(str)
    if share >= 1.0:
        return np.ones(len(ids), dtype=bool)
    buckets = pd.util.hash_pandas_object(flag + ":" + ids, index=False).to_numpy() % BUCKETS
    return buckets < share * BUCKETS
