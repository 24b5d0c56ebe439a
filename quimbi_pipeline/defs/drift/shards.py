"""The drift of a sharded store (QUIMBI_STORE_SHARDS > 1, run/shards.py): its shards' runs write their profiles only,
and this sensor launches the store's drift run for a date once every shard of it is written (store_shards). The run
key names the date's newest shard write, so a whole date launches one drift run, and a shard written again another."""

import dagster as dg
import pandas as pd

from quimbi_pipeline.defs.drift.assets import DRIFT_KEYS, DRIFT_STEP
from quimbi_pipeline.defs.profiles.jobs import daily_pipeline_job
from quimbi_pipeline.defs.resources import WarehouseResource
from quimbi_pipeline.settings import StoreSettings


def drift_run_requests(wh, written: pd.DataFrame, settings: StoreSettings) -> list[dg.RunRequest]:
    """A drift run per whole store-date of `written` (Warehouse.shard_dates_written_since) whose store has drift on."""
    requests = []
    for row in written.itertuples():
        store, day = str(row.store_id), str(row.as_of_date)[:10]
        if not settings.for_store(store).drift_active or wh.shards_missing(store, day, int(row.shards)) is not None:
            continue
        requests.append(dg.RunRequest(run_key=f"drift:{store}:{day}:{row.newest}", partition_key=day, asset_selection=list(DRIFT_KEYS.values()),
                                      run_config={"ops": {DRIFT_STEP: {"config": {"stores": [store]}}}},
                                      tags={"quimbi/stores": store[:200], "quimbi/store_shards": f"{int(row.shards)} written"}))
    return requests


@dg.sensor(job=daily_pipeline_job, minimum_interval_seconds=60,
           description="Launches a sharded store's drift run for a date once all its shards are written (the cursor is the newest "
                       "shard write looked at).")
def sharded_store_drift_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
    wh = warehouse.open()
    try:
        written = wh.shard_dates_written_since(context.cursor or None)
        if written.empty:
            return dg.SkipReason(f"no shard written after {context.cursor or 'none'}")
        requests = drift_run_requests(wh, written, StoreSettings())
    finally:
        wh.dispose()
    context.update_cursor(str(written["newest"].max()))
    return requests or dg.SkipReason(f"{len(written)} store date(s) with new shards, none whole yet")
