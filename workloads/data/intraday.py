"""Synthetic 1-minute bars that aggregate exactly to given daily bars (pure numpy).

For each trading day of one instrument the 240 minutes of qlib's CN grid get:

- volume: the day's volume split in whole lots over a U-shaped profile (busy open, quiet lunch
  hours, busy close, a smaller burst after the lunch break) with per-minute noise;
- prices: a path from the day's open to its close through its high and its low (Brownian
  bridges between those anchors, their noise scaled by the minute's activity), reflected back
  into [low, high]; minute k runs from point k to point k+1, so the first minute opens at the
  day's open, the last closes at its close, and the day's high and low are each hit;
- vwap: the path's mid-price, the path bent (a power of its level within [low, high], fading to
  nothing at the anchors) so that the volume-weighted mean is the day's vwap, then an exact
  final blend;
- limit days: a day that closes at its limit seals there at some minute and every later minute
  is flat at the limit price, with thin volume.

Hence, for every day: first open = open, last close = close, max high = high, min low = low,
sum volume = volume and sum(vwap * volume) / sum(volume) = vwap (to float64 rounding).
"""

from __future__ import annotations

import numpy as np

from kubequant.workloads.data.sessions import bars_per_day

LOT = 100  # shares per board lot: minute volumes are whole lots (in raw, unadjusted shares)
BRIDGE_SCALE = 0.6  # path noise per minute, as a share of (high - low) / sqrt(240)
WICK_SCALE = 0.6  # a minute's wick relative to its path step
VOLUME_NOISE = 0.45  # log-normal noise on each minute's share of the day's volume
LOCKED_VOLUME = 0.15  # a minute sealed at the limit trades this much of its usual share ...
MAX_LOCKED_SHARE = 0.4  # ... and the sealed part of a day at most this share of the day's volume
SEAL_WINDOW = (20, 230)  # the minute a limit day seals for good, drawn in this range
BEND = 20.0  # the vwap fit raises the path's level (0 at low, 1 at high) to powers within e**±BEND
BEND_STEPS = 30  # bisection steps of that fit
MINUTE_FIELDS = ("open", "high", "low", "close", "volume", "vwap", "amount", "factor", "change")


def volume_profile() -> np.ndarray:
    """Expected share of a day's volume in each of the 240 minutes: U-shaped, a bump after lunch."""
    n = bars_per_day()
    half = n // 2
    k = np.arange(n, dtype=np.float64)
    morning, afternoon = k < half, k >= half
    profile = np.ones(n)
    profile[morning] += 2.2 * np.exp(-k[morning] / 10.0)  # the opening rush
    profile[afternoon] += 0.5 * np.exp(-(k[afternoon] - half) / 8.0)  # back from lunch
    profile += 1.6 * np.exp(-(n - 1 - k) / 12.0)  # the run into the close
    profile[0] *= 2.0  # the 09:30 bar holds the opening call auction's volume
    profile[-1] *= 2.0  # the 14:59 bar holds the closing call auction's volume
    normalised: np.ndarray = profile / profile.sum()
    return normalised


