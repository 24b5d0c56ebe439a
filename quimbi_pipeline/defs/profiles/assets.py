"""The daily step: customer_profiles, the date's snapshots and outlier flags, computed and written together.

One step (a multi-asset) so that a backfill of any past date snapshots exactly that date's profiles,
whatever newer profiles customer_profiles already holds. Every selected output materializes whenever
the step finishes (with 0 rows and a note when its flag is off), so a "Materialize all" backfill ends
successful and no partition waits for an output that cannot come. A store that fails is reported;
the other stores are written, and the run still fails naming it (at the end of the drift step when
that step is in the run, so that the other stores also get their drift).

A run covers one date (the schedule) or a backfill's range of dates (backfill_policy, QUIMBI_BACKFILL_DATES_PER_RUN):
the step then computes its dates in order, each as a run of that date alone would, and its results total them
(each date's own figures under date/D/... in the metadata).
"""

import logging
from collections.abc import Iterator

import dagster as dg

from quimbi_pipeline.defs.partitions import backfill_policy, daily_partitions
from quimbi_pipeline.defs.resources import (
    OrdersResource,
    WarehouseResource,
    record_run_flags,
    size_thread_pools,
)
from quimbi_pipeline.history.snapshots import snapshot_types_for
from quimbi_pipeline.run import (
    FeaturesAhead,
    PartitionReport,
    kept_pools,
    run_profiles_partition,
    write_kept_rows,
    write_left_rows,
)
from quimbi_pipeline.run.sharded_store import load_shard_orders, shard_index
from quimbi_pipeline.settings import ClusteringAlgorithm, StoreSettings
from quimbi_pipeline.storage.leases import hold, release

orders = dg.AssetSpec(
    "orders",
    description="Order history (QUIMBI_ORDERS: CSV/Parquet path, sql:<table>, or demo). Read, validated and cut at D + 1 day by each partition.",
    group_name="sources",
    kinds={"source"},
)

progress = logging.getLogger("quimbi_pipeline.progress")  # which date of a range, shown by `quimbi run`
DAILY_STEP = "daily_profiles"
DRIFT_STEP = "daily_drift"  # defined in defs/drift; named here to know whether it follows in the same run
MEMBERSHIPS_CHECK = "memberships_sum_to_one"
COVERAGE_CHECK = "one_profile_per_active_customer"
STORES_CHECK = "every_store_succeeded"


class ProfilesConfig(dg.Config):
    """Run config (launchpad). Empty stores = every store in the source; unset values come from the environment."""

    stores: list[str] = []
    # One shard of a sharded store (QUIMBI_STORE_SHARDS > 1; `stores` names that one store): 1 to its shard count.
    # The store's drift then runs once every shard is written (the sharded_store_drift sensor).
    shard: int | None = None
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
        return StoreSettings(self.model_dump(exclude={"stores", "shard"}))


def date_keys(reports: list[PartitionReport]) -> list[str]:
    return [f"{r.as_of:%Y-%m-%d}" for r in reports]


def first_failures(outcomes_by_date: dict[str, list]) -> dict[str, str]:
    """{store: error} of the stores whose outcome (a step's, per store) is not ok on any of the run's dates, oldest
    first; with several dates the error names the date of the store's first failure."""
    failed: dict[str, str] = {}
    for day, outcomes in outcomes_by_date.items():
        for o in outcomes:
            if not o.ok:
                failed.setdefault(o.store_id, (o.error or "") if len(outcomes_by_date) == 1 else f"{day}: {o.error or ''}")
    return failed


def failed_stores(reports: list[PartitionReport]) -> dict[str, str]:
    """first_failures of the profiles step's dates."""
    return first_failures({day: report.outcomes for day, report in zip(date_keys(reports), reports)})


