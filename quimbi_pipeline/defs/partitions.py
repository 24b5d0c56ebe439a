"""Partition definitions (outside defs/ so core-adjacent code and tests can import them cheaply)."""

import os

import dagster as dg

# First partition; QUIMBI_PARTITIONS_START moves it (the demo's orders start on 2024-01-01).
PARTITIONS_START = os.environ.get("QUIMBI_PARTITIONS_START", "2024-01-01")

daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")
