"""The daily step: customer_profiles, the date's snapshots and outlier flags, computed and written together.

One step (a multi-asset) so that a backfill of any past date snapshots exactly that date's profiles,
whatever newer profiles customer_profiles already holds. Every selected output materializes whenever
the step finishes (with 0 rows and a note when its flag is off), so a "Materialize all" backfill ends
successful and no partition waits for an output that cannot come. A store that fails is reported;
the other stores are written, and the run still fails naming it (at the end of the drift step when
that step is in the run, so that the other stores also get their drift).
"""

from collections.abc import Iterator

import dagster as dg

from quimbi_pipeline.defs.partitions import daily_partitions
from quimbi_pipeline.defs.resources import (
    OrdersResource,
    WarehouseResource,
    record_run_flags,
    size_thread_pools,
)
from quimbi_pipeline.history.snapshots import snapshot_types_for
from quimbi_pipeline.run import PartitionReport, run_profiles_partition
from quimbi_pipeline.settings import ClusteringAlgorithm, StoreSettings
from quimbi_pipeline.storage.leases import hold, release

orders = dg.AssetSpec(
    "orders",
    description="Order history (QUIMBI_ORDERS: CSV/Parquet path, sql:<table>, or demo). Read, validated and cut at D + 1 day by each partition.",
    group_name="sources",
    kinds={"source"},
)

DAILY_STEP = "daily_profiles"
DRIFT_STEP = "daily_drift"  # defined in defs/drift; named here to know whether it follows in the same run
MEMBERSHIPS_CHECK = "memberships_sum_to_one"
COVERAGE_CHECK = "one_profile_per_active_customer"
STORES_CHECK = "every_store_succeeded"


class ProfilesConfig(dg.Config):
    """Run config (launchpad). Empty stores = every store in the source; unset values come from the environment."""

    stores: list[str] = []
    active_days: int | None = None
    min_k: int | None = None
    max_k: int | None = None
    enable_temporal_snapshots: bool | None = None
    enable_drift_analysis: bool | None = None
    enable_stable_segments: bool | None = None
    segment_refit_days: int | None = None
    enable_adaptive_windows: bool | None = None
    enable_outlier_detection: bool | None = None
    enable_advanced_clustering: bool | None = None
    clustering_algorithm: ClusteringAlgorithm | None = None
    dynamic_k_range: bool | None = None

    def settings(self) -> StoreSettings:
        """Per-store settings: environment < flags file (QUIMBI_FLAGS_FILE) < this run config; validated here, before any work."""
        return StoreSettings(self.model_dump(exclude={"stores"}))


def report_metadata(report: PartitionReport) -> dict:
    metadata: dict = {
        "rows": dg.MetadataValue.int(report.n_profiles),
        "stores_ok": dg.MetadataValue.int(len(report.outcomes) - len(report.failed)),
        "stores_failed": dg.MetadataValue.int(len(report.failed)),
        "seconds_total": dg.MetadataValue.float(round(report.seconds.get("total", 0.0), 3)),
    }
    for o in report.outcomes:
        metadata[f"customers/{o.store_id}"] = dg.MetadataValue.int(o.n_profiles)
        for key, value in o.metrics.items():
            metadata[f"{key}/{o.store_id}"] = dg.MetadataValue.float(float(value))
        for name, share in o.archetype_shares.items():
            metadata[f"archetype_share/{o.store_id}/{name}"] = dg.MetadataValue.float(share)
        if o.error:
            metadata[f"error/{o.store_id}"] = dg.MetadataValue.text(o.error)
        for note in o.notes:
            metadata.setdefault(f"notes/{o.store_id}", dg.MetadataValue.text(""))
            metadata[f"notes/{o.store_id}"] = dg.MetadataValue.text((metadata[f"notes/{o.store_id}"].value + "\n" + note).strip())
    return metadata


SNAPSHOT_COVERAGE_CHECK = "snapshots_cover_active_customers"
SNAPSHOT_UNIQUE_CHECK = "snapshot_keys_unique"
MIN_SNAPSHOT_COVERAGE = 0.95  # the seed's success metric

PROFILES_KEY = dg.AssetKey("customer_profiles")
SNAPSHOTS_KEY = dg.AssetKey("customer_profile_snapshots")
OUTLIERS_KEY = dg.AssetKey("customer_outlier_flags")

