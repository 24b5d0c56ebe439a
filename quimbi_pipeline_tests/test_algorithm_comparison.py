"""The algorithm comparison (benchmarks/algorithms.py) runs and its kmeans rows reproduce the planted segments."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


@pytest.mark.slow
def test_algorithm_comparison_covers_every_algorithm_and_k_mode():
    import algorithms

    results = algorithms.compare(1500)
    table = algorithms.summary(results)
    assert len(table) == 2 * 4 * 2  # datasets x algorithms x k modes
    assert set(table["algorithm"]) == {"kmeans", "hdbscan", "gmm", "dbscan"}
    kmeans = table[(table["dataset"] == "demo") & (table["algorithm"] == "kmeans")]
    assert (kmeans["ari"] >= 0.8).all() and (kmeans["fell_back_to_kmeans"] == 0).all()
    assert table["silhouette"].between(-1, 1).all()
