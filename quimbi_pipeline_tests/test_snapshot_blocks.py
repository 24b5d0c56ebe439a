"""Snapshot blocks: the columnar copy drift reads gives exactly the snapshot rows' values and the same drift."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from quimbi_pipeline.history.snapshot_blocks import (
    SnapshotColumns,
    decode_tables,
    encode_blocks,
    read_block,
)
from quimbi_pipeline.model.memberships import parse_memberships
from quimbi_pipeline.model.profiles import json_number, json_object
from quimbi_pipeline.run import run_drift_partition, run_profiles_partition
from quimbi_pipeline.settings import PipelineSettings, RetentionPolicy
from quimbi_pipeline.sources.demo import generate_demo
from quimbi_pipeline.sources.orders import validate_orders
from quimbi_pipeline.storage import Warehouse
from quimbi_pipeline.storage.snapshot_history import (
    BASE_COLUMNS,
    BlockCache,
    SnapshotHistoryReader,
    changed_customers,
    numeric_rows,
)

DAY = pd.Timestamp("2026-10-20")
START = pd.Timestamp("2026-10-05")  # a Monday: its weekly snapshot outlives the daily ones


def test_blocks_hold_exactly_the_numbers_the_json_parses_to():
    rng = np.random.default_rng(3)
    u = rng.dirichlet(np.ones(4), 1000)
    rounded = np.round(u, 6) + 0.0
    ids = pd.Index([f"c{i:05d}" for i in rng.permutation(1000)], name="customer_id")
    members = pd.DataFrame({f"value.s{j}": rounded[:, j] for j in range(4)}, index=ids)
    columns = SnapshotColumns(pd.DataFrame({"churn_risk_score": rng.random(1000), "archetype_name": "a, b"}, index=ids), members,
                              pd.DataFrame({"value.x": rng.random(1000)}, index=ids))
    blocks = encode_blocks(columns, 300)
    assert [b["n_customers"] for b in blocks] == [300, 300, 300, 100]
    decoded = decode_tables([read_block(b["memberships"]) for b in blocks], [DAY] * len(blocks))
    assert decoded["customer_id"].tolist() == sorted(ids)  # sorted by id across blocks
    text = json_object([("value", json_object([(f"s{j}", json_number(u[:, j])) for j in range(4)]))])
    parsed = parse_memberships(text).set_axis(ids).loc[decoded["customer_id"]]
    assert np.array_equal(decoded[list(parsed.columns)].to_numpy(), parsed.to_numpy())  # bit for bit
    with pytest.raises(ValueError, match="rounded to 6 decimals"):
        encode_blocks(SnapshotColumns(columns.base, members + 1e-9, columns.features), 300)


def _drift_tables(wh: Warehouse) -> dict[str, pd.DataFrame]:
    out = {}
    for table, key in (("customer_drift", ["customer_id", "window_days"]), ("customer_axis_drift", ["customer_id", "window_days", "axis"]),
                       ("customer_drift_anomalies", ["customer_id", "anomaly_type", "axis", "anomaly_date"]), ("population_drift", ["axis"])):
        frame = wh.read_sql(f"SELECT * FROM {wh.qualified(table)} WHERE store_id = 'store_a' AND as_of_date = :d", {"d": DAY.date()})
        out[table] = frame.astype(str).sort_values(key).reset_index(drop=True)
    return out


def test_drift_from_blocks_equals_drift_from_the_rows_and_prune_keeps_them_in_step(warehouse_url):
    demo = generate_demo(n_customers=400, n_stores=1, seed=21, change_share=0.3)
    validated = validate_orders(demo.orders)
    # Small blocks and slices: every slice boundary cuts through blocks of other dates. Change detection off:
    # its evidence is kept in the blocks only (the rows' JSON has none), the memberships and features are in both.
    settings = PipelineSettings(enable_temporal_snapshots=True, enable_drift_analysis=True, enable_adaptive_windows=False,
                                snapshot_block_customers=37, drift_chunk_customers=90, drift_windows=(7, 28))
    wh = Warehouse(warehouse_url)
    for day in pd.date_range(START, DAY, freq="3D"):
        assert not run_profiles_partition(validated, day, wh, settings).failed
    index = wh.snapshot_block_index("store_a", START, DAY)
    daily = wh.read_sql(f"SELECT snapshot_date, count(*) AS n FROM {wh.qualified('customer_profile_snapshots')} "
                        "WHERE snapshot_type = 'daily' GROUP BY snapshot_date ORDER BY 1")
    assert index.groupby("snapshot_date")["n_customers"].sum().tolist() == daily["n"].tolist()

    reader = SnapshotHistoryReader(wh, "store_a", START, DAY)
    assert reader.row_sources.empty and len(reader.slice_bounds(DAY, 90)) > 2
    from_blocks = pd.concat([reader.history(lo, hi) for lo, hi in zip([None, "c0000100", "c0000250"], ["c0000100", "c0000250", None])],
                            ignore_index=True)
    from_rows = numeric_rows(wh.snapshot_history("store_a", START, DAY))
    key = ["customer_id", "snapshot_date"]
    from_blocks, from_rows = (f.sort_values(key).reset_index(drop=True) for f in (from_blocks, from_rows))
    pd.testing.assert_frame_equal(from_blocks, from_rows[from_blocks.columns], check_dtype=False)

    (outcome,) = run_drift_partition(wh, DAY, settings, ["store_a"])
    assert outcome.ok and outcome.rows["customer_axis_drift"] > 0
    assert set(wh.read_sql(f"SELECT DISTINCT window_days FROM {wh.qualified('customer_drift')}")["window_days"]) == {7, 28}
    with_blocks = _drift_tables(wh)
    with wh.engine.begin() as conn:
        conn.exec_driver_sql(f"DELETE FROM {wh.qualified('snapshot_blocks')}")
    (outcome,) = run_drift_partition(wh, DAY, settings.model_copy(update={"drift_chunk_customers": 1000}), ["store_a"])
    assert outcome.ok
    for table, frame in _drift_tables(wh).items():
        pd.testing.assert_frame_equal(with_blocks[table], frame, obj=table)

    # Prune: a date's blocks go with its last calendar snapshot (the Monday keeps its weekly one).
    for day in pd.date_range(START, DAY, freq="3D"):
        assert not run_profiles_partition(validated, day, wh, settings).failed
    wh.prune_snapshots(RetentionPolicy(daily=7))
    kept = set(wh.snapshot_block_index("store_a", START, DAY)["snapshot_date"])
    calendar = set(pd.to_datetime(wh.read_sql(f"SELECT DISTINCT snapshot_date FROM {wh.qualified('customer_profile_snapshots')}")["snapshot_date"]))
    assert kept == calendar and START in kept and pd.Timestamp("2026-10-08") not in kept
    wh.dispose()


def test_a_runs_block_cache_reads_each_block_once_and_its_drift_is_the_drift_without_it(tmp_path):
    """A BlockCache over the drift of several dates: every date's window reads only the blocks no earlier date read,
    the history read through it is the history read without it, and so are the drift tables; blocks past its byte
    bound are not kept (and are read again when wanted); dates that left a reader's window are dropped."""
    validated = validate_orders(generate_demo(n_customers=300, n_stores=1, seed=21).orders)
    settings = PipelineSettings(enable_temporal_snapshots=True, enable_drift_analysis=True, snapshot_block_customers=50,
                                drift_windows=(7, 28))
    days = pd.date_range(DAY - pd.Timedelta(days=3), DAY)
    cached, plain = Warehouse(f"sqlite:///{tmp_path / 'cached.sqlite'}"), Warehouse(f"sqlite:///{tmp_path / 'plain.sqlite'}")
    for wh in (cached, plain):
        for day in pd.date_range(START, DAY, freq="2D").union(days):
            assert not run_profiles_partition(validated, day, wh, settings).failed
    cache = BlockCache()
    for day in days:
        assert all(o.ok for o in run_drift_partition(cached, day, settings, ["store_a"], blocks=cache))
        assert all(o.ok for o in run_drift_partition(plain, day, settings, ["store_a"]))
    for table, frame in _drift_tables(plain).items():
        pd.testing.assert_frame_equal(frame, _drift_tables(cached)[table], obj=table)
    # The four dates share population drift's reference (the oldest date in 28 days): its binned side is kept once.
    assert [key[1:3] for key in cache._kept] == [(START, "population reference")]
    blocks = cached.snapshot_block_index("store_a", START, DAY)
    assert 0 < cache.reads <= 2 * len(blocks) and cache.hits > cache.reads  # memberships and features of a block: once
    reads = cache.reads
    # The last date again: its whole window is held, nothing is read.
    assert all(o.ok for o in run_drift_partition(cached, days[-1], settings, ["store_a"], blocks=cache))
    assert cache.reads == reads

    tiny = BlockCache(max_bytes=cache.nbytes // 10)
    read = SnapshotHistoryReader(cached, "store_a", START, DAY, cache=tiny).history(with_features=True)
    first_reads, kept = tiny.reads, tiny.nbytes
    again = SnapshotHistoryReader(cached, "store_a", START, DAY, cache=tiny).history(with_features=True)
    assert 0 < kept <= tiny.max_bytes and tiny.nbytes == kept  # what fits is kept, nothing evicted
    assert 0 < tiny.hits and tiny.reads - first_reads == first_reads - tiny.hits  # the rest is read again
    pd.testing.assert_frame_equal(read, again)
    pd.testing.assert_frame_equal(read, SnapshotHistoryReader(cached, "store_a", START, DAY).history(with_features=True))
    # A reader of a later window drops the store's dates that left it.
    before = cache.nbytes
    SnapshotHistoryReader(cached, "store_a", DAY - pd.Timedelta(days=3), DAY, cache=cache)
    assert 0 < cache.nbytes < before and {key[1] for key in cache._tables} <= set(days) and not cache._kept
    cached.dispose()
    plain.dispose()


def test_a_runs_scored_blocks_give_the_rows_scoring_the_whole_history_gives(tmp_path):
    """The drift of a run's dates scores each date's blocks once with D's models (scored_history, the BlockCache keeping
    them); cut into slices that cut through blocks, the rows are bit for bit those of scoring the whole frame, and a
    later date's reader scores only what its window adds."""
    from quimbi_pipeline.drift.evidence import (
        block_memberships,
        models_tag,
        rescored_memberships,
        rescored_names,
    )
    from quimbi_pipeline.run.drift_partition import models_in_force

    validated = validate_orders(generate_demo(n_customers=300, n_stores=1, seed=21).orders)
    settings = PipelineSettings(enable_temporal_snapshots=True, enable_drift_analysis=True, snapshot_block_customers=37,
                                drift_windows=(7, 28))
    wh = Warehouse(f"sqlite:///{tmp_path / 'scored.sqlite'}")
    days = pd.date_range(DAY - pd.Timedelta(days=2), DAY)
    for day in pd.date_range(START, DAY, freq="3D").union(days):
        assert not run_profiles_partition(validated, day, wh, settings).failed
    models = models_in_force(wh, "store_a", DAY, settings)
    assert models
    score, tag = (lambda table: block_memberships(models, table)), models_tag(models)
    cache = BlockCache()
    calls = []
    counted = lambda table: calls.append(table.num_rows) or score(table)
    slices = list(zip([None, "c0000100", "c0000251"], ["c0000100", "c0000251", None]))
    for day in days:
        reader = SnapshotHistoryReader(wh, "store_a", START, day, cache=cache)
        calls.clear()
        for lo, hi in slices:
            frame, scored = reader.scored_history(lo, hi, counted, tag)
            assert scored is not None and scored.flags.f_contiguous
            full = SnapshotHistoryReader(wh, "store_a", START, day).history(lo, hi, with_features=True)
            names, whole = rescored_memberships(full, models)
            assert names == rescored_names(models)
            assert np.array_equal(scored, whole)  # bit for bit
            # The rows stand for the memberships and features: the frame keeps the rest (the evidence among it).
            kept = [c for c in full.columns if c in BASE_COLUMNS or c.startswith("f:change:")]
            assert any(c.startswith("f:change:") for c in kept)
            pd.testing.assert_frame_equal(frame, full[kept])
        if day == days[0]:
            scored_at_first = len(calls)
        else:  # only the new date's blocks were scored
            assert 0 < len(calls) < scored_at_first and len(calls) == len(reader.blocks[day])
    # Population drift's frames of a date: its rows held already, the same floats.
    calls.clear()
    frame, scored = reader.scored_population_frame(DAY, counted, tag)
    assert not calls and np.array_equal(scored, rescored_memberships(frame, models)[1])
    pd.testing.assert_frame_equal(frame, SnapshotHistoryReader(wh, "store_a", START, DAY).population_frame(DAY))
    # A block that cannot be scored alone (a feature missing): no rows, the caller scores the whole frame.
    frame, scored = SnapshotHistoryReader(wh, "store_a", START, DAY).scored_history(None, None, lambda table: None, tag)
    assert scored is None and len(frame)
    wh.dispose()


def test_the_anomalies_of_the_customers_whose_evidence_moved_are_the_anomalies_of_all(tmp_path):
    """A backfill's earlier dates compute anomalies only, and with change evidence every anomaly needs a change new at
    one of the customer's snapshots: scored_history(changed_at=D) reads only the customers whose evidence moved in the
    window. Their anomalies are those of the whole history, row for row, on every date; the others are left out."""
    from quimbi_pipeline.drift import measures
    from quimbi_pipeline.drift.evidence import (
        block_memberships,
        models_tag,
        rescored_memberships,
    )
    from quimbi_pipeline.evaluation.young_signals import young_planted
    from quimbi_pipeline.run.drift_partition import (
        history_from_snapshots,
        models_in_force,
    )

    data, as_of = young_planted(300, 4, seed=0)  # stoppers and 4-fold value rises: anomalies within weeks
    validated = validate_orders(data.orders)
    store = str(data.orders["store_id"].iloc[0])
    settings = PipelineSettings(enable_temporal_snapshots=True, enable_drift_analysis=True, snapshot_block_customers=70,
                                drift_windows=(7, 28))
    wh = Warehouse(f"sqlite:///{tmp_path / 'changed.sqlite'}")
    days = pd.date_range(as_of - pd.Timedelta(days=34), as_of, freq="2D")
    for day in days:
        assert not run_profiles_partition(validated, day, wh, settings).failed
    cache, found, left_out = BlockCache(), 0, 0
    for day in days[3:]:
        models = models_in_force(wh, store, day, settings)
        score, tag = (lambda table, m=models: block_memberships(m, table)), models_tag(models)
        reader = SnapshotHistoryReader(wh, store, day - pd.Timedelta(days=measures.ANOMALY_HISTORY_DAYS), day, cache=cache)
        frame, scored = reader.scored_history(None, None, score, tag, changed_at=day)
        full = reader.history(None, None, with_features=True)
        expected = measures.anomalies_at(history_from_snapshots(full, rescored_memberships(full, models)), day)
        produced = (measures.anomalies_at(history_from_snapshots(frame, (rescored_memberships(full, models)[0], scored)), day)
                    if len(frame) else expected.iloc[:0])
        pd.testing.assert_frame_equal(produced, expected)
        found += len(expected)
        at_day = full["snapshot_date"] == day
        left_out += int(at_day.sum()) - int((frame["snapshot_date"] == day).sum())
    assert found > 0 and left_out > 0, (found, left_out)
    # Without change evidence every customer stays.
    plain = {day: pa.table({"customer_id": ["a", "b"], "x": [1.0, 2.0]}) for day in days[:2]}
    assert changed_customers(plain, days[1]) is None
    wh.dispose()


def test_changed_customers_compares_each_date_with_the_last():
    """A since that differs, appears or goes on another date marks the customer; equal values and nulls on both do not;
    a customer missing from the other date is compared on the dates it has."""
    d0, d1, d2 = pd.Timestamp("2026-10-01"), pd.Timestamp("2026-10-02"), pd.Timestamp("2026-10-03")
    since = "f:change:purchase_value.since"

    def table(ids, value_since, basket_since=None):
        columns = {"customer_id": ids, since: value_since, "f:change:purchase_value.before": [1.0] * len(ids),
                   "f:change:purchase_value.after": [2.0] * len(ids)}
        if basket_since is not None:
            columns |= {"f:change:basket_size.since": basket_since, "f:change:basket_size.before": [1.0] * len(ids),
                        "f:change:basket_size.after": [2.0] * len(ids)}
        return pa.table(columns)

    tables = {d0: table(["a", "b", "c", "e"], [5.0, None, 7.0, 9.0]), d1: table(["a", "b", "c", "d"], [5.0, None, 8.0, 1.0]),
              d2: table(["a", "b", "c", "d", "e"], [5.0, None, 8.0, None, 9.0], [None, None, None, None, 3.0])}
    assert changed_customers(tables, d2).tolist() == [False, False, True, True, True]
    # A since without its before and after is no evidence drift reads: no filter.
    assert changed_customers({d0: tables[d0], d1: pa.table({"customer_id": ["a"], since: [5.0]})}, d1) is None
