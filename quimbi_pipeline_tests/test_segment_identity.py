"""Stable segment identity: refit periods, Hungarian naming, MONIC transitions, and a refit through the pipeline."""

import numpy as np
import pandas as pd
import pytest

from quimbi_pipeline.model.features import AXIS_BY_NAME
from quimbi_pipeline.model.memberships import membership_shift, parse_memberships
from quimbi_pipeline.model.segment_identity import refit_anchor
from quimbi_pipeline.model.segmentation import (
    AxisModel,
    match_segments,
    monic_transitions,
)
from quimbi_pipeline.run import run_profiles_partition
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.sources.demo import generate_demo
from quimbi_pipeline.sources.orders import validate_orders
from quimbi_pipeline.storage import Warehouse

VALUE = AXIS_BY_NAME["purchase_value"]


def model(centroids, names, mean=(0.0, 0.0), scale=(1.0, 1.0)) -> AxisModel:
    return AxisModel(axis=VALUE.name, algorithm="kmeans", feature_names=VALUE.feature_names, log_scale=np.array([False, False]),
                     scaler_mean=np.array(mean, dtype=float), scaler_scale=np.array(scale, dtype=float),
                     centroids=np.array(centroids, dtype=float), segment_names=list(names), silhouette=None, n_fit=0)


def test_refit_anchor_gives_one_anchor_per_period():
    days = pd.date_range("2026-09-01", "2026-10-31")
    anchors = pd.Series([refit_anchor(d, 28) for d in days])
    assert (anchors <= days).all() and ((days - pd.DatetimeIndex(anchors)).days < 28).all()
    assert anchors.nunique() == 3 and all(a.day_of_week == 0 for a in anchors.unique())  # periods start on Mondays
    assert refit_anchor("2026-10-14", 1) == pd.Timestamp("2026-10-14")


def test_hungarian_matching_keeps_names_with_the_centroids():
    previous = model([[0, 0], [5, 5], [10, 10]], ["minimal_spender", "mid_spender", "premium_spender"])
    # The refit has other scaler parameters and finds the same three groups, slightly moved.
    refit = model([[-0.98, -0.98], [0.02, 0.02], [1.01, 1.01]], ["a", "b", "c"], mean=(5, 5), scale=(5, 5))
    raw = np.array([[0, 0], [5, 5], [10, 10]] * 10, dtype=float)
    named, transitions = match_segments(previous, refit, raw)
    assert named.segment_names == ["minimal_spender", "mid_spender", "premium_spender"]
    assert [t.transition for t in transitions] == ["survival"] * 3
    assert all(t.overlap == 1.0 for t in transitions)


def test_matching_follows_centroids_not_rank():
    previous = model([[0, 0], [10, 10]], ["low_spender", "high_spender"])
    refit = model([[10, 10], [0, 0]], ["x", "y"])  # same groups, listed the other way round
    named, _ = match_segments(previous, refit, np.array([[0, 0], [10, 10]], dtype=float))
    assert named.segment_names == ["high_spender", "low_spender"]


def test_monic_split_absorption_emergence_disappearance():
    rng = np.random.default_rng(0)
    a = rng.normal([0, 0], 0.3, (100, 2))
    b = rng.normal([6, 6], 0.3, (100, 2))
    c = rng.normal([12, 0], 0.3, (100, 2))
    raw = np.vstack([a, b, c])
    # Old segments {a} and {b, c}; new segments {a}, {b}, {c}: the second old segment splits.
    old = model([[0, 0], [9, 3]], ["minimal_spender", "premium_spender"])
    new = model([[0, 0], [6, 6], [12, 0]], ["minimal_spender", "mid_spender", "premium_spender"])
    kinds = {(t.transition, t.old_segments, t.new_segments) for t in monic_transitions(old, new, raw)}
    assert ("survival", ("minimal_spender",), ("minimal_spender",)) in kinds
    assert ("split", ("premium_spender",), ("mid_spender", "premium_spender")) in kinds
    # The reverse is an absorption.
    kinds = {(t.transition, t.old_segments, t.new_segments) for t in monic_transitions(new, old, raw)}
    assert ("absorption", ("mid_spender", "premium_spender"), ("premium_spender",)) in kinds
    # A group nobody had: emergence; a group that no longer holds anyone: disappearance.
    far = model([[0, 0], [6, 6], [12, 0], [50, 50]], ["minimal_spender", "mid_spender", "premium_spender", "high_spender"])
    kinds = {(t.transition, t.new_segments) for t in monic_transitions(far, new, raw)}
    assert ("disappearance", ()) in kinds
    kinds = {(t.transition, t.new_segments) for t in monic_transitions(old, far, raw)}
    assert ("emergence", ("high_spender",)) in kinds


