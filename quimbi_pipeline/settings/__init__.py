"""Settings: the computation's typed sections (sections.py, together PipelineSettings), per-store settings and the
flags file (store.py), retention (retention.py), the deployment's places (deployment.py, locations.py), the
customer rollout rule (rollout.py) and the generated reference (reference.py). May import: nothing of quimbi_pipeline."""

from quimbi_pipeline.settings.pipeline import (
    DESIGN_FLAGS,
    IMPLIED_BY_DRIFT,
    NOT_FROM_ENVIRONMENT,
    ROLLOUT_FLAGS,
    PipelineSettings,
    environment_names,
)
from quimbi_pipeline.settings.retention import RetentionPolicy
from quimbi_pipeline.settings.sections import (
    DRIFT_WINDOWS,
    ChurnBands,
    ClusteringAlgorithm,
)
from quimbi_pipeline.settings.store import (
    StoreSettings,
    describe_errors,
    read_flags_file,
    settings_for_store,
    unknown_environment,
    warn_unknown_environment,
)

__all__ = [
    "DESIGN_FLAGS", "DRIFT_WINDOWS", "IMPLIED_BY_DRIFT", "NOT_FROM_ENVIRONMENT", "ROLLOUT_FLAGS", "ChurnBands",
    "ClusteringAlgorithm", "PipelineSettings", "RetentionPolicy", "StoreSettings", "describe_errors", "environment_names",
    "read_flags_file", "settings_for_store", "unknown_environment", "warn_unknown_environment",
]
