"""One store too large for one run, in shards: each shard a `quimbi run --shard K` process of its own, as a run launcher
would start them, reading its part of a Parquet source. Prints each shard's wall time, peak RSS and rows, and the
date's totals. Figures, not assertions.

    python benchmarks/shards.py --make-orders 10 --orders /tmp/orders10m.parquet        # 10 x 1M demo customers, one store
    python benchmarks/shards.py --orders /tmp/orders10m.parquet --shards 10 --parallel 2 --postgres postgresql+psycopg://...

Every flag of the daily job is on (ENABLE_DRIFT_ANALYSIS, ENABLE_OUTLIER_DETECTION). The run that finds the date's
shards all written computes the store's drift (with one date, no earlier snapshot: nothing to measure against).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUIMBI = str(Path(sys.executable).with_name("quimbi"))
STORE = "big"


def make_orders(path: str, millions: int) -> None:
    """`millions` x 1M demo customers (seeds 100, 101, ...; ids prefixed k<i>-), one store, written chunk by chunk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from quimbi_pipeline.sources.demo import generate_demo

    writer, rows, started = None, 0, time.perf_counter()
    for k in range(millions):
        orders = generate_demo(n_customers=1_000_000, n_stores=1, seed=100 + k).orders
        orders["customer_id"] = f"k{k}-" + orders["customer_id"].astype(str)
        orders["order_id"] = f"k{k}-" + orders["order_id"].astype(str)
        orders["store_id"] = STORE
        table = pa.Table.from_pandas(orders, preserve_index=False)
        writer = writer or pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table, row_group_size=2_000_000)
        rows += len(orders)
        print(f"{k + 1}M customers: {rows:,} orders, {time.perf_counter() - started:.0f} s", flush=True)
        del orders, table
    if writer is not None:
        writer.close()


def run_shard(k: int, args, env: dict[str, str]) -> dict:
    """`quimbi run --shard k` in a process of its own, timed by /usr/bin/time (wall seconds, peak RSS in KiB)."""
    command = ["/usr/bin/time", "-f", "%e %M", QUIMBI, "run", "--from", args.date, "--to", args.date, "--orders", args.orders,
               "--stores", STORE, "--shard", str(k), "--warehouse", args.postgres]
    started = time.strftime("%H:%M:%S")
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds, kib = done.stderr.strip().splitlines()[-1].split()
    line = next((x for x in done.stdout.splitlines() if x.startswith("[1/1]")), done.stdout.strip()[-300:])
    return {"shard": k, "started": started, "seconds": float(seconds), "peak_gib": int(kib) / 1024**2, "rc": done.returncode, "line": line,
            "stderr": done.stderr.strip()[-2000:] if done.returncode else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", required=True, help="a Parquet file of one store's orders (store_id 'big')")
    parser.add_argument("--make-orders", type=int, metavar="MILLIONS", help="write the file first: this many million demo customers")
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=1, help="shard processes at a time")
    parser.add_argument("--sample", type=int, default=100_000, help="QUIMBI_SHARD_SAMPLE_CUSTOMERS")
    parser.add_argument("--date", default="2026-10-31")
    parser.add_argument("--postgres", help="the warehouse (PostgreSQL URL)")
    parser.add_argument("--windows", help="QUIMBI_DRIFT_WINDOWS (default: the setting's five; each window keeps a drift row per customer)")
    args = parser.parse_args()
    if args.make_orders:
        make_orders(args.orders, args.make_orders)
    if not args.postgres:
        return
    env = {**os.environ, "QUIMBI_STORE_SHARDS": str(args.shards), "QUIMBI_SHARD_SAMPLE_CUSTOMERS": str(args.sample),
           "ENABLE_DRIFT_ANALYSIS": "1", "ENABLE_OUTLIER_DETECTION": "1", "QUIMBI_CONCURRENT_RUNS": str(args.parallel)}
    if args.windows:
        env["QUIMBI_DRIFT_WINDOWS"] = args.windows
    print(f"{'shard':>5} {'started':>9} {'seconds':>8} {'peak RSS GiB':>13}  the run's line", flush=True)
    started = time.perf_counter()
    results = []
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        for found in pool.map(lambda k: run_shard(k, args, env), range(1, args.shards + 1)):
            results.append(found)
            print(f"{found['shard']:>5} {found['started']:>9} {found['seconds']:>8.1f} {found['peak_gib']:>13.2f}  {found['line']}", flush=True)
            if found["rc"]:
                print(found["stderr"], flush=True)
    wall = time.perf_counter() - started
    print(f"{args.shards} shards, {args.parallel} at a time: {wall:.0f} s wall, {sum(r['seconds'] for r in results):.0f} s of shard runs, "
          f"largest peak RSS {max(r['peak_gib'] for r in results):.2f} GiB, failed {sum(1 for r in results if r['rc'])}", flush=True)


if __name__ == "__main__":
    main()
