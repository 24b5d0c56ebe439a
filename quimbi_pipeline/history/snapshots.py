"""Snapshot calendar and retention policy (pure; DESIGN "Semantics").

Snapshot date D gets: daily always; weekly when D is a Monday; monthly on the 1st; quarterly on
Jan/Apr/Jul/Oct 1st; yearly on Jan 1st. A snapshot freezes the profiles of the customers active at D.

Retention is counted per store and type from the store's newest snapshot date N: a snapshot of type
t dated d is kept while N - d < retention_days[t], so "daily 7 days" keeps the 7 newest dates. The other
tables the pipeline writes have a retention of their own, counted the same way from the store's newest
date in that table (TABLE_RETENTION; segment models and bookkeeping: storage/prune.py). The policy's days are
settings (settings/retention.py).
"""

from __future__ import annotations

import pandas as pd

SNAPSHOT_TYPES = ("daily", "weekly", "monthly", "quarterly", "yearly")
PROFILE_CHANGE = "profile_change"  # extra snapshot of a customer whose memberships moved (option)
RETAINED_TYPES = SNAPSHOT_TYPES + (PROFILE_CHANGE,)
# A stored snapshot row holds its types as a set: one bit per type (finest first), so a date that is
# daily, weekly and monthly stores the profile once.
TYPE_BITS = {t: 1 << i for i, t in enumerate(RETAINED_TYPES)}
CALENDAR_MASK = sum(TYPE_BITS[t] for t in SNAPSHOT_TYPES)


def type_mask(types) -> int:
    """The bit set of snapshot types."""
    return sum(TYPE_BITS[t] for t in set(types))


_FINEST = {mask: next(t for t in RETAINED_TYPES if mask & TYPE_BITS[t]) for mask in range(1, 1 << len(RETAINED_TYPES))}


def finest_type(mask: int) -> str:
    """The finest type of a non-empty set (the one a date's history row is shown as)."""
    return _FINEST[mask]


def snapshot_types_for(day) -> list[str]:
    d = pd.Timestamp(day)
    types = ["daily"]
    if d.day_of_week == 0:
        types.append("weekly")
    if d.day == 1:
        types.append("monthly")
        if d.month in (1, 4, 7, 10):
            types.append("quarterly")
        if d.month == 1:
            types.append("yearly")
    return types


def type_kept_at(day, as_of, policy, present_mask: int) -> str | None:
    """The finest type of snapshot date `day` that drift at `as_of` (D) reads, among the types its rows still hold
    (`present_mask`), or None: what the daily schedule's run of D holds, the policy applied when D − 1 was the
    store's newest date (the run's lease keeps the prune off until D's drift is written), plus D. The hourly prune
    clears types as the newest date moves and a backfill's lease holds it off for a whole range: drift must not
    depend on which happened. (A type already cleared because the store is past D cannot come back.)"""
    age = (pd.Timestamp(as_of).normalize() - pd.Timestamp(day).normalize()).days
    kept = [t for t in RETAINED_TYPES if (t == PROFILE_CHANGE or t in snapshot_types_for(day))
            and present_mask & TYPE_BITS[t] and age <= policy.days(t)]
    return kept[0] if kept else None


def expired_on_arrival(day, horizon, policy) -> bool:
    """Whether every calendar type of snapshot date `day` is already expired when the store's newest snapshot date is
    `horizon` (a backfill range's last date, or the store's newest when later): the prune would delete a row of `day`
    with only those types, so a range writes none (its blocks stand for it inside the range: drift reads them)."""
    return all(pd.Timestamp(day).normalize() < policy.cutoff(t, horizon) for t in snapshot_types_for(day))


# Tables pruned by date like the snapshots: table -> (date column, RetentionPolicy field).
TABLE_RETENTION = {
    "customer_drift": ("as_of_date", "drift"),
    "customer_drift_anomalies": ("as_of_date", "anomalies"),
    "drift_inputs": ("as_of_date", "anomalies"),
    "population_drift": ("as_of_date", "population"),
    "customer_outlier_flags": ("flag_date", "outliers"),
    "outlier_rates": ("flag_date", "population"),
}
