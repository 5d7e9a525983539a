"""A deterministic synthetic stock market with learnable cross-sectional structure (pure numpy).

Daily return of stock i on day t (simple, then clipped to the ±10% limit band)::

    r = alpha + beta_i * market_t + sector_{s(i),t} + idio_{i,t} + jump_{i,t}
    alpha = MOMENTUM * z(past 60→5 day return) - REVERSAL * z(past 5 day return)

where z() is a cross-sectional rank z-score over the stocks trading that day. Prices are qlib's
*adjusted* prices; the adjustment factor jumps at splits/dividends so raw = adjusted / factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SECTORS: tuple[str, ...] = (
    "Energy",
    "Materials",
    "Industrials",
    "ConsumerDiscretionary",
    "ConsumerStaples",
    "HealthCare",
    "Financials",
    "InformationTechnology",
    "Communication",
    "Utilities",
)
# Fixed (month, day) holidays dropped from the weekday calendar: New Year, Labour Day, National Day.
HOLIDAYS: frozenset[tuple[int, int]] = frozenset(
    {(1, 1), (5, 1), (5, 2), (5, 3), *((10, d) for d in range(1, 8))}
)
FIELDS: tuple[str, ...] = ("open", "high", "low", "close", "volume", "vwap", "amount", "factor", "change")

LIMIT = 0.10  # A-share style daily price limit
# Expected daily return per unit of rank z-score. Sized so the cross-sectional signal-to-noise
# (~0.09) lands a learnt model in the range of real alphas (rank IC ~0.03-0.08), not far above it.
MOMENTUM = 0.0011
REVERSAL = 0.0014
MOM_WINDOW = (60, 5)  # momentum: return from t-60 to t-5 ...
REV_WINDOW = 5  # ... reversal: return over the last 5 days, so the two do not overlap
MARKET_VOL, MARKET_DRIFT, SECTOR_VOL = 0.011, 0.0003, 0.006
JUMP_PROB = 0.003  # news days: most of these hit the limit
SUSPENDED_SHARE, ADJUSTED_SHARE, IPO_SHARE, DELISTED_SHARE = 0.10, 0.06, 0.04, 0.02


@dataclass(frozen=True)
class SyntheticMarket:
    """Simulated bars: each field a (days, instruments) float64 array, NaN outside trading."""

    calendar: pd.DatetimeIndex
    symbols: tuple[str, ...]
    sectors: tuple[str, ...]
    fields: dict[str, np.ndarray]
    first: np.ndarray  # index of each instrument's first bar
    last: np.ndarray  # index of each instrument's last bar
    benchmark: dict[str, np.ndarray]  # (days,) arrays, same field names


def trading_calendar(start: str, end: str) -> pd.DatetimeIndex:
    """Weekdays from ``start`` to ``end`` minus the fixed holidays."""
    days = pd.bdate_range(start, end)
    keep = [(d.month, d.day) not in HOLIDAYS for d in days]
    return days[np.asarray(keep, dtype=bool)]


def _rank_z(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Cross-sectional rank z-score of ``x`` over ``ok`` (uniform ranks scaled to unit variance), 0 elsewhere."""
    out = np.zeros_like(x)
    n = int(ok.sum())
    if n < 2:
        return out
    ranks = np.empty(n)
    ranks[np.argsort(x[ok], kind="stable")] = np.arange(n)
    out[ok] = ((ranks + 0.5) / n - 0.5) * np.sqrt(12.0)
    return out


