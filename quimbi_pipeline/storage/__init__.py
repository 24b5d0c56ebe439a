"""The one package that reads and writes warehouse tables (SQLAlchemy 2 Core), a module per table family.

QUIMBI_WAREHOUSE_URL chooses the database: SQLite by default (a file under the project's data
folder), PostgreSQL in production (tables in schema `platform`, JSON as JSONB, bulk loads by COPY).
A partition's write for one store is one transaction: staged rows are merged, so a re-run replaces
exactly that partition's rows and a failure leaves the previous rows intact.

- connection.py: URLs, engine, schema creation and in-place upgrade, date partitions, bulk loads, reads;
  parallel_stage.py: a large write's stage COPYed by two PostgreSQL sessions;
- profile_tables.py: customer_profiles, profile_writes (the store dates written), and the write of a store's partition (one
  transaction over the families);
- snapshot_tables.py: profile_snapshots (its views customer_profile_snapshots and the history view), snapshot_blocks,
  snapshot_writes; partition_rewrites.py: snapshot_rewrites (date partitions the prune rewrites, pending ones);
- drift_tables.py: customer_drift (its axes; the view customer_axis_drift), customer_drift_anomalies, population_drift,
  drift_inputs;
- outlier_tables.py: customer_outlier_flags, outlier_rates;
- model_tables.py: segment_models, segment_transitions;
- shard_tables.py: store_shards (the written shards of a sharded store's dates);
- snapshot_history.py: a store's snapshot history as numbers (what drift reads);
- prune.py: retention of every table, beside runs (leases.py: run_leases); migrate.py: upgrading a warehouse written by an
  earlier version.

May import: settings, runtime, sources, model, history (never drift, run or above).
"""

from __future__ import annotations

import sqlalchemy as sa

from quimbi_pipeline.storage.connection import (
    DATE_PARTITIONED,
    PG_SCHEMA,
    Connection,
    data_dir,
    default_warehouse_url,
    drop_postgres_schema,
    existing_only,
    masked_url,
    metadata,
    prefetched,
    resolve_warehouse_url,
)
from quimbi_pipeline.storage.drift_tables import (
    AXIS_DRIFT_VIEW,
    DRIFT_TABLES,
    DriftStore,
    customer_drift,
    customer_drift_anomalies,
    drift_inputs,
    population_drift,
)
from quimbi_pipeline.storage.leases import run_leases
from quimbi_pipeline.storage.model_tables import (
    ModelStore,
    segment_models,
    segment_transitions,
)
from quimbi_pipeline.storage.outlier_tables import (
    OutlierStore,
    customer_outlier_flags,
    outlier_rates,
)
from quimbi_pipeline.storage.profile_tables import (
    JSON_COLUMNS,
    ProfileStore,
    customer_profiles,
    normalize_profiles,
    profile_writes,
)
from quimbi_pipeline.storage.shard_tables import ShardStore, store_shards
from quimbi_pipeline.storage.snapshot_tables import (
    HISTORY_VIEW,
    LAYOUTS,
    SNAPSHOT_COPIED_COLUMNS,
    SNAPSHOT_PARTITION_PREFIX,
    SNAPSHOTS,
    SNAPSHOTS_VIEW,
    NeedsMigration,
    SnapshotStore,
    pending_migration,
    profile_snapshots,
    snapshot_blocks,
    snapshot_layouts,
    snapshot_writes,
)


class Warehouse(ProfileStore, SnapshotStore, DriftStore, OutlierStore, ModelStore, ShardStore, Connection):
    """One warehouse: every table family's writes and reads over one connection layer."""

    def _finish_schema(self, conn: sa.Connection) -> None:
        self._finish_snapshot_schema(conn)  # raises NeedsMigration first if the warehouse needs it
        self._finish_drift_schema(conn)
        self.record_earlier_profile_writes(conn)


__all__ = [
    "DATE_PARTITIONED", "DRIFT_TABLES", "HISTORY_VIEW", "JSON_COLUMNS", "LAYOUTS", "NeedsMigration", "PG_SCHEMA", "SNAPSHOT_COPIED_COLUMNS", "SNAPSHOT_PARTITION_PREFIX", "SNAPSHOTS", "SNAPSHOTS_VIEW",
    "Warehouse", "AXIS_DRIFT_VIEW", "customer_drift", "customer_drift_anomalies", "customer_outlier_flags",
    "customer_profiles", "data_dir", "default_warehouse_url", "drift_inputs", "drop_postgres_schema", "existing_only", "masked_url", "metadata", "normalize_profiles",
    "outlier_rates", "pending_migration", "population_drift", "profile_writes", "prefetched", "profile_snapshots", "resolve_warehouse_url", "run_leases", "segment_models", "segment_transitions", "snapshot_blocks", "snapshot_layouts", "snapshot_writes", "store_shards",
]
