"""Warehouse writes on SQLite and PostgreSQL: idempotent partitions, newest profile wins, atomic failure."""

import json

import pandas as pd
import pytest
import sqlalchemy as sa

from quimbi_pipeline.model.profiles import build_store_profiles, segment_model_rows
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.sources.orders import orders_as_of, validate_orders
from quimbi_pipeline.storage.profile_tables import profile_writes


@pytest.fixture(scope="module")
def built(demo_small):
    v = validate_orders(demo_small.orders)
    out = {}
    for day in ("2026-10-20", "2026-10-31"):
        cut = orders_as_of(v.orders, day)
        for store in ("store_a", "store_b"):
            out[(store, day)] = build_store_profiles(cut[cut.store_id == store], store, pd.Timestamp(day), PipelineSettings(), v.optional_columns)
    return out


def write(wh, result):
    return wh.write_profiles_partition(result.store_id, result.as_of, result.profiles, segment_model_rows(result))


def test_same_partition_twice_gives_identical_rows(warehouse, built):
    write(warehouse, built[("store_a", "2026-10-31")])
    first = warehouse.profiles()
    write(warehouse, built[("store_a", "2026-10-31")])
    pd.testing.assert_frame_equal(first, warehouse.profiles())
    assert len(first) == len(built[("store_a", "2026-10-31")].profiles)
    models = warehouse.read_table("segment_models")
    assert len(models) == len(built[("store_a", "2026-10-31")].segmentations)


def test_backfill_of_an_old_date_never_overwrites_a_newer_profile(warehouse, built):
    new, old = built[("store_a", "2026-10-31")], built[("store_a", "2026-10-20")]
    write(warehouse, new)
    write(warehouse, old)
    rows = warehouse.profiles(store_id="store_a").set_index("customer_id")
    assert (rows.loc[new.profiles["customer_id"], "profile_date"] == "2026-10-31").all()
    only_old = set(old.profiles["customer_id"]) - set(new.profiles["customer_id"])
    assert only_old and (rows.loc[sorted(only_old), "profile_date"] == "2026-10-20").all()
    # A later date does overwrite.
    write(warehouse, built[("store_a", "2026-10-31")])
    assert warehouse.profiles(store_id="store_a", profile_date="2026-10-31").shape[0] == len(new.profiles)


def test_rerun_touches_only_its_store(warehouse, built):
    write(warehouse, built[("store_a", "2026-10-31")])
    write(warehouse, built[("store_b", "2026-10-31")])
    before_b = warehouse.profiles(store_id="store_b")
    write(warehouse, built[("store_a", "2026-10-31")])
    pd.testing.assert_frame_equal(before_b, warehouse.profiles(store_id="store_b"))


def test_failed_write_leaves_previous_rows_intact(warehouse, built):
    good = built[("store_a", "2026-10-31")]
    write(warehouse, good)
    before = warehouse.profiles()
    broken = good.profiles.copy()
    broken.loc[broken.index[-1], "archetype_name"] = None  # NOT NULL: fails after the delete and the staging
    # SQLite: "NOT NULL constraint failed"; PostgreSQL: "violates not-null constraint" (from the driver, through COPY).
    with pytest.raises(Exception, match=r"(?i)not[ -]null"):
        warehouse.write_profiles_partition("store_a", good.as_of, broken, segment_model_rows(good))
    pd.testing.assert_frame_equal(before, warehouse.profiles())


def test_membership_check_query_finds_bad_rows(warehouse, built):
    result = built[("store_b", "2026-10-31")]
    write(warehouse, result)
    assert warehouse.membership_sum_violations("store_b", "2026-10-31") == 0
    bad = result.profiles.head(3).copy()
    m = json.loads(bad.iloc[0]["fuzzy_memberships"])
    axis = next(iter(m))
    m[axis] = {k: v * 0.9 for k, v in m[axis].items()}
    bad.iloc[0, bad.columns.get_loc("fuzzy_memberships")] = json.dumps(m)
    warehouse.write_profiles_partition("store_b", result.as_of, bad, segment_model_rows(result))
    assert warehouse.membership_sum_violations("store_b", "2026-10-31") == 1


