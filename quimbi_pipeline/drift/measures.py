"""Per-customer drift between snapshots, anomalies and a 30-day forecast (pure, vectorized; population drift: population.py).

Semantics (DESIGN "Drift"): the drift of customer c at D over window W uses c's snapshots dated in
[D - W, D], one per date, at least two. Per axis: drift = ||m_last - m_first||_2 / sqrt(2) over the
union of segments, capped at 1; velocity = drift / days between them; direction from the move of the
membership-weighted ladder position; transitions = changes of dominant segment between consecutive
snapshots. overall_drift = mean over axes. Every computation is array arithmetic over all customers
of a store (group boundaries, bincount, shifted rows); nothing loops over customers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from quimbi_pipeline.drift.evidence import (
    EVIDENCE,
    day_text,
    describe,
    evidence_arrays,
    evidence_sign,
)
from quimbi_pipeline.history.json_text import float_text, json_object
from quimbi_pipeline.model.features import AXIS_BY_NAME
from quimbi_pipeline.model.memberships import SQRT2
from quimbi_pipeline.model.segmentation import SINGLE_SEGMENT_NAME
from quimbi_pipeline.settings import DRIFT_WINDOWS

WINDOWS = DRIFT_WINDOWS
NS_PER_DAY = 86_400 * 10**9
# Direction: the membership-weighted ladder position (0 = worst rung, 1 = best) moved by more than this
# (more than one rung of a six-segment axis, so flipping between neighbours is not a trend).
DIRECTION_THRESHOLD = 0.3
SUDDEN_DRIFT = 0.5  # drift between two snapshots at most SUDDEN_DRIFT_DAYS apart
SUDDEN_DRIFT_DAYS = 7
REVERSAL_DAYS = 28  # A -> B -> A with the stay in B at most this long
VELOCITY_SPIKE_RATIO = 3.0  # the last 7 days' velocity >= 3x the customer's baseline velocity
VELOCITY_RECENT_DAYS = 7
VELOCITY_BASELINE_DAYS = 90  # baseline: the 90 days before the recent 7
VELOCITY_SPIKE_MIN_DRIFT = 0.2  # a spike must also move the memberships this much in the recent 7 days
# Behaviour change: a change in the customer's own orders of at least this factor (order value, items per order),
# new at D, that the segments do not show as a sudden drift (a premium spender whose orders grow 4-fold stays one).
STRONG_CHANGE_FACTOR = 3.0
STRONG_CHANGE_AXES = ("purchase_value", "basket_size")
# Anomalies look back this far whatever the windows: the velocity baseline, for D and for D - 1.
ANOMALY_HISTORY_DAYS = VELOCITY_RECENT_DAYS + VELOCITY_BASELINE_DAYS + 1
FORECAST_DAYS = 30

CUSTOMER_DRIFT_COLUMNS = [
    "customer_id", "as_of_date", "window_days", "overall_drift", "drift_velocity", "predicted_30d_drift", "churn_risk_trend",
    "start_date", "end_date", "n_snapshots", "axes", "archetype_journey", "recommendations",
]
# customer_drift.axes: {axis: [drift_score, direction, velocity, transitions]} (JSON text, the axes in the
# history's order); the customer_axis_drift view gives a row per axis with n_transitions = len(transitions).
AXES_ENTRY = ("drift_score", "direction", "velocity", "transitions")
AXIS_DRIFT_COLUMNS = ["customer_id", "as_of_date", "window_days", "axis", "drift_score", "direction", "velocity", "n_transitions", "transitions"]
ANOMALY_COLUMNS = ["customer_id", "as_of_date", "anomaly_type", "axis", "anomaly_date", "severity", "description"]


def segment_position(axis: str, segment: str) -> float:
    """A segment's rung on its axis' ladder, 0 (worst) .. 1 (best); suffixes (`_2`) share their base rung."""
    if segment == SINGLE_SEGMENT_NAME:
        return 0.5
    ladder = AXIS_BY_NAME[axis].ladder
    base = segment if segment in ladder else re.sub(r"_\d+$", "", segment)
    if base not in ladder:
        raise ValueError(f"axis {axis}: segment {segment!r} is not on the ladder {ladder}")
    return ladder.index(base) / (len(ladder) - 1)


@dataclass
class MembershipHistory:
    """Snapshots of one store, one row per (customer, date), sorted by customer then date."""

    customer_id: np.ndarray  # object/str
    day: np.ndarray  # int64 days since epoch
    churn: np.ndarray
    archetype: np.ndarray  # object/str
    memberships: np.ndarray  # (rows, columns) float64, 0 where a row lacks a segment
    columns: list[str]  # "axis.segment"
    # {axis: {"since", "before", "after"}} per row: the evidence of a detected change (drift/evidence.py);
    # empty when change detection was off, and then directions, anomalies and recommendations need none.
    evidence: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, membership_columns: list[str], memberships: np.ndarray | None = None) -> MembershipHistory:
        """The frame's rows ordered by (customer, date); `memberships` (one row per frame row, one column per name) instead
        of the frame's membership_columns when given."""
        # Ordered by (customer, date) through an index: sorting the whole frame moved its feature columns too.
        ids = _text_array(frame["customer_id"])
        codes, _ = pd.factorize(ids, sort=True)
        all_days = pd.to_datetime(frame["snapshot_date"]).to_numpy("datetime64[ns]").view("int64") // NS_PER_DAY
        order = np.lexsort((all_days, codes))
        same = (np.diff(codes[order]) == 0) & (np.diff(all_days[order]) == 0)
        if same.any():
            raise ValueError("membership history must hold one row per customer and date")
        return cls(
            customer_id=ids[order], day=all_days[order],
            churn=frame["churn_risk_score"].to_numpy("float64")[order], archetype=_text_array(frame["archetype_name"])[order],
            # Column-major (_rows_of), as the per-axis column slices below want it (~10% faster).
            memberships=_rows_of(frame[membership_columns] if memberships is None else memberships, order), columns=list(membership_columns),
            evidence={a: {k: v[order] for k, v in e.items()} for a, e in evidence_arrays(frame).items()},
        )

    @property
    def axes(self) -> dict[str, np.ndarray]:
        names = [c.split(".", 1)[0] for c in self.columns]
        return {a: np.flatnonzero(np.array(names) == a) for a in dict.fromkeys(names)}

    def select(self, mask: np.ndarray) -> MembershipHistory:
        if mask.all():  # the common case of a window holding the whole history read: no copy
            return self
        return self.take(mask)

    def take(self, rows: np.ndarray) -> MembershipHistory:
        """The rows at these positions (a mask or indices, repeats allowed); the history itself for all of its rows in order."""
        if rows.dtype != bool and rows.size == self.day.size and np.array_equal(rows, np.arange(rows.size)):
            return self
        return MembershipHistory(self.customer_id[rows], self.day[rows], self.churn[rows], self.archetype[rows], self.memberships[rows], self.columns,
                                 {a: {k: v[rows] for k, v in e.items()} for a, e in self.evidence.items()})

    def new_change(self, axis: str, rows: np.ndarray, earlier: np.ndarray) -> np.ndarray:
        """Whether each row in `rows` holds a change on `axis` that the row in `earlier` did not hold yet
        (no evidence there, or a change since another date). True everywhere without change detection."""
        if not self.evidence:
            return np.ones(rows.shape, dtype=bool)
        if axis not in self.evidence:
            return np.zeros(rows.shape, dtype=bool)
        since = self.evidence[axis]["since"]
        now, then = since[rows], since[earlier]
        return np.isfinite(now) & ~(np.isfinite(then) & (then == now))

    def change_sign(self, axis: str, rows: np.ndarray) -> np.ndarray:
        """+1 / -1 for a change improving / degrading the customer on the axis at those rows, 0 without one."""
        if axis not in self.evidence:
            return np.zeros(rows.shape, dtype="int64")
        e = self.evidence[axis]
        return np.where(np.isfinite(e["since"][rows]), evidence_sign(axis, e["before"][rows], e["after"][rows]), 0)


