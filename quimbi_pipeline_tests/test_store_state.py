"""A store's customers scored in parts against its StoreState (store_state.py) get the rows one scoring of them all
gives: profiles, outlier flags and snapshot numbers, bit for bit. This is what a store scored in shards stands on; a
store-level number slipped into the per-customer path (a count, a quantile, a prior over the customers at hand) fails it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quimbi_pipeline.model.features import _category_codes
from quimbi_pipeline.model.profiles import build_store_profiles
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.sources.demo import generate_demo
from quimbi_pipeline.sources.orders import orders_as_of, validate_orders

DAY = pd.Timestamp("2026-10-31")
# The daily job's flags: the detectors' store priors (adaptive windows), containment's segment sizes and LTV cap.
DAILY = PipelineSettings(enable_drift_analysis=True, enable_outlier_detection=True)
PARTS = 4


@pytest.fixture(scope="module")
def store():
    validated = validate_orders(generate_demo(n_customers=1500, n_stores=1, seed=11).orders)
    orders = orders_as_of(validated.orders, DAY)
    # One far-out spender: containment leaves them out of the fits and caps their predicted_ltv at the store's cap.
    whale = orders.loc[orders["customer_id"] == orders["customer_id"].iloc[0]].copy()
    whale["order_total"] = whale["order_total"] * 400.0
    whale["order_id"] = whale["order_id"] + "-whale"
    orders = pd.concat([orders.loc[orders["customer_id"] != whale["customer_id"].iloc[0]], whale], ignore_index=True)
    return orders, tuple(validated.optional_columns)


def _in_parts(orders: pd.DataFrame, optional_columns, settings: PipelineSettings):
    whole = build_store_profiles(orders, "store_a", DAY, settings, optional_columns)
    customers = np.sort(orders["customer_id"].unique())
    part_of = pd.Series(np.arange(customers.size) % PARTS, index=customers)  # every part cuts through the store
    parts = [build_store_profiles(orders.loc[(part_of.reindex(orders["customer_id"]).to_numpy() == k)], "store_a", DAY, settings,
                                  optional_columns, state=whole.state) for k in range(PARTS)]
    return whole, parts


def _joined(frames: list[pd.DataFrame], key: list[str]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True).sort_values(key, ignore_index=True)


@pytest.mark.parametrize("settings", [DAILY, DAILY.model_copy(update={"enable_honest_segments": True}), PipelineSettings()],
                         ids=["daily job", "honest segments", "flags off"])
def test_parts_scored_against_the_store_state_are_the_whole_store_scored(store, settings):
    orders, optional_columns = store
    whole, parts = _in_parts(orders, optional_columns, settings)
    assert sum(len(p.profiles) for p in parts) == len(whole.profiles) > 500
    pd.testing.assert_frame_equal(_joined([p.profiles for p in parts], ["customer_id"]),
                                  whole.profiles.sort_values("customer_id", ignore_index=True), check_exact=True)
    assert all(p.state is whole.state for p in parts)  # nothing fitted again
    if settings.enable_outlier_detection:
        key = ["customer_id", "method"]
        pd.testing.assert_frame_equal(_joined([p.outliers for p in parts], key), _joined([whole.outliers], key), check_exact=True)
        capped = whole.outliers["explanation"].fillna("").str.contains("predicted_ltv capped")
        assert whole.state.ltv_cap is not None and capped.sum() >= 1  # the cap is exercised, in one part
        pd.testing.assert_frame_equal(_joined([p.snapshot_columns.base.reset_index() for p in parts], ["customer_id"]),
                                      whole.snapshot_columns.base.reset_index().sort_values("customer_id", ignore_index=True))
        for group in ("memberships", "features"):
            joined = pd.concat([getattr(p.snapshot_columns, group) for p in parts]).sort_index()
            pd.testing.assert_frame_equal(joined, getattr(whole.snapshot_columns, group).sort_index(), check_exact=True)


def test_a_part_alone_is_scored_differently_without_the_state(store):
    """The test above can fail: a part fitted on its own (its priors, models and churn fit) is not the store's."""
    orders, optional_columns = store
    whole = build_store_profiles(orders, "store_a", DAY, DAILY, optional_columns)
    first = orders["customer_id"].isin(np.sort(orders["customer_id"].unique())[::PARTS])
    alone = build_store_profiles(orders.loc[first], "store_a", DAY, DAILY, optional_columns)
    expected = whole.profiles.set_index("customer_id").loc[alone.profiles["customer_id"]]
    assert not np.array_equal(alone.profiles["churn_risk_score"].to_numpy(), expected["churn_risk_score"].to_numpy())


def test_a_state_and_models_in_force_together_are_refused(store):
    orders, optional_columns = store
    whole = build_store_profiles(orders, "store_a", DAY, DAILY, optional_columns)
    with pytest.raises(ValueError, match="holds its models"):
        build_store_profiles(orders, "store_a", DAY, DAILY, optional_columns, models=whole.state.models, state=whole.state)


def test_categories_a_part_meets_first_are_coded_after_the_store_s_by_name():
    values = pd.Series(["b", "z", "a", None, "y", "z"], dtype="string")
    codes, categories = _category_codes(values, ("a", "b"))
    assert codes.tolist() == [1, 3, 0, -1, 2, 3] and categories == ("a", "b")
    codes, categories = _category_codes(values, None)  # the store's own: order of first appearance
    assert codes.tolist() == [0, 1, 2, -1, 3, 1] and categories == ("b", "z", "a", "y")
