"""Latency and throughput of the read API under concurrent clients, per endpoint.

    .venv/bin/python benchmarks/api.py --build 100000 [--days 3]            # a fresh SQLite warehouse of N demo customers
    .venv/bin/python benchmarks/api.py --warehouse URL [--store store_a]    # an existing warehouse (e.g. PostgreSQL)
        [--clients 32] [--seconds 10] [--workers 2] [--prewarm] [--repeat N] [--only 'api mix' ...]

Starts `quimbi serve --workers W` on a free port (drift on, no keys: localhost), then for each endpoint
(profile, drift 28d, history 28 days, and the customer page) runs C concurrent clients, first closed-loop (as
fast as answered: the most the server gives) then at each --rates total (scheduled: the latency at that load), (one asyncio process on uvloop, minimal
keep-alive HTTP/1.1 connections) for S seconds over random customers of the store, and prints p50/p95/p99 latency and
requests/s, the server's CPU time, the CPU per request of the server, of PostgreSQL's processes (when it runs on
this machine) and of the clients, and the share of the cores' time the hypervisor stole; then a mix of the three API endpoints in turn
(the "in total" load).
The clients share the machine with the server: on 2 cores they take part of it. --prewarm (PostgreSQL) first
reads the tables the endpoints read (the store's profiles, the snapshot partitions of the last 29 days and
the drift state, with their indexes) with pg_prewarm, as a server that has been answering for a while holds
them: into shared_buffers when they fit there, else into the operating system's cache; without it the figures
are of whatever the caches hold. --build generates the demo orders and runs D daily partitions with drift (profiles, snapshots,
drift) first. It first prints this machine's speed (benchmarks/busy.py's quiet partition beside the figure of the VM
where the target was last met): the same code gave the API 1.6-2× less on a VM 2× slower. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quimbi_pipeline.api.launch import local_server

ENV = {"ENABLE_DRIFT_ANALYSIS": "1", "ENABLE_OUTLIER_DETECTION": "1"}
ENDPOINTS = {
    "profile": "/stores/{store}/customers/{customer}",
    "drift 28d": "/stores/{store}/customers/{customer}/drift?window=28d",
    "history 28d": "/stores/{store}/customers/{customer}/history?days=28",
}
MIX = "api mix"  # the three endpoints in turn


def build(url: str, customers: int, days: int, end: str) -> None:
    os.environ.update(ENV)
    from quimbi_pipeline.run import run_drift_partition, run_profiles_partition
    from quimbi_pipeline.settings import StoreSettings
    from quimbi_pipeline.sources.demo import generate_demo
    from quimbi_pipeline.sources.orders import validate_orders
    from quimbi_pipeline.storage import Warehouse

    settings = StoreSettings()
    orders = validate_orders(generate_demo(n_customers=customers, n_stores=1, seed=41, end=end).orders)
    wh = Warehouse(url)
    for day in pd.date_range(end=end, periods=days, freq="D"):
        started = time.perf_counter()
        report = run_profiles_partition(orders, day, wh, settings)
        run_drift_partition(wh, day, settings)
        print(f"  built {day.date()}: {report.n_profiles:,} profiles, {time.perf_counter() - started:.0f} s", flush=True)
    wh.dispose()


def sample_customers(url: str, store: str, n: int) -> list[str]:
    from quimbi_pipeline.storage import Warehouse

    wh = Warehouse(url, create=False)
    ids = wh.read_sql(f"SELECT customer_id FROM {wh.qualified('customer_drift')} WHERE store_id = :s AND window_days = 28", {"s": store})["customer_id"]
    wh.dispose()
    return random.Random(7).sample(list(ids), min(n, len(ids)))


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """One GET on a keep-alive HTTP/1.1 connection; returns the status (the body is read and dropped). The head is
    read in one call, not line by line: the clients share the server's cores, so their CPU is kept small."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())  # an open server answers its own names only
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        raise RuntimeError("the server answered without a Content-Length")
    await reader.readexactly(int(head[at + 17:head.index(b"\r\n", at + 2)]))
    return int(head[9:12])


