"""Benchmark one daily partition end to end on N demo customers and print one row per stage.

    python benchmarks/run.py --customers 100000 [--postgres URL] [--skip-sqlite] [--date 2026-10-31]
                             [--profiles-only] [--windows 28]

Stages: demo generation (about 20 orders per customer over two years), validation, the floor
baseline (one pandas group-by aggregation per customer over the same orders); then, per database:

1. history: the profiles of D - 28 days with snapshots, their snapshot rows and blocks copied to the
   other dates a retention policy keeps in the 28 days before D (7 daily, weekly Mondays): not timed
   as part of the partition (copies hold the same memberships; drift's work does not depend on it);
2. the partition of D end to end, as the daily job runs it: features, segments, churn/LTV, outliers,
   profiles + snapshots + outlier flags written (per-store stages), then drift of D over the
   snapshot history (read, compute, population, write), and the total;
3. the seed's snapshot write (existence check + single-row INSERT per customer) on a 10k sample,
   against the pipeline's snapshot rows/s;
4. 1,000 single-customer drift lookups and 1,000 history lookups (p50/p95).

--profiles-only runs the original flags-off partition (no snapshots, drift or outliers). --ordinary-day runs D's
partition a second time: the first is the first run of its refit period (the period's segment model is fitted), the
second reads the model in force, as every other day of the period does.
Each row: wall seconds, rows/s, and the process's peak RSS so far (reset before D's partition on Linux). After each
partition, its peak RSS per stage of the run's progress log (RSS sampled every 50 ms; Linux). Figures, not assertions.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quimbi_pipeline.history.snapshot_values import VALUE_COLUMNS  # noqa: E402
from quimbi_pipeline.history.snapshots import TYPE_BITS  # noqa: E402
from quimbi_pipeline.run import run_drift_partition, run_profiles_partition  # noqa: E402
from quimbi_pipeline.runtime.memory import release_memory  # noqa: E402
from quimbi_pipeline.settings import PipelineSettings  # noqa: E402
from quimbi_pipeline.sources.demo import generate_demo  # noqa: E402
from quimbi_pipeline.sources.orders import orders_as_of, validate_orders  # noqa: E402
from quimbi_pipeline.storage import (  # noqa: E402
    SNAPSHOT_COPIED_COLUMNS,
    Warehouse,
    drop_postgres_schema,
)


def peak_rss_gib() -> float:
    """The process's peak RSS since the last reset_peak_rss (Linux VmHWM), else since it started."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024**2  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is KiB on Linux


def reset_peak_rss() -> bool:
    """Start the peak RSS anew (Linux: writing 5 to clear_refs resets VmHWM), so D's partition reports its own."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


class Table:
    def __init__(self):
        print(f"{'stage':<34}{'seconds':>10}{'rows':>13}{'rows/s':>13}{'peak RSS GiB':>14}", flush=True)

    def row(self, stage: str, seconds: float, rows: int | None = None) -> None:
        rate = f"{rows / seconds:,.0f}" if rows and seconds > 0 else ""
        print(f"{stage:<34}{seconds:>10.2f}{(f'{rows:,}' if rows else ''):>13}{rate:>13}{peak_rss_gib():>14.2f}", flush=True)


class StageMemory(logging.Handler):
    """Peak RSS per stage of a run: the stages are the messages of the run's progress log (features, segments, churn,
    writing, verifying, drift per store), the RSS is sampled every 50 ms from /proc/self/statm in a thread."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.marks: list[tuple[float, str]] = []
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def emit(self, record: logging.LogRecord) -> None:
        self.marks.append((time.perf_counter(), record.getMessage()))

    def _rss_gib(self) -> float | None:
        try:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * self._page / 2**30
        except OSError:
            return None

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append((time.perf_counter(), self._rss_gib() or 0.0))

    def __enter__(self) -> Self:
        if self._rss_gib() is None:
            return self
        self.progress = logging.getLogger("quimbi_pipeline.progress")
        self.level = self.progress.level
        self.progress.addHandler(self)
        self.progress.setLevel(logging.INFO)
        self.marks.append((time.perf_counter(), "(start)"))
        self.thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if hasattr(self, "thread"):
            self._stop.set()
            self.thread.join()
            self.progress.removeHandler(self)
            self.progress.setLevel(self.level)
            self.marks.append((time.perf_counter(), "(end)"))

    def report(self) -> None:
        if not hasattr(self, "thread"):
            print("  (no /proc/self/statm: memory by stage not sampled)")
            return
        marks = self.marks
        print("  peak RSS by stage:")
        for (start, stage), (end, _) in itertools.pairwise(marks):
            peak = max((rss for t, rss in self.samples if start <= t <= end), default=None)
            if peak is not None:
                print(f"    {stage[:60]:<60}{end - start:>8.1f} s{peak:>8.2f} GiB", flush=True)


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def floor_baseline(orders: pd.DataFrame) -> int:
    """The least any profile pipeline must do: one group-by aggregation per customer."""
    agg = orders.groupby(["store_id", "customer_id"], sort=False).agg(
        n=("order_total", "size"), total=("order_total", "sum"), first=("order_ts", "min"), last=("order_ts", "max"))
    return len(agg)


