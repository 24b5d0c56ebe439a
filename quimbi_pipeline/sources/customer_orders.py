"""One customer's orders up to a date, for the customer page's evidence chart.

The pages read the warehouse, which keeps profiles, not orders; this reads the orders source (QUIMBI_ORDERS) the
pipeline reads. A `sql:<table>` source answers with one filtered query. A file or demo source is read and validated
once per process (the pipeline's cache) when the file is at most FILE_LIMIT_BYTES; a larger file is not read for a
page (it would hold a whole store's orders in every API worker): the page says so and suggests a `sql:` source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from quimbi_pipeline.settings import deployment
from quimbi_pipeline.sources.orders import (
    DEFAULT_STORE,
    TS_FORMAT_SETTING,
    OrdersSourceError,
    as_of_day,
    load_orders_cached,
    validate_orders,
)
from quimbi_pipeline.sources.sql_table import table_ref

FILE_LIMIT_BYTES = 256 * 2**20
COLUMNS = ["order_ts", "order_total"]


@dataclass(frozen=True)
class CustomerOrders:
    orders: pd.DataFrame  # order_ts, order_total of the customer's valid orders up to the date, oldest first
    unavailable: str | None = None  # why no orders could be read (the page shows it instead of the chart)


def customer_orders(uri: str | None, store: str, customer: str, as_of, engine: sa.Engine) -> CustomerOrders:
    """The customer's orders with order_ts before `as_of` + 1 day (what that day's profile saw); `engine`: the
    warehouse's, where a `sql:` source table lives."""
    if not uri:
        return CustomerOrders(pd.DataFrame(columns=COLUMNS), "no orders source is set (QUIMBI_ORDERS)")
    try:
        if uri.startswith("sql:"):
            orders = _from_table(uri[len("sql:"):], store, customer, engine)
        else:
            if not (uri == "demo" or uri.startswith("demo:")):
                path = Path(uri)
                if not path.exists():
                    return CustomerOrders(pd.DataFrame(columns=COLUMNS), f"the orders source {uri!r} is not on this machine")
                size = path.stat().st_size
                if size > FILE_LIMIT_BYTES:
                    return CustomerOrders(pd.DataFrame(columns=COLUMNS), (
                        f"the orders file is {size / 2**20:.0f} MiB, more than the pages read "
                        f"({FILE_LIMIT_BYTES // 2**20} MiB); a sql:<table> orders source shows every customer's orders"))
            orders = load_orders_cached(uri).orders
            orders = orders.loc[(orders["store_id"] == store) & (orders["customer_id"] == customer)]
    except (OrdersSourceError, ValueError, OSError) as exc:
        return CustomerOrders(pd.DataFrame(columns=COLUMNS), f"the orders source could not be read: {str(exc).splitlines()[0]}")
    seen = orders.loc[orders["order_ts"] < as_of_day(as_of) + pd.Timedelta(days=1), COLUMNS]
    return CustomerOrders(seen.sort_values("order_ts", kind="stable").reset_index(drop=True))


def _from_table(name: str, store: str, customer: str, engine: sa.Engine) -> pd.DataFrame:
    """The customer's rows of a `sql:` source table, validated as the pipeline validates them."""
    try:
        postgres = engine.dialect.name == "postgresql"
        ref = table_ref(name, postgres)
        schema, _, table = ref.rpartition(".")
        columns = {c["name"]: c["type"] for c in sa.inspect(engine).get_columns(table, schema=schema or None)}
        if "customer_id" not in columns:
            raise OrdersSourceError(f"table {name!r} has no customer_id column")
        # Compare in the column's own type so an index on it is used (a text id never matches an integer column).
        numeric = isinstance(columns["customer_id"], sa.Integer)
        if numeric and not customer.lstrip("-").isdigit():
            return pd.DataFrame(columns=["store_id", *COLUMNS])
        where, params = "customer_id = :c", {"c": int(customer) if numeric else customer}
        if "store_id" in columns:
            where += " AND store_id = :s" if store != DEFAULT_STORE else " AND (store_id = :s OR store_id IS NULL OR store_id = '')"
            params["s"] = store
        with engine.connect() as conn:
            raw = pd.read_sql(sa.text(f"SELECT * FROM {ref} WHERE {where}"), conn, params=params)
    except sa.exc.SQLAlchemyError as exc:
        raise OrdersSourceError(f"cannot read table {name!r}: {str(exc).splitlines()[0]}") from exc
    validated = validate_orders(raw, ts_format=deployment.value(TS_FORMAT_SETTING))
    return validated.orders.loc[validated.orders["store_id"] == store]