def run_clients(coroutine):
    """The clients' event loop: uvloop's when installed (it comes with uvicorn's standard extras), as the server's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def prewarm(url: str) -> None:
    """Read what the endpoints read into PostgreSQL's shared_buffers when they fit there (pg_prewarm 'buffer'
    mode), else into the OS cache ('read' mode). Shared buffers are the server's own memory: a kernel that pages
    out idle page cache (this VM's DAMON scheme) cannot evict them without swap; the OS cache it can."""
    from quimbi_pipeline.storage import Warehouse
    from quimbi_pipeline.storage.connection import PG_SCHEMA

    wh = Warehouse(url, create=False)
    if not wh.is_postgres:
        raise SystemExit("--prewarm: PostgreSQL only")
    started = time.perf_counter()
    newest = wh.read_sql(f"SELECT max(snapshot_date) AS d FROM {wh.qualified('profile_snapshots')}")["d"].iloc[0]
    cutoff = f"{pd.Timestamp(newest) - pd.Timedelta(days=29):p%Y%m%d}"
    relations = [r for r in wh.read_sql(
        "SELECT c.oid::regclass::text AS name, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = :schema AND c.relkind IN ('r', 'i') AND (c.relname LIKE 'customer_profiles%' OR c.relname LIKE 'profile_snapshots_p%' "
        "OR c.relname LIKE 'customer_drift%' OR c.relname LIKE 'snapshot_layouts%' OR c.relname LIKE 'snapshot_archetypes%') "
        "AND c.relname NOT LIKE '%store_id_snapshot_date%'",  # the drift step's index by date, not the API's
        {"schema": PG_SCHEMA}).itertuples()
        if not (r.relname.startswith("profile_snapshots_p") and r.relname.split("_")[2][:9] < cutoff)]
    blocks = 0
    with wh.engine.begin() as conn:
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        shared = conn.exec_driver_sql("SELECT setting::bigint * 8192 FROM pg_settings WHERE name = 'shared_buffers'").scalar()
        size = sum(conn.exec_driver_sql("SELECT pg_relation_size(%(r)s::regclass)", {"r": r.name}).scalar() for r in relations)
        mode = "buffer" if size < 0.9 * shared else "read"
        for relation in relations:
            blocks += conn.exec_driver_sql("SELECT pg_prewarm(%(r)s::regclass, %(m)s)", {"r": relation.name, "m": mode}).scalar()
    wh.dispose()
    where = "shared_buffers" if mode == "buffer" else "the OS cache (they do not fit in shared_buffers)"
    print(f"# prewarm: {len(relations)} relations, {blocks * 8192 / 2**30:.2f} GiB read into {where} in {time.perf_counter() - started:.0f} s; "
          f"shared_buffers {shared / 2**30:.1f} GiB", flush=True)


async def load(port: int, template: str | list[str], store: str, customers: list[str], clients: int, seconds: float,
               rate: float = 0.0) -> tuple[np.ndarray, int, np.ndarray]:
    """`clients` keep-alive connections. rate 0: each sends its next request when the last is answered (the
    most the server gives); rate R: together they send R requests/s on a fixed schedule, and a latency counts
    from the scheduled time, so a server falling behind shows in it. A minimal HTTP/1.1 client: a
    full-featured one (httpx) cost more CPU per request than the server on 2 cores. A list of templates is sent in
    turn; returns (latencies, errors, the template index of each latency)."""
    templates = [template] if isinstance(template, str) else template
    latencies: list[float] = []
    kinds: list[int] = []
    errors = 0
    start = time.perf_counter()
    stop = start + seconds
    sent_count = 0

    async def one(worker: int) -> None:
        nonlocal errors, sent_count
        rng = random.Random(worker)
        interval = clients / rate if rate else 0.0
        due = start + worker * interval / clients
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while due < stop:
                if rate:
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                sent = due if rate else time.perf_counter()
                kind = sent_count % len(templates)
                sent_count += 1
                status = await _get(reader, writer, templates[kind].format(store=store, customer=rng.choice(customers)))
                latencies.append(time.perf_counter() - sent)
                kinds.append(kind)
                errors += status != 200
                due = due + interval if rate else time.perf_counter()
        finally:
            writer.close()
    await asyncio.gather(*(one(i) for i in range(clients)))
    return np.array(latencies), errors, np.array(kinds)


def _process_cpu(pids) -> float:
    """User + system CPU seconds of these processes, from /proc (one that has exited counts 0)."""
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (FileNotFoundError, IndexError):
            continue
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (the uvicorn workers), from /proc."""
    return _process_cpu([pid, *subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout.split()])


def postgres_cpu_seconds() -> float:
    """CPU of this machine's PostgreSQL server processes (user postgres; 0 when there are none, e.g. SQLite)."""
    return _process_cpu(subprocess.run(["pgrep", "-u", "postgres"], capture_output=True, text=True, check=False).stdout.split())


def stolen_seconds() -> float:
    """CPU time the hypervisor gave to others while this VM wanted it (/proc/stat's steal, all cores)."""
    return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[8]) / os.sysconf("SC_CLK_TCK")


def drained(pid: int, timeout_s: float = 60.0) -> None:
    """Wait until the server has answered what an overloaded run left queued (its CPU time stops growing), so one
    run's backlog is not the next one's latency."""
    deadline = time.monotonic() + timeout_s
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - before < 0.05:
            return
        before = now