def _pick(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    """At least one (when n allows) of ``n`` instruments, about ``share`` of them."""
    k = min(n, max(1, round(share * n)))
    return np.sort(rng.choice(n, size=k, replace=False))


def simulate_market(n: int, calendar: pd.DatetimeIndex, seed: int) -> SyntheticMarket:
    """Simulate ``n`` instruments over ``calendar``; the same seed gives the same arrays."""
    rng = np.random.default_rng(seed)
    t_len = len(calendar)
    if t_len < 2:
        raise ValueError("the sample needs at least two trading days")
    symbols = tuple(f"SYN{i + 1:04d}" for i in range(n))
    sector_of = rng.integers(0, len(SECTORS), size=n)
    beta = rng.uniform(0.6, 1.4, size=n)
    idio_vol = rng.uniform(0.012, 0.024, size=n)
    price0 = np.clip(np.exp(rng.normal(np.log(15.0), 0.6, size=n)), 2.0, 300.0)
    turnover = np.exp(rng.normal(np.log(8e7), 0.7, size=n))  # currency traded on an ordinary day

    # Listing spans: most trade throughout; a few list late or delist early.
    first = np.zeros(n, dtype=np.int64)
    last = np.full(n, t_len - 1, dtype=np.int64)
    if t_len >= 80 and n >= 20:
        ipo = _pick(rng, n, IPO_SHARE)
        first[ipo] = rng.integers(20, t_len // 2, size=len(ipo))
        late = _pick(rng, n, DELISTED_SHARE)
        last[late] = np.maximum(first[late] + 30, rng.integers(t_len // 2, t_len - 20, size=len(late)))

    # Suspensions: runs of missing bars strictly inside the span (so the span's ends are real bars).
    suspended = np.zeros((t_len, n), dtype=bool)
    for i in _pick(rng, n, SUSPENDED_SHARE):
        for _ in range(rng.integers(1, 3)):
            length = int(rng.integers(1, 16))
            lo, hi = first[i] + 1, last[i] - length
            if hi > lo:
                s = int(rng.integers(lo, hi))
                suspended[s : s + length, i] = True

    # Shocks, drawn up front so the day loop stays a few vector ops.
    market = MARKET_DRIFT + MARKET_VOL * rng.standard_t(5, size=t_len) / np.sqrt(5 / 3)
    sector = rng.normal(0.0, SECTOR_VOL, size=(t_len, len(SECTORS)))
    idio = idio_vol * rng.standard_t(4, size=(t_len, n)) / np.sqrt(2.0)
    jumps = np.where(
        rng.random((t_len, n)) < JUMP_PROB,
        rng.choice([-1.0, 1.0], size=(t_len, n)) * rng.uniform(0.06, 0.2, (t_len, n)),
        0.0,
    )
    gap_noise = rng.normal(0.0, 0.004, size=(t_len, n))
    wick = np.abs(rng.normal(0.0, 0.008, size=(2, t_len, n)))
    volume_noise = rng.normal(0.0, 0.35, size=(t_len, n))

    listed = (np.arange(t_len)[:, None] >= first) & (np.arange(t_len)[:, None] <= last)
    trading = listed & ~suspended
    close = np.full((t_len, n), np.nan)
    prev_close = np.full((t_len, n), np.nan)  # last traded close before each bar (NaN on a first bar)
    log_p = np.full((t_len, n), np.nan)  # forward-filled log close, the history the signals look at
    last_close = np.full(n, np.nan)
    mom_far, mom_near = MOM_WINDOW
    for t in range(t_len):
        act = trading[t]
        if t > mom_far:
            mom = log_p[t - 1 - mom_near] - log_p[t - 1 - mom_far]
            rev = log_p[t - 1] - log_p[t - 1 - REV_WINDOW]
            alpha = MOMENTUM * _rank_z(mom, act & np.isfinite(mom)) - REVERSAL * _rank_z(
                rev, act & np.isfinite(rev)
            )
        else:
            alpha = np.zeros(n)
        ret = alpha + beta * market[t] + sector[t, sector_of] + idio[t] + jumps[t]
        ret = np.clip(ret, -LIMIT, LIMIT)
        has_prev = np.isfinite(last_close)
        today = np.where(has_prev, last_close * (1.0 + ret), price0)
        close[t, act] = today[act]
        prev_close[t, act] = last_close[act]
        last_close = np.where(act, today, last_close)
        log_p[t] = np.where(listed[t] & np.isfinite(last_close), np.log(last_close), np.nan)

    # Intraday bars around the close, kept inside the limit band of the previous close.
    ref = np.where(np.isfinite(prev_close), prev_close, close)
    change = close / prev_close - 1.0
    day_ret = np.nan_to_num(change)
    lo_band, hi_band = ref * (1 - LIMIT), ref * (1 + LIMIT)
    open_ = np.clip(ref * (1.0 + 0.3 * day_ret + gap_noise), lo_band, hi_band)
    high = np.minimum(np.maximum(open_, close) * (1.0 + wick[0]), hi_band)
    low = np.maximum(np.minimum(open_, close) * (1.0 - wick[1]), lo_band)
    high, low = np.maximum(high, np.maximum(open_, close)), np.minimum(low, np.minimum(open_, close))
    vwap = (high + low + close) / 3.0

    # Adjustment factor: piecewise constant, jumping up at splits (x1.5, x2) and cash dividends.
    factor = np.ones((t_len, n))
    for i in _pick(rng, n, ADJUSTED_SHARE):
        for _ in range(rng.integers(1, 3)):
            day = int(rng.integers(first[i] + 1, last[i] + 1))
            step = rng.choice([1.5, 2.0]) if rng.random() < 0.4 else 1.0 + rng.uniform(0.005, 0.04)
            factor[day:, i] *= step
    # Volume: raw shares traded in 100-share lots; qlib stores adjusted volume = raw / factor.
    amount_target = turnover * np.exp(volume_noise) * (1.0 + 15.0 * np.abs(day_ret))
    raw_volume = np.maximum(np.round(amount_target / (vwap / factor) / 100.0), 1.0) * 100.0
    volume = raw_volume / factor
    amount = volume * vwap

    fields = {"open": open_, "high": high, "low": low, "close": close, "volume": volume, "vwap": vwap}
    fields |= {"amount": amount, "factor": factor, "change": change}
    for name, arr in fields.items():
        arr[~trading] = np.nan
        fields[name] = arr
    return SyntheticMarket(
        calendar=calendar,
        symbols=symbols,
        sectors=tuple(SECTORS[s] for s in sector_of),
        fields=fields,
        first=first,
        last=last,
        benchmark=_equal_weighted_index(fields, trading),
    )


def _equal_weighted_index(fields: dict[str, np.ndarray], trading: np.ndarray) -> dict[str, np.ndarray]:
    """An equal-weighted index of the trading stocks, starting at 1000."""

    def mean(rel: np.ndarray) -> np.ndarray:
        rel = np.where(trading & np.isfinite(rel), rel, np.nan)
        counts = np.isfinite(rel).sum(axis=1)
        return np.where(counts > 0, np.nansum(rel, axis=1) / np.maximum(counts, 1), 0.0)

    close_s, prev_s = fields["close"], fields["close"] / (1.0 + fields["change"])
    ret = mean(fields["change"])
    ret[0] = 0.0
    close = 1000.0 * np.cumprod(1.0 + ret)
    prev = np.concatenate([[close[0]], close[:-1]])
    open_ = prev * (1.0 + mean(fields["open"] / prev_s - 1.0))
    top, bottom = np.maximum(open_, close), np.minimum(open_, close)
    high = top * (1.0 + mean(fields["high"] / np.maximum(fields["open"], close_s) - 1.0))
    low = bottom * (1.0 + mean(fields["low"] / np.minimum(fields["open"], close_s) - 1.0))
    volume = np.nansum(np.where(trading, fields["volume"] * fields["factor"], 0.0), axis=1)
    amount = np.nansum(np.where(trading, fields["amount"], 0.0), axis=1)
    change = np.concatenate([[np.nan], close[1:] / close[:-1] - 1.0])
    return {
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": volume,
        "vwap": (high + low + close) / 3.0,
        "amount": amount,
        "factor": np.ones_like(close),
        "change": change,
    }