def report_metadata(reports: list[PartitionReport]) -> dict:
    """The profiles' metadata: totals over the run's dates, each date's own under date/D/..., and each store's
    figures of the last date (its current state)."""
    last = reports[-1]
    failed = failed_stores(reports)
    metadata: dict = {
        "rows": dg.MetadataValue.int(sum(r.n_profiles for r in reports)),
        "stores_ok": dg.MetadataValue.int(len({o.store_id for r in reports for o in r.outcomes}) - len(failed)),
        "stores_failed": dg.MetadataValue.int(len(failed)),
        "seconds_total": dg.MetadataValue.float(round(sum(r.seconds.get("total", 0.0) for r in reports), 3)),
    }
    if len(reports) > 1:
        days = date_keys(reports)
        metadata["dates"] = dg.MetadataValue.text(f"{days[0]} to {days[-1]} ({len(days)} dates)")
    for day, report in zip(date_keys(reports), reports):
        metadata[f"date/{day}/rows"] = dg.MetadataValue.int(report.n_profiles)
        metadata[f"date/{day}/stores_ok"] = dg.MetadataValue.int(len(report.outcomes) - len(report.failed))
        metadata[f"date/{day}/stores_failed"] = dg.MetadataValue.int(len(report.failed))
        metadata[f"date/{day}/seconds"] = dg.MetadataValue.float(round(report.seconds.get("total", 0.0), 3))
    for o in last.outcomes:
        metadata[f"customers/{o.store_id}"] = dg.MetadataValue.int(o.n_profiles)
        for key, value in o.metrics.items():
            metadata[f"{key}/{o.store_id}"] = dg.MetadataValue.float(float(value))
        for name, share in o.archetype_shares.items():
            metadata[f"archetype_share/{o.store_id}/{name}"] = dg.MetadataValue.float(share)
        for note in o.notes:
            metadata.setdefault(f"notes/{o.store_id}", dg.MetadataValue.text(""))
            metadata[f"notes/{o.store_id}"] = dg.MetadataValue.text((metadata[f"notes/{o.store_id}"].value + "\n" + note).strip())
    for store, error in failed.items():
        metadata[f"error/{store}"] = dg.MetadataValue.text(error)
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
    backfill_policy=backfill_policy,
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
    """One step per run: for each of its dates in order (one, or a backfill's range), profiles, then (flag on) that
    date's snapshots, written per store in one transaction. The orders are read and validated once per run."""
    dates = context.partition_keys  # YYYY-MM-DD, UTC dates, oldest first
    if config.shard is not None and len(config.stores) != 1:
        raise dg.Failure(description=f"shard {config.shard}: a shard belongs to one store: name exactly one in `stores` (got {len(config.stores)})")
    size_thread_pools(context)
    settings = config.settings()
    selected = context.selected_asset_keys
    types_of = {day: snapshot_types_for(day) if SNAPSHOTS_KEY in selected else [] for day in dates}
    reports: list[PartitionReport] = []
    wh = warehouse.open()
    try:
        # The run's lease on its stores (storage/leases.py): pruning leaves them alone until the drift step ends it.
        hold(wh, context.run.run_id, config.stores or None)
        try:
            shard, plan = shard_index(config.shard), None
            if shard is None:
                validated = orders_source.load(wh.url, settings.default.bad_rows)
            else:  # a shard's run reads its customers' and the sample's orders alone
                validated, plan = load_shard_orders(orders_source.resolved_uri(), config.stores[0], shard, settings.for_store(config.stores[0]),
                                                    wh.url, settings.default.bad_rows)
            # Many small stores: one set of worker processes for all the run's dates; large ones: the next date's
            # features computed while a date is written (features_ahead.py).
            with kept_pools(), FeaturesAhead() as ahead:
                for i, day in enumerate(dates, 1):
                    if len(dates) > 1:
                        progress.info("date %d of %d: %s", i, len(dates), day)
                    later = dates[i] if i < len(dates) else None  # its customers active then get their profile row there
                    reports.append(run_profiles_partition(validated, day, wh, settings, config.stores or None, snapshot_types=types_of[day],
                                                          later_day=later, ahead=ahead, shard=shard, shard_plan=plan,
                                                          range_end=dates[-1] if len(dates) > 1 else None))
                    if len(reports) > 1:
                        write_left_rows(validated, wh, settings, reports[-2], types_of[dates[i - 2]], reports[-1].failed)
                    if len(dates) > 1:  # the run's page shows how far a backfill's run has come
                        context.log.info(f"date {i} of {len(dates)}, {day}: {reports[-1].n_profiles:,} profiles, "
                                         f"{len(reports[-1].failed)} store(s) failed, {reports[-1].seconds.get('total', 0.0):.1f}s")
            write_kept_rows(validated, wh, settings, reports, dates, types_of)  # stores that did not reach the range's end
        except BaseException:  # the drift step will not run: the lease ends here, whatever the rows left below do
            try:
                if len(reports) and len(reports) < len(dates):  # the last date done left rows to one that did not run
                    write_left_rows(validated, wh, settings, reports[-1], types_of[dates[len(reports) - 1]], [o for o in reports[-1].outcomes if o.ok])
                    write_kept_rows(validated, wh, settings, reports, dates, types_of)
            finally:
                release(wh, context.run.run_id)
            raise
        if not drift_step_follows(context):
            release(wh, context.run.run_id)
    finally:
        wh.dispose()
    flags = record_run_flags(context, settings, sorted({o.store_id for r in reports for o in r.outcomes}))
    ok = [o for r in reports for o in r.outcomes if o.ok]
    failed = failed_stores(reports)
    if PROFILES_KEY in selected:  # the date's profiles are always written: snapshots freeze them
        metadata = report_metadata(reports)
        metadata.update({f"flags/{store}": dg.MetadataValue.json(store_flags) for store, store_flags in flags.items()})
        yield dg.MaterializeResult(asset_key=PROFILES_KEY, metadata=metadata)
        violations = sum(o.membership_sum_violations for o in ok)
        missing = sum(o.missing_profiles for o in ok)
        unexpected = sum(o.unexpected_profiles for o in ok)
        unverified = ", ".join(sorted({o.store_id for o in ok if not o.verified})) or "none"  # written, but not read back
        yield dg.AssetCheckResult(asset_key=PROFILES_KEY, check_name=MEMBERSHIPS_CHECK, passed=violations == 0 and unverified == "none",
                                  metadata={"rows_violating": violations, "stores_not_verified": unverified})
        yield dg.AssetCheckResult(
            asset_key=PROFILES_KEY, check_name=COVERAGE_CHECK, passed=missing == 0 and unexpected == 0 and unverified == "none",
            metadata={"active_without_profile": missing, "inactive_with_profile_dated_d": unexpected,
                      "profiles": sum(r.n_profiles for r in reports), "stores_not_verified": unverified},
        )
        yield dg.AssetCheckResult(asset_key=PROFILES_KEY, check_name=STORES_CHECK, passed=not failed, severity=dg.AssetCheckSeverity.ERROR,
                                  metadata={"failed_stores": ", ".join(failed) or "none"})
    if OUTLIERS_KEY in selected:
        flagged = [o for o in ok if o.outlier_rates]
        metadata = {"rows": sum(o.outlier_rows for o in flagged), "stores": len({o.store_id for o in flagged})}
        if not flagged:
            metadata["note"] = "ENABLE_OUTLIER_DETECTION is off for every store of the run: no rows"
        for day, report in zip(date_keys(reports), reports):
            metadata[f"date/{day}/rows"] = sum(o.outlier_rows for o in report.outcomes if o.ok)
        for o in (o for o in reports[-1].outcomes if o.ok and o.outlier_rates):  # numeric: the outlier rate per method plots across partitions
            metadata.update({f"outlier_rate/{o.store_id}/{method}": rate for method, rate in o.outlier_rates.items()})
        yield dg.MaterializeResult(asset_key=OUTLIERS_KEY, metadata=metadata)
    if SNAPSHOTS_KEY in selected:
        yield from _snapshot_results([(day, types_of[day], [o for o in r.outcomes if o.ok and o.snapshot_rows])
                                      for day, r in zip(date_keys(reports), reports)],
                                     sum(o.snapshots_expired for r in reports for o in r.outcomes if o.ok))
    if failed:
        context.instance.add_run_tags(context.run.run_id, {"quimbi/failed_stores": ", ".join(failed)[:4000]})
        names = ", ".join(failed)
        if drift_step_follows(context):
            context.log.error(f"{len(failed)} store(s) failed and were not written: {names}; the other stores were written, "
                              "and the drift step runs for them before the run fails")
        else:
            raise dg.Failure(description=f"{len(failed)} store(s) failed: {names}; the other stores were written "
                                         f"(re-run only those: quimbi run --stores {','.join(failed)})",
                             metadata={store: dg.MetadataValue.text(error) for store, error in failed.items()})


