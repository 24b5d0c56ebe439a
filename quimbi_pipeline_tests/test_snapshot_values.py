"""Snapshot rows store their JSON objects as value arrays in a layout (snapshot_values.py): the arrays give the
profile's JSON back byte for byte, and every reader (the analysts' views on both databases, the history reads,
the drift's row reads) sees the profile's objects."""

import json

import numpy as np
import pandas as pd
import pytest

from quimbi_pipeline.history.json_text import (
    float_text,
    json_nested_object,
    json_number,
    json_object,
)
from quimbi_pipeline.history.snapshot_values import (
    SnapshotLayout,
    archetype_dictionary,
    expand_values,
    layout_id,
    row_objects,
    values_from_json,
)
from quimbi_pipeline.model.profiles import build_store_profiles
from quimbi_pipeline.run import run_profiles_partition
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.sources.demo import generate_demo
from quimbi_pipeline.sources.orders import orders_as_of, validate_orders
from quimbi_pipeline.storage import Warehouse

DAY = pd.Timestamp("2026-10-31")
SETTINGS = PipelineSettings(enable_temporal_snapshots=True)


@pytest.fixture(scope="module")
def store():
    validated = validate_orders(generate_demo(n_customers=400, n_stores=1, seed=11, end="2026-10-31").orders)
    return validated, build_store_profiles(orders_as_of(validated.orders, DAY), "store_a", DAY, SETTINGS, validated.optional_columns)


def test_the_arrays_give_the_profiles_json_back_byte_for_byte(store):
    _, result = store
    profiles, values = result.profiles, result.snapshot_values
    assert values.frame["customer_id"].tolist() == profiles["customer_id"].tolist()
    first = json.loads(profiles["fuzzy_memberships"].iloc[0])
    assert values.layout.memberships == tuple((a, n) for a, segments in first.items() for n in segments)
    expanded = expand_values(values.frame, values.layout)
    for column, text in expanded.items():
        assert text.tolist() == profiles[column].astype(str).tolist(), column
    # The same values when they are read off the JSON text instead (a migration's path, a write without them).
    from_json = values_from_json(profiles)
    assert from_json.layout == values.layout
    pd.testing.assert_frame_equal(from_json.frame.astype(str), values.frame.astype(str))


def test_nulls_and_small_numbers_keep_their_text():
    profiles = pd.DataFrame({
        "customer_id": ["c1", "c2"],
        "dominant_segments": ['{"f": "low", "v": "b"}', '{"f": "high", "v": "a"}'],
        "fuzzy_memberships": ['{"f": {"low": 0.9, "high": 0.1}, "v": {"a": 1e-06, "b": 0.999999}}',
                              '{"f": {"low": 0.0, "high": 1.0}, "v": {"a": 0.5, "b": 0.5}}'],
        "behavioral_features": ['{"f": {"gap": null, "n": 3.0}}', '{"f": {"gap": 12.5, "n": 1.0}}'],
        "model_version": ["kmeans-2026-10-31"] * 2,
    })
    values = values_from_json(profiles)
    assert values.frame["membership_values"].tolist() == ["[0.9,0.1,1e-06,0.999999]", "[0.0,1.0,0.5,0.5]"]
    assert values.frame["feature_values"].tolist() == ["[null,3.0]", "[12.5,1.0]"]
    assert values.frame["dominant_positions"].tolist() == ["[0,3]", "[1,2]"]
    for column, text in expand_values(values.frame, values.layout).items():
        assert text.tolist() == profiles[column].tolist()
    for i in (0, 1, 0):  # the second read of a row's dominant segments comes from the layout's cache
        objects = row_objects(values.layout, values.frame.iloc[i], ("dominant_segments", "fuzzy_memberships", "behavioral_features"))
        assert objects == {c: json.loads(profiles[c].iloc[i]) for c in objects}
    objects["dominant_segments"]["f"] = "changed"  # a caller's copy, not the cache
    assert row_objects(values.layout, values.frame.iloc[0], ("dominant_segments",))["dominant_segments"] == {"f": "low", "v": "b"}
    with pytest.raises(ValueError, match="hold 3 values, the layout 4"):
        row_objects(values.layout, {"membership_values": "[0.5,0.5,1.0]"}, ("fuzzy_memberships",))
    with pytest.raises(ValueError, match="axis 'f' is not contiguous"):
        _ = SnapshotLayout((("f", "low"), ("v", "a"), ("f", "high")), (), "m").membership_spans
    assert SnapshotLayout.from_rows(values.layout.rows().sample(frac=1, random_state=0)) == values.layout
    assert layout_id(values.layout) == layout_id(SnapshotLayout.from_rows(values.layout.rows()))  # the id is the contents'
    assert layout_id(values.layout) != layout_id(values_from_json(profiles.assign(model_version="kmeans-2026-11-28")).layout)
    with pytest.raises(ValueError, match="do not have the layout's 2 values"):
        values_from_json(profiles.assign(behavioral_features=['{"f": {"gap": 1.0, "n": 3.0}}', '{"f": {"gap": 1.0}}']))
    with pytest.raises(ValueError, match="name 2 model versions"):
        values_from_json(profiles.assign(model_version=["kmeans-2026-10-31", "kmeans-2026-10-30"]))
    # The archetype is a function of the dominant segments: kept once per set of them.
    named = profiles.assign(archetype_id=["a1", "a2"], archetype_level=[2, 4], archetype_name=["low, b", "high, a"])
    assert archetype_dictionary(values.frame["dominant_positions"], named).to_dict("records") == [
        {"dominant_positions": "[0,3]", "archetype_id": "a1", "archetype_level": 2, "archetype_name": "low, b"},
        {"dominant_positions": "[1,2]", "archetype_id": "a2", "archetype_level": 4, "archetype_name": "high, a"}]
    with pytest.raises(ValueError, match="names two archetypes"):
        archetype_dictionary(pd.Series(["[0,3]", "[0,3]"]), named)


