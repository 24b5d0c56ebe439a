"""store_shards: the shards of a sharded store's dates that are written (run/shards.py), and what their writes share.

Each shard's write records its row in its own transaction: the shard count, its customer range, the digest of the
store state it was scored against, its customers and its outlier counts. A date of a store is whole when its rows of
one shard count tile the customer ids (each range starts where the previous ends) under one state digest; then the
store's outlier_rates of the date are the shards' sums (written by whichever shard sees it whole first, after its
commit), and the store's drift can run. Pruned with the snapshots' dates (prune.py).
"""

from __future__ import annotations

import json

import pandas as pd
import sqlalchemy as sa

from quimbi_pipeline.storage.connection import metadata
from quimbi_pipeline.storage.outlier_tables import (
    outlier_counts,
    outlier_rates,
    rate_rows,
)

store_shards = sa.Table(
    "store_shards", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("as_of_date", sa.Date, primary_key=True),
    sa.Column("shard", sa.Integer, primary_key=True),  # from 0
    sa.Column("shards", sa.Integer, nullable=False),
    sa.Column("lo", sa.Text),  # the shard's customer ids: [lo, hi), NULL = unbounded
    sa.Column("hi", sa.Text),
    sa.Column("state_digest", sa.Text, nullable=False),
    sa.Column("customers", sa.Integer, nullable=False),
    sa.Column("outlier_counts", sa.Text, nullable=False),  # JSON {method: [customers, flagged]}
    sa.Column("written_at", sa.Text, nullable=False),
)


class ShardStore:
    def _record_shard(self, conn: sa.Connection, store_id: str, day, shard, state_digest: str, customers: int,
                      outliers: pd.DataFrame | None) -> None:
        """In the shard's write transaction: its row (and no row of another shard count for the date)."""
        t = store_shards
        conn.execute(sa.delete(t).where(t.c.store_id == store_id, t.c.as_of_date == day,
                                        sa.or_(t.c.shard == shard.index, t.c.shards != shard.shards)))
        conn.execute(sa.insert(t), [{"store_id": store_id, "as_of_date": day, "shard": shard.index, "shards": shard.shards,
                                     "lo": shard.lo, "hi": shard.hi, "state_digest": state_digest, "customers": int(customers),
                                     "outlier_counts": json.dumps(outlier_counts(outliers), sort_keys=True),
                                     "written_at": pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%f")}])

    def store_shard_rows(self, store_id: str, day) -> pd.DataFrame:
        """The store's shard rows of a date, by shard."""
        return self.read_sql(f"SELECT * FROM {self.qualified('store_shards')} WHERE store_id = :s AND as_of_date = :d ORDER BY shard",
                             {"s": store_id, "d": pd.Timestamp(day).date()})

    def shard_dates_written_since(self, written_after: str | None) -> pd.DataFrame:
        """(store_id, as_of_date, shards, newest): each store's date and shard count with a shard written after
        `written_after` (written_at text; None: any), `newest` its last shard's written_at."""
        sql = (f"SELECT store_id, as_of_date, shards, max(written_at) AS newest FROM {self.qualified('store_shards')} "
               "GROUP BY store_id, as_of_date, shards")
        frame = self.read_sql(sql + (" HAVING max(written_at) > :after" if written_after else "") + " ORDER BY 4",
                              {"after": written_after} if written_after else {})
        return frame

    def shards_missing(self, store_id: str, day, shards: int) -> str | None:
        """Why the store's date is not whole in `shards` shards (None: it is)."""
        rows = self.store_shard_rows(store_id, day)
        rows = rows[rows["shards"] == shards]
        missing = sorted(set(range(shards)) - set(rows["shard"].astype(int)))
        if missing:
            return f"shard(s) {', '.join(str(k + 1) for k in missing)} of {shards} not written"
        if rows["state_digest"].nunique() > 1:
            return f"its {shards} shards were scored against different store states (the orders changed between their runs): run them again"
        lo, hi = ([None if pd.isna(v) else str(v) for v in rows[column]] for column in ("lo", "hi"))
        if lo[0] is not None or hi[-1] is not None or any(hi[k] != lo[k + 1] for k in range(shards - 1)):
            return f"its {shards} shards' customer ranges do not meet (written from different orders): run them again"
        return None

    def write_shard_outlier_rates(self, store_id: str, day, shards: int) -> bool:
        """The store's outlier_rates of the date as its shards' sums, once the date is whole; False when it is not."""
        if self.shards_missing(store_id, day, shards) is not None:
            return False
        totals: dict[str, list[int]] = {}
        for text in self.store_shard_rows(store_id, day)["outlier_counts"]:
            for method, (n, k) in json.loads(text).items():
                total = totals.setdefault(method, [0, 0])
                total[0] += n
                total[1] += k
        with self.engine.begin() as conn:
            self.insert_new(conn, outlier_rates, rate_rows(store_id, pd.Timestamp(day).date(), totals), update=["customers", "flagged"])
        return True
