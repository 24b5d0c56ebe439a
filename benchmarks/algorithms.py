"""Clustering algorithms and k modes compared: demo data (ARI against the planted classes, silhouette,
time) and CDNOW (silhouette, time). Prints a markdown table (docs/algorithms.md).

    .venv/bin/python benchmarks/algorithms.py [--customers 20000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quimbi_pipeline.model.features import (  # noqa: E402
    AXIS_BY_NAME,
    active_mask,
    available_axes,
    compute_customer_features,
)
from quimbi_pipeline.model.segmentation import segment_axis  # noqa: E402
from quimbi_pipeline.settings import ClusteringAlgorithm, PipelineSettings  # noqa: E402
from quimbi_pipeline.sources.cdnow import read_cdnow_orders  # noqa: E402
from quimbi_pipeline.sources.demo import PLANTED_AXES, generate_demo  # noqa: E402
from quimbi_pipeline.sources.orders import orders_as_of, validate_orders  # noqa: E402

CDNOW = Path(__file__).resolve().parent.parent / "quimbi_pipeline_tests" / "data" / "CDNOW_sample.txt"
MODES = {"fixed k 2-6": False, "dynamic k": True}


def settings_for(algorithm: ClusteringAlgorithm, dynamic: bool) -> PipelineSettings:
    return PipelineSettings(enable_advanced_clustering=algorithm != ClusteringAlgorithm.kmeans, clustering_algorithm=algorithm, dynamic_k_range=dynamic)


def demo_features(n_customers: int) -> tuple[pd.DataFrame, pd.DataFrame, tuple]:
    demo = generate_demo(n_customers=n_customers, n_stores=1, seed=11)
    v = validate_orders(demo.orders)
    day = pd.Timestamp("2026-10-31")
    f = compute_customer_features(orders_as_of(v.orders, day), day, optional_columns=v.optional_columns)
    f = f.loc[active_mask(f, 365)]
    truth = demo.customers.set_index("customer_id").loc[f.index]
    return f, truth, v.optional_columns


def cdnow_features() -> tuple[pd.DataFrame, tuple]:
    orders = read_cdnow_orders(CDNOW)
    day = orders["order_ts"].max().normalize()
    f = compute_customer_features(orders, day, optional_columns=("item_count",))
    return f.loc[active_mask(f, 365 * 2)], ("item_count",)


def compare(n_customers: int) -> pd.DataFrame:
    """One row per dataset, algorithm, k mode and axis: k, silhouette, ARI (demo, unchanged alive customers), seconds."""
    demo, truth, demo_columns = demo_features(n_customers)
    keep = (truth["death_ts"].isna() & truth["change_axis"].isna()).to_numpy()
    cdnow, cdnow_columns = cdnow_features()
    rows = []
    for dataset, features, columns in (("demo", demo, demo_columns), ("cdnow", cdnow, cdnow_columns)):
        for algorithm in ClusteringAlgorithm:
            for mode, dynamic in MODES.items():
                settings = settings_for(algorithm, dynamic)
                for axis in available_axes(columns):
                    started = time.perf_counter()
                    seg = segment_axis(features, AXIS_BY_NAME[axis.name], settings)
                    seconds = time.perf_counter() - started
                    ari = None
                    if dataset == "demo" and axis.name in PLANTED_AXES:
                        ari = adjusted_rand_score(truth[f"planted_{axis.name}"].to_numpy()[keep], seg.dominant[keep])
                    rows.append({"dataset": dataset, "customers": len(features), "algorithm": algorithm.value, "k_mode": mode, "axis": axis.name,
                                 "fitted_as": seg.model.algorithm, "k": seg.model.k, "silhouette": seg.model.silhouette, "ari": ari, "seconds": seconds})
    return pd.DataFrame(rows)


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean over axes per dataset, algorithm and k mode (fallbacks to kmeans counted)."""
    results = results.assign(fell_back=(results["fitted_as"] != results["algorithm"]).astype(int))
    out = results.groupby(["dataset", "algorithm", "k_mode"], sort=False).agg(
        customers=("customers", "first"), mean_k=("k", "mean"), silhouette=("silhouette", "mean"), ari=("ari", "mean"),
        seconds=("seconds", "sum"), fell_back_to_kmeans=("fell_back", "sum"))
    return out.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=20_000)
    args = parser.parse_args()
    results = compare(args.customers)
    table = summary(results)
    print(table.to_markdown(index=False, floatfmt=".3f"))
    kmeans = table[table["algorithm"] == "kmeans"].set_index(["dataset", "k_mode"])["silhouette"]
    for dataset in ("demo", "cdnow"):
        fixed, dynamic = kmeans.loc[(dataset, "fixed k 2-6")], kmeans.loc[(dataset, "dynamic k")]
        print(f"dynamic k, kmeans, {dataset}: mean silhouette {fixed:.3f} -> {dynamic:.3f} ({(dynamic / fixed - 1) * 100:+.1f}%)")
    print("\nper axis:")
    print(results.pivot_table(index=["dataset", "axis"], columns=["algorithm", "k_mode"], values="silhouette").round(3).to_markdown())


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
