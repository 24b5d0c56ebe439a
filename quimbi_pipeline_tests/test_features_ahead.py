"""The next store-date's features computed in the background (features_ahead.py): handed only to the store-date they
were computed for, equal to computing them there, and a failure or a mismatch falls back to computing them there.
That the tables stay those of a run without it: test_backfill's ranges against a run per date (both databases)."""

from __future__ import annotations

import logging
import threading

import pandas as pd
import pytest

from quimbi_pipeline.model.profiles import customer_features
from quimbi_pipeline.run.features_ahead import FeaturesAhead, StoreDate
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.sources.demo import generate_demo
from quimbi_pipeline.sources.orders import orders_as_of, validate_orders

DAY = pd.Timestamp("2026-10-31")
SETTINGS = PipelineSettings(enable_adaptive_windows=True, threads=2)


@pytest.fixture(scope="module")
def validated():
    return validate_orders(generate_demo(n_customers=300, n_stores=1, seed=3).orders)


def unit(validated, orders=None, settings=SETTINGS, n_orders=None) -> StoreDate:
    cut = orders_as_of(validated.orders, DAY)
    return StoreDate("store_a", DAY, settings, len(cut) if n_orders is None else n_orders, orders or (lambda: cut),
                     tuple(validated.optional_columns))


def test_features_computed_ahead_are_those_computed_in_place_and_handed_over_once(validated):
    with FeaturesAhead(min_orders=0) as ahead:
        ahead.start(unit(validated))
        found = ahead.take("store_a", DAY, SETTINGS)
        assert ahead.take("store_a", DAY, SETTINGS) is None  # handed over: not kept
    expected = customer_features(orders_as_of(validated.orders, DAY), DAY, SETTINGS, validated.optional_columns)
    pd.testing.assert_frame_equal(found[0], expected[0])
    pd.testing.assert_frame_equal(found[1], expected[1])
    assert ahead.taken == 1 and ahead.seconds > 0


def test_features_of_another_store_date_or_settings_are_not_handed_over(validated):
    with FeaturesAhead(min_orders=0) as ahead:
        ahead.start(unit(validated))
        assert ahead.take("store_b", DAY, SETTINGS) is None
        assert ahead.take("store_a", DAY - pd.Timedelta(days=1), SETTINGS) is None
        assert ahead.take("store_a", DAY, SETTINGS.model_copy(update={"feature_window_days": 180})) is None
        ahead.start(None)  # the next store-date: the pending one is dropped
        assert ahead.take("store_a", DAY, SETTINGS) is None
    assert ahead.taken == 0


def test_a_failed_computation_is_logged_and_the_store_date_computes_its_own(validated, caplog):
    def broken() -> pd.DataFrame:
        raise ValueError("the orders could not be cut")

    with caplog.at_level(logging.INFO, logger="quimbi_pipeline.run.features_ahead"), FeaturesAhead(min_orders=0) as ahead:
        ahead.start(unit(validated, orders=broken))
        assert ahead.take("store_a", DAY, SETTINGS) is None
    assert "features computed ahead failed (ValueError: the orders could not be cut)" in caplog.text


def test_only_stores_within_the_size_bounds_with_two_threads_are_computed_ahead(validated, monkeypatch):
    ahead = FeaturesAhead(min_orders=1_000, max_orders=100_000)
    assert ahead.wanted(unit(validated, n_orders=50_000))
    assert not ahead.wanted(unit(validated, n_orders=999))  # small stores: their own worker processes
    assert not ahead.wanted(unit(validated, n_orders=100_001))  # two large stores' features at once: the memory peak
    assert not ahead.wanted(unit(validated, settings=SETTINGS.model_copy(update={"threads": 1}), n_orders=50_000))
    automatic = SETTINGS.model_copy(update={"threads": 0})
    monkeypatch.setattr("quimbi_pipeline.run.features_ahead.run_threads", lambda threads: 2)
    monkeypatch.setattr("quimbi_pipeline.run.features_ahead.idle_cores", lambda: 1)  # other work holds a core
    assert not ahead.wanted(unit(validated, settings=automatic, n_orders=50_000))
    monkeypatch.setattr("quimbi_pipeline.run.features_ahead.idle_cores", lambda: 2)
    assert ahead.wanted(unit(validated, settings=automatic, n_orders=50_000))


def test_features_are_computed_in_the_background_while_the_caller_goes_on(validated):
    release = threading.Event()
    cut = orders_as_of(validated.orders, DAY)

    def orders() -> pd.DataFrame:
        if not release.wait(5):  # a start() that computed in the caller's thread would get here
            raise TimeoutError("computed before the caller went on")
        return cut

    with FeaturesAhead(min_orders=0) as ahead:
        ahead.start(unit(validated, orders=orders))  # returns at once: the computation waits for `release`
        release.set()
        assert ahead.take("store_a", DAY, SETTINGS) is not None
