"""A store's profiles scored a part of its customers at a time against one StoreState (model/store_state.py), against
the whole store at once: the time and memory a part needs, which is what a store too large for one process would need.
Figures, not assertions; nothing is written (the profiles step's computation only, no warehouse).

    python benchmarks/store_parts.py --customers 1000000 --parts 5 --sample 200000 [--whole] [--daily-job]

The state is fitted on a fixed sample of the store's customers (by a hash of their ids); each part is the customers
whose hash falls in it. Peak RSS is the process's (Linux VmHWM, reset before each stage): it includes the whole
store's orders, which this script holds (a sharded run would read only its part's), so the orders' RSS before the
stages is printed beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import peak_rss_gib, reset_peak_rss  # noqa: E402

from quimbi_pipeline.model.profiles import build_store_profiles  # noqa: E402
from quimbi_pipeline.runtime.memory import release_memory  # noqa: E402
from quimbi_pipeline.settings import PipelineSettings  # noqa: E402
from quimbi_pipeline.sources.demo import generate_demo  # noqa: E402
from quimbi_pipeline.sources.orders import orders_as_of, validate_orders  # noqa: E402

DAY = pd.Timestamp("2026-10-31")
DAILY_JOB = PipelineSettings(enable_drift_analysis=True, enable_outlier_detection=True)


def rss_gib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024**2


def stage(label: str, orders: pd.DataFrame, run) -> object:
    release_memory()
    held = rss_gib()
    reset_peak_rss()
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    print(f"{label:<28}{len(orders):>12,}{len(result.profiles):>12,}{seconds:>10.1f}{held:>12.2f}{peak_rss_gib():>12.2f}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--sample", type=int, default=20_000, help="customers the store state is fitted on")
    parser.add_argument("--whole", action="store_true", help="also score the whole store at once (fitting its own state)")
    parser.add_argument("--daily-job", action="store_true", help="every flag of the daily job (default: every flag off)")
    args = parser.parse_args()
    settings = DAILY_JOB if args.daily_job else PipelineSettings()
    validated = validate_orders(generate_demo(n_customers=args.customers, n_stores=1, seed=7).orders)
    orders, optional = orders_as_of(validated.orders, DAY), tuple(validated.optional_columns)
    del validated
    # A fixed hash of each customer id: the same sample and parts on every machine and run.
    bucket = pd.util.hash_array(orders["customer_id"].to_numpy(object)) % np.uint64(1_000_000)
    print(f"{'stage':<28}{'orders':>12}{'profiles':>12}{'seconds':>10}{'RSS before':>12}{'peak RSS':>12}  (GiB)", flush=True)
    if args.whole:
        stage("whole store", orders, lambda: build_store_profiles(orders, "store", DAY, settings, optional))
    in_sample = bucket < np.uint64(1_000_000 * min(1.0, args.sample / args.customers))
    sample = orders.loc[in_sample]
    state = stage(f"state on a sample of {args.sample:,}", sample, lambda: build_store_profiles(sample, "store", DAY, settings, optional)).state
    del sample
    part_of = (bucket % np.uint64(args.parts)).astype("int64")
    for k in range(args.parts):
        part = orders.loc[part_of == k]
        stage(f"part {k + 1} of {args.parts}", part, lambda part=part: build_store_profiles(part, "store", DAY, settings, optional, state=state))
        del part


if __name__ == "__main__":
    main()
