"""Where the warehouse lives: the data folder (QUIMBI_DATA_DIR) and the warehouse URL (QUIMBI_WAREHOUSE_URL),
read here so that every layer, the orders sources' `sql:` tables included, resolves them the same way."""

from __future__ import annotations

from pathlib import Path

from quimbi_pipeline.settings.deployment import value

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PG_SCHEMA = "platform"  # the warehouse's tables on PostgreSQL; unqualified `sql:` source tables are looked up there too


def data_dir() -> Path:
    """The project's data folder (QUIMBI_DATA_DIR moves it), created if missing."""
    path = Path(value("QUIMBI_DATA_DIR") or PROJECT_ROOT / "data")
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_warehouse_url() -> str:
    return f"sqlite:///{data_dir() / 'quimbi.sqlite'}"


def resolve_warehouse_url(url: str | None = None) -> str:
    return url or value("QUIMBI_WAREHOUSE_URL") or default_warehouse_url()
