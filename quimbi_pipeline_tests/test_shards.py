"""A store split into shards (run/shards.py): shard runs side by side leave the tables one run of the store leaves, on
both databases; its drift waits for every shard; the schedule and the sensor launch what each needs."""

from __future__ import annotations

import concurrent.futures
import multiprocessing

import numpy as np
import pandas as pd
import pytest

from quimbi_pipeline.defs.drift.shards import drift_run_requests
from quimbi_pipeline.defs.profiles.schedules import SHARD_ASSETS, run_requests_for
from quimbi_pipeline.run import run_profiles_partition
from quimbi_pipeline.run.drift_partition import run_drift_partition
from quimbi_pipeline.run.sharded_store import shard_index
from quimbi_pipeline.run.shards import plan_shards, sample_keys
from quimbi_pipeline.settings import PipelineSettings, StoreSettings
from quimbi_pipeline.sources.demo import generate_demo
from quimbi_pipeline.sources.orders import validate_orders
from quimbi_pipeline.sources.store_part import in_customer_range
from quimbi_pipeline.storage import Warehouse, drop_postgres_schema

DATES = ("2026-10-24", "2026-10-31")
SHARDS = 4
SETTINGS = PipelineSettings(enable_drift_analysis=True, enable_outlier_detection=True, store_shards=SHARDS, shard_sample_customers=1000)
# The tables a run writes, each read whole in key order; times of writing left out.
TABLES = {
    "customer_profiles": "store_id, customer_id", "profile_snapshots": "store_id, customer_id, snapshot_date",
    "snapshot_blocks": "store_id, snapshot_date, block", "snapshot_layouts": "store_id, layout_id, kind, position",
    "snapshot_archetypes": "store_id, layout_id, dominant_positions", "customer_outlier_flags": "store_id, customer_id, flag_date, method",
    "outlier_rates": "store_id, flag_date, method", "segment_models": "store_id, model_version, axis",
    "customer_drift": "store_id, customer_id, as_of_date, window_days", "customer_drift_anomalies": "store_id, customer_id, as_of_date, axis, anomaly_type",
    "population_drift": "store_id, as_of_date, axis", "store_shards": "store_id, as_of_date, shard",
}


def _validated():
    return validate_orders(generate_demo(n_customers=2500, n_stores=1, seed=5).orders)


def _shard_run(url: str, day: str, shard: int) -> list[tuple]:
    """One shard's run of a date in a process of its own, as a run launcher's would be."""
    warehouse = Warehouse(url)
    try:
        return [(o.ok, o.error, o.n_profiles) for o in run_profiles_partition(_validated(), day, warehouse, SETTINGS, shard=shard).outcomes]
    finally:
        warehouse.dispose()


def _tables(url: str) -> dict[str, pd.DataFrame]:
    warehouse = Warehouse(url)
    try:
        return {table: warehouse.read_sql(f"SELECT * FROM {warehouse.qualified(table)} ORDER BY {key}").drop(columns=["written_at"], errors="ignore")
                for table, key in TABLES.items()}
    finally:
        warehouse.dispose()


def _fresh(url: str, tmp_path, name: str) -> str:
    if url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / name}"
    drop_postgres_schema(url)
    return url


def test_shard_runs_side_by_side_leave_the_tables_of_one_run(warehouse_url, tmp_path):
    validated = _validated()
    one = _fresh(warehouse_url, tmp_path, "one.sqlite")
    warehouse = Warehouse(one)
    for day in DATES:
        assert all(o.ok for o in run_profiles_partition(validated, day, warehouse, SETTINGS).outcomes)
        assert all(o.ok for o in run_drift_partition(warehouse, day, SETTINGS))
    warehouse.dispose()
    expected = _tables(one)

    apart = _fresh(warehouse_url, tmp_path, "apart.sqlite")
    with concurrent.futures.ProcessPoolExecutor(SHARDS, mp_context=multiprocessing.get_context("spawn")) as pool:
        for day in DATES:
            # Shard 1 is written last: it alone writes the models, and the date waits for it.
            results = list(pool.map(_shard_run, [apart] * SHARDS, [day] * SHARDS, [3, 2, 1, 0]))
            assert all(ok and error is None and n > 0 for found in results for ok, error, n in found), results
            warehouse = Warehouse(apart)
            assert warehouse.shards_missing("store_a", day, SHARDS) is None
            assert all(o.ok for o in run_drift_partition(warehouse, day, SETTINGS))
            warehouse.dispose()
    found = _tables(apart)
    assert len(expected["customer_profiles"]) > 2000 and len(expected["customer_drift"]) > 0 and len(expected["population_drift"]) > 0
    assert expected["store_shards"]["shard"].tolist() == [0, 1, 2, 3] * len(DATES)
    assert expected["snapshot_blocks"]["block"].tolist() == [0, 1_000_000, 2_000_000, 3_000_000] * len(DATES)  # one block per shard
    for table in TABLES:
        pd.testing.assert_frame_equal(found[table], expected[table], check_exact=True, obj=table)


