"""The drift tables (customer_drift with its axes, customer_drift_anomalies, population_drift), the view of
customer_drift's axes a row each (customer_axis_drift), the record of which snapshot writes each drift date
read (drift_inputs), and their writes and reads."""

from __future__ import annotations

import hashlib
import time

import pandas as pd
import sqlalchemy as sa

from quimbi_pipeline.storage.connection import (
    PG_SCHEMA,
    Json,
    _model_records,
    metadata,
    prefetched,
)

# Drift tables (ENABLE_DRIFT_ANALYSIS). PostgreSQL: one partition per as_of_date, like the snapshots.
customer_drift = sa.Table(
    "customer_drift", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("as_of_date", sa.Date, primary_key=True),
    sa.Column("window_days", sa.Integer, primary_key=True),
    sa.Column("overall_drift", sa.Float, nullable=False),
    sa.Column("drift_velocity", sa.Float, nullable=False),
    sa.Column("predicted_30d_drift", sa.Float, nullable=False),
    sa.Column("churn_risk_trend", sa.Float, nullable=False),
    sa.Column("start_date", sa.Date, nullable=False),
    sa.Column("end_date", sa.Date, nullable=False),
    sa.Column("n_snapshots", sa.Integer, nullable=False),
    sa.Column("axes", sa.Text, nullable=False),  # JSON text: drift.AXES_ENTRY per axis (the view below)
    sa.Column("archetype_journey", Json, nullable=False),
    sa.Column("recommendations", Json, nullable=False),
    sa.Index("ix_customer_drift_store_date_window", "store_id", "as_of_date", "window_days"),
    postgresql_partition_by="RANGE (as_of_date)",
)

# customer_axis_drift is a view: a row per axis of customer_drift.axes ({axis: [drift_score, direction,
# velocity, transitions]}). Six rows of their own per customer and window were 60% of the drift state's bytes.
AXIS_DRIFT_VIEW = "customer_axis_drift"


def axis_drift_view_sql(view: str, table: str, postgres: bool) -> str:
    if postgres:
        item = {"drift_score": "(a.value->>0)::double precision", "direction": "a.value->>1", "velocity": "(a.value->>2)::double precision",
                "n_transitions": "json_array_length(a.value->3)", "transitions": "(a.value->3)::jsonb"}
        source = f"{table} d CROSS JOIN LATERAL json_each(d.axes::json) a"
    else:
        item = {"drift_score": "json_extract(a.value, '$[0]')", "direction": "json_extract(a.value, '$[1]')",
                "velocity": "json_extract(a.value, '$[2]')", "n_transitions": "json_array_length(a.value, '$[3]')",
                "transitions": "json_extract(a.value, '$[3]')"}
        source = f"{table} d, json_each(d.axes) a"
    return (f"CREATE VIEW {view} AS SELECT d.store_id, d.customer_id, d.as_of_date, d.window_days, a.key AS axis, "
            f"{', '.join(f'{sql} AS {name}' for name, sql in item.items())} FROM {source}")


