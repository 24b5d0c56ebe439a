"""`quimbi`: run the daily pipeline for a date range, in process, through the Dagster job; the demo.

Errors a person made (a missing file, a bad URL or password, a bad setting, an unknown store) end
the command with one or two lines naming the problem and the fix, exit code 1, and no traceback
(`-v` shows it). Settings come from the environment and a flags file: `quimbi --help` lists them.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

import pandas as pd

from quimbi_pipeline.settings.deployment import backfill_dates_per_run, value

DEMO_END = "2026-10-31"  # the demo's history ends here (fixed, so the demo is reproducible)
# The demo's orders: the three demo stores and a young one (store_new, opened 4 months before DEMO_END).
DEMO_ORDERS = "demo:young_customers=300"
DEMO_DAYS = 35  # enough snapshots for the 7- and 28-day drift windows
DEMO_FLAGS = {"ENABLE_TEMPORAL_SNAPSHOTS": True, "ENABLE_DRIFT_ANALYSIS": True, "ENABLE_OUTLIER_DETECTION": True}
DOCS = "README.md and docs/ in the project"


class UserError(Exception):
    """A problem with what the person asked for: printed as its message, exit code 1."""


def _date(text: str) -> pd.Timestamp:
    """An ISO date only (YYYY-MM-DD): 03/09/2026 is March 9th to some and September 3rd to others."""
    try:
        if len(text) != 10:
            raise ValueError(text)
        return pd.Timestamp(datetime.date.fromisoformat(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date: {text!r} (use YYYY-MM-DD)") from exc


@dataclass
class RunSummary:
    dates_ok: list[str] = field(default_factory=list)
    dates_failed: list[str] = field(default_factory=list)
    profiles: int = 0
    drift_rows: int = 0
    seconds: float = 0.0
    dates_before_orders: list[str] = field(default_factory=list)  # dates with no order up to them in the source


def quiet_dagster_warnings() -> None:
    """Dagster's beta/preview/supersession notices are for the project's developers, not for people running it."""
    import dagster as dg

    for category in (dg.BetaWarning, dg.PreviewWarning, dg.SupersessionWarning):
        warnings.filterwarnings("ignore", category=category)


def cover_partitions(start: pd.Timestamp, end: pd.Timestamp | None = None) -> None:
    """Make the daily partitions start no later than `start` (QUIMBI_PARTITIONS_START), before the
    definitions are loaded; if they are already loaded with a later start, say which setting to change. A date
    after QUIMBI_PARTITIONS_END (when set) is an error naming it."""
    last = value("QUIMBI_PARTITIONS_END")
    if end is not None and last and end > pd.Timestamp(last):
        raise UserError(f"{end.date()} is after the last daily partition {last} (QUIMBI_PARTITIONS_END): unset it or set it later")
    configured = pd.Timestamp(value("QUIMBI_PARTITIONS_START"))
    if "quimbi_pipeline.defs.partitions" in sys.modules:
        from quimbi_pipeline.defs.partitions import daily_partitions

        first = pd.Timestamp(daily_partitions.start).tz_localize(None).normalize()
        if start < first:
            raise UserError(f"{start.date()} is before the first daily partition {first.date()}: "
                            f"set QUIMBI_PARTITIONS_START={start.date()} (or earlier) before starting the process")
    elif start < configured:
        os.environ["QUIMBI_PARTITIONS_START"] = f"{start:%Y-%m-%d}"


def open_warehouse(warehouse: str | None):
    """The warehouse (created if missing), or a UserError naming the URL (masked) and why it cannot be opened."""
    import sqlalchemy as sa

    from quimbi_pipeline.storage import (
        NeedsMigration,
        Warehouse,
        masked_url,
        resolve_warehouse_url,
    )

    url = resolve_warehouse_url(warehouse)
    try:
        return Warehouse(url)
    except NeedsMigration as exc:
        raise UserError(f"{masked_url(url)}: {exc}") from exc
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise UserError(f"cannot open the warehouse {masked_url(url)}: {reason}\n"
                        "Check --warehouse / QUIMBI_WAREHOUSE_URL (a SQLAlchemy URL, e.g. postgresql+psycopg://user:password@host:5432/db).") from exc


def migrate_warehouse(warehouse: str | None, out=None) -> int:
    """`quimbi migrate`: upgrade a warehouse written by an earlier version in place (storage/migrate.py)."""
    import sqlalchemy as sa

    from quimbi_pipeline.storage import Warehouse, masked_url, resolve_warehouse_url
    from quimbi_pipeline.storage.migrate import migrate

    out = out or sys.stdout
    url = resolve_warehouse_url(warehouse)
    try:
        wh = Warehouse(url, create=False)
        try:
            done = migrate(wh)
        finally:
            wh.dispose()
    except (sa.exc.SQLAlchemyError, OSError, ValueError, RuntimeError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise UserError(f"cannot migrate the warehouse {masked_url(url)}: {reason}\nNothing was changed (one transaction).") from exc
    print(f"quimbi migrate: {masked_url(url)}", file=out)
    for line in done:
        print(f"  {line}", file=out)
    if not done:
        print("  nothing to do: the warehouse has this version's shape", file=out)
    return 0


def prune_warehouse(warehouse: str | None, dry_run: bool, out=None) -> int:
    """`quimbi prune`: the retention policy (QUIMBI_RETENTION_*_DAYS) applied to every table; prints rows per table."""
    from quimbi_pipeline.settings import RetentionPolicy
    from quimbi_pipeline.storage import masked_url
    from quimbi_pipeline.storage.prune import expiry, prune

    out = out or sys.stdout
    try:
        policy = RetentionPolicy.from_env()
    except ValueError as exc:
        raise UserError(f"{exc}\nFix the QUIMBI_RETENTION_*_DAYS variable named above (a whole number of days >= 1).") from exc
    wh = open_warehouse(warehouse)
    try:
        if dry_run:
            counts = expiry(wh, policy).rename(columns={"expired": "rows"})
        else:
            counts = prune(wh, policy).rename(columns={"deleted": "rows"})
    finally:
        wh.dispose()
    by_table = counts.groupby("table")["rows"].sum() if len(counts) else pd.Series(dtype="int64")
    verb = "would delete" if dry_run else "deleted"
    print(f"quimbi prune: {masked_url(wh.url)}, policy (days) {policy.model_dump()}", file=out)
    for table, n in by_table.items():
        print(f"  {table}: {verb} {int(n):,} rows", file=out)
    print(f"  total: {verb} {int(by_table.sum()) if len(by_table) else 0:,} rows", file=out)
    return 0


def serve(warehouse: str | None, host: str | None, port: int, workers: int = 1, out=None, allow_hosts: list[str] | None = None) -> int:
    """`quimbi serve`: the read API over an existing warehouse (uvicorn), localhost only without API keys; then it
    answers its own addresses and `allow_hosts` (QUIMBI_API_ALLOWED_HOSTS) as Host only."""
    import sqlalchemy as sa
    import uvicorn

    from quimbi_pipeline.api import workers as api_workers
    from quimbi_pipeline.api.access import Access, AccessConfigError
    from quimbi_pipeline.api.app import create_app, served_hosts
    from quimbi_pipeline.storage import PG_SCHEMA, masked_url, resolve_warehouse_url

    out = out or sys.stdout
    url = resolve_warehouse_url(warehouse)
    database = sa.engine.make_url(url).database if url.startswith("sqlite") else None
    if database and database != ":memory:" and not os.path.exists(database):
        raise UserError(f"no warehouse at {masked_url(url)}: run `quimbi demo` or `quimbi run` first, or give --warehouse")
    try:
        access = Access.from_env()
    except AccessConfigError as exc:
        raise UserError(str(exc)) from exc
    if access.open:
        if host not in (None, "127.0.0.1", "localhost"):
            raise UserError(f"--host {host}: without API keys the server listens on localhost only; set QUIMBI_API_KEYS to a keys file")
        host, how = "127.0.0.1", "no API keys (QUIMBI_API_KEYS unset): localhost only, every store"
    else:
        host, how = host or "0.0.0.0", f"{len(access.keys)} API key(s) from {os.environ['QUIMBI_API_KEYS']}"
    hosts = served_hosts(host, extra=allow_hosts or ()) if access.open else None
    try:
        app = create_app(url, access, hosts)
        with app.state.warehouse.engine.connect() as conn:
            found = sa.inspect(conn).has_table("customer_profiles", schema=PG_SCHEMA if app.state.warehouse.is_postgres else None)
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise UserError(f"cannot open the warehouse {masked_url(url)}: {reason}") from exc
    if not found:
        app.state.warehouse.dispose()
        raise UserError(f"the warehouse {masked_url(url)} holds no quimbi tables (an empty file or database?): "
                        "run `quimbi run` or `quimbi demo` first, or give --warehouse")
    print(f"quimbi serve: http://{host}:{port} (API docs /docs), warehouse {masked_url(url)}, {how}"
          + (f", {workers} worker processes" if workers > 1 else ""), file=out, flush=True)
    logging.getLogger("quimbi_pipeline.api").setLevel(logging.INFO)
    # Requests are logged by the app without their query (keys may travel in it), not by uvicorn. Nothing the app answers
    # depends on the client's address or scheme (its links are paths, not URLs), so uvicorn's X-Forwarded-* rewriting is off.
    options = {"host": host, "port": port, "access_log": False, "log_level": "warning", "proxy_headers": False}
    if workers > 1:
        app.state.warehouse.dispose()
        os.environ["QUIMBI_WAREHOUSE_URL"] = url  # the workers build the app from the environment
        if hosts is not None:
            os.environ["QUIMBI_API_ALLOWED_HOSTS"] = ",".join(sorted(hosts))
        options.update(factory=True, workers=workers)
        if not api_workers.supported(port):  # no SO_REUSEPORT (not Linux), or port 0: uvicorn's one shared socket
            print(f"quimbi serve: the {workers} workers share one listening socket (SO_REUSEPORT unavailable or port 0): "
                  "connections may gather on one of them", file=out, flush=True)
            uvicorn.run("quimbi_pipeline.api.app:app_from_env", **options)
            return 0
        if api_workers.address_in_use(host, port):
            raise UserError(f"{host}:{port} is in use: another server answers there")
        try:
            api_workers.run_workers(uvicorn.Config("quimbi_pipeline.api.app:app_from_env", **options), host, port)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    else:
        uvicorn.run(app, **options)
    return 0


def preflight(orders: str | None, warehouse: str | None, stores: list[str] | None, read_orders: bool = True) -> tuple[str, str]:
    """Check settings, the warehouse and the orders before any date runs; returns (warehouse URL, orders URI).
    `read_orders=False` (a shard's run, which reads its own part of the orders): the orders are not read here."""

    from quimbi_pipeline.settings import StoreSettings
    from quimbi_pipeline.sources.orders import OrdersSourceError, load_orders_cached
    try:
        settings = StoreSettings()
        backfill_dates_per_run()
    except ValueError as exc:
        raise UserError(f"{exc}\nFix the environment variable or the flags file (QUIMBI_FLAGS_FILE) named above; `quimbi --help` lists the settings.") from exc
    url = open_warehouse(warehouse).url
    uri = orders or value("QUIMBI_ORDERS")
    if not read_orders:
        return url, uri
    try:
        validated = load_orders_cached(uri, warehouse_url=url, bad_rows=settings.default.bad_rows)
    except OrdersSourceError as exc:
        raise UserError(f"{exc}\nCheck --orders / QUIMBI_ORDERS (a CSV or Parquet path, sql:<table>, or demo).") from exc
    known = set(validated.stores) | set(validated.rejected_stores)
    unknown = sorted(set(stores or []) - known)
    if unknown:
        raise UserError(f"no orders for store(s) {', '.join(unknown)} in {uri}; its stores: {', '.join(sorted(known)) or 'none'}")
    if not known:
        raise UserError(f"the orders source {uri} has no order rows")
    return url, uri


class ProgressLine(logging.Handler):
    """The pipeline's stage-and-store progress as one line rewritten in place (on a terminal)."""

    def __init__(self, stream):
        super().__init__(logging.INFO)
        self.stream = stream
        self.prefix = ""

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{self.prefix}{record.getMessage()}"[:118]
        self.stream.write("\r\033[K" + text)
        self.stream.flush()

    def clear(self) -> None:
        self.stream.write("\r\033[K")
        self.stream.flush()


def run_dates(
    start: pd.Timestamp, end: pd.Timestamp, *, orders: str | None, warehouse: str | None, stores: list[str] | None,
    log_level: str = "WARNING", out=None, progress: bool = False,
) -> int:
    """Materialize the daily_pipeline job for each date in [start, end], in order. Returns the number of failed dates.

    The warehouse URL reaches the job through the environment (QUIMBI_WAREHOUSE_URL), never through
    run config, which Dagster stores with the run: a password never lands in the run storage.
    """
    summary = execute_dates(start, end, orders=orders, warehouse=warehouse, stores=stores, log_level=log_level, out=out, progress=progress)
    return len(summary.dates_failed)


def execute_dates(start, end, *, orders, warehouse, stores, log_level="WARNING", out=None, progress=False, shard: int | None = None) -> RunSummary:
    """run_dates' work, its summary returned. `shard` (0-based; `stores` one sharded store): that shard's profiles a date
    at a time, and the store's drift of each date whose shards are then all written (what the sensor launches)."""
    out = out or sys.stdout
    if end < start:
        raise SystemExit(f"--to {end.date()} is before --from {start.date()}")
    cover_partitions(start, end)
    import dagster as dg

    quiet_dagster_warnings()
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    from quimbi_pipeline.definitions import defs
    from quimbi_pipeline.defs.drift.assets import DRIFT_KEYS, DRIFT_STEP
    from quimbi_pipeline.defs.profiles.assets import (
        DAILY_STEP,
        OUTLIERS_KEY,
        PROFILES_KEY,
        SNAPSHOTS_KEY,
    )
    from quimbi_pipeline.defs.profiles.jobs import DAILY_PIPELINE_JOB
    from quimbi_pipeline.defs.profiles.schedules import SHARD_ASSETS
    from quimbi_pipeline.run import kept_pools
    from quimbi_pipeline.settings import StoreSettings
    from quimbi_pipeline.sources.orders import one_version
    from quimbi_pipeline.storage import Warehouse
    from quimbi_pipeline.storage.leases import run_lease

    job = defs.resolve_job_def(DAILY_PIPELINE_JOB)
    run_config: dict = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    if orders:
        run_config["resources"] = {"orders_source": {"config": {"uri": orders}}}
    if stores:
        run_config["ops"] = {step: {"config": {"stores": stores}} for step in (DAILY_STEP, DRIFT_STEP)}
    if shard is not None:
        run_config["ops"][DAILY_STEP]["config"]["shard"] = shard + 1
    saved_url = os.environ.get("QUIMBI_WAREHOUSE_URL")
    if warehouse:
        os.environ["QUIMBI_WAREHOUSE_URL"] = warehouse
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    line = ProgressLine(sys.stderr) if progress else None
    progress_log = logging.getLogger("quimbi_pipeline.progress")
    if line:
        progress_log.addHandler(line)
        progress_log.setLevel(logging.INFO)
        progress_log.propagate = False
    summary = RunSummary()
    dates = pd.date_range(start, end, freq="D")
    uri = orders or value("QUIMBI_ORDERS")
    first_order = _first_order_day(uri) if shard is None else None  # a shard's run reads no more of the orders than its own
    started_all = time.perf_counter()
    lease_wh = Warehouse(warehouse)  # the URL as the job resolves it (the environment was set above)
    try:
        # Every date reads the version of the orders file the run started with, and pruning leaves the run's stores
        # alone until it ends (storage/leases.py).
        # One set of small stores' worker processes for both steps of every date (steps run in this process here).
        with one_version(uri), run_lease(lease_wh, stores), kept_pools():
            done = 0
            for chunk in date_runs(dates, 1 if shard is not None else backfill_dates_per_run()):
                keys = [f"{day:%Y-%m-%d}" for day in chunk]
                if line:
                    line.prefix = f"[{done + 1}/{len(dates)}] {keys[0]} " if len(keys) == 1 else f"[{done + 1}-{done + len(keys)}/{len(dates)}] "
                started = time.perf_counter()
                drift_note = ""
                if shard is not None:  # the shard's profiles; the store's drift once the date is whole
                    result = job.execute_in_process(run_config=run_config, instance=instance, partition_key=keys[0], raise_on_error=False,
                                                    asset_selection=SHARD_ASSETS)
                    found = _run_metadata(result, DAILY_STEP)
                    waiting = lease_wh.shards_missing(stores[0], keys[0], StoreSettings().for_store(stores[0]).store_shards) if result.success else None
                    if result.success and waiting is None:
                        drift_run = job.execute_in_process(run_config=run_config, instance=instance, partition_key=keys[0], raise_on_error=False,
                                                           asset_selection=list(DRIFT_KEYS.values()))
                        found.update(_run_metadata(drift_run, DRIFT_STEP))
                        result = result if not drift_run.success else drift_run
                    elif waiting is not None:
                        drift_note = f"  drift waits: {waiting}"
                elif len(keys) == 1:
                    result = job.execute_in_process(run_config=run_config, instance=instance, partition_key=keys[0], raise_on_error=False)
                else:  # one run over the dates, as a UI backfill runs them (backfill_policy)
                    result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False,
                                                    tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]})
                secs = time.perf_counter() - started
                if line:
                    line.clear()
                if shard is None:
                    found = _run_metadata(result, DAILY_STEP, DRIFT_STEP)
                profiles, snapshots, outliers, drift = (found.get(k, {}) for k in (PROFILES_KEY, SNAPSHOTS_KEY, OUTLIERS_KEY, DRIFT_KEYS["customer_drift"]))
                failed_days = {k for k in keys if profiles.get(f"date/{k}/stores_failed", 0) or drift.get(f"date/{k}/stores_failed", 0)}
                if not result.success and not failed_days:  # a step failed as a whole: none of its dates is known good
                    failed_days = set(keys)
                for day, key in zip(chunk, keys):
                    done += 1
                    rows, stores_ok = profiles.get(f"date/{key}/rows", 0), profiles.get(f"date/{key}/stores_ok", 0)
                    text = ""
                    if snapshots.get(f"date/{key}/rows"):
                        text += f"  snapshots ({snapshots[f'date/{key}/types']}): {snapshots[f'date/{key}/rows']:,}"
                    if outliers.get(f"date/{key}/rows"):
                        text += f"  outlier flags: {outliers[f'date/{key}/rows']:,}"
                    drift_rows = {name: found[k][f"date/{key}/rows"] for name, k in DRIFT_KEYS.items() if f"date/{key}/rows" in found.get(k, {})}
                    if any(drift_rows.values()):  # tables with rows (inside a run of several dates, the drift state is its last date's)
                        text += "  drift: " + ", ".join(f"{name} {drift_rows[name]:,}" for name in DRIFT_KEYS if drift_rows.get(name))
                    text += drift_note
                    if first_order is not None and day < first_order:
                        text += f"  no orders up to this date (the source's first is {first_order:%Y-%m-%d})"
                        summary.dates_before_orders.append(key)
                    date_secs = secs if len(keys) == 1 else profiles.get(f"date/{key}/seconds", 0.0) + drift.get(f"date/{key}/seconds", 0.0)
                    status = "FAILED" if key in failed_days else "ok"
                    print(f"[{done}/{len(dates)}] {key}  {status:6}  stores ok {stores_ok}  profiles {rows:>9,}  {date_secs:6.1f}s{text}",
                          file=out, flush=True)
                    summary.profiles += rows
                    summary.drift_rows += sum(drift_rows.values())
                    (summary.dates_failed if key in failed_days else summary.dates_ok).append(key)
                if len(keys) > 1:
                    print(f"    one run over {keys[0]} to {keys[-1]}: {secs:.1f}s, the orders read once", file=out, flush=True)
                if not result.success:
                    _print_failures(result, out)
    finally:
        lease_wh.dispose()
        if line:
            progress_log.removeHandler(line)
            progress_log.propagate = True
        if warehouse:
            if saved_url is None:
                os.environ.pop("QUIMBI_WAREHOUSE_URL", None)
            else:
                os.environ["QUIMBI_WAREHOUSE_URL"] = saved_url
    summary.seconds = time.perf_counter() - started_all
    return summary