def test_a_sharded_store_s_drift_waits_for_every_shard(warehouse):
    validated = _validated()
    day = DATES[0]
    for shard in (0, 2, 3):
        assert all(o.ok for o in run_profiles_partition(validated, day, warehouse, SETTINGS, shard=shard).outcomes)
    assert warehouse.shards_missing("store_a", day, SHARDS) == f"shard(s) 2 of {SHARDS} not written"
    assert warehouse.read_sql(f"SELECT * FROM {warehouse.qualified('outlier_rates')}").empty  # the rates are the whole store's
    waiting = run_drift_partition(warehouse, day, SETTINGS)
    assert not waiting[0].ok and "waits for the store's shards: shard(s) 2 of 4 not written" in waiting[0].error
    assert drift_run_requests(warehouse, warehouse.shard_dates_written_since(None), StoreSettings({"store_shards": SHARDS, "enable_drift_analysis": True})) == []
    assert all(o.ok for o in run_profiles_partition(validated, day, warehouse, SETTINGS, shard=1).outcomes)
    rates = warehouse.read_sql(f"SELECT * FROM {warehouse.qualified('outlier_rates')} WHERE method = 'density'")
    assert rates["customers"].tolist() == [len(warehouse.profiles("store_a"))]
    requests = drift_run_requests(warehouse, warehouse.shard_dates_written_since(None), StoreSettings({"store_shards": SHARDS, "enable_drift_analysis": True}))
    assert [(r.partition_key, r.run_config["ops"]["daily_drift"]["config"]["stores"]) for r in requests] == [(day, ["store_a"])]
    assert requests[0].run_key.startswith(f"drift:store_a:{day}:")
    assert all(o.ok for o in run_drift_partition(warehouse, day, SETTINGS))


def test_a_shard_of_a_store_without_shards_or_past_its_count_is_refused(warehouse):
    validated = _validated()
    outcome = run_profiles_partition(validated, DATES[0], warehouse, PipelineSettings(), shard=0).outcomes[0]
    assert not outcome.ok and outcome.error.startswith("no shard 1: the store has 1 (QUIMBI_STORE_SHARDS)")
    outcome = run_profiles_partition(validated, DATES[0], warehouse, SETTINGS, shard=SHARDS).outcomes[0]
    assert not outcome.ok and outcome.error.startswith(f"no shard {SHARDS + 1}: the store has {SHARDS}")
    with pytest.raises(ValueError, match="a number from 1"):
        shard_index("0")
    assert (shard_index("2/4"), shard_index(3), shard_index(None)) == (1, 2, None)


def test_the_plan_is_the_same_for_any_order_of_ids_and_its_ranges_cover_every_id():
    ids = np.array([f"cust-{i}" for i in range(5000)] + ["é-1", "Z", "a"], dtype=object)
    plan = plan_shards(ids, 3, 1000)
    again = plan_shards(np.random.default_rng(1).permutation(ids), 3, 1000)
    assert plan.bounds == again.bounds and np.array_equal(plan.sample, again.sample) and plan.sample.size == 1000
    shard_of = np.zeros(ids.size, dtype=int)
    for k in range(3):
        lo, hi = plan.shard(k).customer_range
        inside = np.array([(lo is None or i >= lo) and (hi is None or i < hi) for i in ids])
        assert np.array_equal(inside, in_customer_range(pd.Series(ids, dtype="string"), (lo, hi))) and inside.sum() > 1000
        shard_of += inside
    assert (shard_of == 1).all()  # every id in exactly one shard
    assert sample_keys(np.array(["c1"], dtype=object))[0] == 0xA9F7E979  # md5("c1")'s first 4 bytes, as PostgreSQL's substr(md5(...), 1, 8)