def test_every_reader_sees_the_profiles_objects(warehouse_url, store):
    validated, _ = store
    wh = Warehouse(warehouse_url)
    assert not run_profiles_partition(validated, DAY, wh, SETTINGS).failed
    profiles = wh.profiles("store_a").set_index("customer_id")
    canonical = {c: profiles[c] for c in ("dominant_segments", "fuzzy_memberships", "behavioral_features")}

    def same_objects(frame: pd.DataFrame, columns) -> None:
        for column in columns:
            got = [json.dumps(v if not isinstance(v, str) else json.loads(v), sort_keys=True) for v in frame[column]]
            assert got == canonical[column].loc[frame["customer_id"].astype(str)].tolist(), column

    view = wh.read_sql(f"SELECT * FROM {wh.qualified('customer_profile_snapshots')} WHERE snapshot_type = 'daily'")
    assert len(view) == len(profiles)
    same_objects(view, canonical)
    scalars = ["archetype_id", "archetype_level", "archetype_name", "model_version", "churn_risk_score", "predicted_ltv", "total_orders"]
    pd.testing.assert_frame_equal(view.set_index("customer_id")[scalars].sort_index(), profiles[scalars].sort_index(), check_dtype=False)
    # The analysts' JSON functions work on the view's columns as they did on the table's.
    extract = ("fuzzy_memberships -> 'purchase_frequency' ->> 'regular'" if wh.is_postgres
               else "json_extract(fuzzy_memberships, '$.purchase_frequency.regular')")
    regular = wh.read_sql(f"SELECT customer_id, {extract} AS regular FROM {wh.qualified('customer_profile_snapshots')}")
    expected = [json.loads(profiles.loc[c, "fuzzy_memberships"])["purchase_frequency"]["regular"] for c in regular["customer_id"]]
    np.testing.assert_allclose(regular["regular"].astype(float), expected)
    history_view = wh.read_sql(f"SELECT * FROM {wh.qualified('customer_snapshot_history')}")
    same_objects(history_view, ("dominant_segments", "fuzzy_memberships"))
    rows = wh.snapshot_history("store_a", DAY, DAY, with_features=True)
    same_objects(rows, ("fuzzy_memberships", "behavioral_features"))
    customer = str(view["customer_id"].iloc[0])
    history = pd.DataFrame(wh.customer_history_rows("store_a", customer, 7)).assign(customer_id=customer)
    same_objects(history, canonical)
    assert history[scalars].to_dict("records") == [profiles.loc[customer, scalars].to_dict()]
    assert rows["archetype_name"].tolist() == profiles.loc[rows["customer_id"], "archetype_name"].tolist()
    wh.dispose()


def test_a_history_ends_at_the_customers_newest_snapshot_when_their_profile_is_newer(warehouse_url, store):
    validated, _ = store
    wh = Warehouse(warehouse_url)
    before = DAY - pd.Timedelta(days=1)
    early = before - pd.Timedelta(days=45)  # in the 45 days up to the newest snapshot, not in the 45 up to the profile
    for day in (early, before):
        assert not run_profiles_partition(validated, day, wh, SETTINGS).failed
    assert not run_profiles_partition(validated, DAY, wh, PipelineSettings()).failed  # snapshots off: the profile moves on
    customer = wh.read_sql(f"SELECT p.customer_id FROM {wh.qualified('customer_profiles')} p JOIN {wh.qualified('profile_snapshots')} s "
                           "ON s.store_id = p.store_id AND s.customer_id = p.customer_id AND s.snapshot_date = :e WHERE p.profile_date = :d LIMIT 1",
                           {"d": DAY.date(), "e": early.date()})["customer_id"].iloc[0]
    expected = [str(early.date()), str(before.date())]
    assert [str(pd.Timestamp(r["snapshot_date"]).date()) for r in wh.customer_history_rows("store_a", customer, 45)] == expected
    assert [str(pd.Timestamp(r["snapshot_date"]).date()) for r in wh.customer_history_rows("store_a", customer, 45, snapshot_type="daily")] == expected
    wh.dispose()