def simulate_minutes(
    bars: dict[str, np.ndarray],
    prev_close: np.ndarray,
    rng: np.random.Generator,
    *,
    limit: float | None,
) -> dict[str, np.ndarray]:
    """Minute bars for the given trading days of one instrument; each result is (days, 240).

    ``bars`` holds the days' open/high/low/close/volume/vwap/factor (1-D, all finite),
    ``prev_close`` the close of the bar before each day (NaN if there is none). ``limit`` is the
    daily price limit (0.1): a day whose close is that far from ``prev_close`` and equals its
    high (low) seals at the limit. The result also has ``amount``, ``factor`` and ``change``
    (each minute's close over the previous minute's, across the lunch break and overnight).
    """
    o, h, lo, c = (np.asarray(bars[k], dtype=np.float64) for k in ("open", "high", "low", "close"))
    v, w_day, f = (np.asarray(bars[k], dtype=np.float64) for k in ("volume", "vwap", "factor"))
    rows, n = len(o), bars_per_day()
    if rows == 0:
        return {k: np.empty((0, n)) for k in MINUTE_FIELDS}
    span = h - lo
    seal_up, seal_down = _sealed(c, h, lo, prev_close, limit)
    seal_at = np.where(seal_up | seal_down, rng.integers(*SEAL_WINDOW, size=rows, endpoint=True), n + 1)
    sealed_pts = np.arange(n + 1)[None, :] >= seal_at[:, None]  # path points pinned to the limit
    sealed_min = sealed_pts[:, :n]  # minutes that start sealed (open = close = limit)

    weights = _volume_weights(v * f, sealed_min, rng)
    t_high, t_low = _extreme_times(o, h, lo, c, seal_up, seal_down, seal_at, rng)

    # Anchors in time order, with the price at each; path point j lies between anchors lo_j and hi_j.
    times = np.stack([np.zeros(rows, dtype=np.int64), t_high, t_low, np.full(rows, n)], axis=1)
    prices = np.stack([o, h, lo, c], axis=1)
    order = np.argsort(times, axis=1, kind="stable")
    times, prices = np.take_along_axis(times, order, 1), np.take_along_axis(prices, order, 1)
    j = np.arange(n + 1)
    seg = (times[:, None, :] <= j[None, :, None]).sum(axis=2) - 1  # (rows, n+1) in 0..3
    t0 = np.take_along_axis(times, seg, 1)
    t1 = np.take_along_axis(times, np.minimum(seg + 1, 3), 1)
    p0 = np.take_along_axis(prices, seg, 1)
    p1 = np.take_along_axis(prices, np.minimum(seg + 1, 3), 1)
    length = np.maximum(t1 - t0, 1)
    frac = np.where(t1 > t0, (j - t0) / length, 0.0)

    activity = np.sqrt(volume_profile() * n)  # busier minutes move more
    steps = rng.standard_normal((rows, n)) * activity
    walk = np.concatenate([np.zeros((rows, 1)), np.cumsum(steps, axis=1)], axis=1)
    w0, w1 = np.take_along_axis(walk, t0, 1), np.take_along_axis(walk, np.minimum(t1, n), 1)
    bridge = walk - w0 - frac * (w1 - w0)  # zero at every anchor
    scale = (BRIDGE_SCALE * span / np.sqrt(n))[:, None]
    low_, high_, span_ = lo[:, None], h[:, None], span[:, None]
    noisy = _fold(p0 + frac * (p1 - p0) + scale * bridge, low_, span_)
    level = np.divide(noisy - low_, span_, out=np.zeros_like(noisy), where=span_ > 0)  # 0 at low, 1 at high
    level = np.where(sealed_pts, seal_up[:, None].astype(np.float64), level)  # pinned to the limit
    bump = np.where(sealed_pts, 0.0, np.sin(np.pi * frac))  # zero at every anchor

    def path(gamma: np.ndarray) -> np.ndarray:
        # A power of the level bends the path up (gamma > 0) or down, keeping low, high and the anchors.
        bent: np.ndarray = low_ + span_ * level ** np.exp(-gamma[:, None] * bump)
        return bent

    def weighted_mid(points: np.ndarray) -> np.ndarray:
        mid: np.ndarray = np.sum(weights * 0.5 * (points[:, :-1] + points[:, 1:]), axis=1)
        return mid

    # Bend the path until its volume-weighted mid-price is the day's vwap (monotone in gamma).
    g_lo, g_hi = np.full(rows, -BEND), np.full(rows, BEND)
    for _ in range(BEND_STEPS):
        mid = 0.5 * (g_lo + g_hi)
        above = weighted_mid(path(mid)) > w_day
        g_hi, g_lo = np.where(above, mid, g_hi), np.where(above, g_lo, mid)
    points = np.clip(path(0.5 * (g_lo + g_hi)), low_, high_)  # (rounding can overshoot by an ulp)
    # Anchors and sealed minutes hold by construction, up to rounding: set them exactly.
    points = np.where(sealed_pts, np.where(seal_up, h, lo)[:, None], points)
    points[:, 0], points[:, -1] = o, c
    np.put_along_axis(points, t_high[:, None], h[:, None], 1)
    np.put_along_axis(points, t_low[:, None], lo[:, None], 1)

    m_open, m_close = points[:, :-1], points[:, 1:]
    vwap = _exact_vwap(0.5 * (m_open + m_close), weights, w_day, lo, h, sealed_min)

    wick = WICK_SCALE * scale * activity * np.abs(rng.standard_normal((2, rows, n)))
    wick = np.where(sealed_min, 0.0, wick)
    m_high = np.maximum(np.minimum(np.maximum(m_open, m_close) + wick[0], high_), vwap)
    m_low = np.minimum(np.maximum(np.minimum(m_open, m_close) - wick[1], low_), vwap)

    volume = v[:, None] * weights
    return {
        "open": m_open,
        "high": m_high,
        "low": m_low,
        "close": m_close,
        "volume": volume,
        "vwap": vwap,
        "amount": volume * vwap,
        "factor": np.repeat(f[:, None], n, axis=1),
        # Against the previous day's close, the reference of the price limits (see importer.py).
        "change": m_close / prev_close[:, None] - 1.0,
    }


