"""Stable segment identity: models kept in force over a refit period, renamed after their predecessor.

With ENABLE_STABLE_SEGMENTS a store's segment models are fitted on the anchor date of each refit
period (every `segment_refit_days` days from a fixed epoch, a Monday), so every date of the period —
in a daily run, a re-run or a backfill — is scored against the same model. A refit names its
segments after the previous period's model (Hungarian matching of centroids) and records MONIC
transitions. Pure: the caller reads and writes segment_models.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from quimbi_pipeline.model.features import active_orders, available_axes
from quimbi_pipeline.model.profiles import customer_features, fit_segments
from quimbi_pipeline.model.segmentation import (
    AxisModel,
    axis_matrix,
    fit_sample_rows,
    match_segments,
    monic_transitions,
)
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.sources.keys import is_in
from quimbi_pipeline.sources.orders import as_of_day, seen_at

log = logging.getLogger(__name__)

REFIT_EPOCH = pd.Timestamp("2000-01-03")  # a Monday: 7- and 28-day periods start on Mondays
TRANSITION_COLUMNS = ["store_id", "model_version", "axis", "seq", "previous_version", "transition", "old_segments", "new_segments", "overlap"]


def refit_anchor(as_of, refit_days: int) -> pd.Timestamp:
    """The first day of the refit period holding D."""
    day = as_of_day(as_of)
    periods = (day - REFIT_EPOCH).days // refit_days
    return REFIT_EPOCH + pd.Timedelta(days=periods * refit_days)


def fit_sample(active: pd.DataFrame, settings: PipelineSettings) -> pd.DataFrame:
    """The active customers a period's models are fitted on: all, or the fixed-seed sample of cluster_fit_sample_size
    the other sampled fits take (fit_sample_rows), in the customers' order."""
    rows = fit_sample_rows(len(active), settings)
    return active if rows is None else active.iloc[np.sort(rows)]


def fit_customers(orders: pd.DataFrame, fit_day: pd.Timestamp, settings: PipelineSettings) -> pd.Index | None:
    """The customers a period's models are fitted on when more than cluster_fit_sample_size are active at fit_day: the
    fixed-seed sample fit_sample draws from the active customers in id order, read off the orders (active_orders, the
    same rule as active_mask). None: every active customer."""
    active = active_orders(orders, fit_day, settings.active_days)
    customers = pa.array(orders["customer_id"].array).filter(pa.array(active))
    ids = pd.Index(pc.unique(customers).to_pandas()).sort_values()
    rows = fit_sample_rows(len(ids), settings)
    return None if rows is None else ids[np.sort(rows)]


def fit_period_models(
    orders: pd.DataFrame, store_id: str, fit_day: pd.Timestamp, version: str, settings: PipelineSettings, optional_columns,
    previous: dict[str, AxisModel], previous_version: str | None, active: pd.DataFrame | None = None,
) -> tuple[dict[str, AxisModel], pd.DataFrame]:
    """Models of a refit period fitted on the customers active at `fit_day` (orders are cut there).

    Returns the models (rounded as stored, named after `previous` where it has the axis) and the MONIC
    transitions from the previous models (TRANSITION_COLUMNS). No active customer at fit_day: ({}, empty).
    `active`: the customers active at fit_day when the caller has them already (D's own, when D is the anchor); used
    only when at most cluster_fit_sample_size are active (above, the sample's own features are computed, see below).

    Above `cluster_fit_sample_size` active customers the models are fitted on a fixed-seed sample of that many
    (every customer is still scored with them): at 81,585 active customers a 20,000 sample gave every customer
    the same segment on every axis as the full fit, in 12.8 s instead of 21.2 s; at 1M the full KMeans fits
    were most of the refit's 184 s (docs/performance.md).
    """
    # Above the sample size only the sampled customers' features are computed (their orders alone, so the detectors'
    # store priors are the sample's): at 1M customers 3 s instead of the whole store's 45, on every date of the
    # period alike, the anchor's own included, so a backfill from any date fits what the daily run fitted.
    chosen = fit_customers(orders, fit_day, settings)
    if chosen is not None:
        rows = seen_at(orders, fit_day) & is_in(orders["customer_id"], chosen)
        active = customer_features(orders, fit_day, settings, optional_columns, rows=rows).active
    elif active is None:
        active = customer_features(orders, fit_day, settings, optional_columns, rows=seen_at(orders, fit_day)).active  # cut, not copied
    if active.empty:
        return {}, pd.DataFrame(columns=TRANSITION_COLUMNS)
    models: dict[str, AxisModel] = {}
    rows = []
    axes = available_axes(optional_columns)
    contain = settings.enable_outlier_detection and settings.share("enable_outlier_detection") >= 1.0
    fits = fit_segments(fit_sample(active, settings), axes, settings, contain)  # with containment: without the outliers
    for axis in axes:
        raw = axis_matrix(active, axis)
        fitted = fits[axis.name].model.rounded()
        if axis.name in previous:
            # Honest segments are named by fixed bands: no renaming after the previous model, only its transitions.
            fitted, transitions = ((fitted, monic_transitions(previous[axis.name], fitted, raw)) if settings.enable_honest_segments
                                   else match_segments(previous[axis.name], fitted, raw))
            for seq, t in enumerate(transitions):
                rows.append({"store_id": store_id, "model_version": version, "axis": axis.name, "seq": seq,
                             "previous_version": previous_version, "transition": t.transition, "old_segments": list(t.old_segments),
                             "new_segments": list(t.new_segments), "overlap": t.overlap})
            kinds = pd.Series([t.transition for t in transitions]).value_counts().to_dict()
            log.info("store %s axis %s: refit %s -> %s: %s", store_id, axis.name, previous_version, version, kinds)
        models[axis.name] = fitted
    return models, pd.DataFrame(rows, columns=TRANSITION_COLUMNS)
