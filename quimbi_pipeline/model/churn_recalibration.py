"""The renewal model's churn recalibrated on the store's own last horizon, where the store has seen enough lapses.

A store older than the churn horizon H has an answer key: who, of the customers it had at D - H, bought again by D.
On such a store the renewal model's P(no purchase in H) is refitted to that key with the analyst's RFM features
beside it: a logistic regression of "lapsed by D" on the model's log-odds at D - H (an offset: coefficients of 0 keep
the model as it is) and the standardized log recency, log purchase days and log net spend, with a N(0, 1) prior on
each coefficient and a free intercept. The fitted coefficients rank the customers at D; the level stays the renewal
model's at D (`recalibrate`).

Only where the earlier window holds MIN_CLASS_CUSTOMERS lapsers and as many who bought: a young store, or one whose
customers did not yet lapse, keeps the renewal model and its prior (a handful of lapses would set the level wrong).
Measured on CDNOW's mature holdouts (docs/signals.md): at least the logistic regression on RFM alone at every one,
where the renewal model alone was below it at 5 of 7; young and early stores are not recalibrated.

The fit runs on a fixed-seed sample of the customers of D - H (FIT_SAMPLE_CUSTOMERS): their features at D - H and a
renewal fit of their own, about a second at any store size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, logit

from quimbi_pipeline.model import renewal
from quimbi_pipeline.model.features import compute_customer_features
from quimbi_pipeline.sources.keys import is_in

log = logging.getLogger(__name__)

MIN_CLASS_CUSTOMERS = 30  # lapsers and buyers each, in the earlier window
FIT_SAMPLE_CUSTOMERS = 20_000
PRIOR_SD = 1.0  # of each standardized coefficient
P_FLOOR = 1e-6  # log-odds of probabilities this close to 0 or 1 are clipped there


@dataclass(frozen=True)
class Recalibration:
    intercept: float
    coefficients: np.ndarray  # on [model log-odds, log recency, log purchase days, log net spend], standardized
    centre: np.ndarray
    scale: np.ndarray
    customers: int  # in the fit
    lapsers: int
    # The level at D (added to every customer's log-odds; NaN: none): set from the store's scoring (ChurnScores), so
    # that a part of the store scored later gets the level of the whole store, not its own. None: not scored yet.
    shift: float | None = None


def log_rfm(features: pd.DataFrame) -> np.ndarray:
    """The analyst's RFM columns per customer: log recency (days), log repeat purchase days, log net spend."""
    return np.column_stack([np.log1p(features["days_since_last_order"].to_numpy("float64")),
                            np.log1p(features["gap_count"].to_numpy("float64")),
                            np.log1p(features["lifetime_value"].clip(lower=0).to_numpy("float64"))])