def _fold(x: np.ndarray, low: np.ndarray, span: np.ndarray) -> np.ndarray:
    """Reflect ``x`` off ``low`` and ``low + span`` until it lies between them (a wave keeps its wiggles)."""
    period = np.where(span > 0, 2 * span, 1.0)
    y = np.mod(x - low, period)
    folded: np.ndarray = low + np.where(y > span, period - y, y)
    return np.where(span > 0, folded, low)


def _exact_vwap(
    mid: np.ndarray,
    weights: np.ndarray,
    target: np.ndarray,
    lo: np.ndarray,
    h: np.ndarray,
    sealed: np.ndarray,
) -> np.ndarray:
    """Minute vwaps whose volume-weighted mean is exactly ``target``: blend ``mid`` towards high or low.

    The bent path already lands close, so the blend is tiny; sealed minutes stay at the limit
    unless the rest of the day cannot carry the target alone.
    """
    fit = np.sum(weights * mid, axis=1)
    up = (target > fit)[:, None]
    toward = np.where(up, h[:, None], lo[:, None])
    need = (target - fit)[:, None]

    def blend(movable: np.ndarray) -> np.ndarray:
        room = np.sum(np.where(movable, weights * (toward - mid), 0.0), axis=1, keepdims=True)
        return np.where(room != 0.0, need / np.where(room != 0.0, room, 1.0), 0.0)

    movable = ~sealed
    theta = blend(movable)
    movable |= theta > 1.0  # rows whose open minutes lack the room: move their sealed minutes too
    theta = blend(movable)
    return np.where(movable, mid + theta * (toward - mid), mid)


def _sealed(
    c: np.ndarray, h: np.ndarray, lo: np.ndarray, prev_close: np.ndarray, limit: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Days that close at the limit up (down): the close is the day's high (low) and the limit move."""
    if limit is None:
        none = np.zeros(len(c), dtype=bool)
        return none, none
    with np.errstate(invalid="ignore"):
        change = c / prev_close - 1.0
    moved = np.isfinite(change) & (h > lo)
    return moved & (c == h) & (change >= limit - 1e-6), moved & (c == lo) & (change <= -limit + 1e-6)


def _volume_weights(raw_volume: np.ndarray, sealed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each minute's share of its day's volume: whole lots drawn over the noisy U-shaped profile."""
    rows, n = sealed.shape
    share = volume_profile()[None, :] * np.exp(VOLUME_NOISE * rng.standard_normal((rows, n)))
    share = np.where(sealed, LOCKED_VOLUME * share, share)
    sealed_sum = np.sum(np.where(sealed, share, 0.0), axis=1, keepdims=True)
    open_sum = np.sum(share, axis=1, keepdims=True) - sealed_sum
    # Cap the sealed part so the rest of the day can still carry the day's vwap.
    cap = MAX_LOCKED_SHARE / (1 - MAX_LOCKED_SHARE) * open_sum
    shrink = np.where(sealed_sum > cap, cap / np.maximum(sealed_sum, 1e-300), 1.0)
    share = np.where(sealed, share * shrink, share)
    share /= share.sum(axis=1, keepdims=True)
    lots = np.round(raw_volume / LOT).astype(np.int64)
    drawn = rng.multinomial(np.maximum(lots, 0), share)
    return np.where(lots[:, None] > 0, drawn / np.maximum(lots, 1)[:, None], share)


def _extreme_times(
    o: np.ndarray,
    h: np.ndarray,
    lo: np.ndarray,
    c: np.ndarray,
    seal_up: np.ndarray,
    seal_down: np.ndarray,
    seal_at: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Path points (0..240) where the day's high and low are hit; a sealed day's extreme is its seal."""
    rows, n = len(o), bars_per_day()
    t_high = rng.integers(1, n, size=rows)  # interior points 1..239
    t_low = 1 + (t_high - 1 + rng.integers(1, n - 1, size=rows)) % (n - 1)  # interior, != t_high
    # An extreme that is the open (close) is hit at the first (last) point.
    t_high = np.where(h > np.maximum(o, c), t_high, np.where(o >= c, 0, n))
    t_low = np.where(lo < np.minimum(o, c), t_low, np.where(o <= c, 0, n))
    # A sealed day hits its limit at the seal, and its other extreme before that.
    before = 1 + (rng.random(rows) * np.maximum(seal_at - 1, 1)).astype(np.int64)  # 1..seal-1
    t_high = np.where(seal_up, seal_at, np.where(seal_down, np.where(h > o, before, 0), t_high))
    t_low = np.where(seal_down, seal_at, np.where(seal_up, np.where(lo < o, before, 0), t_low))
    return t_high.astype(np.int64), t_low.astype(np.int64)
