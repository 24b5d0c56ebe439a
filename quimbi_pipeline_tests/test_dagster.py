"""The Dagster layer: definitions load, the asset materializes with metadata and checks, bad stores are isolated."""

import dagster as dg

from quimbi_pipeline.definitions import defs
from quimbi_pipeline.defs.profiles.assets import (
    COVERAGE_CHECK,
    MEMBERSHIPS_CHECK,
    PROFILES_KEY,
    STORES_CHECK,
    daily_profiles,
)
from quimbi_pipeline.defs.profiles.jobs import DAILY_PIPELINE_JOB
from quimbi_pipeline.defs.resources import OrdersResource, WarehouseResource
from quimbi_pipeline.storage import Warehouse


def test_definitions_load_with_job_and_checks():
    job = defs.resolve_job_def(DAILY_PIPELINE_JOB)
    assert job.partitions_def is not None
    graph = defs.resolve_asset_graph()
    assert dg.AssetKey("customer_profiles") in graph.get_all_asset_keys()
    checks = {k.name for k in graph.asset_check_keys}
    assert {MEMBERSHIPS_CHECK, COVERAGE_CHECK} <= checks


def materialize(orders_uri, warehouse_url, partition, run_config=None, assets=(daily_profiles,)):
    return dg.materialize(
        list(assets),
        partition_key=partition,
        resources={"warehouse": WarehouseResource(url=warehouse_url), "orders_source": OrdersResource(uri=orders_uri)},
        instance=dg.DagsterInstance.ephemeral(),
        run_config=run_config,
        raise_on_error=False,
    )


def test_materialize_partition_records_metadata_and_passing_checks(tmp_path, warehouse_url):
    result = materialize("demo:customers=600,stores=2,seed=4", warehouse_url, "2026-10-31")
    assert result.success
    md = next(m for m in result.asset_materializations_for_node("daily_profiles") if m.asset_key == PROFILES_KEY).metadata
    assert md["rows"].value > 0 and md["stores_failed"].value == 0
    assert {"customers/store_a", "k/purchase_frequency/store_a", "silhouette/purchase_value/store_b"} <= set(md)
    assert any(k.startswith("archetype_share/store_a/") for k in md)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {MEMBERSHIPS_CHECK: True, COVERAGE_CHECK: True, STORES_CHECK: True, "snapshots_cover_active_customers": True,
                      "snapshot_keys_unique": True}
    assert len(Warehouse(warehouse_url).profiles(profile_date="2026-10-31")) == md["rows"].value


def test_one_bad_store_fails_the_run_but_not_the_other_stores(tmp_path, sqlite_url):
    from quimbi_pipeline.sources.demo import generate_demo

    orders = generate_demo(n_customers=400, n_stores=2, seed=4).orders
    orders["order_ts"] = orders["order_ts"].astype(str)
    bad_row = orders.index[orders["store_id"] == "store_b"][5]
    orders.loc[bad_row, "order_ts"] = "yesterday-ish"
    path = tmp_path / "orders.csv"
    orders.to_csv(path, index=False)
    result = materialize(str(path), sqlite_url, "2026-10-31")
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "1 store(s) failed: store_b" in failure.step_failure_data.error.message
    assert "quimbi run --stores store_b" in failure.step_failure_data.error.message
    assert "store_b" in failure.step_failure_data.user_failure_data.metadata
    assert "unparseable timestamp" in failure.step_failure_data.user_failure_data.metadata["store_b"].value
    written = Warehouse(sqlite_url).profiles()
    assert set(written["store_id"]) == {"store_a"}


def test_run_config_selects_stores(sqlite_url):
    result = materialize("demo:customers=400,stores=3,seed=4", sqlite_url, "2026-10-31",
                         run_config={"ops": {"daily_profiles": {"config": {"stores": ["store_c"]}}}})
    assert result.success
    assert set(Warehouse(sqlite_url).profiles()["store_id"]) == {"store_c"}


def test_bad_config_value_fails_before_any_work(sqlite_url):
    result = materialize("demo:customers=100", sqlite_url, "2026-10-31",
                         run_config={"ops": {"daily_profiles": {"config": {"min_k": 5, "max_k": 3}}}})
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "min_k (5) must be <= max_k (3)" in str(failure.step_failure_data.error.cause)
    assert Warehouse(sqlite_url).profiles().empty


def materialize_day_with_drift(orders_uri, warehouse_url, partition):
    from quimbi_pipeline.defs.drift.assets import daily_drift

    return materialize(orders_uri, warehouse_url, partition, assets=(daily_profiles, daily_drift))


def test_drift_step_materializes_with_the_flag_and_zero_rows_without(sqlite_url, monkeypatch):
    from quimbi_pipeline.defs.drift.assets import (
        DRIFT_KEYS,
        DRIFT_RANGE_CHECK,
        DRIFT_STEP,
    )

    uri = "demo:customers=300,stores=2,seed=4"
    monkeypatch.setenv("ENABLE_TEMPORAL_SNAPSHOTS", "1")
    off = materialize_day_with_drift(uri, sqlite_url, "2026-10-30")
    # Every output materializes when the step succeeds (a UI backfill of all assets ends successful), with 0 rows and a note.
    assert off.success
    assert {m.asset_key: m.metadata["rows"].value for m in off.asset_materializations_for_node(DRIFT_STEP)} == {k: 0 for k in DRIFT_KEYS.values()}
    assert "ENABLE_DRIFT_ANALYSIS is off" in off.asset_materializations_for_node(DRIFT_STEP)[0].metadata["note"].value
    monkeypatch.setenv("ENABLE_DRIFT_ANALYSIS", "1")
    on = materialize_day_with_drift(uri, sqlite_url, "2026-10-31")
    assert on.success
    by_key = {m.asset_key: m.metadata for m in on.asset_materializations_for_node(DRIFT_STEP)}
    assert set(by_key) == set(DRIFT_KEYS.values())
    assert by_key[DRIFT_KEYS["customer_drift"]]["rows"].value > 0
    assert any(k.startswith("segment_share_shift/store_a/") for k in by_key[DRIFT_KEYS["population_drift"]])
    assert {e.check_name: e.passed for e in on.get_asset_check_evaluations()}[DRIFT_RANGE_CHECK]


def test_drift_brings_snapshots_and_an_explicit_snapshots_off_skips_drift_with_one_warning(sqlite_url, monkeypatch, caplog):
    from quimbi_pipeline.defs.drift.assets import DRIFT_STEP

    monkeypatch.setenv("ENABLE_DRIFT_ANALYSIS", "1")
    on = materialize_day_with_drift("demo:customers=100", sqlite_url, "2026-10-31")
    assert on.success
    wh = Warehouse(sqlite_url)
    assert len(wh.read_sql("SELECT * FROM customer_profile_snapshots")) > 0  # snapshots came with drift
    monkeypatch.setenv("ENABLE_TEMPORAL_SNAPSHOTS", "false")  # the operator's rollback of one flag
    off = materialize_day_with_drift("demo:customers=100", sqlite_url, "2026-10-30")
    assert off.success
    assert all(m.metadata["rows"].value == 0 for m in off.asset_materializations_for_node(DRIFT_STEP))
    assert wh.read_sql("SELECT count(*) AS n FROM customer_profile_snapshots WHERE snapshot_date = '2026-10-30'")["n"].iloc[0] == 0
    warnings = [r.getMessage() for r in caplog.records if "ENABLE_TEMPORAL_SNAPSHOTS is off" in r.getMessage()]
    assert len(warnings) == 1 and "drift is skipped" in warnings[0]