def axis_entries(axes_text: str) -> list[dict]:
    """A customer_drift row's axes as the customer_axis_drift view gives them, one dict per axis, by axis name."""
    return [{"axis": axis, **dict(zip(AXES_ENTRY, entry)), "n_transitions": len(entry[3])} for axis, entry in sorted(json.loads(axes_text).items())]


@dataclass
class DriftTables:
    customers: pd.DataFrame  # CUSTOMER_DRIFT_COLUMNS
    # customer_axis_drift rows as arrays, one part per window and axis ({column: array or scalar}, AXIS_DRIFT_COLUMNS).
    # The write path stores them in customer_drift.axes and needs no frame of them: `axes` builds it when asked.
    axis_parts: list[dict]
    anomalies: pd.DataFrame  # ANOMALY_COLUMNS

    @property
    def n_axis_rows(self) -> int:
        return sum(len(part["customer_id"]) for part in self.axis_parts)

    def axis_numbers(self) -> pd.DataFrame:
        """customer_id and the numeric columns of the axis rows (what row_checks checks), without their text."""
        columns = ("customer_id", "drift_score", "velocity", "n_transitions")
        if not self.axis_parts:
            return pd.DataFrame(columns=list(columns))
        return pd.DataFrame({c: np.concatenate([np.asarray(part[c]) for part in self.axis_parts]) for c in columns})

    @cached_property
    def axes(self) -> pd.DataFrame:
        return axis_frame(self.axis_parts)


def axis_frame(axis_parts: list[dict]) -> pd.DataFrame:
    """customer_axis_drift rows (AXIS_DRIFT_COLUMNS) of DriftTables.axis_parts, as the view of customer_drift.axes reads them."""
    if not axis_parts:
        return pd.DataFrame(columns=AXIS_DRIFT_COLUMNS)
    return pd.concat([pd.DataFrame(part)[AXIS_DRIFT_COLUMNS] for part in axis_parts], ignore_index=True)


def _rows_of(memberships: pd.DataFrame | np.ndarray, order: np.ndarray) -> np.ndarray:
    """The rows in `order` as a column-major float64 matrix, NaN (a segment the row's date lacks) as 0."""
    values = memberships.to_numpy("float64") if isinstance(memberships, pd.DataFrame) else memberships
    out = np.empty((order.size, values.shape[1]), dtype="float64", order="F")
    for j in range(values.shape[1]):
        out[:, j] = values[order, j]
    out[np.isnan(out)] = 0.0
    return out


