"""Retention: the prune job and the sensor that launches it when snapshots have expired."""

import dagster as dg

from quimbi_pipeline.defs.resources import WarehouseResource
from quimbi_pipeline.snapshots import RetentionPolicy


@dg.op(description="Delete expired snapshots in bulk, per store and type (customer_profile_snapshots only).")
def prune_expired_snapshots(context: dg.OpExecutionContext, warehouse: WarehouseResource) -> dg.Output:
    policy = RetentionPolicy.from_env()
    wh = warehouse.open()
    try:
        counts = wh.prune_snapshots(policy)
    finally:
        wh.dispose()
    metadata = {"deleted": int(counts["deleted"].sum()), "policy_days": dg.MetadataValue.json(policy.model_dump())}
    for row in counts.itertuples():  # one entry per store and type
        metadata[f"deleted/{row.store_id}/{row.snapshot_type}"] = int(row.deleted)
    context.log.info(f"pruned {metadata['deleted']} expired snapshot rows")
    return dg.Output(None, metadata=metadata)


@dg.job(description="Delete snapshots older than the retention policy (launched by snapshot_retention_sensor).")
def prune_snapshots_job():
    prune_expired_snapshots()


def retention_run_request(expiry) -> dg.RunRequest | dg.SkipReason:
    expired = expiry[expiry["expired"] > 0]
    if expired.empty:
        return dg.SkipReason("no expired snapshots")
    # The run key names each store's newest date: the same expiry state never launches twice.
    state = ";".join(f"{s}@{d}" for s, d in sorted(set(zip(expired["store_id"], expired["newest"].astype(str)))))
    return dg.RunRequest(run_key=f"prune:{state}", tags={"quimbi/expired_rows": str(int(expired["expired"].sum()))})


@dg.sensor(job=prune_snapshots_job, minimum_interval_seconds=3600, description="Requests a prune run when snapshots have expired.")
def snapshot_retention_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
    wh = warehouse.open()
    try:
        return retention_run_request(wh.snapshot_expiry(RetentionPolicy.from_env()))
    finally:
        wh.dispose()
