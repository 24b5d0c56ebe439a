"""Churn risk, expected purchases, the next order's date and predicted LTV of a store's customers, one model.

The purchase model is the renewal model of each customer's own gaps with dropout (renewal.py); the value of a
purchase is Gamma-Gamma (btyd.py) over the customer's repeat purchase occasions. The three numbers never
contradict each other: expected purchases are P(any purchase) times (1 + the renewals after the first), so
E[N] >= P(N >= 1) = 1 - churn_risk_score by construction.

How much each statement stands on (`evidence_of`): the customer's purchase days and days observed, the store's
customers and age, and how much of the dropout rate is the store's own fit rather than the prior.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from quimbi_pipeline.model import btyd, renewal
from quimbi_pipeline.model.churn_recalibration import (
    Recalibration,
    fit_recalibration,
    recalibrate,
)
from quimbi_pipeline.settings import ChurnBands, PipelineSettings

log = logging.getLogger(__name__)

# Below this store age (and QUIMBI_BTYD_MIN_CUSTOMERS customers) a store's churn is not stated: churn_risk_level is
# "unknown" (the scores are still the prior's): not one monthly buyer's gap could have been seen.
MIN_STORE_DAYS_FOR_LEVEL = 28
# A customer with fewer purchase days, or fewer days observed, than these has "little history".
LITTLE_HISTORY_PURCHASE_DAYS = 3
LITTLE_HISTORY_DAYS = 30
# The dropout rate is "the store's fit" below this prior weight, "the prior" above PRIOR_ABOVE, and shrunk between.
FIT_BELOW, PRIOR_ABOVE = 0.2, 0.5
UNKNOWN_LEVEL = "unknown"


def churn_risk_level(score: np.ndarray, bands: ChurnBands) -> np.ndarray:
    return np.select(
        [score >= bands.critical_from, score >= bands.high_from, score >= bands.medium_from],
        ["critical", "high", "medium"],
        default="low",
    )


@dataclass
class ChurnModel:
    purchases: renewal.RenewalParams
    gg: btyd.GammaGammaParams | None
    store_customers: int
    store_age_days: float
    min_customers: int  # QUIMBI_BTYD_MIN_CUSTOMERS
    notes: list[str] = field(default_factory=list)
    recalibration: Recalibration | None = None  # on the store's own last horizon (churn_recalibration.py), where it has one

    @property
    def basis(self) -> str:
        """Where the store's dropout rate comes from: 'store fit', 'store fit shrunk to the prior' or 'prior'."""
        w = self.purchases.prior_weight
        return "store fit" if w < FIT_BELOW else "prior" if w > PRIOR_ABOVE else "store fit shrunk to the prior"

    @property
    def states_level(self) -> bool:
        return self.store_customers >= self.min_customers and self.store_age_days >= MIN_STORE_DAYS_FOR_LEVEL


def fit_churn_model(features: pd.DataFrame, settings: PipelineSettings, store_id: str = "") -> ChurnModel:
    """The renewal model on every customer with a purchase (the silent ones inform the dropout rate), Gamma-Gamma on
    repeat buyers."""
    purchases = renewal.fit_renewal(features["gap_count"], features["gap_log_mean"], features["gap_log_ss"],
                                    features["days_since_last_order"], random_state=settings.random_state)
    age = float(features["days_since_first_order"].max()) if len(features) else 0.0
    model = ChurnModel(purchases, None, len(features), age, settings.btyd_min_customers)
    if not purchases.converged:
        model.notes.append(f"renewal model fit stopped before converging (a={purchases.a:.4g}, b={purchases.b:.4g}, "
                           f"mu0={purchases.mu0:.4g}): its last point used")
    if not model.states_level:
        model.notes.append(f"{len(features)} customers over {age:.0f} days: too few or too young for a churn statement "
                           f"(needs {model.min_customers} customers and {MIN_STORE_DAYS_FOR_LEVEL} days), churn_risk_level 'unknown'")
    try:
        gg = btyd.fit_gamma_gamma(features["btyd_x"].to_numpy(), features["btyd_monetary"].to_numpy(),
                                  sample_size=settings.btyd_fit_sample_size, random_state=settings.random_state)
        if gg.q <= 1:
            model.notes.append(f"Gamma-Gamma q={gg.q:.3f} <= 1 has no finite mean: customers' own spend per purchase day used for LTV")
        else:
            model.gg = gg
    except ValueError as exc:
        model.notes.append(f"Gamma-Gamma not fitted ({exc}): customers' own spend per purchase day used for LTV")
    for note in model.notes:
        log.warning("store %s churn model: %s", store_id, note)
    return model


def fit_store_churn(features: pd.DataFrame, orders: pd.DataFrame, as_of: pd.Timestamp, settings: PipelineSettings,
                    store_id: str = "") -> ChurnModel:
    """The store's churn model at D: the renewal model on `features`, recalibrated on the store's own last horizon where
    it has enough lapses and buyers there. `orders`: the store's orders cut at D + 1 day."""
    model = fit_churn_model(features, settings, store_id)
    model.recalibration = fit_recalibration(features, orders, as_of, settings.churn_horizon_days, occasion_days=settings.btyd_occasion_days,
                                            window_days=settings.feature_window_days, random_state=settings.random_state, store_id=store_id)
    return model


