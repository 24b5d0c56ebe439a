"""Profiles of a store: JSON columns, archetypes, churn and LTV, degenerate stores."""

import json
import uuid

import numpy as np
import pandas as pd
import pytest

from quimbi_pipeline.model.profiles import (
    ARCHETYPE_NAMESPACE,
    PROFILE_COLUMNS,
    build_store_profiles,
)
from quimbi_pipeline.model.churn import churn_risk_level
from quimbi_pipeline.settings import ChurnBands, PipelineSettings
from quimbi_pipeline.sources.orders import orders_as_of, validate_orders

D = pd.Timestamp("2026-10-31")


@pytest.fixture(scope="module")
def store_a(demo_small):
    v = validate_orders(demo_small.orders)
    cut = orders_as_of(v.orders, D)
    return build_store_profiles(cut[cut.store_id == "store_a"], "store_a", D, PipelineSettings(), v.optional_columns)


def test_profile_rows_are_well_formed(store_a):
    p = store_a.profiles
    assert list(p.columns) == PROFILE_COLUMNS and p["customer_id"].is_unique and len(p) > 500
    for _, row in p.sample(50, random_state=0).iterrows():
        dominant = json.loads(row.dominant_segments)
        memberships = json.loads(row.fuzzy_memberships)
        features = json.loads(row.behavioral_features)
        assert set(dominant) == set(memberships) == set(features) == set(store_a.axes)
        for axis, scores in memberships.items():
            assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
            assert dominant[axis] == max(scores, key=scores.get)
        key = "|".join(f"{axis}={dominant[axis]}" for axis in store_a.axes)
        assert row.archetype_id == str(uuid.uuid5(ARCHETYPE_NAMESPACE, key))
        assert row.archetype_name == ", ".join(dominant[a] for a in store_a.axes)
        assert 1 <= row.archetype_level <= 5


def test_churn_and_ltv(store_a):
    p = store_a.profiles
    assert p["churn_risk_score"].between(0, 1).all() and (p["predicted_ltv"] >= 0).all()
    one_time = p["total_orders"] == 1
    assert one_time.any() and (p.loc[one_time, "churn_risk_score"] > 0).all()  # a real risk for one-time buyers
    # Long silence means higher risk: compare the quartiles of days since first order among one-time buyers.
    assert p.loc[one_time, "churn_risk_score"].corr(p.loc[one_time, "days_since_first_order"]) > 0.5


def test_churn_levels_follow_documented_bands():
    levels = churn_risk_level(np.array([0.0, 0.29, 0.3, 0.59, 0.6, 0.79, 0.8, 1.0]), ChurnBands())
    assert levels.tolist() == ["low", "low", "medium", "medium", "high", "high", "critical", "critical"]
    with pytest.raises(ValueError, match="medium_from < high_from"):
        ChurnBands(medium_from=0.7, high_from=0.6)


def test_single_customer_store_gets_a_documented_profile():
    rows = pd.DataFrame([{"order_id": "1", "customer_id": "only", "order_ts": "2026-10-01", "order_total": 12.0}])
    r = build_store_profiles(validate_orders(rows).orders, "tiny", D, PipelineSettings())
    assert len(r.profiles) == 1
    row = r.profiles.iloc[0]
    assert json.loads(row.dominant_segments) == {a: "all_customers" for a in r.axes}
    assert "too few or too young for a churn statement" in " ".join(r.churn.notes)
    assert 0 < row.churn_risk_score < 1 and row.churn_risk_level == "unknown"
    assert json.loads(row.history_basis) == {"purchase_days": 1, "days_observed": 30, "store_customers": 1, "store_days": 30,
                                             "churn_model": "prior", "churn_recalibrated": False, "little_history": True}


def test_store_without_active_customers_writes_nothing():
    rows = pd.DataFrame([{"order_id": "1", "customer_id": "old", "order_ts": "2020-01-01", "order_total": 12.0}])
    r = build_store_profiles(validate_orders(rows).orders, "old", D, PipelineSettings())
    assert r.profiles.empty and list(r.profiles.columns) == PROFILE_COLUMNS


def test_same_input_gives_identical_rows(demo_small):
    v = validate_orders(demo_small.orders)
    cut = orders_as_of(v.orders, D)
    cut = cut[cut.store_id == "store_b"]
    a = build_store_profiles(cut, "store_b", D, PipelineSettings(), v.optional_columns).profiles
    b = build_store_profiles(cut.sample(frac=1.0, random_state=3), "store_b", D, PipelineSettings(), v.optional_columns).profiles
    pd.testing.assert_frame_equal(a, b)  # row order of the input does not matter either


def test_coarse_archetypes_give_a_marketer_a_handful(demo_small):
    """ENABLE_COARSE_ARCHETYPES: frequency, value and loyalty in thirds of their ladders. On the demo's store_a the full
    archetypes are 125, 59 of them needed to cover 80% of the customers; coarse ones are at most 27."""
    v = validate_orders(demo_small.orders)
    cut = orders_as_of(v.orders, D)
    store = cut[cut.store_id == "store_a"]
    full = build_store_profiles(store, "store_a", D, PipelineSettings(), v.optional_columns).profiles
    coarse = build_store_profiles(store, "store_a", D, PipelineSettings(enable_coarse_archetypes=True), v.optional_columns).profiles
    share = coarse["archetype_name"].value_counts(normalize=True)
    assert share.size <= 27 and int((share.cumsum() < 0.8).sum()) + 1 <= 20
    assert full["archetype_name"].nunique() > 3 * share.size
    words = coarse["archetype_name"].str.split(", ", expand=True)
    assert set(words[0]) <= {"occasional", "regular", "frequent"} and set(words[1]) <= {"low spend", "mid spend", "high spend"}
    assert set(words[2]) <= {"fading", "steady", "loyal"}
    # The same segments, memberships and scores: only the archetype columns differ.
    same = [c for c in full.columns if not c.startswith("archetype_")]
    pd.testing.assert_frame_equal(full[same], coarse[same])
    assert coarse.groupby("archetype_name")["archetype_id"].nunique().eq(1).all() and coarse["archetype_level"].between(1, 5).all()
