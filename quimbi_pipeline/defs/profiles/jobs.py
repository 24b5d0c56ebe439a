import dagster as dg

DAILY_PIPELINE_JOB = "daily_pipeline"

# Everything the daily schedule runs for a date; `quimbi run` executes the same job.
daily_pipeline_job = dg.define_asset_job(
    DAILY_PIPELINE_JOB,
    selection=dg.AssetSelection.groups("profiles", "snapshots", "outliers", "drift"),
    description="The daily pipeline for one date: profiles, that date's snapshots, outlier flags and drift (each behind its flag).",
)