def history_dates(as_of: pd.Timestamp) -> list[pd.Timestamp]:
    """Snapshot dates the default retention keeps in the 28 days before D: D - 28, the Mondays, the last 7 days."""
    daily = [as_of - pd.Timedelta(days=i) for i in range(1, 8)]
    weekly = [d for d in pd.date_range(as_of - pd.Timedelta(days=28), as_of - pd.Timedelta(days=8)) if d.day_of_week == 0]
    return sorted(set([as_of - pd.Timedelta(days=28), *daily, *weekly]))


def seed_history(wh: Warehouse, validated, as_of: pd.Timestamp, settings: PipelineSettings, table: Table) -> None:
    """Snapshots before D: the real profiles of D - 28, copied in SQL to the other history dates."""
    import sqlalchemy as sa

    source, *copies = history_dates(as_of)
    report, secs = timed(lambda: run_profiles_partition(validated, source, wh, settings.model_copy(update={"enable_drift_analysis": False})))
    table.row(f"  history: profiles of {source.date()}", secs, report.n_profiles)
    started, rows = time.perf_counter(), 0
    snap, blocks = wh.qualified("profile_snapshots"), wh.qualified("snapshot_blocks")
    copied = ", ".join(["layout_id", *SNAPSHOT_COPIED_COLUMNS, *VALUE_COLUMNS])
    for day in copies:
        with wh.engine.begin() as conn:
            wh._ensure_date_partition(conn, "profile_snapshots", day)
            params = {"d": day.date(), "src": source.date()}
            rows += conn.execute(sa.text(
                f"INSERT INTO {snap} (store_id, customer_id, snapshot_date, snapshot_types, {copied}) "
                f"SELECT store_id, customer_id, :d, {TYPE_BITS['daily']}, {copied} FROM {snap} WHERE snapshot_date = :src"), params).rowcount
            conn.execute(sa.text(
                f"INSERT INTO {blocks} SELECT store_id, :d, block, first_customer_id, last_customer_id, n_customers, memberships, features "
                f"FROM {blocks} WHERE snapshot_date = :src"), params)
        if wh.is_postgres:  # as the daily write does for its own date
            wh.analyze_date_partition("profile_snapshots", day)
    table.row(f"  history: copied to {len(copies)} dates", time.perf_counter() - started, rows)


def run_partition(label: str, url: str, validated, date: str, table: Table, settings: PipelineSettings, ordinary_day: bool = False) -> None:
    wh = Warehouse(url)
    as_of = pd.Timestamp(date)
    if settings.enable_drift_analysis:
        seed_history(wh, validated, as_of, settings, table)
    report = time_partition(label, wh, validated, as_of, table, settings)
    if ordinary_day:
        time_partition(f"{label} ordinary", wh, validated, as_of, table, settings)
    report_sizes_and_lookups(wh, settings, table, report)
    wh.dispose()


