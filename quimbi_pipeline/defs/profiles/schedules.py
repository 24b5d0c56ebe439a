"""The daily schedule: at 03:00 UTC, the previous day's partition, one run per batch of stores, and one run per shard
of each sharded store (QUIMBI_STORE_SHARDS > 1: its profiles; its drift once every shard is written, defs/drift/shards.py)."""

from datetime import timedelta

import dagster as dg

from quimbi_pipeline.defs.drift.assets import DRIFT_STEP
from quimbi_pipeline.defs.profiles.assets import DAILY_STEP, OUTLIERS_KEY, PROFILES_KEY, SNAPSHOTS_KEY
from quimbi_pipeline.defs.profiles.jobs import daily_pipeline_job
from quimbi_pipeline.defs.resources import OrdersResource, WarehouseResource
from quimbi_pipeline.settings import StoreSettings
from quimbi_pipeline.settings.deployment import value
from quimbi_pipeline.sources.orders import list_stores

SHARD_ASSETS = [PROFILES_KEY, SNAPSHOTS_KEY, OUTLIERS_KEY]  # a shard run's: the store's drift needs every shard


def store_batches(stores: list[str], batch_size: int) -> list[list[str]]:
    if batch_size < 1:
        raise ValueError(f"QUIMBI_STORE_BATCH_SIZE must be >= 1, got {batch_size}")
    return [stores[i:i + batch_size] for i in range(0, len(stores), batch_size)]


def run_requests_for(partition_key: str, stores: list[str], batch_size: int, shards_of: dict[str, int] | None = None) -> list[dg.RunRequest]:
    """One run per batch of stores, stores passed in run config: the run launcher spreads them over machines. A store
    with `shards_of[store]` > 1 gets a run per shard instead (its profiles only)."""
    shards_of = shards_of or {}
    batches = store_batches([s for s in stores if shards_of.get(s, 1) <= 1], batch_size)
    requests = [
        dg.RunRequest(
            run_key=f"{partition_key}:batch-{i + 1}-of-{len(batches)}",
            partition_key=partition_key,
            run_config={"ops": {step: {"config": {"stores": batch}} for step in (DAILY_STEP, DRIFT_STEP)}},
            tags={"quimbi/store_batch": f"{i + 1}/{len(batches)}", "quimbi/stores": ",".join(batch)[:200]},
        )
        for i, batch in enumerate(batches)
    ]
    for store in [s for s in stores if shards_of.get(s, 1) > 1]:
        n = shards_of[store]
        requests += [dg.RunRequest(run_key=f"{partition_key}:{store}:shard-{k}-of-{n}", partition_key=partition_key,
                                   run_config={"ops": {DAILY_STEP: {"config": {"stores": [store], "shard": k}}}}, asset_selection=SHARD_ASSETS,
                                   tags={"quimbi/stores": store[:200], "quimbi/store_shard": f"{k}/{n}"})
                     for k in range(1, n + 1)]
    return requests


def shard_counts(stores: list[str]) -> dict[str, int]:
    """Each store's QUIMBI_STORE_SHARDS (environment and flags file)."""
    settings = StoreSettings()
    return {store: settings.for_store(store).store_shards for store in stores}


@dg.schedule(job=daily_pipeline_job, cron_schedule="0 3 * * *", execution_timezone="UTC", name="daily_pipeline_schedule")
def daily_pipeline_schedule(context: dg.ScheduleEvaluationContext, orders_source: OrdersResource, warehouse: WarehouseResource):
    previous_day = (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")
    stores = list_stores(orders_source.resolved_uri(), warehouse.resolved_url())
    return run_requests_for(previous_day, stores, int(value("QUIMBI_STORE_BATCH_SIZE")), shard_counts(stores))