@pytest.mark.postgres
def test_a_history_reads_the_partitions_dropped_or_added_since_it_last_looked(pg_url, store, monkeypatch):
    """PostgreSQL reads a history over the window's own date partitions, whose dates it keeps for a while (and the
    store's newest profile date, the window's usual end): a partition dropped since (a prune) or a newer date written
    since is read right away; a past date backfilled into a new partition shows once the kept dates are older than
    PARTITION_DAYS_TTL_SECONDS."""
    validated, _ = store
    wh = Warehouse(pg_url)
    days = [DAY - pd.Timedelta(days=n) for n in (3, 2, 1, 0)]
    for day in days[1:3]:
        assert not run_profiles_partition(validated, day, wh, SETTINGS).failed
    customer = wh.read_sql(f"SELECT customer_id FROM {wh.qualified('customer_profiles')} ORDER BY customer_id LIMIT 1")["customer_id"].iloc[0]

    def dates() -> list[str]:
        return [str(r["snapshot_date"]) for r in wh.customer_history_rows("store_a", customer, 7)]

    assert dates() == [str(d.date()) for d in days[1:3]]
    with wh.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE platform.profile_snapshots_p{days[1]:%Y%m%d}")
    assert dates() == [str(days[2].date())]
    assert not run_profiles_partition(validated, days[3], wh, SETTINGS).failed
    assert dates() == [str(d.date()) for d in days[2:]]
    assert not run_profiles_partition(validated, days[0], wh, SETTINGS).failed  # a backfill: a new partition in the past
    assert dates() == [str(d.date()) for d in days[2:]]
    monkeypatch.setattr(type(wh), "PARTITION_DAYS_TTL_SECONDS", 0.0)
    assert dates() == [str(days[0].date()), *[str(d.date()) for d in days[2:]]]
    # A customer whose profile is older than the store's newest: the window ends at their own profile date.
    with wh.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE platform.customer_profiles SET profile_date = %(d)s WHERE customer_id = %(c)s", {"d": days[2].date(), "c": customer})
    assert dates() == [str(days[0].date()), str(days[2].date())]
    wh.dispose()


def test_numbers_are_written_as_pythons_repr_at_every_magnitude():
    """float_text (Arrow's cast, patched where its layout differs) is Python's repr, byte for byte: the profile JSON's
    numbers did not change when they stopped going through Python strings. Every decade from 1e-12 to 1e25, both
    signs, integral values, the 6-decimal roundings the profiles write, the layout boundaries and the extremes."""
    rng = np.random.default_rng(11)
    n = 200_000
    spread = np.sign(rng.normal(size=n)) * 10 ** rng.uniform(-12, 25, n) * rng.uniform(1, 10, n)
    x = np.r_[spread, np.round(spread, 6), np.round(rng.uniform(0, 1e-3, n), 6), rng.integers(-10**6, 10**6, 1000).astype(float),
              [0.0, 1.0, -1.0, 0.1, 0.3, 1e-4, 1e-5, 2.5e-05, 1e-6, 1.5e-06, 1e-7, 1e10, 9999999999.999998, 123456789012345.6, 1e15,
               9999999999999998.0, 1e16, 1.5e16, 1e21, 1e22, 1e100, 1e-100, 5e-324, 1.7976931348623157e308]]
    assert float_text(x).to_pylist() == [repr(float(v)) for v in x]
    assert json_number(np.array([np.nan, np.inf, 0.5, 3.0, 1e-05])).tolist() == ["null", "null", "0.5", "3.0", "1e-05"]


def test_a_value_given_as_pieces_is_their_concatenation_byte_for_byte():
    """json_object joins a value given as pieces (literals, numpy text, object text, Arrow text) in its one Arrow join:
    the same bytes as the value concatenated first (drift's axes are built this way)."""
    rng = np.random.default_rng(7)
    score = np.round(rng.random(300), 6)
    direction = np.where(rng.random(300) < 0.5, "stable", "improving")  # numpy fixed-width text
    transitions = np.where(rng.random(300) < 0.9, "[]", '[{"to": "a"}]').astype(object)  # Python strings
    pieces = ["[", float_text(score), ', "', direction, '", ', transitions, "]"]
    joined = pd.Series("[" + np.array([repr(float(v)) for v in score], dtype=object) + ', "' + direction.astype(object) + '", '
                       + transitions + "]")
    assert json_object([("a", pieces), ("b", joined)]).tolist() == json_object([("a", joined), ("b", joined)]).tolist()
    assert json.loads(json_object([("a", pieces)]).iloc[0])["a"][0] == score[0]


def test_a_nested_object_in_one_join_is_json_object_of_json_objects_byte_for_byte():
    rng = np.random.default_rng(4)
    groups = [(f"axis_{g}", [(f"k{j}", json_number(rng.normal(size=50) * 10 ** g)) for j in range(size)])
              for g, size in enumerate((1, 3, 2))]
    groups[1][1][1][1].iloc[5] = "null"
    nested = json_object([(group, json_object(items)) for group, items in groups])
    assert json_nested_object(groups).tolist() == nested.tolist()
    assert json.loads(nested.iloc[5])["axis_1"]["k1"] is None
    assert json_nested_object(groups[:1]).tolist() == json_object([(groups[0][0], json_object(groups[0][1]))]).tolist()
    with pytest.raises(ValueError):
        json_nested_object([("axis", [])])
