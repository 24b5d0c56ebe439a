"""Drift semantics on hand-built histories: scores, direction, transitions, windows, anomalies, forecast, population."""

import json

import numpy as np
import pandas as pd
import pytest

from quimbi_pipeline.drift.measures import (
    MembershipHistory,
    anomalies_at,
    axis_entries,
    axis_frame,
    compute_drift,
    segment_position,
    window_drift,
)
from quimbi_pipeline.drift.population import (
    POPULATION_COLUMNS,
    PopulationSide,
    SlicesDiffer,
    population_drift,
    population_rows,
    psi,
)

AXIS = "purchase_value"
COLS = [f"{AXIS}.minimal_spender", f"{AXIS}.mid_spender", f"{AXIS}.premium_spender"]


def history(rows) -> MembershipHistory:
    """rows: (customer, date, churn, archetype, (u_min, u_mid, u_premium))."""
    frame = pd.DataFrame([{"customer_id": c, "snapshot_date": pd.Timestamp(d), "churn_risk_score": churn, "archetype_name": arch,
                           **dict(zip(COLS, u))} for c, d, churn, arch, u in rows])
    return MembershipHistory.from_frame(frame, COLS)


def test_segment_positions_follow_the_ladder():
    assert segment_position(AXIS, "minimal_spender") == 0.0
    assert segment_position(AXIS, "premium_spender") == 1.0
    assert segment_position(AXIS, "mid_spender_2") == segment_position(AXIS, "mid_spender") == 0.6
    assert segment_position(AXIS, "all_customers") == 0.5
    with pytest.raises(ValueError, match="not on the ladder"):
        segment_position(AXIS, "nonsense")


def test_axis_drift_direction_velocity_and_transitions():
    h = history([
        ("a", "2026-10-01", 0.2, "x", (0.8, 0.1, 0.1)),
        ("a", "2026-10-11", 0.3, "x", (0.2, 0.7, 0.1)),
        ("a", "2026-10-21", 0.5, "y", (0.1, 0.1, 0.8)),
        ("b", "2026-10-21", 0.1, "x", (0.1, 0.1, 0.8)),  # one snapshot: no row
        ("c", "2026-10-20", 0.4, "z", (0.1, 0.1, 0.8)),
        ("c", "2026-10-21", 0.4, "z", (0.1, 0.1, 0.8)),  # no change
    ])
    customers, parts = window_drift(h, pd.Timestamp("2026-10-21"), 28)
    axes = axis_frame(parts)
    assert list(customers["customer_id"]) == ["a", "c"]
    a = axes.set_index("customer_id").loc["a"]
    expected = np.linalg.norm(np.array([0.1, 0.1, 0.8]) - np.array([0.8, 0.1, 0.1])) / np.sqrt(2)
    assert a["drift_score"] == pytest.approx(expected, abs=1e-6)
    assert a["velocity"] == pytest.approx(expected / 20, abs=1e-6)
    assert a["direction"] == "improving" and a["n_transitions"] == 2
    assert json.loads(a["transitions"]) == [
        {"date": "2026-10-11", "from": "minimal_spender", "to": "mid_spender"},
        {"date": "2026-10-21", "from": "mid_spender", "to": "premium_spender"},
    ]
    c = axes.set_index("customer_id").loc["c"]
    assert c["drift_score"] == 0 and c["direction"] == "stable" and json.loads(c["transitions"]) == []
    row = customers.set_index("customer_id").loc["a"]
    assert row["overall_drift"] == pytest.approx(expected, abs=1e-6)  # one axis: the mean is the axis
    assert row["churn_risk_trend"] == pytest.approx(0.3) and row["n_snapshots"] == 3
    assert (row["start_date"], row["end_date"]) == ("2026-10-01", "2026-10-21")
    assert json.loads(row["archetype_journey"]) == [{"date": "2026-10-01", "archetype": "x"}, {"date": "2026-10-21", "archetype": "y"}]
    assert [r["code"] for r in json.loads(row["recommendations"])] == ["upsell", "review_profile"]
    # customer_drift.axes holds the axis rows (the customer_axis_drift view reads them out of it), exactly.
    for customer, stored in zip(customers["customer_id"], customers["axes"]):
        one = axes.set_index("customer_id").loc[customer]
        assert json.loads(stored) == {AXIS: [one["drift_score"], one["direction"], one["velocity"], json.loads(one["transitions"])]}
        [entry] = axis_entries(stored)  # as the API reads them
        assert entry == {"axis": AXIS, "drift_score": one["drift_score"], "direction": one["direction"], "velocity": one["velocity"],
                         "transitions": json.loads(one["transitions"]), "n_transitions": one["n_transitions"]}
    # The 7-day window of the same date only sees a's last snapshot: no row for a.
    customers7, _ = window_drift(h, pd.Timestamp("2026-10-21"), 7)
    assert list(customers7["customer_id"]) == ["c"]


