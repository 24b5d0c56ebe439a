"""The customer page's orders: one customer's rows from each kind of orders source, cut at the profile's date, and a
plain reason when they cannot be read."""

from __future__ import annotations

import pandas as pd

from quimbi_pipeline.sources import customer_orders as module
from quimbi_pipeline.sources.customer_orders import customer_orders
from quimbi_pipeline.storage import Warehouse

ROWS = pd.DataFrame({
    "order_id": ["o1", "o2", "o3", "o4", "o5"],
    "customer_id": ["c1", "c1", "c2", "c1", "c1"],
    "store_id": ["s1", "s1", "s1", "s2", "s1"],
    "order_ts": ["2026-10-01 10:00", "2026-10-08 09:00", "2026-10-02 12:00", "2026-10-03 08:00", "2026-10-21 23:00"],
    "order_total": [40.0, 42.5, 10.0, 99.0, 38.0],
})


def test_a_sql_source_gives_the_customers_orders_of_that_store_up_to_the_date(warehouse_url):
    wh = Warehouse(warehouse_url)
    schema = "platform" if wh.is_postgres else None
    ROWS.to_sql("page_orders", wh.engine, schema=schema, index=False, if_exists="replace")
    try:
        found = customer_orders("sql:page_orders", "s1", "c1", "2026-10-20", wh.engine)
        assert found.unavailable is None
        assert found.orders["order_total"].tolist() == [40.0, 42.5]  # not c2's, not store s2's, not after the 20th
        assert found.orders["order_ts"].tolist() == [pd.Timestamp("2026-10-01 10:00"), pd.Timestamp("2026-10-08 09:00")]
        assert customer_orders("sql:page_orders", "s1", "nobody", "2026-10-20", wh.engine).orders.empty
        missing = customer_orders("sql:no_such_table", "s1", "c1", "2026-10-20", wh.engine)
        assert missing.orders.empty and missing.unavailable.startswith("the orders source could not be read: ")
    finally:
        with wh.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {'platform.' if schema else ''}page_orders")
        wh.dispose()


def test_a_file_source_is_read_once_and_a_file_too_large_for_a_page_is_named(tmp_path, monkeypatch):
    path = tmp_path / "orders.csv"
    ROWS.to_csv(path, index=False)
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    found = customer_orders(str(path), "s1", "c1", "2026-10-31", wh.engine)
    assert found.orders["order_total"].tolist() == [40.0, 42.5, 38.0]
    monkeypatch.setattr(module, "FILE_LIMIT_BYTES", 100)
    too_large = customer_orders(str(path), "s1", "c1", "2026-10-31", wh.engine)
    assert too_large.orders.empty and "more than the pages read" in too_large.unavailable and "sql:<table>" in too_large.unavailable
    assert customer_orders(None, "s1", "c1", "2026-10-31", wh.engine).unavailable == "no orders source is set (QUIMBI_ORDERS)"
    assert "is not on this machine" in customer_orders(str(tmp_path / "gone.csv"), "s1", "c1", "2026-10-31", wh.engine).unavailable
    wh.dispose()