customer_drift_anomalies = sa.Table(
    "customer_drift_anomalies", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("as_of_date", sa.Date, primary_key=True),
    sa.Column("anomaly_type", sa.Text, primary_key=True),
    sa.Column("axis", sa.Text, primary_key=True),
    sa.Column("anomaly_date", sa.Date, primary_key=True),
    sa.Column("severity", sa.Float, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Index("ix_customer_drift_anomalies_store_date_type", "store_id", "as_of_date", "anomaly_type"),
)

population_drift = sa.Table(
    "population_drift", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("as_of_date", sa.Date, primary_key=True),
    sa.Column("axis", sa.Text, primary_key=True),
    sa.Column("reference_date", sa.Date, nullable=False),
    sa.Column("n_reference", sa.Integer, nullable=False),
    sa.Column("n_current", sa.Integer, nullable=False),
    sa.Column("segment_share_shift", sa.Float, nullable=False),
    sa.Column("feature_psi", sa.Float),
    sa.Column("segment_shares", Json, nullable=False),
    sa.Column("feature_psi_by_feature", Json, nullable=False),
)

drift_inputs = sa.Table(
    "drift_inputs", metadata,
    sa.Column("store_id", sa.Text, primary_key=True),
    sa.Column("as_of_date", sa.Date, primary_key=True),
    sa.Column("history_days", sa.Integer, nullable=False),
    sa.Column("signature", sa.Text, nullable=False),  # sha1 of the (snapshot_date, written_at) pairs read
)

DRIFT_TABLES = (customer_drift, customer_drift_anomalies, population_drift)


class DriftStore:
    def _finish_drift_schema(self, conn: sa.Connection) -> None:
        """The customer_axis_drift view (create_tables; an older table of that name is migrate.py's)."""
        schema = PG_SCHEMA if self.is_postgres else None
        if AXIS_DRIFT_VIEW not in sa.inspect(conn).get_view_names(schema=schema):
            conn.execute(sa.text(axis_drift_view_sql(self.qualified(AXIS_DRIFT_VIEW), self.qualified("customer_drift"), self.is_postgres)))

    def write_drift_partition(self, store_id: str, as_of, chunks, population: pd.DataFrame, analyze: bool = True) -> tuple[dict[str, int], float]:
        """Replace store S's drift rows of as_of D in one transaction.

        `chunks` yields (customer_drift frame, customer_axis_drift row count, customer_drift_anomalies frame), one
        per slice of customers, so a store of millions is never held in memory at once. The axis rows are stored
        in customer_drift.axes already: they are counted, not written. On PostgreSQL the
        slices are computed and serialized in a background thread while the server ingests the previous
        slice's COPY (two cores: the client's work and the server's overlap). Returns (rows written per
        table, seconds spent waiting on the loads and the statistics update). `analyze=False`: the date's partitions
        are left for the caller's analyze_date_partitions (a run of several stores).
        """
        day = pd.Timestamp(as_of).date()
        tables = (customer_drift, customer_drift_anomalies)
        written = {t.name: 0 for t in (*tables, population_drift)} | {AXIS_DRIFT_VIEW: 0}
        columns = {t.name: [c.name for c in t.columns] for t in tables}

        def serialized():
            for customers, n_axis_rows, anomalies in chunks:
                written[AXIS_DRIFT_VIEW] += n_axis_rows
                yield [(table, len(frame), self._serialize(frame.assign(store_id=store_id)[columns[table.name]]) if len(frame) else None)
                       for table, frame in zip(tables, (customers, anomalies))]

        copy_seconds = 0.0
        self.prepare_date_partitions([table.name for table in tables], day)
        with self.engine.begin() as conn:
            if self.is_postgres:
                # Two writers of one store's date (a sharded store's last shards finishing together) wait for each other
                # here: the later one's delete then sees the earlier one's rows (SQLite writes one at a time anyway).
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"drift|{store_id}|{day}"})
            for table in tables:
                self._ensure_date_partition(conn, table.name, day)
                conn.execute(sa.delete(table).where(table.c.store_id == store_id, table.c.as_of_date == day))
            for loads in (prefetched(serialized()) if self.is_postgres else serialized()):
                started = time.perf_counter()
                for table, n, payload in loads:
                    if n:
                        self._load_serialized(conn, self.qualified(table.name), columns[table.name], payload)
                    written[table.name] += n
                copy_seconds += time.perf_counter() - started
            conn.execute(sa.delete(population_drift).where(population_drift.c.store_id == store_id, population_drift.c.as_of_date == day))
            if len(population):
                records = population.assign(store_id=store_id).to_dict(orient="records")
                for r in records:
                    for key in ("as_of_date", "reference_date"):
                        r[key] = pd.Timestamp(r[key]).date()
                conn.execute(sa.insert(population_drift), _model_records(pd.DataFrame(records)))
            written[population_drift.name] = len(population)
        started = time.perf_counter()
        for table in tables if analyze else ():
            self.analyze_date_partition(table.name, day, written=written[table.name])
        copy_seconds += time.perf_counter() - started
        return written, copy_seconds

    # ---- dates that arrive out of order ---------------------------------------------------------
    def snapshot_signature(self, store_id: str, start, end) -> str:
        """A digest of when each of the store's snapshot dates in [start, end] was written."""

        rows = self.read_sql(f"SELECT snapshot_date, written_at FROM {self.qualified('snapshot_writes')} "
                             "WHERE store_id = :s AND snapshot_date BETWEEN :a AND :b ORDER BY snapshot_date",
                             {"s": store_id, "a": pd.Timestamp(start).date(), "b": pd.Timestamp(end).date()})
        text = ";".join(f"{pd.Timestamp(d):%Y-%m-%d}@{w}" for d, w in zip(rows["snapshot_date"], rows["written_at"]))
        return hashlib.sha1(text.encode()).hexdigest()

    def record_drift_inputs(self, store_id: str, as_of, history_days: int) -> None:
        day = pd.Timestamp(as_of)
        signature = self.snapshot_signature(store_id, day - pd.Timedelta(days=history_days), day)
        with self.engine.begin() as conn:
            conn.execute(sa.delete(drift_inputs).where(drift_inputs.c.store_id == store_id, drift_inputs.c.as_of_date == day.date()))
            conn.execute(sa.insert(drift_inputs), [{"store_id": store_id, "as_of_date": day.date(), "history_days": history_days, "signature": signature}])

    def stale_drift_dates(self, store_id: str, after) -> list[pd.Timestamp]:
        """Later drift dates of the store whose snapshot inputs changed since their drift was computed (an earlier
        date was backfilled or re-run after them), oldest first."""
        rows = self.read_sql(f"SELECT as_of_date, history_days, signature FROM {self.qualified('drift_inputs')} "
                             "WHERE store_id = :s AND as_of_date > :d ORDER BY as_of_date",
                             {"s": store_id, "d": pd.Timestamp(after).date()})
        stale = []
        for day, days, signature in zip(pd.to_datetime(rows["as_of_date"]), rows["history_days"], rows["signature"]):
            if day - pd.Timedelta(days=int(days)) <= pd.Timestamp(after) and self.snapshot_signature(store_id, day - pd.Timedelta(days=int(days)), day) != signature:
                stale.append(day)
        return stale

    def customer_drift(self, store_id: str, customer_id: str, window_days: int = 28, as_of=None) -> pd.DataFrame:
        """One customer's drift row for a window (newest as_of unless given) and its axis rows (one query each)."""
        params: dict = {"s": store_id, "c": customer_id, "w": window_days}
        date_clause = "as_of_date = :d" if as_of is not None else (
            f"as_of_date = (SELECT max(as_of_date) FROM {self.qualified('customer_drift')} WHERE store_id = :s AND customer_id = :c AND window_days = :w)")
        if as_of is not None:
            params["d"] = pd.Timestamp(as_of).date()
        return self.read_sql(
            f"SELECT d.*, a.axis, a.drift_score, a.direction, a.velocity, a.n_transitions FROM {self.qualified('customer_drift')} d "
            f"JOIN {self.qualified(AXIS_DRIFT_VIEW)} a ON a.store_id = d.store_id AND a.customer_id = d.customer_id "
            "AND a.as_of_date = d.as_of_date AND a.window_days = d.window_days "
            f"WHERE d.store_id = :s AND d.customer_id = :c AND d.window_days = :w AND d.{date_clause} ORDER BY a.axis", params)

    def drift_violations(self, store_id: str, as_of) -> int:
        """customer_drift / customer_axis_drift rows of (store, D) with fewer than 2 snapshots or a score outside [0, 1]."""
        params = {"s": store_id, "d": pd.Timestamp(as_of).date()}
        with self.engine.connect() as conn:
            bad = conn.execute(sa.text(
                f"SELECT count(*) FROM {self.qualified('customer_drift')} WHERE store_id = :s AND as_of_date = :d "
                "AND (n_snapshots < 2 OR overall_drift < 0 OR overall_drift > 1 OR predicted_30d_drift < 0 OR predicted_30d_drift > 1)"), params).scalar_one()
            bad += conn.execute(sa.text(
                f"SELECT count(*) FROM {self.qualified(AXIS_DRIFT_VIEW)} WHERE store_id = :s AND as_of_date = :d "
                "AND (drift_score < 0 OR drift_score > 1)"), params).scalar_one()
        return int(bad)