def _first_order_day(uri: str) -> pd.Timestamp | None:
    """The day of the source's first order (files and the demo, read once and cached for the run); None when it
    cannot be had cheaply (a sql: table) or the source is broken (each date's run then says what is wrong)."""
    from quimbi_pipeline.settings import StoreSettings
    from quimbi_pipeline.sources.orders import OrdersSourceError, load_orders_cached

    if uri.startswith("sql:"):
        return None
    try:
        orders = load_orders_cached(uri, bad_rows=StoreSettings().default.bad_rows).orders
    except (OrdersSourceError, ValueError):
        return None
    return orders["order_ts"].min().normalize() if len(orders) else None


def date_runs(dates: pd.DatetimeIndex, per_run: int) -> list[pd.DatetimeIndex]:
    """The dates in runs of up to `per_run` consecutive dates, oldest first (a UI backfill's runs of the same range)."""
    return [dates[i:i + per_run] for i in range(0, len(dates), per_run)]


def _run_metadata(result, *steps: str) -> dict:
    """{asset key: {metadata key: value}} of the run's materializations by these steps (a range run records the same
    metadata for each of its dates: the first is read)."""
    found: dict = {}
    for step in steps:
        for m in result.asset_materializations_for_node(step):
            found.setdefault(m.asset_key, {k: v.value for k, v in m.metadata.items()})
    return found


