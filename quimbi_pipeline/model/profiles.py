"""Customer profiles of one store as of a date: features -> segments -> archetype, churn, LTV.

Pure pandas/numpy; the output frame has exactly the columns of the customer_profiles table, JSON
columns already serialized (deterministically: fixed key order, values rounded to 6 decimals).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
import pandas as pd

from quimbi_pipeline.history.json_text import (
    DECIMALS,
    json_nested_object,
    json_number,
    json_object,
    json_string,
    rounded_number,
)
from quimbi_pipeline.history.snapshot_blocks import SnapshotColumns
from quimbi_pipeline.history.snapshot_values import (
    SnapshotValues,
    numbers_text,
    values_of,
)
from quimbi_pipeline.model.change_points import ChangeRule
from quimbi_pipeline.model.churn import (
    ChurnModel,
    evidence_of,
    fit_store_churn,
    score_churn,
)
from quimbi_pipeline.model.features import (
    CHANGE_PREFIX,
    AxisSpec,
    FeatureStatistics,
    active_mask,
    available_axes,
    features_and_statistics,
)
from quimbi_pipeline.model.outliers import density_outliers, outlier_flags
from quimbi_pipeline.model.segmentation import (
    AxisModel,
    AxisSegmentation,
    axis_matrix,
    fit_axis_model,
    score_axis,
    segment_axis,
)
from quimbi_pipeline.model.store_state import StoreState, segment_sizes_of
from quimbi_pipeline.runtime.memory import release_memory
from quimbi_pipeline.runtime.threads import SMALL_ROWS
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.settings.rollout import in_rollout
from quimbi_pipeline.sources.keys import is_in
from quimbi_pipeline.sources.orders import as_of_day

log = logging.getLogger(__name__)
progress = logging.getLogger("quimbi_pipeline.progress")  # stage and store, shown by `quimbi run` while a date runs

PROFILE_COLUMNS = [
    "store_id", "customer_id", "archetype_id", "archetype_level", "archetype_name", "dominant_segments",
    "fuzzy_memberships", "behavioral_features", "churn_risk_score", "churn_risk_level", "predicted_ltv", "expected_purchases",
    "total_orders", "lifetime_value", "days_since_first_order", "tenure_months", "profile_date", "model_version",
    "next_order_date", "history_basis",
]
ARCHETYPE_NAMESPACE = uuid.UUID("8f7c1a52-3f0e-4c59-9a43-2f1d7d0c9b11")
ARCHETYPE_LEVELS = 5
# A next order expected further out than this after the last one is no date at all (NULL).
MAX_NEXT_ORDER_DAYS = 3650
# An outlier's predicted_ltv is capped at this quantile of the other customers' (ENABLE_OUTLIER_DETECTION).
OUTLIER_LTV_CAP_QUANTILE = 0.95


def model_version_for(algorithm: str, as_of: pd.Timestamp) -> str:
    return f"{algorithm}-{pd.Timestamp(as_of):%Y-%m-%d}"


def stable_model_version(algorithm: str, fitted_on: pd.Timestamp) -> str:
    """Versions of models kept in force over a refit period (distinct from the daily fresh fits)."""
    return f"{algorithm}-stable-{pd.Timestamp(fitted_on):%Y-%m-%d}"


class CustomerFeatures(NamedTuple):
    features: pd.DataFrame  # every customer with a purchase
    active: pd.DataFrame  # the active ones
    statistics: FeatureStatistics  # the store's, they were measured against


def customer_features(orders: pd.DataFrame, as_of: pd.Timestamp, settings: PipelineSettings, optional_columns,
                      rows: np.ndarray | None = None, statistics: FeatureStatistics | None = None) -> CustomerFeatures:
    """The customers' features at D, as the settings define them, over the orders in `rows` (a boolean mask; None:
    all), against the store's `statistics` (None: fitted on these orders)."""
    features, fitted = features_and_statistics(
        orders, as_of, optional_columns=optional_columns, window_days=settings.feature_window_days,
        adaptive=ChangeRule.from_settings(settings) if settings.enable_adaptive_windows else None,
        occasion_days=settings.btyd_occasion_days, rows=rows, statistics=statistics)
    return CustomerFeatures(features, features.loc[active_mask(features, settings.active_days)], fitted)


