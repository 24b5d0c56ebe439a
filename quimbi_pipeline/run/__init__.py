"""The daily run without Dagster: one store's unit, a date's profiles partition over many stores (small ones in
worker processes), the drift step, and drift of any past date on demand. May import: everything below it
(settings, runtime, sources, model, history, drift, storage); never defs, api, cli or evaluation."""

from quimbi_pipeline.run.drift_partition import (
           DriftOutcome,
           drift_on_demand,
           run_drift_partition,
)
from quimbi_pipeline.run.features_ahead import FeaturesAhead
from quimbi_pipeline.run.one_store import StoreOutcome, run_one_store
from quimbi_pipeline.run.profiles_partition import (
           PartitionReport,
           run_profiles_partition,
           write_kept_rows,
           write_left_rows,
)
from quimbi_pipeline.run.store_pool import kept_pools

__all__ = ["DriftOutcome", "FeaturesAhead", "PartitionReport", "StoreOutcome", "drift_on_demand", "kept_pools", "run_drift_partition", "run_one_store",
           "run_profiles_partition", "write_kept_rows", "write_left_rows"]
