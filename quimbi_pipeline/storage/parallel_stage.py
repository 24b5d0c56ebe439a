"""A large write's staged rows COPYed by two PostgreSQL sessions at once.

PostgreSQL parses a COPY on one core: the staged profiles of a 1M-customer store (their JSON parsed into JSONB) took
31-37 s of the write while the machine's other core waited. Measured with psql on those 814k rows: one session 17.3 s,
two sessions each COPYing half 8.8 s; moving 400k staged rows from one table into another (no parsing) 1.7 s.

So a profiles write of PARALLEL_STAGE_ROWS rows or more (Connection._stage(two_sessions=True); the one-column stages
of customer ids keep one session) has a second connection COPY the second half of the rows into an UNLOGGED table of
its own, in a thread, while the write's connection COPYs the first half into its temporary stage; the second half is
then moved into the stage and its table dropped, both inside the write's transaction. The side table is committed by
its own connection (the write's transaction could not read it otherwise): if the write's transaction rolls back, or
its process is killed, the table stays behind, and the next large write drops side tables an hour old or more. Only
scratch rows are at stake: the write itself is still one transaction.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pandas as pd
import sqlalchemy as sa

log = logging.getLogger(__name__)
PARALLEL_STAGE_ROWS = 100_000
SIDE_PREFIX = "stage_half_"
STALE_SECONDS = 3600


def side_table_name() -> str:
    """A side table's name: its creation time (epoch seconds) and a random part."""
    return f"{SIDE_PREFIX}{int(time.time())}_{uuid.uuid4().hex[:12]}"


def drop_stale_side_tables(engine: sa.Engine, schema: str, now: float | None = None) -> list[str]:
    """Drop the side tables created STALE_SECONDS ago or more (left by a write that rolled back or died); one still
    locked is left for later. Returns the names dropped."""
    now = time.time() if now is None else now
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        names = conn.execute(sa.text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :s AND c.relkind = 'r' AND c.relname LIKE :p"), {"s": schema, "p": SIDE_PREFIX.replace("_", r"\_") + "%"}).scalars().all()
        dropped = []
        conn.execute(sa.text("SET lock_timeout = '1s'"))
        for name in names:
            created = name[len(SIDE_PREFIX):].split("_", 1)[0]
            if not created.isdigit() or now - int(created) < STALE_SECONDS:
                continue
            try:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {schema}.{name}"))
                dropped.append(name)
            except sa.exc.OperationalError:  # in use: a later write drops it
                continue
        conn.execute(sa.text("RESET lock_timeout"))
    if dropped:
        log.warning("dropped %d staging table(s) left by writes that did not finish: %s", len(dropped), ", ".join(dropped))
    return dropped


def stage_in_two(wh, conn: sa.Connection, stage: str, columns_ddl: str, frame: pd.DataFrame, schema: str) -> None:
    """COPY `frame` into the temporary table `stage` of `conn`'s transaction, half of it through a second session
    (see the module's docstring)."""
    drop_stale_side_tables(wh.engine, schema)
    side = f"{schema}.{side_table_name()}"
    half = len(frame) // 2
    with wh.engine.begin() as side_conn:
        side_conn.execute(sa.text(f"CREATE UNLOGGED TABLE {side} ({columns_ddl})"))
    errors: list[BaseException] = []

    def load_second_half() -> None:
        try:
            with wh.engine.begin() as side_conn:
                wh._bulk_load(side_conn, side, frame.iloc[half:])
        except BaseException as error:  # raised in the writing thread below
            errors.append(error)

    worker = threading.Thread(target=load_second_half, name="stage-second-half", daemon=True)
    moved = False
    try:
        worker.start()
        try:
            wh._bulk_load(conn, stage, frame.iloc[:half])
        finally:
            worker.join()
        if errors:
            raise errors[0]
        conn.execute(sa.text(f"INSERT INTO {stage} SELECT * FROM {side}"))
        conn.execute(sa.text(f"DROP TABLE {side}"))  # with the write's transaction
        moved = True
    finally:
        if not moved:  # the write failed here: drop the side table now, unless the failed move still locks it
            with wh.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as side_conn:
                side_conn.execute(sa.text("SET lock_timeout = '2s'"))
                try:
                    side_conn.execute(sa.text(f"DROP TABLE IF EXISTS {side}"))
                except sa.exc.OperationalError:
                    log.warning("staging table %s left for a later write to drop (the failed write still locks it)", side)