def _print_failures(result, out) -> None:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error:
            error = event.step_failure_data.error
            cause = error.cause.message.strip() if error.cause else ""
            print(f"    {event.step_key}: {cause or error.message.strip()}".splitlines()[0], file=out)
            user = event.step_failure_data.user_failure_data
            for k, v in (user.metadata if user else {}).items():
                print(f"    {k}: {v.value}", file=out)


def print_summary(summary: RunSummary, warehouse_url: str, out=None) -> None:
    from quimbi_pipeline.storage import masked_url

    out = out or sys.stdout
    n = len(summary.dates_ok) + len(summary.dates_failed)
    failed = f", failed {len(summary.dates_failed)} ({', '.join(summary.dates_failed[:5])}{' …' if len(summary.dates_failed) > 5 else ''})" if summary.dates_failed else ""
    print(f"\n{n} date(s): ok {len(summary.dates_ok)}{failed}; {summary.profiles:,} profiles and {summary.drift_rows:,} drift rows written "
          f"in {summary.seconds:.1f}s; warehouse {masked_url(warehouse_url)}", file=out)
    if summary.dates_before_orders:
        before = summary.dates_before_orders
        print(f"{len(before)} date(s) have no orders up to them ({before[0]}{f' to {before[-1]}' if len(before) > 1 else ''}): "
              "nothing to profile there", file=out)


