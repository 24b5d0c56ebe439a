"""Drift of one date over N customers: read snapshots, compute all windows, write, and lookups.

    python benchmarks/drift_scale.py --customers 1000000 --postgres URL [--dates 12]

The snapshot history is synthetic but has the shape the pipeline writes: one row per customer and
snapshot date in the 28 days up to D (the retention policy keeps about 12: 7 daily, 3-4 weekly, 1
monthly), fuzzy memberships on the six axes with the ladders' segment names (k 3, 3, 2, 6, 6, 5),
moving by a random walk with 5% of customers changing segment abruptly. It is bulk-loaded (COPY),
then `run_drift_partition` runs exactly as the daily_drift step does; then 1,000 single-customer
drift lookups and 1,000 history lookups. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from run import Table, sample_customers, time_lookups  # noqa: E402

from quimbi_pipeline.history.json_text import json_number, json_object, json_string  # noqa: E402
from quimbi_pipeline.history.snapshot_blocks import SnapshotColumns, encode_blocks  # noqa: E402
from quimbi_pipeline.history.snapshot_values import (  # noqa: E402
    VALUE_COLUMNS,
    archetype_dictionary,
    values_from_json,
)
from quimbi_pipeline.history.snapshots import TYPE_BITS  # noqa: E402
from quimbi_pipeline.model.features import AXIS_BY_NAME  # noqa: E402
from quimbi_pipeline.model.segmentation import segment_names_for  # noqa: E402
from quimbi_pipeline.run import run_drift_partition  # noqa: E402
from quimbi_pipeline.settings import PipelineSettings  # noqa: E402
from quimbi_pipeline.sources.demo import id_strings  # noqa: E402
from quimbi_pipeline.storage import (  # noqa: E402
    SNAPSHOT_COPIED_COLUMNS,
    Warehouse,
    drop_postgres_schema,
)

AXES_K = {"purchase_frequency": 3, "purchase_value": 3, "loyalty_trajectory": 2, "category_exploration": 6,
          "discount_sensitivity": 6, "basket_size": 5}
STORE = "store_a"


def snapshot_dates(as_of: pd.Timestamp, n: int) -> list[pd.Timestamp]:
    """The last 7 days daily, then weekly back to 28 days: n dates at most."""
    daily = [as_of - pd.Timedelta(days=i) for i in range(7)]
    weekly = [as_of - pd.Timedelta(days=7 * i + 7) for i in range(3)] + [as_of - pd.Timedelta(days=28)]
    return sorted(set(daily + weekly))[-n:]


def synthetic_history(n: int, dates: list[pd.Timestamp], seed: int = 1, block_customers: int = 50_000):
    """Yield (date, snapshot rows with memberships as JSON text, the date's snapshot blocks) per date, vectorized."""
    rng = np.random.default_rng(seed)
    customers = id_strings("c", np.arange(n), width=8)
    logits = {axis: rng.normal(0, 1.5, (n, k)) for axis, k in AXES_K.items()}
    changer = rng.random(n) < 0.05
    change_at = rng.integers(0, len(dates), n)
    for i, day in enumerate(dates):
        parts, dominant, numbers = [], {}, {}
        for axis, k in AXES_K.items():
            logits[axis] += rng.normal(0, 0.15, (n, k))
            jump = changer & (change_at == i)
            logits[axis][jump] = np.roll(logits[axis][jump], 1, axis=1)
            u = np.exp(logits[axis] - logits[axis].max(axis=1, keepdims=True))
            u /= u.sum(axis=1, keepdims=True)
            names = segment_names_for(AXIS_BY_NAME[axis], k)
            parts.append((axis, json_object([(name, json_number(u[:, j])) for j, name in enumerate(names)])))
            numbers.update({f"{axis}.{name}": np.round(u[:, j], 6) + 0.0 for j, name in enumerate(names)})
            dominant[axis] = np.asarray(names, dtype=object)[u.argmax(axis=1)]
        archetype = pd.Series(dominant["purchase_frequency"]) + ", " + pd.Series(dominant["purchase_value"])
        churn = np.round(rng.random(n), 6)
        index = pd.Index(customers, name="customer_id")
        blocks = encode_blocks(SnapshotColumns(pd.DataFrame({"churn_risk_score": churn, "archetype_name": archetype.to_numpy(object)}, index=index),
                                               pd.DataFrame(numbers, index=index), pd.DataFrame(index=index)), block_customers)
        yield day, blocks, pd.DataFrame({
            "store_id": STORE, "customer_id": customers, "snapshot_date": day.date(), "snapshot_types": TYPE_BITS["daily"],
            "archetype_id": "a", "archetype_level": 3, "archetype_name": archetype,
            "dominant_segments": json_object([(axis, json_string(names)) for axis, names in dominant.items()]),
            "fuzzy_memberships": json_object(parts), "behavioral_features": "{}",
            "churn_risk_score": churn, "churn_risk_level": "low", "predicted_ltv": 10.0, "expected_purchases": 1.0, "total_orders": 3,
            "lifetime_value": 30.0, "days_since_first_order": 100, "tenure_months": 3.3, "model_version": "kmeans-stable-2026-10-05",
        })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--dates", type=int, default=12)
    parser.add_argument("--date", default="2026-10-31")
    parser.add_argument("--chunk", type=int, default=None, help="customers per drift slice (default: the setting's)")
    parser.add_argument("--windows", default="7,28,90,180,365", help="drift windows (days), as QUIMBI_DRIFT_WINDOWS")
    parser.add_argument("--without-blocks", action="store_true", help="write no snapshot blocks: drift reads the snapshot rows' JSON")
    parser.add_argument("--postgres", help="SQLAlchemy URL of an empty PostgreSQL database (schema platform is dropped)")
    args = parser.parse_args()
    as_of = pd.Timestamp(args.date)
    dates = snapshot_dates(as_of, args.dates)
    tmp = tempfile.TemporaryDirectory()
    url = args.postgres or f"sqlite:///{Path(tmp.name) / 'drift.sqlite'}"
    wh = Warehouse(url)
    if wh.is_postgres:
        wh.dispose()
        drop_postgres_schema(url)
        wh = Warehouse(url)
    print(f"{args.customers:,} customers x {len(dates)} snapshot dates ({dates[0].date()}..{dates[-1].date()}), {'PostgreSQL' if wh.is_postgres else 'SQLite'}")
    table = Table()
    started = time.perf_counter()
    rows = 0
    for day, blocks, frame in synthetic_history(args.customers, dates):
        values = values_from_json(frame)  # the rows as the pipeline stores them: value arrays in a layout
        with wh.engine.begin() as conn:
            wh._ensure_date_partition(conn, "profile_snapshots", day)
            stored = frame[["store_id", "customer_id", "snapshot_date", "snapshot_types", *SNAPSHOT_COPIED_COLUMNS]].reset_index(drop=True)
            stored.insert(4, "layout_id", wh._write_layout(conn, STORE, values.layout, archetype_dictionary(values.frame["dominant_positions"], frame)))
            wh._bulk_load(conn, wh.qualified("profile_snapshots"), pd.concat([stored, values.frame[list(VALUE_COLUMNS)]], axis=1))
            if not args.without_blocks:
                wh.replace_snapshot_blocks(conn, STORE, day, blocks)
        rows += len(frame)
    table.row("load synthetic snapshots", time.perf_counter() - started, rows)
    chunk = {"drift_chunk_customers": args.chunk} if args.chunk else {}
    settings = PipelineSettings(enable_temporal_snapshots=True, enable_drift_analysis=True, drift_windows=args.windows, **chunk)
    started = time.perf_counter()
    (outcome,) = run_drift_partition(wh, as_of, settings, [STORE])
    total = time.perf_counter() - started
    if not outcome.ok:
        raise SystemExit(outcome.error)
    for stage in ("read", "compute", "population", "write"):
        table.row(f"drift: {stage}", outcome.seconds[stage], rows if stage == "read" else None)
    table.row(f"drift: total (windows {args.windows} + anomalies)", total, outcome.rows["customer_drift"])
    print(f"  rows written: {outcome.rows}")
    keys = sample_customers(wh, "customer_drift")
    time_lookups("drift lookups (28 days, with axes)", lambda s, c: wh.customer_drift(s, c, 28), keys)
    time_lookups("history lookups (28 days)", lambda s, c: wh.customer_history(s, c, days=28), keys)


if __name__ == "__main__":
    main()
