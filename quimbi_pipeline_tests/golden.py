"""The golden fixture: a small frozen demo orders file and its frozen customer_profiles rows.

With every flag off the pipeline must reproduce these rows byte for byte. Regenerate only when an
intended change of the original outputs is agreed: `python -m quimbi_pipeline_tests.golden`.
"""

from __future__ import annotations

import io
import sqlite3
import tempfile
from pathlib import Path

import pandas as pd

DATA = Path(__file__).parent / "data"
GOLDEN_ORDERS = DATA / "golden_orders.csv"
GOLDEN_PROFILES = DATA / "golden_customer_profiles.csv"
GOLDEN_FROM, GOLDEN_TO = "2026-10-30", "2026-10-31"


def export_sqlite_profiles_csv(sqlite_path: str | Path) -> str:
    """customer_profiles exactly as stored in SQLite (JSON text untouched), as CSV text."""
    with sqlite3.connect(sqlite_path) as conn:
        frame = pd.read_sql("SELECT * FROM customer_profiles ORDER BY store_id, customer_id", conn)
    buf = io.StringIO()
    frame.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def run_golden(sqlite_path: Path) -> str:
    from quimbi_pipeline.cli import run_dates

    failed = run_dates(pd.Timestamp(GOLDEN_FROM), pd.Timestamp(GOLDEN_TO), orders=str(GOLDEN_ORDERS),
                       warehouse=f"sqlite:///{sqlite_path}", stores=None, out=io.StringIO())
    if failed:
        raise RuntimeError(f"{failed} date(s) failed")
    return export_sqlite_profiles_csv(sqlite_path)


def regenerate() -> None:
    from quimbi_pipeline.demo import generate_demo

    orders = generate_demo(n_customers=400, n_stores=2, seed=21).orders
    orders.to_csv(GOLDEN_ORDERS, index=False, lineterminator="\n")
    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN_PROFILES.write_text(run_golden(Path(tmp) / "golden.sqlite"))
    print(f"wrote {GOLDEN_ORDERS} and {GOLDEN_PROFILES}")


if __name__ == "__main__":
    regenerate()
