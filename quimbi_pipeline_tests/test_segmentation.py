"""The original engine: k by silhouette, ordered names, fuzzy memberships, degenerate stores, planted truth."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from quimbi_pipeline.model.features import (
    AXIS_BY_NAME,
    active_mask,
    compute_customer_features,
)
from quimbi_pipeline.model.segmentation import (
    SINGLE_SEGMENT_NAME,
    fit_axis_model,
    fuzzy_memberships,
    segment_axis,
    segment_names_for,
)
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.sources.orders import orders_as_of, validate_orders

FREQ = AXIS_BY_NAME["purchase_frequency"]


def frame(values):
    values = np.asarray(values, dtype=float)
    return pd.DataFrame({"orders_per_month": values[:, 0], "avg_days_between_orders": values[:, 1]})


def test_memberships_sum_to_one_and_follow_distance():
    centroids = np.array([[0.0, 0.0], [3.0, 0.0]])
    points = np.array([[0.0, 0.0], [1.0, 0.0], [1.5, 0.0], [10.0, 0.0]])
    u = fuzzy_memberships(points, centroids)
    np.testing.assert_allclose(u.sum(axis=1), 1.0)
    assert u[0, 0] == pytest.approx(1.0) and u[2, 0] == pytest.approx(0.5)
    assert u[1, 0] == pytest.approx((1 / 1) / (1 / 1 + 1 / 4))
    # Scale invariance: scaling space does not change memberships.
    np.testing.assert_allclose(fuzzy_memberships(points * 7, centroids * 7), u, atol=1e-9)


def test_segments_are_named_worse_to_better():
    rng = np.random.default_rng(0)
    low = np.column_stack([rng.normal(0.2, 0.02, 100), rng.normal(120, 5, 100)])
    high = np.column_stack([rng.normal(5.0, 0.2, 100), rng.normal(6, 0.5, 100)])
    seg = segment_axis(frame(np.vstack([high, low])), FREQ, PipelineSettings())
    assert seg.model.k == 2 and seg.model.segment_names == ["rare", "very_frequent"]
    assert (seg.dominant[:100] == 1).all() and (seg.dominant[100:] == 0).all()


def test_segment_names_for_k_beyond_the_ladder_stay_unique():
    assert segment_names_for(FREQ, 3) == ["rare", "regular", "very_frequent"]
    names = segment_names_for(FREQ, 12)
    assert len(set(names)) == 12 and names[0].startswith("rare") and names[-1].startswith("very_frequent")


@pytest.mark.parametrize(
    "values, k, note",
    [
        ([[1.0, 30.0]], 1, "one customer"),
        ([[1.0, 30.0]] * 50, 1, "identical"),
        ([[1.0, 30.0], [4.0, 5.0]], 2, "too few for a silhouette"),
        ([[1.0, 30.0]] * 20 + [[4.0, 5.0]] * 20, 2, ""),
    ],
)
def test_degenerate_populations(values, k, note):
    seg = segment_axis(frame(values), FREQ, PipelineSettings())
    assert seg.model.k == k and note in seg.model.note
    np.testing.assert_allclose(seg.memberships.sum(axis=1), 1.0)
    if k == 1:
        assert seg.model.segment_names == [SINGLE_SEGMENT_NAME] and seg.model.silhouette is None


def test_fewer_distinct_points_than_min_k():
    seg = segment_axis(frame([[1.0, 30.0]] * 10 + [[4.0, 5.0]] * 10 + [[9.0, 2.0]] * 10), FREQ, PipelineSettings(min_k=4, max_k=6))
    assert seg.model.k == 3


def test_silhouette_on_a_fixed_seed_sample_is_deterministic():
    rng = np.random.default_rng(1)
    values = np.vstack([np.column_stack([rng.gamma(2, 0.5 + i, 700), rng.gamma(2, 10 / (i + 1), 700)]) for i in range(3)])
    settings = PipelineSettings(silhouette_sample_size=500)
    a = fit_axis_model(values, FREQ, settings)
    b = fit_axis_model(values, FREQ, settings)
    assert a.silhouette_by_k == b.silhouette_by_k and a.k == b.k
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_recovers_planted_segments(demo_small, settings):
    """Adjusted Rand index >= 0.8 against the demo's planted classes, per store, on every planted axis."""
    v = validate_orders(demo_small.orders)
    d = pd.Timestamp("2026-10-31")
    truth = demo_small.customers.set_index("customer_id")
    stable = truth["death_ts"].isna() & truth["change_axis"].isna()
    for store, orders in orders_as_of(v.orders, d).groupby("store_id"):
        f = compute_customer_features(orders, d, optional_columns=v.optional_columns)
        f = f.loc[active_mask(f, settings.active_days)]
        keep = stable.loc[f.index].to_numpy()
        for axis in ("purchase_frequency", "purchase_value", "basket_size", "discount_sensitivity", "category_exploration"):
            seg = segment_axis(f, AXIS_BY_NAME[axis], settings)
            ari = adjusted_rand_score(truth.loc[f.index, f"planted_{axis}"].to_numpy()[keep], seg.dominant[keep])
            assert ari >= 0.8, (store, axis, ari)
            # Planted rank order is recovered too: better plants sit in better-named segments on average.
            planted = truth.loc[f.index, f"planted_{axis}"].to_numpy()[keep]
            means = [seg.dominant[keep][planted == c].mean() for c in np.unique(planted)]
            assert means == sorted(means), (store, axis, means)


