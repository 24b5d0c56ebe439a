"""Outlier flags: planted bots and a $100k order, which methods catch them, the seed rule's k <= 3 blind spot."""

import numpy as np
import pandas as pd
import pytest

from quimbi_pipeline.model.outliers import outlier_flags
from quimbi_pipeline.model.segmentation import AxisModel, AxisSegmentation
from quimbi_pipeline.run import run_profiles_partition
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.sources.demo import generate_demo
from quimbi_pipeline.sources.orders import validate_orders
from quimbi_pipeline.storage import Warehouse


def planted_outliers() -> pd.DataFrame:
    orders = generate_demo(n_customers=1500, n_stores=1, seed=4).orders
    bot = pd.DataFrame({"order_id": [f"bot{i}" for i in range(900)], "customer_id": "bot", "store_id": "store_a",
                        "order_ts": pd.Timestamp("2026-10-28") + pd.to_timedelta(np.arange(900) * 288, unit="s"),  # 300 a day
                        "order_total": 25.0, "discount_total": 0.0, "item_count": 1, "category": "books"})
    whale = pd.DataFrame({"order_id": ["whale-1"], "customer_id": "whale", "store_id": "store_a", "order_ts": [pd.Timestamp("2026-09-01")],
                          "order_total": 100_000.0, "discount_total": 0.0, "item_count": 2, "category": "home"})
    return pd.concat([orders, bot, whale], ignore_index=True)


def test_density_catches_the_bot_and_the_whale_the_membership_rules_do_not(warehouse_url):
    wh = Warehouse(warehouse_url)
    report = run_profiles_partition(validate_orders(planted_outliers()), "2026-10-31", wh, PipelineSettings(enable_outlier_detection=True))
    assert not report.failed
    flags = wh.read_sql(f"SELECT customer_id, method, is_outlier, outlier_score, CAST(outlier_axes AS TEXT) AS axes FROM {wh.qualified('customer_outlier_flags')}")
    caught = flags[flags["is_outlier"].astype(bool)]
    by_method = {m: set(g["customer_id"]) for m, g in caught.groupby("method")}
    # Each got a k-means segment of its own (memberships 1 there): only the density method sees them.
    assert {"bot", "whale"} <= by_method["density"]
    assert not ({"bot", "whale"} & (by_method.get("membership", set()) | by_method.get("membership_normalized", set())))
    assert "purchase_value" in flags.loc[(flags.customer_id == "whale") & (flags.method == "density"), "axes"].iloc[0]
    assert "purchase_frequency" in flags.loc[(flags.customer_id == "bot") & (flags.method == "density"), "axes"].iloc[0]
    # Three rows per customer, and the density method is not a fixed share: two of ~1,200 here.
    assert len(flags) == 3 * report.n_profiles
    assert len(by_method["density"]) <= 5
    assert report.outcomes[0].outlier_rates["density"] == pytest.approx(len(by_method["density"]) / report.n_profiles, abs=1e-6)
    wh.dispose()


def test_older_dates_keep_their_flagged_rows_and_every_date_its_rates(warehouse_url):
    """Every customer's scores on the store's newest date; the flagged rows of earlier dates, and each
    date's rates per method, whatever order the dates are run in (a backfill of an earlier date)."""
    wh = Warehouse(warehouse_url)
    validated, settings = validate_orders(planted_outliers()), PipelineSettings(enable_outlier_detection=True)
    table = wh.qualified("customer_outlier_flags")
    reports = {}
    for day in ("2026-10-30", "2026-10-31", "2026-10-29"):
        reports[day] = run_profiles_partition(validated, day, wh, settings)
        assert not reports[day].failed
    flags = wh.read_sql(f"SELECT flag_date, customer_id, method, is_outlier FROM {table}")
    flags["flag_date"] = pd.to_datetime(flags["flag_date"]).dt.strftime("%Y-%m-%d")
    newest = flags[flags.flag_date == "2026-10-31"]
    assert len(newest) == 3 * reports["2026-10-31"].n_profiles
    older = flags[flags.flag_date < "2026-10-31"]
    assert set(older.flag_date) == {"2026-10-29", "2026-10-30"} and older["is_outlier"].astype(bool).all()
    assert "bot" in set(older.loc[(older.flag_date == "2026-10-30") & (older.method == "density"), "customer_id"])
    rates = wh.read_sql(f"SELECT flag_date, method, customers, flagged FROM {wh.qualified('outlier_rates')}")
    rates["flag_date"] = pd.to_datetime(rates["flag_date"]).dt.strftime("%Y-%m-%d")
    for day, report in reports.items():
        of_day = rates[rates.flag_date == day].set_index("method")
        assert sorted(of_day.index) == ["density", "membership", "membership_normalized"]
        assert (of_day["customers"] == report.n_profiles).all()
        for method, rate in report.outcomes[0].outlier_rates.items():
            assert of_day.loc[method, "flagged"] / report.n_profiles == pytest.approx(rate, abs=1e-6)
    wh.dispose()


def segmentation(memberships, k) -> AxisSegmentation:
    u = np.asarray(memberships, dtype=float)
    model = AxisModel(axis="purchase_value", algorithm="kmeans", feature_names=["a", "b"], log_scale=np.array([False, False]),
                      scaler_mean=np.zeros(2), scaler_scale=np.ones(2), centroids=np.eye(k, 2), segment_names=[f"s{i}" for i in range(k)],
                      silhouette=None, n_fit=len(u))
    return AxisSegmentation(model, u, u.argmax(axis=1))


def test_seed_rule_cannot_fire_with_three_segments_the_normalized_rule_can():
    uniform = [[1 / 3, 1 / 3, 1 / 3]] * 400 + [[0.9, 0.05, 0.05]] * 400
    segs = {"purchase_value": segmentation(uniform, 3), "basket_size": segmentation(uniform, 3)}
    scaled = {a: np.zeros((800, 2)) for a in segs}
    flags = outlier_flags(segs, scaled, np.array([f"c{i}" for i in range(800)], dtype=object), "2026-10-31")
    seed = flags[flags.method == "membership"]
    norm = flags[flags.method == "membership_normalized"]
    assert not seed["is_outlier"].any()
    assert seed["outlier_score"].iloc[0] == pytest.approx(1 - 1 / 3)  # 0.667 < 0.7: never flagged at k = 3
    assert norm["is_outlier"].sum() == 400 and norm["is_outlier"].iloc[:400].all()
    assert norm["outlier_axes"].iloc[0] == '["purchase_value", "basket_size"]'
    # With six segments the seed's rule fires on uniform memberships.
    six = {"purchase_value": segmentation([[1 / 6] * 6] * 10, 6)}
    assert outlier_flags(six, {"purchase_value": np.zeros((10, 2))}, np.array(list("abcdefghij"), dtype=object), "2026-10-31").query(
        "method == 'membership'")["is_outlier"].all()
