"""The signals' floors on small data (benchmarks/truth.py prints the full figures): drift, anomalies and
recommendations on planted changes, outliers that cannot bend the model, honest segments on CDNOW."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quimbi_pipeline.evaluation.outliers import FAKE_KINDS, evaluate_containment
from quimbi_pipeline.evaluation.planted import generate_planted
from quimbi_pipeline.evaluation.signals import analyst_baseline, evaluate
from quimbi_pipeline.model.profiles import build_store_profiles, customer_features
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.sources.cdnow import read_cdnow_orders
from quimbi_pipeline.sources.orders import orders_as_of, validate_orders

CDNOW = Path(__file__).parent / "data" / "CDNOW_sample.txt"


def test_fakes_are_caught_and_cannot_bend_the_model():
    r = evaluate_containment(read_cdnow_orders(CDNOW), "1998-06-30", "cdnow")
    assert r.caught["density"].all(), r.caught  # the default method catches all four kinds
    assert r.false_positive_rate["density"] < 0.01
    assert r.kept_segments["fakes, containment on"] >= 0.99
    assert r.kept_segments["fakes, containment off"] < 0.9  # without containment the fakes move real customers
    assert max(r.fake_ltv_percentile["fakes, containment on"].values()) < 0.99  # no fake in the top 1% of predicted_ltv
    assert set(r.fake_ltv_percentile["fakes, containment on"]) == set(FAKE_KINDS)


def test_honest_segments_stop_loyalty_splitting_by_join_month_and_names_follow_bands():
    v = validate_orders(read_cdnow_orders(CDNOW))
    day = pd.Timestamp("1998-06-30")
    spread = {}
    for flag in (False, True):
        settings = PipelineSettings(enable_honest_segments=flag)
        result = build_store_profiles(orders_as_of(v.orders, day), "cdnow", day, settings, v.optional_columns)
        active = customer_features(orders_as_of(v.orders, day), day, settings, v.optional_columns).active
        loyalty = result.segmentations["loyalty_trajectory"]
        joined = pd.Series(active["first_order_ts"].dt.month.to_numpy()).groupby(loyalty.dominant).mean()
        spread[flag] = float(joined.max() - joined.min())
        if flag:
            frequency = result.segmentations["purchase_frequency"]
            names = np.asarray(frequency.model.segment_names)[frequency.dominant]
            medians = pd.Series(active["orders_per_month"].to_numpy()).groupby(names).median()
            assert "very_frequent" not in medians.index or medians["very_frequent"] >= 4
            assert medians.get("rare", 0) < 0.25 + 1e-9
    assert spread[False] > 1.0 > 0.5 > spread[True]  # the months customers joined no longer make the segments


@pytest.fixture(scope="module")
def planted_small(tmp_path_factory):
    data = generate_planted(n_customers=300, seed=2, start="2025-09-01", end="2026-10-31", changes_from="2026-07-01", change_share=0.3)
    settings = PipelineSettings(enable_drift_analysis=True, drift_windows=(28, 90))
    url = f"sqlite:///{tmp_path_factory.mktemp('planted') / 'w.sqlite'}"
    return data, evaluate(data, pd.date_range("2026-06-15", "2026-10-31"), "2026-07-01", "2026-10-31", url, settings)


@pytest.mark.slow  # 139 daily partitions of 300 planted customers: about 2 minutes on 2 cores
def test_drift_flags_changers_with_precision_and_leaves_the_others_alone(planted_small):
    data, scores = planted_small
    s = scores.summary
    assert s["changers"] >= 40 and s["unchanged"] >= 150
    assert s["precision_28d_window"] >= 0.85, s
    assert s["unchanged_falsely_flagged"] <= 0.05, s
    assert s["recall_60d"] >= 0.5, s
    assert s["value_drop_median_orders_to_detect"] <= 2, s  # at the latest one order after the first changed one
    # Regular weekly buyers' drops (a Poisson-like buyer's takes 50-90 days to be sure of: seeing their median in a
    # pooled one made it flip with a single customer, 16 -> 26.5 days when the silence test began reading shapes from
    # the store's mixture, with regular buyers at 15 -> 16 and Poisson-like 64.5 -> 51).
    assert s["weekly_frequency_drop_regular_median_delay_days"] <= 21, s
    assert s["still_shown_60d_of_detected"] >= 0.9, s  # a detected change stays shown while it lasts
    assert s["recall_28d_after_evidence"] >= 0.6 and s["recall_28d_after_evidence"] > s["recall_28d"], s
    baseline = analyst_baseline(data, "2026-07-01", "2026-10-31")
    assert s["unchanged_falsely_flagged"] < baseline["frequency_drop_unchanged_flagged"]  # an analyst's gap rule alarms far more


@pytest.mark.slow  # 139 daily partitions of 300 planted customers: about 2 minutes on 2 cores
def test_anomalies_and_recommendations_need_evidence(planted_small):
    _, scores = planted_small
    s = scores.summary
    assert s["unchanged_with_anomaly"] <= 0.05, s
    assert s["unchanged_with_recommendation"] <= 0.05, s
    assert s["recommendations_with_evidence"] == 1.0, s
    # A refit is never drift: refit dates hold no more than their share of the anomalies (with slack for small counts).
    assert s["refit_days_share_of_anomalies"] <= 3 * s["refit_days_share_of_days"] + 0.05, s
