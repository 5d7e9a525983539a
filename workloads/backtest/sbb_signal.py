"""The trend signal of qlib's SBBStrategyEMA, computed the way qlib computes it, for the compiled levels.

SBBStrategyEMA (``qlib.contrib.strategy.rule_strategy``) reads ``EMA($close, 10) - EMA($close, 20)``
of the 1-minute bars each time its level is reset — once per order of the level above — over the
window from the bar before its first step to the bar before its last one. qlib's expression engine
starts both EMAs 19 minutes before that window (EMA(20)'s extended window; never before the first
stored bar) and runs pandas' ``ewm(span=N, min_periods=1).mean()`` from there, so the values depend
on where each window starts: they are recomputed here per window, with pandas' recurrence on the
same float32 closes, and cast to float32 as qlib's ``ExpressionD`` does. The trend a step uses is
the sign of the last non-NaN value in the bar before it (inside the instrument's listing spans),
MID when there is none or it is 0. The EMA is pandas' bit for bit (``tests/unit/test_sbb_signal.py``);
every fill is checked against qlib's NestedExecutor with SBBStrategyEMA
(``tests/integration/test_compiled_levels.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from numba import njit

MID, SHORT, LONG = 0, 1, 2  # SBBStrategyBase.TREND_MID / TREND_SHORT / TREND_LONG
EXTENSION = 19  # EMA(20)'s extended window in qlib: N - 1 bars before the window
SPAN_FAST, SPAN_SLOW = 10, 20


@njit(cache=True)
def ewm_mean(values: np.ndarray, span: float) -> np.ndarray:  # pragma: no cover - compiled
    """pandas' ``Series.ewm(span=span, min_periods=1).mean()`` (adjust=True, ignore_na=False), same operations."""
    n = values.shape[0]
    out = np.empty(n)
    if n == 0:
        return out
    com = (span - 1) / 2.0
    alpha = 1.0 / (1.0 + com)
    old_wt_factor = 1.0 - alpha
    new_wt = 1.0
    weighted = values[0]
    nobs = 1 if weighted == weighted else 0
    out[0] = weighted if nobs >= 1 else np.nan
    old_wt = 1.0
    for i in range(1, n):
        cur = values[i]
        is_observation = cur == cur
        if is_observation:
            nobs += 1
        if weighted == weighted:
            old_wt *= old_wt_factor
            if is_observation:
                if weighted != cur:
                    weighted = old_wt * weighted + new_wt * cur
                    weighted /= old_wt + new_wt
                old_wt += new_wt
        elif is_observation:
            weighted = cur
        out[i] = weighted if nobs >= 1 else np.nan
    return out


@njit(cache=True)
def window_trends(
    close: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    inside: np.ndarray,
    rows: np.ndarray,
    start: int,
    stop: int,
    bar_edges: np.ndarray,
) -> np.ndarray:  # pragma: no cover - compiled
    """Trend of each bar for each row of ``rows``, from the signal of one reset's window.

    ``close`` (rows × minutes, float32 values as float64): the stored closes, valid in columns
    [first[r], last[r]] (the stored bars); ``inside``: the listing spans. The window is columns
    [start, stop]; bar ``b`` is columns [bar_edges[b], bar_edges[b + 1]).
    """
    bars = bar_edges.shape[0] - 1
    out = np.zeros((rows.shape[0], bars), np.int8)
    for i in range(rows.shape[0]):
        r = rows[i]
        s0 = max(start - EXTENSION, first[r], 0)
        e0 = min(stop, last[r])
        if e0 < s0:
            continue
        values = close[r, s0 : e0 + 1]
        signal = (ewm_mean(values, SPAN_FAST) - ewm_mean(values, SPAN_SLOW)).astype(np.float32)
        lo_valid = max(start, s0)
        for b in range(bars):
            value = np.nan
            m = min(bar_edges[b + 1] - 1, e0)
            while m >= max(bar_edges[b], lo_valid):
                if inside[r, m] and not np.isnan(signal[m - s0]):
                    value = signal[m - s0]
                    break
                m -= 1
            if np.isnan(value) or value == 0:
                out[i, b] = MID
            elif value > 0:
                out[i, b] = LONG
            else:
                out[i, b] = SHORT
    return out


