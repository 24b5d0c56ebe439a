"""Resources (where orders come from and where tables go) and the run-level helpers the steps share."""

import json
import os

import dagster as dg

from quimbi_pipeline.settings import StoreSettings
from quimbi_pipeline.settings.deployment import value
from quimbi_pipeline.sources.orders import ValidatedOrders, load_orders_cached
from quimbi_pipeline.storage import Warehouse, resolve_warehouse_url


class WarehouseResource(dg.ConfigurableResource):
    """SQLAlchemy URL of the warehouse; empty = QUIMBI_WAREHOUSE_URL, else the project's SQLite file.

    Keep credentials out of run config (Dagster stores it): leave `url` empty and set QUIMBI_WAREHOUSE_URL
    in the environment of the code location, or give `url` as an EnvVar.
    """

    url: str = ""

    def open(self) -> Warehouse:
        return Warehouse(self.url or None)

    def resolved_url(self) -> str:
        return resolve_warehouse_url(self.url or None)


class OrdersResource(dg.ConfigurableResource):
    """Orders source URI (CSV/Parquet path, sql:<table>, demo[:k=v,...]); empty = QUIMBI_ORDERS, else demo."""

    uri: str = ""

    def resolved_uri(self) -> str:
        return self.uri or value("QUIMBI_ORDERS")

    def load(self, warehouse_url: str, bad_rows: str) -> ValidatedOrders:
        return load_orders_cached(self.resolved_uri(), warehouse_url=warehouse_url, bad_rows=bad_rows)


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources={"warehouse": WarehouseResource(), "orders_source": OrdersResource()})


def size_thread_pools(context: dg.AssetExecutionContext) -> None:
    """Share the machine's cores between the runs the instance lets run at once (threads.run_threads):
    the run queue's limit becomes QUIMBI_CONCURRENT_RUNS in this step's process unless it is set."""
    if "QUIMBI_CONCURRENT_RUNS" in os.environ:
        return
    try:
        limit = context.instance.run_coordinator.get_run_queue_config().max_concurrent_runs
    except (AttributeError, NotImplementedError):  # no queue (in-process and ephemeral instances): one run
        return
    if limit and limit > 0:
        os.environ["QUIMBI_CONCURRENT_RUNS"] = str(limit)


def record_run_flags(context: dg.AssetExecutionContext, settings: StoreSettings, stores: list[str]) -> dict[str, dict]:
    """Each store's effective flags, logged, and the distinct flag sets as run tags (`quimbi/flags`), which the UI's
    run list and run page show; returns {store: flags} for the step's metadata."""
    flags = {store: settings.flags(store) for store in stores}
    for store, store_flags in flags.items():
        context.log.info(f"store {store}: effective flags {store_flags}")
    distinct = sorted({json.dumps({k: v for k, v in f.items() if v not in (False, "kmeans")}, sort_keys=True) for f in flags.values()})
    summary = "; ".join(", ".join(k if v is True else f"{k}={v}" for k, v in json.loads(d).items()) or "all off" for d in distinct)
    context.instance.add_run_tags(context.run.run_id, {"quimbi/flags": summary[:4000] or "no store"})
    return flags