def test_the_schedule_runs_each_shard_of_a_sharded_store_apart():
    requests = run_requests_for("2026-10-31", ["a", "b", "big", "c"], 2, {"big": 3})
    batches = [r for r in requests if "quimbi/store_batch" in r.tags]
    shards = [r for r in requests if "quimbi/store_shard" in r.tags]
    assert [r.run_config["ops"]["daily_profiles"]["config"]["stores"] for r in batches] == [["a", "b"], ["c"]]
    assert [r.run_config["ops"]["daily_profiles"]["config"] for r in shards] == [{"stores": ["big"], "shard": k} for k in (1, 2, 3)]
    assert all(r.asset_selection == SHARD_ASSETS and "daily_drift" not in r.run_config["ops"] for r in shards)
    assert len({r.run_key for r in requests}) == len(requests)


def test_shard_runs_and_the_sensor_s_drift_run_through_dagster(sqlite_url, tmp_path, monkeypatch):
    """What the schedule launches for a sharded store, run as Dagster runs: a run per shard (profiles only), then the
    sensor's drift run once the date is whole; a shard of two stores is refused before any work."""
    import dagster as dg

    from quimbi_pipeline.defs.drift.assets import daily_drift
    from quimbi_pipeline.defs.drift.shards import sharded_store_drift_sensor
    from quimbi_pipeline.defs.profiles.assets import daily_profiles
    from quimbi_pipeline.defs.resources import OrdersResource, WarehouseResource

    path = tmp_path / "orders.csv"
    generate_demo(n_customers=2500, n_stores=1, seed=5).orders.to_csv(path, index=False)
    for name, value in {"ENABLE_DRIFT_ANALYSIS": "1", "QUIMBI_STORE_SHARDS": "2", "QUIMBI_SHARD_SAMPLE_CUSTOMERS": "1000", "QUIMBI_DRIFT_WINDOWS": "7"}.items():
        monkeypatch.setenv(name, value)
    resources = {"warehouse": WarehouseResource(url=sqlite_url), "orders_source": OrdersResource(uri=str(path))}
    instance = dg.DagsterInstance.ephemeral()
    day = DATES[1]
    earlier = Warehouse(sqlite_url)  # the week before, for the drift of D to measure against (both shards, one run)
    assert all(o.ok for o in run_profiles_partition(validate_orders(pd.read_csv(path)), DATES[0], earlier, StoreSettings()).outcomes)
    earlier.dispose()

    def shard_run(shard: int, stores=("store_a",)):
        return dg.materialize([daily_profiles, daily_drift], partition_key=day, resources=resources, instance=instance, selection=SHARD_ASSETS,
                              run_config={"ops": {"daily_profiles": {"config": {"stores": list(stores), "shard": shard}}}}, raise_on_error=False)

    tick = dg.build_sensor_context(resources={"warehouse": resources["warehouse"]})
    assert [r.partition_key for r in sharded_store_drift_sensor(tick)] == [DATES[0]]  # its shards are all written
    assert shard_run(1).success
    tick = dg.build_sensor_context(resources={"warehouse": resources["warehouse"]}, cursor=tick.cursor)
    assert isinstance(sharded_store_drift_sensor(tick), dg.SkipReason)  # D waits for its second shard
    refused = shard_run(2, ("store_a", "store_b"))
    assert not refused.success and "a shard belongs to one store" in str(refused.get_step_failure_events()[0].event_specific_data.error)
    assert shard_run(2).success
    requests = sharded_store_drift_sensor(dg.build_sensor_context(resources={"warehouse": resources["warehouse"]}, cursor=tick.cursor))
    assert [r.partition_key for r in requests] == [day]
    drift = dg.materialize([daily_profiles, daily_drift], partition_key=day, resources=resources, instance=instance,
                           selection=requests[0].asset_selection, run_config=requests[0].run_config)
    assert drift.success
    warehouse = Warehouse(sqlite_url)
    assert len(warehouse.read_sql("SELECT * FROM customer_drift")) > 2000
    warehouse.dispose()


