"""Resources: where orders come from and where tables go (defaults from the environment)."""

import os

import dagster as dg

from quimbi_pipeline.orders import ValidatedOrders, load_orders_cached
from quimbi_pipeline.warehouse import Warehouse, resolve_warehouse_url


class WarehouseResource(dg.ConfigurableResource):
    """SQLAlchemy URL of the warehouse; empty = QUIMBI_WAREHOUSE_URL, else the project's SQLite file."""

    url: str = ""

    def open(self) -> Warehouse:
        return Warehouse(self.url or None)

    def resolved_url(self) -> str:
        return resolve_warehouse_url(self.url or None)


class OrdersResource(dg.ConfigurableResource):
    """Orders source URI (CSV/Parquet path, sql:<table>, demo[:k=v,...]); empty = QUIMBI_ORDERS, else demo."""

    uri: str = ""

    def resolved_uri(self) -> str:
        return self.uri or os.environ.get("QUIMBI_ORDERS") or "demo"

    def load(self, warehouse_url: str, bad_rows: str) -> ValidatedOrders:
        return load_orders_cached(self.resolved_uri(), warehouse_url=warehouse_url, bad_rows=bad_rows)


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources={"warehouse": WarehouseResource(), "orders_source": OrdersResource()})
