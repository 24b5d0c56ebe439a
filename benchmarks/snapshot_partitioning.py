"""Measure the seed's optional PARTITION BY RANGE (snapshot_date) for customer_profile_snapshots on PostgreSQL.

    python benchmarks/snapshot_partitioning.py --postgres URL [--customers 100000] [--days 14]

Builds one real store's profiles (demo data), then in a scratch schema writes `days` daily
snapshots of them into (a) the plain table the pipeline uses and (b) the same table partitioned by
RANGE (snapshot_date) with one partition per day, and prunes the oldest half: DELETE on both, and
DROP of the expired partitions on (b). Prints seconds and rows/s for each. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quimbi_pipeline.model.profiles import build_store_profiles  # noqa: E402
from quimbi_pipeline.settings import PipelineSettings  # noqa: E402
from quimbi_pipeline.sources.demo import generate_demo  # noqa: E402
from quimbi_pipeline.sources.orders import orders_as_of, validate_orders  # noqa: E402
from quimbi_pipeline.storage import Warehouse, customer_profiles  # noqa: E402
from quimbi_pipeline.storage.snapshot_tables import VIEW_COLUMNS  # noqa: E402

SCHEMA = "bench_partitioning"
DATE = "2026-10-31"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", required=True)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=14)
    args = parser.parse_args()

    demo = generate_demo(n_customers=args.customers, n_stores=1, start="2024-11-01", end=DATE)
    v = validate_orders(demo.orders)
    profiles = build_store_profiles(orders_as_of(v.orders, DATE), "store_a", pd.Timestamp(DATE), PipelineSettings(), v.optional_columns).profiles
    wh = Warehouse(args.postgres)
    wh.write_profiles_partition("store_a", DATE, profiles, pd.DataFrame())  # the source rows: platform.customer_profiles
    source = f"FROM platform.customer_profiles WHERE store_id = 'store_a' AND profile_date = DATE '{DATE}'"
    n = len(profiles)
    cols = ", ".join(VIEW_COLUMNS)
    body = (
        "store_id text NOT NULL, customer_id text NOT NULL, snapshot_date date NOT NULL, snapshot_type text NOT NULL, "
        + ", ".join(f"{c.name} {c.type.compile(dialect=wh.engine.dialect)}" for c in customer_profiles.columns if c.name in VIEW_COLUMNS)
        + ", PRIMARY KEY (store_id, customer_id, snapshot_date, snapshot_type)"
    )
    dates = pd.date_range(end=DATE, periods=args.days, freq="D")
    with wh.engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        conn.execute(sa.text(f"CREATE SCHEMA {SCHEMA}"))
        conn.execute(sa.text(f"CREATE TABLE {SCHEMA}.plain ({body})"))
        conn.execute(sa.text(f"CREATE INDEX ON {SCHEMA}.plain (store_id, snapshot_date, snapshot_type)"))
        conn.execute(sa.text(f"CREATE TABLE {SCHEMA}.partitioned ({body}) PARTITION BY RANGE (snapshot_date)"))
        conn.execute(sa.text(f"CREATE INDEX ON {SCHEMA}.partitioned (store_id, snapshot_date, snapshot_type)"))
        for d in dates:
            conn.execute(sa.text(
                f"CREATE TABLE {SCHEMA}.partitioned_{d:%Y%m%d} PARTITION OF {SCHEMA}.partitioned "
                f"FOR VALUES FROM ('{d:%Y-%m-%d}') TO ('{d + pd.Timedelta(days=1):%Y-%m-%d}')"))
    print(f"# {n:,} snapshot rows per day, {args.days} days")
    print(f"{'table':<13}{'insert s/day':>14}{'rows/s':>12}{'delete s':>10}{'rows/s':>12}{'drop s':>9}{'MiB':>9}")
    cutoff = dates[args.days // 2]
    for table in ("plain", "partitioned"):
        seconds = []
        for d in dates:
            started = time.perf_counter()
            with wh.engine.begin() as conn:
                conn.execute(sa.text(
                    f"INSERT INTO {SCHEMA}.{table} (store_id, customer_id, snapshot_date, snapshot_type, {cols}) "
                    f"SELECT store_id, customer_id, DATE '{d:%Y-%m-%d}', 'daily', {cols} {source}"))
            seconds.append(time.perf_counter() - started)
        with wh.engine.connect() as conn:
            size = conn.execute(sa.text(f"SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace "
                                        f"WHERE s.nspname = '{SCHEMA}' AND c.relname LIKE '{table}%' AND c.relkind IN ('r', 'p')")).scalar_one()
        started = time.perf_counter()
        with wh.engine.begin() as conn:
            deleted = conn.execute(sa.text(
                f"DELETE FROM {SCHEMA}.{table} WHERE store_id = 'store_a' AND snapshot_type = 'daily' AND snapshot_date < :c"),
                {"c": cutoff.date()}).rowcount
        delete_s = time.perf_counter() - started
        drop = ""
        if table == "partitioned":
            started = time.perf_counter()
            with wh.engine.begin() as conn:
                for d in dates[dates < cutoff]:
                    conn.execute(sa.text(f"DROP TABLE {SCHEMA}.partitioned_{d:%Y%m%d}"))
            drop = f"{time.perf_counter() - started:.3f}"
        mean = sum(seconds) / len(seconds)
        print(f"{table:<13}{mean:>14.2f}{n / mean:>12,.0f}{delete_s:>10.2f}{deleted / delete_s:>12,.0f}{drop:>9}{int(size or 0) / 2**20:>9,.0f}")
    with wh.engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {SCHEMA} CASCADE"))
    wh.dispose()


if __name__ == "__main__":
    main()