def test_model_round_trips_through_its_record():
    m = model([[0.1234567891, 2], [3, 4]], ["low_spender", "high_spender"], mean=(1.123456789123, 2), scale=(3, 4)).rounded()
    back = AxisModel.from_record({**m.to_record(), "fitted_on": "2026-01-01"})
    raw = np.array([[0.5, 1.0], [2.0, 3.0]])
    np.testing.assert_array_equal(back.memberships(raw), m.memberships(raw))
    assert back.segment_names == m.segment_names


@pytest.fixture(scope="module")
def refit_run(tmp_path_factory):
    """Stable segments refitted every 7 days, run over a refit (2026-10-18 Sunday -> 2026-10-19 Monday)."""
    demo = generate_demo(n_customers=1200, n_stores=1, seed=9)
    validated = validate_orders(demo.orders)
    url = f"sqlite:///{tmp_path_factory.mktemp('refit') / 'w.sqlite'}"
    settings = PipelineSettings(enable_stable_segments=True, segment_refit_days=7, enable_temporal_snapshots=True)
    wh = Warehouse(url)
    for day in ("2026-10-12", "2026-10-18", "2026-10-19"):
        assert not run_profiles_partition(validated, day, wh, settings).failed
    return demo, wh


def test_refit_keeps_unchanged_customers_names_and_near_zero_drift(refit_run):
    demo, wh = refit_run
    versions = wh.read_sql("SELECT DISTINCT model_version FROM segment_models ORDER BY 1")["model_version"].tolist()
    assert versions == ["kmeans-stable-2026-10-12", "kmeans-stable-2026-10-19"]
    transitions = wh.segment_transition_rows("store_a")
    assert set(transitions["model_version"]) == {"kmeans-stable-2026-10-19"}
    assert set(transitions["previous_version"]) == {"kmeans-stable-2026-10-12"}
    snaps = wh.read_sql("SELECT customer_id, snapshot_date, model_version, dominant_segments, CAST(fuzzy_memberships AS TEXT) AS m "
                        "FROM customer_profile_snapshots WHERE snapshot_type = 'daily'")
    before = snaps[snaps["snapshot_date"].astype(str) == "2026-10-18"].set_index("customer_id")
    after = snaps[snaps["snapshot_date"].astype(str) == "2026-10-19"].set_index("customer_id")
    assert set(before["model_version"]) == {"kmeans-stable-2026-10-12"} and set(after["model_version"]) == {"kmeans-stable-2026-10-19"}
    # Unchanged customers: no order in the two days and no planted change or death around them.
    orders = demo.orders
    recent = set(orders.loc[orders["order_ts"] >= "2026-10-18", "customer_id"])
    truth = demo.customers.set_index("customer_id")
    quiet = [c for c in before.index.intersection(after.index) if c not in recent and pd.isna(truth.at[c, "change_ts"])]
    assert len(quiet) > 500
    shift = membership_shift(parse_memberships(before.loc[quiet, "m"]), parse_memberships(after.loc[quiet, "m"]))
    for axis in ("purchase_value", "basket_size", "discount_sensitivity", "category_exploration"):
        assert shift[axis].median() < 0.02, axis
        assert (shift[axis] < 0.1).mean() > 0.97, axis
    same_name = (parse_memberships(before.loc[quiet, "m"]).T.groupby(lambda c: c.split(".")[0]).idxmax().T.map(lambda s: s.split(".")[1])
                 == parse_memberships(after.loc[quiet, "m"]).T.groupby(lambda c: c.split(".")[0]).idxmax().T.map(lambda s: s.split(".")[1]))
    assert same_name[["purchase_value", "basket_size", "discount_sensitivity"]].to_numpy().mean() > 0.98


def test_dates_within_a_period_use_the_period_model_and_reruns_are_identical(refit_run):
    _, wh = refit_run
    rows = wh.read_sql("SELECT snapshot_date, model_version FROM customer_profile_snapshots GROUP BY snapshot_date, model_version")
    assert dict(zip(rows["snapshot_date"].astype(str), rows["model_version"])) == {
        "2026-10-12": "kmeans-stable-2026-10-12", "2026-10-18": "kmeans-stable-2026-10-12", "2026-10-19": "kmeans-stable-2026-10-19"}


