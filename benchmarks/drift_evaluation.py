"""Drift detection against the demo's planted changes: recall, precision, false-flag rate, delay per window.

    .venv/bin/python benchmarks/drift_evaluation.py --customers 3000 [--days 60] [--rate-scale 4] [--warehouse URL]

Runs the pipeline (snapshots, stable segments, adaptive windows, drift) for every date of the range
ending 2026-10-31, then scores customer_axis_drift against the planted truth (quimbi_pipeline/drift_evaluation.py).
"""

import argparse
import logging
import tempfile
import time
from pathlib import Path

import pandas as pd

from quimbi_pipeline.demo import generate_demo
from quimbi_pipeline.drift_evaluation import evaluate
from quimbi_pipeline.settings import PipelineSettings

END = pd.Timestamp("2026-10-31")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--rate-scale", type=float, default=4.0)
    parser.add_argument("--change-share", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--no-adaptive", action="store_true", help="original 365-day features (flag off)")
    parser.add_argument("--warehouse", help="SQLAlchemy URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    demo = generate_demo(n_customers=args.customers, n_stores=1, seed=args.seed, change_share=args.change_share, rate_scale=args.rate_scale)
    settings = PipelineSettings(enable_temporal_snapshots=True, enable_stable_segments=True, enable_drift_analysis=True,
                                enable_adaptive_windows=not args.no_adaptive)
    start = END - pd.Timedelta(days=args.days - 1)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.warehouse or f"sqlite:///{Path(tmp) / 'evaluation.sqlite'}"
        started = time.perf_counter()
        result = evaluate(demo, start, END, url, settings)
        seconds = time.perf_counter() - started
    print(f"{args.customers:,} customers, rate scale {args.rate_scale}, {start.date()}..{END.date()}, "
          f"adaptive windows {'off' if args.no_adaptive else 'on'}: {seconds:.0f} s")
    print(result.scores.round(3).to_string(index=False))
    p = result.positives
    by_axis = p.groupby(["axis", "class_before", "class_after", "well_separated"])["detected_28"].agg(["size", "mean"]).round(3)
    print("\nplants by axis and planted classes (rank worse -> better), detected within 14 days in the 28-day window:")
    print(by_axis.to_string())


if __name__ == "__main__":
    main()