@dataclass
class SignalCloses:
    """The 1-minute closes SBBStrategyEMA's signal reads, loaded per instrument on first use.

    Columns are positions in qlib's whole 1-minute calendar (``calendar``); ``inside`` marks the
    instrument's listing spans of the market, as ``D.features`` masks them.
    """

    instruments: Any  # the market config (dict) or list SBBStrategyEMA is given
    calendar: np.ndarray  # qlib's 1-minute calendar (datetime64)
    lo: int  # first calendar position that may be read
    hi: int  # last calendar position that may be read
    row: dict[str, int] = field(default_factory=dict)
    close: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    first: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    last: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    inside: np.ndarray = field(default_factory=lambda: np.empty((0, 0), bool))
    spans: dict[str, Any] | None = None

    @classmethod
    def for_period(cls, instruments: Any, start: pd.Timestamp, end: pd.Timestamp) -> SignalCloses:
        """Closes readable from a day before ``start`` (the first window's extension) to ``end``."""
        from qlib.data.data import Cal

        calendar = np.asarray(Cal.calendar(freq="1min"), dtype="datetime64[ns]")
        first_minute = int(np.searchsorted(calendar, np.datetime64(pd.Timestamp(start)), "left"))
        lo = max(first_minute - 240 - 2 * EXTENSION, 0)  # the day before: its last bar and the extension
        hi = int(np.searchsorted(calendar, np.datetime64(pd.Timestamp(end)), "right")) - 1
        return cls(instruments=instruments, calendar=calendar, lo=lo, hi=hi)

    def _spans(self) -> dict[str, Any]:
        if self.spans is None:
            from qlib.data import D

            if isinstance(self.instruments, dict):
                start, end = pd.Timestamp(self.calendar[self.lo]), pd.Timestamp(self.calendar[self.hi])
                self.spans = D.list_instruments(
                    self.instruments, start_time=start, end_time=end, freq="1min", as_list=False
                )
            else:
                self.spans = {}
        return self.spans

    def rows(self, codes: list[str]) -> np.ndarray:
        """Row of each code, loading those not loaded yet."""
        missing = [c for c in codes if c not in self.row]
        if missing:
            self._load(missing)
        return np.array([self.row[c] for c in codes], dtype=np.int64)

    def _load(self, codes: list[str]) -> None:
        from qlib.data.data import ExpressionD

        width = self.hi - self.lo + 1
        close = np.full((len(codes), width), np.nan)
        first = np.full(len(codes), width, np.int64)  # no stored bar: an empty range
        last = np.full(len(codes), -1, np.int64)
        inside = np.zeros((len(codes), width), bool)
        stamps = self.calendar[self.lo : self.hi + 1]
        spans = self._spans()
        listed = isinstance(self.instruments, dict)
        for i, code in enumerate(codes):
            listed_spans = spans.get(code) if listed else None
            if listed and not listed_spans:
                continue  # not in the market over the period: D.features returns nothing for it
            series = ExpressionD.expression(
                code, "$close", pd.Timestamp(stamps[0]), pd.Timestamp(stamps[-1]), "1min"
            )
            if not series.empty:
                cols = series.index.to_numpy(dtype=np.int64) - self.lo
                close[i, cols] = series.to_numpy(dtype=np.float32).astype(np.float64)
                first[i], last[i] = cols[0], cols[-1]
            if not listed:
                inside[i] = True
            for begin, finish in listed_spans or []:
                inside[i] |= (stamps >= np.datetime64(pd.Timestamp(begin))) & (
                    stamps <= np.datetime64(pd.Timestamp(finish))
                )
        base = len(self.row)
        for i, code in enumerate(codes):
            self.row[code] = base + i
        if base == 0:
            self.close, self.first, self.last, self.inside = close, first, last, inside
        else:
            self.close = np.vstack([self.close, close])
            self.first = np.concatenate([self.first, first])
            self.last = np.concatenate([self.last, last])
            self.inside = np.vstack([self.inside, inside])

    def position(self, when: Any, side: Literal["left", "right"]) -> int:
        """Column of the first minute at or after ``when`` (side 'left') or the last at or before ('right')."""
        stamp = np.datetime64(pd.Timestamp(when))
        at = int(np.searchsorted(self.calendar, stamp, side)) - (1 if side == "right" else 0)
        return at - self.lo

    def trends(self, codes: list[str], bar_starts: np.ndarray, steps: int) -> np.ndarray:
        """Trend each step of a reset uses: row per code, column per step (the even steps' are read).

        ``bar_starts``: the level's calendar from the bar before the first step to the bar after the
        last one (``steps + 2`` bar starts); step ``t`` reads bar ``t - 1`` (shift 1).
        """
        if len(bar_starts) <= steps:
            # The first step is the first bar of qlib's calendar: there is no bar before it. qlib's
            # ``get_step_time(0, shift=1)`` then reads calendar index -1 (the calendar's last bar), so
            # the signal window starts after it ends, D.features returns nothing and every step of this
            # reset is MID.
            return np.full((len(codes), steps), MID, np.int8)
        rows = self.rows(codes)
        edges = np.array([self.position(b, "left") for b in bar_starts[: steps + 1]], dtype=np.int64)
        start = int(edges[0])
        # the window ends one second before the last step's bar starts
        stop = self.position(pd.Timestamp(bar_starts[steps]) - pd.Timedelta(seconds=1), "right")
        return window_trends(self.close, self.first, self.last, self.inside, rows, start, stop, edges)