@pytest.mark.parametrize("kind", ["parquet", "csv", "sql"])
def test_a_shard_s_rows_read_alone_are_those_the_whole_source_gives_it(kind, warehouse_url, tmp_path):
    """store_part.py: the store's customer ids, and the rows of a shard's range and the sample, read from a Parquet file
    (an Arrow scan), a sql: table (the filter in the query) or a CSV (read whole and cut), are what validating the whole
    source gives those customers; blanks around ids and a row without a store id (the default store) included."""
    from quimbi_pipeline.run.sharded_store import load_shard_orders
    from quimbi_pipeline.sources.orders import DEFAULT_STORE, load_orders
    from quimbi_pipeline.sources.store_part import store_customer_ids

    raw = generate_demo(n_customers=5000, n_stores=2, seed=8).orders
    raw["customer_id"] = raw["customer_id"].astype(str)
    raw.loc[raw.index[::7], "customer_id"] = "  " + raw.loc[raw.index[::7], "customer_id"] + " "
    raw["store_id"] = raw["store_id"].astype(object)
    raw.loc[raw["store_id"] == "store_b", "store_id"] = None  # store_b's rows: the default store's
    raw["order_ts"] = raw["order_ts"].astype(str)
    if kind == "sql":
        warehouse = Warehouse(warehouse_url)
        raw.to_sql("shard_orders", warehouse.engine, schema="platform" if warehouse.is_postgres else None, index=False, if_exists="replace")
        warehouse.dispose()
        uri = "sql:shard_orders"
    else:
        uri = str(tmp_path / f"orders.{kind}")
        raw.to_parquet(uri, index=False) if kind == "parquet" else raw.to_csv(uri, index=False)
    whole = load_orders(uri, warehouse_url=warehouse_url).orders
    settings = PipelineSettings(store_shards=3, shard_sample_customers=1000)
    for store in ("store_a", DEFAULT_STORE):
        of_store = whole[whole["store_id"] == store]
        ids = store_customer_ids(uri, store, warehouse_url)
        assert ids.tolist() == sorted(of_store["customer_id"].unique())
        for shard in range(3):
            validated, plan = load_shard_orders(uri, store, shard, settings, warehouse_url)
            lo, hi = plan.shard(shard).customer_range
            wanted = of_store[of_store["customer_id"].isin(set(plan.sample)) | of_store["customer_id"].map(
                lambda c: (lo is None or c >= lo) and (hi is None or c < hi))]
            key = ["order_id"]
            pd.testing.assert_frame_equal(validated.orders.sort_values(key, ignore_index=True)[list(whole.columns)],
                                          wanted.sort_values(key, ignore_index=True), check_dtype=False)
            assert 0 < len(validated.orders) < len(of_store)


@pytest.mark.postgres
def test_the_sample_keys_are_what_postgresql_computes_from_the_ids(pg_url):
    """A source could pick a store's sample itself: PostgreSQL's ('x' || substr(md5(id), 1, 8))::bit(32)::bigint is the key."""
    ids = np.array(["c1", "k3-c0004521", "é-ü", " padded"], dtype=object)
    warehouse = Warehouse(pg_url)
    try:
        found = [warehouse.fetch_rows("SELECT ('x' || substr(md5(:c), 1, 8))::bit(32)::bigint AS k", {"c": c})[0]["k"] for c in ids]
    finally:
        warehouse.dispose()
    assert found == sample_keys(ids).tolist()


@pytest.mark.postgres
def test_two_writers_inserting_the_same_new_keys_in_different_orders_never_deadlock(pg_url):
    """Warehouse.insert_new beside another transaction inserting the same keys (the archetypes of a store's shards, written
    side by side): one writer holds key 1 and then wants key 2, while the other inserts [2, 1]. In that order the second
    held 2 and waited for 1 (PostgreSQL: deadlock detected, a shard failed in the suite); in key order it waits at 1."""
    import threading
    import time

    import sqlalchemy as sa

    from quimbi_pipeline.storage.snapshot_tables import snapshot_archetypes

    wh = Warehouse(pg_url)

    def row(positions: str) -> dict:
        return {"store_id": "s", "layout_id": 1, "dominant_positions": positions, "archetype_id": positions, "archetype_level": 1,
                "archetype_name": positions}

    errors = []
    with wh.engine.connect() as first:
        wh.insert_new(first, snapshot_archetypes, [row("1")])

        def other():
            try:
                with wh.engine.begin() as second:
                    wh.insert_new(second, snapshot_archetypes, [row("2"), row("1")])
            except sa.exc.DBAPIError as exc:  # deadlock detected: the assertion below names it
                errors.append(exc)

        writer = threading.Thread(target=other)
        writer.start()
        time.sleep(0.5)  # the other writer is waiting now (at key 1 in key order; at 1 after taking 2 in its own)
        try:
            wh.insert_new(first, snapshot_archetypes, [row("2")])
            first.commit()
        except sa.exc.DBAPIError as exc:
            errors.append(exc)
        writer.join(30)
    assert not errors, errors
    assert sorted(wh.read_sql(f"SELECT dominant_positions FROM {wh.qualified('snapshot_archetypes')} WHERE store_id = 's'")["dominant_positions"]) == ["1", "2"]
    wh.dispose()