def _snapshot_results(dates: list[tuple[str, list[str], list]], expired: int = 0) -> Iterator:
    """The snapshots' materialization and checks over the run's dates: (date, its snapshot types, its snapshotted stores' outcomes);
    `expired`: the store-dates of a backfill's range written as blocks alone (their rows expired by the range's end)."""
    rows_by_type: dict[str, int] = {}
    for _, types, snapshotted in dates:
        for t in types:
            rows_by_type[t] = rows_by_type.get(t, 0) + sum(o.snapshot_rows.get(t, 0) for o in snapshotted)
    every = [o for _, _, snapshotted in dates for o in snapshotted]
    last = dates[-1][2]
    metadata = {"rows": sum(rows_by_type.values()), "types": ", ".join(dict.fromkeys(t for _, types, _ in dates for t in types)), "stores": len({o.store_id for o in every}),
                **{f"rows/{t}": n for t, n in rows_by_type.items()}, **{f"rows/{o.store_id}": o.snapshot_rows.get("daily", 0) for o in last}}
    for day, types, snapshotted in dates:
        metadata[f"date/{day}/rows"] = sum(n for o in snapshotted for n in o.snapshot_rows.values())
        metadata[f"date/{day}/types"] = ", ".join(types)
    if expired:
        metadata["expired_on_arrival"] = (f"{expired} store-date(s) of the range: snapshot blocks only, no rows (the retention "
                                          "policy expires them by the range's end)")
    if not every and not expired:
        metadata["note"] = "ENABLE_TEMPORAL_SNAPSHOTS is off for every store of the run: no rows"
    yield dg.MaterializeResult(asset_key=SNAPSHOTS_KEY, metadata=metadata)
    active = sum(o.snapshot_expected for o in every)  # the active customers (of the rollout share), over the run's dates
    daily = rows_by_type.get("daily", 0)
    coverage = daily / active if active else 1.0
    duplicates = sum(o.snapshot_duplicate_keys for o in every)
    yield dg.AssetCheckResult(asset_key=SNAPSHOTS_KEY, check_name=SNAPSHOT_COVERAGE_CHECK, passed=coverage >= MIN_SNAPSHOT_COVERAGE,
                              metadata={"coverage": round(coverage, 6), "active_customers": active, "daily_snapshots": daily})
    yield dg.AssetCheckResult(asset_key=SNAPSHOTS_KEY, check_name=SNAPSHOT_UNIQUE_CHECK, passed=duplicates == 0, metadata={"duplicate_keys": duplicates})