def settings_help() -> str:
    from quimbi_pipeline.settings.reference import help_text

    return f"{help_text()}\nDetails: {DOCS}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quimbi", description="Daily customer behavioral profiles (Dagster): run dates, or the demo.",
                                     epilog=settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log each stage; show tracebacks of errors")
    # -v after the subcommand too (`quimbi run ... -v`, as every error's hint says): SUPPRESS keeps the main parser's value
    # when a subcommand does not get it.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="as quimbi -v")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[verbose], help="materialize the daily pipeline for each date from --from to --to")
    run.add_argument("--from", dest="start", type=_date, required=True)
    run.add_argument("--to", dest="end", type=_date, required=True)
    run.add_argument("--orders", help="orders source (default: QUIMBI_ORDERS, else demo)")
    run.add_argument("--warehouse", help="SQLAlchemy URL (default: QUIMBI_WAREHOUSE_URL, else the project's SQLite file)")
    run.add_argument("--stores", help="comma-separated store ids (default: all); each must have orders in the source")
    run.add_argument("--shard", help="one shard of a sharded store (QUIMBI_STORE_SHARDS > 1; --stores names that one store), 1 to its "
                                     "shard count: its profiles; the run that finds every shard of a date written also computes the store's drift")
    prune = sub.add_parser("prune", parents=[verbose], help="delete what the retention policy (QUIMBI_RETENTION_*_DAYS) expires, in every table")
    prune.add_argument("--warehouse", help="SQLAlchemy URL (default: QUIMBI_WAREHOUSE_URL, else the project's SQLite file)")
    prune.add_argument("--dry-run", action="store_true", help="count the expired rows per table, delete nothing")
    migrate = sub.add_parser("migrate", parents=[verbose], help="upgrade a warehouse written by an earlier version in place (one transaction)")
    migrate.add_argument("--warehouse", help="SQLAlchemy URL (default: QUIMBI_WAREHOUSE_URL, else the project's SQLite file)")
    serve_cmd = sub.add_parser("serve", parents=[verbose], help="the read API over the warehouse (FastAPI; docs at /docs)")
    serve_cmd.add_argument("--warehouse", help="SQLAlchemy URL (default: QUIMBI_WAREHOUSE_URL, else the project's SQLite file)")
    serve_cmd.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 with QUIMBI_API_KEYS)")
    serve_cmd.add_argument("--port", type=int, default=8000)
    serve_cmd.add_argument("--allow-host", action="append", metavar="NAME",
                           help="without API keys, also answer requests whose Host is NAME (repeatable; default: localhost only)")
    serve_cmd.add_argument("--workers", type=int, default=1, help="server processes (default 1; for throughput on PostgreSQL twice the cores: a worker waits on the database between reads)")
    demo = sub.add_parser("demo", parents=[verbose], help=f"the last {DEMO_DAYS} days of the demo orders with snapshots, drift and outliers on, then what was found")
    demo.add_argument("--days", type=int, default=DEMO_DAYS)
    demo.add_argument("--warehouse", help="SQLAlchemy URL (default: the project's SQLite file)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _command(args)
    except UserError as exc:
        if args.verbose:
            logging.exception("quimbi failed")
        print(f"quimbi: error: {exc}", file=sys.stderr)
        if not args.verbose:
            print("(run with -v for details)", file=sys.stderr)
        return 1


def _command(args) -> int:
    level = "INFO" if args.verbose else "WARNING"
    progress = sys.stderr.isatty() and not args.verbose
    if args.command == "run":
        stores = [s.strip() for s in args.stores.split(",") if s.strip()] if args.stores else None
        if args.end < args.start:
            raise SystemExit(f"--to {args.end.date()} is before --from {args.start.date()}")
        shard = None
        if args.shard is not None:
            from quimbi_pipeline.run.sharded_store import shard_index

            try:
                shard = shard_index(args.shard)
            except ValueError as exc:
                raise SystemExit(f"--shard: {exc}") from None
            if not stores or len(stores) != 1:
                raise SystemExit("--shard: a shard belongs to one store: name it with --stores")
        url, _ = preflight(args.orders, args.warehouse, stores, read_orders=shard is None)
        summary = execute_dates(args.start, args.end, orders=args.orders, warehouse=url, stores=stores, log_level=level, progress=progress,
                                shard=shard)
        print_summary(summary, url)
        return 1 if summary.dates_failed else 0

    if args.command == "serve":
        return serve(args.warehouse, args.host, args.port, args.workers, allow_hosts=args.allow_host)
    if args.command == "prune":
        return prune_warehouse(args.warehouse, args.dry_run)
    if args.command == "migrate":
        return migrate_warehouse(args.warehouse)

    from quimbi_pipeline.run.demo_report import (
        demo_report,
        write_demo_flags,
        write_demo_partitions,
    )
    from quimbi_pipeline.storage import default_warehouse_url, masked_url

    url = args.warehouse or default_warehouse_url()
    flags_file = write_demo_flags(DEMO_FLAGS)
    os.environ["QUIMBI_FLAGS_FILE"] = str(flags_file)
    end = pd.Timestamp(DEMO_END)
    start = end - pd.Timedelta(days=max(args.days, 1) - 1)
    write_demo_partitions(start, end, DEMO_ORDERS)
    print(f"quimbi demo: demo orders {start.date()} .. {end.date()}, flags {', '.join(DEMO_FLAGS)} (file {flags_file}), warehouse {masked_url(url)}")
    preflight("demo", url, None)
    summary = execute_dates(start, end, orders=DEMO_ORDERS, warehouse=url, stores=None, log_level=level, progress=progress)
    print_summary(summary, url)
    demo_report(url, end)
    return 1 if summary.dates_failed else 0


if __name__ == "__main__":
    sys.exit(main())
