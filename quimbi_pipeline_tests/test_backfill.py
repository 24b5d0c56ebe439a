"""A backfill launched the way the UI launches it gives exactly the rows the daily schedule gives.

The backfill goes through the GraphQL `launchPartitionBackfill` mutation against the project's
workspace.yaml (an out-of-process code server), then the backfill daemon's iterations submit the
runs, which the instance's run launcher executes in subprocesses. The schedule side evaluates the
real schedule for each date and executes its run requests (per store batch) in date order.
"""

from __future__ import annotations

import contextvars
import io
import logging
import os
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.test_utils import instance_for_test, wait_for_runs_to_finish
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster._daemon.backfill import execute_backfill_iteration
from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION
from dagster_graphql.test.utils import execute_dagster_graphql

from quimbi_pipeline.definitions import defs
from quimbi_pipeline.defs.profiles.jobs import DAILY_PIPELINE_JOB
from quimbi_pipeline.defs.profiles.schedules import daily_pipeline_schedule
from quimbi_pipeline.defs.resources import OrdersResource, WarehouseResource
from quimbi_pipeline.storage import Warehouse

WORKSPACE = Path(__file__).resolve().parent.parent / "workspace.yaml"
ORDERS = "demo:customers=300,stores=3,seed=8"
DATES = [f"{d:%Y-%m-%d}" for d in pd.date_range("2026-01-03", "2026-01-06")]  # a Monday inside


def tables(url: str) -> dict[str, pd.DataFrame]:
    wh = Warehouse(url)
    out = {
        "profiles": wh.profiles(),
        "snapshots": wh.read_sql(
            f"SELECT * FROM {wh.qualified('customer_profile_snapshots')} ORDER BY store_id, customer_id, snapshot_date, snapshot_type"),
        "segment_models": wh.read_sql(f"SELECT * FROM {wh.qualified('segment_models')} ORDER BY store_id, model_version, axis"),
    }
    wh.dispose()
    return out


def run_schedule(url: str, monkeypatch) -> None:
    """What the daily schedule would have produced: each date's run requests, executed in date order."""
    monkeypatch.setenv("QUIMBI_STORE_BATCH_SIZE", "2")
    job = defs.resolve_job_def(DAILY_PIPELINE_JOB)
    resources = {"orders_source": OrdersResource(uri=ORDERS), "warehouse": WarehouseResource(url=url)}
    with instance_for_test() as instance:
        for day in DATES:
            tick = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1, hours=3)
            context = dg.build_schedule_context(scheduled_execution_time=tick.to_pydatetime(), resources=resources)
            requests = list(daily_pipeline_schedule(context))
            assert len(requests) == 2 and all(r.partition_key == day for r in requests)
            for request in requests:
                run_config = {**request.run_config, "resources": {"warehouse": {"config": {"url": url}}, "orders_source": {"config": {"uri": ORDERS}}}}
                result = job.execute_in_process(run_config=run_config, partition_key=day, instance=instance, tags=request.tags)
                assert result.success


ALL_ASSETS = ["customer_profiles", "customer_profile_snapshots", "customer_outlier_flags",
              "customer_drift", "customer_axis_drift", "customer_drift_anomalies", "population_drift"]


