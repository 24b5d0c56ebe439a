"""Reader for the CDNOW sample (Fader, Hardie & Lee 2005) as orders in the pipeline's format."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def read_cdnow_orders(path: str | Path, store_id: str = "cdnow") -> pd.DataFrame:
    """Whitespace-separated master_id, sample_id, YYYYMMDD, number_of_cds, dollar_value -> orders.

    Each record becomes an order at midnight UTC; order_id is the record's line number.
    """
    raw = pd.read_csv(path, sep=r"\s+", header=None, names=["master_id", "sample_id", "date", "cds", "value"],
                      dtype={"master_id": str, "sample_id": str, "date": str})
    return pd.DataFrame({
        "order_id": [f"r{i:06d}" for i in range(len(raw))],
        "customer_id": raw["master_id"],
        "store_id": store_id,
        "order_ts": pd.to_datetime(raw["date"], format="%Y%m%d"),
        "order_total": raw["value"].astype("float64"),
        "item_count": raw["cds"].astype("int64"),
    })