def test_degrading_frequency_and_rising_churn_recommendations():
    cols = ["purchase_frequency.rare", "purchase_frequency.very_frequent"]
    frame = pd.DataFrame({"customer_id": ["a", "a"], "snapshot_date": pd.to_datetime(["2026-10-01", "2026-10-20"]),
                          "churn_risk_score": [0.5, 0.7], "archetype_name": ["x", "x"], cols[0]: [0.1, 0.9], cols[1]: [0.9, 0.1]})
    customers, parts = window_drift(MembershipHistory.from_frame(frame, cols), pd.Timestamp("2026-10-20"), 28)
    axes = axis_frame(parts)
    assert axes["direction"].tolist() == ["degrading"]
    assert [r["code"] for r in json.loads(customers["recommendations"].iloc[0])] == ["win_back", "re_engage", "review_profile"]


def test_forecast_extrapolates_a_linear_trend():
    # Memberships move 0.01 a day from minimal to premium: in 30 days they move 0.3 more.
    days = pd.date_range("2026-10-01", "2026-10-11")
    rows = [("a", d, 0.1, "x", (0.6 - 0.01 * i, 0.2, 0.2 + 0.01 * i)) for i, d in enumerate(days)]
    customers, _ = window_drift(history(rows), days[-1], 28)
    gap = np.array([-0.3, 0.0, 0.3])
    assert customers["predicted_30d_drift"].iloc[0] == pytest.approx(np.linalg.norm(gap) / np.sqrt(2), abs=1e-6)
    # A constant history forecasts no drift.
    flat = [("b", d, 0.1, "x", (0.6, 0.2, 0.2)) for d in days]
    assert window_drift(history(flat), days[-1], 28)[0]["predicted_30d_drift"].iloc[0] == 0


def test_anomalies_sudden_drift_reversal_and_velocity_spike():
    rows = [
        # sudden: minimal -> premium in 2 days at D
        ("s", "2026-10-19", 0.1, "x", (0.9, 0.05, 0.05)), ("s", "2026-10-21", 0.1, "x", (0.05, 0.05, 0.9)),
        # reversal: minimal -> mid (10-05) -> minimal at D, 16 days in mid
        ("r", "2026-10-01", 0.1, "x", (0.7, 0.2, 0.1)), ("r", "2026-10-05", 0.1, "x", (0.3, 0.6, 0.1)),
        ("r", "2026-10-21", 0.1, "x", (0.6, 0.3, 0.1)),
    ]
    # spike: 80 days of a slow move (0.001 a day), then 0.3 in the last 7 days
    slow = pd.date_range("2026-07-30", "2026-10-14", freq="7D")
    rows += [("v", d, 0.1, "x", (0.8 - 0.007 * i, 0.1, 0.1 + 0.007 * i)) for i, d in enumerate(slow)]
    last = 0.8 - 0.007 * (len(slow) - 1)
    rows += [("v", "2026-10-21", 0.1, "x", (last - 0.3, 0.1, 1 - 0.1 - last + 0.3))]
    found = anomalies_at(history(rows), pd.Timestamp("2026-10-21"))
    kinds = set(zip(found["customer_id"], found["anomaly_type"]))
    assert ("s", "sudden_drift") in kinds
    assert ("r", "reversal") in kinds and ("s", "reversal") not in kinds
    assert ("v", "velocity_spike") in kinds and ("v", "sudden_drift") not in kinds
    assert set(found["anomaly_date"]) == {"2026-10-21"} and found["severity"].between(0, 1).all()
    # The same history seen a day later reports nothing new (events are reported on their date).
    assert anomalies_at(history(rows), pd.Timestamp("2026-10-22")).empty


