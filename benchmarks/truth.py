"""How good are the signals? Every figure of issue 11 in one run, each beside the simplest baseline.

    .venv/bin/python benchmarks/truth.py [--customers 800] [--skip-planted] [--skip-cdnow-drift] [--churn-only]

1. churn_risk_score on the real CDNOW holdout (calibrate to 1997-09-30): ROC AUC for lapsing beside
   recency and RFM quintiles, levels against observed lapse, one-time buyers, aggregate forecast.
1b, 1c. churn and the next order's date on young stores (young.py) and on CDNOW cut after 2 and 3 months
   (all customers and 200-customer samples), and the mature holdouts, beside recency, silence over the
   customer's usual gap, RFM, a logistic regression on log RFM and the previous BG/NBD model.
2. Drift, anomalies, recommendations on planted changes (planted.py), the real pipeline every day:
   this project's flags (ENABLE_DRIFT_ANALYSIS, which brings stable segments and change detection)
   beside the plan's flags alone (snapshots + drift over the original yearly features) and beside an
   analyst's rules on the orders (no order for twice the usual gap; the last two orders at half the average),
   and beside the most any detector could find knowing what each change looks like (detection_bound.py).
2b. The same scorer on a young store (young_signals.py): stoppers and 4-fold value rises.
3. Anomalies and recommendations on real customers: CDNOW, every day of 1997-10-01 .. 1998-03-31
   (no truth: how many customers each configuration alarms).
4. Outliers: four fakes injected into CDNOW, with and without containment.
5. Honest segments on CDNOW at 1998-06-30: does loyalty still split by the month customers joined?
Prints tables; writes nothing but scratch warehouses in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quimbi_pipeline.evaluation.churn import evaluate_churn, sample_customers  # noqa: E402
from quimbi_pipeline.evaluation.detection_bound import known_change_bound  # noqa: E402
from quimbi_pipeline.evaluation.outliers import evaluate_containment  # noqa: E402
from quimbi_pipeline.evaluation.planted import generate_planted  # noqa: E402
from quimbi_pipeline.evaluation.signals import analyst_baseline, evaluate, run_days  # noqa: E402
from quimbi_pipeline.evaluation.young_signals import (  # noqa: E402
    evaluate_young,
    stoppers_found_by_gaps,
    young_planted,
)
from quimbi_pipeline.model.profiles import build_store_profiles, customer_features  # noqa: E402
from quimbi_pipeline.settings import PipelineSettings  # noqa: E402
from quimbi_pipeline.sources.cdnow import read_cdnow_orders  # noqa: E402
from quimbi_pipeline.sources.orders import orders_as_of, validate_orders  # noqa: E402
from quimbi_pipeline.sources.young import generate_young  # noqa: E402

CDNOW = Path(__file__).resolve().parent.parent / "quimbi_pipeline_tests" / "data" / "CDNOW_sample.txt"
OURS = PipelineSettings(enable_drift_analysis=True, drift_windows=(28, 90))
PLAN = PipelineSettings(enable_temporal_snapshots=True, enable_drift_analysis=True, enable_stable_segments=False,
                        enable_adaptive_windows=False, drift_windows=(28, 90))


def section(title: str) -> None:
    print(f"\n## {title}\n", flush=True)


def churn() -> None:
    section("1. churn_risk_score, CDNOW holdout (calibrate to 1997-09-30)")
    orders = validate_orders(read_cdnow_orders(CDNOW)).orders
    for horizon in (90, 273):
        e = evaluate_churn(orders, "1997-09-30", horizon)
        print(f"H = {horizon} days ({e.customers} customers, {e.lapse_rate:.1%} lapse): AUC " +
              ", ".join(f"{k} {v:.4f}" for k, v in e.auc.items()))
        print("  levels (customers, one-time buyers, observed lapse): " + "; ".join(
            f"{lv} {int(r.customers)}/{int(r.one_time_buyers)}/{r.lapse_rate:.1%}" for lv, r in e.bands.iterrows()))
        print(f"  one-time buyers' scores {e.one_time_score_range[0]:.3f}..{e.one_time_score_range[1]:.3f}; repeat buyers above their median: "
              f"{e.repeat_buyers_above_median_one_time}; forecast {e.forecast:.0f} vs actual {e.actual} purchase days ({e.forecast_bias:+.1%})")


def _churn_row(name: str, e, extra: str = "") -> str:
    a = e.auc
    return (f"| {name} | {e.customers} | {e.lapse_rate:.2f} | {a['churn_risk_score']:.3f} | {a['previous_model']:.3f} | {a['recency']:.3f} | "
            f"{a['silence_over_usual_gap']:.3f} | {a['rfm_quintiles']:.3f} | {a['rfm_logistic']:.3f} | {e.mean_risk_lapsed:.2f} / {e.mean_risk_kept:.2f} "
            f"| {e.mean_risk:.2f} | {e.next_order_mae['model']:.1f} | {e.next_order_mae['naive']:.1f} / {e.next_order_mae['naive_from_tomorrow']:.1f} |{extra}")


CHURN_HEADER = ("| store | customers | lapse share | AUC: churn_risk_score | previous model (BG/NBD) | recency | silence / usual gap | RFM | "
                "logistic on log RFM | mean risk lapsed / kept | mean risk | next order MAE, days | naive (last + median gap) / from tomorrow |")


def young_stores() -> None:
    section("1b. churn on young and small stores (young.py: 70% regular buyers, a fifth stopped 3-8 weeks before D; 90 days after D)")
    print(CHURN_HEADER + " regular buyers: mean risk lapsed / kept |")
    for customers, months in ((50, 2), (50, 3), (300, 2), (300, 4), (200, 6), (1000, 6)):
        for seed in (1, 2):
            store = generate_young(customers, months, seed=seed)
            e = evaluate_churn(validate_orders(store.orders).orders, store.as_of, 90)
            regular = (store.customers.set_index("customer_id")["buyer_type"].reindex(e.scored.index) == "regular").to_numpy()
            r = e.scored[regular]
            print(_churn_row(f"{customers} customers, {months} months, seed {seed}", e,
                             f" {r['churn_risk_score'][r['lapsed']].mean():.2f} / {r['churn_risk_score'][~r['lapsed']].mean():.2f} |"))
    store = generate_young(300, 4, seed=3, regular_share=0.0)
    print(_churn_row("300 customers, 4 months, all Poisson-like", evaluate_churn(validate_orders(store.orders).orders, store.as_of, 90)) + " |")


def cdnow_early() -> None:
    section("1c. churn on CDNOW cut early (the cohort's first 2 or 3 months; 90 days after)")
    orders = validate_orders(read_cdnow_orders(CDNOW)).orders
    print(CHURN_HEADER)
    for cut in ("1997-02-28", "1997-03-31"):
        print(_churn_row(f"to {cut}, all", evaluate_churn(orders, cut, 90)))
        for seed in range(5):
            print(_churn_row(f"to {cut}, 200 customers, seed {seed}", evaluate_churn(sample_customers(orders, cut, 200, seed), cut, 90)))
    print("\nmature holdouts, the same columns:")
    print(CHURN_HEADER)
    for end, horizons in HOLDOUTS:
        for horizon in horizons:
            print(_churn_row(f"to {end}, H = {horizon}", evaluate_churn(orders, end, horizon)))


HOLDOUTS = (("1997-06-30", (90, 180, 273)), ("1997-09-30", (90, 180, 273)), ("1997-12-31", (90, 180)), ("1998-03-31", (90,)))


def planted(customers: int, workdir: Path) -> None:
    section(f"2. planted changes ({customers} customers, planted.py), daily 2026-04-01 .. 2026-10-31, scored from 2026-05-01")
    data = generate_planted(n_customers=customers, seed=1, start="2025-06-01", end="2026-10-31", changes_from="2026-05-01")
    days = pd.date_range("2026-04-01", "2026-10-31")
    results = {}
    for name, settings in (("this project (ENABLE_DRIFT_ANALYSIS)", OURS), ("plan's flags, yearly features", PLAN)):
        started = time.perf_counter()
        results[name] = evaluate(data, days, "2026-05-01", "2026-10-31", f"sqlite:///{workdir / (name[:4] + '.sqlite')}", settings)
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    table = pd.DataFrame({name: r.summary for name, r in results.items()})
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    print("\nanalyst's rules on the orders:", json.dumps({k: round(v, 3) for k, v in analyst_baseline(data, "2026-05-01", "2026-10-31").items()}))
    print("\nthis project, per kind of change and buyer:")
    ours = results["this project (ENABLE_DRIFT_ANALYSIS)"]
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(ours.by_kind.round(2).to_string())
    known_change(data, days[days >= pd.Timestamp("2026-05-01")], ours.changers)


def known_change(data, days: pd.DatetimeIndex, changers: pd.DataFrame) -> None:
    """The most a detector could find knowing what each change looks like (not when): detection_bound.py."""
    unchanged = data.customers.loc[data.customers["change_kind"].isna(), "customer_id"]
    bound = known_change_bound(data, days, changers.index, pd.Index(unchanged))
    print(f"\nknown-change CUSUMs (detection_bound.py; threshold {bound.threshold:g} for precision >= 0.9): precision {bound.precision:.3f}, "
          f"unchanged flagged {bound.unchanged_flagged:.1%}, recall within 28 days {bound.recall[28]:.3f}, within 60 days {bound.recall[60]:.3f}; "
          f"this project {(changers['delay_days'] <= 28).mean():.3f}, {(changers['delay_days'] <= 60).mean():.3f}")
    side = pd.DataFrame({"known_change_28d": bound.changers["delay_days"] <= 28, "ours_28d": changers["delay_days"].reindex(bound.changers.index) <= 28,
                         "known_change_60d": bound.changers["delay_days"] <= 60, "ours_60d": changers["delay_days"].reindex(bound.changers.index) <= 60})
    keys = bound.changers[["change_kind", "buyer_type", "cadence_days"]]
    print("recall by kind and buyer (known-change bound beside this project):")
    print(side.groupby([keys["change_kind"], keys["buyer_type"]]).mean().round(2).to_string())
    print("by cadence:\n" + side.groupby(keys["cadence_days"]).mean().round(2).to_string())


def young_loop(workdir: Path) -> None:
    section("2b. a young store in the loop (young_signals.py: 300 customers, 4 months; a fifth stop and some order values rise 4-fold "
            "61-90 days before D), daily over D's last 90 days")
    for seed in (0, 1):
        r = evaluate_young(f"sqlite:///{workdir / f'young-{seed}.sqlite'}", OURS, seed=seed)
        data, as_of = young_planted(seed=seed)
        keys = ("changers", "unchanged", "recall_28d_after_evidence", "changers_with_anomaly_28d_after_evidence", "precision_28d_window",
                "unchanged_falsely_flagged", "unchanged_with_anomaly")
        print(f"seed {seed}: " + ", ".join(f"{k} {r.summary[k]:.3f}" for k in keys))
        with pd.option_context("display.width", 250, "display.max_columns", 20):
            print(r.by_kind[["n", "evidence_28d", "after_evidence_28d", "recall_60d", "anomaly_28d", "anomaly_after_evidence_28d"]].round(2).to_string())
        by_gaps = stoppers_found_by_gaps(data, as_of, r)
        print("regular stoppers found within 28 days of 3 usual gaps of silence, by gaps before the stop: "
              + ", ".join(f"{gaps} {row.found} of {row.judged}" for gaps, row in by_gaps.iterrows()))


def cdnow_drift(workdir: Path) -> None:
    section("3. anomalies and recommendations on real customers: CDNOW, daily 1997-10-01 .. 1998-03-31")
    validated = validate_orders(read_cdnow_orders(CDNOW))
    days = pd.date_range("1997-09-01", "1998-03-31")
    for name, settings in (("this project", OURS), ("plan's flags", PLAN)):
        url = f"sqlite:///{workdir / ('cdnow-' + name[:4] + '.sqlite')}"
        run_days(validated, days, url, settings)
        from quimbi_pipeline.storage import Warehouse

        wh = Warehouse(url)
        p = {"a": "1997-10-01", "b": "1998-03-31"}
        seen = wh.read_sql("SELECT count(DISTINCT customer_id) AS n FROM customer_drift WHERE as_of_date BETWEEN :a AND :b", p)["n"].iloc[0]
        anomalous = wh.read_sql("SELECT count(DISTINCT customer_id) AS n FROM customer_drift_anomalies WHERE as_of_date BETWEEN :a AND :b", p)["n"].iloc[0]
        told = wh.read_sql("SELECT count(DISTINCT customer_id) AS n FROM customer_drift WHERE as_of_date BETWEEN :a AND :b AND window_days = 28 "
                           "AND CAST(recommendations AS TEXT) <> '[]'", p)["n"].iloc[0]
        moved = wh.read_sql("SELECT count(DISTINCT customer_id) AS n FROM customer_axis_drift WHERE as_of_date BETWEEN :a AND :b AND window_days = 28 "
                            "AND direction <> 'stable'", p)["n"].iloc[0]
        wh.dispose()
        print(f"{name}: {seen} customers with drift rows; with any anomaly {anomalous / seen:.1%}, any recommendation {told / seen:.1%}, "
              f"any axis improving/degrading in 28 days {moved / seen:.1%}")


def outliers() -> None:
    section("4. outliers: four fakes injected into CDNOW at 1998-06-30")
    r = evaluate_containment(read_cdnow_orders(CDNOW), "1998-06-30", "cdnow")
    print("caught by method:\n" + r.caught.to_string())
    print("false positive rate by method (real customers flagged):", {k: round(v, 4) for k, v in r.false_positive_rate.items()})
    for run in r.kept_segments:
        print(f"{run}: real customers keeping their dominant segment on every axis {r.kept_segments[run]:.1%}; moved by axis {r.moved_by_axis[run]}; "
              f"fakes' predicted_ltv percentile {({k: round(v, 3) for k, v in r.fake_ltv_percentile[run].items()})}")


def honest() -> None:
    section("5. segments on real data: CDNOW at 1998-06-30")
    v = validate_orders(read_cdnow_orders(CDNOW))
    day = pd.Timestamp("1998-06-30")
    for flag in (False, True):
        settings = PipelineSettings(enable_honest_segments=flag)
        result = build_store_profiles(orders_as_of(v.orders, day), "cdnow", day, settings, v.optional_columns)
        active = customer_features(orders_as_of(v.orders, day), day, settings, v.optional_columns).active
        print(f"ENABLE_HONEST_SEGMENTS={flag}:")
        for axis, feature in (("purchase_frequency", "orders_per_month"), ("loyalty_trajectory", "activity_trend")):
            seg = result.segmentations[axis]
            names = np.asarray(seg.model.segment_names)[seg.dominant]
            g = pd.DataFrame({"segment": names, "value": active[feature].to_numpy(), "joined": active["first_order_ts"].dt.month.to_numpy()}).groupby("segment")
            summary = g.agg(customers=("value", "size"), median=("value", "median"), mean_join_month=("joined", "mean")).round(2)
            print(f"  {axis} (median {feature}; join month 1-3):\n" + "\n".join("    " + line for line in summary.to_string().splitlines()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=800)
    parser.add_argument("--skip-planted", action="store_true")
    parser.add_argument("--skip-cdnow-drift", action="store_true")
    parser.add_argument("--churn-only", action="store_true", help="sections 1, 1b and 1c only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print(f"# benchmarks/truth.py, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    churn()
    if args.churn_only:
        young_stores()
        cdnow_early()
        return 0
    young_stores()
    cdnow_early()
    outliers()
    honest()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_planted:
            planted(args.customers, Path(tmp))
        young_loop(Path(tmp))
        if not args.skip_cdnow_drift:
            cdnow_drift(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
