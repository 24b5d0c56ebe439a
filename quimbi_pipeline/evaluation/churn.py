"""churn_risk_score judged on a holdout against the baselines a skeptical analyst would try first.

Design (Fader, Hardie & Lee's CDNOW holdout): profiles as of the calibration end D, then the orders
after D. A customer "lapsed" when they made no purchase in the next `horizon_days` after D. Scores
are compared by ROC AUC for lapsing, all computed here on the same customers:

- churn_risk_score (P(no purchase in the next H days), the pipeline's own score_churn);
- recency: days since the last purchase (more = riskier);
- RFM quintiles: R (recent = 5), F (purchases), M (net spend) quintiles, 1..5 each with ties sharing
  a quintile, summed (lower = riskier);
- the model's expected purchases over H (fewer = riskier).

Also: observed lapse rate per churn_risk_level band (the bands must be monotone), where one-time buyers
land, and the aggregate forecast (the model's expected purchase days in the holdout against the actual).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from quimbi_pipeline.model.features import compute_customer_features
from quimbi_pipeline.model.profiles import (
    churn_risk_level,
    fit_churn_model,
    score_churn,
)
from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.sources.orders import as_of_day, orders_as_of

LEVELS = ("low", "medium", "high", "critical")


@dataclass
class ChurnEvaluation:
    horizon_days: int
    customers: int
    lapse_rate: float
    auc: dict[str, float]  # score name -> AUC for "no purchase in the horizon"
    bands: pd.DataFrame  # per level: customers, one_time_buyers, lapse_rate
    one_time_score_range: tuple[float, float]
    repeat_buyers_above_median_one_time: int  # repeat buyers riskier than the median one-time buyer
    forecast: float  # expected purchase days in the horizon, summed
    actual: int  # purchase days in the horizon, summed

    @property
    def forecast_bias(self) -> float:
        return self.forecast / self.actual - 1.0 if self.actual else float("nan")


def _quintile(values: np.ndarray) -> np.ndarray:
    """1..5 by average rank, so tied customers share a quintile."""
    pct = pd.Series(values).rank(method="average", pct=True).to_numpy()
    return np.ceil(pct * 5).astype(int)


def evaluate_churn(orders: pd.DataFrame, calibration_end, horizon_days: int, settings: PipelineSettings | None = None) -> ChurnEvaluation:
    """`orders`: validated orders of one store (all dates); the model sees only those up to calibration_end."""
    end = as_of_day(calibration_end)
    settings = (settings or PipelineSettings()).model_copy(update={"churn_horizon_days": horizon_days})
    features = compute_customer_features(orders_as_of(orders, end), end, occasion_days=settings.btyd_occasion_days)
    model = fit_churn_model(features, settings)
    score, _, expected = score_churn(model, features, settings)
    after = orders[(orders["order_ts"] >= end + pd.Timedelta(days=1)) & (orders["order_ts"] < end + pd.Timedelta(days=1 + horizon_days))
                   & (orders["order_total"] >= 0)]
    purchase_days = after.assign(day=after["order_ts"].dt.normalize()).groupby("customer_id")["day"].nunique()
    bought = purchase_days.reindex(features.index, fill_value=0).to_numpy()
    lapsed = (bought == 0).astype(int)
    recency = features["days_since_last_order"].to_numpy()
    rfm = _quintile(-recency) + _quintile(features["total_orders"].to_numpy()) + _quintile(features["lifetime_value"].to_numpy())
    auc = {
        "churn_risk_score": roc_auc_score(lapsed, score),
        "recency": roc_auc_score(lapsed, recency),
        "rfm_quintiles": roc_auc_score(lapsed, -rfm),
        "expected_purchases": roc_auc_score(lapsed, -expected),
    }
    one_time = features["btyd_x"].to_numpy() == 0
    level = churn_risk_level(score, settings.churn_bands)
    bands = (pd.DataFrame({"level": level, "lapsed": lapsed, "one_time": one_time}).groupby("level")
             .agg(customers=("lapsed", "size"), one_time_buyers=("one_time", "sum"), lapse_rate=("lapsed", "mean"))
             .reindex([lv for lv in LEVELS if lv in set(level)]))
    median_one_time = float(np.median(score[one_time])) if one_time.any() else float("nan")
    return ChurnEvaluation(
        horizon_days=horizon_days, customers=len(features), lapse_rate=float(lapsed.mean()), auc={k: float(v) for k, v in auc.items()},
        bands=bands, one_time_score_range=(float(score[one_time].min()), float(score[one_time].max())) if one_time.any() else (np.nan, np.nan),
        repeat_buyers_above_median_one_time=int((score[~one_time] > median_one_time).sum()),
        forecast=float(expected.sum()), actual=int(bought.sum()),
    )
