"""Snapshots: calendar, idempotent writes, shadow mode, retention sensor and prune job, schedule, history."""

import io
import logging
import threading

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from quimbi_pipeline.cli import run_dates
from quimbi_pipeline.defs.profiles.schedules import daily_pipeline_schedule
from quimbi_pipeline.defs.resources import OrdersResource, WarehouseResource
from quimbi_pipeline.defs.snapshots.jobs import (
    prune_snapshots_job,
    snapshot_retention_sensor,
)
from quimbi_pipeline.history.snapshots import snapshot_types_for
from quimbi_pipeline.settings import RetentionPolicy
from quimbi_pipeline.storage import Warehouse, partition_rewrites
from quimbi_pipeline.storage.partition_rewrites import pending_rewrites

ORDERS = "demo:customers=300,stores=2,seed=5"


def run(warehouse_url, start, end, monkeypatch, snapshots=True):
    """`quimbi run` over the dates, a run per date: the rows the daily schedule leaves before any prune (a run of several
    dates leaves out the rows the policy expires on arrival: test_backfill.py)."""
    monkeypatch.setenv("ENABLE_TEMPORAL_SNAPSHOTS", "1" if snapshots else "0")
    monkeypatch.setenv("QUIMBI_BACKFILL_DATES_PER_RUN", "1")
    assert run_dates(pd.Timestamp(start), pd.Timestamp(end), orders=ORDERS, warehouse=warehouse_url, stores=None, out=io.StringIO()) == 0


def snapshot_table(url) -> pd.DataFrame:
    wh = Warehouse(url)
    frame = wh.read_sql(f"SELECT * FROM {wh.qualified('customer_profile_snapshots')} ORDER BY store_id, customer_id, snapshot_date, snapshot_type")
    wh.dispose()
    return frame


def test_calendar():
    assert snapshot_types_for("2026-01-01") == ["daily", "monthly", "quarterly", "yearly"]  # a Thursday
    assert snapshot_types_for("2026-01-05") == ["daily", "weekly"]  # a Monday
    assert snapshot_types_for("2026-06-01") == ["daily", "weekly", "monthly"]  # a Monday and a 1st
    assert snapshot_types_for("2026-04-01") == ["daily", "monthly", "quarterly"]
    assert snapshot_types_for("2026-01-06") == ["daily"]


def test_drift_reads_of_each_date_the_finest_type_the_policy_keeps_at_its_own_date():
    """history.snapshots.type_kept_at: what drift at D reads of a snapshot date, from the policy alone (pruning may
    have cleared more or less): the finest kept type the date's rows still hold."""
    from quimbi_pipeline.history.snapshots import TYPE_BITS, type_kept_at, type_mask

    policy = RetentionPolicy()  # daily 7, weekly 60, monthly 365, profile_change 60
    monday = "2026-10-26"
    every = type_mask(["daily", "weekly", "profile_change"])
    # D's run holds what the prune kept for D - 1: a daily 7 days old is still there (the prune after D removes it).
    assert type_kept_at(monday, "2026-11-02", policy, every) == "daily"
    assert type_kept_at(monday, "2026-11-03", policy, every) == "weekly"  # 8 days: the daily has expired, the weekly not
    assert type_kept_at(monday, "2026-11-03", policy, TYPE_BITS["daily"]) is None  # a weekly the store no longer holds
    assert type_kept_at("2026-10-27", "2026-11-04", policy, every) == "profile_change"  # a Tuesday: its changed customers only
    assert type_kept_at("2026-10-27", "2026-12-27", policy, every) is None  # 61 days
    assert type_kept_at("2026-10-01", "2027-10-01", policy, type_mask(["monthly"])) == "monthly"  # 365 days


def test_a_snapshot_date_is_expired_on_arrival_when_the_policy_expires_every_type_it_has():
    """history.snapshots.expired_on_arrival: what a backfill range writes as blocks alone (counted from its last date)."""
    from quimbi_pipeline.history.snapshots import expired_on_arrival

    policy, end = RetentionPolicy(), "2026-10-31"  # daily 7, weekly 60, monthly 365
    assert expired_on_arrival("2026-10-24", end, policy)  # a Saturday 7 days back: the 7 newest dates are 10-25..31
    assert not expired_on_arrival("2026-10-25", end, policy)
    assert not expired_on_arrival("2026-10-19", end, policy)  # a Monday: its weekly type is kept
    assert expired_on_arrival("2026-08-31", end, policy)  # a Monday 61 days back
    assert not expired_on_arrival("2026-09-01", end, policy)  # a 1st: monthly
    assert not expired_on_arrival("2026-10-20", end, RetentionPolicy(daily=30))


