"""Snapshot calendar and retention policy (pure; DESIGN "Semantics").

Snapshot date D gets: daily always; weekly when D is a Monday; monthly on the 1st; quarterly on
Jan/Apr/Jul/Oct 1st; yearly on Jan 1st. A snapshot freezes the profiles of the customers active at D.

Retention is counted per store and type from the store's newest snapshot date N: a snapshot of type
t dated d is kept while N - d < retention_days[t], so "daily 7 days" keeps the 7 newest dates.
"""

from __future__ import annotations

import os

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

SNAPSHOT_TYPES = ("daily", "weekly", "monthly", "quarterly", "yearly")
PROFILE_CHANGE = "profile_change"  # extra snapshot of a customer whose memberships moved (option)
RETAINED_TYPES = SNAPSHOT_TYPES + (PROFILE_CHANGE,)


def snapshot_types_for(day) -> list[str]:
    d = pd.Timestamp(day)
    types = ["daily"]
    if d.day_of_week == 0:
        types.append("weekly")
    if d.day == 1:
        types.append("monthly")
        if d.month in (1, 4, 7, 10):
            types.append("quarterly")
        if d.month == 1:
            types.append("yearly")
    return types


class RetentionPolicy(BaseModel):
    """Days each snapshot type is kept, counted from the store's newest snapshot date."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    daily: int = Field(7, ge=1)
    weekly: int = Field(60, ge=1)
    monthly: int = Field(365, ge=1)
    quarterly: int = Field(730, ge=1)
    yearly: int = Field(1825, ge=1)
    profile_change: int = Field(60, ge=1)

    def days(self, snapshot_type: str) -> int:
        return getattr(self, snapshot_type)

    def cutoff(self, snapshot_type: str, newest) -> pd.Timestamp:
        """Snapshots of this type dated before the cutoff are expired."""
        return pd.Timestamp(newest).normalize() - pd.Timedelta(days=self.days(snapshot_type) - 1)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RetentionPolicy:
        env = os.environ if environ is None else environ
        values = {t: env[f"QUIMBI_RETENTION_{t.upper()}_DAYS"] for t in RETAINED_TYPES if f"QUIMBI_RETENTION_{t.upper()}_DAYS" in env}
        return cls.model_validate(values)
