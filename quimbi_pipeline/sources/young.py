"""Young and small stores, for judging churn, the next-order date and the signals where most merchants are.

The demo's young store (`quimbi demo`), and the young stores benchmarks/truth.py and the tests judge churn
on. A store opens at `start` and is evaluated `months` later (the as-of date D); the truth is what each
customer does in the `horizon_days` after D. Customers join over the store's life (a launch, then a
trickle) and buy as renewal processes, like planted.py's: regular (Gamma gaps, shape 16) or
Poisson-like (exponential gaps), at a weekly, fortnightly or monthly cadence. A share stops 3 to 8
weeks before D (lapsed, and silent for several of their own usual gaps by D); a smaller share stops
at a random time in the horizon; everyone else keeps buying. Vectorized numpy; the same arguments
give the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from quimbi_pipeline.sources.demo import CATEGORIES, DAY_S, id_strings

CADENCE_DAYS = np.array([7.0, 14.0, 30.0])
REGULAR_SHAPE = 16.0  # Gamma shape of a regular buyer's gaps (coefficient of variation 0.25)

STOP_BEFORE_DAYS = (21.0, 56.0)  # stoppers' last chance to buy: 3 to 8 weeks before D
LATE_STOP_SHARE = 0.1  # customers who stop at a random time in the horizon
VALUE_RISE = 4.0  # a value change: every order from the change on is 4 times the customer's usual


def renewal_times(starts: np.ndarray, ends: np.ndarray, mean_gap: np.ndarray, shape: np.ndarray, rng,
                  running: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(customer index, time) of the purchases of one renewal process per customer in [start, end). `running`: the
    process is already under way at `start` (the first purchase at a uniform phase of a gap, as after a change of
    cadence); False: a purchase at `start` starts the clock (the first gap after a joining order is a whole gap)."""
    n = starts.size
    if n == 0:
        return np.zeros(0, dtype="int64"), np.zeros(0)
    need = np.ceil(np.maximum(ends - starts, 0) / (mean_gap * DAY_S) * 1.6 + 8).astype("int64")
    cust = np.repeat(np.arange(n), need)
    k = shape[cust]
    gaps = rng.gamma(k, mean_gap[cust] * DAY_S / k)
    # The first event at a uniform phase of a gap: the process is already running at `start` (drawn either way, so
    # the rest of the stream is the same).
    first = np.r_[True, cust[1:] != cust[:-1]]
    phase = rng.random(cust.size)
    gaps = np.where(first & running, gaps * phase, gaps)
    csum = np.cumsum(gaps)
    group_start = np.repeat(np.flatnonzero(first), need)
    offset = np.where(group_start > 0, csum[np.maximum(group_start - 1, 0)], 0.0)
    times = starts[cust] + (csum - offset)
    keep = times < ends[cust]
    return cust[keep], times[keep]


@dataclass(frozen=True)
class YoungStore:
    orders: pd.DataFrame
    as_of: pd.Timestamp
    horizon_days: int
    # customer_id, buyer_type, cadence_days, stop_ts (NaT: never), stopped_before (stopped 3-8 weeks before D),
    # next_order_ts (first order after D, NaT if none in the horizon), lapsed (no order in the horizon),
    # value_change_ts (NaT: none)
    customers: pd.DataFrame


