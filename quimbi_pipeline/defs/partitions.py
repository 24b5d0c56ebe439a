"""Partition definitions (outside defs/ so core-adjacent code and tests can import them cheaply)."""

import dagster as dg

from quimbi_pipeline.settings.deployment import value

# First partition (settings/deployment.py; the demo's orders start on 2024-01-01).
PARTITIONS_START = value("QUIMBI_PARTITIONS_START")

daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")
