"""The daily drift step: customer_drift, customer_axis_drift, customer_drift_anomalies and population_drift of D.

Runs after the date's profiles and snapshots (it reads the snapshots of the longest configured
window up to D, at least 98 days for the anomalies), for stores with ENABLE_DRIFT_ANALYSIS on; with
the flag off its outputs materialize with 0 rows. A backfill's run computes its dates in order, after
their profiles. It runs for every store whose profiles were written even when another store failed,
and then fails the run naming every failed store.
"""

from collections.abc import Iterator

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from quimbi_pipeline.defs.partitions import backfill_policy, daily_partitions
from quimbi_pipeline.defs.profiles.assets import (
    DRIFT_STEP,
    PROFILES_KEY,
    SNAPSHOTS_KEY,
    first_failures,
)
from quimbi_pipeline.defs.resources import WarehouseResource, size_thread_pools
from quimbi_pipeline.run import kept_pools, run_drift_partition
from quimbi_pipeline.run.alerts import store_alerts
from quimbi_pipeline.settings import StoreSettings
from quimbi_pipeline.storage.leases import hold, release
from quimbi_pipeline.storage.snapshot_history import BlockCache

DRIFT_KEYS = {name: dg.AssetKey(name) for name in ("customer_drift", "customer_axis_drift", "customer_drift_anomalies", "population_drift")}
DRIFT_RANGE_CHECK = "drift_rows_valid"
MIX_CHECK = "store_mix_within_thresholds"

_DESCRIPTIONS = {
    "customer_drift": "Per customer and window (7, 28, 90, 180, 365 days, or those configured): overall drift, velocity, 30-day forecast, churn-risk trend, archetype journey, recommendations.",
    "customer_axis_drift": "Per customer, window and axis: drift score, direction, velocity and dominant-segment transitions (a view of customer_drift.axes, written with it).",
    "customer_drift_anomalies": "Anomalies completed at D: sudden_drift, reversal, velocity_spike, behavior_change.",
    "population_drift": "Per store and axis: dominant-segment share shift (total variation) and feature PSI against the oldest snapshot date of the last 28 days.",
}
# Specs live inside a tuple: module-level AssetSpec objects would be loaded as assets of their own.
_SPECS = tuple(
    dg.AssetSpec(key, deps=[PROFILES_KEY, SNAPSHOTS_KEY], group_name="drift", kinds={"python", "sql"}, description=_DESCRIPTIONS[name])
    for name, key in DRIFT_KEYS.items()
)


class DriftConfig(dg.Config):
    """Run config (launchpad). Empty stores = every store with snapshots dated D; unset flags come from the environment."""

    stores: list[str] = []
    enable_drift_analysis: bool | None = None
    enable_temporal_snapshots: bool | None = None
    # Windows (days) to compute, a subset of 7, 28, 90, 180, 365; unset = QUIMBI_DRIFT_WINDOWS or all five.
    drift_windows: list[int] | None = None

    def settings(self) -> StoreSettings:
        return StoreSettings(self.model_dump(exclude={"stores"}))