@pytest.mark.parametrize("sample_size", [None, 700])
def test_silhouette_scores_equal_sklearn(sample_size):
    from sklearn.metrics import silhouette_score

    from quimbi_pipeline.model.segmentation import silhouette_scores

    rng = np.random.default_rng(5)
    x = np.vstack([rng.normal(c, 1.0, (400, 2)) for c in (0, 3, 7)])
    labelings = {k: rng.integers(0, k, x.shape[0]) if k == 5 else np.repeat(np.arange(k), -(-x.shape[0] // k))[: x.shape[0]] for k in (2, 3, 5)}
    labelings[4] = np.r_[np.zeros(x.shape[0] - 1, dtype=int), 1]  # a singleton cluster
    ours = silhouette_scores(x, labelings, sample_size, 42)
    for k, labels in labelings.items():
        if sample_size and k == 4:
            continue  # the singleton may fall outside the sample
        expected = silhouette_score(x, labels, sample_size=sample_size, random_state=42)
        assert ours[k] == pytest.approx(expected, abs=1e-9), k


def test_dynamic_k_range_follows_design():
    from quimbi_pipeline.model.segmentation import k_bounds

    dyn = PipelineSettings(dynamic_k_range=True)
    assert k_bounds(10_000, 10_000, dyn) == (2, 20)  # floor(100 / 2) = 50, capped at 20
    assert k_bounds(100, 100, dyn) == (2, 5)
    assert k_bounds(9, 9, dyn) == (2, 3)  # floor(3 / 2) = 1 -> min_k + 1
    assert k_bounds(100, 100, PipelineSettings()) == (2, 6)


def test_gmm_memberships_are_the_mixture_posteriors_and_survive_the_record():
    from sklearn.mixture import GaussianMixture

    from quimbi_pipeline.model.segmentation import AxisModel

    rng = np.random.default_rng(3)
    values = np.vstack([np.column_stack([rng.normal(m, 0.1 * m, 300), rng.normal(m, 0.1 * m, 300)]) for m in (20.0, 60.0, 180.0)])
    raw = pd.DataFrame(values, columns=["avg_order_value", "median_order_value"])
    settings = PipelineSettings(enable_advanced_clustering=True, clustering_algorithm="gmm")
    seg = segment_axis(raw, AXIS_BY_NAME["purchase_value"], settings)
    model = seg.model
    assert model.algorithm == "gmm" and model.k == 3
    assert model.segment_names == ["minimal_spender", "mid_spender", "premium_spender"]
    gm = GaussianMixture(3, covariance_type="full", random_state=42, reg_covar=1e-4).fit(model.transform(values))
    order = np.argsort(gm.means_[:, 0])
    np.testing.assert_allclose(seg.memberships, gm.predict_proba(model.transform(values))[:, order], atol=1e-6)
    back = AxisModel.from_record(model.rounded().to_record())
    np.testing.assert_allclose(back.memberships(values), model.rounded().memberships(values))


@pytest.mark.parametrize("algorithm", ["hdbscan", "dbscan"])
def test_density_algorithms_find_the_clusters_and_report_noise(algorithm):
    rng = np.random.default_rng(4)
    values = np.vstack([np.column_stack([rng.normal(m, 0.05 * m, 400), rng.normal(m, 0.05 * m, 400)]) for m in (20.0, 180.0)]
                       + [np.array([[2000.0, 2000.0]])])
    raw = pd.DataFrame(values, columns=["avg_order_value", "median_order_value"])
    settings = PipelineSettings(enable_advanced_clustering=True, clustering_algorithm=algorithm, hdbscan_min_cluster_size=20)
    seg = segment_axis(raw, AXIS_BY_NAME["purchase_value"], settings)
    assert seg.model.algorithm == algorithm and seg.model.k == 2 and "noise" in seg.model.note
    np.testing.assert_allclose(seg.memberships.sum(axis=1), 1.0)
    assert (seg.dominant[:400] == 0).all() and (seg.dominant[400:800] == 1).all()


def test_density_algorithm_finding_one_cluster_falls_back_to_kmeans():
    values = np.random.default_rng(5).normal(50, 1, (300, 2))
    settings = PipelineSettings(enable_advanced_clustering=True, clustering_algorithm="dbscan", dbscan_eps=50)
    seg = segment_axis(pd.DataFrame(values, columns=["avg_order_value", "median_order_value"]), AXIS_BY_NAME["purchase_value"], settings)
    assert seg.model.algorithm == "kmeans" and "dbscan found 1 cluster(s)" in seg.model.note


def test_a_models_segment_bands_along_one_feature_split_where_the_nearest_centroid_changes():
    """The customer page shades them behind the customer's features: along avg_order_value, at the customer's own
    median_order_value, the nearest centroid changes where the two scaled distances are equal (log1p(a) = 3)."""
    from quimbi_pipeline.model.segmentation import AxisModel

    model = AxisModel(axis="purchase_value", algorithm="kmeans", feature_names=["avg_order_value", "median_order_value"],
                      log_scale=np.array([True, False]), scaler_mean=np.array([3.0, 40.0]), scaler_scale=np.array([0.5, 10.0]),
                      centroids=np.array([[-1.0, -1.0], [1.0, 2.0]]), segment_names=["low", "high"], silhouette=None, n_fit=10)
    values = np.linspace(1.0, 60.0, 591)  # steps of 0.1
    bands = model.regions_along(np.array([30.0, 45.0]), "avg_order_value", values)
    assert [name for name, _, _ in bands] == ["low", "high"]
    assert bands[0][1] == 1.0 and bands[1][2] == 60.0 and bands[0][2] == bands[1][1]
    assert abs(bands[0][2] - np.expm1(3.0)) <= 0.05
    assert model.regions_along(np.array([np.nan, 45.0]), "avg_order_value", values) == []