@dataclass(frozen=True)
class ChurnScores:
    churn_risk_score: np.ndarray  # P(no purchase in the next churn_horizon_days)
    churn_risk_level: np.ndarray
    expected_purchases: np.ndarray  # purchase days over the churn horizon
    predicted_ltv: np.ndarray  # expected spend over the LTV horizon
    next_order_days: np.ndarray  # days after the last purchase day of the expected next one, if the customer stays
    recalibration_shift: float | None = None  # the recalibration's level used (Recalibration.shift), if recalibrated


def contradictory(no_purchase: np.ndarray, expected_h: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Rows whose scores cannot all be true: not finite, a probability outside [0, 1], or fewer expected purchases
    than the chance of any (E[N] >= P(N >= 1) = 1 - P(no purchase) for a count N), up to rounding."""
    finite = np.isfinite(no_purchase) & np.isfinite(expected_h) & np.isfinite(expected) & (expected_h >= 0) & (expected >= 0)
    with np.errstate(invalid="ignore"):
        return ~finite | (no_purchase < 0) | (no_purchase > 1) | (expected_h < (1.0 - no_purchase) * (1.0 - 1e-6) - 1e-9)


def score_churn(model: ChurnModel, features: pd.DataFrame, settings: PipelineSettings) -> ChurnScores:
    with np.errstate(over="ignore", invalid="ignore"):
        state = renewal.renewal_state(model.purchases, features["gap_count"], features["gap_log_mean"], features["gap_log_ss"],
                                      features["days_since_last_order"])
        no_purchase, expected_h = state.over(settings.churn_horizon_days)
        expected = state.over(settings.ltv_horizon_days)[1]
    if model.recalibration is not None:
        # The recalibrated odds of any purchase scale both horizons' expected purchases alike (as a change in the chance
        # of being alive would), so E[N] >= P(N >= 1) still holds; a certain lapse (nothing expected) stays one.
        buys = 1.0 - no_purchase
        recalibrated, shift = recalibrate(model.recalibration, features, no_purchase)
        recalibrated = np.where(buys > 0, recalibrated, no_purchase)
        ratio = np.where(buys > 0, (1.0 - recalibrated) / np.where(buys > 0, buys, 1.0), 1.0)
        no_purchase, expected_h, expected = recalibrated, expected_h * ratio, expected * ratio
    bad = contradictory(no_purchase, expected_h, expected)
    if bad.any():  # only non-finite inputs get here: scored as lapsing, nothing expected (consistent), and logged
        log.warning("churn scores not finite for %d customer(s): scored as lapsing", int(bad.sum()))
        no_purchase, expected_h, expected = np.where(bad, 1.0, no_purchase), np.where(bad, 0.0, expected_h), np.where(bad, 0.0, expected)
    if model.gg is not None:
        per_occasion = btyd.gamma_gamma_expected_spend(model.gg, features["btyd_x"].to_numpy(), features["btyd_monetary"].to_numpy())
        spend = per_occasion / features["btyd_days_per_occasion"].to_numpy()  # the model counts purchase days
    else:
        spend = features["lifetime_value"].to_numpy() / np.maximum(features["gap_count"].to_numpy() + 1, 1)
    level = churn_risk_level(no_purchase, settings.churn_bands) if model.states_level else np.full(len(features), UNKNOWN_LEVEL)
    return ChurnScores(no_purchase, level, expected_h, expected * np.nan_to_num(spend, nan=0.0), state.next_order_days,
                       None if model.recalibration is None else shift)


def evidence_of(model: ChurnModel, features: pd.DataFrame) -> pd.Series:
    """Per customer, as compact JSON text: what their churn and segments stand on, and "little_history" where the
    customer or the store has too little for confident statements. Built in Arrow (one contiguous string buffer, no
    Python string per customer: 0.1 GiB at 875k customers)."""
    days = features["gap_count"].to_numpy().astype("int64") + 1
    observed = features["days_since_first_order"].to_numpy().astype("int64")
    little = (days < LITTLE_HISTORY_PURCHASE_DAYS) | (observed < LITTLE_HISTORY_DAYS) | (model.basis == "prior") | (not model.states_level)
    store = (f'"store_customers":{model.store_customers},"store_days":{int(model.store_age_days)},"churn_model":"{model.basis}",'
             f'"churn_recalibrated":{"true" if model.recalibration is not None else "false"}')
    text = pc.binary_join_element_wise('{"purchase_days":', pc.cast(pa.array(days), pa.string()), ',"days_observed":',
                                       pc.cast(pa.array(observed), pa.string()), "," + store + ',"little_history":',
                                       pc.if_else(pa.array(little), "true", "false"), "}", "")
    return pd.Series(pd.arrays.ArrowStringArray(text))
