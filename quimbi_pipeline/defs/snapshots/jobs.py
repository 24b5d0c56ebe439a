"""Retention: the prune job and the sensor that launches it when rows of any table have expired (prune.py)."""

import dagster as dg

from quimbi_pipeline.defs.resources import WarehouseResource
from quimbi_pipeline.settings import RetentionPolicy
from quimbi_pipeline.storage.prune import expiry, prune


@dg.op(description="Delete expired rows in bulk, per table and store: snapshots by type, drift, anomalies, outlier flags, models (prune.py).")
def prune_expired_snapshots(context: dg.OpExecutionContext, warehouse: WarehouseResource) -> dg.Output:
    policy = RetentionPolicy.from_env()
    wh = warehouse.open()
    try:
        counts = prune(wh, policy)
    finally:
        wh.dispose()
    metadata = {"deleted": int(counts["deleted"].sum()), "policy_days": dg.MetadataValue.json(policy.model_dump())}
    for table, n in counts.groupby("table")["deleted"].sum().items():  # one entry per table (snapshots: per type)
        metadata[f"deleted/{table}"] = int(n)
    context.log.info(f"pruned {metadata['deleted']} expired rows")
    return dg.Output(None, metadata=metadata)


@dg.job(description="Delete rows older than the retention policy, every table (launched by snapshot_retention_sensor).")
def prune_snapshots_job():
    prune_expired_snapshots()


def retention_run_request(expiry) -> dg.RunRequest | dg.SkipReason:
    expired = expiry[expiry["expired"] > 0]
    if expired.empty:
        return dg.SkipReason("no expired rows")
    # The run key names each store's newest date: the same expiry state never launches twice.
    state = ";".join(f"{t}:{s}@{d}" for t, s, d in sorted(set(zip(expired["table"], expired["store_id"], expired["newest"].astype(str)))))
    return dg.RunRequest(run_key=f"prune:{state}", tags={"quimbi/expired_rows": str(int(expired["expired"].sum()))})


@dg.sensor(job=prune_snapshots_job, minimum_interval_seconds=3600, description="Requests a prune run when rows of any table have expired.")
def snapshot_retention_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
    wh = warehouse.open()
    try:
        return retention_run_request(expiry(wh, RetentionPolicy.from_env()))
    finally:
        wh.dispose()
