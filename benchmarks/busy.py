"""A store's daily partition on a quiet machine and beside two CPU-bound processes (the target: <= 2x quiet).

    .venv/bin/python benchmarks/busy.py [--customers 1000 3000 30000 300000] [--repeats 3]

Prints, per store size, the median seconds of the profiles partition (every flag off, SQLite) quiet and busy, and
the ratio. OMP_WAIT_POLICY in the environment overrides the package's default (PASSIVE), to compare the two.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quimbi_pipeline.run import run_profiles_partition  # noqa: E402
from quimbi_pipeline.settings import PipelineSettings  # noqa: E402
from quimbi_pipeline.sources.demo import generate_demo  # noqa: E402
from quimbi_pipeline.sources.orders import validate_orders  # noqa: E402
from quimbi_pipeline.storage import Warehouse  # noqa: E402

BUSY = "while True: pass"


def timed_runs(validated, repeats: int) -> list[float]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        wh = Warehouse(f"sqlite:///{Path(tmp) / 'w.sqlite'}")
        for _ in range(repeats):
            started = time.perf_counter()
            run_profiles_partition(validated, "2026-10-31", wh, PipelineSettings())
            out.append(time.perf_counter() - started)
        wh.dispose()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, nargs="+", default=[1000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    for customers in args.customers:
        validated = validate_orders(generate_demo(n_customers=customers, n_stores=1, seed=3).orders)
        quiet = timed_runs(validated, args.repeats)
        hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(2)]
        try:
            time.sleep(1)
            busy = timed_runs(validated, args.repeats)
        finally:
            for hog in hogs:
                hog.kill()
        q, b = statistics.median(quiet), statistics.median(busy)
        print(f"{customers} customers, profiles partition: quiet {q:.2f} s (runs {', '.join(f'{x:.2f}' for x in quiet)}), "
              f"beside 2 CPU-bound processes {b:.2f} s (runs {', '.join(f'{x:.2f}' for x in busy)}): {b / q:.2f}x "
              f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
