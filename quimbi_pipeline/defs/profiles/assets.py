"""The daily step: customer_profiles and the snapshot assets of the date, computed and written together.

One step (a multi-asset) so that a backfill of any past date snapshots exactly that date's profiles,
whatever newer profiles customer_profiles already holds.
"""

from collections.abc import Iterator

import dagster as dg

from quimbi_pipeline.defs.resources import OrdersResource, WarehouseResource
from quimbi_pipeline.partitions import daily_partitions
from quimbi_pipeline.pipeline import PartitionReport, run_profiles_partition
from quimbi_pipeline.settings import ClusteringAlgorithm, StoreSettings
from quimbi_pipeline.snapshots import SNAPSHOT_TYPES, snapshot_types_for

orders = dg.AssetSpec(
    "orders",
    description="Order history (QUIMBI_ORDERS: CSV/Parquet path, sql:<table>, or demo). Read, validated and cut at D + 1 day by each partition.",
    group_name="sources",
    kinds={"source"},
)

DAILY_STEP = "daily_profiles"
MEMBERSHIPS_CHECK = "memberships_sum_to_one"
COVERAGE_CHECK = "one_profile_per_active_customer"


class ProfilesConfig(dg.Config):
    """Run config (launchpad). Empty stores = every store in the source; unset values come from the environment."""

    stores: list[str] = []
    active_days: int | None = None
    min_k: int | None = None
    max_k: int | None = None
    enable_temporal_snapshots: bool | None = None
    enable_stable_segments: bool | None = None
    segment_refit_days: int | None = None
    enable_adaptive_windows: bool | None = None
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
    return metadata


SNAPSHOT_COVERAGE_CHECK = "snapshots_cover_active_customers"
SNAPSHOT_UNIQUE_CHECK = "snapshot_keys_unique"
MIN_SNAPSHOT_COVERAGE = 0.95  # the seed's success metric

PROFILES_KEY = dg.AssetKey("customer_profiles")
SNAPSHOT_KEYS = {t: dg.AssetKey(f"{t}_snapshots") for t in SNAPSHOT_TYPES}
OUTLIERS_KEY = dg.AssetKey("customer_outlier_flags")

# Specs live inside a tuple: module-level AssetSpec objects would be loaded as assets of their own.
_SPECS = (
  dg.AssetSpec(
    PROFILES_KEY, deps=[orders], group_name="profiles", kinds={"python", "sql"},
    description="Each active customer's behavioral profile as of the partition date, merged into the customer_profiles table (never overwriting a newer profile).",
  ),
  *(
    dg.AssetSpec(
        key, deps=[PROFILES_KEY], group_name="snapshots", kinds={"sql"}, skippable=True,
        description=f"{t.capitalize()} frozen copies of the partition's profiles in customer_profile_snapshots (snapshot_type = '{t}'); "
                    "materialized on the dates the calendar gives, for stores with ENABLE_TEMPORAL_SNAPSHOTS on.",
    )
    for t, key in SNAPSHOT_KEYS.items()
  ),
  dg.AssetSpec(
    OUTLIERS_KEY, deps=[PROFILES_KEY], group_name="outliers", kinds={"sql"}, skippable=True,
    description="Outlier flags of the partition's customers, one row per method (membership: the seed's rule; membership_normalized; "
                "density: distance to the nearest segment or a segment of its own), for stores with ENABLE_OUTLIER_DETECTION.",
  ),
)


