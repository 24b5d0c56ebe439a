"""Alerts on a store's customer mix: population drift per axis and the outlier rate against thresholds.

Per store and date, from population_drift (each axis' dominant-segment share shift and feature PSI against its
reference date) and outlier_rates (each method's share of flagged customers):

- segment_mix (the axes of QUIMBI_ALERT_AXES): the share shift reaches QUIMBI_ALERT_SEGMENT_MIX_WARN / _ERROR;
- feature_distribution: the feature PSI reaches QUIMBI_ALERT_FEATURE_PSI_WARN / _ERROR;
- outlier_rate: a method's flagged share reaches QUIMBI_ALERT_OUTLIER_RATE_WARN / _ERROR.

A store with fewer than QUIMBI_ALERT_MIN_CUSTOMERS active customers raises none: its shares move by chance.
Pure: frames in, a frame out (ALERT_COLUMNS), one row per crossed threshold, the worse severity only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

ALERT_COLUMNS = ["store_id", "as_of_date", "kind", "axis", "value", "threshold", "severity", "message"]
SEVERITY_RANK = {"error": 0, "warn": 1}  # errors first wherever alerts are listed
ALERT_WINDOW_DAYS = 28  # what the store page, `quimbi demo` and /stores/{store}/alerts list by default


@dataclass(frozen=True)
class AlertThresholds:
    """(warn, error) per measure, the fewest customers a store needs for any alert, and the axes whose mix raises
    alerts; from the settings (QUIMBI_ALERT_*), which hold the defaults."""

    segment_mix: tuple[float, float]
    feature_psi: tuple[float, float]
    outlier_rate: tuple[float, float]
    min_customers: int
    axes: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings) -> AlertThresholds:
        return cls((settings.alert_segment_mix_warn, settings.alert_segment_mix_error),
                   (settings.alert_feature_psi_warn, settings.alert_feature_psi_error),
                   (settings.alert_outlier_rate_warn, settings.alert_outlier_rate_error), settings.alert_min_customers,
                   tuple(settings.alert_axes))


def _crossed(frame: pd.DataFrame, kind: str, value: pd.Series, bounds: tuple[float, float], text) -> pd.DataFrame:
    """The rows of `frame` whose `value` reaches a bound, with the worse severity and its threshold."""
    v = value.to_numpy("float64", na_value=np.nan)
    error, warn = v >= bounds[1], v >= bounds[0]
    hit = warn | error
    rows = frame.loc[hit]
    if rows.empty:
        return pd.DataFrame(columns=ALERT_COLUMNS)
    severity = np.where(error[hit], "error", "warn")
    threshold = np.where(error[hit], bounds[1], bounds[0])
    out = pd.DataFrame({"store_id": rows["store_id"].to_numpy(object), "as_of_date": rows["as_of_date"].to_numpy(object), "kind": kind,
                        "axis": rows["axis"].to_numpy(object), "value": v[hit], "threshold": threshold, "severity": severity})
    out["message"] = text(rows.reset_index(drop=True), out)
    return out


def mix_alerts(population: pd.DataFrame, rates: pd.DataFrame, thresholds: AlertThresholds) -> pd.DataFrame:
    """`population`: store_id, as_of_date, axis, reference_date, n_current, segment_share_shift, feature_psi;
    `rates`: store_id, flag_date, method, customers, flagged. Alerts sorted by date, store, severity (errors first)."""
    parts = []
    if len(population):
        big = population[(population["n_current"] >= thresholds.min_customers) & population["axis"].isin(thresholds.axes)]

        def mix_text(rows: pd.DataFrame, out: pd.DataFrame) -> list[str]:
            return [f"{a}: the segment mix shifted by {v:.0%} of customers since {r} ({s} from {t:.0%})"
                    for a, v, r, s, t in zip(rows["axis"], out["value"], rows["reference_date"].astype(str), out["severity"], out["threshold"])]

        def psi_text(rows: pd.DataFrame, out: pd.DataFrame) -> list[str]:
            return [f"{a}: its features' distribution moved by PSI {v:.2f} since {r} ({s} from {t:g})"
                    for a, v, r, s, t in zip(rows["axis"], out["value"], rows["reference_date"].astype(str), out["severity"], out["threshold"])]

        parts.append(_crossed(big, "segment_mix", big["segment_share_shift"], thresholds.segment_mix, mix_text))
        parts.append(_crossed(big, "feature_distribution", big["feature_psi"], thresholds.feature_psi, psi_text))
    if len(rates):
        big = rates[rates["customers"] >= thresholds.min_customers].rename(columns={"flag_date": "as_of_date", "method": "axis"})
        share = big["flagged"] / big["customers"]

        def rate_text(rows: pd.DataFrame, out: pd.DataFrame) -> list[str]:
            return [f"{v:.1%} of customers ({f:,} of {c:,}) flagged by the {m} outlier method ({s} from {t:.1%})"
                    for m, v, f, c, s, t in zip(rows["axis"], out["value"], rows["flagged"], rows["customers"], out["severity"], out["threshold"])]

        parts.append(_crossed(big, "outlier_rate", share, thresholds.outlier_rate, rate_text))
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=ALERT_COLUMNS)
    out = pd.concat(parts, ignore_index=True)
    out["as_of_date"] = pd.to_datetime(out["as_of_date"]).dt.date
    return sorted_alerts(out)


def sorted_alerts(alerts: pd.DataFrame) -> pd.DataFrame:
    """By date, store, severity (errors first), kind and axis."""
    rank = alerts["severity"].map(SEVERITY_RANK)
    return (alerts.assign(_rank=rank).sort_values(["as_of_date", "store_id", "_rank", "kind", "axis"], kind="stable")
            .drop(columns="_rank").reset_index(drop=True))


def alert_episodes(alerts: pd.DataFrame) -> pd.DataFrame:
    """Consecutive days of the same store, kind and axis as one row (a shift stays past its threshold for weeks):
    first and last date, days, the worst severity, the peak value and the newest day's message; newest first."""
    if alerts.empty:
        return pd.DataFrame(columns=["store_id", "kind", "axis", "first", "last", "days", "severity", "peak", "message"])
    a = alerts.assign(day=pd.to_datetime(alerts["as_of_date"])).sort_values(["store_id", "kind", "axis", "day"])
    key = ["store_id", "kind", "axis"]
    new_key = (a[key] != a[key].shift()).any(axis=1)
    episode = (new_key | (a["day"].diff() > pd.Timedelta(days=1))).cumsum()
    g = a.groupby(episode)
    out = pd.DataFrame({"store_id": g["store_id"].first(), "kind": g["kind"].first(), "axis": g["axis"].first(),
                        "first": g["day"].min().dt.date, "last": g["day"].max().dt.date, "days": g.size(),
                        "severity": np.where((a["severity"] == "error").groupby(episode).any(), "error", "warn"),
                        "peak": g["value"].max(), "message": g["message"].last()})
    return out.sort_values(["last", "severity"], ascending=[False, True], kind="stable").reset_index(drop=True)