def machine_reference() -> str:
    """benchmarks/busy.py's quiet run (a 1,000-customer profiles partition, flags off, SQLite), median of 3: the same
    code ran 0.40 s on the VM of 2026-11-26, where the API mix gave 1,605-2,028 req/s, and 0.67-0.94 s on that of
    2026-11-27, where it gave 598-1,013: the figures below are this machine's, and this says how fast it is."""
    from busy import timed_runs  # benchmarks/busy.py, beside this script

    from quimbi_pipeline.sources.demo import generate_demo
    from quimbi_pipeline.sources.orders import validate_orders

    runs = timed_runs(validate_orders(generate_demo(n_customers=1000, n_stores=1, seed=3).orders), 3)
    return f"busy.py's quiet partition {sorted(runs)[1]:.2f} s (0.40 s on the VM of 2026-11-26)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse")
    parser.add_argument("--build", type=int, help="customers of a fresh SQLite warehouse to build first")
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--end", default="2026-10-31")
    parser.add_argument("--store", default="store_a")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rates", type=float, nargs="*", default=[1000.0], help="total requests/s of the scheduled runs (after the closed loop)")
    parser.add_argument("--repeat", type=int, default=1, help="run each scheduled rate this many times (the spread between runs)")
    parser.add_argument("--only", nargs="*", help="the loads to run (default all): " + ", ".join([*ENDPOINTS, MIX, "customer page"]))
    parser.add_argument("--prewarm", action="store_true", help="read the endpoints' tables into shared_buffers (or the OS cache) first (PostgreSQL, pg_prewarm)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.warehouse
        if args.build:
            url = f"sqlite:///{Path(tmp) / 'api.sqlite'}"
            print(f"# building {args.build:,} customers x {args.days} days into {url}", flush=True)
            build(url, args.build, args.days, args.end)
        customers = sample_customers(url, args.store, 10_000)
        if not customers:
            sys.exit(f"no customer of store {args.store!r} has drift (28 days) in {url}: it needs two dates or more (--days 2)")
        print(f"# this machine's speed: {machine_reference()}", flush=True)
        if args.prewarm:
            prewarm(url)
        env = {**os.environ, **ENV}
        env.pop("QUIMBI_API_KEYS", None)
        # The warm-up follows once every worker listens: a worker still starting would miss it and take its first
        # history reads (60-90 ms of CPU each, the layouts and archetypes) inside the first measured run.
        with local_server(url, env=env, workers=args.workers, start_timeout_s=120) as running:
            port, server = running.port, running.process
            print(f"# {len(customers):,} customers sampled; {args.clients} clients, {args.seconds:.0f} s per endpoint, "
                  f"{args.workers} server workers, {os.cpu_count()} cores", flush=True)
            # CPU per request (ms) of the server's workers, PostgreSQL's processes (on this machine) and the clients: a run
            # whose latency jumps while these stay put was slowed by something else, such as the hypervisor running
            # other machines on these cores (stolen: steal time as a share of the run's cores x seconds). (Not
            # /proc/stat's busy time: at 500 requests/s on this VM it showed half the CPU the processes' own counters did.)
            print(f"{'endpoint':<14}{'load':>12}{'requests':>10}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}"
                  f"{'server CPU s':>14}{'CPU ms/req: server':>20}{'pg':>6}{'clients':>8}{'stolen':>8}  connections per worker")
            loads = {**ENDPOINTS, MIX: list(ENDPOINTS.values()), "customer page": "/ui/stores/{store}/customers/{customer}"}
            for name, template in loads.items():
                if args.only and name not in args.only:
                    continue
                run_clients(load(port, template, args.store, customers, args.clients, 1.0))  # warm-up
                for rate in (0.0, *[r for r in args.rates for _ in range(args.repeat)]):
                    drained(server.pid)
                    before = (cpu_seconds(server.pid), postgres_cpu_seconds(), time.process_time(), stolen_seconds(), time.perf_counter())
                    spread: list[int] = []
                    census = threading.Timer(args.seconds / 2, lambda: spread.extend(running.connections_per_worker()))
                    census.start()
                    latencies, errors, kinds = run_clients(load(port, template, args.store, customers, args.clients, args.seconds, rate))
                    census.join()
                    after = (cpu_seconds(server.pid), postgres_cpu_seconds(), time.process_time(), stolen_seconds(), time.perf_counter())
                    server_s, pg_s, client_s, stolen_s, wall_s = (a - b for a, b in zip(after, before))
                    per_request = [1e3 * x / len(latencies) for x in (server_s, pg_s, client_s)]
                    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) * 1e3
                    label = "closed loop" if not rate else f"{rate:,.0f}/s"
                    print(f"{name:<14}{label:>12}{len(latencies):>10,}{len(latencies) / args.seconds:>9,.0f}{p50:>9.1f}{p95:>9.1f}{p99:>9.1f}"
                          f"{errors:>8}{server_s:>14.1f}{per_request[0]:>20.2f}{per_request[1]:>6.2f}{per_request[2]:>8.2f}"
                          f"{stolen_s / (wall_s * os.cpu_count()):>8.1%}  {'/'.join(map(str, spread))}", flush=True)
                    if not isinstance(template, str):  # each endpoint's share of the mix
                        print(" " * 26 + "p95 in the mix: " + ", ".join(
                            f"{endpoint} {np.percentile(latencies[kinds == i], 95) * 1e3:.1f} ms" for i, endpoint in enumerate(ENDPOINTS)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
