"""The read API's response models (they are the OpenAPI schema at /docs)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class HistoryBasis(BaseModel):
    purchase_days: int = Field(description="the customer's purchase days")
    days_observed: int = Field(description="days since the customer's first order")
    store_customers: int = Field(description="customers the store's churn model was fitted on")
    store_days: int = Field(description="days since the store's first order")
    churn_model: str = Field(description="'store fit', 'store fit shrunk to the prior' or 'prior': where the store's dropout rate comes from")
    churn_recalibrated: bool = Field(description="the store's churn was recalibrated on its own last horizon (who of its customers then "
                                                 "bought again), which it does once that window holds 30 lapsers and 30 buyers; false in "
                                                 "rows written before 2026-12-05")
    little_history: bool = Field(description="fewer than 3 purchase days or 30 days observed, or a store too small or young for its own "
                                             "churn statement: read the churn risk and segments as tentative")


class Archetype(BaseModel):
    id: str
    name: str
    level: int = Field(description="1 (worst on every axis) .. 5 (best)")


class Profile(BaseModel):
    store_id: str
    customer_id: str
    profile_date: str
    model_version: str
    archetype: Archetype
    dominant_segments: dict[str, str]
    fuzzy_memberships: dict[str, dict[str, float]] = Field(description="{axis: {segment: membership}}, each axis sums to 1")
    behavioral_features: dict[str, dict[str, float | None]]
    churn_risk_score: float = Field(description="P(no purchase in the next churn horizon, 90 days by default)")
    churn_risk_level: str
    predicted_ltv: float = Field(description="expected spend over the next 365 days")
    expected_purchases: float | None
    total_orders: int
    lifetime_value: float
    days_since_first_order: int
    tenure_months: float
    next_order_date: str | None = Field(None, description="the expected day of the customer's next order if they stay (the median of "
                                        "their next gap given their silence so far); null in profiles written before it existed")
    history_basis: HistoryBasis | None = Field(None, description="how much history the churn risk and segments stand on")


class Transition(BaseModel):
    model_config = {"populate_by_name": True}
    from_: str = Field(alias="from")
    to: str
    date: str


class AxisDrift(BaseModel):
    drift_score: float = Field(description="||m_last - m_first|| / sqrt(2), 0..1")
    direction: str = Field(description="improving, degrading or stable (a direction needs evidence in the customer's own orders)")
    velocity: float
    transitions: list[Transition]


class JourneyStep(BaseModel):
    archetype: str
    date: str


class Anomaly(BaseModel):
    anomaly_type: str
    axis: str
    date: str
    severity: float
    description: str


class Recommendation(BaseModel):
    code: str
    text: str
    evidence: dict | None = None


class Drift(BaseModel):
    customer_id: str
    analysis_window: str
    as_of_date: str
    computed_on_demand: bool = Field(description="true: a past date computed from the snapshots; false: the stored current state")
    overall_drift: float = Field(description="the mean over the axes of each axis' drift_score in the window (0 = the same memberships "
                                             "at its start and end, 1 = moved entirely to another segment); a mean hides one axis "
                                             "moving alone (0.99 on one of six axes reads 0.17): axis_drift has each axis")
    drift_velocity: float = Field(description="overall_drift per day between the window's first and last snapshot")
    predicted_30d_drift: float = Field(description="how far the memberships would move in the next 30 days if each axis kept the "
                                                   "straight-line trend of the window's snapshots (memberships extrapolated along their "
                                                   "least-squares slopes, clipped at 0, renormalized), mean over the axes, 0..1: a trend "
                                                   "carried forward, not a forecast model")
    churn_risk_trend: float = Field(description="last - first churn_risk_score in the window")
    start_date: str
    end_date: str
    n_snapshots: int
    axis_drift: dict[str, AxisDrift]
    archetype_journey: list[JourneyStep]
    anomalies: list[Anomaly]
    recommendations: list[Recommendation]


class Snapshot(BaseModel):
    snapshot_date: str
    snapshot_type: str
    archetype: Archetype
    dominant_segments: dict[str, str]
    fuzzy_memberships: dict[str, dict[str, float]]
    churn_risk_score: float
    churn_risk_level: str
    predicted_ltv: float
    model_version: str


class History(BaseModel):
    customer_id: str
    snapshots: list[Snapshot]


class PopulationPoint(BaseModel):
    as_of_date: str
    axis: str
    reference_date: str
    segment_share_shift: float
    feature_psi: float | None
    segment_shares: dict[str, dict[str, float]] = Field(description="{segment: {reference, current}} dominant-segment shares")
    n_current: int


class Population(BaseModel):
    store_id: str
    series: list[PopulationPoint]


class Alert(BaseModel):
    as_of_date: str
    kind: str = Field(description="segment_mix, feature_distribution or outlier_rate")
    axis: str = Field(description="the axis (segment_mix, feature_distribution) or the outlier method (outlier_rate)")
    value: float
    threshold: float = Field(description="the threshold it reached (QUIMBI_ALERT_*_WARN or _ERROR)")
    severity: str = Field(description="warn or error")
    message: str


class Alerts(BaseModel):
    store_id: str
    alerts: list[Alert] = Field(description="newest date first, errors first")


class Health(BaseModel):
    status: str
    stores: int
