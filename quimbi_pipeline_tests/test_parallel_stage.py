"""A large write's stage COPYed by two PostgreSQL sessions (storage/parallel_stage.py): the same rows as one session,
nothing left behind, a failure of either half fails the write and keeps the previous rows."""

import io
import time

import pandas as pd
import pytest
import sqlalchemy as sa

from quimbi_pipeline.cli import run_dates
from quimbi_pipeline.storage import Warehouse, parallel_stage
from quimbi_pipeline.storage.connection import Connection

ORDERS = "demo:customers=300,stores=2,seed=5"
pytestmark = pytest.mark.postgres


def run(url, day) -> int:
    return run_dates(pd.Timestamp(day), pd.Timestamp(day), orders=ORDERS, warehouse=url, stores=None, out=io.StringIO())


def tables(wh: Warehouse) -> dict[str, pd.DataFrame]:
    return {name: wh.read_sql(f"SELECT * FROM {wh.qualified(name)} ORDER BY {order}").astype(str) for name, order in (
        ("customer_profiles", "store_id, customer_id"),
        ("customer_profile_snapshots", "store_id, customer_id, snapshot_date, snapshot_type"),
    )}


def side_tables(wh: Warehouse) -> list[str]:
    return wh.read_sql("SELECT relname FROM pg_class WHERE relname LIKE 'stage\\_half\\_%'")["relname"].tolist()


def test_a_stage_copied_by_two_sessions_writes_what_one_session_writes(pg_url, monkeypatch):
    monkeypatch.setenv("ENABLE_TEMPORAL_SNAPSHOTS", "1")
    assert run(pg_url, "2026-01-05") == 0  # each store's ~150 rows: one session
    wh = Warehouse(pg_url)
    one_session = tables(wh)
    calls = []
    real = parallel_stage.stage_in_two
    monkeypatch.setattr(parallel_stage, "PARALLEL_STAGE_ROWS", 10)
    monkeypatch.setattr(parallel_stage, "stage_in_two", lambda *a, **k: calls.append(len(a[4])) or real(*a, **k))
    assert run(pg_url, "2026-01-05") == 0  # the same date again: rows replaced, now staged by two sessions
    assert len(calls) == 2 and min(calls) > 10  # both stores took the two-session path
    for name, frame in tables(wh).items():
        pd.testing.assert_frame_equal(frame, one_session[name], obj=name)
    assert side_tables(wh) == []
    wh.dispose()


def test_a_failed_second_half_fails_the_store_keeps_its_rows_and_leaves_no_table(pg_url, monkeypatch):
    monkeypatch.setenv("ENABLE_TEMPORAL_SNAPSHOTS", "1")
    assert run(pg_url, "2026-01-05") == 0
    wh = Warehouse(pg_url)
    before = tables(wh)
    monkeypatch.setattr(parallel_stage, "PARALLEL_STAGE_ROWS", 10)
    real = Connection._bulk_load

    def failing(self, conn, target, frame):
        if parallel_stage.SIDE_PREFIX in target:
            raise RuntimeError("the second session's COPY failed")
        return real(self, conn, target, frame)

    monkeypatch.setattr(Connection, "_bulk_load", failing)
    assert run(pg_url, "2026-01-05") != 0
    for name, frame in tables(wh).items():
        pd.testing.assert_frame_equal(frame, before[name], obj=name)
    assert side_tables(wh) == []
    wh.dispose()


def test_side_tables_an_hour_old_are_dropped_and_younger_ones_kept(pg_url):
    wh = Warehouse(pg_url)
    now = time.time()
    old, young = f"{parallel_stage.SIDE_PREFIX}{int(now) - 3700}_a", f"{parallel_stage.SIDE_PREFIX}{int(now) - 60}_b"
    with wh.engine.begin() as conn:
        for name in (old, young):
            conn.execute(sa.text(f"CREATE UNLOGGED TABLE platform.{name} (x int)"))
    assert parallel_stage.drop_stale_side_tables(wh.engine, "platform", now) == [old]
    assert side_tables(wh) == [young]
    wh.dispose()
