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


def test_features_computed_ahead_are_those_computed_in_place_and_handed_over_once(validated, caplog):
    with caplog.at_level(logging.INFO, logger="quimbi_pipeline.run.features_ahead"), FeaturesAhead(min_orders=0) as ahead:
        ahead.start(unit(validated))
        found = ahead.take("store_a", DAY, SETTINGS)
        assert ahead.take("store_a", DAY, SETTINGS) is None  # handed over: not kept
        assert ahead.taken == 1 and ahead.seconds > 0
    expected = customer_features(orders_as_of(validated.orders, DAY), DAY, SETTINGS, validated.optional_columns)
    pd.testing.assert_frame_equal(found[0], expected[0])
    pd.testing.assert_frame_equal(found[1], expected[1])
    # The time spent ahead is in the run's log when the run ends (the store-date's own stages do not count it).
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["features computed ahead for 1 store-date(s)"]


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


def test_a_run_over_dates_hands_each_next_store_date_its_features_and_a_store_without_orders_is_skipped(validated, tmp_path):
    """run_profiles_partition with the run's FeaturesAhead, where the first store of the run has no orders: it has no
    features to compute ahead, at D or at the next date, and store_a (computing its own) writes the same profiles as a
    run of that date alone."""
    from quimbi_pipeline.run import run_profiles_partition
    from quimbi_pipeline.storage import Warehouse

    settings = SETTINGS.model_copy(update={"enable_temporal_snapshots": True})
    ahead_wh, alone_wh = Warehouse(f"sqlite:///{tmp_path / 'ahead.sqlite'}"), Warehouse(f"sqlite:///{tmp_path / 'alone.sqlite'}")
    with FeaturesAhead(min_orders=0) as ahead:
        first = run_profiles_partition(validated, DAY - pd.Timedelta(days=1), ahead_wh, settings, ["store_0", "store_a"], later_day=DAY, ahead=ahead)
        assert [o.ok for o in first.outcomes] == [True, True] and first.outcomes[0].n_profiles == 0
        assert ahead.taken == 0
        second = run_profiles_partition(validated, DAY, ahead_wh, settings, ["store_0", "store_a"], ahead=ahead)
        assert ahead.taken == 0 and all(o.ok for o in second.outcomes)
    assert not run_profiles_partition(validated, DAY, alone_wh, settings, ["store_a"]).failed
    pd.testing.assert_frame_equal(ahead_wh.profiles(), alone_wh.profiles())
    ahead_wh.dispose()
    alone_wh.dispose()


def test_the_next_store_of_the_date_and_the_first_at_the_next_date_take_features_computed_ahead(tmp_path):
    """Two stores over two dates in one run: store_b at D, then store_a and store_b at the next date, take features
    computed ahead (3 of the 4 store-dates); the profiles are those of a run per date without it."""
    from quimbi_pipeline.run import run_profiles_partition
    from quimbi_pipeline.storage import Warehouse

    two = validate_orders(generate_demo(n_customers=300, n_stores=2, seed=3).orders)
    ahead_wh, alone_wh = Warehouse(f"sqlite:///{tmp_path / 'ahead.sqlite'}"), Warehouse(f"sqlite:///{tmp_path / 'alone.sqlite'}")
    before = DAY - pd.Timedelta(days=1)
    with FeaturesAhead(min_orders=0) as ahead:
        assert not run_profiles_partition(two, before, ahead_wh, SETTINGS, later_day=DAY, ahead=ahead).failed
        assert ahead.taken == 1
        assert not run_profiles_partition(two, DAY, ahead_wh, SETTINGS, ahead=ahead).failed
        assert ahead.taken == 3
    for day in (before, DAY):
        assert not run_profiles_partition(two, day, alone_wh, SETTINGS).failed
    pd.testing.assert_frame_equal(ahead_wh.profiles(), alone_wh.profiles())
    ahead_wh.dispose()
    alone_wh.dispose()