def test_compute_drift_covers_all_windows_where_history_allows():
    days = pd.date_range("2025-11-01", "2026-10-31", freq="14D")  # every 14 days, ending on 2026-10-31
    assert days[-1] == pd.Timestamp("2026-10-31")
    tables = compute_drift(history([("a", d, 0.1, "x", (0.5, 0.3, 0.2)) for d in days]), "2026-10-31")
    # The 7-day window holds one snapshot: no row; the others hold 3, 7, 13 and 27.
    assert tables.customers.set_index("window_days")["n_snapshots"].to_dict() == {28: 3, 90: 7, 180: 13, 365: 27}


def test_a_date_without_kept_state_gets_the_same_anomalies_and_no_state():
    days = pd.date_range("2026-07-01", "2026-10-21", freq="7D")
    rows = [("a", d, 0.1, "x", (0.8, 0.1, 0.1)) for d in days[:-1]] + [("a", days[-1], 0.1, "x", (0.05, 0.05, 0.9))]
    h, day = history(rows), days[-1]
    full, events = compute_drift(h, day), compute_drift(h, day, with_state=False)
    assert "sudden_drift" in set(full.anomalies["anomaly_type"])
    pd.testing.assert_frame_equal(events.anomalies, full.anomalies)
    assert not full.customers.empty and events.customers.empty and events.n_axis_rows == 0
    assert list(events.customers.columns) == list(full.customers.columns)


def test_population_drift_share_shift_and_psi():
    rng = np.random.default_rng(1)
    ref = pd.DataFrame({COLS[0]: np.r_[np.ones(80), np.zeros(20)], COLS[2]: np.r_[np.zeros(80), np.ones(20)],
                        f"f:{AXIS}.avg_order_value": rng.normal(50, 5, 100)})
    cur = pd.DataFrame({COLS[0]: np.r_[np.ones(50), np.zeros(50)], COLS[2]: np.r_[np.zeros(50), np.ones(50)],
                        f"f:{AXIS}.avg_order_value": rng.normal(80, 5, 100)})
    out = population_drift(ref, cur, "2026-10-01", "2026-10-28").set_index("axis").loc[AXIS]
    assert out["segment_share_shift"] == pytest.approx(0.3)
    assert out["feature_psi"] > 1.0  # the whole distribution moved
    same = population_drift(ref, ref, "2026-10-01", "2026-10-28").set_index("axis").loc[AXIS]
    assert same["segment_share_shift"] == 0 and same["feature_psi"] == pytest.approx(0.0, abs=1e-9)
    assert psi(np.arange(100.0), np.arange(100.0)) == pytest.approx(0.0, abs=1e-12)


def _population_drift_of_whole_frames(reference, current, reference_date, as_of):
    """population_drift as it was computed from two whole frames, before it read dates slice by slice."""
    rows = []
    member_cols = [c for c in reference.columns.union(current.columns) if not c.startswith("f:")]
    for axis in dict.fromkeys(c.split(".", 1)[0] for c in member_cols):
        cols = [c for c in member_cols if c.startswith(axis + ".")]
        shares = {}
        for label, frame in (("reference", reference), ("current", current)):
            block = frame.reindex(columns=cols).fillna(0.0).to_numpy()
            has = block.sum(axis=1) > 0
            shares[label] = np.bincount(block[has].argmax(axis=1), minlength=len(cols)) / max(int(has.sum()), 1)
        feature_cols = [c for c in reference.columns.intersection(current.columns) if c.startswith(f"f:{axis}.")]
        by_feature = {c.split(".", 1)[1]: round(psi(reference[c].to_numpy("float64"), current[c].to_numpy("float64")), 6) for c in feature_cols}
        finite = [v for v in by_feature.values() if np.isfinite(v)]
        rows.append({"as_of_date": as_of, "axis": axis, "reference_date": reference_date, "n_reference": len(reference),
                     "n_current": len(current), "segment_share_shift": round(0.5 * float(np.abs(shares["current"] - shares["reference"]).sum()), 6),
                     "feature_psi": round(float(np.mean(finite)), 6) if finite else None,
                     "segment_shares": {c.split(".", 1)[1]: {"reference": round(float(p), 6), "current": round(float(q), 6)}
                                        for c, p, q in zip(cols, shares["reference"], shares["current"])},
                     "feature_psi_by_feature": by_feature})
    return pd.DataFrame(rows, columns=POPULATION_COLUMNS)


