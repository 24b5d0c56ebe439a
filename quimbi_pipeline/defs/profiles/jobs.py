import dagster as dg

from quimbi_pipeline.partitions import daily_partitions

DAILY_PIPELINE_JOB = "daily_pipeline"

# Everything the daily schedule runs for a date; `quimbi run` executes the same job.
daily_pipeline_job = dg.define_asset_job(
    DAILY_PIPELINE_JOB,
    selection=dg.AssetSelection.groups("profiles", "snapshots"),
    partitions_def=daily_partitions,
    description="The daily pipeline for one date: profiles (and later snapshots, drift, outliers).",
)