def next_order_dates(last_order_ts: pd.Series, days_after: np.ndarray) -> pd.Series:
    """The expected next order's day: the last purchase day plus the expected gap, as dates (None where unknown)."""
    last_day = last_order_ts.dt.normalize().to_numpy("datetime64[ns]")
    days = np.where(np.isfinite(days_after) & (days_after <= MAX_NEXT_ORDER_DAYS), np.round(days_after), np.nan)
    when = pd.Series(last_day) + pd.to_timedelta(days, unit="D")
    return pd.Series(when.dt.date.to_numpy(dtype=object), dtype="object").where(when.notna(), None)


# ENABLE_COARSE_ARCHETYPES: the axes a marketer acts on, each in three tiers of its worse -> better ladder.
COARSE_TIERS = {
    "purchase_frequency": ("occasional", "regular", "frequent"),
    "purchase_value": ("low spend", "mid spend", "high spend"),
    "loyalty_trajectory": ("fading", "steady", "loyal"),
}


def _ladder_position(seg: AxisSegmentation) -> np.ndarray:
    k = seg.model.k
    return seg.dominant / (k - 1) if k > 1 else np.full(seg.dominant.shape, 0.5)


def archetypes(segmentations: dict[str, AxisSegmentation], coarse: bool = False) -> tuple[pd.Series, np.ndarray, pd.Series]:
    """(archetype_id, archetype_level, archetype_name) from the dominant segment of each axis.

    archetype_id is uuid5 of "axis=segment|..." in axis order, stable across runs and stores.
    archetype_level (1..5) buckets the mean position of the dominant segments on their worse -> better
    ladders: 1 = worst on every axis, 5 = best on every axis.
    `coarse` (ENABLE_COARSE_ARCHETYPES): the combination of COARSE_TIERS only (frequency, value, loyalty, each
    in thirds of its ladder: at most 27 archetypes, named "frequent, high spend, loyal"); id uuid5 of
    "coarse|axis=tier|...", level from the tiers' mean position. Without those axes, the full archetypes.
    """
    parts = {axis: seg for axis, seg in segmentations.items() if not coarse or axis in COARSE_TIERS}
    if not parts:
        parts, coarse = segmentations, False
    key = None
    name = None
    position = None
    for axis, seg in parts.items():
        pos = _ladder_position(seg)
        if coarse:
            tier = np.clip(np.floor(pos * 3).astype(int), 0, 2)
            part = pd.Series(np.asarray(COARSE_TIERS[axis], dtype=object)[tier], dtype="string")
            pos = tier / 2.0
        else:
            part = pd.Series(np.asarray(seg.model.segment_names, dtype=object)[seg.dominant], dtype="string")
        key = (("coarse|" if coarse else "") + axis + "=" + part) if key is None else key + ("|" + axis + "=") + part
        name = part if name is None else name + ", " + part
        position = pos if position is None else position + pos
    position = position / len(parts)
    level = np.clip(np.floor(position * ARCHETYPE_LEVELS).astype(int) + 1, 1, ARCHETYPE_LEVELS)
    codes, uniques = pd.factorize(key)
    ids = np.array([str(uuid.uuid5(ARCHETYPE_NAMESPACE, u)) for u in uniques], dtype=object)  # one per archetype, not per customer
    return pd.Series(ids[codes], dtype="string"), level, name