def test_a_period_model_is_fitted_on_a_fixed_seed_sample_above_the_sample_size():
    """Above cluster_fit_sample_size active customers a refit fits on that many (docs/performance.md: the full
    KMeans fits were most of a 1M store's refit); the sample is the same on every run."""
    from quimbi_pipeline.model.segment_identity import fit_period_models

    validated = validate_orders(generate_demo(n_customers=600, n_stores=1, seed=3).orders)
    store, day = validated.stores[0], pd.Timestamp("2026-10-26")

    def fit(sample_size: int) -> dict[str, AxisModel]:
        settings = PipelineSettings(enable_stable_segments=True, cluster_fit_sample_size=sample_size)
        models, _ = fit_period_models(validated.orders, store, day, "v", settings, validated.optional_columns, {}, None)
        return models

    whole, sampled = fit(100_000), fit(200)
    assert {m.n_fit for m in sampled.values()} == {200} and min(m.n_fit for m in whole.values()) > 200
    again = fit(200)
    assert all(np.array_equal(sampled[a].centroids, again[a].centroids) for a in sampled)


def test_a_refit_on_its_anchor_day_computes_the_features_once_and_fits_the_same_model(refit_run, tmp_path, monkeypatch):
    """On the first day of a period (a daily run's refit) D's features serve the fit and the profiles; the model is
    the one a later day of the period fits from the anchor's own features."""
    from quimbi_pipeline.model import profiles

    demo, wh = refit_run
    validated = validate_orders(demo.orders)
    settings = PipelineSettings(enable_stable_segments=True, segment_refit_days=7, enable_temporal_snapshots=True)
    calls = []
    real = profiles.features_and_statistics
    monkeypatch.setattr(profiles, "features_and_statistics", lambda *a, **k: calls.append(pd.Timestamp(a[1])) or real(*a, **k))
    later = Warehouse(f"sqlite:///{tmp_path / 'later.sqlite'}")
    assert not run_profiles_partition(validated, "2026-10-13", later, settings).failed  # fits the 10-12 model itself
    assert calls == [pd.Timestamp("2026-10-12"), pd.Timestamp("2026-10-13")]  # the anchor's for the fit, then D's
    on_anchor = Warehouse(f"sqlite:///{tmp_path / 'anchor.sqlite'}")
    assert not run_profiles_partition(validated, "2026-10-12", on_anchor, settings).failed
    assert calls[2:] == [pd.Timestamp("2026-10-12")]  # one computation for the fit and the profiles
    query = "SELECT axis, k, segment_names, centroids, scaler FROM segment_models WHERE model_version = 'kmeans-stable-2026-10-12' ORDER BY axis"
    fitted_later, fitted_on_anchor = later.read_sql(query), on_anchor.read_sql(query)
    pd.testing.assert_frame_equal(fitted_later, fitted_on_anchor)
    pd.testing.assert_frame_equal(fitted_on_anchor, wh.read_sql(query))
    later.dispose()
    on_anchor.dispose()


def test_above_the_sample_size_a_refit_reads_the_sampled_customers_orders_only_and_any_date_fits_the_same_model(refit_run, tmp_path, monkeypatch):
    """Above cluster_fit_sample_size the fit's features are the sampled customers' alone (the whole store's were most
    of a 1M store's refit), computed the same way whichever date of the period runs first."""
    from quimbi_pipeline.model import profiles

    demo, _ = refit_run
    validated = validate_orders(demo.orders)
    settings = PipelineSettings(enable_stable_segments=True, segment_refit_days=7, enable_temporal_snapshots=True,
                                cluster_fit_sample_size=300)
    customers_read = []
    real = profiles.features_and_statistics

    def counting(orders, as_of, **kwargs):
        rows = kwargs.get("rows")
        customers_read.append((pd.Timestamp(as_of), (orders if rows is None else orders.loc[rows])["customer_id"].nunique()))
        return real(orders, as_of, **kwargs)

    monkeypatch.setattr(profiles, "features_and_statistics", counting)
    query = "SELECT axis, k, segment_names, centroids, scaler FROM segment_models WHERE model_version = 'kmeans-stable-2026-10-12' ORDER BY axis"
    fitted = {}
    for day in ("2026-10-15", "2026-10-12"):
        wh = Warehouse(f"sqlite:///{tmp_path / f'{day}.sqlite'}")
        assert not run_profiles_partition(validated, day, wh, settings).failed
        fitted[day] = wh.read_sql(query)
        wh.dispose()
    # Each run: the fit's features over the sample's orders only, D's over every customer's.
    anchor = pd.Timestamp("2026-10-12")
    assert [r for r in customers_read if r[1] <= 300] == [(anchor, 300), (anchor, 300)]
    assert [r[0] for r in customers_read if r[1] > 300] == [pd.Timestamp("2026-10-15"), anchor]
    pd.testing.assert_frame_equal(fitted["2026-10-15"], fitted["2026-10-12"])
