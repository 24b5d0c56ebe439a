"""customer_profiles: the daily partitioned asset that computes and writes current profiles."""

from collections.abc import Iterator

import dagster as dg

from quimbi_pipeline.partitions import daily_partitions
from quimbi_pipeline.pipeline import PartitionReport, run_profiles_partition
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.defs.resources import OrdersResource, WarehouseResource

orders = dg.AssetSpec(
    "orders",
    description="Order history (QUIMBI_ORDERS: CSV/Parquet path, sql:<table>, or demo). Read, validated and cut at D + 1 day by each partition.",
    group_name="sources",
    kinds={"source"},
)

MEMBERSHIPS_CHECK = "memberships_sum_to_one"
COVERAGE_CHECK = "one_profile_per_active_customer"


class ProfilesConfig(dg.Config):
    """Run config (launchpad). Empty stores = every store in the source."""

    stores: list[str] = []
    active_days: int | None = None
    min_k: int | None = None
    max_k: int | None = None

    def settings(self) -> PipelineSettings:
        overrides = {k: v for k, v in {"active_days": self.active_days, "min_k": self.min_k, "max_k": self.max_k}.items() if v is not None}
        return PipelineSettings.from_env(overrides)


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


@dg.asset(
    partitions_def=daily_partitions,
    deps=[orders],
    group_name="profiles",
    kinds={"python", "sql"},
    check_specs=[
        dg.AssetCheckSpec(MEMBERSHIPS_CHECK, asset="customer_profiles", description="Every stored profile's fuzzy memberships sum to 1 on every axis."),
        dg.AssetCheckSpec(COVERAGE_CHECK, asset="customer_profiles", description="Every active customer has exactly one current profile dated D or later, and no inactive one is dated D."),
    ],
    description="Each active customer's behavioral profile as of the partition date, merged into the customer_profiles table (never overwriting a newer profile).",
)
def customer_profiles(
    context: dg.AssetExecutionContext, config: ProfilesConfig, warehouse: WarehouseResource, orders_source: OrdersResource
) -> Iterator:
    as_of = context.partition_key  # YYYY-MM-DD, a UTC date
    settings = config.settings()
    wh = warehouse.open()
    try:
        validated = orders_source.load(wh.url, settings.bad_rows)
        report = run_profiles_partition(validated, as_of, wh, settings, config.stores or None)
    finally:
        wh.dispose()
    yield dg.MaterializeResult(metadata=report_metadata(report))
    ok = [o for o in report.outcomes if o.ok]
    violations = sum(o.membership_sum_violations for o in ok)
    missing = sum(o.missing_profiles for o in ok)
    unexpected = sum(o.unexpected_profiles for o in ok)
    yield dg.AssetCheckResult(check_name=MEMBERSHIPS_CHECK, passed=violations == 0, metadata={"rows_violating": violations})
    yield dg.AssetCheckResult(
        check_name=COVERAGE_CHECK, passed=missing == 0 and unexpected == 0,
        metadata={"active_without_profile": missing, "inactive_with_profile_dated_d": unexpected, "profiles": report.n_profiles},
    )
    if report.failed:
        raise dg.Failure(
            description=f"{len(report.failed)} store(s) failed; the other stores were written",
            metadata={o.store_id: dg.MetadataValue.text(o.error or "") for o in report.failed},
        )
