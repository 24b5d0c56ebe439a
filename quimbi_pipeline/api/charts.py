"""Vega-Lite specifications of the pages' charts, built from what reads.py returns (data inline).

The pages render them with the vendored vega-embed (static/), SVG renderer, so a chart's marks are in
the page's DOM (the browser test counts them).
"""

from __future__ import annotations

import numpy as np

WIDTH = 560
DRIFT_WINDOW_DAYS = 28


def _spec(title: str, values: list[dict], **body) -> dict:
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "title": title, "width": WIDTH,
            "data": {"values": values}, **body}


def memberships(fuzzy: dict[str, dict[str, float]], dominant: dict[str, str]) -> dict:
    values = [{"axis": axis, "segment": segment, "membership": round(m, 4), "dominant": dominant.get(axis) == segment}
              for axis, segments in fuzzy.items() for segment, m in segments.items()]
    return _spec("Segment memberships per axis (the darkest bar is the dominant segment)", values, mark="bar",
                 encoding={"y": {"field": "segment", "type": "nominal", "title": None, "sort": None},
                           "x": {"field": "membership", "type": "quantitative", "scale": {"domain": [0, 1]}},
                           "row": {"field": "axis", "type": "nominal", "title": None, "header": {"labelAngle": 0, "labelAlign": "left"}},
                           "color": {"field": "dominant", "type": "nominal", "legend": None,
                                     "scale": {"domain": [False, True], "range": ["#9ecae1", "#08519c"]}},
                           "tooltip": [{"field": "axis"}, {"field": "segment"}, {"field": "membership"}]},
                 resolve={"scale": {"y": "independent"}})


def drift_over_time(snapshots: list[dict], window_days: int = DRIFT_WINDOW_DAYS) -> dict:
    """Per axis and snapshot date d: ||m_d - m_first||/sqrt(2) against the first snapshot of the `window_days`
    before d (the drift score's definition), from the customer's stored memberships. Only snapshots scored by
    d's segment model are compared: memberships under two models are not comparable (a refit is not drift)."""
    values = []
    dates = np.array([np.datetime64(s["snapshot_date"]) for s in snapshots])
    versions = [s["model_version"] for s in snapshots]
    for i, snap in enumerate(snapshots):
        first = int(np.searchsorted(dates, dates[i] - np.timedelta64(window_days, "D"), side="left"))
        while versions[first] != versions[i]:
            first += 1
        for axis, now in snap["fuzzy_memberships"].items():
            then = snapshots[first]["fuzzy_memberships"].get(axis, {})
            names = set(now) | set(then)
            score = float(np.sqrt(sum((now.get(n, 0.0) - then.get(n, 0.0)) ** 2 for n in names) / 2))
            values.append({"date": snap["snapshot_date"], "axis": axis, "drift_score": round(min(score, 1.0), 4)})
    return _spec(f"Drift score per axis over time ({window_days}-day window, snapshots of the same segment model)", values,
                 mark={"type": "line", "point": True},
                 encoding={"x": {"field": "date", "type": "temporal"}, "y": {"field": "drift_score", "type": "quantitative", "scale": {"domain": [0, 1]}},
                           "color": {"field": "axis", "type": "nominal"}, "tooltip": [{"field": "date", "type": "temporal"}, {"field": "axis"}, {"field": "drift_score"}]})


def churn_trend(snapshots: list[dict]) -> dict:
    values = [{"date": s["snapshot_date"], "churn_risk_score": round(s["churn_risk_score"], 4), "level": s["churn_risk_level"]} for s in snapshots]
    return _spec("Churn risk over time", values, mark={"type": "line", "point": True},
                 encoding={"x": {"field": "date", "type": "temporal"},
                           "y": {"field": "churn_risk_score", "type": "quantitative", "scale": {"domain": [0, 1]}, "title": "P(no purchase in the horizon)"},
                           "tooltip": [{"field": "date", "type": "temporal"}, {"field": "churn_risk_score"}, {"field": "level"}]})


def archetype_journey(snapshots: list[dict]) -> dict:
    """One bar per stay in an archetype, from its first to its last snapshot date."""
    values: list[dict] = []
    for s in snapshots:
        name = s["archetype"]["name"]
        if values and values[-1]["archetype"] == name:
            values[-1]["end"] = s["snapshot_date"]
        else:
            values.append({"archetype": name, "start": s["snapshot_date"], "end": s["snapshot_date"]})
    return _spec("Archetype journey", values, mark={"type": "bar", "height": 14, "minBandSize": 4},
                 encoding={"x": {"field": "start", "type": "temporal", "title": "date"}, "x2": {"field": "end"},
                           "y": {"field": "archetype", "type": "nominal", "title": None, "sort": None},
                           "tooltip": [{"field": "archetype"}, {"field": "start", "type": "temporal"}, {"field": "end", "type": "temporal"}]})


def segment_shares(series: list[dict]) -> dict:
    values = [{"date": p["as_of_date"], "axis": p["axis"], "segment": segment, "share": shares["current"]}
              for p in series for segment, shares in p["segment_shares"].items()]
    return _spec("Segment shares over time (dominant segments of the active customers)", values, mark="area",
                 encoding={"x": {"field": "date", "type": "temporal"}, "y": {"field": "share", "type": "quantitative", "stack": "normalize"},
                           "color": {"field": "segment", "type": "nominal"}, "row": {"field": "axis", "type": "nominal", "title": None},
                           "tooltip": [{"field": "date", "type": "temporal"}, {"field": "axis"}, {"field": "segment"}, {"field": "share"}]},
                 height=60, resolve={"scale": {"color": "independent"}})


def population_drift(series: list[dict]) -> dict:
    values = [{"date": p["as_of_date"], "axis": p["axis"], "segment_share_shift": p["segment_share_shift"]} for p in series]
    return _spec("Population drift: shift of segment shares against the reference date", values, mark={"type": "line", "point": True},
                 encoding={"x": {"field": "date", "type": "temporal"}, "y": {"field": "segment_share_shift", "type": "quantitative"},
                           "color": {"field": "axis", "type": "nominal"}})


def outlier_rate(points: list[dict]) -> dict:
    return _spec("Outlier rate per method", points, mark={"type": "line", "point": True},
                 encoding={"x": {"field": "date", "type": "temporal"}, "y": {"field": "rate", "type": "quantitative", "axis": {"format": "%"}},
                           "color": {"field": "method", "type": "nominal"}})
