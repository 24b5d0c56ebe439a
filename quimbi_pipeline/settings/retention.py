"""RetentionPolicy: how many days each snapshot type and table family is kept (QUIMBI_RETENTION_<NAME>_DAYS).

Counted per store from its newest date in the table: a row dated d is kept while newest - d < days, so
"daily 7" keeps the 7 newest dates. Pruning applies it (storage/prune.py); history/snapshots.py is the calendar.
"""

from __future__ import annotations

import os

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field


class RetentionPolicy(BaseModel):
    """Retention (days each is kept, per store)"""

    model_config = ConfigDict(frozen=True, extra="forbid")
    daily: int = Field(7, ge=1, description="Daily snapshots (the 7 newest dates by default).")
    weekly: int = Field(60, ge=1, description="Weekly snapshots (Mondays).")
    monthly: int = Field(365, ge=1, description="Monthly snapshots (the 1st).")
    quarterly: int = Field(730, ge=1, description="Quarterly snapshots (Jan/Apr/Jul/Oct 1st).")
    yearly: int = Field(1825, ge=1, description="Yearly snapshots (Jan 1st).")
    profile_change: int = Field(60, ge=1, description="Snapshots taken on a profile change (QUIMBI_SNAPSHOT_ON_PROFILE_CHANGE).")
    drift: int = Field(1, ge=1, description="customer_drift and customer_axis_drift: 1 = the current state only; a past date's "
                       "drift is computed on demand from the snapshots.")
    anomalies: int = Field(180, ge=1, description="customer_drift_anomalies (and drift_inputs, which recomputes them).")
    population: int = Field(1825, ge=1, description="population_drift and outlier_rates (a few rows per store and date).")
    outliers: int = Field(28, ge=1, description="customer_outlier_flags (unflagged rows: the newest date only).")
    models: int = Field(1825, ge=1, description="segment_models and segment_transitions, by fitted_on; a model a kept row names stays.")

    def days(self, snapshot_type: str) -> int:
        return getattr(self, snapshot_type)

    def cutoff(self, name: str, newest) -> pd.Timestamp:
        """Rows of this snapshot type or table family (a field name) dated before the cutoff are expired."""
        return pd.Timestamp(newest).normalize() - pd.Timedelta(days=self.days(name) - 1)

    @staticmethod
    def env_name(field: str) -> str:
        return f"QUIMBI_RETENTION_{field.upper()}_DAYS"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RetentionPolicy:
        env = os.environ if environ is None else environ
        values = {t: env[cls.env_name(t)] for t in cls.model_fields if cls.env_name(t) in env}
        return cls.model_validate(values)