@dg.multi_asset(
    name=DAILY_STEP,
    specs=list(_SPECS),
    partitions_def=daily_partitions,
    # Subsettable so that snapshot outputs and their checks are optional (off-calendar dates, flag off).
    # The step always computes and writes the date's profiles: they are what snapshots freeze.
    can_subset=True,
    check_specs=[
        dg.AssetCheckSpec(MEMBERSHIPS_CHECK, asset=PROFILES_KEY, description="Every stored profile's fuzzy memberships sum to 1 on every axis."),
        dg.AssetCheckSpec(COVERAGE_CHECK, asset=PROFILES_KEY, description="Every active customer has exactly one current profile dated D or later, and no inactive one is dated D."),
        dg.AssetCheckSpec(SNAPSHOT_COVERAGE_CHECK, asset=SNAPSHOT_KEYS["daily"], description=f"Daily snapshots of D cover at least {MIN_SNAPSHOT_COVERAGE:.0%} of the customers active at D (of the rollout share, if one is set)."),
        dg.AssetCheckSpec(SNAPSHOT_UNIQUE_CHECK, asset=SNAPSHOT_KEYS["daily"], description="No (store, customer, date, type) appears twice among D's snapshots."),
    ],
)
def daily_profiles(
    context: dg.AssetExecutionContext, config: ProfilesConfig, warehouse: WarehouseResource, orders_source: OrdersResource
) -> Iterator:
    """One step per date: profiles, then (flag on) that date's snapshots, written per store in one transaction."""
    as_of = context.partition_key  # YYYY-MM-DD, a UTC date
    settings = config.settings()
    selected = context.selected_asset_keys
    # Snapshot types of the date, limited to the selected snapshot assets (all of them in the daily job).
    snapshot_types = [t for t in snapshot_types_for(as_of) if SNAPSHOT_KEYS[t] in selected]
    wh = warehouse.open()
    try:
        validated = orders_source.load(wh.url, settings.default.bad_rows)
        report = run_profiles_partition(validated, as_of, wh, settings, config.stores or None, snapshot_types=snapshot_types)
        flags = {o.store_id: settings.flags(o.store_id) for o in report.outcomes}
        for store, store_flags in flags.items():
            context.log.info(f"store {store}: effective flags {store_flags}")
    finally:
        wh.dispose()
    ok = [o for o in report.outcomes if o.ok]
    if PROFILES_KEY in selected:  # the date's profiles are always written: snapshots freeze them
        metadata = report_metadata(report)
        metadata.update({f"flags/{store}": dg.MetadataValue.json(store_flags) for store, store_flags in flags.items()})
        yield dg.MaterializeResult(asset_key=PROFILES_KEY, metadata=metadata)
        violations = sum(o.membership_sum_violations for o in ok)
        missing = sum(o.missing_profiles for o in ok)
        unexpected = sum(o.unexpected_profiles for o in ok)
        yield dg.AssetCheckResult(asset_key=PROFILES_KEY, check_name=MEMBERSHIPS_CHECK, passed=violations == 0, metadata={"rows_violating": violations})
        yield dg.AssetCheckResult(
            asset_key=PROFILES_KEY, check_name=COVERAGE_CHECK, passed=missing == 0 and unexpected == 0,
            metadata={"active_without_profile": missing, "inactive_with_profile_dated_d": unexpected, "profiles": report.n_profiles},
        )
    flagged = [o for o in ok if o.outlier_rates]
    if flagged and OUTLIERS_KEY in selected:
        metadata = {"rows": sum(o.outlier_rows for o in flagged), "stores": len(flagged)}
        for o in flagged:  # numeric: the outlier rate per method plots across partitions
            metadata.update({f"outlier_rate/{o.store_id}/{method}": rate for method, rate in o.outlier_rates.items()})
        yield dg.MaterializeResult(asset_key=OUTLIERS_KEY, metadata=metadata)
    snapshotted = [o for o in ok if o.snapshot_rows]
    for snapshot_type in snapshot_types if snapshotted else []:
        rows = {o.store_id: o.snapshot_rows.get(snapshot_type, 0) for o in snapshotted}
        yield dg.MaterializeResult(
            asset_key=SNAPSHOT_KEYS[snapshot_type],
            metadata={"rows": sum(rows.values()), "stores": len(rows), **{f"rows/{s}": n for s, n in rows.items()}},
        )
    if snapshotted and "daily" in snapshot_types:
        active = sum(o.snapshot_expected for o in snapshotted)  # the active customers (of the rollout share)
        daily = sum(o.snapshot_rows.get("daily", 0) for o in snapshotted)
        coverage = daily / active if active else 1.0
        duplicates = sum(o.snapshot_duplicate_keys for o in snapshotted)
        yield dg.AssetCheckResult(asset_key=SNAPSHOT_KEYS["daily"], check_name=SNAPSHOT_COVERAGE_CHECK, passed=coverage >= MIN_SNAPSHOT_COVERAGE,
                                  metadata={"coverage": round(coverage, 6), "active_customers": active, "daily_snapshots": daily})
        yield dg.AssetCheckResult(asset_key=SNAPSHOT_KEYS["daily"], check_name=SNAPSHOT_UNIQUE_CHECK, passed=duplicates == 0,
                                  metadata={"duplicate_keys": duplicates})
    if report.failed:
        raise dg.Failure(
            description=f"{len(report.failed)} store(s) failed; the other stores were written",
            metadata={o.store_id: dg.MetadataValue.text(o.error or "") for o in report.failed},
        )
