"""Can four fake customers bend the models? Injected into real orders, with and without containment.

The fakes (FAKE_KINDS): a bot with 200 orders in one day, a $50,000 order from a new customer, a
$50,000 order added to an existing customer's history, and hourly orders for a week. The store's
profiles of D are computed three times on the same orders: without the fakes (the reference), with
them and ENABLE_OUTLIER_DETECTION on (containment: the default method's outliers left out of the
fits), and with them and containment off (the models see everyone, as before containment existed).
Reported: which fakes each method flags, the share of real customers keeping their reference dominant
segment on every axis, how many real customers each axis moved, and the fakes' predicted_ltv rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from quimbi_pipeline.model.profiles import StoreProfiles, build_store_profiles
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.sources.orders import as_of_day, orders_as_of, validate_orders

FAKE_KINDS = ("bot_200_orders_in_a_day", "new_customer_50k_order", "old_customer_50k_order", "hourly_orders_for_a_week")


@dataclass
class ContainmentResult:
    caught: pd.DataFrame  # fake x method -> flagged
    kept_segments: dict[str, float]  # run -> share of real customers with the reference dominant segment on every axis
    moved_by_axis: dict[str, dict[str, int]]  # run -> axis -> real customers whose dominant segment moved
    fake_ltv_percentile: dict[str, dict[str, float]]  # run -> fake -> percentile of predicted_ltv among everyone
    false_positive_rate: dict[str, float]  # method -> share of real customers flagged (the containment run)


def inject_fakes(orders: pd.DataFrame, as_of, store_id: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """Orders plus the four fakes in the week up to D; returns (orders, {kind: customer_id})."""
    day = as_of_day(as_of)
    old = orders.loc[orders["order_ts"] < day - pd.Timedelta(days=180), "customer_id"].value_counts().index[0]
    ids = {"bot_200_orders_in_a_day": "fake-bot", "new_customer_50k_order": "fake-whale", "old_customer_50k_order": str(old),
           "hourly_orders_for_a_week": "fake-hourly"}
    rows = []
    bot_day = day - pd.Timedelta(days=2)
    rows += [(ids["bot_200_orders_in_a_day"], bot_day + pd.Timedelta(minutes=5 * i), 15.0) for i in range(200)]
    rows += [(ids["new_customer_50k_order"], day - pd.Timedelta(days=3), 50_000.0)]
    rows += [(ids["old_customer_50k_order"], day - pd.Timedelta(days=1), 50_000.0)]
    rows += [(ids["hourly_orders_for_a_week"], day - pd.Timedelta(days=7) + pd.Timedelta(hours=h), 12.0) for h in range(7 * 24)]
    fakes = pd.DataFrame(rows, columns=["customer_id", "order_ts", "order_total"])
    fakes["order_id"] = [f"fake-{i}" for i in range(len(fakes))]
    fakes["store_id"] = store_id
    for column in orders.columns.difference(fakes.columns):
        fakes[column] = orders[column].iloc[0] if column != "item_count" else 1
    return pd.concat([orders, fakes[orders.columns]], ignore_index=True), ids


def _dominant(result: StoreProfiles) -> pd.DataFrame:
    ids = result.profiles["customer_id"].astype(str).to_numpy()
    return pd.DataFrame({a: np.asarray(s.model.segment_names, dtype=object)[s.dominant] for a, s in result.segmentations.items()}, index=ids)


def evaluate_containment(orders: pd.DataFrame, as_of, store_id: str, settings: PipelineSettings | None = None) -> ContainmentResult:
    """`orders`: one store's raw orders (validated here), all dated before D + 1 day."""
    settings = settings or PipelineSettings()
    day = as_of_day(as_of)
    clean = validate_orders(orders)
    with_fakes_raw, ids = inject_fakes(clean.orders, day, store_id)
    dirty = validate_orders(with_fakes_raw)
    opt = clean.optional_columns
    on = settings.model_copy(update={"enable_outlier_detection": True})
    runs = {
        "reference (no fakes)": build_store_profiles(orders_as_of(clean.orders, day), store_id, day, settings, opt),
        "fakes, containment on": build_store_profiles(orders_as_of(dirty.orders, day), store_id, day, on, opt),
        "fakes, containment off": build_store_profiles(orders_as_of(dirty.orders, day), store_id, day, settings, opt),
    }
    real = _dominant(runs["reference (no fakes)"]).index.difference(list(ids.values()))
    reference = _dominant(runs["reference (no fakes)"]).loc[real]
    kept, moved, ranks = {}, {}, {}
    for name, result in runs.items():
        if name.startswith("reference"):
            continue
        dom = _dominant(result).reindex(real)
        same = dom.eq(reference)
        kept[name] = float(same.all(axis=1).mean())
        moved[name] = {a: int((~same[a]).sum()) for a in reference.columns}
        ltv = result.profiles.set_index(result.profiles["customer_id"].astype(str))["predicted_ltv"]
        pct = ltv.rank(pct=True)
        ranks[name] = {kind: float(pct.get(customer, np.nan)) for kind, customer in ids.items()}
    contained = runs["fakes, containment on"]
    flags = contained.outliers
    flagged = flags[flags["is_outlier"]].groupby("method")["customer_id"].apply(set)
    caught = pd.DataFrame({m: {kind: customer in flagged.get(m, set()) for kind, customer in ids.items()} for m in ("membership", "membership_normalized", "density")})
    n_real = len(real)
    fp = {m: len(flagged.get(m, set()) - set(ids.values())) / n_real for m in ("membership", "membership_normalized", "density")}
    return ContainmentResult(caught, kept, moved, ranks, fp)

