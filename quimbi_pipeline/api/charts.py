"""Vega-Lite specifications of the pages' charts, built from what reads.py returns (data inline).

The pages render them with the vendored vega-embed (static/), SVG renderer, so a chart's marks are in
the page's DOM (the browser test counts them).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quimbi_pipeline.drift.measures import segment_position
from quimbi_pipeline.model.segmentation import SINGLE_SEGMENT_NAME

WIDTH = 560
JOURNEY_WIDTH = 360  # the archetype names (every axis' segment) take the rest of the row, never shortened
SMALL_WIDTH = 200  # a small multiple: three across fit 1,400 px; on a phone they wrap
DRIFT_WINDOW_DAYS = 28
PANEL_HEIGHT = 110


def _spec(title: str, values: list[dict], **body) -> dict:
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "title": title, "width": WIDTH, "data": {"values": values}, **body}


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


RUNG_COLOURS = ("#b2182b", "#ef8a62", "#fddbc7", "#d1e5f0", "#67a9cf", "#2166ac")
OFF_LADDER = "#bdbdbd"
RUNG_NAMES = ("1 worst", "2", "3", "4", "5", "6 best")
RUNG_SCALE = {"domain": [*RUNG_NAMES, "other"], "range": [*RUNG_COLOURS, OFF_LADDER]}


# The customer page's behaviour chart: the features behind the two axes an analyst reads first, as the snapshots froze
# them (with ENABLE_ADAPTIVE_WINDOWS they follow a detected change at once).
BEHAVIOUR = (("purchase_frequency", "orders_per_month", "orders per month"), ("purchase_value", "avg_order_value", "typical order value"))


def _behaviour_values(snapshots: list[dict]) -> list[dict]:
    return [{"date": s["snapshot_date"], "measure": label, "value": round(float(v), 4)} for s in snapshots
            for axis, feature, label in BEHAVIOUR
            if (v := s.get("behavioral_features", {}).get(axis, {}).get(feature)) is not None and np.isfinite(v)]


def behaviour_range(snapshots: list[dict]) -> dict[str, tuple[float, float]]:
    """{axis: (low, high)}: each behaviour panel's y range, the customer's values with room around them (never below 0)."""
    out, values = {}, _behaviour_values(snapshots)
    for axis, _, label in BEHAVIOUR:
        found = [v["value"] for v in values if v["measure"] == label]
        if found:
            low, high = min(found), max(found)
            pad = 0.4 * (high - low) if high > low else 0.5 * max(abs(high), 1.0)
            out[axis] = (max(low - pad, 0.0), high + pad)
    return out


def behaviour_over_time(snapshots: list[dict], marks: list[dict], bands: dict[str, list[dict]] | None = None) -> dict | None:
    """The customer's orders per month and typical order value per snapshot date, one panel each, with a dashed rule
    at each date in `marks` ({date, what}: the changes detected in their orders, the anomalies) and the segment bands
    in `bands` ({axis: [{segment, low, high}]}, reads.segment_bands over behaviour_range) shaded behind, coloured by
    rung and named where there is room; None without features."""
    values = _behaviour_values(snapshots)
    if not values:
        return None
    dates = [v["date"] for v in values]
    shown = [m for m in marks if min(dates) <= m["date"] <= max(dates)]
    ranges = behaviour_range(snapshots)
    line = {"data": {"values": values}, "mark": {"type": "line", "point": True},
            "encoding": {"x": {"field": "date", "type": "temporal", "title": None},
                         "tooltip": [{"field": "date", "type": "temporal"}, {"field": "measure"}, {"field": "value"}]}}
    rule = {"data": {"values": shown}, "mark": {"type": "rule", "strokeDash": [4, 4], "color": "#b42318"},
            "encoding": {"x": {"field": "date", "type": "temporal"}, "tooltip": [{"field": "date", "type": "temporal"}, {"field": "what"}]}}

    def band_layers(axis: str) -> list[dict]:
        found = (bands or {}).get(axis) or []
        if not found:
            return []
        low, high = ranges[axis]
        data = [{**b, "rung": _rung(axis, b["segment"]), "middle": (b["low"] + b["high"]) / 2} for b in found]
        named = [b for b in data if (b["high"] - b["low"]) / (high - low) * PANEL_HEIGHT >= 14]  # room for a label
        return [{"data": {"values": data}, "mark": {"type": "rect", "opacity": 0.22},
                 "encoding": {"y": {"field": "low", "type": "quantitative"}, "y2": {"field": "high"},
                              "color": {"field": "rung", "type": "nominal", "scale": RUNG_SCALE, "legend": None},
                              "tooltip": [{"field": "segment"}, {"field": "low"}, {"field": "high"}]}},
                {"data": {"values": named}, "mark": {"type": "text", "align": "right", "dx": -4, "fontSize": 9, "color": "#57606a"},
                 "encoding": {"y": {"field": "middle", "type": "quantitative"}, "x": {"value": WIDTH}, "text": {"field": "segment"}}}]

    panels = []
    for axis, _, label in BEHAVIOUR:
        if axis not in ranges:
            continue
        y = {"field": "value", "type": "quantitative", "title": None, "scale": {"domain": list(ranges[axis]), "zero": False}}
        own = {**line, "encoding": {**line["encoding"], "y": y}, "transform": [{"filter": {"field": "measure", "equal": label}}]}
        panels.append({"title": label, "height": PANEL_HEIGHT, "width": WIDTH, "layer": band_layers(axis) + [own] + ([rule] if shown else [])})
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json",
            "title": "The customer's behaviour over time (dashed: a change detected in their orders, or an anomaly; shaded: the segment "
                     "each value would put them in)",
            "vconcat": panels, "resolve": {"scale": {"y": "independent"}}}


def orders_over_time(orders: list[dict], marks: list[dict]) -> dict | None:
    """Each order's value, and the days since the order before it, over time (one panel each), with the changes in
    `marks` dashed; None without orders. `orders`: [{date, value}] oldest first."""
    if not orders:
        return None
    values = [{"date": o["date"], "value": round(o["value"], 2),
               "gap": None if i == 0 else (pd.Timestamp(o["date"]) - pd.Timestamp(orders[i - 1]["date"])).days}
              for i, o in enumerate(orders)]
    shown = [m for m in marks if values[0]["date"] <= m["date"] <= values[-1]["date"]]
    rule = {"data": {"values": shown}, "mark": {"type": "rule", "strokeDash": [4, 4], "color": "#b42318"},
            "encoding": {"x": {"field": "date", "type": "temporal"}, "tooltip": [{"field": "date", "type": "temporal"}, {"field": "what"}]}}

    def panel(field: str, title: str, mark: dict) -> dict:
        points = {"data": {"values": [v for v in values if v[field] is not None]}, "mark": mark,
                  "encoding": {"x": {"field": "date", "type": "temporal", "title": None}, "y": {"field": field, "type": "quantitative", "title": None},
                               "tooltip": [{"field": "date", "type": "temporal"}, {"field": "value", "title": "order value"},
                                           {"field": "gap", "title": "days since the order before"}]}}
        return {"title": title, "height": PANEL_HEIGHT, "width": WIDTH, "layer": [points] + ([rule] if shown else [])}

    panels = [panel("value", "order value", {"type": "line", "point": True, "interpolate": "step-after", "strokeOpacity": 0.4})]
    if len(values) >= 2:
        panels.append(panel("gap", "days since the order before", {"type": "bar", "width": 3}))
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json",
            "title": f"Their {len(values)} orders (dashed: a change detected in their orders, or an anomaly)", "vconcat": panels}


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
                           "y": {"field": "archetype", "type": "nominal", "title": None, "sort": None, "axis": {"labelLimit": 0}},
                           "tooltip": [{"field": "archetype"}, {"field": "start", "type": "temporal"}, {"field": "end", "type": "temporal"}]},
                 width=JOURNEY_WIDTH)


# One colour per rung of an axis' ladder (worst -> best), the same on every axis: a red-to-blue diverging scheme, so
# "level 1" reads the same in every small multiple; a segment off the ladder (one-segment stores) is grey.
def _rung(axis: str, segment: str) -> str:
    """The segment's rung name (segment_position: a suffixed segment, `regular_2`, shares its base's rung)."""
    if segment == SINGLE_SEGMENT_NAME:
        return "other"
    return RUNG_NAMES[round(segment_position(axis, segment) * (len(RUNG_NAMES) - 1))]


def segment_shares(series: list[dict]) -> dict:
    """Small multiples, one per axis: the dominant segments' shares over time, coloured by their rung on the axis'
    ladder (the same colour means the same rung on every axis), the segment's name in the tooltip."""
    values = [{"date": p["as_of_date"], "axis": p["axis"], "segment": segment, "rung": _rung(p["axis"], segment), "share": shares["current"]}
              for p in series for segment, shares in p["segment_shares"].items()]
    spec = _spec("Segment shares over time (dominant segments of the active customers; colour = rung, worst to best)", values,
                 mark="area",
                 encoding={"x": {"field": "date", "type": "temporal", "title": None, "axis": {"format": "%b %d", "labelOverlap": True, "tickCount": 4}},
                           "y": {"field": "share", "type": "quantitative", "stack": "normalize", "title": None, "axis": {"format": "%"}},
                           "color": {"field": "rung", "type": "ordinal", "title": "rung",
                                     "scale": RUNG_SCALE},
                           "order": {"field": "rung", "type": "ordinal"},
                           "facet": {"field": "axis", "type": "nominal", "columns": 3, "title": None, "header": {"labelFontSize": 12}},
                           "tooltip": [{"field": "date", "type": "temporal"}, {"field": "axis"}, {"field": "segment"}, {"field": "share", "format": ".1%"}]},
                 height=110)
    spec["width"] = SMALL_WIDTH
    return spec