def test_a_large_stores_checks_read_side_by_side_count_what_one_read_counts(warehouse, built, monkeypatch):
    """From SIDE_BY_SIDE_CHECK_ROWS customers on PostgreSQL the membership sums are counted in two ranges of customer
    ids at once: bad rows on both sides of the split and on it are all counted, once."""
    from quimbi_pipeline.run import one_store

    result = built[("store_b", "2026-10-31")]
    write(warehouse, result)
    ids = sorted(result.profiles["customer_id"])
    bad_ids = [ids[0], ids[len(ids) // 2], ids[len(ids) // 2 + 1], ids[-1]]
    bad = result.profiles[result.profiles["customer_id"].isin(bad_ids)].copy()
    bad["fuzzy_memberships"] = [json.dumps({axis: {k: v * 0.9 for k, v in m.items()} for axis, m in json.loads(text).items()})
                                for text in bad["fuzzy_memberships"]]
    warehouse.write_profiles_partition("store_b", result.as_of, bad, segment_model_rows(result))
    pivot = ids[len(ids) // 2]
    assert warehouse.membership_sum_violations("store_b", "2026-10-31", customer_range=(None, pivot)) == 1
    assert warehouse.membership_sum_violations("store_b", "2026-10-31", customer_range=(pivot, None)) == 3
    expected = pd.Index(result.profiles["customer_id"])
    one_read = one_store._verify(warehouse, "store_b", result.as_of, expected, snapshots=False)
    ranges = []
    real = type(warehouse).membership_sum_violations
    monkeypatch.setattr(type(warehouse), "membership_sum_violations", lambda self, *a, **k: ranges.append(k.get("customer_range")) or real(self, *a, **k))
    monkeypatch.setattr(one_store, "SIDE_BY_SIDE_CHECK_ROWS", 10)
    side_by_side = one_store._verify(warehouse, "store_b", result.as_of, expected, snapshots=False)
    assert side_by_side == one_read and one_read["violations"] == 4
    if warehouse.is_postgres:  # two ranges split at one id; SQLite keeps one read
        assert len(ranges) == 2 and ranges[0][1] == ranges[1][0] and ranges[0][0] is None and ranges[1][1] is None
    else:
        assert ranges == [(None, None)]  # the whole store (a shard passes its own range)


@pytest.mark.postgres
def test_postgres_uses_platform_schema_and_jsonb(pg_url, built):
    from quimbi_pipeline.storage import Warehouse

    wh = Warehouse(pg_url)
    write(wh, built[("store_b", "2026-10-31")])
    types = wh.read_sql(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'platform' AND table_name = 'customer_profiles'"
    ).set_index("column_name")["data_type"]
    assert types["fuzzy_memberships"] == "jsonb" and types["profile_date"] == "date"
    wh.dispose()


@pytest.mark.postgres
def test_postgres_and_sqlite_hold_the_same_values(pg_url, sqlite_url, demo_small):
    """Every table the daily job writes, on both databases, compared value by value (COPY's CSV vs SQLite inserts)."""
    from quimbi_pipeline.run import run_drift_partition, run_profiles_partition
    from quimbi_pipeline.storage import Warehouse

    # Change detection off: without it anomalies need no evidence, so this short run writes some to compare.
    settings = PipelineSettings(enable_temporal_snapshots=True, enable_drift_analysis=True, enable_outlier_detection=True, drift_windows=(7, 28),
                                enable_adaptive_windows=False)
    v = validate_orders(demo_small.orders)
    tables = {"customer_profiles": ["store_id", "customer_id"], "customer_profile_snapshots": ["store_id", "customer_id", "snapshot_date", "snapshot_type"],
              "customer_outlier_flags": ["store_id", "customer_id", "flag_date", "method"],
              "customer_drift": ["store_id", "customer_id", "window_days"], "customer_axis_drift": ["store_id", "customer_id", "window_days", "axis"],
              "customer_drift_anomalies": ["store_id", "customer_id", "anomaly_type", "axis", "anomaly_date"]}
    frames = []
    for url in (sqlite_url, pg_url):
        wh = Warehouse(url)
        for day in ("2026-10-24", "2026-10-28", "2026-10-31"):
            assert not run_profiles_partition(v, day, wh, settings).failed
        assert all(o.ok for o in run_drift_partition(wh, "2026-10-31", settings))
        out = {}
        for table, key in tables.items():
            frame = wh.read_table(table)
            for c in frame.columns:
                if frame[c].map(lambda x: isinstance(x, (dict, list)) or (isinstance(x, str) and x[:1] in "{[")).any():  # JSON (PostgreSQL: parsed)
                    frame[c] = frame[c].map(lambda x: json.dumps(json.loads(x) if isinstance(x, str) else x, sort_keys=True) if x is not None else None)
                elif c.endswith("_date"):
                    frame[c] = pd.to_datetime(frame[c]).dt.strftime("%Y-%m-%d")
            out[table] = frame.sort_values(key).reset_index(drop=True)
        frames.append(out)
        wh.dispose()
    for table in tables:
        assert len(frames[0][table]) > 0, table
        pd.testing.assert_frame_equal(frames[0][table], frames[1][table], check_dtype=False, obj=table)


def test_driver_sql_binds_names_not_casts():
    from quimbi_pipeline.storage.connection import driver_sql

    sql = "SELECT x::jsonb FROM t WHERE a = :a AND b LIKE 'p%' AND c = :c_2"
    assert driver_sql(sql, postgres=True) == "SELECT x::jsonb FROM t WHERE a = %(a)s AND b LIKE 'p%%' AND c = %(c_2)s"
    assert driver_sql(sql, postgres=False) == sql


def test_fetch_rows_reads_through_the_driver_and_leaves_transactions_to_sqlalchemy(warehouse, built):
    import sqlalchemy as sa

    write(warehouse, built[("store_a", "2026-10-31")])
    table = warehouse.qualified("customer_profiles")
    some = warehouse.read_sql(f"SELECT customer_id, total_orders FROM {table} WHERE store_id = 'store_a' ORDER BY customer_id LIMIT 2")
    rows = warehouse.fetch_rows(f"SELECT customer_id, total_orders FROM {table} WHERE store_id = :s AND customer_id IN (:a, :b) ORDER BY customer_id",
                                {"s": "store_a", "a": some.customer_id[0], "b": some.customer_id[1]})
    assert rows == [{"customer_id": c, "total_orders": int(n)} for c, n in zip(some.customer_id, some.total_orders)]
    # The pooled connection goes back as SQLAlchemy expects it: a transaction it rolls back leaves nothing behind.
    for _ in range(3):
        warehouse.fetch_rows(f"SELECT count(*) AS n FROM {table} WHERE store_id = :s", {"s": "store_a"})
    with warehouse.engine.connect() as conn:
        conn.execute(sa.text(f"DELETE FROM {table} WHERE store_id = 'store_a'"))
        conn.rollback()
    assert warehouse.fetch_rows(f"SELECT count(*) AS n FROM {table} WHERE store_id = :s", {"s": "store_a"})[0]["n"] == len(warehouse.profiles("store_a")) > 0


@pytest.mark.postgres
def test_fetch_rows_recovers_from_a_server_that_dropped_its_connections(pg_url):
    """A PostgreSQL restart closes every pooled connection: one read fails, the next ones reconnect."""
    import sqlalchemy as sa

    from quimbi_pipeline.storage import Warehouse

    wh = Warehouse(pg_url)
    held = [wh.engine.raw_connection() for _ in range(3)]  # three connections in the pool
    pids = []
    for raw in held:
        pids.append(raw.driver_connection.info.backend_pid)
        raw.close()
    admin = sa.create_engine(pg_url)
    with admin.connect() as conn:
        assert conn.execute(sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid = ANY(:p)"), {"p": pids}).scalar() == 3
    admin.dispose()
    with pytest.raises(Exception, match="terminating connection"):
        wh.fetch_rows("SELECT 1 AS one", {})
    assert [wh.fetch_rows("SELECT 1 AS one", {}) for _ in range(4)] == [[{"one": 1}]] * 4
    wh.dispose()


def test_sqlite_writes_a_slice_of_rows_at_a_time_with_dates_and_nulls_intact(sqlite_url, built, monkeypatch):
    """The SQLite bulk load inserts SQLITE_INSERT_ROWS rows per call (its peak was every row as Python objects at once);
    a date column whose slice starts with NULL is still written as ISO dates, and NULL as NULL."""
    from quimbi_pipeline.storage import Warehouse, connection

    result = built[("store_a", "2026-10-31")]
    profiles = result.profiles.copy()
    profiles.loc[profiles.index[::4], "next_order_date"] = None  # NULL at the start of every slice of 4
    monkeypatch.setattr(connection, "SQLITE_INSERT_ROWS", 4)
    wh = Warehouse(sqlite_url)
    wh.write_profiles_partition("store_a", result.as_of, profiles, pd.DataFrame())
    written = wh.read_sql("SELECT customer_id, next_order_date FROM customer_profiles ORDER BY customer_id").set_index("customer_id")
    wh.dispose()
    expected = profiles.set_index("customer_id")["next_order_date"].map(lambda d: None if d is None else d.isoformat())
    assert written["next_order_date"].reindex(expected.index).tolist() == expected.tolist()
    assert written["next_order_date"].isna().sum() == len(profiles.index[::4])


@pytest.mark.postgres
def test_a_partition_is_analyzed_after_a_write_only_once_its_rows_changed_by_a_tenth(pg_url):
    """A date's partition holds every store's rows: a small store's write re-sampling it each time cost 1,000 ANALYZEs
    a date for 1,000 stores. A never-analyzed table is analyzed; then only when the rows changed by >= 10%."""
    import sqlalchemy as sa

    from quimbi_pipeline.storage import Warehouse

    wh = Warehouse(pg_url)
    probe = wh.qualified("analyze_probe")

    def insert_and_analyze(n: int) -> float:
        with wh.engine.begin() as conn:
            conn.execute(sa.text(f"INSERT INTO {probe} SELECT generate_series(1, :n)"), {"n": n})
        wh.analyze_date_partition("analyze_probe", "2026-10-31", written=n)
        with wh.engine.connect() as conn:
            return conn.execute(sa.text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:t)"), {"t": probe}).scalar_one()

    try:
        with wh.engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {probe} (x integer)"))
        assert insert_and_analyze(1000) == 1000  # never analyzed: analyzed
        assert insert_and_analyze(50) == 1000  # 5% more: left to the next write (or autovacuum)
        assert insert_and_analyze(200) == 1250  # 25% since the last ANALYZE: analyzed
    finally:
        with wh.engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {probe}"))
        wh.dispose()


@pytest.mark.postgres
def test_a_run_of_several_stores_analyzes_each_date_partition_once_after_them_all(pg_url, demo_small):
    """Each small store's ANALYZE of the date's growing partition cost more than its write (100 stores of 1,000: drift
    28.7 -> 23.1 s, docs/performance.md): a run of several stores analyzes the partitions it wrote once, after them all,
    so their statistics count every store's rows; a run of one store still analyzes after its write."""
    import sqlalchemy as sa

    from quimbi_pipeline.run import run_drift_partition, run_profiles_partition
    from quimbi_pipeline.storage import Warehouse

    settings = PipelineSettings(enable_temporal_snapshots=True, enable_drift_analysis=True)
    validated = validate_orders(demo_small.orders)
    wh = Warehouse(pg_url)
    analyzed: list[str] = []
    sa.event.listen(wh.engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *args: analyzed.append(statement.split()[1]) if statement.startswith("ANALYZE") else None)
    try:
        for day in ("2026-10-30", "2026-10-31"):
            analyzed.clear()
            assert not run_profiles_partition(validated, day, wh, settings).failed
            outcomes = run_drift_partition(wh, day, settings)
            assert len(outcomes) == 2 and all(o.ok for o in outcomes)
        # customer_drift_anomalies is one table (few rows), the other two have a partition per date.
        partitions = [wh._date_partition_name(table, "2026-10-31") for table in ("profile_snapshots", "customer_drift", "customer_drift_anomalies")]
        assert sorted(analyzed) == sorted(partitions)
        with wh.engine.connect() as conn:
            for partition in partitions:
                rows = conn.execute(sa.text(f"SELECT count(*) FROM {partition}")).scalar_one()
                estimated = conn.execute(sa.text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:t)"), {"t": partition}).scalar_one()
                assert (partition, estimated) == (partition, rows)  # every store's rows, exactly (ANALYZE reads all of a small table)
        analyzed.clear()
        assert not run_profiles_partition(validated, "2026-10-31", wh, settings, stores=["store_a"]).failed
        assert analyzed == [partitions[0]]  # one store: analyzed after its own write (rewritten rows: over a tenth changed)
    finally:
        wh.dispose()


def test_a_rerun_of_a_date_keeps_its_new_customers_only(warehouse, built):
    """A re-run of D updates the rows it stages in place and deletes the store's other rows dated D (customers no
    longer active at D); other stores and other dates are untouched."""
    full = built[("store_a", "2026-10-31")]
    write(warehouse, built[("store_a", "2026-10-20")])
    write(warehouse, built[("store_b", "2026-10-31")])
    write(warehouse, full)
    before = warehouse.profiles()
    kept = full.profiles.iloc[::3]
    warehouse.write_profiles_partition("store_a", full.as_of, kept, segment_model_rows(full))
    after = warehouse.profiles()
    dated_d = after[(after["store_id"] == "store_a") & (after["profile_date"] == "2026-10-31")]
    assert sorted(dated_d["customer_id"]) == sorted(kept["customer_id"])
    untouched = (before["store_id"] == "store_b") | (before["profile_date"] != "2026-10-31")
    pd.testing.assert_frame_equal(before[untouched].reset_index(drop=True),
                                  after[(after["store_id"] == "store_b") | (after["profile_date"] != "2026-10-31")].reset_index(drop=True))
    same = before[(before["store_id"] == "store_a") & before["customer_id"].isin(kept["customer_id"])]
    pd.testing.assert_frame_equal(same.reset_index(drop=True), dated_d.reset_index(drop=True))


@pytest.mark.postgres
def test_postgres_updates_a_profile_within_its_page(pg_url, built):
    """customer_profiles has no index on profile_date and pages half filled by inserts, so a date's update of a row
    stays in its page (a HOT update: no new index entries, the old version pruned in place)."""
    from quimbi_pipeline.storage import Warehouse
    from quimbi_pipeline.storage.profile_tables import DATE_INDEX, PROFILES_FILLFACTOR

    wh = Warehouse(pg_url)
    with wh.engine.connect() as conn:
        indexes = {i["name"]: i["column_names"] for i in sa.inspect(conn).get_indexes("customer_profiles", schema="platform")}
        options = conn.execute(sa.text("SELECT reloptions FROM pg_class WHERE oid = 'platform.customer_profiles'::regclass")).scalar_one()
    assert DATE_INDEX not in indexes and not any("profile_date" in columns for columns in indexes.values())
    assert f"fillfactor={PROFILES_FILLFACTOR}" in options

    def pages() -> pd.Series:
        rows = wh.read_sql("SELECT customer_id, (ctid::text::point)[0] AS page FROM platform.customer_profiles WHERE store_id = 'store_a'")
        return rows.set_index("customer_id")["page"]

    write(wh, built[("store_a", "2026-10-20")])
    first = pages()
    write(wh, built[("store_a", "2026-10-31")])
    both = first.index.intersection(built[("store_a", "2026-10-31")].profiles["customer_id"])
    assert len(both) > 100
    assert (pages().loc[both] == first.loc[both]).mean() >= 0.95
    wh.dispose()


def test_a_warehouse_written_before_profile_writes_has_its_dates_recorded_at_start(warehouse_url, built):
    """profile_writes tells a write of D whether rows dated D may be there to replace. A warehouse whose profiles were
    written before the table existed gets every stored (store, date) recorded at its first start, so that a re-run of
    such a date still removes the customers it no longer has."""
    from quimbi_pipeline.storage import Warehouse

    full = built[("store_a", "2026-10-31")]
    wh = Warehouse(warehouse_url)
    write(wh, full)
    with wh.engine.begin() as conn:
        conn.execute(sa.delete(profile_writes))  # as before the table existed
    wh.dispose()
    wh = Warehouse(warehouse_url)
    assert str(wh.newest_profile_date("store_a")) == "2026-10-31"
    kept = full.profiles.iloc[::4]
    wh.write_profiles_partition("store_a", full.as_of, kept, segment_model_rows(full))
    assert sorted(wh.profiles(store_id="store_a", profile_date="2026-10-31")["customer_id"]) == sorted(kept["customer_id"])
    # A reader opened before any run of this version (the read API: create=False) finds the date without the table.
    with wh.engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {wh.qualified('profile_writes')}"))
    wh.dispose()
    reader = Warehouse(warehouse_url, create=False)
    assert str(reader.newest_profile_date("store_a")) == "2026-10-31" and reader.newest_profile_date("store_c") is None
    reader.dispose()


def test_the_fill_of_profile_writes_leaves_what_a_run_wrote_between_its_looks(warehouse_url, built):
    """record_earlier_profile_writes looks whether profile_writes is empty and then fills. Eight first runs on an empty
    warehouse showed a run writing its profiles and their profile_writes row after that look, and the fill then failed
    the starting run on the row's key. The fill leaves a table that is no longer empty as it is."""
    from quimbi_pipeline.storage import Warehouse

    full = built[("store_a", "2026-10-31")]
    wh = Warehouse(warehouse_url)
    write(wh, full)  # the other run: its profiles and its profile_writes row, committed after the looks
    before = wh.read_sql(f"SELECT * FROM {wh.qualified('profile_writes')}")
    with wh.engine.begin() as conn:
        wh.fill_profile_writes(conn)
    after = wh.read_sql(f"SELECT * FROM {wh.qualified('profile_writes')}")
    assert len(before) == 1 and after.equals(before)
    # On a table still empty it fills every stored (store, date), as at a first start.
    with wh.engine.begin() as conn:
        conn.execute(sa.delete(profile_writes))
        wh.fill_profile_writes(conn)
    filled = wh.read_sql(f"SELECT store_id, profile_date, range_start, range_end, written_at FROM {wh.qualified('profile_writes')}")
    assert filled.astype(str).values.tolist() == [["store_a", "2026-10-31", "", "", "before profile_writes"]]
    wh.dispose()


@pytest.mark.parametrize(("earlier", "now", "overlaps"), [
    ([("", "")], (None, None), True), ([("", "")], ("k", "m"), True), ([], (None, None), False),
    ([("", "k")], ("k", None), False), ([("", "k")], ("j", None), True), ([("k", "")], (None, "k"), False),
    ([("k", "")], (None, "ka"), True), ([("a", "c"), ("e", "g")], ("c", "e"), False), ([("a", "c"), ("e", "g")], ("d", "f"), True),
])
def test_a_write_looks_for_rows_to_replace_only_where_an_earlier_write_of_the_date_covered_its_customers(sqlite_url, earlier, now, overlaps):
    from quimbi_pipeline.storage import Warehouse

    wh = Warehouse(sqlite_url)
    with wh.engine.begin() as conn:
        wh.insert_new(conn, profile_writes, [{"store_id": "s", "profile_date": pd.Timestamp("2026-10-31").date(), "range_start": lo, "range_end": hi,
                                              "written_at": "t"} for lo, hi in earlier])
        wh.insert_new(conn, profile_writes, [{"store_id": "s", "profile_date": pd.Timestamp("2026-10-30").date(), "range_start": "", "range_end": "",
                                              "written_at": "t"}, {"store_id": "other", "profile_date": pd.Timestamp("2026-10-31").date(),
                                                                   "range_start": "", "range_end": "", "written_at": "t"}])
        assert wh._written_before(conn, "s", pd.Timestamp("2026-10-31").date(), now) == overlaps
    wh.dispose()