def _inputs(features: pd.DataFrame, no_purchase: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the model's log-odds of no purchase, those log-odds beside the RFM columns) per customer."""
    offset = logit(np.clip(no_purchase, P_FLOOR, 1.0 - P_FLOOR))
    return offset, np.column_stack([offset, log_rfm(features)])


def renewal_no_purchase(features: pd.DataFrame, horizon_days: int, random_state: int) -> np.ndarray:
    """The renewal model's P(no purchase in the horizon), fitted on these customers."""
    args = (features["gap_count"], features["gap_log_mean"], features["gap_log_ss"], features["days_since_last_order"])
    with np.errstate(over="ignore", invalid="ignore"):
        state = renewal.renewal_state(renewal.fit_renewal(*args, random_state=random_state), *args)
        no_purchase = state.over(horizon_days)[0]
    return np.where(np.isfinite(no_purchase), no_purchase, 1.0)


def fit_recalibration(features: pd.DataFrame, orders: pd.DataFrame, as_of: pd.Timestamp, horizon_days: int, *, occasion_days: int,
                      window_days: int, random_state: int, store_id: str = "") -> Recalibration | None:
    """The recalibration of D's churn from the store's own window (D - H, D]; None where it has too few lapses or buyers.
    `features`: the customers' features at D (who had bought by D - H, and who bought since, are read off their first
    and last purchase); `orders`: the store's orders cut at D + 1 day, for the sample's features at D - H."""
    earlier = as_of - pd.Timedelta(days=horizon_days)
    cut = earlier + pd.Timedelta(days=1)
    then_customers = np.flatnonzero((features["first_order_ts"] < cut).to_numpy())
    if then_customers.size < 2 * MIN_CLASS_CUSTOMERS:
        return None
    if then_customers.size > FIT_SAMPLE_CUSTOMERS:
        then_customers = np.sort(np.random.default_rng(random_state).choice(then_customers, FIT_SAMPLE_CUSTOMERS, replace=False))
    sample = features.iloc[then_customers]
    lapsed = (sample["last_order_ts"] < cut).to_numpy().astype("float64")
    n_lapsed = int(lapsed.sum())
    if min(n_lapsed, lapsed.size - n_lapsed) < MIN_CLASS_CUSTOMERS:
        log.info("store %s: churn not recalibrated: %d lapsers and %d buyers in the %d days to %s (needs %d of each)", store_id,
                 n_lapsed, lapsed.size - n_lapsed, horizon_days, as_of.date(), MIN_CLASS_CUSTOMERS)
        return None
    before = orders["order_ts"].to_numpy("datetime64[ns]") < np.datetime64(cut)
    rows = before & is_in(orders["customer_id"], sample.index)  # Arrow's is_in: pandas' isin on Arrow strings is a Python loop
    then = compute_customer_features(orders[rows], earlier, occasion_days=occasion_days, window_days=window_days)
    if not then.index.equals(sample.index):  # the same customers, in the same (sorted) order
        raise ValueError(f"store {store_id}: the recalibration's customers at {earlier.date()} are not those of the features at {as_of.date()}")
    offset, x = _inputs(then, renewal_no_purchase(then, horizon_days, random_state))
    centre, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    z = (x - centre) / scale

    def objective(beta: np.ndarray) -> tuple[float, np.ndarray]:
        eta = offset + beta[0] + z @ beta[1:]
        p = expit(eta)
        value = float((np.logaddexp(0.0, eta) - lapsed * eta).sum() + 0.5 * (beta[1:] ** 2).sum() / PRIOR_SD**2)
        grad = np.concatenate([[(p - lapsed).sum()], z.T @ (p - lapsed) + beta[1:] / PRIOR_SD**2])
        return value, grad

    beta = minimize(objective, np.zeros(1 + z.shape[1]), jac=True, method="L-BFGS-B").x
    return Recalibration(float(beta[0]), beta[1:], centre, scale, int(lapsed.size), n_lapsed)


def recalibrate(recalibration: Recalibration, features: pd.DataFrame, no_purchase: np.ndarray) -> tuple[np.ndarray, float]:
    """P(no purchase in the horizon) at D, recalibrated: ranked by the fitted coefficients, at the renewal model's own
    level (the customers' mean churn risk is the model's at D). The earlier window's lapse rate is that of the store
    H days younger; the renewal model's dropout is fitted on D's customers (in a cohort such as CDNOW lapses rise with
    age, and the earlier window's level put the 180-day risk 4-7 points under the lapse share). Returns the risks and
    the level used (recalibration.shift when set: the store's, for a part of its customers)."""
    offset, x = _inputs(features, no_purchase)
    eta = offset + ((x - recalibration.centre) / recalibration.scale) @ recalibration.coefficients
    shift = recalibration_shift(eta, no_purchase) if recalibration.shift is None else recalibration.shift
    return (no_purchase if np.isnan(shift) else expit(eta + shift)), shift


def recalibration_shift(eta: np.ndarray, no_purchase: np.ndarray) -> float:
    """The level c at which the mean of expit(eta + c) is the renewal model's mean churn risk (NaN: no level, the
    model's risks all 0 or all 1, left as they are)."""
    target = float(np.mean(no_purchase))
    if not 0.0 < target < 1.0:
        return float("nan")
    low, high = -60.0, 60.0  # the mean of expit(eta + c) rises with c: bisect for the model's mean
    for _ in range(80):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if np.mean(expit(eta + mid)) < target else (low, mid)
    return 0.5 * (low + high)
