"""Orders sources and validation: bad input gives a clear error naming the problem, or a logged quarantine."""

import logging

import pandas as pd
import pytest

from quimbi_pipeline.sources.demo import generate_demo, parse_demo_uri
from quimbi_pipeline.sources.orders import (
    OrdersSourceError,
    load_orders,
    orders_as_of,
    read_orders_source,
    validate_orders,
)
from quimbi_pipeline.storage import Warehouse


def good_rows(store="s1", n=4):
    return [
        {"order_id": f"{store}-o{i}", "customer_id": f"c{i % 2}", "store_id": store,
         "order_ts": f"2026-01-0{i + 1}T10:00:00", "order_total": str(10.0 * (i + 1))}
        for i in range(n)
    ]


def test_missing_required_column_names_it():
    raw = pd.DataFrame(good_rows()).drop(columns=["order_total"])
    with pytest.raises(OrdersSourceError, match="missing required column.*order_total"):
        validate_orders(raw)


@pytest.mark.parametrize(
    "column, bad_value, message",
    [
        ("order_ts", "not a date", "unparseable timestamp"),
        ("customer_id", None, "null or blank"),
        ("customer_id", "  ", "null or blank"),
        ("order_total", "12,50 EUR", "non-numeric"),
        ("order_total", None, "non-numeric"),
    ],
)
def test_bad_rows_reject_only_their_store_and_name_column_and_rows(column, bad_value, message, caplog):
    rows = good_rows("bad") + good_rows("good")
    rows[2][column] = bad_value
    with caplog.at_level(logging.ERROR):
        result = validate_orders(pd.DataFrame(rows))
    assert list(result.rejected_stores) == ["bad"]
    problem = result.rejected_stores["bad"][0]
    assert problem.column == column and message in problem.message and problem.rows == (2,)
    assert f"'{column}'" in caplog.text and "2" in caplog.text
    assert result.stores == ["good"] and len(result.orders) == 4


def test_quarantine_drops_only_bad_rows():
    rows = good_rows("s1")
    rows[1]["order_total"] = "oops"
    result = validate_orders(pd.DataFrame(rows), bad_rows="quarantine")
    assert result.rejected_stores == {} and len(result.problems) == 1
    assert sorted(result.orders["order_id"]) == ["s1-o0", "s1-o2", "s1-o3"]


def test_duplicates_exact_collapse_conflicting_reject():
    rows = good_rows("s1")
    exact = validate_orders(pd.DataFrame(rows + [dict(rows[0])]))
    assert exact.n_exact_duplicates == 1 and len(exact.orders) == 4 and not exact.problems
    conflicting = dict(rows[0], order_total="999")
    result = validate_orders(pd.DataFrame(rows + [conflicting]))
    assert result.rejected_stores["s1"][0].column == "order_id"
    assert result.rejected_stores["s1"][0].rows == (0, 4)


def test_timestamps_naive_are_utc_and_aware_are_converted():
    rows = good_rows("s1", 2)
    rows[0]["order_ts"] = "2026-01-01T23:30:00-02:00"  # = 2026-01-02 01:30 UTC
    result = validate_orders(pd.DataFrame(rows))
    ts = result.orders.sort_values("order_id")["order_ts"].tolist()
    assert ts == [pd.Timestamp("2026-01-02 01:30"), pd.Timestamp("2026-01-02 10:00")]


def test_future_dated_orders_are_counted_and_invisible_to_past_partitions(caplog):
    rows = good_rows("s1", 3)
    rows[2]["order_ts"] = "2031-01-01T00:00:00"
    with caplog.at_level(logging.WARNING):
        result = validate_orders(pd.DataFrame(rows), now=pd.Timestamp("2026-06-01"))
    assert result.n_future_dated == 1 and "dated after now" in caplog.text
    assert len(orders_as_of(result.orders, "2026-06-01")) == 2


def test_point_in_time_cut_is_end_of_day_exclusive():
    rows = good_rows("s1", 3)
    rows[0]["order_ts"] = "2026-01-05T23:59:59"
    rows[1]["order_ts"] = "2026-01-06T00:00:00"
    result = validate_orders(pd.DataFrame(rows))
    assert set(orders_as_of(result.orders, "2026-01-05")["order_id"]) == {"s1-o0", "s1-o2"}


def test_missing_store_column_defaults_and_optional_columns_detected():
    raw = pd.DataFrame(good_rows()).drop(columns=["store_id"]).assign(category="books")
    result = validate_orders(raw)
    assert result.stores == ["default"] and result.optional_columns == ("category",)


def test_csv_and_parquet_sources_round_trip(tmp_path):
    demo = generate_demo(n_customers=50, n_stores=2, seed=3)
    csv_path = tmp_path / "orders.csv"
    demo.orders.to_csv(csv_path, index=False)
    parquet_path = tmp_path / "orders.parquet"
    demo.orders.to_parquet(parquet_path)
    from_csv = load_orders(str(csv_path)).orders
    from_parquet = load_orders(str(parquet_path)).orders
    pd.testing.assert_frame_equal(from_csv, from_parquet, check_dtype=False)
    assert len(from_csv) == len(demo.orders)


def test_malformed_and_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(OrdersSourceError, match="file not found"):
        read_orders_source(str(tmp_path / "nope.csv"))
    bad = tmp_path / "orders.json"
    bad.write_text("{}")
    with pytest.raises(OrdersSourceError, match="unsupported file type"):
        read_orders_source(str(bad))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(OrdersSourceError, match="could not be read"):
        read_orders_source(str(broken))


def test_sql_source_reads_a_warehouse_table(sqlite_url):
    wh = Warehouse(sqlite_url)
    pd.DataFrame(good_rows()).to_sql("raw_orders", wh.engine, index=False)
    result = load_orders("sql:raw_orders", warehouse_url=sqlite_url)
    assert len(result.orders) == 4
    with pytest.raises(ValueError, match="cannot read table 'nope'"):
        load_orders("sql:nope", warehouse_url=sqlite_url)
    with pytest.raises(ValueError, match="not a table name"):
        load_orders("sql:x; drop table y", warehouse_url=sqlite_url)


def test_demo_uri_parameters_and_errors():
    assert parse_demo_uri("demo:customers=10,stores=2,seed=5") == {"n_customers": 10, "n_stores": 2, "seed": 5}
    with pytest.raises(ValueError, match="unknown parameter 'size'"):
        parse_demo_uri("demo:size=3")


def test_demo_is_deterministic_and_exposes_truth():
    a = generate_demo(n_customers=300, seed=1)
    b = generate_demo(n_customers=300, seed=1)
    pd.testing.assert_frame_equal(a.orders, b.orders)
    assert a.customers["change_axis"].notna().sum() > 0
    changed = a.customers.dropna(subset=["change_axis"])
    assert (changed["class_after"] >= 0).all() and changed["change_ts"].notna().all()
    assert validate_orders(a.orders).problems == []