def time_partition(label: str, wh: Warehouse, validated, as_of: pd.Timestamp, table: Table, settings: PipelineSettings):
    """D's partition end to end (profiles, then drift), a row per store and stage."""
    date = str(as_of.date())
    if reset_peak_rss():
        print(f"  (peak RSS reset before the partition of {as_of.date()}: the rows below show its own peak, orders held included)", flush=True)
    memory = StageMemory()
    with memory:
        report, profile_secs = timed(lambda: run_profiles_partition(validated, date, wh, settings))
        drift_secs, outcomes = 0.0, []
        if settings.enable_drift_analysis:
            outcomes, drift_secs = timed(lambda: run_drift_partition(wh, as_of, settings))
    for o in report.outcomes:
        if not o.ok:
            print(f"  store {o.store_id} FAILED: {o.error}")
            continue
        for key, value in o.metrics.items():
            if key.startswith("seconds/"):
                rows = sum(o.snapshot_rows.values()) if key == "seconds/write_snapshots" else o.n_profiles
                table.row(f"{label} {o.store_id} {key[8:]}", value, rows)
    table.row(f"{label} profiles total", profile_secs, report.n_profiles)
    if settings.enable_drift_analysis:
        for o in outcomes:
            if not o.ok:
                print(f"  store {o.store_id} drift FAILED: {o.error}")
                continue
            drift_rows = o.rows.get("customer_drift", 0)  # the axis rows are inside them (customer_axis_drift is a view)
            for stage in ("read", "compute", "population", "write"):
                table.row(f"{label} {o.store_id} drift {stage}", o.seconds.get(stage, 0.0), drift_rows if stage == "write" else None)
        windows = ",".join(str(w) for w in settings.drift_windows)
        table.row(f"{label} drift total (windows {windows})", drift_secs, sum(o.rows.get("customer_drift", 0) for o in outcomes))
    table.row(f"{label} partition total", profile_secs + drift_secs, report.n_profiles)
    memory.report()
    return report


def report_sizes_and_lookups(wh: Warehouse, settings: PipelineSettings, table: Table, report) -> None:
    for name in ("profile_snapshots", "snapshot_blocks", "customer_profiles", "customer_drift"):
        size = wh.table_bytes(name)
        if size:
            n = wh.read_sql(f"SELECT count(*) AS n FROM {wh.qualified(name)}")["n"].iloc[0]
            print(f"  {name}: {n:,} rows, {size / 2**20:,.1f} MiB with indexes, {size / max(n, 1):,.0f} bytes/row")
    if settings.enable_temporal_snapshots:
        seed_style_snapshot_baseline(wh, table, report)
        history_lookups(wh)
    if settings.enable_drift_analysis:
        keys = sample_customers(wh, "customer_drift")
        if keys:
            window = 28 if 28 in settings.drift_windows else settings.drift_windows[0]
            time_lookups(f"drift lookups ({window} days, with axes)", lambda s, c: wh.customer_drift(s, c, window), keys)


SEED_SAMPLE = 10_000
LOOKUPS = 1_000


def seed_style_snapshot_baseline(wh: Warehouse, table: Table, report) -> None:
    """The seed's approach on a sample: per customer, an existence check, then a single-row INSERT.

    Into a scratch copy of the snapshot table with the same unique key, so the check is an index seek.
    """
    import json

    import sqlalchemy as sa

    from quimbi_pipeline.storage import JSON_COLUMNS
    from quimbi_pipeline.storage.snapshot_tables import VIEW_COLUMNS

    cols = ["store_id", "customer_id", "snapshot_date", "snapshot_type", *VIEW_COLUMNS]  # the seed's row: a row per type, JSON objects
    source = wh.read_sql(f"SELECT * FROM {wh.qualified('customer_profiles')} LIMIT {SEED_SAMPLE}")
    if source.empty:
        return
    target = wh.qualified("bench_seed_snapshots")
    with wh.engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {target}"))
        conn.execute(sa.text(f"CREATE TABLE {target} AS SELECT * FROM {wh.qualified('customer_profile_snapshots')} WHERE 1 = 0"))
        conn.execute(sa.text(f"CREATE UNIQUE INDEX bench_seed_key ON {target} (store_id, customer_id, snapshot_date, snapshot_type)"))
    records = source.assign(snapshot_date=source["profile_date"], snapshot_type="daily")[cols]
    for c in JSON_COLUMNS:  # PostgreSQL returns JSONB as dicts
        records[c] = [v if isinstance(v, str) else json.dumps(v) for v in records[c]]
    check = sa.text(f"SELECT 1 FROM {target} WHERE store_id = :store_id AND customer_id = :customer_id "
                    "AND snapshot_date = :snapshot_date AND snapshot_type = :snapshot_type")
    insert = sa.text(f"INSERT INTO {target} ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})")
    started = time.perf_counter()
    with wh.engine.begin() as conn:
        for r in records.to_dict(orient="records"):  # deliberately one customer at a time: the baseline measured
            if conn.execute(check, r).first() is None:
                conn.execute(insert, r)
    seed_secs = time.perf_counter() - started
    table.row("  seed-style snapshot writes (sample)", seed_secs, len(records))
    snapshot_rows = sum(sum(o.snapshot_rows.values()) for o in report.outcomes if o.ok)
    snapshot_secs = sum(o.metrics.get("seconds/write_snapshots", 0.0) for o in report.outcomes if o.ok)
    if snapshot_rows and snapshot_secs:
        ratio = (snapshot_rows / snapshot_secs) / (len(records) / seed_secs)
        print(f"  snapshot writes: {snapshot_rows / snapshot_secs:,.0f} rows/s, {ratio:,.0f}x the seed-style path", flush=True)
    with wh.engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {target}"))


