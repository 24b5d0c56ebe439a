"""customer_outlier_flags (ENABLE_OUTLIER_DETECTION): one row per customer, date and method."""

from __future__ import annotations

import sqlalchemy as sa

from quimbi_pipeline.warehouse.connection import Json, metadata

# Outlier flags (ENABLE_OUTLIER_DETECTION): one row per customer, date and method.
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
    sa.Index("ix_customer_outlier_flags_store_date_method", "store_id", "flag_date", "method", "is_outlier"),
    postgresql_partition_by="RANGE (flag_date)",
)


class OutlierStore:
    def _replace_outlier_flags(self, conn: sa.Connection, store_id: str, day, outliers) -> None:
        """In the caller's transaction: the store's flags of the date become `outliers`."""
        self._ensure_date_partition(conn, "customer_outlier_flags", day)
        flags = customer_outlier_flags
        conn.execute(sa.delete(flags).where(flags.c.store_id == store_id, flags.c.flag_date == day))
        if len(outliers):
            self._bulk_load(conn, self.qualified(flags.name), outliers.assign(store_id=store_id)[[c.name for c in flags.columns]])
