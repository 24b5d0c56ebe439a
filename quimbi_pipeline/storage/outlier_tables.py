"""customer_outlier_flags (ENABLE_OUTLIER_DETECTION) and the per-date series outlier_rates.

Every customer's score per method is kept for the store's newest flag date only; earlier dates keep
their flagged rows (the events), and outlier_rates keeps each date's customers and flagged per method,
so a date's share stays known after its unflagged rows are cut. Inside a run of several dates (a backfill)
a date followed by another writes its flagged rows only: the next date would cut the others. A row per
customer, method and date for 28 days was 238 of 1,328 bytes per customer per daily run (benchmarks/storage.py).

Not date-partitioned on PostgreSQL (unlike the snapshots): the cut deletes a date's unflagged rows the day
after they were written, and in a partition of their own their space stays with that date's file until
the date expires (measured: 4.8 KB per kept row, 249 bytes per customer per run, no better than keeping
every row). In one table, autovacuum hands that space to the next day's rows. A table created partitioned
by an earlier version keeps working; `quimbi migrate` turns it into one table.
"""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from quimbi_pipeline.storage.connection import Json, metadata

FLAGGED_INDEX = "ix_customer_outlier_flags_flagged"
FULL_INDEX = "ix_customer_outlier_flags_store_date_method"  # every row's, until 2026-12-06 (`quimbi migrate` replaces it)

customer_outlier_flags = sa.Table(
    "customer_outlier_flags", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("flag_date", sa.Date, primary_key=True),
    sa.Column("method", sa.Text, primary_key=True),
    sa.Column("is_outlier", sa.Boolean, nullable=False),
    sa.Column("outlier_score", sa.Float, nullable=False),
    sa.Column("outlier_axes", Json, nullable=False),
    sa.Column("explanation", sa.Text),  # NULL when not an outlier
    # The flagged rows only (what readers list; a date's counts are in outlier_rates): an index over every row cost
    # a 1M-customer store's daily write of 2.4M unflagged rows about 5 s of upkeep.
    sa.Index(FLAGGED_INDEX, "store_id", "flag_date", "method",
             postgresql_where=sa.text("is_outlier"), sqlite_where=sa.text("is_outlier")),
)

outlier_rates = sa.Table(
    "outlier_rates", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("flag_date", sa.Date, primary_key=True),
    sa.Column("method", sa.Text, primary_key=True),
    sa.Column("customers", sa.Integer, nullable=False),
    sa.Column("flagged", sa.Integer, nullable=False),
)


def outlier_counts(outliers: pd.DataFrame | None) -> dict[str, list[int]]:
    """{method: [customers, flagged]} of outlier flag rows (what outlier_rates keeps of a store's date)."""
    if outliers is None or outliers.empty:
        return {}
    by_method = outliers.groupby("method")["is_outlier"].agg(["size", "sum"])
    return {str(m): [int(n), int(k)] for m, (n, k) in by_method.iterrows()}


def rate_rows(store_id: str, day, counts: dict[str, list[int]]) -> list[dict]:
    """outlier_rates rows of a store's date from outlier_counts."""
    return [{"store_id": store_id, "flag_date": day, "method": m, "customers": n, "flagged": k} for m, (n, k) in sorted(counts.items())]


class OutlierStore:
    def _replace_outlier_flags(self, conn: sa.Connection, store_id: str, day, outliers: pd.DataFrame, left_to_next: bool = False,
                               shard=None) -> None:
        """In the caller's transaction: the store's flags and rates of the date become `outliers`'; the
        unflagged rows are kept for the store's newest date only. `left_to_next`: the run's next date follows for this
        store (a backfill's range), whose write would cut this date's unflagged rows: they are not written. `shard`
        (run/shards.Shard): the flags of its customer range only; the rates wait for every shard (store_shards)."""
        day = pd.Timestamp(day).date()
        self._ensure_date_partition(conn, "customer_outlier_flags", day)
        flags, rates = customer_outlier_flags, outlier_rates
        newest = conn.execute(sa.select(sa.func.max(flags.c.flag_date)).where(flags.c.store_id == store_id)).scalar()
        newest = None if newest is None else pd.Timestamp(newest).date()
        if newest is not None and day <= newest:  # a date after the newest has no rows yet (the daily run): no scan for them
            within = self.customer_range_clause(flags.c.customer_id, (None, None) if shard is None else shard.customer_range)
            conn.execute(sa.delete(flags).where(flags.c.store_id == store_id, flags.c.flag_date == day, within))
        if shard is None:
            conn.execute(sa.delete(rates).where(rates.c.store_id == store_id, rates.c.flag_date == day))
            rows = rate_rows(store_id, day, outlier_counts(outliers))
            if rows:
                conn.execute(sa.insert(rates), rows)
        is_newest = newest is None or day >= newest
        kept = outliers if is_newest and not left_to_next else outliers[outliers["is_outlier"].astype(bool)]
        if len(kept):
            self._bulk_load(conn, self.qualified(flags.name), kept.assign(store_id=store_id)[[c.name for c in flags.columns]])
        if is_newest:
            self.cut_unflagged_outliers(conn, store_id, day)

    def cut_unflagged_outliers(self, conn: sa.Connection, store_id: str, newest) -> int:
        """In the caller's transaction: delete the store's unflagged rows dated before `newest`; returns how many."""
        flags = customer_outlier_flags
        return int(conn.execute(sa.delete(flags).where(
            flags.c.store_id == store_id, flags.c.flag_date < pd.Timestamp(newest).date(), sa.not_(flags.c.is_outlier))).rowcount or 0)
