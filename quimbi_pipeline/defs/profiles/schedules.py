"""The daily schedule: at 03:00 UTC, the previous day's partition, one run per batch of stores."""

from datetime import timedelta

import dagster as dg

from quimbi_pipeline.defs.drift.assets import DRIFT_STEP
from quimbi_pipeline.defs.profiles.assets import DAILY_STEP
from quimbi_pipeline.defs.profiles.jobs import daily_pipeline_job
from quimbi_pipeline.defs.resources import OrdersResource, WarehouseResource
from quimbi_pipeline.settings.deployment import value
from quimbi_pipeline.sources.orders import list_stores


def store_batches(stores: list[str], batch_size: int) -> list[list[str]]:
    if batch_size < 1:
        raise ValueError(f"QUIMBI_STORE_BATCH_SIZE must be >= 1, got {batch_size}")
    return [stores[i:i + batch_size] for i in range(0, len(stores), batch_size)]


def run_requests_for(partition_key: str, stores: list[str], batch_size: int) -> list[dg.RunRequest]:
    """One run per batch of stores, stores passed in run config: the run launcher spreads them over machines."""
    batches = store_batches(stores, batch_size)
    return [
        dg.RunRequest(
            run_key=f"{partition_key}:batch-{i + 1}-of-{len(batches)}",
            partition_key=partition_key,
            run_config={"ops": {step: {"config": {"stores": batch}} for step in (DAILY_STEP, DRIFT_STEP)}},
            tags={"quimbi/store_batch": f"{i + 1}/{len(batches)}", "quimbi/stores": ",".join(batch)[:200]},
        )
        for i, batch in enumerate(batches)
    ]


@dg.schedule(job=daily_pipeline_job, cron_schedule="0 3 * * *", execution_timezone="UTC", name="daily_pipeline_schedule")
def daily_pipeline_schedule(context: dg.ScheduleEvaluationContext, orders_source: OrdersResource, warehouse: WarehouseResource):
    previous_day = (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")
    stores = list_stores(orders_source.resolved_uri(), warehouse.resolved_url())
    return run_requests_for(previous_day, stores, int(value("QUIMBI_STORE_BATCH_SIZE")))