def population_drift(series: list[dict], warn: float | None = None, error: float | None = None) -> dict:
    """Each axis' segment-share shift over time, with the alert thresholds (QUIMBI_ALERT_SEGMENT_MIX_*) as rules."""
    values = [{"date": p["as_of_date"], "axis": p["axis"], "segment_share_shift": p["segment_share_shift"]} for p in series]
    line = {"mark": {"type": "line", "point": True},
            "encoding": {"x": {"field": "date", "type": "temporal"},
                         "y": {"field": "segment_share_shift", "type": "quantitative", "title": "segment share shift", "axis": {"format": "%"}},
                         "color": {"field": "axis", "type": "nominal"},
                         "tooltip": [{"field": "date", "type": "temporal"}, {"field": "axis"}, {"field": "segment_share_shift", "format": ".1%"}]}}
    rules = [{"threshold": t, "level": f"{name} {t:.0%}"} for name, t in (("warn", warn), ("error", error)) if t is not None]
    if not rules:
        return _spec("Population drift: shift of segment shares against the reference date", values, **line)
    layer = {"data": {"values": rules}, "mark": {"type": "rule", "strokeDash": [4, 4]},
             "encoding": {"y": {"field": "threshold", "type": "quantitative"},
                          "color": {"value": "#d62728"}, "tooltip": [{"field": "level", "title": "alert threshold"}]}}
    text = {"data": {"values": rules}, "mark": {"type": "text", "align": "left", "dx": 4, "dy": -6, "color": "#d62728"},
            "encoding": {"y": {"field": "threshold", "type": "quantitative"}, "x": {"value": 0}, "text": {"field": "level"}}}
    return _spec("Population drift: shift of segment shares against the reference date, and the alert thresholds", values,
                 layer=[line, layer, text])


def outlier_rate(points: list[dict], refits: list[str] = ()) -> dict:
    """Each method's flagged share over time, with a dashed rule on each date the segment model was refitted
    (outliers are judged against the segments: a refit can move the rate by itself)."""
    line = {"mark": {"type": "line", "point": True},
            "encoding": {"x": {"field": "date", "type": "temporal"}, "y": {"field": "rate", "type": "quantitative", "axis": {"format": "%"}},
                         "color": {"field": "method", "type": "nominal"},
                         "tooltip": [{"field": "date", "type": "temporal"}, {"field": "method"}, {"field": "rate", "format": ".2%"}]}}
    dates = [p["date"] for p in points]
    shown = [{"date": d, "what": "segment model refitted"} for d in refits if dates and min(dates) <= d <= max(dates)]
    if not shown:
        return _spec("Outlier rate per method", points, **line)
    rule = {"data": {"values": shown}, "mark": {"type": "rule", "strokeDash": [4, 4], "color": "#6e7781"},
            "encoding": {"x": {"field": "date", "type": "temporal"}, "tooltip": [{"field": "date", "type": "temporal"}, {"field": "what"}]}}
    return _spec("Outlier rate per method (dashed: the segment model was refitted)", points, layer=[line, rule])