@pytest.mark.heavy
def test_range_gives_the_calendar_and_a_rerun_changes_no_row(warehouse_url, monkeypatch):
    run(warehouse_url, "2025-12-29", "2026-01-06", monkeypatch)
    first = snapshot_table(warehouse_url)
    dates = pd.to_datetime(first["snapshot_date"])
    by_type = {t: set(dates[first["snapshot_type"] == t].dt.strftime("%Y-%m-%d")) for t in first["snapshot_type"].unique()}
    assert by_type["daily"] == {f"{d:%Y-%m-%d}" for d in pd.date_range("2025-12-29", "2026-01-06")}
    assert by_type["weekly"] == {"2025-12-29", "2026-01-05"}  # Mondays only
    assert by_type["monthly"] == by_type["quarterly"] == by_type["yearly"] == {"2026-01-01"}
    # Every daily snapshot is the profile computed that day: counts equal the active customers of each date.
    profiles_per_date = first[first.snapshot_type == "daily"].groupby("snapshot_date").size()
    assert (profiles_per_date > 0).all()
    run(warehouse_url, "2025-12-29", "2026-01-06", monkeypatch)
    pd.testing.assert_frame_equal(first, snapshot_table(warehouse_url))


def test_flag_off_writes_no_snapshot_and_the_same_profiles(tmp_path, monkeypatch):
    on, off = f"sqlite:///{tmp_path / 'on.sqlite'}", f"sqlite:///{tmp_path / 'off.sqlite'}"
    run(on, "2026-01-04", "2026-01-05", monkeypatch, snapshots=True)
    run(off, "2026-01-04", "2026-01-05", monkeypatch, snapshots=False)
    assert snapshot_table(off).empty and not snapshot_table(on).empty
    pd.testing.assert_frame_equal(Warehouse(on).profiles(), Warehouse(off).profiles())