# Specs live inside a tuple: module-level AssetSpec objects would be loaded as assets of their own.
_SPECS = (
    dg.AssetSpec(
        PROFILES_KEY, deps=[orders], group_name="profiles", kinds={"python", "sql"},
        description="Each active customer's behavioral profile as of the partition date, merged into the customer_profiles table (never overwriting a newer profile).",
    ),
    dg.AssetSpec(
        SNAPSHOTS_KEY, deps=[PROFILES_KEY], group_name="snapshots", kinds={"sql"},
        description="Frozen copies of the partition's profiles in customer_profile_snapshots, one per calendar type of the date "
                    "(daily always; weekly on Mondays; monthly, quarterly, yearly on their first days: metadata `types`), for stores "
                    "with ENABLE_TEMPORAL_SNAPSHOTS on (0 rows otherwise).",
    ),
    dg.AssetSpec(
        OUTLIERS_KEY, deps=[PROFILES_KEY], group_name="outliers", kinds={"sql"},
        description="Outlier flags of the partition's customers, one row per method (membership: the seed's rule; membership_normalized; "
                    "density: distance to the nearest segment or a segment of its own), for stores with ENABLE_OUTLIER_DETECTION (0 rows otherwise).",
    ),
)


def drift_step_follows(context: dg.AssetExecutionContext) -> bool:
    """Whether this run also executes the drift step (the daily job, or a backfill of every asset)."""
    steps = context.run.step_keys_to_execute
    return DRIFT_STEP in context.job_def.graph.node_dict and (steps is None or DRIFT_STEP in steps)


@dg.multi_asset(
    name=DAILY_STEP,
    specs=list(_SPECS),
    partitions_def=daily_partitions,
    # Subsettable so that profiles can be written without snapshots or outliers (a selection in the UI).
    # The step always computes and writes the date's profiles: they are what snapshots freeze.
    can_subset=True,
    check_specs=[
        dg.AssetCheckSpec(MEMBERSHIPS_CHECK, asset=PROFILES_KEY, description="Every stored profile's fuzzy memberships sum to 1 on every axis."),
        dg.AssetCheckSpec(COVERAGE_CHECK, asset=PROFILES_KEY, description="Every active customer has exactly one current profile dated D or later, and no inactive one is dated D."),
        dg.AssetCheckSpec(STORES_CHECK, asset=PROFILES_KEY, description="Every store of the run was computed and written (a failed store keeps its previous rows)."),
        dg.AssetCheckSpec(SNAPSHOT_COVERAGE_CHECK, asset=SNAPSHOTS_KEY, description=f"Daily snapshots of D cover at least {MIN_SNAPSHOT_COVERAGE:.0%} of the customers active at D (of the rollout share, if one is set)."),
        dg.AssetCheckSpec(SNAPSHOT_UNIQUE_CHECK, asset=SNAPSHOTS_KEY, description="No (store, customer, date, type) appears twice among D's snapshots."),
    ],
)
def daily_profiles(
    context: dg.AssetExecutionContext, config: ProfilesConfig, warehouse: WarehouseResource, orders_source: OrdersResource
) -> Iterator:
    """One step per date: profiles, then (flag on) that date's snapshots, written per store in one transaction."""
    as_of = context.partition_key  # YYYY-MM-DD, a UTC date
    size_thread_pools(context)
    settings = config.settings()
    selected = context.selected_asset_keys
    snapshot_types = snapshot_types_for(as_of) if SNAPSHOTS_KEY in selected else []
    wh = warehouse.open()
    try:
        # The run's lease on its stores (storage/leases.py): pruning leaves them alone until the drift step ends it.
        hold(wh, context.run.run_id, config.stores or None)
        try:
            validated = orders_source.load(wh.url, settings.default.bad_rows)
            report = run_profiles_partition(validated, as_of, wh, settings, config.stores or None, snapshot_types=snapshot_types)
        except BaseException:  # the drift step will not run: the lease ends here
            release(wh, context.run.run_id)
            raise
        if not drift_step_follows(context):
            release(wh, context.run.run_id)
    finally:
        wh.dispose()
    flags = record_run_flags(context, settings, [o.store_id for o in report.outcomes])
    ok = [o for o in report.outcomes if o.ok]
    if PROFILES_KEY in selected:  # the date's profiles are always written: snapshots freeze them
        metadata = report_metadata(report)
        metadata.update({f"flags/{store}": dg.MetadataValue.json(store_flags) for store, store_flags in flags.items()})
        yield dg.MaterializeResult(asset_key=PROFILES_KEY, metadata=metadata)
        violations = sum(o.membership_sum_violations for o in ok)
        missing = sum(o.missing_profiles for o in ok)
        unexpected = sum(o.unexpected_profiles for o in ok)
        unverified = ", ".join(o.store_id for o in ok if not o.verified) or "none"  # written, but not read back
        yield dg.AssetCheckResult(asset_key=PROFILES_KEY, check_name=MEMBERSHIPS_CHECK, passed=violations == 0 and unverified == "none",
                                  metadata={"rows_violating": violations, "stores_not_verified": unverified})
        yield dg.AssetCheckResult(
            asset_key=PROFILES_KEY, check_name=COVERAGE_CHECK, passed=missing == 0 and unexpected == 0 and unverified == "none",
            metadata={"active_without_profile": missing, "inactive_with_profile_dated_d": unexpected, "profiles": report.n_profiles,
                      "stores_not_verified": unverified},
        )
        yield dg.AssetCheckResult(asset_key=PROFILES_KEY, check_name=STORES_CHECK, passed=not report.failed, severity=dg.AssetCheckSeverity.ERROR,
                                  metadata={"failed_stores": ", ".join(o.store_id for o in report.failed) or "none"})
    if OUTLIERS_KEY in selected:
        flagged = [o for o in ok if o.outlier_rates]
        metadata = {"rows": sum(o.outlier_rows for o in flagged), "stores": len(flagged)}
        if not flagged:
            metadata["note"] = "ENABLE_OUTLIER_DETECTION is off for every store of the run: no rows"
        for o in flagged:  # numeric: the outlier rate per method plots across partitions
            metadata.update({f"outlier_rate/{o.store_id}/{method}": rate for method, rate in o.outlier_rates.items()})
        yield dg.MaterializeResult(asset_key=OUTLIERS_KEY, metadata=metadata)
    if SNAPSHOTS_KEY in selected:
        yield from _snapshot_results(snapshot_types, [o for o in ok if o.snapshot_rows])
    if report.failed:
        failed = {o.store_id: dg.MetadataValue.text(o.error or "") for o in report.failed}
        names = ", ".join(failed)
        context.instance.add_run_tags(context.run.run_id, {"quimbi/failed_stores": names[:4000]})
        if drift_step_follows(context):
            context.log.error(f"{len(failed)} store(s) failed and were not written: {names}; the other stores were written, "
                              "and the drift step runs for them before the run fails")
        else:
            raise dg.Failure(description=f"{len(failed)} store(s) failed: {names}; the other stores were written "
                                         f"(re-run only those: quimbi run --stores {','.join(failed)})", metadata=failed)


