"""The `sql:<table>` orders source: a table (or `schema.table`) of the warehouse's database, read with SQLAlchemy.

Unqualified names on PostgreSQL live in the warehouse's schema. Reading a source never creates warehouse tables.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import pandas as pd
import sqlalchemy as sa

from quimbi_pipeline.settings.locations import PG_SCHEMA, resolve_warehouse_url

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def table_ref(name: str, postgres: bool) -> str:
    """A user-named table as SQL (names are checked, never quoted through)."""
    if not _IDENT.match(name):
        raise ValueError(f"not a table name: {name!r}")
    return name if "." in name or not postgres else f"{PG_SCHEMA}.{name}"


def read_sql_table(engine: sa.Engine, name: str) -> pd.DataFrame:
    ref = table_ref(name, engine.dialect.name == "postgresql")
    try:
        with engine.connect() as conn:
            return pd.read_sql(sa.text(f"SELECT * FROM {ref}"), conn)
    except (sa.exc.SQLAlchemyError, pd.errors.DatabaseError) as exc:
        raise ValueError(f"cannot read table {name!r} from the warehouse: {str(exc).splitlines()[0]}") from exc


@contextlib.contextmanager
def _engine(url: str | None) -> Iterator[sa.Engine]:
    engine = sa.create_engine(resolve_warehouse_url(url))
    try:
        yield engine
    finally:
        engine.dispose()


def read_table(name: str, url: str | None = None) -> pd.DataFrame:
    """Every row of the source table."""
    with _engine(url) as engine:
        return read_sql_table(engine, name)


def distinct_values(table: str, column: str, default: str, url: str | None = None) -> list[str]:
    """Distinct values of a source table's column; [default] when the column does not exist."""
    with _engine(url) as engine, engine.connect() as conn:
        ref = table_ref(table, engine.dialect.name == "postgresql")
        if column not in pd.read_sql(sa.text(f"SELECT * FROM {ref} WHERE 1 = 0"), conn).columns:
            return [default]
        values = pd.read_sql(sa.text(f"SELECT DISTINCT {column} FROM {ref}"), conn)[column]
    return [default if v is None or str(v).strip() == "" else str(v).strip() for v in values]