def profile_failures_of_run(context: dg.AssetExecutionContext) -> dict[str, str]:
    """{store: error} of the stores the profiles step of this run reported failed (its materialization metadata)."""
    records = context.instance.get_records_for_run(context.run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    for record in records:
        materialization = record.event_log_entry.asset_materialization
        if materialization is not None and materialization.asset_key == PROFILES_KEY:
            return {k.split("/", 1)[1]: v.value for k, v in materialization.metadata.items() if k.startswith("error/")}
    return {}


def mix_check_result(alerts) -> dg.AssetCheckResult:
    """The store-mix check of the run's stores and date: passed without alerts, else WARN or ERROR (the worst alert),
    each alert's sentence in the metadata under its store."""
    if alerts is None:
        return dg.AssetCheckResult(asset_key=DRIFT_KEYS["population_drift"], check_name=MIX_CHECK, passed=True,
                                   metadata={"note": "no store of the run had drift rows, or they could not be read: nothing checked"})
    metadata: dict = {"alerts": len(alerts), "errors": int((alerts["severity"] == "error").sum())}
    for store, rows in alerts.groupby("store_id"):
        metadata[f"alerts/{store}"] = dg.MetadataValue.md("\n".join(f"- **{r.severity}** {r.message}" for r in rows.itertuples()))
    severity = dg.AssetCheckSeverity.ERROR if metadata["errors"] else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(asset_key=DRIFT_KEYS["population_drift"], check_name=MIX_CHECK, passed=alerts.empty, severity=severity,
                               metadata=metadata)


@dg.multi_asset(
    name=DRIFT_STEP,
    specs=list(_SPECS),
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    can_subset=True,
    check_specs=[dg.AssetCheckSpec(DRIFT_RANGE_CHECK, asset=DRIFT_KEYS["customer_drift"],
                                   description="Every drift row of D has at least two snapshots and scores within [0, 1]."),
                 dg.AssetCheckSpec(MIX_CHECK, asset=DRIFT_KEYS["population_drift"],
                                   description="No store's segment mix, feature distribution or outlier rate of D is past its alert "
                                               "threshold (QUIMBI_ALERT_*): WARN from the _WARN thresholds, ERROR from the _ERROR ones.")],
)
def daily_drift(context: dg.AssetExecutionContext, config: DriftConfig, warehouse: WarehouseResource) -> Iterator:
    """The drift of each of the run's dates in order (one, or a backfill's range after its profiles step)."""
    dates = context.partition_keys
    size_thread_pools(context)
    settings = config.settings()  # per store: a store with ENABLE_DRIFT_ANALYSIS off is skipped
    by_date: dict[str, list] = {}
    violations, alert_frames = 0, []
    wh = warehouse.open()
    try:
        hold(wh, context.run.run_id, config.stores or None)  # taken by the profiles step already when it ran in this run
        try:
            # Each date's window shares all but one snapshot date with the date before. A single date (the schedule's
            # run) would gain one re-read of D's blocks and hold its whole window: its reader holds one block a date.
            blocks = BlockCache() if len(dates) > 1 else None
            with kept_pools():  # many small stores: one set of worker processes for all the run's dates
                for i, day in enumerate(dates, 1):
                    # Its later dates come next, in order: run_drift_partition leaves them (and the drift state they expire) to them.
                    by_date[day] = run_drift_partition(wh, day, settings, config.stores or None, run_last_date=dates[-1], blocks=blocks)
                    if len(dates) > 1:
                        context.log.info(f"date {i} of {len(dates)}, {day}: drift of {sum(o.ok for o in by_date[day])} store(s), "
                                         f"{sum(not o.ok for o in by_date[day])} failed")
        finally:
            release(wh, context.run.run_id)
        try:  # after the stores' commits: a failure here cannot make a written store a failed one
            for day, outcomes in by_date.items():
                ok = [o for o in outcomes if o.ok and o.rows]
                violations += sum(wh.drift_violations(o.store_id, day) for o in ok)
                if ok:
                    alert_frames.append(store_alerts(wh, settings, day, stores=[o.store_id for o in ok]))
            alerts = pd.concat(alert_frames, ignore_index=True) if alert_frames else None
        except sa.exc.SQLAlchemyError as exc:
            context.log.warning(f"drift rows were written but could not be checked: {str(getattr(exc, 'orig', None) or exc).splitlines()[0]}")
            violations, alerts = -1, None
    finally:
        wh.dispose()
    outcomes = [o for day in dates for o in by_date[day]]
    for day in dates:
        for o in by_date[day]:
            if o.note:
                context.log.warning(f"store {o.store_id} {day}: {o.note}")
    ok = [o for o in outcomes if o.ok and o.rows]
    last_ok = [o for o in by_date[dates[-1]] if o.ok and o.rows]
    note = None if ok else ("ENABLE_DRIFT_ANALYSIS is off (or has no snapshots dated D) for every store of the run: no rows" if not outcomes
                            else "no store had drift rows for this date" if len(dates) == 1 else "no store had drift rows for these dates")
    for name, key in DRIFT_KEYS.items():
        if key not in context.selected_asset_keys:
            continue
        metadata: dict = {"rows": sum(o.rows.get(name, 0) for o in ok), "stores": len({o.store_id for o in ok})}
        if note:
            metadata["note"] = note
        for day in dates:
            metadata[f"date/{day}/rows"] = sum(o.rows.get(name, 0) for o in by_date[day] if o.ok)
            if name == "customer_drift":
                metadata[f"date/{day}/stores_failed"] = sum(not o.ok for o in by_date[day])
                metadata[f"date/{day}/seconds"] = round(sum(o.seconds.get("total", 0.0) for o in by_date[day]), 3)
        for o in last_ok:  # each store's figures of the run's last date
            metadata[f"rows/{o.store_id}"] = o.rows.get(name, 0)
            if name == "customer_drift":
                metadata.update({f"seconds/{stage}/{o.store_id}": round(v, 3) for stage, v in o.seconds.items()})
            if name == "population_drift" and o.population is not None:
                for row in o.population.itertuples():  # numeric: plotted across partitions in the UI
                    metadata[f"segment_share_shift/{o.store_id}/{row.axis}"] = float(row.segment_share_shift)
                    if row.feature_psi is not None:
                        metadata[f"feature_psi/{o.store_id}/{row.axis}"] = float(row.feature_psi)
        if name == "customer_drift_anomalies":
            for o in ok:  # over the run's dates
                for kind, n in o.anomalies_by_type.items():
                    metadata[f"{kind}/{o.store_id}"] = metadata.get(f"{kind}/{o.store_id}", 0) + n
        yield dg.MaterializeResult(asset_key=key, metadata=metadata)
    if DRIFT_KEYS["customer_drift"] in context.selected_asset_keys:
        yield dg.AssetCheckResult(asset_key=DRIFT_KEYS["customer_drift"], check_name=DRIFT_RANGE_CHECK, passed=violations == 0,
                                  metadata={"rows_violating": violations if violations >= 0 else "not checked"})
    if DRIFT_KEYS["population_drift"] in context.selected_asset_keys:
        yield mix_check_result(alerts)
    failed = {**{s: f"profiles: {e}" for s, e in profile_failures_of_run(context).items()},
              **{s: f"drift: {e}" for s, e in first_failures(by_date).items()}}
    if failed:
        names = ",".join(failed)
        raise dg.Failure(description=f"{len(failed)} store(s) failed: {names}; every other store got its profiles, snapshots and drift "
                                     f"(re-run only those: quimbi run --stores {names})",
                         metadata={s: dg.MetadataValue.text(e) for s, e in failed.items()})