def _text_array(values: pd.Series) -> np.ndarray:
    """The values as an object array of str. astype(str) makes pandas 3 build an Arrow string column first:
    half a second a slice of 1M for text that is text already (ids), or a few distinct names (categorical)."""
    if isinstance(values.dtype, pd.CategoricalDtype) and not values.isna().any():
        return values.cat.categories.astype(str).to_numpy(object)[values.cat.codes.to_numpy()]
    if values.dtype == object and pd.api.types.infer_dtype(values, skipna=False) == "string":
        return values.to_numpy(object)
    return values.astype(str).to_numpy(object)


def _json_str(values) -> np.ndarray:
    """Names as JSON strings (object array). Segment and archetype names come from fixed ladders joined by ", ": no
    escaping needed, and few distinct ones, so each is quoted once (a pandas text op costs ~0.1 ms a call at a
    small store's size, and per row at a large one's)."""
    codes, names = pd.factorize(np.asarray(values, dtype=object))
    quoted = np.array(['"' + str(name) + '"' for name in names] + ['"nan"'], dtype=object)
    return quoted[codes]  # a missing name (code -1; profiles always have their names) reads "nan"


def _num(values: np.ndarray, decimals: int = 6) -> np.ndarray:
    return np.round(np.asarray(values, dtype="float64"), decimals) + 0.0


def _number_text(values: np.ndarray) -> np.ndarray:
    """Finite numbers as JSON number text (object array); non-finite ones as 0 (callers only show rows that have a value)."""
    values = np.asarray(values, dtype="float64")
    # repr of each float is numpy's astype(str) text (shortest round-trip, the same exponent rules), 1.4-2x faster.
    out = np.empty(values.shape, dtype=object)  # 1-D
    out[:] = list(map(repr, np.where(np.isfinite(values), values, 0.0).tolist()))
    return out


def _finite_text(values: np.ndarray):
    """_number_text's text as an Arrow column, for columns joined in Arrow (json_object)."""
    return float_text(np.nan_to_num(np.asarray(values, dtype="float64"), nan=0.0, posinf=0.0, neginf=0.0))


def _groups(customer_id: np.ndarray, window: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group code per row, first row of each group, last row of each group) of rows sorted by customer (by window,
    then customer, with `window`: a group per window and customer)."""
    new = np.r_[True, customer_id[1:] != customer_id[:-1]] if customer_id.size else np.zeros(0, dtype=bool)
    if window is not None and window.size:
        new[1:] |= window[1:] != window[:-1]
    code = np.cumsum(new) - 1
    first = np.flatnonzero(new)
    last = np.r_[first[1:] - 1, customer_id.size - 1] if first.size else first
    return code, first, last


def _axis_drift(m: np.ndarray, a: np.ndarray, b: np.ndarray, cols: np.ndarray) -> np.ndarray:
    diff = m[np.ix_(b, cols)] - m[np.ix_(a, cols)]
    return np.minimum(np.sqrt(np.einsum("ij,ij->i", diff, diff)) / SQRT2, 1.0)


def _axis_block(m: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The axis' membership columns: a view when they are adjacent (an axis' columns are, sorted by name), not a copy."""
    if cols.size and np.array_equal(cols, np.arange(cols[0], cols[0] + cols.size)):
        return m[:, cols[0]:cols[0] + cols.size]
    return m[:, cols]


