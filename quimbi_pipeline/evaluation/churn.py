"""churn_risk_score and next_order_date judged on a holdout against the baselines a skeptical analyst would try first.

Design (Fader, Hardie & Lee's CDNOW holdout): profiles as of the calibration end D, then the orders
after D. A customer "lapsed" when they made no purchase in the next `horizon_days` after D. Scores
are compared by ROC AUC for lapsing, all computed here on the same customers:

- churn_risk_score (P(no purchase in the next H days), the pipeline's own score_churn);
- the previous model: the modified BG/NBD's P(no purchase) (before the renewal model);
- recency: days since the last purchase (more = riskier);
- silence over the customer's own usual gap (their geometric mean gap; one-time buyers: the store's median one);
- RFM quintiles: R (recent = 5), F (purchases), M (net spend) quintiles, 1..5 each with ties sharing
  a quintile, summed (lower = riskier);
- a logistic regression on log recency, log purchase days and log spend, trained on the store's own earlier
  window (features at D - H, label: lapsed by D), where the store is older than H;
- the model's expected purchases over H (fewer = riskier).

Calibration: the mean churn risk of those who lapsed and of those who kept buying, beside the lapse share.
The next order: the median absolute error in days of next_order_date for the customers who bought in the
horizon, beside the naive "last order + the customer's median gap" (one-time buyers: the store's median gap).
Also: observed lapse rate per churn_risk_level band (the bands must be monotone), where one-time buyers
land, and the aggregate forecast (the model's expected purchase days in the holdout against the actual).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from quimbi_pipeline.model import btyd
from quimbi_pipeline.model.churn import churn_risk_level, fit_store_churn, score_churn
from quimbi_pipeline.model.churn_recalibration import log_rfm
from quimbi_pipeline.model.features import compute_customer_features
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.sources.orders import as_of_day, orders_as_of

LEVELS = ("low", "medium", "high", "critical")


@dataclass
class ChurnEvaluation:
    horizon_days: int
    customers: int
    lapse_rate: float
    auc: dict[str, float]  # score name -> AUC for "no purchase in the horizon" (NaN: baseline not available)
    mean_risk_lapsed: float
    mean_risk_kept: float
    mean_risk: float
    next_order_mae: dict[str, float]  # "model" / "naive" / "naive_from_tomorrow" -> median absolute error, days
    bands: pd.DataFrame  # per level: customers, one_time_buyers, lapse_rate
    one_time_score_range: tuple[float, float]
    repeat_buyers_above_median_one_time: int  # repeat buyers riskier than the median one-time buyer
    forecast: float  # expected purchase days in the horizon, summed
    actual: int  # purchase days in the horizon, summed
    scored: pd.DataFrame  # per customer: churn_risk_score, lapsed (for slicing by the caller's truth)

    @property
    def forecast_bias(self) -> float:
        return self.forecast / self.actual - 1.0 if self.actual else float("nan")


def _quintile(values: np.ndarray) -> np.ndarray:
    """1..5 by average rank, so tied customers share a quintile."""
    pct = pd.Series(values).rank(method="average", pct=True).to_numpy()
    return np.ceil(pct * 5).astype(int)


def _auc(lapsed: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(lapsed, score)) if 0 < lapsed.sum() < lapsed.size else float("nan")


def _purchase_days_after(orders: pd.DataFrame, end: pd.Timestamp, days: int) -> pd.DataFrame:
    after = orders[(orders["order_ts"] >= end + pd.Timedelta(days=1)) & (orders["order_ts"] < end + pd.Timedelta(days=1 + days))
                   & (orders["order_total"] >= 0)]
    return after.assign(day=after["order_ts"].dt.normalize()).groupby("customer_id")["day"].agg(["nunique", "min"])


def rfm_logistic_scores(orders: pd.DataFrame, end: pd.Timestamp, horizon_days: int, features: pd.DataFrame) -> np.ndarray | None:
    """P(lapse) from a logistic regression on log RFM features, trained at D - H on who lapsed by D; None when the
    store is not older than H or the earlier window has one class only."""
    earlier = end - pd.Timedelta(days=horizon_days)
    seen = orders_as_of(orders, earlier)
    if seen.empty:
        return None
    train = compute_customer_features(seen, earlier)
    bought = _purchase_days_after(orders, earlier, horizon_days)["nunique"].reindex(train.index, fill_value=0).to_numpy()
    label = (bought == 0).astype(int)
    if label.min() == label.max():
        return None
    model = LogisticRegression(max_iter=1000).fit(log_rfm(train), label)
    return model.predict_proba(log_rfm(features))[:, 1]


def previous_model_scores(features: pd.DataFrame, horizon_days: int) -> np.ndarray:
    """P(no purchase in H) under the modified BG/NBD over purchase weeks, this project's churn model until the
    renewal model (kept beside it for the before/after figures)."""
    x, t_x, T = features["btyd_x"].to_numpy(), features["btyd_t_x"].to_numpy(), features["btyd_T"].to_numpy()
    params = btyd.fit_mbgnbd(x, t_x, T)
    with np.errstate(over="ignore", invalid="ignore"):
        return btyd.mbgnbd_p_no_purchase(params, horizon_days / 7.0, x, t_x, T)


def naive_next_order(orders: pd.DataFrame, features: pd.DataFrame) -> pd.Series:
    """Last purchase day + the customer's median gap between purchase days (one-time buyers: the store's median)."""
    days = orders.loc[orders["order_total"] >= 0, ["customer_id", "order_ts"]].assign(day=lambda f: f["order_ts"].dt.normalize())
    days = days.drop_duplicates(["customer_id", "day"]).sort_values(["customer_id", "day"])
    gap = days.groupby("customer_id")["day"].diff().dt.days
    median = gap.groupby(days["customer_id"]).median().reindex(features.index)
    store_median = float(np.nanmedian(median)) if median.notna().any() else 30.0
    return features["last_order_ts"].dt.normalize() + pd.to_timedelta(median.fillna(store_median), unit="D")


def evaluate_churn(orders: pd.DataFrame, calibration_end, horizon_days: int, settings: PipelineSettings | None = None) -> ChurnEvaluation:
    """`orders`: validated orders of one store (all dates); the model sees only those up to calibration_end."""
    end = as_of_day(calibration_end)
    settings = (settings or PipelineSettings()).model_copy(update={"churn_horizon_days": horizon_days})
    seen = orders_as_of(orders, end)
    features = compute_customer_features(seen, end, occasion_days=settings.btyd_occasion_days)
    model = fit_store_churn(features, seen, end, settings)
    scores = score_churn(model, features, settings)
    score, expected = scores.churn_risk_score, scores.expected_purchases
    after = _purchase_days_after(orders, end, horizon_days).reindex(features.index)
    bought = after["nunique"].fillna(0).to_numpy()
    lapsed = (bought == 0).astype(int)
    recency = features["days_since_last_order"].to_numpy()
    usual = np.exp(features["gap_log_mean"].to_numpy())
    usual = np.where(np.isfinite(usual), usual, np.nanmedian(usual) if np.isfinite(usual).any() else 30.0)
    rfm = _quintile(-recency) + _quintile(features["total_orders"].to_numpy()) + _quintile(features["lifetime_value"].to_numpy())
    logistic = rfm_logistic_scores(orders, end, horizon_days, features)
    auc = {
        "churn_risk_score": _auc(lapsed, score),
        "previous_model": _auc(lapsed, previous_model_scores(features, horizon_days)),
        "recency": _auc(lapsed, recency),
        "silence_over_usual_gap": _auc(lapsed, recency / usual),
        "rfm_quintiles": _auc(lapsed, -rfm),
        "rfm_logistic": _auc(lapsed, logistic) if logistic is not None else float("nan"),
        "expected_purchases": _auc(lapsed, -expected),
    }
    came_back = ~lapsed.astype(bool)
    actual_next = after["min"].to_numpy("datetime64[ns]")[came_back]
    predicted = (features["last_order_ts"].dt.normalize() + pd.to_timedelta(np.round(scores.next_order_days).clip(max=3650), unit="D")
                 ).to_numpy("datetime64[ns]")
    naive = naive_next_order(seen, features).to_numpy("datetime64[ns]")
    tomorrow = np.datetime64(end + pd.Timedelta(days=1), "ns")

    def mae(pred: np.ndarray) -> float:
        err = np.abs((pred[came_back] - actual_next) / np.timedelta64(1, "D"))
        return float(np.nanmedian(err)) if err.size else float("nan")

    one_time = features["btyd_x"].to_numpy() == 0
    level = churn_risk_level(score, settings.churn_bands)
    bands = (pd.DataFrame({"level": level, "lapsed": lapsed, "one_time": one_time}).groupby("level")
             .agg(customers=("lapsed", "size"), one_time_buyers=("one_time", "sum"), lapse_rate=("lapsed", "mean"))
             .reindex([lv for lv in LEVELS if lv in set(level)]))
    median_one_time = float(np.median(score[one_time])) if one_time.any() else float("nan")
    return ChurnEvaluation(
        horizon_days=horizon_days, customers=len(features), lapse_rate=float(lapsed.mean()), auc=auc,
        mean_risk_lapsed=float(score[lapsed == 1].mean()) if lapsed.any() else float("nan"),
        mean_risk_kept=float(score[lapsed == 0].mean()) if (lapsed == 0).any() else float("nan"), mean_risk=float(score.mean()),
        next_order_mae={"model": mae(predicted), "naive": mae(naive), "naive_from_tomorrow": mae(np.maximum(naive, tomorrow))},
        bands=bands, one_time_score_range=(float(score[one_time].min()), float(score[one_time].max())) if one_time.any() else (np.nan, np.nan),
        repeat_buyers_above_median_one_time=int((score[~one_time] > median_one_time).sum()),
        forecast=float(expected.sum()), actual=int(bought.sum()),
        scored=pd.DataFrame({"churn_risk_score": score, "lapsed": lapsed.astype(bool)}, index=features.index),
    )


def sample_customers(orders: pd.DataFrame, calibration_end, customers: int, seed: int) -> pd.DataFrame:
    """The orders (all dates) of a fixed-seed sample of the customers who bought by calibration_end: a small store."""
    seen = pd.Series(orders_as_of(orders, as_of_day(calibration_end))["customer_id"].unique())
    chosen = seen.sample(min(customers, seen.size), random_state=seed)
    return orders[orders["customer_id"].isin(chosen)]