def run_ui_backfill(url: str, monkeypatch, tmp_path, assets: bool = False) -> None:
    """Jobs > daily_pipeline > Backfill (assets=False), or the asset graph's "Materialize all" over the dates (assets=True)."""
    # The code server and the run subprocesses read the source and warehouse from the environment.
    monkeypatch.setenv("QUIMBI_ORDERS", ORDERS)
    monkeypatch.setenv("QUIMBI_WAREHOUSE_URL", url)
    (tmp_path / "dagster_home").mkdir(parents=True)
    # DefaultRunCoordinator: runs the daemon submits start at once (no queue daemon in a test).
    overrides = {"run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}}
    with instance_for_test(temp_dir=str(tmp_path / "dagster_home"), overrides=overrides) as instance:
        with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(WORKSPACE)])) as process_context:
            request_context = process_context.create_request_context()
            params = ({"assetSelection": [{"path": [key]} for key in ALL_ASSETS], "partitionNames": DATES} if assets else {
                # Jobs > daily_pipeline > Backfill in the UI: the job's partition set over DATES.
                "selector": {
                    "partitionSetName": f"{DAILY_PIPELINE_JOB}_partition_set",
                    "repositorySelector": {"repositoryLocationName": "quimbi_pipeline", "repositoryName": "__repository__"},
                },
                "partitionNames": DATES,
            })
            result = execute_dagster_graphql(request_context, LAUNCH_PARTITION_BACKFILL_MUTATION, variables={"backfillParams": params})
            launched = result.data["launchPartitionBackfill"]
            assert launched["__typename"] == "LaunchBackfillSuccess", launched
            backfill_id = launched["backfillId"]
            logger = logging.getLogger("backfill-test")
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                started = time.monotonic()
                list(execute_backfill_iteration(process_context, logger))
                wait_for_runs_to_finish(instance, timeout=300)
                backfill = instance.get_backfill(backfill_id)
                print(f"backfill iteration: {time.monotonic() - started:.1f}s, status {backfill.status}, runs {len(instance.get_runs())}")
                if backfill.status not in (BulkActionStatus.REQUESTED,):
                    break
            assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS, backfill.status
            runs = instance.get_runs()
            # backfill_policy: runs of QUIMBI_BACKFILL_DATES_PER_RUN consecutive dates, each date in exactly one run
            per_run = int(os.environ.get("QUIMBI_BACKFILL_DATES_PER_RUN") or 90)
            assert len(runs) == -(-len(DATES) // per_run) and all(r.is_success for r in runs)
            covered = sorted(key for r in runs for key in r.partitions_subset.get_partition_keys())
            assert covered == DATES


@pytest.mark.slow
def test_materialize_all_over_off_calendar_dates_ends_successful(tmp_path, monkeypatch):
    """Every asset over dates without weekly/monthly snapshots, flags off: the backfill ends COMPLETED_SUCCESS
    (each output materializes, with 0 rows where its flag is off) and the rows equal the job backfill's."""
    job_url, assets_url = f"sqlite:///{tmp_path / 'job.sqlite'}", f"sqlite:///{tmp_path / 'assets.sqlite'}"
    contextvars.copy_context().run(run_ui_backfill, job_url, monkeypatch, tmp_path / "job")
    contextvars.copy_context().run(run_ui_backfill, assets_url, monkeypatch, tmp_path / "assets", True)
    for name, frame in tables(job_url).items():
        pd.testing.assert_frame_equal(frame.reset_index(drop=True), tables(assets_url)[name].reset_index(drop=True), obj=name)


@pytest.mark.slow
def test_ui_backfill_equals_daily_schedule(warehouse_url, tmp_path, monkeypatch):
    """The backfill in runs of 3 dates (2026-01-03..05, then 2026-01-06), each reading the orders once."""
    monkeypatch.setenv("ENABLE_TEMPORAL_SNAPSHOTS", "1")
    if warehouse_url.startswith("sqlite"):
        schedule_url, backfill_url = warehouse_url, f"sqlite:///{tmp_path / 'backfill.sqlite'}"
    else:  # two schemas are not available: use a SQLite copy of the schedule's rows, then reset PostgreSQL
        schedule_url, backfill_url = f"sqlite:///{tmp_path / 'schedule.sqlite'}", warehouse_url
    # Each in a copied context: Dagster test instances set context variables (the defs-state storage)
    # that would otherwise outlive them and break later tests' instances.
    contextvars.copy_context().run(run_schedule, schedule_url, monkeypatch)
    expected = tables(schedule_url)
    assert len(expected["snapshots"]) > 0 and set(expected["snapshots"]["snapshot_type"]) == {"daily", "weekly"}
    monkeypatch.setenv("QUIMBI_BACKFILL_DATES_PER_RUN", "3")
    contextvars.copy_context().run(run_ui_backfill, backfill_url, monkeypatch, tmp_path)
    produced = tables(backfill_url)
    for name, frame in expected.items():
        got = produced[name]
        if name != "profiles":  # dates come back as date objects from PostgreSQL, as text from SQLite
            for col in ("snapshot_date", "fitted_on"):
                if col in frame:
                    frame[col], got[col] = pd.to_datetime(frame[col]), pd.to_datetime(got[col])
            for col in ("dominant_segments", "fuzzy_memberships", "behavioral_features", "segment_names", "centroids", "scaler"):
                if col in frame:
                    import json

                    def canon(v):
                        return json.dumps(v if not isinstance(v, str) else json.loads(v), sort_keys=True)

                    frame[col], got[col] = frame[col].map(canon), got[col].map(canon)
        pd.testing.assert_frame_equal(frame.reset_index(drop=True), got.reset_index(drop=True), check_dtype=False, obj=name)


def test_runs_over_ranges_leave_the_tables_a_run_per_date_leaves(tmp_path, warehouse_url, monkeypatch):
    """`quimbi run` in runs of 5 dates (the path a UI backfill takes), every flag on, over 8 dates and then the 6 before
    them (the later dates' drift windows gain snapshots and are recomputed), against a run per date in date order.
    The ranges compute each next store-date's features ahead (features_ahead.py, for these small stores too), the run
    per date never does. Both databases."""
    from quimbi_pipeline.cli import execute_dates
    from quimbi_pipeline.run import FeaturesAhead
    from quimbi_pipeline_tests.test_reliability import (
        ANALYST_TABLES,
        assert_same_tables,
    )
    from quimbi_pipeline_tests.test_reliability import tables as analyst_tables

    for name in ("ENABLE_TEMPORAL_SNAPSHOTS", "ENABLE_DRIFT_ANALYSIS", "ENABLE_OUTLIER_DETECTION", "ENABLE_STABLE_SEGMENTS"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("QUIMBI_DRIFT_WINDOWS", "7,28")
    orders = "demo:customers=150,stores=2,seed=12"

    taken = []
    take = FeaturesAhead.take

    def counted_take(self, *args):
        found = take(self, *args)
        taken.append(found is not None)
        return found

    monkeypatch.setattr(FeaturesAhead, "take", counted_take)

    def history(url: str, per_run: str, spans, ahead: bool) -> tuple[dict, dict, list[str]]:
        monkeypatch.setenv("QUIMBI_BACKFILL_DATES_PER_RUN", per_run)
        monkeypatch.setattr(FeaturesAhead, "wanted", lambda self, unit: ahead)
        out = io.StringIO()
        for start, end in spans:
            summary = execute_dates(pd.Timestamp(start), pd.Timestamp(end), orders=orders, warehouse=url, stores=None, out=out)
            assert not summary.dates_failed, out.getvalue()
        wh = Warehouse(url)
        found = analyst_tables(wh)
        found["segment_models"] = wh.read_sql(f"SELECT * FROM {wh.qualified('segment_models')}").map(str).sort_values(
            ["store_id", "model_version", "axis"]).reset_index(drop=True)
        pruned = pruned_tables(wh)
        wh.dispose()
        return found, pruned, out.getvalue().splitlines()

    expected, expected_pruned, _ = history(f"sqlite:///{tmp_path / 'per_date.sqlite'}", "1", [("2026-10-18", "2026-10-31")], ahead=False)
    assert len(expected["customer_drift"]) and len(expected["population_drift"]) and len(expected["customer_outlier_flags"])
    assert not any(taken)
    produced, produced_pruned, lines = history(warehouse_url, "5", [("2026-10-24", "2026-10-31"), ("2026-10-18", "2026-10-23")], ahead=True)
    # 14 dates x 2 stores in 4 runs: every store-date but each run's first took features computed ahead.
    assert sum(taken) == 14 * 2 - 4, taken
    # The run over 2026-10-18..22: its dates but the Monday (weekly, 2026-10-19) are expired at the store's newest date
    # (daily: 7 days) and were written as blocks alone; their drift, and the later dates' recomputed drift, read them.
    # 2026-10-23, a run of one date, writes its rows as the schedule does.
    assert_same_tables(expected, produced, names=[t for t in ANALYST_TABLES if t != "customer_profile_snapshots"])
    assert_expired_on_arrival(expected, produced, ["2026-10-18", "2026-10-20", "2026-10-21", "2026-10-22"])
    assert_same_tables(expected_pruned, produced_pruned, names=[*ANALYST_TABLES, "snapshot_blocks"])
    if warehouse_url.startswith("sqlite"):
        pd.testing.assert_frame_equal(expected["segment_models"], produced["segment_models"])
    else:  # fitted_on is a date there and text here; the fit itself must be the same
        assert expected["segment_models"][["store_id", "model_version", "axis"]].equals(produced["segment_models"][["store_id", "model_version", "axis"]])
    # A line per date as before, and one per run of several: 8 dates in runs of 5 and 3; then 6 in runs of 5 and 1.
    assert sum(line.startswith("[") for line in lines) == 14
    assert [line.split(":")[0] for line in lines if line.startswith("    one run over")] == [
        "    one run over 2026-10-24 to 2026-10-28", "    one run over 2026-10-29 to 2026-10-31", "    one run over 2026-10-18 to 2026-10-22"]


def pruned_tables(wh: Warehouse) -> dict[str, pd.DataFrame]:
    """The analysts' tables and the snapshot blocks' index after a prune under the retention policy in force (the
    snapshot rows a range leaves out are the rows it deletes)."""
    from quimbi_pipeline.settings import RetentionPolicy
    from quimbi_pipeline.storage.prune import prune
    from quimbi_pipeline_tests.test_reliability import tables as analyst_tables

    prune(wh, RetentionPolicy.from_env())
    found = analyst_tables(wh)
    found["snapshot_blocks"] = wh.read_sql(f"SELECT store_id, snapshot_date, block, n_customers FROM {wh.qualified('snapshot_blocks')}").map(str).sort_values(
        ["store_id", "snapshot_date", "block"]).reset_index(drop=True)
    return found


def assert_expired_on_arrival(per_date: dict, ranged: dict, days: list[str]) -> None:
    """The range left out exactly the snapshot rows of `days` (every store's), and wrote every other row the run per date wrote."""
    key = ["store_id", "customer_id", "snapshot_date", "snapshot_type"]
    left_out = per_date["customer_profile_snapshots"].merge(ranged["customer_profile_snapshots"][key], on=key, how="left", indicator=True)
    assert (left_out["_merge"] != "right_only").all()
    missing = left_out[left_out["_merge"] == "left_only"]
    assert sorted(missing["snapshot_date"].str[:10].unique()) == days
    assert set(missing["snapshot_type"]) == {"daily"}
    assert len(missing) == int(per_date["customer_profile_snapshots"]["snapshot_date"].str[:10].isin(days).sum())


@pytest.mark.parametrize("snapshots", ["1", "0"])
def test_a_range_writes_each_profile_row_once_at_the_last_date_the_customer_is_active(tmp_path, warehouse_url, monkeypatch, snapshots):
    """Inside a run over several dates a customer's customer_profiles row is written at the last of them they are active
    on (the snapshots of every date are whole). With a 10-day active window customers leave the active set inside the
    range; their rows must be those of the day before they leave, as a run per date leaves them. Both databases, with
    snapshots (the rows staged beside the snapshot values) and without."""
    from quimbi_pipeline.cli import execute_dates
    from quimbi_pipeline_tests.test_reliability import (
        ANALYST_TABLES,
        assert_same_tables,
    )
    from quimbi_pipeline_tests.test_reliability import tables as analyst_tables

    monkeypatch.setenv("QUIMBI_ACTIVE_DAYS", "10")
    monkeypatch.setenv("ENABLE_TEMPORAL_SNAPSHOTS", snapshots)
    orders, first, last = "demo:customers=150,stores=2,seed=12", "2026-10-24", "2026-10-31"

    def history(url: str, per_run: str) -> tuple[dict, dict]:
        monkeypatch.setenv("QUIMBI_BACKFILL_DATES_PER_RUN", per_run)
        out = io.StringIO()
        summary = execute_dates(pd.Timestamp(first), pd.Timestamp(last), orders=orders, warehouse=url, stores=None, out=out)
        assert not summary.dates_failed, out.getvalue()
        wh = Warehouse(url)
        found = analyst_tables(wh)
        pruned = pruned_tables(wh)
        wh.dispose()
        return found, pruned

    expected, expected_pruned = history(f"sqlite:///{tmp_path / 'per_date.sqlite'}", "1")
    dates = pd.to_datetime(expected["customer_profiles"]["profile_date"])
    left = int(((dates >= pd.Timestamp(first)) & (dates < pd.Timestamp(last))).sum())
    assert left >= 10, f"only {left} customers left the active set inside the range: the test would not see a deferral go wrong"
    produced, produced_pruned = history(warehouse_url, "8")
    # 2026-10-24 is a Saturday 7 days before the range's end: its daily snapshot is expired on arrival.
    assert_same_tables(expected, produced, names=[t for t in ANALYST_TABLES if t != "customer_profile_snapshots"])
    if snapshots == "1":
        assert_expired_on_arrival(expected, produced, ["2026-10-24"])
    assert_same_tables(expected_pruned, produced_pruned, names=[*ANALYST_TABLES, "snapshot_blocks"])


def test_a_store_failing_at_the_next_date_gets_every_row_of_the_date_before(tmp_path, monkeypatch):
    """A date of a range leaves the rows of customers active at the next date, and its unflagged outlier rows, to it;
    if the store fails there, write_left_rows runs the date again in full, so the tables are a run per date's."""
    from quimbi_pipeline.run import (
        StoreOutcome,
        run_profiles_partition,
        write_left_rows,
    )
    from quimbi_pipeline.settings import PipelineSettings
    from quimbi_pipeline.sources.demo import generate_demo
    from quimbi_pipeline.sources.orders import validate_orders

    validated = validate_orders(generate_demo(n_customers=120, n_stores=1, seed=4).orders)
    settings = PipelineSettings(enable_temporal_snapshots=True, enable_outlier_detection=True, active_days=10)
    whole, left = Warehouse(f"sqlite:///{tmp_path / 'whole.sqlite'}"), Warehouse(f"sqlite:///{tmp_path / 'left.sqlite'}")
    assert not run_profiles_partition(validated, "2026-10-30", whole, settings).failed
    report = run_profiles_partition(validated, "2026-10-30", left, settings, later_day="2026-10-31")
    outcome = report.outcomes[0]
    assert outcome.ok and 0 < outcome.deferred_profiles < outcome.n_profiles and outcome.missing_profiles == 0
    assert len(left.profiles()) == outcome.n_profiles - outcome.deferred_profiles

    def flags(wh: Warehouse) -> pd.DataFrame:
        return wh.read_sql(f"SELECT * FROM {wh.qualified('customer_outlier_flags')} ORDER BY customer_id, method")

    every_flag = flags(whole)
    assert outcome.deferred_outlier_rows == int((~every_flag["is_outlier"].astype(bool)).sum()) > 0
    assert flags(left)["is_outlier"].astype(bool).all() and len(flags(left)) == len(every_flag) - outcome.deferred_outlier_rows
    write_left_rows(validated, left, settings, report, ["daily"], [StoreOutcome(outcome.store_id, False, error="x")])
    pd.testing.assert_frame_equal(whole.profiles(), left.profiles())
    pd.testing.assert_frame_equal(every_flag, flags(left))
    whole.dispose()
    left.dispose()


def test_a_store_that_does_not_reach_the_ranges_end_gets_the_snapshot_rows_its_newest_date_keeps(tmp_path, warehouse_url, caplog, monkeypatch):
    """A range over 2026-10-13..31 writes its dates but the Monday (10-19) as blocks alone (the daily rows expire by
    10-31); the store then fails at 10-25 and after. At 10-24, the newest date it reached, a run per date keeps the
    daily rows of 10-18..24: write_kept_rows writes them, and leaves 10-13..17 (expired at 10-24 too) as blocks. Every
    other table is the run per date's, and after a prune every table. Both databases."""
    from quimbi_pipeline.history.snapshots import snapshot_types_for
    from quimbi_pipeline.run import (
        PartitionReport,
        StoreOutcome,
        run_profiles_partition,
        write_kept_rows,
        write_left_rows,
    )
    from quimbi_pipeline.settings import PipelineSettings
    from quimbi_pipeline.sources.demo import generate_demo
    from quimbi_pipeline.sources.orders import validate_orders
    from quimbi_pipeline_tests.test_reliability import (
        ANALYST_TABLES,
        assert_same_tables,
    )
    from quimbi_pipeline_tests.test_reliability import tables as analyst_tables

    validated = validate_orders(generate_demo(n_customers=120, n_stores=1, seed=4).orders)
    settings = PipelineSettings(enable_temporal_snapshots=True, enable_outlier_detection=True, active_days=10)
    dates = [f"2026-10-{d}" for d in range(13, 32)]
    reached = dates.index("2026-10-24") + 1
    types_of = {day: snapshot_types_for(day) for day in dates}
    per_date, ranged = Warehouse(f"sqlite:///{tmp_path / 'per_date.sqlite'}"), Warehouse(warehouse_url)
    for day in dates[:reached]:
        assert not run_profiles_partition(validated, day, per_date, settings).failed
    reports = [run_profiles_partition(validated, day, ranged, settings, snapshot_types=types_of[day], later_day=dates[i + 1], range_end=dates[-1])
               for i, day in enumerate(dates[:reached])]
    assert [o.snapshots_expired for r in reports for o in r.outcomes] == [day != "2026-10-19" for day in dates[:reached]]
    store = reports[0].outcomes[0].store_id
    reports.append(PartitionReport(pd.Timestamp(dates[reached]), [StoreOutcome(store, False, error="failed at 10-25")]))
    write_left_rows(validated, ranged, settings, reports[-2], types_of[dates[reached - 1]], reports[-1].failed)  # 10-24 in full
    assert sorted(_snapshot_dates(ranged)) == ["2026-10-19", "2026-10-24"]
    # A store whose kept dates cannot be read is logged and left as it is; nothing is raised.
    with monkeypatch.context() as m, caplog.at_level(logging.WARNING):
        m.setattr(ranged, "newest_snapshot_date", lambda store: (_ for _ in ()).throw(RuntimeError("database went away")))
        write_kept_rows(validated, ranged, settings, reports, dates, types_of)
    assert "store_a: could not read which snapshot rows it keeps" in caplog.text and "database went away" in caplog.text
    assert sorted(_snapshot_dates(ranged)) == ["2026-10-19", "2026-10-24"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        write_kept_rows(validated, ranged, settings, reports, dates, types_of)
    assert "2026-10-18: writing the snapshot rows of store_a" in caplog.text
    assert sorted(_snapshot_dates(ranged)) == dates[5:reached]
    expected, produced = analyst_tables(per_date), analyst_tables(ranged)
    assert_same_tables(expected, produced, names=[t for t in ANALYST_TABLES if t != "customer_profile_snapshots"])
    assert_expired_on_arrival(expected, produced, dates[:5])
    assert_same_tables(pruned_tables(per_date), pruned_tables(ranged), names=[*ANALYST_TABLES, "snapshot_blocks"])
    # A store that reached the range's end keeps the range's judgement: nothing runs again.
    caplog.clear()
    done = [*reports[:reached], PartitionReport(pd.Timestamp(dates[-1]), [StoreOutcome(store, True)])]
    with caplog.at_level(logging.WARNING):
        write_kept_rows(validated, ranged, settings, done, [*dates[:reached], dates[-1]], types_of)
    assert "writing the snapshot rows" not in caplog.text
    per_date.dispose()
    ranged.dispose()


def _snapshot_dates(wh: Warehouse) -> list[str]:
    frame = wh.read_sql(f"SELECT DISTINCT snapshot_date FROM {wh.qualified('customer_profile_snapshots')}")
    return [str(pd.Timestamp(d).date()) for d in frame["snapshot_date"]]


@pytest.mark.parametrize("text", ["0", "-3", "ten", "2.5"])
def test_dates_per_run_must_be_a_whole_number_of_dates(monkeypatch, capsys, tmp_path, text):
    """`quimbi run` says so in two lines before anything runs (the code location fails to load with the same sentence)."""
    from quimbi_pipeline.cli import main

    monkeypatch.setenv("QUIMBI_BACKFILL_DATES_PER_RUN", text)
    assert main(["run", "--from", "2026-10-31", "--to", "2026-10-31", "--orders", "demo:customers=50",
                 "--warehouse", f"sqlite:///{tmp_path / 'w.sqlite'}"]) == 1
    err = capsys.readouterr().err
    assert f"QUIMBI_BACKFILL_DATES_PER_RUN must be a whole number of dates, 1 or more; got '{text}'" in err and "Traceback" not in err
