"""The reliability suite: each case of docs/reliability.md, on SQLite and PostgreSQL where the database matters.

Stores are isolated end to end; bad values never reach a table; broken files are errors before anything
is written; the order dates arrive in does not matter; degenerate stores work with every flag on;
concurrent first runs all succeed; work after a commit cannot fail a written store; a failed write leaves
the previous rows and a re-run equals a clean run; the warehouse password never lands anywhere.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from quimbi_pipeline.run import run_drift_partition, run_profiles_partition
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.sources.demo import generate_demo
from quimbi_pipeline.sources.orders import (
    OrdersSourceError,
    read_orders_source,
    validate_orders,
)
from quimbi_pipeline.storage import Warehouse

ALL_ON = PipelineSettings(enable_drift_analysis=True, enable_outlier_detection=True, drift_windows=(7, 28))
ANALYST_TABLES = {
    "customer_profiles": ["store_id", "customer_id"],
    "customer_profile_snapshots": ["store_id", "customer_id", "snapshot_date", "snapshot_type"],
    "customer_drift": ["store_id", "customer_id", "as_of_date", "window_days"],
    "customer_axis_drift": ["store_id", "customer_id", "as_of_date", "window_days", "axis"],
    "customer_drift_anomalies": ["store_id", "customer_id", "as_of_date", "anomaly_type", "axis", "anomaly_date"],
    "population_drift": ["store_id", "as_of_date", "axis"],
    "customer_outlier_flags": ["store_id", "customer_id", "flag_date", "method"],
}


def _canonical(value) -> str:
    """One text per value on both databases: JSON (text on SQLite, parsed on PostgreSQL) with sorted keys, dates as ISO."""
    if isinstance(value, str) and value[:1] in "{[":
        value = json.loads(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if hasattr(value, "isoformat"):
        return value.isoformat()[:10]
    if isinstance(value, (bool, np.bool_)):  # SQLite keeps booleans as 0/1
        return str(int(value))
    return str(value)


def tables(wh: Warehouse) -> dict[str, pd.DataFrame]:
    out = {}
    for table, key in ANALYST_TABLES.items():
        frame = wh.read_sql(f"SELECT * FROM {wh.qualified(table)}")
        out[table] = frame.map(_canonical).sort_values(key).reset_index(drop=True)
    return out


def assert_same_tables(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame], names=tuple(ANALYST_TABLES)) -> None:
    for table in names:
        assert a[table].shape == b[table].shape, f"{table}: {a[table].shape} rows x columns vs {b[table].shape}"
        differ = (a[table] != b[table]).any()
        assert not differ.any(), f"{table}: columns {list(differ[differ].index)} differ"


def run(validated, days, wh, settings=ALL_ON):
    for day in days:
        report = run_profiles_partition(validated, day, wh, settings)
        assert not report.failed, [o.error for o in report.failed]
        assert all(o.ok for o in run_drift_partition(wh, day, settings))


@pytest.fixture(scope="module")
def small_orders():
    return validate_orders(generate_demo(n_customers=400, n_stores=2, seed=5).orders)


# ---- stores are isolated end to end ----------------------------------------------------------------

def test_a_failing_store_costs_the_others_nothing_not_even_their_drift(tmp_path, warehouse_url, monkeypatch):
    """Case 1: one bad row in store_b; the daily job still writes store_a's profiles, snapshots and drift, then fails naming store_b."""
    from quimbi_pipeline.definitions import defs
    from quimbi_pipeline.defs.profiles.jobs import DAILY_PIPELINE_JOB

    orders = generate_demo(n_customers=300, n_stores=2, seed=4).orders
    orders["order_ts"] = orders["order_ts"].astype(str)
    orders.loc[orders.index[orders["store_id"] == "store_b"][3], "order_ts"] = "not a time"
    path = tmp_path / "orders.csv"
    orders.to_csv(path, index=False)
    monkeypatch.setenv("ENABLE_DRIFT_ANALYSIS", "1")
    monkeypatch.setenv("QUIMBI_WAREHOUSE_URL", warehouse_url)
    job = defs.resolve_job_def(DAILY_PIPELINE_JOB)
    instance = dg.DagsterInstance.ephemeral()
    for day in ("2026-10-30", "2026-10-31"):
        result = job.execute_in_process(run_config={"resources": {"orders_source": {"config": {"uri": str(path)}}}}, instance=instance,
                                        partition_key=day, raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert failure.step_key == "daily_drift" and "1 store(s) failed: store_b" in failure.step_failure_data.error.message
        assert "unparseable timestamp" in failure.step_failure_data.user_failure_data.metadata["store_b"].value
    wh = Warehouse(warehouse_url)
    drift = wh.read_sql(f"SELECT store_id, count(*) AS n FROM {wh.qualified('customer_drift')} GROUP BY store_id")
    assert drift["store_id"].tolist() == ["store_a"] and drift["n"].iloc[0] > 0
    assert set(wh.read_sql(f"SELECT DISTINCT store_id FROM {wh.qualified('customer_profiles')}")["store_id"]) == {"store_a"}
    wh.dispose()
    # The same two dates as one run (a backfill's range): both dates fail naming store_b and its first date, store_a gets both.
    from quimbi_pipeline.cli import execute_dates

    out = io.StringIO()
    url = f"sqlite:///{tmp_path / 'range.sqlite'}"
    summary = execute_dates(pd.Timestamp("2026-10-30"), pd.Timestamp("2026-10-31"), orders=str(path), warehouse=url, stores=None, out=out)
    assert summary.dates_failed == ["2026-10-30", "2026-10-31"] and not summary.dates_ok, out.getvalue()
    assert "1 store(s) failed: store_b" in out.getvalue() and "store_b: profiles: 2026-10-30: invalid orders" in out.getvalue()
    assert out.getvalue().count("stores ok 1") == 2
    wh = Warehouse(url)
    snapshots = wh.read_sql(f"SELECT DISTINCT store_id, snapshot_date FROM {wh.qualified('profile_snapshots')}")
    assert set(snapshots["store_id"]) == {"store_a"} and set(snapshots["snapshot_date"].astype(str).str[:10]) == {"2026-10-30", "2026-10-31"}
    drift = wh.read_sql(f"SELECT DISTINCT store_id, as_of_date FROM {wh.qualified('population_drift')}")
    assert drift["store_id"].tolist() == ["store_a"] and str(drift["as_of_date"].iloc[0])[:10] == "2026-10-31"  # the first date has one snapshot
    wh.dispose()


# ---- nothing non-finite or impossible is stored ------------------------------------------------------

def good(store="s1", n=6):
    return [{"order_id": f"{store}-{i}", "customer_id": f"c{i % 3}", "store_id": store, "order_ts": f"2026-01-{i + 1:02d}", "order_total": "10"}
            for i in range(n)]


@pytest.mark.parametrize("column, value, message", [
    ("customer_id", "   ", "null or blank"),  # case 2
    ("order_total", "inf", "non-finite"),  # case 3
    ("order_total", "-inf", "non-finite"),
    ("order_total", "1e308", "out of range"),  # case 4
])
def test_quarantine_drops_exactly_the_rows_it_reports(column, value, message):
    rows = good()
    rows[2][column] = value
    rows[4][column] = value
    result = validate_orders(pd.DataFrame(rows), bad_rows="quarantine")
    (problem,) = result.problems
    assert message in problem.message and problem.rows == (2, 4)
    assert sorted(result.orders["order_id"]) == ["s1-0", "s1-1", "s1-3", "s1-5"]
    rejected = validate_orders(pd.DataFrame(rows))  # the default rejects the store, naming the rows
    assert list(rejected.rejected_stores) == ["s1"] and rejected.orders.empty


def test_values_outside_their_range_are_refused_before_the_write(sqlite_url, small_orders, monkeypatch):
    from quimbi_pipeline.model import profiles
    real = profiles.score_churn

    def broken(model, features, settings):
        scores = real(model, features, settings)
        return dataclasses.replace(scores, predicted_ltv=np.where(np.arange(scores.predicted_ltv.size) == 0, np.inf, scores.predicted_ltv))

    monkeypatch.setattr(profiles, "score_churn", broken)
    wh = Warehouse(sqlite_url)
    report = run_profiles_partition(small_orders, "2026-10-31", wh, PipelineSettings())
    assert {o.store_id for o in report.failed} == {"store_a", "store_b"}
    assert all("customer_profiles.predicted_ltv: 1 value(s) not finite" in o.error for o in report.failed)
    assert wh.profiles().empty
    wh.dispose()


# ---- malformed files are errors, not partial data -----------------------------------------------------

def write_csv(path: Path, text: bytes) -> str:
    path.write_bytes(text)
    return str(path)


HEADER = b"order_id,customer_id,store_id,order_ts,order_total,category\n"


@pytest.mark.parametrize("body, message", [
    (HEADER + b'1,c1,store_a,2026-01-01,10,"books"\n2,c2,store_a,2026-01-02,12,"bo', "quoted field opened on line 3 is never closed"),  # case 5
    (HEADER + b"1,c1,store_a,2026-01-01,10,books\n2,c2,store_a,2026-01-0", "line(s) 3 have another number of fields"),
    (HEADER, "has a header but no order rows"),  # case 12
    (b"order_id,customer_id,order_ts,order_total,order_total\n1,c1,2026-01-01,3,4\n", "order_total appear more than once"),
    (b"", "is empty"),
])
def test_broken_files_fail_before_anything_is_read_naming_the_line(tmp_path, body, message):
    with pytest.raises(OrdersSourceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_orders_source(write_csv(tmp_path / "orders.csv", body))


def test_undecodable_bytes_are_bad_rows_of_their_own_store(tmp_path):
    """Case 11: non-UTF-8 bytes in store_b's rows reject store_b with row numbers; store_a is read."""
    body = HEADER + b"1,c1,store_a,2026-01-01,10,books\n2,c\xe92,store_b,2026-01-02,3,toys\n3,c3,store_b,2026-01-03,5,to\xffys\n4,c4,store_a,2026-01-04,7,books\n"
    result = validate_orders(read_orders_source(write_csv(tmp_path / "orders.csv", body)))
    assert list(result.rejected_stores) == ["store_b"] and result.stores == ["store_a"]
    described = "; ".join(p.describe() for p in result.rejected_stores["store_b"])
    assert "not UTF-8" in described and "1" in described and "2" in described


def test_unknown_store_and_empty_source_are_errors(tmp_path, sqlite_url, capsys):
    from quimbi_pipeline.cli import main

    assert main(["run", "--from", "2026-10-31", "--to", "2026-10-31", "--orders", "demo:customers=50", "--warehouse", sqlite_url, "--stores", "nope"]) == 1
    err = capsys.readouterr().err
    assert "no orders for store(s) nope" in err and "Traceback" not in err


# ---- the order dates arrive in does not matter -------------------------------------------------------

@pytest.mark.heavy
@pytest.mark.parametrize("order", [["2026-10-09", "2026-10-07", "2026-10-11", "2026-10-06", "2026-10-08", "2026-10-10"]])
def test_any_order_of_dates_leaves_the_warehouse_of_a_date_ordered_run(tmp_path, warehouse_url, small_orders, order):
    """Case 6: an earlier date arriving later recomputes the drift of the later dates it feeds."""
    in_order = f"sqlite:///{tmp_path / 'in_order.sqlite'}"
    wh = Warehouse(in_order)
    run(small_orders, sorted(order), wh)
    expected = tables(wh)
    wh.dispose()
    assert len(expected["customer_drift"]) > 0
    wh = Warehouse(warehouse_url)
    run(small_orders, order, wh)
    assert_same_tables(expected, tables(wh))
    wh.dispose()


# ---- degenerate stores work with every flag on -------------------------------------------------------

def test_degenerate_stores_work_with_every_flag_on(warehouse_url):
    """Case 7: identical customers, one customer, one order, only returns (and a normal store beside them)."""
    def rows(store, spec):
        return [{"order_id": f"{store}-{i}", "customer_id": c, "store_id": store, "order_ts": ts, "order_total": total,
                 "discount_total": 0, "item_count": 1, "category": "books"} for i, (c, ts, total) in enumerate(spec)]

    raw = (rows("identical", [(f"c{i}", f"2026-0{m}-01", 10.0) for i in range(30) for m in (1, 2, 3)])
           + rows("one_customer", [("c1", "2026-01-01", 10), ("c1", "2026-02-01", 12)])
           + rows("one_order", [("c1", "2026-01-01", 10)])
           + rows("all_returns", [("c1", "2026-01-01", -10), ("c2", "2026-02-01", -5)]))
    validated = validate_orders(pd.DataFrame(raw))
    wh = Warehouse(warehouse_url)
    run(validated, ["2026-03-30", "2026-03-31"], wh)
    profiles = wh.profiles()
    assert profiles.groupby("store_id").size().to_dict() == {"identical": 30, "one_customer": 1, "one_order": 1}
    assert set(wh.read_sql(f"SELECT DISTINCT store_id FROM {wh.qualified('customer_drift')}")["store_id"]) == {"identical", "one_customer", "one_order"}
    wh.dispose()


# ---- concurrent first runs ---------------------------------------------------------------------------

CONCURRENT_RUN = """
import sys
from quimbi_pipeline.sources.demo import generate_demo
from quimbi_pipeline.sources.orders import validate_orders
from quimbi_pipeline.run import run_profiles_partition
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.storage import Warehouse
store = sys.argv[2]
v = validate_orders(generate_demo(n_customers=120, n_stores=8, seed=3).orders)
report = run_profiles_partition(v, "2026-10-31", Warehouse(sys.argv[1]), PipelineSettings(enable_temporal_snapshots=True), [store])
sys.exit(1 if report.failed else 0)
"""


@pytest.mark.heavy
def test_eight_first_runs_at_once_on_an_empty_warehouse_all_succeed(warehouse_url):
    """Case 8: schema creation under a lock (PostgreSQL advisory lock; SQLite lock file)."""
    from quimbi_pipeline.sources.demo import demo_store_names

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, "-c", CONCURRENT_RUN, warehouse_url, store], env=env, stderr=subprocess.PIPE, text=True)
                 for store in demo_store_names(8)]
    errors = [p.communicate(timeout=300)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 8, "\n".join(e[-800:] for e in errors if e)
    wh = Warehouse(warehouse_url)
    assert wh.read_sql(f"SELECT count(DISTINCT store_id) AS n FROM {wh.qualified('customer_profiles')}")["n"].iloc[0] == 8
    wh.dispose()


# ---- a committed store is a successful store; a failed write leaves the previous rows -------------------

def test_a_failure_after_the_commit_cannot_fail_a_written_store(sqlite_url, small_orders, monkeypatch):
    """Case 9: checks that read the store back fail (a statement timeout): the store is written and reported ok."""
    def timeout(self, *args, **kwargs):
        raise sa.exc.OperationalError("SELECT ...", {}, Exception("canceling statement due to statement timeout"))

    monkeypatch.setattr(Warehouse, "membership_sum_violations", timeout)
    wh = Warehouse(sqlite_url)
    report = run_profiles_partition(small_orders, "2026-10-31", wh, PipelineSettings())
    assert not report.failed and all(not o.verified for o in report.outcomes)
    assert all("verification after the commit failed: canceling statement due to statement timeout" in o.notes[-1] for o in report.outcomes)
    assert len(wh.profiles()) == report.n_profiles
    wh.dispose()


@pytest.mark.parametrize("write_point", ["_insert_snapshots", "replace_snapshot_blocks", "_load_serialized"])
def test_a_write_failing_midway_leaves_the_previous_rows_and_a_rerun_equals_a_clean_run(tmp_path, warehouse_url, small_orders, monkeypatch, write_point):
    clean_url = f"sqlite:///{tmp_path / 'clean.sqlite'}"
    clean = Warehouse(clean_url)
    run(small_orders, ["2026-10-30", "2026-10-31"], clean)
    expected = tables(clean)
    clean.dispose()
    wh = Warehouse(warehouse_url)
    run(small_orders, ["2026-10-30"], wh)
    before = tables(wh)
    calls = {"n": 0}
    real = getattr(Warehouse, write_point)

    def crash(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Warehouse, write_point, crash)
    report = run_profiles_partition(small_orders, "2026-10-31", wh, ALL_ON)
    drift = run_drift_partition(wh, "2026-10-31", ALL_ON)
    assert report.failed or not all(o.ok for o in drift)
    after_crash = tables(wh)
    for table in ("customer_profile_snapshots", "customer_drift"):  # the failed store's previous rows are intact
        kept = after_crash[table][after_crash[table]["snapshot_date" if "snapshot" in table else "as_of_date"] != "2026-10-31"]
        assert kept.reset_index(drop=True).astype(str).equals(before[table].reset_index(drop=True).astype(str)), table
    monkeypatch.setattr(Warehouse, write_point, real)
    run(small_orders, ["2026-10-31"], wh)
    assert_same_tables(expected, tables(wh))
    wh.dispose()


# ---- secrets stay secret ---------------------------------------------------------------------------

@pytest.mark.postgres
def test_the_warehouse_password_lands_in_no_output_log_run_storage_or_table(tmp_path, pg_url):
    """Case 10: a run recorded in a Dagster instance, and a failing one; grep every artifact for the password."""
    password = "s3cret-Pa55word-for-the-test"
    drop_role = ("DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'quimbi_secret_test') THEN "
                 "EXECUTE 'DROP OWNED BY quimbi_secret_test CASCADE'; EXECUTE 'DROP ROLE quimbi_secret_test'; END IF; END $$")
    with sa.create_engine(pg_url).begin() as conn:
        conn.exec_driver_sql(drop_role)
        conn.exec_driver_sql(f"CREATE ROLE quimbi_secret_test LOGIN SUPERUSER PASSWORD '{password}'")
    url = sa.engine.make_url(pg_url).set(username="quimbi_secret_test", password=password).render_as_string(hide_password=False)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    outputs = []
    missing_db = sa.engine.make_url(url).set(database="quimbi_no_such_database").render_as_string(hide_password=False)
    for target in (url, missing_db):  # a run that works, and one whose connection fails (its error is printed)
        done = subprocess.run([sys.executable, "-m", "quimbi_pipeline.cli", "run", "--from", "2026-10-31", "--to", "2026-10-31",
                               "--orders", "demo:customers=80,stores=1", "--warehouse", target], env=env, capture_output=True, text=True, timeout=600)
        outputs.append(done.stdout + done.stderr)
    assert "  ok  " in outputs[0] and "quimbi_no_such_database" in outputs[1] and "cannot open the warehouse" in outputs[1]
    leaks = [str(p) for p in home.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
    assert leaks == [] and all(password not in text for text in outputs)
    wh = Warehouse(pg_url)
    for table in ANALYST_TABLES:
        assert password not in wh.read_sql(f"SELECT * FROM {wh.qualified(table)}").to_csv()
    wh.dispose()
    with sa.create_engine(pg_url).begin() as conn:
        conn.exec_driver_sql(drop_role)


def test_urls_are_masked_wherever_they_are_shown(sqlite_url, capsys):
    from quimbi_pipeline.cli import main
    from quimbi_pipeline.storage import masked_url

    assert masked_url("postgresql+psycopg://u:hunter2@h:5432/db") == "postgresql+psycopg://u:***@h:5432/db"
    assert main(["run", "--from", "2026-10-31", "--to", "2026-10-31", "--orders", "demo:customers=30,stores=1",
                 "--warehouse", "postgresql+psycopg://u:hunter2@127.0.0.1:1/db"]) == 1
    text = capsys.readouterr()
    assert "hunter2" not in text.out + text.err and "u:***@127.0.0.1:1/db" in text.err


# ---- integrity round 2: dates are never guessed; a run reads one version of its orders -------------------------

DAY_FIRST = HEADER + b"".join(f"{i},c{i % 5},store_a,{d} 10:00,{10 + i},books\n".encode()
                              for i, d in enumerate(["13/10/2026", "03/09/2026", "01/10/2026", "25/09/2026", "02/10/2026", "30/09/2026"]))


def test_a_day_first_file_is_an_error_naming_the_setting_and_read_as_named(tmp_path, monkeypatch):
    """Day-first timestamps were read silently (a day <= 12 became the month): now the file is an error naming
    QUIMBI_ORDER_TS_FORMAT, and with the format named every date is the one written."""
    from quimbi_pipeline.sources.orders import load_orders

    path = write_csv(tmp_path / "orders.csv", DAY_FIRST)
    monkeypatch.delenv("QUIMBI_ORDER_TS_FORMAT", raising=False)
    with pytest.raises(OrdersSourceError, match=r"6 of 6 timestamps are not ISO 8601 .* e\.g\. '13/10/2026 10:00'.*QUIMBI_ORDER_TS_FORMAT"):
        load_orders(path)
    monkeypatch.setenv("QUIMBI_ORDER_TS_FORMAT", "%d/%m/%Y %H:%M")
    days = sorted(str(d.date()) for d in load_orders(path).orders["order_ts"])
    assert days == ["2026-09-03", "2026-09-25", "2026-09-30", "2026-10-01", "2026-10-02", "2026-10-13"]


def test_a_few_non_iso_timestamps_are_bad_rows_named_by_line_and_column(tmp_path, monkeypatch):
    from quimbi_pipeline.sources.orders import load_orders

    monkeypatch.delenv("QUIMBI_ORDER_TS_FORMAT", raising=False)
    body = HEADER + b"1,c1,store_a,2026-10-01 10:00,10,books\n2,c2,store_a,03/09/2026 10:00,12,books\n3,c3,store_b,2026-10-02T08:00:00+02:00,5,toys\n"
    result = load_orders(write_csv(tmp_path / "orders.csv", body))
    assert list(result.rejected_stores) == ["store_a"] and result.stores == ["store_b"]
    assert [p.describe() for p in result.rejected_stores["store_a"]] == [
        "store 'store_a', column 'order_ts': unparseable timestamp (not an ISO 8601 timestamp) in 1 line(s): 3"]
    assert str(result.orders["order_ts"].iloc[0]) == "2026-10-02 06:00:00"  # an offset is converted to UTC


@pytest.mark.parametrize("text", ["31/10/2026", "03/09/2026", "2026/10/31", "Oct 31 2026", "2026-10-31T00:00"])
def test_run_dates_are_iso_dates_only(sqlite_url, capsys, text):
    from quimbi_pipeline.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["run", "--from", text, "--to", "2026-10-31", "--orders", "demo:customers=50", "--warehouse", sqlite_url])
    assert exit_.value.code == 2 and f"not an ISO date: {text!r} (use YYYY-MM-DD)" in capsys.readouterr().err


def test_dates_with_no_orders_up_to_them_are_said_in_the_summary(tmp_path, sqlite_url, capsys):
    from quimbi_pipeline.cli import main

    body = HEADER + b"1,c1,store_a,2026-10-02 10:00,10,books\n2,c2,store_a,2026-10-03 10:00,12,books\n"
    path = write_csv(tmp_path / "orders.csv", body)
    assert main(["run", "--from", "2026-09-30", "--to", "2026-10-02", "--orders", path, "--warehouse", sqlite_url]) == 0
    out = capsys.readouterr().out
    assert "[1/3] 2026-09-30  ok" in out and out.count("no orders up to this date (the source's first is 2026-10-02)") == 2
    assert "2 date(s) have no orders up to them (2026-09-30 to 2026-10-01): nothing to profile there" in out


def test_an_orders_file_replaced_during_a_run_fails_the_remaining_dates(tmp_path, sqlite_url, monkeypatch):
    """The file replaced after the first of three dates: the first date is the old file's, the others fail with a
    clear error instead of silently reading the new file."""
    from quimbi_pipeline.cli import RunSummary, execute_dates

    old, new = generate_demo(n_customers=60, n_stores=1, seed=3).orders, generate_demo(n_customers=90, n_stores=1, seed=4).orders
    path = tmp_path / "orders.csv"
    old.to_csv(path, index=False)
    original = dg.JobDefinition.execute_in_process
    calls = []

    def then_replace(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if not calls:
            new.to_csv(tmp_path / "next.csv", index=False)
            os.replace(tmp_path / "next.csv", path)  # what an export job does: a new file moved into place
        calls.append(kwargs["partition_key"])
        return result

    monkeypatch.setenv("QUIMBI_BACKFILL_DATES_PER_RUN", "1")  # a run per date: the file is replaced between runs
    monkeypatch.setattr(dg.JobDefinition, "execute_in_process", then_replace)
    out = io.StringIO()
    summary: RunSummary = execute_dates(pd.Timestamp("2026-10-29"), pd.Timestamp("2026-10-31"), orders=str(path), warehouse=sqlite_url,
                                        stores=None, out=out)
    assert (summary.dates_ok, summary.dates_failed) == (["2026-10-29"], ["2026-10-30", "2026-10-31"])
    assert out.getvalue().count("changed while this run was reading it") == 2
    wh = Warehouse(sqlite_url)
    profiles = wh.profiles()
    wh.dispose()
    assert set(profiles["profile_date"].astype(str).str[:10]) == {"2026-10-29"}
    assert set(profiles["customer_id"]) <= set(old["customer_id"])


def test_a_truncated_gzip_is_a_one_line_error(tmp_path, sqlite_url, capsys):
    import gzip

    from quimbi_pipeline.cli import main

    data = gzip.compress(HEADER + b"".join(f"{i},c{i},store_a,2026-10-01 10:00,10,books\n".encode() for i in range(2000)))
    path = tmp_path / "orders.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OrdersSourceError, match="is truncated"):
        read_orders_source(str(path))
    assert main(["run", "--from", "2026-10-01", "--to", "2026-10-01", "--orders", str(path), "--warehouse", sqlite_url]) == 1
    err = capsys.readouterr().err
    assert "is truncated (the compressed stream ends early): nothing was read" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) <= 3


# ---- integrity round 2: the server trusts nothing it is sent ---------------------------------------------------

def _served_store(url: str, orders: pd.DataFrame, day: str = "2026-10-31") -> None:
    from quimbi_pipeline.settings import StoreSettings

    wh = Warehouse(url)
    report = run_profiles_partition(validate_orders(orders, bad_rows="quarantine"), day, wh, StoreSettings())
    wh.dispose()
    assert not report.failed, [o.error for o in report.failed]


def _api(url: str, access=None, hosts=None, base_url: str = "http://testserver"):
    from fastapi.testclient import TestClient

    from quimbi_pipeline.api.access import Access
    from quimbi_pipeline.api.app import create_app

    return TestClient(create_app(url, access or Access(None), hosts), base_url=base_url)


@pytest.fixture
def one_store(warehouse_url):
    """A warehouse of one store, `base`, whose ids include a "/" and injection-looking text."""
    orders = generate_demo(n_customers=40, n_stores=1, seed=5, end="2026-10-31").orders
    orders["store_id"] = "base"
    orders.loc[orders["customer_id"] == orders["customer_id"].iloc[0], "customer_id"] = "c/1"
    _served_store(warehouse_url, orders)
    return warehouse_url


def test_request_paths_are_escaped_in_the_log_one_request_one_line(one_store, caplog):
    with _api(one_store) as api, caplog.at_level("INFO", logger="quimbi_pipeline.api"):
        api.get("/stores/x%0D%0AERROR%20forged-line-unauth/customers/c")
    lines = [r.getMessage() for r in caplog.records if r.name == "quimbi_pipeline.api"]
    assert lines == ["GET /stores/x%0D%0AERROR%20forged-line-unauth/customers/c 404 " + lines[0].rsplit(" 404 ", 1)[1]]
    assert "\n" not in lines[0] and "\r" not in lines[0]


@pytest.mark.parametrize("host, status", [("localhost:8000", 200), ("127.0.0.1:8000", 200), ("[::1]:8000", 200),
                                          ("evil.example", 421), ("evil.example:8000", 421), ("", 421)])
def test_an_open_server_answers_its_own_host_names_only(one_store, host, status):
    from quimbi_pipeline.api.app import served_hosts

    with _api(one_store, hosts=served_hosts("127.0.0.1")) as api:
        assert api.get("/stores/base/customers/c%2F1", headers={"host": host}).status_code == status
    with _api(one_store, hosts=served_hosts("127.0.0.1", {"QUIMBI_API_ALLOWED_HOSTS": "evil.example"})) as api:
        assert api.get("/health", headers={"host": "evil.example"}).status_code == 200


def test_an_error_never_names_a_store_the_key_does_not_grant(one_store, tmp_path):
    from quimbi_pipeline.api.access import Access, load_keys

    keys = tmp_path / "keys.yaml"
    keys.write_text("key-for-another-store-000000: [store_a]\n")
    with _api(one_store, Access(load_keys(keys))) as api:
        for path in ("/customers/c%2F1", "/customers/c%2F1/drift", "/customers/c%2F1/history"):
            answer = api.get(path, headers={"X-API-Key": "key-for-another-store-000000"})
            assert answer.status_code == 403 and "base" not in answer.text, path


@pytest.mark.parametrize("path", ["/stores/base/customers/c%00x", "/stores/b%00ase/customers/c", "/customers/c%00x/history",
                                  "/stores/base/customers/c%2F1/drift?as_of=0001-01-01", "/customers/c%2F1/drift?as_of=9999-12-31",
                                  "/ui/stores/base/customers/c%00x"])
def test_nul_bytes_and_out_of_range_dates_are_422_never_500(one_store, path):
    with _api(one_store) as api:
        assert api.get(path).status_code == 422


def test_ids_are_capped_at_write_time_a_longer_one_is_a_bad_row(warehouse_url):
    orders = generate_demo(n_customers=30, n_stores=1, seed=6, end="2026-10-31").orders
    orders.loc[0, "customer_id"] = "x" * 1_000_000
    orders.loc[1, "order_id"] = "nul\x00id"
    rejected = validate_orders(orders)
    assert [p.describe().split(" in ")[0] for p in rejected.rejected_stores["store_a"]] == [
        "store 'store_a', column 'order_id': a NUL character", "store 'store_a', column 'customer_id': longer than 200 characters"]
    _served_store(warehouse_url, orders)  # quarantine: the two rows are dropped, the store is written (no index error)
    wh = Warehouse(warehouse_url)
    assert wh.profiles()["customer_id"].str.len().max() <= 200
    wh.dispose()


def test_ids_with_a_slash_are_readable_and_page_links_encode_them(one_store):
    with _api(one_store) as api:
        profile = api.get("/stores/base/customers/c%2F1")
        assert (profile.status_code, profile.json()["customer_id"]) == (200, "c/1")
        assert api.get("/customers/c%2F1").json()["customer_id"] == "c/1"
        page = api.get("/ui/stores/base/customers/c%2F1")
        assert page.status_code == 200 and 'href="/ui/stores/base"' in page.text
        assert api.get("/stores/base/customers/c/1").status_code == 404  # a bare slash is two segments, as documented


def test_serve_refuses_an_empty_warehouse_with_one_line(tmp_path, pg_url, capsys):
    from quimbi_pipeline.cli import main

    empty = tmp_path / "empty.sqlite"
    empty.touch()
    for url in (f"sqlite:///{empty}", pg_url):
        assert main(["serve", "--warehouse", url, "--port", "0"]) == 1
        err = capsys.readouterr().err
        assert "holds no quimbi tables" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err


def test_a_warehouse_moved_away_while_serving_is_503_never_a_new_empty_file(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    _served_store(url, generate_demo(n_customers=30, n_stores=1, seed=7, end="2026-10-31").orders)
    with _api(url) as api, caplog.at_level("INFO", logger="quimbi_pipeline.api"):
        assert api.get("/stores/store_a/population").status_code == 200
        os.replace(tmp_path / "w.sqlite", tmp_path / "moved.sqlite")
        api.app.state.warehouse.engine.dispose()  # the pool's open connections still read the moved file: new ones cannot
        answer = api.get("/stores/store_a/population")
    assert answer.status_code == 503 and answer.json() == {"detail": "the warehouse cannot be read: OperationalError: unable to open database file"}
    assert not (tmp_path / "w.sqlite").exists()
    assert not any("Traceback" in r.getMessage() or r.exc_info for r in caplog.records)


def test_churn_risk_expected_purchases_and_ltv_never_contradict_each_other():
    """30 identical weekly buyers: the BG/NBD fit saw no dropout and its expectation overflowed, leaving churn 3e-06 "low"
    beside 0 expected purchases and 0 LTV. The renewal model's three numbers are consistent by construction: a
    weekly buyer last seen 2 weeks ago (2 of their usual gaps) is at some risk, and expects purchases and spend."""
    from quimbi_pipeline.model.churn import contradictory
    from quimbi_pipeline.model.profiles import build_store_profiles

    rows = [{"order_id": f"o{c}-{w}", "customer_id": f"c{c}", "store_id": "s", "order_total": 40.0,
             "order_ts": str(pd.Timestamp("2026-08-29") + pd.Timedelta(weeks=w))} for c in range(30) for w in range(10)]
    v = validate_orders(pd.DataFrame(rows))
    result = build_store_profiles(v.orders, "s", pd.Timestamp("2026-10-31"), PipelineSettings(), v.optional_columns)
    p = result.profiles
    assert not contradictory(p["churn_risk_score"].to_numpy(), p["expected_purchases"].to_numpy(), p["expected_purchases"].to_numpy()).any()
    assert (p["expected_purchases"] >= 1 - p["churn_risk_score"]).all() and (p["predicted_ltv"] > 0).all()
    assert (p["expected_purchases"] > 5).all() and p["churn_risk_score"].nunique() == 1 and p["next_order_date"].nunique() == 1


# ---- integrity round 2: prune and run side by side ---------------------------------------------------------------

def _snapshot_dates(wh: Warehouse, store: str) -> list[str]:
    frame = wh.read_sql(f"SELECT DISTINCT snapshot_date FROM {wh.qualified('profile_snapshots')} WHERE store_id = :s ORDER BY 1", {"s": store})
    return [str(pd.Timestamp(d).date()) for d in frame["snapshot_date"]]


def test_pruning_leaves_leased_stores_alone_and_a_run_waits_for_a_prune(warehouse_url):
    import threading
    import time

    from quimbi_pipeline.settings import RetentionPolicy
    from quimbi_pipeline.storage.leases import hold, pruning, release, run_lease
    from quimbi_pipeline.storage.prune import prune

    validated = validate_orders(generate_demo(n_customers=40, n_stores=2, seed=8, end="2026-10-31").orders)
    wh = Warehouse(warehouse_url)
    for day in pd.date_range("2026-10-27", "2026-10-31"):
        run_profiles_partition(validated, day, wh, PipelineSettings(enable_temporal_snapshots=True))
    policy = RetentionPolicy(daily=2)
    with run_lease(wh, ["store_a"]):
        prune(wh, policy)
        assert (_snapshot_dates(wh, "store_a"), _snapshot_dates(wh, "store_b")) == (
            ["2026-10-27", "2026-10-28", "2026-10-29", "2026-10-30", "2026-10-31"], ["2026-10-30", "2026-10-31"])
    prune(wh, policy)  # the run has ended: a later prune catches up
    assert _snapshot_dates(wh, "store_a") == ["2026-10-30", "2026-10-31"]
    with run_lease(wh, None):  # a run of every store: nothing is pruned
        assert prune(wh, RetentionPolicy(daily=1)).empty and _snapshot_dates(wh, "store_b") == ["2026-10-30", "2026-10-31"]
    started, leased_at = threading.Event(), []
    with pruning(wh):  # a run that starts while a prune runs waits for it
        waiting = threading.Thread(target=lambda: (started.set(), hold(wh, "late-run", ["store_b"]), leased_at.append(time.monotonic())))
        waiting.start()
        started.wait()
        time.sleep(1.5)
        assert not leased_at
        ended = time.monotonic()
    waiting.join(10)
    assert leased_at and leased_at[0] >= ended
    release(wh, "late-run")
    wh.dispose()


def test_a_ranges_expired_date_is_blocks_alone_which_a_prune_keeps_while_the_run_holds_the_store(warehouse_url):
    """A date of a backfill range whose snapshots the policy expires by the range's end (range_end) writes its blocks and
    no rows; the drift step finds the store and the date's calendar type there; a prune beside the run leaves the
    blocks, the first prune after it removes them."""
    from quimbi_pipeline.settings import RetentionPolicy
    from quimbi_pipeline.storage.leases import run_lease
    from quimbi_pipeline.storage.prune import prune

    validated = validate_orders(generate_demo(n_customers=40, n_stores=1, seed=8, end="2026-10-31").orders)
    wh = Warehouse(warehouse_url)
    settings = PipelineSettings(enable_temporal_snapshots=True)
    report = run_profiles_partition(validated, "2026-10-20", wh, settings, range_end="2026-10-31")  # a Tuesday, 11 days back
    assert [(o.ok, o.snapshots_expired, o.snapshot_rows) for o in report.outcomes] == [(True, True, {})]
    kept = run_profiles_partition(validated, "2026-10-25", wh, settings, range_end="2026-10-31")  # the 7 newest dates: rows
    assert [o.snapshots_expired for o in kept.outcomes] == [False] and kept.outcomes[0].snapshot_rows == {"daily": kept.n_profiles}

    def block_dates() -> list[str]:
        frame = wh.snapshot_block_index("store_a", "2026-10-01", "2026-10-31")
        return sorted({str(d.date()) for d in frame["snapshot_date"]})

    assert _snapshot_dates(wh, "store_a") == ["2026-10-25"] and block_dates() == ["2026-10-20", "2026-10-25"]
    assert wh.snapshot_stores("2026-10-20") == ["store_a"]
    sources = wh.snapshot_sources("store_a", "2026-10-19", "2026-10-25", kept_at=(pd.Timestamp("2026-10-25"), RetentionPolicy()))
    assert [(str(d.date()), t) for d, t in zip(sources["snapshot_date"], sources["snapshot_type"])] == [
        ("2026-10-20", "daily"), ("2026-10-25", "daily")]
    with run_lease(wh, ["store_a"]):
        prune(wh, RetentionPolicy())
        assert block_dates() == ["2026-10-20", "2026-10-25"]
    prune(wh, RetentionPolicy())
    assert block_dates() == ["2026-10-25"] and _snapshot_dates(wh, "store_a") == ["2026-10-25"]
    wh.dispose()


@pytest.mark.heavy
def test_a_prune_beside_a_run_changes_none_of_its_results(tmp_path, warehouse_url, monkeypatch):
    """`quimbi prune` looping beside a `quimbi run` over a warehouse with history: the run's tables are those of a
    run without it (it failed the drift step on SQLite with KeyError and changed drift rows on PostgreSQL)."""
    import threading

    from quimbi_pipeline.cli import execute_dates
    from quimbi_pipeline.settings import RetentionPolicy
    from quimbi_pipeline.storage.prune import prune

    for name, value in {"ENABLE_DRIFT_ANALYSIS": "1", "ENABLE_OUTLIER_DETECTION": "1", "QUIMBI_DRIFT_WINDOWS": "7,28"}.items():
        monkeypatch.setenv(name, value)
    orders = "demo:customers=150,stores=2,seed=12"
    out = io.StringIO()

    def history_then_run(url: str, beside) -> dict:
        assert not execute_dates(pd.Timestamp("2026-10-20"), pd.Timestamp("2026-10-28"), orders=orders, warehouse=url, stores=None, out=out).dates_failed
        wh = Warehouse(url)
        prune(wh, RetentionPolicy())  # the hourly prune has caught up before the run
        stop, prunes = threading.Event(), []

        def loop():
            while not stop.is_set():
                prunes.append(len(prune(wh, RetentionPolicy())))

        pruner = threading.Thread(target=loop) if beside else None
        if pruner:
            pruner.start()
        try:
            summary = execute_dates(pd.Timestamp("2026-10-29"), pd.Timestamp("2026-10-31"), orders=orders, warehouse=url, stores=None, out=out)
        finally:
            stop.set()
            if pruner:
                pruner.join()
        assert not summary.dates_failed, out.getvalue()
        assert not beside or prunes, "the prune loop ran"
        prune(wh, RetentionPolicy())  # both end with the same prune after the run
        found = tables(wh)
        wh.dispose()
        return found

    quiet = history_then_run(warehouse_url, beside=False)
    if warehouse_url.startswith("sqlite"):
        other = f"sqlite:///{tmp_path / 'beside.sqlite'}"
    else:
        from quimbi_pipeline_tests.conftest import _reset_pg

        _reset_pg(warehouse_url)
        other = warehouse_url
    assert_same_tables(quiet, history_then_run(other, beside=True))


# ---- integrity round 2: readers are never killed -------------------------------------------------------------------

def _drift_history(url: str, days: list[str], store_count: int = 1):
    from quimbi_pipeline.settings import RetentionPolicy

    validated = validate_orders(generate_demo(n_customers=120, n_stores=store_count, seed=14, end="2026-10-31").orders)
    wh = Warehouse(url)
    for day in days:
        assert not run_profiles_partition(validated, day, wh, ALL_ON).failed
        assert all(o.ok for o in run_drift_partition(wh, day, ALL_ON, retention=RetentionPolicy(drift=36500)))
    return wh


@pytest.mark.postgres
def test_dropping_an_old_partition_never_deadlocks_a_reader_of_its_table(pg_url):
    """The drift step drops yesterday's customer_drift partition every day. It locked the partition, then DROP locked
    the table: a reader of the table arriving in between held the table and waited for the partition, and PostgreSQL
    killed one of the two ('deadlock detected'). Now the table is locked first: the reader just waits."""
    import threading
    import time

    from quimbi_pipeline.storage.prune import expire_dated_rows

    wh = _drift_history(pg_url, ["2026-10-29", "2026-10-30", "2026-10-31"])
    assert len(wh.date_partitions("customer_drift")) == 3
    read, errors = [], []

    def reader():
        try:
            with wh.engine.connect() as conn:
                read.append(conn.execute(sa.text(f"SELECT count(*) FROM {wh.qualified('customer_drift')}")).scalar_one())
        except Exception as exc:  # what the reader meets is the test's result
            errors.append(exc)

    class ReaderComesBeforeTheDrop:
        def __init__(self, conn):
            self.conn, self.thread = conn, threading.Thread(target=reader)

        def __getattr__(self, name):
            return getattr(self.conn, name)

        def execute(self, statement, *args, **kwargs):
            if str(statement).startswith("DROP TABLE") and not self.thread.is_alive() and not read + errors:
                self.thread.start()
                time.sleep(1.5)  # the reader queues on its locks; PostgreSQL's deadlock check runs after 1 s
            return self.conn.execute(statement, *args, **kwargs)

    with wh.engine.begin() as conn:
        wrapped = ReaderComesBeforeTheDrop(conn)
        deleted = expire_dated_rows(wh, wrapped, "customer_drift", "store_a", pd.Timestamp("2026-10-31").date())
    wrapped.thread.join(30)
    assert errors == [] and deleted > 0 and read == [wh.read_sql(f"SELECT count(*) AS n FROM {wh.qualified('customer_drift')}")["n"].iloc[0]]
    assert len(wh.date_partitions("customer_drift")) == 1  # 10-31's
    wh.dispose()


@pytest.mark.heavy
@pytest.mark.postgres
def test_analysts_queries_polling_through_a_run_never_fail(pg_url):
    """The README's analyst queries (and the partitioned tables' plain reads) polled in a loop for the whole length of
    a run of five dates with every flag on (each date creates partitions and drops yesterday's drift state)."""
    import threading

    from quimbi_pipeline_tests.test_analyst_queries import readme_queries, run_query

    validated = validate_orders(generate_demo(n_customers=300, n_stores=2, seed=15, end="2026-10-31").orders)
    wh = Warehouse(pg_url)
    run(validated, ["2026-10-25", "2026-10-26"], wh)
    queries = list(readme_queries().values()) + [
        f"SELECT count(*) FROM {wh.qualified(t)}" for t in ("customer_drift", "customer_axis_drift", "profile_snapshots",
                                                              "customer_outlier_flags", "customer_drift_anomalies")]
    stop, polls, errors = threading.Event(), [], []

    def poll():
        reader = Warehouse(pg_url, create=False)
        while not stop.is_set():
            for sql in queries:
                try:
                    run_query(reader, sql, {"store": "store_a", "day": "2026-10-28", "customer": "c0000001"})
                    polls.append(1)
                except Exception as exc:  # any error of a reader fails the test
                    errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        reader.dispose()

    pollers = [threading.Thread(target=poll) for _ in range(2)]
    for t in pollers:
        t.start()
    try:
        run(validated, ["2026-10-27", "2026-10-28", "2026-10-29", "2026-10-30", "2026-10-31"], wh)
    finally:
        stop.set()
        for t in pollers:
            t.join()
    wh.dispose()
    assert errors == [] and len(polls) > 100