def _snapshot_results(snapshot_types: list[str], snapshotted: list) -> Iterator:
    rows_by_type = {t: sum(o.snapshot_rows.get(t, 0) for o in snapshotted) for t in snapshot_types}
    metadata = {"rows": sum(rows_by_type.values()), "types": ", ".join(snapshot_types), "stores": len(snapshotted),
                **{f"rows/{t}": n for t, n in rows_by_type.items()}, **{f"rows/{o.store_id}": o.snapshot_rows.get("daily", 0) for o in snapshotted}}
    if not snapshotted:
        metadata["note"] = "ENABLE_TEMPORAL_SNAPSHOTS is off for every store of the run: no rows"
    yield dg.MaterializeResult(asset_key=SNAPSHOTS_KEY, metadata=metadata)
    active = sum(o.snapshot_expected for o in snapshotted)  # the active customers (of the rollout share)
    daily = rows_by_type.get("daily", 0)
    coverage = daily / active if active else 1.0
    duplicates = sum(o.snapshot_duplicate_keys for o in snapshotted)
    yield dg.AssetCheckResult(asset_key=SNAPSHOTS_KEY, check_name=SNAPSHOT_COVERAGE_CHECK, passed=coverage >= MIN_SNAPSHOT_COVERAGE,
                              metadata={"coverage": round(coverage, 6), "active_customers": active, "daily_snapshots": daily})
    yield dg.AssetCheckResult(asset_key=SNAPSHOTS_KEY, check_name=SNAPSHOT_UNIQUE_CHECK, passed=duplicates == 0, metadata={"duplicate_keys": duplicates})
