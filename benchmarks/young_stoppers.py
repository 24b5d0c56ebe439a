"""Young stores' stoppers with one or two gaps: what a rule on the churn model's P(alive) would find, and what it costs.

    .venv/bin/python benchmarks/young_stoppers.py [--customers 300 1000] [--seeds 0 1 2 3] [--taus 0.01 0.002 0.001]

The young loop's store (evaluation/young_signals.py: `months` of history, a fifth of the customers stop 61-90 days
before D) is scored every day of D's last 90 days with the pipeline's churn model (features, the store's renewal fit
and its recalibration, as a daily run does). A rule that would give a customer with 1-2 gaps a frequency anomaly when
their P(alive) is at most tau is judged as truth.py section 2b judges the detector: the regular stoppers found within
28 days of their evidence (three usual gaps of silence), by gaps before the stop, and the unchanged customers it
flags on any scored day. docs/signals.md ("Stoppers with one or two gaps") has the figures and why the rule is not
built. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quimbi_pipeline.evaluation.young_signals import (  # noqa: E402
    SCORED_DAYS,
    judged_stoppers,
    young_planted,
)
from quimbi_pipeline.model import renewal  # noqa: E402
from quimbi_pipeline.model.churn import fit_store_churn  # noqa: E402
from quimbi_pipeline.model.features import compute_customer_features  # noqa: E402
from quimbi_pipeline.settings import PipelineSettings  # noqa: E402


def daily_p_alive(orders: pd.DataFrame, as_of: pd.Timestamp, days: int, settings: PipelineSettings) -> pd.DataFrame:
    """customer_id, day, gaps, p_alive for every customer with an order, every day of the `days` up to as_of."""
    rows = []
    for day in pd.date_range(as_of - pd.Timedelta(days=days), as_of):
        seen = orders[orders["order_ts"] < day + pd.Timedelta(days=1)]
        f = compute_customer_features(seen, day, occasion_days=settings.btyd_occasion_days)
        model = fit_store_churn(f, seen, day, settings, "young")
        state = renewal.renewal_state(model.purchases, f["gap_count"], f["gap_log_mean"], f["gap_log_ss"], f["days_since_last_order"])
        rows.append(pd.DataFrame({"customer_id": f.index.to_numpy(), "day": day, "gaps": f["gap_count"].to_numpy(), "p_alive": state.p_alive}))
    return pd.concat(rows, ignore_index=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--months", type=int, default=4)
    parser.add_argument("--days", type=int, default=SCORED_DAYS, help="scored days up to D")
    parser.add_argument("--taus", type=float, nargs="+", default=[0.01, 0.002, 0.001])
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    settings = PipelineSettings()
    for n in args.customers:
        for seed in args.seeds:
            started = time.perf_counter()
            data, as_of = young_planted(n, args.months, seed)
            scored = daily_p_alive(data.orders, as_of, args.days, settings)
            judged = judged_stoppers(data.orders, data.customers, as_of)
            unchanged = data.customers.loc[data.customers["change_kind"].isna(), "customer_id"]
            few = judged[judged["gaps"].between(1, 2)]
            print(f"{n} customers, {args.months} months, seed {seed} ({time.perf_counter() - started:.0f} s): regular stoppers judged "
                  f"{len(judged)} (by gaps before the stop: {judged['gaps'].clip(upper=3).value_counts().sort_index().to_dict()}, 3 = 3+); "
                  f"unchanged {len(unchanged)}")
            for tau in args.taus:
                flagged = scored[(scored["p_alive"] <= tau) & scored["gaps"].between(1, 2)]
                hits = flagged.merge(few[["evidence", "change_ts"]], left_on="customer_id", right_index=True)
                hits = hits[(hits["day"] >= hits["change_ts"].dt.normalize()) & (hits["day"] <= hits["evidence"] + pd.Timedelta(days=28))]
                false = flagged["customer_id"][flagged["customer_id"].isin(unchanged)].unique()
                kinds = data.customers.set_index("customer_id").loc[false, "buyer_type"].value_counts().to_dict()
                print(f"  P(alive) <= {tau:g}, customers with 1-2 gaps: stoppers with 1-2 gaps found within 28 days of their evidence "
                      f"{hits['customer_id'].nunique()} of {len(few)}; unchanged customers flagged {len(false)} ({len(false) / len(unchanged):.1%}: {kinds})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