# An outlier rate "jumps" when it at least doubles (or halves) from one date to the next and moves by at least this much.
JUMP_MIN_CHANGE = 0.005


def outlier_rate_jumps(rates: pd.DataFrame, refits: set) -> pd.DataFrame:
    """Dates where a method's outlier rate doubled or halved from its previous date (and moved >= JUMP_MIN_CHANGE),
    with the likely cause: a refit of the segment model that day (outliers are judged against the new segments) or
    none (the customers' own features moved). `rates`: date, method, rate; `refits`: dates the model was refitted."""
    columns = ["date", "method", "before", "after", "cause"]
    if rates.empty:
        return pd.DataFrame(columns=columns)
    r = rates.sort_values(["method", "date"])
    before = r.groupby("method")["rate"].shift()
    after = r["rate"]
    jump = before.notna() & ((after - before).abs() >= JUMP_MIN_CHANGE) & ((after >= 2 * before) | (after <= before / 2))
    out = r.loc[jump, ["date", "method"]].assign(before=before[jump], after=after[jump])
    refit_days = {str(d)[:10] for d in refits}
    out["cause"] = np.where(out["date"].astype(str).str[:10].isin(refit_days),
                            "the segment model was refitted that day: outliers are judged against the new segments",
                            "no refit that day: the customers' own behaviour moved")
    return out[columns].sort_values("date", ascending=False).reset_index(drop=True)