def test_retention_sensor_requests_one_prune_and_prune_removes_exactly_the_expired(sqlite_url, monkeypatch):
    monkeypatch.setenv("QUIMBI_RETENTION_DAILY_DAYS", "3")
    run(sqlite_url, "2025-12-29", "2026-01-06", monkeypatch)
    resources = {"warehouse": WarehouseResource(url=sqlite_url)}
    before = snapshot_table(sqlite_url)
    policy = RetentionPolicy.from_env()
    assert policy.daily == 3

    request = snapshot_retention_sensor(dg.build_sensor_context(resources=resources))
    assert isinstance(request, dg.RunRequest) and request.run_key.startswith("prune:")
    # Same state, same run key: the sensor machinery will not launch it twice.
    assert snapshot_retention_sensor(dg.build_sensor_context(resources=resources)).run_key == request.run_key

    result = prune_snapshots_job.execute_in_process(resources=resources, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    after = snapshot_table(sqlite_url)
    dates = pd.to_datetime(before["snapshot_date"])
    newest = dates.groupby(before["store_id"]).transform("max")
    expired = (before["snapshot_type"] == "daily") & (dates < newest - pd.Timedelta(days=2))
    expected = before.loc[~expired].reset_index(drop=True)
    pd.testing.assert_frame_equal(expected, after)
    assert set(pd.to_datetime(after.loc[after.snapshot_type == "daily", "snapshot_date"]).dt.strftime("%Y-%m-%d")) == {"2026-01-04", "2026-01-05", "2026-01-06"}
    output = next(e for e in result.all_events if e.is_successful_output)
    assert output.event_specific_data.metadata["deleted"].value == int(expired.sum())
    assert output.event_specific_data.metadata["deleted/customer_profile_snapshots/weekly"].value == 0
    skip = snapshot_retention_sensor(dg.build_sensor_context(resources=resources))
    assert isinstance(skip, dg.SkipReason)


def test_history_query_and_view(warehouse_url, monkeypatch):
    run(warehouse_url, "2025-12-29", "2026-01-06", monkeypatch)
    wh = Warehouse(warehouse_url)
    customer = snapshot_table(warehouse_url).iloc[0]
    history = wh.customer_history(customer.store_id, customer.customer_id, days=30)
    assert list(pd.to_datetime(history["snapshot_date"]).dt.strftime("%Y-%m-%d")) == [f"{d:%Y-%m-%d}" for d in pd.date_range("2025-12-29", "2026-01-06")]
    assert set(history["snapshot_type"]) == {"daily"}  # one row per date: the finest cadence
    view = wh.read_sql(f"SELECT snapshot_date, snapshot_type FROM {wh.qualified('customer_snapshot_history')} WHERE store_id = :s "
                       "AND customer_id = :c ORDER BY snapshot_date", {"s": customer.store_id, "c": customer.customer_id})
    pd.testing.assert_frame_equal(view, history[["snapshot_date", "snapshot_type"]])  # the view's rows
    weekly = wh.customer_history(customer.store_id, customer.customer_id, days=30, snapshot_type="weekly")
    assert list(pd.to_datetime(weekly["snapshot_date"]).dt.strftime("%Y-%m-%d")) == ["2025-12-29", "2026-01-05"]
    short = wh.customer_history(customer.store_id, customer.customer_id, days=2, as_of="2026-01-03")
    assert list(pd.to_datetime(short["snapshot_date"]).dt.strftime("%Y-%m-%d")) == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert wh.customer_history(customer.store_id, "nobody", days=30).empty

    def dates(days: int) -> list[str]:
        frame = wh.customer_history(customer.store_id, customer.customer_id, days=days)
        return list(pd.to_datetime(frame["snapshot_date"]).dt.strftime("%Y-%m-%d"))

    assert dates(2) == ["2026-01-04", "2026-01-05", "2026-01-06"]  # both ends of the window included
    # Without a snapshot on their profile's date, the window ends at the customer's newest snapshot.
    with wh.engine.begin() as conn:
        conn.execute(sa.text(f"DELETE FROM {wh.qualified('profile_snapshots')} WHERE store_id = :s AND customer_id = :c AND snapshot_date = :d"),
                     {"s": customer.store_id, "c": customer.customer_id, "d": pd.Timestamp("2026-01-06").date()})
    assert dates(2) == ["2026-01-03", "2026-01-04", "2026-01-05"]
    wh.dispose()


def test_schedule_yields_one_run_per_store_batch_for_the_previous_day(sqlite_url, monkeypatch):
    monkeypatch.setenv("QUIMBI_STORE_BATCH_SIZE", "2")
    context = dg.build_schedule_context(
        scheduled_execution_time=pd.Timestamp("2026-01-06 03:00", tz="UTC").to_pydatetime(),
        resources={"orders_source": OrdersResource(uri="demo:customers=100,stores=5"), "warehouse": WarehouseResource(url=sqlite_url)},
    )
    requests = list(daily_pipeline_schedule(context))
    assert [r.partition_key for r in requests] == ["2026-01-05"] * 3
    assert [r.run_config["ops"]["daily_profiles"]["config"]["stores"] for r in requests] == [
        ["store_a", "store_b"], ["store_c", "store_d"], ["store_e"]]
    assert len({r.run_key for r in requests}) == 3


def test_membership_shift_is_the_design_distance():
    import json
    import math

    from quimbi_pipeline.model.memberships import membership_shift, parse_memberships

    before = parse_memberships(pd.Series(['{"f": {"rare": 1.0, "regular": 0.0}, "v": {"low": 0.5, "high": 0.5}}'], index=["c1"]))
    after = parse_memberships(pd.Series([json.dumps({"f": {"rare": 0.0, "frequent": 1.0}, "v": {"low": 0.5, "high": 0.5}})], index=["c1"]))
    shift = membership_shift(before, after)
    # f: segments {rare, regular, frequent}: (1,0,0) -> (0,0,1): sqrt(2)/sqrt(2) = 1; v unchanged.
    assert shift.loc["c1", "f"] == pytest.approx(1.0) and shift.loc["c1", "v"] == 0.0
    half = parse_memberships(pd.Series(['{"f": {"rare": 0.5, "frequent": 0.5}, "v": {"low": 0.5, "high": 0.5}}'], index=["c1"]))
    assert membership_shift(before, half).loc["c1", "f"] == pytest.approx(math.sqrt(0.25 + 0.25) / math.sqrt(2))


def test_snapshot_on_profile_change(sqlite_url, monkeypatch):
    import json
    import math

    monkeypatch.setenv("QUIMBI_SNAPSHOT_ON_PROFILE_CHANGE", "1")
    monkeypatch.setenv("QUIMBI_PROFILE_CHANGE_THRESHOLD", "0.02")
    run(sqlite_url, "2026-01-05", "2026-01-06", monkeypatch)
    table = snapshot_table(sqlite_url)
    changes = table[table.snapshot_type == "profile_change"]
    assert set(pd.to_datetime(changes["snapshot_date"]).dt.strftime("%Y-%m-%d")) == {"2026-01-06"}  # day 1 has no earlier snapshot
    daily = table[table.snapshot_type == "daily"].set_index(["store_id", "customer_id", "snapshot_date"])["fuzzy_memberships"]
    # An independent per-customer computation of the same rule on the stored JSON.
    expected = set()
    for (store, customer, date), now_json in daily.items():
        if date != "2026-01-06" or (store, customer, "2026-01-05") not in daily.index:
            continue
        before, now = json.loads(daily[(store, customer, "2026-01-05")]), json.loads(now_json)
        shifts = []
        for axis in now:
            keys = set(now[axis]) | set(before.get(axis, {}))
            shifts.append(math.sqrt(sum((now[axis].get(k, 0) - before.get(axis, {}).get(k, 0)) ** 2 for k in keys)) / math.sqrt(2))
        if max(shifts) > 0.02:
            expected.add((store, customer))
    assert expected and set(zip(changes["store_id"], changes["customer_id"])) == expected


@pytest.mark.slow
def test_issue_range_2026_01_01_to_02_10(sqlite_url, monkeypatch):
    """The acceptance range: daily every date, weekly exactly on Mondays, monthly on the 1st; a re-run changes nothing."""
    run(sqlite_url, "2026-01-01", "2026-02-10", monkeypatch)
    first = snapshot_table(sqlite_url)
    dates = pd.to_datetime(first["snapshot_date"])
    days = pd.date_range("2026-01-01", "2026-02-10")
    assert set(dates[first.snapshot_type == "daily"]) == set(days)
    assert set(dates[first.snapshot_type == "weekly"]) == {d for d in days if d.day_of_week == 0}
    assert set(dates[first.snapshot_type == "monthly"]) == {pd.Timestamp("2026-01-01"), pd.Timestamp("2026-02-01")}
    run(sqlite_url, "2026-01-01", "2026-02-10", monkeypatch)
    pd.testing.assert_frame_equal(first, snapshot_table(sqlite_url))


@pytest.mark.postgres
def test_postgres_snapshots_are_partitioned_by_date_and_prune_drops_expired_dates(pg_url, monkeypatch):
    monkeypatch.setenv("QUIMBI_RETENTION_DAILY_DAYS", "2")
    run(pg_url, "2026-01-04", "2026-01-07", monkeypatch)  # Sunday .. Wednesday, Monday has a weekly snapshot
    wh = Warehouse(pg_url)
    assert wh.snapshots_partitioned
    assert wh.snapshot_partitions() == [f"profile_snapshots_p2026010{d}" for d in (4, 5, 6, 7)]
    before = snapshot_table(pg_url)
    counts = wh.prune_snapshots(RetentionPolicy.from_env())
    after = snapshot_table(pg_url)
    # Jan 4 held only daily rows: dropped whole. Jan 5 keeps its weekly rows: its daily rows are deleted.
    assert wh.snapshot_partitions() == [f"profile_snapshots_p2026010{d}" for d in (5, 6, 7)]
    dates = pd.to_datetime(before["snapshot_date"])
    expired = (before["snapshot_type"] == "daily") & (dates < pd.Timestamp("2026-01-06"))
    pd.testing.assert_frame_equal(before.loc[~expired].reset_index(drop=True), after)
    assert int(counts["deleted"].sum()) == int(expired.sum())
    wh.dispose()


def _snapshot_partitions(wh: Warehouse) -> pd.DataFrame:
    """Each snapshot partition's file, bytes and rows."""
    return wh.read_sql("SELECT c.relname, c.relfilenode, pg_relation_size(c.oid) AS bytes, "
                       "(SELECT count(*) FROM platform.profile_snapshots s WHERE s.snapshot_date = to_date(right(c.relname, 8), 'YYYYMMDD')) AS n "
                       "FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace "
                       "WHERE ns.nspname = 'platform' AND c.relname LIKE 'profile_snapshots_p%' AND c.relkind = 'r'").set_index("relname")


def _bytes_per_row(wh: Warehouse) -> pd.Series:
    partitions = _snapshot_partitions(wh)
    return partitions["bytes"] / partitions["n"]


CLEARED = ["profile_snapshots_p20251229", "profile_snapshots_p20260101"]  # lose their daily bit at daily=2


def _open_snapshot(wh: Warehouse) -> tuple[sa.Connection, sa.Transaction]:
    """A session whose snapshot predates what comes next (as an analyst's long REPEATABLE READ transaction's would).
    It reads another table: one that read the snapshots would hold locks the prune's DROP and VACUUM wait for."""
    reader = wh.engine.connect().execution_options(isolation_level="REPEATABLE READ")
    tx = reader.begin()
    reader.execute(sa.text("SELECT count(*) FROM platform.customer_profiles")).scalar_one()
    return reader, tx


@pytest.mark.postgres
def test_a_postgresql_partition_whose_types_expire_is_rewritten_not_left_twice_its_size(pg_url, monkeypatch, caplog):
    """The rewrite waits for sessions whose snapshot predates the prune; one held past the wait leaves the partitions
    pending, and the next prune rewrites them."""
    run(pg_url, "2025-12-29", "2026-01-06", monkeypatch)
    wh = Warehouse(pg_url)
    before = _snapshot_partitions(wh)
    customer = wh.read_sql("SELECT min(customer_id) AS c FROM platform.profile_snapshots WHERE store_id = 'store_a' "
                           "AND snapshot_date = DATE '2025-12-29'")["c"].iloc[0]
    history = wh.customer_history("store_a", customer, days=30)
    cleared_daily = ("SELECT count(*) AS n FROM platform.profile_snapshots WHERE snapshot_types & 1 <> 0 "
                     "AND snapshot_date IN (DATE '2025-12-29', DATE '2026-01-01')")
    rows_seen = int(wh.read_sql(cleared_daily)["n"].iloc[0])

    reader, tx = _open_snapshot(wh)
    held_by = reader.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    wh.prune_snapshots(RetentionPolicy(daily=2), rewrite=False)  # 12-29 and 01-01 lose their daily bit
    with wh.engine.connect() as conn:  # recorded with the prune's commit: a prune killed here leaves the record
        assert pending_rewrites(conn) == CLEARED
    with caplog.at_level(logging.WARNING, logger="quimbi_pipeline.storage.partition_rewrites"):
        assert wh.rewrite_snapshot_partitions(wait_seconds=0.5) == CLEARED
    assert f"pid {held_by} " in caplog.text and all(p in caplog.text for p in CLEARED)
    with wh.engine.connect() as conn:
        assert pending_rewrites(conn) == CLEARED
    per_row = _bytes_per_row(wh)
    assert per_row[CLEARED].min() >= 1.6 * per_row["profile_snapshots_p20260106"]  # the held versions kept their space
    # The held snapshot still reads the rows it could see there (a dropped partition is gone for everyone).
    assert reader.execute(sa.text(cleared_daily)).scalar_one() == rows_seen > 0
    assert int(wh.read_sql(cleared_daily)["n"].iloc[0]) == 0
    tx.rollback()
    reader.close()

    # A writer holding one partition past the lock timeout: that one stays recorded, the other is rewritten.
    with monkeypatch.context() as patched, wh.engine.connect() as writer:
        patched.setattr(partition_rewrites, "LOCK_TIMEOUT", "300ms")
        writer.execute(sa.text(f"LOCK TABLE platform.{CLEARED[0]} IN ROW EXCLUSIVE MODE"))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="quimbi_pipeline.storage.partition_rewrites"):
            assert wh.rewrite_snapshot_partitions() == [CLEARED[0]]
        assert f"snapshot partition {CLEARED[0]} not rewritten: " in caplog.text and "lock timeout" in caplog.text
        writer.rollback()
    per_row = _bytes_per_row(wh)
    assert per_row[CLEARED[1]] <= 1.2 * per_row["profile_snapshots_p20260106"] <= 0.8 * per_row[CLEARED[0]]

    # The next prune (nothing new expires) rewrites the pending partitions, after waiting for a session whose snapshot
    # predates it and which lets go a second into the wait (rewritten at once, the dead versions would all be kept).
    reader, tx = _open_snapshot(wh)
    release = threading.Timer(1.0, lambda: (tx.rollback(), reader.close()))
    release.start()
    counts = wh.prune_snapshots(RetentionPolicy(daily=2))
    release.join()
    assert int(counts["deleted"].sum()) == 0
    with wh.engine.connect() as conn:
        assert pending_rewrites(conn) == []
    after = _snapshot_partitions(wh)
    assert set(after.index) == set(CLEARED) | {"profile_snapshots_p20260105", "profile_snapshots_p20260106"}
    assert (after.loc[CLEARED, "relfilenode"] != before.loc[CLEARED, "relfilenode"]).all()  # rewritten
    assert (after.loc[CLEARED, "n"] == before.loc[CLEARED, "n"]).all()  # the same rows
    per_row = after["bytes"] / after["n"]
    assert per_row[CLEARED].max() <= 1.2 * per_row["profile_snapshots_p20260106"]  # was 2x: the dead versions kept their space
    kept = wh.customer_history("store_a", customer, days=30)
    assert len(history) == 9 and kept["snapshot_date"].tolist() == [d for d in history["snapshot_date"]
                                                                     if str(d) in ("2025-12-29", "2026-01-01", "2026-01-05", "2026-01-06")]
    wh.dispose()