def generate_young(n_customers: int = 300, months: int = 4, seed: int = 0, *, regular_share: float = 0.7,
                   stop_share: float = 0.2, horizon_days: int = 90, start: str = "2026-01-01", store_id: str = "young",
                   stop_before_days: tuple[float, float] = STOP_BEFORE_DAYS, value_rise_share: float = 0.0) -> YoungStore:
    """`stop_before_days`: when the stoppers stop, in days before D. `value_rise_share`: customers (not stoppers)
    whose order value rises VALUE_RISE-fold at a time in the same window (value_change_ts)."""
    rng = np.random.default_rng(seed)
    n = n_customers
    t0 = pd.Timestamp(start).value / 1e9
    as_of = pd.Timestamp(start) + pd.DateOffset(months=months) - pd.Timedelta(days=1)
    d_end = (as_of + pd.Timedelta(days=1)).value / 1e9  # the end of D
    t_end = d_end + horizon_days * DAY_S
    life_days = (d_end - t0) / DAY_S
    regular = rng.random(n) < regular_share
    shape = np.where(regular, REGULAR_SHAPE, 1.0)
    cadence = CADENCE_DAYS[rng.choice(3, n, p=[0.35, 0.3, 0.35])]
    # Half join in the launch month, the rest over the store's life up to two weeks before D.
    launch = rng.random(n) < 0.5
    join_day = np.where(launch, rng.uniform(0, min(30.0, life_days - 14), n), rng.uniform(0, life_days - 14, n))
    join = t0 + join_day * DAY_S
    # Stoppers need a joining date before their stop: the earliest joiners are chosen.
    stop_before = d_end - rng.uniform(*stop_before_days, n) * DAY_S
    can_stop_before = join < stop_before - 7 * DAY_S
    stopped_before = can_stop_before & (rng.random(n) < stop_share / max(can_stop_before.mean(), 1e-9))
    late = ~stopped_before & (rng.random(n) < LATE_STOP_SHARE)
    stop = np.where(stopped_before, stop_before, np.where(late, rng.uniform(d_end, t_end, n), t_end))
    # The first order at joining starts each customer's clock: their second comes a whole gap later. (Until
    # 2026-12-05 it came at a uniform phase of a gap, so every regular buyer's first gap was short and their gaps
    # looked irregular: docs/signals.md.)
    cust, ts = renewal_times(join, stop, cadence, shape, rng, running=False)
    cust = np.concatenate([np.arange(n), cust])
    ts = np.concatenate([join, ts])
    order = np.lexsort((ts, cust))
    cust, ts = cust[order], ts[order]
    value = np.exp(rng.normal(np.log(60.0), 0.8, n))
    m = cust.size
    total = np.round(value[cust] * np.exp(rng.normal(0, 0.15, m)), 2)
    customer_ids = id_strings("y", np.arange(n), width=5)
    orders = pd.DataFrame({
        "order_id": id_strings("o", np.arange(m), width=7), "customer_id": customer_ids[cust], "store_id": store_id,
        "order_ts": (np.floor(ts).astype("int64") * 1_000_000).astype("datetime64[us]"), "order_total": total,
        "item_count": 1 + rng.poisson(1.0, m), "category": CATEGORIES[rng.integers(0, len(CATEGORIES), m)],
    })
    # Drawn after everything above, so a store without value changes is the same with or without this option. A rise
    # comes a week or more after the customer's first order, as a stop does: a customer whose every order is 4 times
    # the others' never changed. (Until 2026-12-07 the week was counted from the customer's unused stop time, another
    # draw, so a few "rises" came before the customer's first order.)
    chosen = rng.random(n) < value_rise_share
    rise_at = d_end - rng.uniform(*stop_before_days, n) * DAY_S
    rises = ~stopped_before & (join < rise_at - 7 * DAY_S) & chosen
    rise_ts = np.where(rises, rise_at, np.inf)
    orders["order_total"] = np.where(ts >= rise_ts[cust], np.round(total * VALUE_RISE, 2), total)
    after = ts >= d_end
    first_after = np.full(n, np.inf)
    np.minimum.at(first_after, cust[after], ts[after])
    customers = pd.DataFrame({
        "customer_id": customer_ids.to_numpy(object), "buyer_type": np.where(regular, "regular", "poisson"), "cadence_days": cadence,
        "stop_ts": pd.to_datetime(np.where(stop < t_end, stop, np.nan), unit="s"), "stopped_before": stopped_before,
        "next_order_ts": pd.to_datetime(np.where(np.isfinite(first_after), first_after, np.nan), unit="s"),
        "lapsed": ~np.isfinite(first_after),
        "value_change_ts": pd.to_datetime(np.where(rises, rise_ts, np.nan), unit="s"),
    })
    return YoungStore(orders, as_of, horizon_days, customers)
