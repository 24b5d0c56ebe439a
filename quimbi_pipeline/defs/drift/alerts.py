"""Store-mix alerts out of Dagster: a sensor that finds the alerts of newly drifted dates and launches, per date
with any, a run of report_store_mix_alerts_job, tagged with the count, that logs each alert and POSTs it to
QUIMBI_ALERT_WEBHOOK_URL when that is set (run/alerts.py). The daily drift step's asset check shows the same
alerts on the population_drift asset."""

import dagster as dg
import pandas as pd

from quimbi_pipeline.defs.resources import WarehouseResource
from quimbi_pipeline.run.alerts import post_alerts, store_alerts
from quimbi_pipeline.settings import StoreSettings
from quimbi_pipeline.settings.deployment import value

# On its first tick (no cursor) the sensor looks this many days back from the newest drifted date.
FIRST_LOOK_BACK_DAYS = 7


class AlertDate(dg.Config):
    date: str  # YYYY-MM-DD


@dg.op(description="Log each store-mix alert of the date, and POST it to QUIMBI_ALERT_WEBHOOK_URL when set.")
def report_store_mix_alerts(context: dg.OpExecutionContext, config: AlertDate, warehouse: WarehouseResource) -> dg.Output:
    wh = warehouse.open()
    try:
        alerts = store_alerts(wh, StoreSettings(), config.date)
    finally:
        wh.dispose()
    for alert in alerts.itertuples():
        (context.log.error if alert.severity == "error" else context.log.warning)(f"store {alert.store_id} {alert.as_of_date}: {alert.message}")
    url = value("QUIMBI_ALERT_WEBHOOK_URL")
    errors = post_alerts(url, alerts) if url and len(alerts) else []
    for error in errors:
        context.log.error(f"webhook: {error}")
    if errors:
        raise dg.Failure(description=f"{len(errors)} of {len(alerts)} alert(s) could not be posted to the webhook (logged); re-run to retry")
    return dg.Output(None, metadata={"alerts": len(alerts), "posted": len(alerts) if url else 0})


@dg.job(description="Report a date's store-mix alerts: log lines and the webhook (launched by store_mix_alert_sensor).")
def report_store_mix_alerts_job():
    report_store_mix_alerts()


def alert_run_requests(alerts: pd.DataFrame) -> list[dg.RunRequest]:
    """One run request per date with alerts, keyed by the date and its alerts (the same alerts never launch twice)."""
    requests = []
    for day, rows in alerts.groupby("as_of_date"):
        errors = int((rows["severity"] == "error").sum())
        key = ";".join(sorted(f"{r.store_id}/{r.kind}/{r.axis}/{r.severity}" for r in rows.itertuples()))
        requests.append(dg.RunRequest(
            run_key=f"alerts:{day}:{key}"[:1000], run_config=dg.RunConfig(ops={"report_store_mix_alerts": AlertDate(date=str(day))}),
            tags={"quimbi/alert_date": str(day), "quimbi/alerts": f"{len(rows)} ({errors} error{'s' * (errors != 1)})",
                  "quimbi/alert_stores": ",".join(sorted(set(rows["store_id"])))[:200]}))
    return requests


def newest_drift_date(wh) -> str | None:
    newest = wh.fetch_rows(f"SELECT max(as_of_date) AS d FROM {wh.qualified('population_drift')}", {})[0]["d"]
    return None if newest is None else str(newest)[:10]


@dg.sensor(job=report_store_mix_alerts_job, minimum_interval_seconds=300,
           description="Launches a report of each newly drifted date's store-mix alerts (population drift and outlier rates past "
                       "their thresholds); the cursor is the newest date looked at.")
def store_mix_alert_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
    wh = warehouse.open()
    try:
        newest = newest_drift_date(wh)
        if newest is None or (context.cursor and newest <= context.cursor):
            return dg.SkipReason(f"no drift date after {context.cursor or 'none'}")
        start = (pd.Timestamp(context.cursor) + pd.Timedelta(days=1)) if context.cursor else pd.Timestamp(newest) - pd.Timedelta(days=FIRST_LOOK_BACK_DAYS - 1)
        alerts = store_alerts(wh, StoreSettings(), start, newest)
    finally:
        wh.dispose()
    context.update_cursor(newest)
    requests = alert_run_requests(alerts)
    return requests or dg.SkipReason(f"no alerts from {start.date()} to {newest}")