@dataclass
class StoreProfiles:
    store_id: str
    as_of: pd.Timestamp
    profiles: pd.DataFrame  # PROFILE_COLUMNS
    segmentations: dict[str, AxisSegmentation]
    churn: ChurnModel | None
    model_version: str
    n_customers_seen: int
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage
    fresh_fit: bool = True  # False when scored against models in force (stable segment identity)
    outliers: pd.DataFrame | None = None  # customer_outlier_flags rows (ENABLE_OUTLIER_DETECTION)
    snapshot_columns: SnapshotColumns | None = None  # the numbers of the snapshot rows (ENABLE_TEMPORAL_SNAPSHOTS)
    snapshot_values: SnapshotValues | None = None  # the snapshot rows' JSON values as arrays (ENABLE_TEMPORAL_SNAPSHOTS)
    deferred: np.ndarray | None = None  # per profile row: its customer_profiles row waits for the run's next date (no JSON)
    state: StoreState | None = None  # what the rows were scored against (None: no active customer)

    @property
    def axes(self) -> list[str]:
        return list(self.segmentations)


def _empty_profiles() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in PROFILE_COLUMNS})


def build_store_profiles(
    orders: pd.DataFrame,
    store_id: str,
    as_of: pd.Timestamp,
    settings: PipelineSettings,
    optional_columns: tuple[str, ...] | list[str] = (),
    models: dict[str, AxisModel] | None = None,
    model_version: str | None = None,
    features: CustomerFeatures | None = None,
    active_later: pd.Index | None = None,
    state: StoreState | None = None,
    snapshot_values: bool = True,
) -> StoreProfiles:
    """Profiles of the store's active customers at D. `orders` must already be cut at D + 1 day.

    Without `models` each axis is fitted afresh (the original engine); with them (the models in force,
    stable segment identity) today's customers are scored against them and `model_version` is theirs.
    `features`: customer_features at D when the caller computed them already (to fit D's period model on D).
    `active_later`: the customers active at the run's next date (a backfill's range): their customer_profiles rows wait
    for it (StoreProfiles.deferred), so their JSON objects (dominant_segments, fuzzy_memberships, behavioral_features)
    are left empty; every other column and the snapshot values are whole.
    `state`: the store's StoreState (store_state.py) when `orders` hold a part of its customers: they are scored
    against it, nothing is fitted, and the rows are those the whole store's scoring gives them. Without it the
    state is fitted here (StoreProfiles.state).
    `snapshot_values=False`: no StoreProfiles.snapshot_values (the caller writes no snapshot rows: blocks alone).
    """
    as_of = as_of_day(as_of)
    version = model_version or model_version_for(settings.clustering_algorithm.value, as_of)
    if orders.empty:
        log.info("store %s: no orders up to %s: no profiles", store_id, as_of.date())
        return StoreProfiles(store_id, as_of, _empty_profiles(), {}, None, version, 0)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    progress.info("%s: features of %s orders", store_id, f"{len(orders):,}")
    if state is not None and models is not None:
        raise ValueError(f"store {store_id}: a store state and models in force given: the state holds its models")
    if features is None:
        features = customer_features(orders, as_of, settings, optional_columns, statistics=None if state is None else state.statistics)
    elif state is not None and features.statistics is not state.statistics:
        raise ValueError(f"store {store_id}: features given were not measured against the store state given")
    features, active, statistics = features
    seconds["features"] = time.perf_counter() - started
    large = len(orders) >= SMALL_ROWS  # a store whose freed pages are worth handing back between the stages below
    if large:
        release_memory()  # the features' per-order arrays: numpy's pages, which Arrow's text below cannot reuse
    if active.empty:
        log.info("store %s: no customer active in the %d days up to %s: no profiles", store_id, settings.active_days, as_of.date())
        return StoreProfiles(store_id, as_of, _empty_profiles(), {}, None, version, len(features))

    axes: list[AxisSpec] = available_axes(optional_columns)
    started = time.perf_counter()
    progress.info("%s: segments of %s customers", store_id, f"{len(active):,}")
    contain = settings.enable_outlier_detection and settings.share("enable_outlier_detection") >= 1.0
    if state is not None:
        missing = [axis.name for axis in axes if axis.name not in state.models]
        if missing:
            raise ValueError(f"store {store_id}: the store state has no segments for axes {missing}")
        segmentations = {axis.name: score_axis(active, axis, state.models[axis.name]) for axis in axes}
    elif models is None:
        segmentations = fit_segments(active, axes, settings, contain)
    else:
        missing = [axis.name for axis in axes if axis.name not in models]
        if missing:
            raise ValueError(f"store {store_id}: model {version} has no segments for axes {missing}")
        segmentations = {axis.name: score_axis(active, axis, models[axis.name]) for axis in axes}
    # The customers in each axis' scaled space, for the outlier flags and (containment) the BTYD fits.
    scaled = ({axis.name: segmentations[axis.name].model.transform(axis_matrix(active, axis)) for axis in axes}
              if settings.enable_outlier_detection else None)
    # Outlier containment (ENABLE_OUTLIER_DETECTION): the default method's outliers stay out of the BTYD fits
    # and their predicted_ltv is capped, so a bot or a $50k order cannot bend the models for everyone else.
    sizes = segment_sizes_of(segmentations) if state is None else state.segment_sizes  # micro segments: the store's
    outside = density_outliers(segmentations, scaled, sizes) if contain else np.zeros(len(active), dtype=bool)
    seconds["segments"] = time.perf_counter() - started
    started = time.perf_counter()
    progress.info("%s: churn risk and LTV", store_id)
    if state is None:
        churn = fit_store_churn(features.drop(index=active.index[outside]) if outside.any() else features, orders, as_of, settings, store_id)
    else:
        churn = state.churn
    n_customers = len(features)
    del features  # every customer's features are not needed past the churn fit
    if large:
        release_memory()  # their pages, before the JSON text's Arrow buffers (which cannot reuse glibc's freed heap)
    scores = score_churn(churn, active, settings)
    churn_score, predicted_ltv, expected_purchases = scores.churn_risk_score, scores.predicted_ltv, scores.expected_purchases
    if state is None:  # the cap is the store's: fitted wherever a part of it could have outliers
        ltv_cap = float(np.quantile(predicted_ltv[~outside], OUTLIER_LTV_CAP_QUANTILE)) if contain and (~outside).any() else None
        state = StoreState(statistics, {a: seg.model for a, seg in segmentations.items()}, sizes, _leveled(churn, scores), ltv_cap, models is None)
    ltv_cap = state.ltv_cap if outside.any() else None
    if ltv_cap is not None:
        predicted_ltv = np.where(outside, np.minimum(predicted_ltv, ltv_cap), predicted_ltv)
    seconds["churn_ltv"] = time.perf_counter() - started
    started = time.perf_counter()
    archetype_id, archetype_level, archetype_name = archetypes(segmentations, coarse=settings.enable_coarse_archetypes)

    n = len(active)
    # The JSON objects only for the rows written now (all but the deferred): the numbers themselves serve the snapshots.
    deferred = None if active_later is None else is_in(active.index, active_later)
    rows = np.flatnonzero(~deferred) if deferred is not None and deferred.any() else None

    def written(values: pd.Series) -> pd.Series:
        return values if rows is None else values.iloc[rows]

    customer_ids = pd.Series(active.index.to_numpy(), dtype="string")
    flags = None
    if settings.enable_outlier_detection:  # before the JSON text: the scaled features are not needed past the flags
        started_flags = time.perf_counter()
        flags = outlier_flags(segmentations, scaled, customer_ids.to_numpy(object), f"{as_of:%Y-%m-%d}", sizes)
        if ltv_cap is not None:
            capped = (flags["method"] == "density").to_numpy() & np.tile(outside, len(flags) // len(outside))
            flags.loc[capped, "explanation"] = flags.loc[capped, "explanation"] + f"; left out of the model fits, predicted_ltv capped at {ltv_cap:.2f}"
        share = settings.share("enable_outlier_detection")
        if share < 1.0:  # a rollout: scores use the whole store, rows are kept for its share of customers
            flags = flags[in_rollout(flags["customer_id"], "enable_outlier_detection", share)].reset_index(drop=True)
        seconds["outliers"] = time.perf_counter() - started_flags
    del scaled
    # One group of numbers' text at a time (memberships, then features: about 0.4 GB each at 1M customers), each made
    # into its JSON column and its snapshot values and dropped before the next: the profiles step's peak.
    snapshots = settings.enable_temporal_snapshots and snapshot_values
    # Without snapshot values (snapshots off, or a range's date whose snapshot rows are not written) the numbers' text
    # is needed for the written rows alone.
    text_rows = rows if not snapshots else None

    def number_text(values: np.ndarray) -> pd.Series:
        return json_number(values if text_rows is None else values[text_rows])

    def written_text(text: pd.Series) -> pd.Series:
        return text if text_rows is not None else written(text)

    membership_numbers = {a: [(name, number_text(s.memberships[:, j])) for j, name in enumerate(s.model.segment_names)]
                          for a, s in segmentations.items()}
    fuzzy_memberships = json_nested_object([(a, [(k, written_text(v)) for k, v in items]) for a, items in membership_numbers.items()])
    membership_values = numbers_text(membership_numbers) if snapshots else None
    del membership_numbers
    feature_numbers = {axis.name: [(f, number_text(active[f].to_numpy())) for f in axis.feature_names] for axis in axes}
    behavioral_features = json_nested_object([(a, [(k, written_text(v)) for k, v in items]) for a, items in feature_numbers.items()])
    feature_values = numbers_text(feature_numbers) if snapshots else None
    del feature_numbers
    json_text = {
        "dominant_segments": json_object([(a, written(json_string(np.asarray(s.model.segment_names, dtype=object)[s.dominant])))
                                          for a, s in segmentations.items()]),
        "fuzzy_memberships": fuzzy_memberships,
        "behavioral_features": behavioral_features,
    }
    del fuzzy_memberships, behavioral_features
    if rows is not None:
        json_text = {column: _at_rows(text, rows, n) for column, text in json_text.items()}
    values = (values_of(customer_ids, membership_values, feature_values, {a: s.dominant for a, s in segmentations.items()}, version)
              if snapshots else None)
    del membership_values, feature_values
    profiles = pd.DataFrame({
        "store_id": pd.Series([store_id] * n, dtype="string"),
        "customer_id": customer_ids,
        "archetype_id": archetype_id,
        "archetype_level": archetype_level.astype("int64"),
        "archetype_name": archetype_name,
        **json_text,
        "churn_risk_score": np.round(churn_score, DECIMALS) + 0.0,
        "churn_risk_level": scores.churn_risk_level,
        "predicted_ltv": np.round(predicted_ltv, 2) + 0.0,
        "expected_purchases": np.round(expected_purchases, DECIMALS) + 0.0,
        "total_orders": active["total_orders"].to_numpy("int64"),
        "lifetime_value": np.round(active["lifetime_value"].to_numpy(), 2) + 0.0,
        "days_since_first_order": active["days_since_first_order"].to_numpy().astype("int64"),
        "tenure_months": np.round(active["tenure_months"].to_numpy(), 2) + 0.0,
        "profile_date": pd.Series([as_of.date()] * n, dtype="object"),
        "model_version": pd.Series([version] * n, dtype="string"),
        "next_order_date": next_order_dates(active["last_order_ts"], scores.next_order_days),
        "history_basis": evidence_of(churn, active),
    })
    seconds["assemble"] = time.perf_counter() - started - seconds.get("outliers", 0.0)
    if large and settings.enable_temporal_snapshots:
        release_memory()  # the JSON's transient text, in Arrow's pool, before numpy's snapshot columns
    numbers = _snapshot_columns(profiles, segmentations, active, axes) if settings.enable_temporal_snapshots else None
    return StoreProfiles(store_id, as_of, profiles[PROFILE_COLUMNS], segmentations, churn, version, n_customers, seconds,
                         fresh_fit=state.fresh_fit, outliers=flags, snapshot_columns=numbers, snapshot_values=values, deferred=deferred,
                         state=state)


def _leveled(churn: ChurnModel, scores) -> ChurnModel:
    """The churn model with its recalibration's level at D (the store's), for parts of the store scored with it."""
    if churn.recalibration is None:
        return churn
    return replace(churn, recalibration=replace(churn.recalibration, shift=scores.recalibration_shift))


def _at_rows(values: pd.Series, rows: np.ndarray, n: int) -> pd.Series:
    """`values` (one per row in `rows`) placed at those rows of a column of n, missing elsewhere."""
    out = np.full(n, None, dtype=object)
    out[rows] = values.to_numpy(dtype=object)
    return pd.Series(out, dtype=values.dtype)


def fit_segments(active: pd.DataFrame, axes: list[AxisSpec], settings: PipelineSettings, contain: bool) -> dict[str, AxisSegmentation]:
    """Each axis fitted on the active customers (the original engine); with `contain`, fitted again without the
    customers the default outlier method flags against the first fit, and everyone scored with that fit."""
    segmentations = {axis.name: segment_axis(active, axis, settings) for axis in axes}
    if not contain:
        return segmentations
    outside = outliers_of(segmentations, active, axes)
    if not outside.any() or (~outside).sum() < 2:
        return segmentations
    log.info("%d outlier(s) left out of the segment fits", int(outside.sum()))
    inside = active.loc[~outside]
    return {axis.name: score_axis(active, axis, fit_axis_model(axis_matrix(inside, axis), axis, settings)) for axis in axes}


def outliers_of(segmentations: dict[str, AxisSegmentation], active: pd.DataFrame, axes: list[AxisSpec]) -> np.ndarray:
    scaled = {axis.name: segmentations[axis.name].model.transform(axis_matrix(active, axis)) for axis in axes}
    return density_outliers(segmentations, scaled)


def _snapshot_columns(profiles: pd.DataFrame, segmentations: dict[str, AxisSegmentation], active: pd.DataFrame, axes: list[AxisSpec]) -> SnapshotColumns:
    """The values of the profile rows' JSON as numbers, for the snapshot blocks (snapshot_blocks.py)."""
    index = pd.Index(profiles["customer_id"].astype(str).to_numpy(object), name="customer_id")
    base = pd.DataFrame({"churn_risk_score": profiles["churn_risk_score"].to_numpy("float64"),
                         "archetype_name": profiles["archetype_name"].astype(str).to_numpy(object)}, index=index)
    memberships = _float_frame([(f"{a}.{name}", lambda s=s, j=j: rounded_number(s.memberships[:, j]))
                                for a, s in segmentations.items() for j, name in enumerate(s.model.segment_names)], index)
    # The evidence of detected behavior changes (ENABLE_ADAPTIVE_WINDOWS), for the drift step: blocks only.
    evidence = [c for c in active.columns if c.startswith(CHANGE_PREFIX)]
    features = _float_frame([(f"{axis.name}.{f}", lambda f=f: rounded_number(active[f].to_numpy())) for axis in axes for f in axis.feature_names]
                            + [(c, lambda c=c: active[c].to_numpy("float64")) for c in evidence], index)
    return SnapshotColumns(base, memberships, features)


def _float_frame(columns: list[tuple[str, Callable[[], np.ndarray]]], index: pd.Index) -> pd.DataFrame:
    """A frame of float64 columns made one at a time into a single block: a frame built from a dict of the columns
    held them twice (the arrays and their consolidated copy), about 0.4 GB more at 1M customers."""
    values = np.empty((len(columns), len(index)), dtype="float64")
    for i, (_, column) in enumerate(columns):
        values[i] = column()
    return pd.DataFrame(values.T, index=index, columns=[name for name, _ in columns], copy=False)


def segment_model_rows(result: StoreProfiles) -> pd.DataFrame:
    """segment_models rows (one per axis) of a store's fresh fit; none when it scored models in force."""
    if not result.fresh_fit:
        return pd.DataFrame()
    return model_rows(result.store_id, result.model_version, result.as_of, [s.model for s in result.segmentations.values()])


def model_rows(store_id: str, version: str, fitted_on: pd.Timestamp, models: list[AxisModel]) -> pd.DataFrame:
    return pd.DataFrame([{"store_id": store_id, "model_version": version, **m.to_record(), "fitted_on": pd.Timestamp(fitted_on).date()}
                         for m in models])
