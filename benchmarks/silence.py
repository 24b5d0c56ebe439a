"""How soon is a stopped customer's silence seen, and how often is an unchanged customer's gap taken for one?

    .venv/bin/python benchmarks/silence.py [--customers 2000]

The silence test of change_points.rate_change alone, on renewal-process buyers (planted._renewal_times)
with Gamma gap shapes 0.4 and 0.7 (bursty: clumps of purchases and long gaps), 1 (Poisson-like) and 16
(regular), weekly and monthly. Half of them stop buying on 2026-03-01, half never change; the test runs
every 7th day to 2026-10-31 on the purchases up to that day. Per variant: unchanged customers ever
flagged silent, stoppers flagged, median and 90th-percentile days from the stop to the first flag.
Variants: the rule as shipped; the silence shape floored at 1 (ChangeRule.silence_min_shape); purchases
merged into 7-day occasions first (as the churn model counts them). Figures, not assertions.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quimbi_pipeline.evaluation.planted import _renewal_times  # noqa: E402
from quimbi_pipeline.model.change_points import NS_PER_DAY, ChangeRule, rate_change  # noqa: E402

STOP, END = pd.Timestamp("2026-03-01"), pd.Timestamp("2026-10-31")


def occasions(cust: np.ndarray, ts: np.ndarray, days: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Each customer's purchases as the starts of `days`-day bins counted from their first purchase."""
    first = pd.Series(ts).groupby(cust).transform("min").to_numpy()
    start = first + (ts - first) // (days * NS_PER_DAY) * days * NS_PER_DAY
    key = np.unique(np.stack([cust, start]), axis=1)
    return key[0], key[1]


def measure(shape: float, mean_gap: float, rule: ChangeRule, merge: bool, n: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    stops = np.arange(n) < n // 2
    ends = np.where(stops, STOP.value / 1e9, END.value / 1e9)
    cust, t = _renewal_times(np.full(n, pd.Timestamp("2025-01-01").value / 1e9), ends, np.full(n, mean_gap), np.full(n, shape), rng)
    ts = (t * 1e9).astype("int64")
    if merge:
        cust, ts = occasions(cust, ts)
    first_flag = np.full(n, np.nan)
    false_flag = np.zeros(n, dtype=bool)
    for day in pd.date_range(STOP, END, freq="7D"):
        end_ns = (day + pd.Timedelta(days=1)).value
        seen = ts < end_ns
        found = rate_change(cust[seen], ts[seen], end_ns, n, rule)
        silent = found.changed & (found.after_n == 0)
        first_flag[silent & np.isnan(first_flag)] = (day - STOP).days
        false_flag |= silent & ~stops
    delay = first_flag[stops]
    seen_any = np.isfinite(delay).any()
    return {"unchanged flagged": false_flag[~stops].mean(), "stoppers flagged": np.isfinite(delay).mean(),
            "median days": np.nanmedian(delay) if seen_any else np.nan, "p90 days": np.nanpercentile(delay, 90) if seen_any else np.nan}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2000)
    args = parser.parse_args()
    variants = {"as shipped": (ChangeRule(), False), "silence shape >= 1": (replace(ChangeRule(), silence_min_shape=1.0), False),
                "7-day occasions": (ChangeRule(), True)}
    print(f"{'variant':<20}{'gap shape':>10}{'mean gap':>10}{'unchanged flagged':>19}{'stoppers flagged':>18}{'median days':>13}{'p90 days':>10}")
    for name, (rule, merge) in variants.items():
        for shape in (0.4, 0.7, 1.0, 16.0):
            for gap in (7.0, 30.0):
                r = measure(shape, gap, rule, merge, args.customers)
                print(f"{name:<20}{shape:>10}{gap:>10.0f}{r['unchanged flagged']:>19.3f}{r['stoppers flagged']:>18.3f}"
                      f"{r['median days']:>13.0f}{r['p90 days']:>10.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
