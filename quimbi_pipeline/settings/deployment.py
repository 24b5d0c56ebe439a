"""Settings of a deployment rather than of the computation: where orders and the warehouse are, the flags file,
the Dagster partitions and schedule, the read API's keys, and the test suite's services. Each is declared once
here with its default and meaning, and read through `value()` by the code that uses it."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DeploymentSetting:
    name: str
    default: str | None  # as text, the way the environment gives it; None = unset
    meaning: str
    group: str = "Deployment"
    shown_default: str | None = None  # the default as the reference shows it, when it is not a constant

    def value(self, environ: dict[str, str] | None = None) -> str | None:
        """The environment's value, else the default (an empty value counts as unset)."""
        env = os.environ if environ is None else environ
        return env.get(self.name) or self.default


DEPLOYMENT = (
    DeploymentSetting("QUIMBI_ORDERS", "demo", "The orders source: a CSV or Parquet path (`.csv.gz` too), `sql:<table>` "
                      "(a table of the warehouse's database), or `demo` / `demo:stores=N,customers=M`."),
    DeploymentSetting("QUIMBI_ORDER_TS_FORMAT", None, "The format of order_ts when it is not ISO 8601, in strftime codes "
                      "(e.g. `%d/%m/%Y %H:%M`). Unset: ISO 8601 only (with or without an offset); dates are never guessed.",
                      shown_default="ISO 8601"),
    DeploymentSetting("QUIMBI_WAREHOUSE_URL", None, "SQLAlchemy URL of the warehouse: `postgresql+psycopg://…` in "
                      "production, SQLite otherwise.", shown_default="SQLite file `quimbi.sqlite` in the data folder"),
    DeploymentSetting("QUIMBI_DATA_DIR", None, "The data folder (the default SQLite warehouse, the demo's flags file).",
                      shown_default="`data/` in the project folder"),
    DeploymentSetting("QUIMBI_FLAGS_FILE", None, "A YAML flags file: `defaults:` and `stores: {store_id: …}` sections of "
                      "the settings below, by their environment names (docs/flags.md)."),
    DeploymentSetting("QUIMBI_PARTITIONS_START", "2024-01-01", "First date of the Dagster daily partitions."),
    DeploymentSetting("QUIMBI_PARTITIONS_END", None, "Last date of the Dagster daily partitions (`make dev` shows the demo's "
                      "dates: it sets both from data/demo_partitions.env).", shown_default="unset: up to today"),
    DeploymentSetting("QUIMBI_STORE_BATCH_SIZE", "50", "Stores per run request of the daily schedule."),
    DeploymentSetting("QUIMBI_BACKFILL_DATES_PER_RUN", "90", "Dates per run of a backfill (the UI's and `quimbi run "
                      "--from --to`): a run reads the orders once and computes its dates in order; 1 = a run per date. "
                      "A failed run is retried whole: lower it where dates often fail."),
    DeploymentSetting("QUIMBI_CONCURRENT_RUNS", None, "Runs sharing the machine at once (each run's threads are the cores "
                      "divided by it).", shown_default="the Dagster run queue's limit, else 1"),
    DeploymentSetting("QUIMBI_API_KEYS", None, "A YAML file mapping API keys to the stores they read; without it "
                      "`quimbi serve` answers on localhost only."),
    DeploymentSetting("QUIMBI_API_ALLOWED_HOSTS", None, "Host names an open `quimbi serve` (no API keys) answers besides "
                      "its listening address, localhost, 127.0.0.1 and ::1, comma-separated; any other Host gets 421 "
                      "(DNS rebinding)."),
    DeploymentSetting("QUIMBI_ALERT_WEBHOOK_URL", None, "A URL the alert sensor POSTs each new store-mix alert to (JSON: "
                      "store_id, as_of_date, kind, axis, value, threshold, severity, message); unset: alerts are logged and "
                      "shown only."),
    DeploymentSetting("QUIMBI_TEST_POSTGRES_URL", None, "PostgreSQL the test suite uses (a database per test worker "
                      "beside it).", "Tests", shown_default="a throwaway server where PostgreSQL's binaries exist"),
    DeploymentSetting("QUIMBI_REQUIRE_POSTGRES", None, "`1`: PostgreSQL tests fail instead of skipping when no server "
                      "can be had (CI).", "Tests"),
    DeploymentSetting("QUIMBI_REQUIRE_BROWSER", None, "`1`: page tests fail instead of skipping without Chromium (CI).",
                      "Tests"),
    DeploymentSetting("QUIMBI_CHROMIUM", None, "Path of the Chromium the page tests drive.", "Tests",
                      shown_default="`chromium` on the PATH"),
)
BY_NAME = {s.name: s for s in DEPLOYMENT}
DEPLOYMENT_NAMES = tuple(BY_NAME)


def value(name: str, environ: dict[str, str] | None = None) -> str | None:
    """A deployment setting's value (its declared default when unset)."""
    return BY_NAME[name].value(environ)


def backfill_dates_per_run(environ: dict[str, str] | None = None) -> int:
    """QUIMBI_BACKFILL_DATES_PER_RUN as a positive integer (a clear error otherwise)."""
    text = value("QUIMBI_BACKFILL_DATES_PER_RUN", environ)
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"QUIMBI_BACKFILL_DATES_PER_RUN must be a whole number of dates, 1 or more; got {text!r}")
    return int(text)