def time_lookups(label: str, lookup, keys: list[tuple[str, str]]) -> None:
    """One lookup per (store, customer), as an analyst or an API would: p50 and p95 in milliseconds."""
    import numpy as np

    times = []
    for store, customer in keys:
        started = time.perf_counter()
        lookup(store, customer)
        times.append((time.perf_counter() - started) * 1000)
    p50, p95 = np.percentile(times, [50, 95])
    print(f"  {label}: {len(times)} customers, p50 {p50:.2f} ms, p95 {p95:.2f} ms", flush=True)


def sample_customers(wh: Warehouse, table: str) -> list[tuple[str, str]]:
    ids = wh.read_sql(f"SELECT DISTINCT store_id, customer_id FROM {wh.qualified(table)}")
    pick = ids.sample(n=min(LOOKUPS, len(ids)), random_state=1) if len(ids) else ids
    return list(zip(pick["store_id"], pick["customer_id"]))


def history_lookups(wh: Warehouse) -> None:
    """1,000 single-customer history lookups (28 days)."""
    keys = sample_customers(wh, "customer_profiles")
    if keys:
        time_lookups("history lookups (28 days)", lambda s, c: wh.customer_history(s, c, days=28), keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--stores", type=int, default=1)
    parser.add_argument("--date", default="2026-10-31")
    parser.add_argument("--postgres", help="PostgreSQL SQLAlchemy URL (tables in schema platform are replaced)")
    parser.add_argument("--sqlite", help="SQLite file (default: a temporary file)")
    parser.add_argument("--skip-sqlite", action="store_true")
    # 1.33: about 20 orders per customer over the two years (1.0 gives about 15).
    parser.add_argument("--rate-scale", type=float, default=1.33, help="demo purchase rates x this (default 1.33: ~20 orders a customer)")
    parser.add_argument("--profiles-only", action="store_true", help="the original flags-off partition: no snapshots, drift or outliers")
    parser.add_argument("--ordinary-day", action="store_true", help="run D's partition again with the period's model in force")
    parser.add_argument("--windows", default="28", help="drift windows (days) of the partition, as QUIMBI_DRIFT_WINDOWS (default 28)")
    args = parser.parse_args()
    if args.profiles_only:
        settings = PipelineSettings()
    else:
        settings = PipelineSettings(enable_temporal_snapshots=True, enable_drift_analysis=True, enable_outlier_detection=True, drift_windows=args.windows)

    print(f"# quimbi benchmark: {args.customers:,} customers, {args.stores} store(s), date {args.date}, "
          f"{'profiles only (flags off)' if args.profiles_only else 'end to end: snapshots, outliers, drift windows ' + args.windows}")
    print(f"# machine: {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    table = Table()
    demo, secs = timed(lambda: generate_demo(n_customers=args.customers, n_stores=args.stores, start="2024-11-01", end=args.date,
                                             rate_scale=args.rate_scale))
    table.row("generate demo orders", secs, len(demo.orders))
    validated, secs = timed(lambda: validate_orders(demo.orders))
    table.row("validate orders", secs, len(demo.orders))
    del demo  # the pipeline works on the validated copy (as it does after reading an orders file)
    release_memory()  # as orders.load_orders does after validating
    cut, secs = timed(lambda: orders_as_of(validated.orders, args.date))
    table.row("point-in-time cut", secs, len(cut))
    started = time.perf_counter()
    n = floor_baseline(cut)
    table.row("baseline: one group-by (floor)", time.perf_counter() - started, n)
    del cut  # the partition run cuts the orders itself

    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            path = args.sqlite or os.path.join(tmp, "bench.sqlite")
            run_partition("sqlite", f"sqlite:///{path}", validated, args.date, table, settings, args.ordinary_day)
    if args.postgres:
        drop_postgres_schema(args.postgres)
        run_partition("postgres", args.postgres, validated, args.date, table, settings, args.ordinary_day)


if __name__ == "__main__":
    main()
