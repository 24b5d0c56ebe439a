"""Partition definitions (outside defs/ so core-adjacent code and tests can import them cheaply)."""

import dagster as dg
import pandas as pd

from quimbi_pipeline.settings.deployment import backfill_dates_per_run, value

# First partition (settings/deployment.py; the demo's orders start on 2024-01-01).
PARTITIONS_START = value("QUIMBI_PARTITIONS_START")

# Unset: up to today. Dagster's end date is exclusive: the day after the last.
PARTITIONS_END = value("QUIMBI_PARTITIONS_END")
daily_partitions = dg.DailyPartitionsDefinition(
    start_date=PARTITIONS_START, timezone="UTC",
    end_date=f"{pd.Timestamp(PARTITIONS_END) + pd.Timedelta(days=1):%Y-%m-%d}" if PARTITIONS_END else None)


# A backfill's dates go to runs of up to this many consecutive dates: each run loads and validates the orders once
# (a run per date started a process, loaded the code and read the orders each time) and computes its dates in order.
backfill_policy = dg.BackfillPolicy.multi_run(max_partitions_per_run=backfill_dates_per_run())