@pytest.mark.parametrize("columns_differ", [False, True])
def test_population_drift_read_slice_by_slice_is_the_whole_frames_drift(columns_differ):
    """Slices of any size give the whole frames' rows bit for bit: equal memberships (ties) go to the first segment in
    the order of both dates' columns, NaN memberships count as 0, features' NaN are left out, a date may lack a
    segment (a refit) and a feature may be all NaN."""
    rng = np.random.default_rng(7)

    def frame(n, segments, shift):
        u = np.round(rng.dirichlet(np.ones(len(segments)), n), 2)
        u[: n // 10] = 1.0 / len(segments)  # ties
        u[n // 10: n // 8, :2] = 0.5
        u[n // 10: n // 8, 2:] = 0.0
        out = pd.DataFrame(u, columns=[f"{AXIS}.{s}" for s in segments])
        out.iloc[5:9, 0] = np.nan
        out["other.a"], out["other.b"] = rng.random(n), rng.random(n)
        out[f"f:{AXIS}.avg_order_value"] = rng.normal(50 + shift, 5, n)
        out.loc[rng.random(n) < 0.05, f"f:{AXIS}.avg_order_value"] = np.nan
        out[f"f:{AXIS}.empty"] = np.nan
        out["f:other.x"] = rng.integers(0, 4, n).astype(float)  # few distinct values: merged bins
        return out

    segments = ["minimal_spender", "mid_spender", "premium_spender", "z_whale"]
    reference = frame(997, segments, 0.0)
    current = frame(1201, segments[1:] + ["a_new"] if columns_differ else segments, 8.0)
    expected = _population_drift_of_whole_frames(reference, current, "2026-10-01", "2026-10-28")
    assert expected.loc[expected["axis"] == AXIS, "segment_share_shift"].iloc[0] > 0
    for every in (1, 50, 333, 5000):
        ref = PopulationSide()
        for start in range(0, len(reference), every):
            ref.add(reference.iloc[start:start + every])
        cur = PopulationSide(ref.binned())
        for start in range(0, len(current), every):
            cur.add(current.iloc[start:start + every])
        pd.testing.assert_frame_equal(population_rows(ref, cur, "2026-10-01", "2026-10-28"), expected)
    pd.testing.assert_frame_equal(population_drift(reference, current, "2026-10-01", "2026-10-28"), expected)
    with pytest.raises(SlicesDiffer):
        side = PopulationSide()
        side.add(reference)
        side.add(reference[reference.columns[::-1]])


def test_an_empty_slice_of_customers_gives_empty_tables():
    empty = MembershipHistory.from_frame(pd.DataFrame(columns=["customer_id", "snapshot_date", "churn_risk_score", "archetype_name"]), [])
    tables = compute_drift(empty, "2026-10-31")
    assert tables.customers.empty and tables.axes.empty and tables.anomalies.empty
    assert list(tables.anomalies.columns)[:3] == ["customer_id", "as_of_date", "anomaly_type"]


def test_a_strong_change_in_the_customers_own_orders_is_an_anomaly_even_where_the_segment_cannot_show_it():
    """A premium spender whose orders grow 4-fold stays premium: no sudden drift, but a behavior_change anomaly on the
    day the change is first detected, with its evidence; a 1.7-fold change is no anomaly; a fall to a tenth is one."""
    from quimbi_pipeline.history.snapshot_blocks import FEATURE_PREFIX
    from quimbi_pipeline.model.features import CHANGE_PREFIX

    since = pd.Timestamp("2026-10-10").value // 86_400_000_000_000
    rows = []
    for customer, before, after in (("p", 60.0, 250.0), ("w", 60.0, 100.0), ("d", 300.0, 30.0)):
        for day, detected in (("2026-10-20", False), ("2026-10-21", True)):
            change = {f"{FEATURE_PREFIX}{CHANGE_PREFIX}{AXIS}.{k}": (v if detected else np.nan)
                      for k, v in (("since", since), ("before", np.log1p(before)), ("after", np.log1p(after)))}
            rows.append({"customer_id": customer, "snapshot_date": pd.Timestamp(day), "churn_risk_score": 0.1, "archetype_name": "x",
                         **dict(zip(COLS, (0.05, 0.05, 0.9))), **change})
    h = MembershipHistory.from_frame(pd.DataFrame(rows), COLS)
    found = anomalies_at(h, pd.Timestamp("2026-10-21")).set_index("customer_id")
    assert found["anomaly_type"].to_dict() == {"d": "behavior_change", "p": "behavior_change"}
    assert found.loc["p", "description"] == ("purchase_value: typical order value rose 4.2-fold in the customer's own orders, which their "
                                             "segment (premium_spender) does not show; evidence: typical order value 60.0 -> 250.0 since 2026-10-10")
    assert found.loc["d", "description"].startswith("purchase_value: typical order value fell 10.0-fold in the customer's own orders")
    assert found.loc["p", "severity"] == pytest.approx(np.log(250 / 60) / np.log(10), abs=1e-3)
    assert anomalies_at(h, pd.Timestamp("2026-10-22")).empty  # reported once, on the day it is first detected


def test_number_text_is_numpys_text_of_each_number():
    """_number_text writes each float by repr; that must be numpy's astype(str) text, which the drift tables
    always held (shortest round-trip digits, the same switch to exponents), at every magnitude and sign."""
    from quimbi_pipeline.drift.measures import _finite_text, _number_text

    rng = np.random.default_rng(5)
    values = np.concatenate([
        rng.standard_normal(20_000) * 10.0 ** rng.integers(-30, 30, 20_000),
        np.round(rng.random(5_000), 6), np.round(rng.standard_normal(5_000) * 1e4, 2),
        [0.0, -0.0, 1e16, 1e-4, 9.999e-5, 1e15, 123456789012345678.0, 5e-324, 1.7976931348623157e308, 0.1, 1 / 3, 1e22],
    ])
    assert _number_text(values).tolist() == values.astype(str).tolist()
    # Not finite: 0 (callers show only rows that have a value).
    assert _number_text(np.array([np.nan, np.inf, -np.inf, 2.5])).tolist() == ["0.0", "0.0", "0.0", "2.5"]
    # The Arrow twin that drift's axes text is joined from writes the same text.
    with_non_finite = np.r_[values, np.nan, np.inf, -np.inf]
    assert _finite_text(with_non_finite).to_pylist() == _number_text(with_non_finite).tolist()


def test_a_move_the_ladder_cannot_order_takes_the_direction_of_its_detected_change():
    """rare and rare_2 share the lowest rung, so a stopped monthly buyer's move from one to the other does not move
    the ladder position. With a new frequency change backing it (change detection on), the move is degrading; without
    a change, or with the change already held at the window's first snapshot, it stays stable; a change with no move
    shows no direction either."""
    from quimbi_pipeline.history.snapshot_blocks import FEATURE_PREFIX
    from quimbi_pipeline.model.features import CHANGE_PREFIX

    axis = "purchase_frequency"
    cols = [f"{axis}.rare", f"{axis}.rare_2", f"{axis}.very_frequent"]
    since = pd.Timestamp("2026-09-01").value // 86_400_000_000_000
    stay, move = (0.97, 0.02, 0.01), (0.02, 0.97, 0.01)
    # customer: (memberships first, last), (change held first, last)
    cases = {"stopped": ((stay, move), (False, True)), "unbacked": ((stay, move), (False, False)),
             "old_change": ((stay, move), (True, True)), "unmoved": ((stay, stay), (False, True))}
    rows = []
    for customer, (members, held) in cases.items():
        for day, u, has in zip(("2026-10-01", "2026-10-21"), members, held):
            change = {f"{FEATURE_PREFIX}{CHANGE_PREFIX}{axis}.{k}": (v if has else np.nan) for k, v in (("since", since), ("before", 1.0), ("after", 0.0))}
            rows.append({"customer_id": customer, "snapshot_date": pd.Timestamp(day), "churn_risk_score": 0.1, "archetype_name": "x",
                         **dict(zip(cols, u)), **change})
    h = MembershipHistory.from_frame(pd.DataFrame(rows), cols)
    axes = axis_frame(window_drift(h, pd.Timestamp("2026-10-21"), 28)[1]).set_index("customer_id")
    assert axes["direction"].to_dict() == {"old_change": "stable", "stopped": "degrading", "unbacked": "stable", "unmoved": "stable"}
    assert axes.loc["stopped", "drift_score"] > 0.9
    # Without change detection (no evidence columns: every flag off) the same move is stable, as the ladder has it.
    plain = MembershipHistory.from_frame(pd.DataFrame(rows)[["customer_id", "snapshot_date", "churn_risk_score", "archetype_name", *cols]], cols)
    assert set(axis_frame(window_drift(plain, pd.Timestamp("2026-10-21"), 28)[1])["direction"]) == {"stable"}


def test_a_small_historys_windows_computed_in_one_pass_equal_each_window_computed_alone(monkeypatch):
    """compute_drift stacks a small history's windows into one pass (drift/measures.STACKED_WINDOW_ROWS); every row,
    number and text of every window is the one computing that window alone gives, windows without rows included."""
    from quimbi_pipeline.drift import measures
    from quimbi_pipeline.history.snapshot_blocks import FEATURE_PREFIX
    from quimbi_pipeline.model.features import CHANGE_PREFIX

    rng = np.random.default_rng(3)
    days = pd.date_range("2025-11-03", "2026-10-31")
    since = pd.Timestamp("2026-09-01").value // 86_400_000_000_000
    rows = []
    for i in range(60):
        # Customers who joined at different times, with snapshots on a random third of the days (some on D, some not).
        seen = days[days >= days[rng.integers(0, days.size)]]
        seen = seen[rng.random(seen.size) < 0.3]
        u = rng.dirichlet(np.ones(3), size=seen.size)
        for day, row in zip(seen, u):
            detected = i % 3 == 0 and day >= pd.Timestamp("2026-09-15")
            change = {f"{FEATURE_PREFIX}{CHANGE_PREFIX}{AXIS}.{k}": (v if detected else np.nan)
                      for k, v in (("since", since), ("before", np.log1p(50.0)), ("after", np.log1p(200.0 if i % 2 else 10.0)))}
            rows.append({"customer_id": f"c{i:03d}", "snapshot_date": day, "churn_risk_score": float(rng.random()),
                         "archetype_name": f"a{int(rng.integers(0, 3))}", **dict(zip(COLS, row)), **change})
    frame = pd.DataFrame(rows)
    windows = (0, 7, 28, 90, 180, 365)  # the 0-day window holds one snapshot a customer: no rows
    # The store, and one customer alone (each window's rows then start with the customer the previous window's end).
    stacked = {}
    for name, part in (("store", frame), ("one customer", frame[frame["customer_id"] == "c000"])):
        h = MembershipHistory.from_frame(part, COLS)
        stacked[name] = compute_drift(h, "2026-10-31", windows)
        with monkeypatch.context() as m:
            m.setattr(measures, "STACKED_WINDOW_ROWS", 0)
            alone = compute_drift(h, "2026-10-31", windows)
        assert set(stacked[name].customers["window_days"]) == {7, 28, 90, 180, 365}
        pd.testing.assert_frame_equal(stacked[name].customers, alone.customers, check_exact=True)
        pd.testing.assert_frame_equal(stacked[name].axes, alone.axes, check_exact=True)
        assert [(p["window_days"], p["axis"]) for p in stacked[name].axis_parts] == [(p["window_days"], p["axis"]) for p in alone.axis_parts]
        assert [list(p) for p in stacked[name].axis_parts] == [list(p) for p in alone.axis_parts]
    whole = stacked["store"].customers
    assert whole["recommendations"].ne("[]").any() and whole["axes"].str.contains('"improving"|"degrading"').any()