def _dominant(m: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Index (into cols) of each row's largest membership on the axis (the first of ties, as argmax); -1 where the
    row has none. Column by column: the matrix is column-major, and argmax along its rows strode through memory."""
    block = _axis_block(m, cols)
    best = block[:, 0].copy()
    index = np.zeros(block.shape[0], dtype="int64")
    for j in range(1, block.shape[1]):
        larger = block[:, j] > best
        index[larger] = j
        np.maximum(best, block[:, j], out=best)
    return np.where(best > 0, index, -1)  # memberships are >= 0: the largest is > 0 iff they sum to > 0


def _join_per_group(code: np.ndarray, text, n_groups: int, empty: str = "[]") -> np.ndarray:
    """'[t1, t2, ...]' per group from item texts of rows sorted by group (np.add.reduceat: no call per group)."""
    out = np.full(n_groups, empty, dtype=object)
    text = np.asarray(text, dtype=object)
    if text.size:
        starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
        parts = text + np.where(np.r_[code[1:] == code[:-1], False], ", ", "").astype(object)
        out[code[starts]] = "[" + np.add.reduceat(parts, starts) + "]"
    return out


def window_drift(history: MembershipHistory, as_of: pd.Timestamp, window_days: int) -> tuple[pd.DataFrame, list[dict]]:
    """customer_drift rows of one window (customers with >= 2 snapshots in it) and its customer_axis_drift rows
    as DriftTables.axis_parts."""
    return windows_drift(history, as_of, (window_days,))[0]


# Windows whose rows together are at most this many are computed in one pass, their (window, customer) pairs as the
# groups: a small store's five windows cost five times the ~100 array and text calls of one (17 ms a window at 1,000
# customers, most of the per-store cost of its drift), for the same rows. Larger histories go window by window, so a
# slice of a large store never holds its snapshots several times over.
STACKED_WINDOW_ROWS = 200_000


def windows_drift(history: MembershipHistory, as_of: pd.Timestamp, windows) -> list[tuple[pd.DataFrame, list[dict]]]:
    """window_drift of each window, in order; small histories' windows stacked into one pass (the same rows)."""
    d = int(pd.Timestamp(as_of).normalize().value // NS_PER_DAY)
    picks = [np.flatnonzero((history.day >= d - w) & (history.day <= d)) for w in windows]
    out: list[tuple[pd.DataFrame, list[dict]]] = []
    batch: list[int] = []
    for i, rows in enumerate(picks):
        if batch and sum(picks[j].size for j in batch) + rows.size > STACKED_WINDOW_ROWS:
            out += _stacked_drift(history, as_of, [windows[j] for j in batch], [picks[j] for j in batch])
            batch = []
        batch.append(i)
    if batch:
        out += _stacked_drift(history, as_of, [windows[j] for j in batch], [picks[j] for j in batch])
    return out


def _stacked_drift(history: MembershipHistory, as_of: pd.Timestamp, windows: list[int], picks: list[np.ndarray]) -> list[tuple[pd.DataFrame, list[dict]]]:
    """window_drift of each window, computed over the windows' rows one after the other (window-major), grouped by
    (window, customer). Every figure is per group (bincount, reduceat, shifted rows within a group), so each window's
    rows and bytes are those of computing it alone."""
    window_of_row = np.repeat(np.arange(len(windows)), [p.size for p in picks])
    h = history.take(np.concatenate(picks) if len(picks) > 1 else picks[0])
    code, first, last = _groups(h.customer_id, window_of_row)
    keep = (last - first) >= 1
    rows_kept = keep[code] if code.size else np.zeros(0, dtype=bool)
    h, window_of_row = h.select(rows_kept), window_of_row[rows_kept]
    code, first, last = _groups(h.customer_id, window_of_row)
    n_cust = first.size
    # Each window's groups, a contiguous range of them (window-major rows).
    bounds = np.searchsorted(window_of_row[first], np.arange(len(windows) + 1))
    if n_cust == 0:
        return [(pd.DataFrame(columns=CUSTOMER_DRIFT_COLUMNS), []) for _ in windows]
    window_days = np.asarray(windows, dtype="int64")[window_of_row[first]]
    m = h.memberships
    days = (h.day[last] - h.day[first]).astype("float64")
    n_snap = (last - first + 1).astype("int64")
    same_customer = np.r_[False, code[1:] == code[:-1]]
    t = (h.day - h.day[first][code]).astype("float64")  # days since the customer's first snapshot in the window
    # OLS slope of each membership over time, per customer (sums by bincount): the 30-day forecast.
    s_t, s_tt = np.bincount(code, t, n_cust), np.bincount(code, t * t, n_cust)
    denom = n_snap * s_tt - s_t * s_t
    columns_out = []
    axis_parts = []
    as_of_text = f"{pd.Timestamp(as_of):%Y-%m-%d}"
    axes_text = []  # (axis, '[drift_score, "direction", velocity, transitions]' per customer): AXES_ENTRY
    forecast_drift = np.zeros(n_cust)
    for axis, cols in history.axes.items():
        drift = _axis_drift(m, first, last, cols)
        velocity = np.divide(drift, days, out=np.zeros(n_cust), where=days > 0)
        positions = np.array([segment_position(axis, history.columns[c].split(".", 1)[1]) for c in cols])
        pos = _axis_block(m, cols) @ positions
        moved = pos[last] - pos[first]
        direction = np.select([moved > DIRECTION_THRESHOLD, moved < -DIRECTION_THRESHOLD], ["improving", "degrading"], "stable")
        if h.evidence:  # change detection on: a direction needs a change of this axis, detected within the window, the same way
            source = EVIDENCE_AXIS.get(axis, axis)
            new, sign = h.new_change(source, last, first), h.change_sign(source, last)
            backed = new & (sign == np.where(moved > 0, 1, -1))
            # The ladder cannot order every move: segments sharing a rung (rare, rare_2: the lowest rung split in two)
            # and moves of less than a rung. A large move there (drift over the threshold) that comes with a new change
            # takes the change's direction: a monthly buyer's stop moves them from rare to rare_2 and nowhere else.
            unordered = new & (sign != 0) & (drift > DIRECTION_THRESHOLD) & (np.abs(moved) <= DIRECTION_THRESHOLD)
            direction = np.where(backed & (direction != "stable"), direction, np.where(unordered, np.where(sign > 0, "improving", "degrading"), "stable"))
        dom = _dominant(m, cols)
        changed = same_customer & (dom != np.r_[-2, dom[:-1]]) & (dom >= 0) & (np.r_[-1, dom[:-1]] >= 0)
        n_trans = np.bincount(code[changed], minlength=n_cust)
        quoted = _json_str([history.columns[c].split(".", 1)[1] for c in cols])  # once per axis, not per event
        idx = np.flatnonzero(changed)
        if idx.size:
            event = '{"date": "' + day_text(h.day[idx]) + '", "from": ' + quoted[dom[idx - 1]] + ', "to": ' + quoted[dom[idx]] + "}"
            transitions = _join_per_group(code[idx], event, n_cust)
        else:  # no customer changed segment on the axis (most windows of a small store): nothing to write out
            transitions = np.full(n_cust, "[]", dtype=object)
        # Forecast: memberships extrapolated 30 days along their fitted slopes, clipped and renormalized.
        block = _axis_block(m, cols)
        s_m = np.stack([np.bincount(code, block[:, j], n_cust) for j in range(cols.size)], axis=1)
        s_tm = np.stack([np.bincount(code, t * block[:, j], n_cust) for j in range(cols.size)], axis=1)
        slope = np.divide(n_snap[:, None] * s_tm - s_t[:, None] * s_m, denom[:, None], out=np.zeros_like(s_m), where=denom[:, None] > 0)
        future = np.clip(block[last] + FORECAST_DAYS * slope, 0.0, None)
        total = future.sum(axis=1, keepdims=True)
        future = np.divide(future, total, out=block[last].copy(), where=total > 0)
        gap = future - block[last]
        forecast_drift += np.minimum(np.sqrt(np.einsum("ij,ij->i", gap, gap)) / SQRT2, 1.0)
        columns_out.append((axis, drift, direction))
        score, speed = _num(drift), _num(velocity)
        axis_parts.append({
            "customer_id": h.customer_id[first], "as_of_date": as_of_text, "window_days": None, "axis": axis, "drift_score": score,
            "direction": direction, "velocity": speed, "n_transitions": n_trans.astype("int64"), "transitions": transitions,
        })
        # Joined in Arrow by json_object; the numbers as _number_text writes them (float_text is repr, in Arrow).
        axes_text.append((axis, ["[", _finite_text(score), ', "', direction, '", ', _finite_text(speed), ", ", transitions, "]"]))
    n_axes = len(columns_out)
    overall = np.mean([c[1] for c in columns_out], axis=0)
    churn_trend = h.churn[last] - h.churn[first]
    directions = {axis: direction for axis, _, direction in columns_out}
    customers = pd.DataFrame({
        "customer_id": h.customer_id[first],
        "as_of_date": as_of_text,
        "window_days": window_days,
        "overall_drift": _num(overall),
        "drift_velocity": _num(np.divide(overall, days, out=np.zeros(n_cust), where=days > 0)),
        "predicted_30d_drift": _num(forecast_drift / n_axes),
        "churn_risk_trend": _num(churn_trend),
        "start_date": day_text(h.day[first]).to_numpy(object),
        "end_date": day_text(h.day[last]).to_numpy(object),
        "n_snapshots": n_snap,
        "axes": json_object(axes_text).to_numpy(object),
        "archetype_journey": archetype_journey(h, code, same_customer, n_cust),
        "recommendations": recommendations(overall, churn_trend, h.churn[first], h.churn[last], directions, evidence_items(h, last)),
    })[CUSTOMER_DRIFT_COLUMNS]
    out = []
    for i, w in enumerate(windows):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        if lo == hi:  # no customer with two snapshots in this window
            out.append((pd.DataFrame(columns=CUSTOMER_DRIFT_COLUMNS), []))
            continue
        whole = lo == 0 and hi == n_cust
        parts = [{k: (w if k == "window_days" else v if whole or not isinstance(v, np.ndarray) else v[lo:hi]) for k, v in part.items()}
                 for part in axis_parts]
        out.append((customers if whole else customers.iloc[lo:hi].reset_index(drop=True), parts))
    return out


def archetype_journey(h: MembershipHistory, code: np.ndarray, same_customer: np.ndarray, n_cust: int) -> np.ndarray:
    """[{"date": first date, "archetype": name}, ...]: the customer's archetypes in the window, in order, one per run."""
    starts = np.flatnonzero(~same_customer | (h.archetype != np.r_[None, h.archetype[:-1]]))
    item = '{"date": "' + day_text(h.day[starts]) + '", "archetype": ' + _json_str(h.archetype[starts]) + "}"
    return _join_per_group(code[starts], item, n_cust)


# An axis without a detector of its own is backed by the one that drives it (activity_trend is the recent purchase rate).
EVIDENCE_AXIS = {"loyalty_trajectory": "purchase_frequency"}


def evidence_items(h: MembershipHistory, rows: np.ndarray) -> dict[str, np.ndarray]:
    """{axis: '"evidence": {...}' JSON text per row} of the change held at those rows ('' without one)."""
    out = {}
    for axis, e in h.evidence.items():
        holds = np.isfinite(e["since"][rows])  # text for the few rows holding a change only
        held = rows[holds]
        feature, b, a, date = describe(axis, e["since"][held], e["before"][held], e["after"][held])
        text = np.full(rows.size, "", dtype=object)
        text[holds] = ('"evidence": {"axis": "' + axis + '", "feature": "' + feature.astype(object) + '", "before": '
                                               + _number_text(b) + ', "after": ' + _number_text(a) + ', "since": "' + date + '"}')
        out[axis] = text
    return out


# Recommendations (the seed's rules as we read them; docs/drift.md): (code, condition, text, evidence axis).
def recommendations(overall: np.ndarray, churn_trend: np.ndarray, churn_then: np.ndarray, churn_now: np.ndarray,
                    directions: dict[str, np.ndarray], evidence: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """With change detection on (`evidence`), every rule needs a detected change on its axis (directions are
    already gated by it) and names it: axis, feature, before -> after, since when."""
    def on(axis: str, direction: str) -> np.ndarray:
        return directions[axis] == direction if axis in directions else np.zeros(overall.shape, dtype=bool)

    evidence = evidence or {}
    any_backed = np.zeros(overall.shape, dtype=bool)
    for axis, d in directions.items():
        any_backed |= d != "stable"

    def churn_evidence(rows: np.ndarray) -> np.ndarray:
        return ('"evidence": {"feature": "churn_risk_score", "before": ' + _number_text(np.round(churn_then[rows], 3))
                + ', "after": ' + _number_text(np.round(churn_now[rows], 3)) + "}")

    rules = [
        ("win_back", (churn_trend >= 0.1) & (churn_now >= 0.6) & (on("purchase_frequency", "degrading") | (not evidence)),
         "churn risk rose to high: send a win-back offer", "purchase_frequency"),
        ("re_engage", on("purchase_frequency", "degrading"), "buying less often: re-engagement campaign", "purchase_frequency"),
        ("protect_value", on("purchase_value", "degrading"), "spending less per order: review price sensitivity, bundle offers", "purchase_value"),
        ("upsell", on("purchase_value", "improving"), "spending more per order: premium and upsell offers", "purchase_value"),
        ("cross_sell", on("basket_size", "improving"), "buying bigger baskets: cross-sell complementary items", "basket_size"),
        ("limit_discounts", on("discount_sensitivity", "degrading"), "relying more on discounts: avoid training discount dependence", "discount_sensitivity"),
        ("reward_loyalty", on("loyalty_trajectory", "improving"), "growing loyalty: loyalty-programme rewards", "purchase_frequency"),
        ("review_profile", (overall >= 0.5) & (any_backed | (not evidence)), "behavior changed a lot: review this customer's segment-based treatment", None),
    ]
    first_backed = np.full(overall.size, "", dtype=object)  # review_profile names the first backed axis
    for axis, d in directions.items():
        named = evidence.get(EVIDENCE_AXIS.get(axis, axis))
        if named is not None:
            first_backed = np.where((first_backed == "") & (d != "stable"), named, first_backed)
    # Text for the rows a rule applies to only: most rows get none ("[]").
    out = np.full(overall.size, "", dtype=object)
    for code, mask, text, axis in rules:
        rows = np.flatnonzero(np.broadcast_to(mask, overall.shape))
        if not rows.size:
            continue
        item = np.full(rows.size, f'{{"code": "{code}", "text": "{text}"', dtype=object)
        named = evidence.get(axis) if axis else (first_backed if evidence else None)
        if named is not None:
            named = np.asarray(named, dtype=object)[rows]
            if code == "win_back":
                unnamed = named == ""
                named[unnamed] = churn_evidence(rows[unnamed])
            has = named != ""
            item[has] = item[has] + ", " + named[has]
        item = item + "}"
        before = out[rows]
        out[rows] = np.where(before == "", item, before + ", " + item)
    return "[" + out + "]"


def anomalies_at(history: MembershipHistory, as_of: pd.Timestamp) -> pd.DataFrame:
    """Anomalies completed at the customer's snapshot dated D (each event is reported once, on its date)."""
    d = int(pd.Timestamp(as_of).normalize().value // NS_PER_DAY)
    h = history.select((history.day >= d - ANOMALY_HISTORY_DAYS) & (history.day <= d))
    code, first, _ = _groups(h.customer_id)
    same_customer = np.r_[False, code[1:] == code[:-1]] if code.size else np.zeros(0, dtype=bool)
    at_d = np.flatnonzero((h.day == d) & same_customer)  # rows at D with a previous snapshot
    frames = []
    as_of_text = f"{pd.Timestamp(as_of):%Y-%m-%d}"
    gap_days = (h.day - np.r_[0, h.day[:-1]]).astype("float64")
    for axis, cols in h.axes.items():
        block = _axis_block(h.memberships, cols)
        step = np.zeros(h.day.size)
        if h.day.size > 1:
            diff = block[1:] - block[:-1]
            step[1:] = np.minimum(np.sqrt(np.einsum("ij,ij->i", diff, diff)) / SQRT2, 1.0)
        step = np.where(same_customer, step, 0.0)
        names = np.array([h.columns[c].split(".", 1)[1] for c in cols], dtype=object)
        dom = _dominant(h.memberships, cols)

        source = EVIDENCE_AXIS.get(axis, axis)
        # With change detection on, an anomaly needs the change it reports: new at D (sudden drift, velocity
        # spike) or gone at D (a reversal); a model's movement or a customer's noise is not one.
        sudden = at_d[(step[at_d] > SUDDEN_DRIFT) & (gap_days[at_d] <= SUDDEN_DRIFT_DAYS) & h.new_change(source, at_d, at_d - 1)]
        if sudden.size:  # (each kind's text only where it has rows: most days most kinds have none)
            frames.append(_anomaly_rows(h, sudden, axis, "sudden_drift", step[sudden],
                                        axis + ": moved " + pd.Series(np.round(100 * step[sudden]).astype(int)).astype(str)
                                        + "% of the way to another segment in " + _days_text(gap_days[sudden])))

        if axis in STRONG_CHANGE_AXES and source in h.evidence:
            e = h.evidence[source]
            fresh = at_d[h.new_change(source, at_d, at_d - 1) & ~np.isin(at_d, sudden)]
            with np.errstate(divide="ignore", invalid="ignore"):  # before/after are log1p levels (change_points' signals)
                factor = np.expm1(e["after"][fresh]) / np.expm1(e["before"][fresh])
                size = np.abs(np.log(factor))  # NaN for a factor <= 0 or undefined: never strong
            strong = np.isfinite(size) & (size >= np.log(STRONG_CHANGE_FACTOR)) & (dom[fresh] >= 0)
            rows, factor, size = fresh[strong], factor[strong], size[strong]
            if rows.size:
                frames.append(_anomaly_rows(h, rows, axis, "behavior_change", np.minimum(1.0, size / np.log(10.0)),
                                            f"{axis}: {EVIDENCE[source][0]} " + pd.Series(_factor_text(factor))
                                            + " in the customer's own orders, which their segment (" + pd.Series(names[dom[rows]]).astype(str)
                                            + ") does not show"))

        # Reversal: runs of equal dominant segment; the run starting at D returns to the segment of two runs back.
        run_start = np.flatnonzero(~same_customer | (dom != np.r_[-2, dom[:-1]]))
        is_start = np.zeros(h.day.size, dtype=bool)
        is_start[run_start] = True
        run_of_row = np.cumsum(is_start) - 1
        rows = at_d[np.isin(at_d, run_start)]
        r = run_of_row[rows]
        valid = r >= 2
        rows, r = rows[valid], r[valid]
        a_start, b_start = run_start[r - 2], run_start[r - 1]
        is_rev = ((code[a_start] == code[rows]) & (dom[a_start] == dom[rows]) & (dom[rows] >= 0) & (dom[b_start] >= 0)
                  & (h.day[rows] - h.day[b_start] <= REVERSAL_DAYS))
        if h.evidence:  # the stay in B began with a new change, which D no longer holds
            is_rev &= h.new_change(source, b_start, np.maximum(b_start - 1, 0)) & h.new_change(source, b_start, rows)
        rows, b_start = rows[is_rev], b_start[is_rev]
        if rows.size:
            frames.append(_anomaly_rows(h, rows, axis, "reversal", step[rows], evidence_rows=b_start, description=
                                        axis + ": " + pd.Series(names[dom[rows]]).astype(str) + " -> " + pd.Series(names[dom[b_start]]).astype(str)
                                        + " -> " + pd.Series(names[dom[rows]]).astype(str) + " within " + _days_text(h.day[rows] - h.day[b_start])))

        # Velocity spike: the pace of the last 7 days against the customer's pace over the 90 days before.
        rows, ratio, recent, reference = _velocity_spikes(h, code, first, cols, d)
        if rows.size:
            yesterday = _velocity_spikes(h, code, first, cols, d - 1)[0]
            new = ~np.isin(code[rows], code[yesterday]) & h.new_change(source, rows, reference)  # once, on the day it starts
            rows, ratio, recent = rows[new], ratio[new], recent[new]
        if rows.size:
            frames.append(_anomaly_rows(h, rows, axis, "velocity_spike", np.minimum(1.0, ratio / (2 * VELOCITY_SPIKE_RATIO)),
                                        axis + ": moved " + pd.Series(np.round(100 * recent * VELOCITY_RECENT_DAYS).astype(int)).astype(str)
                                        + f"% of the way to another segment over the last {VELOCITY_RECENT_DAYS} days, " + pd.Series(_pace_text(ratio))))
    if not frames:  # the columns as a day with anomalies has them
        frames.append(_anomaly_rows(h, np.zeros(0, dtype="int64"), "", "", np.zeros(0), pd.Series([], dtype=object)))
    # Object text columns whether or not a day has anomalies (pandas makes non-empty ones str, empty ones object).
    out = pd.concat(frames, ignore_index=True).astype({"customer_id": object, "anomaly_date": object, "description": object})
    out.insert(1, "as_of_date", as_of_text)
    return out[ANOMALY_COLUMNS].sort_values(["customer_id", "anomaly_type", "axis"], kind="stable").reset_index(drop=True)


def _factor_text(factor: np.ndarray) -> np.ndarray:
    """"rose 3.4-fold", or "fell 5.1-fold" for a fall to a fifth."""
    up = factor >= 1
    size = np.round(np.where(up, factor, 1.0 / factor), 1).astype(str)
    return np.char.add(np.char.add(np.where(up, "rose ", "fell "), size), "-fold").astype(object)


def _days_text(days: np.ndarray) -> pd.Series:
    """Whole days in words: "1 day", "12 days"."""
    n = np.asarray(days).astype(int)
    return pd.Series(n.astype(str)) + np.where(n == 1, " day", " days")


def _pace_text(ratio: np.ndarray) -> np.ndarray:
    """How much faster than before, in words: a pace against a near-standstill is no useful ratio (108122.4x)."""
    still = ~np.isfinite(ratio) | (ratio >= 20)
    times = np.round(np.where(still, 0.0, ratio)).astype(int).astype(str)
    return np.where(still, f"after barely moving in the {VELOCITY_BASELINE_DAYS} days before",
                    np.char.add(times, f" times its pace of the {VELOCITY_BASELINE_DAYS} days before").astype(object))


def _velocity_spikes(h: MembershipHistory, code: np.ndarray, first: np.ndarray, cols: np.ndarray, d: int):
    """Rows (the customer's snapshot at day d) whose recent velocity is a spike: (rows, ratio, recent velocity, the
    snapshot the recent velocity is measured from).

    recent = drift from the last snapshot at least 7 days before d, per day; baseline = drift over
    the snapshots of the 90 days before that one (at least 14 days apart), per day.
    """
    empty = np.zeros(0, dtype="int64")
    if not h.day.size:
        return empty, np.zeros(0), np.zeros(0), empty
    span = int(h.day.max() - h.day.min()) + 2
    key = code.astype("int64") * span + (h.day - h.day.min())
    at_d = np.flatnonzero(h.day == d)
    c = code[at_d]
    base = c.astype("int64") * span - h.day.min()
    p_recent = np.searchsorted(key, base + d - VELOCITY_RECENT_DAYS, side="right") - 1
    p_base = np.maximum(np.searchsorted(key, base + d - VELOCITY_RECENT_DAYS - VELOCITY_BASELINE_DAYS, side="left"), first[c])
    ok = (p_recent >= first[c]) & (p_base < p_recent) & (h.day[p_recent] - h.day[np.minimum(p_base, p_recent)] >= 2 * VELOCITY_RECENT_DAYS)
    at_d, p_recent, p_base = at_d[ok], p_recent[ok], p_base[ok]
    recent_drift = _axis_drift(h.memberships, p_recent, at_d, cols)
    recent = recent_drift / (d - h.day[p_recent])
    baseline = _axis_drift(h.memberships, p_base, p_recent, cols) / (h.day[p_recent] - h.day[p_base])
    ratio = np.divide(recent, baseline, out=np.full(recent.size, np.inf), where=baseline > 0)
    spike = (recent_drift >= VELOCITY_SPIKE_MIN_DRIFT) & (ratio >= VELOCITY_SPIKE_RATIO)
    return at_d[spike], ratio[spike], recent[spike], p_recent[spike]


OLD_EVIDENCE_DAYS = 28  # evidence dated further back than this is explained in the anomaly's text


def _anomaly_rows(h: MembershipHistory, rows: np.ndarray, axis: str, kind: str, severity: np.ndarray, description: pd.Series,
                  evidence_rows: np.ndarray | None = None) -> pd.DataFrame:
    """Rows of customer_drift_anomalies; the description names the change at `evidence_rows` (default: rows) when there is one."""
    source = EVIDENCE_AXIS.get(axis, axis)
    text = description.to_numpy(object)
    if source in h.evidence and rows.size:
        at = rows if evidence_rows is None else evidence_rows
        e = h.evidence[source]
        feature, before, after, since = describe(source, e["since"][at], e["before"][at], e["after"][at])
        suffix = "; evidence: " + feature.astype(object) + " " + _number_text(before) + " -> " + _number_text(after) + " since " + since
        # Evidence older than the window says why it still counts: the date is the last order before the change.
        old = (h.day[rows] - np.nan_to_num(e["since"][at], nan=np.inf)) > OLD_EVIDENCE_DAYS
        silent = (source == "purchase_frequency") & (np.nan_to_num(e["after"][at], nan=1.0) == 0)
        why = np.where(old & silent, " (no order since: the silence is the change)",
                       np.where(old, " (the last order before the change; the orders since hold it)", ""))
        text = np.where(np.isfinite(e["since"][at]), text + suffix + why, text)
    return pd.DataFrame({
        "customer_id": h.customer_id[rows], "anomaly_type": kind, "axis": axis, "anomaly_date": day_text(h.day[rows]).to_numpy(object),
        "severity": _num(severity), "description": text,
    })


def history_days(windows=WINDOWS) -> int:
    """How many days of snapshots before D the drift of these windows and the anomalies read."""
    return max(max(windows), ANOMALY_HISTORY_DAYS)


def compute_drift(history: MembershipHistory, as_of, windows=WINDOWS, with_state: bool = True) -> DriftTables:
    """The drift tables of D. `with_state=False`: the anomalies only (customer_drift and its axes empty), for a date
    whose drift state is not kept (a backfill's earlier dates): the windows are most of the arithmetic."""
    as_of = pd.Timestamp(as_of).normalize()
    if not with_state:
        return DriftTables(pd.DataFrame(columns=CUSTOMER_DRIFT_COLUMNS), [], anomalies_at(history, as_of))
    customers, axis_parts = zip(*windows_drift(history, as_of, windows))
    return DriftTables(pd.concat(customers, ignore_index=True), [part for parts in axis_parts for part in parts], anomalies_at(history, as_of))
