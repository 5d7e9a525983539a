"""The bars of one compiled execution level: qlib's N-minute calendar, quoted from the 1-minute bars.

qlib builds an N-minute calendar by resampling the 1-minute one (``cal_sam_minute``: bars start every
N trading minutes from 09:30, counted over the A-share sessions 09:30–11:30 and 13:00–15:00), and a
level's step is [bar start, next bar start − 1 s]. The compiled engine takes the bars of that same
calendar (``Cal.calendar(freq=...)``); the API allows it only N that divide 120 and the level above's
step (``Executor.compiled_reason``), so every bar lies inside one session (60min: 09:30, 10:30,
13:00, 14:00) and nests in the bars of the level above. A bar's
quote is what qlib's 1-minute Exchange answers for the bar's range: the last non-NaN value for prices
and the factor (``ts_data_last``; the deal price falls back to the close as ``get_deal_price`` does),
the NaN-skipping sum of the volume, ``all`` of the limit flags (a suspended minute counts as limited).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kubequant.workloads.backtest.minute_exchange import MinuteBars


def last_valid(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """qlib's ts_data_last over each bar: the last non-NaN value of columns [edges[b], edges[b+1]), else NaN."""
    cols = values.shape[1]
    index = np.where(np.isnan(values), -1, np.arange(cols))
    running = np.maximum.accumulate(index, axis=1)
    last = running[:, edges[1:] - 1]
    found = last >= edges[:-1]
    picked = np.take_along_axis(values, np.maximum(last, 0), axis=1)
    return np.where(found, picked, np.nan)


@dataclass(frozen=True)
class LevelBars:
    """One level's bars over the period: one row per instrument (MinuteBars' rows), one column per bar."""

    frequency: str
    starts: pd.DatetimeIndex  # bar start times
    edges: np.ndarray  # bar b covers minute columns [edges[b], edges[b + 1])
    bar_of_minute: np.ndarray  # bar of each minute column
    buy_price: np.ndarray
    sell_price: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    factor: np.ndarray
    limit_buy: np.ndarray
    limit_sell: np.ndarray
    sigma: np.ndarray
    calendar: np.ndarray  # qlib's whole calendar of the level (datetime64), for bars outside the period

    def span(self, lo: int, hi: int) -> tuple[int, int]:
        """Bars [first, stop) of the minute columns [lo, hi)."""
        if hi <= lo:
            return 0, 0
        return int(self.bar_of_minute[lo]), int(self.bar_of_minute[hi - 1]) + 1

    def spans(self, first: int, stop: int) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
        """(start, end) of bars [first, stop) as qlib's trade calendar gives them: end = next start − 1 s."""
        out = []
        for b in range(first, stop):
            start = self.starts[b]
            at = int(np.searchsorted(self.calendar, np.datetime64(start), "right"))
            following = (
                pd.Timestamp(self.calendar[at]) if at < len(self.calendar) else start + pd.Timedelta(days=1)
            )
            out.append((start, following - pd.Timedelta(seconds=1)))
        return out

    def starts_around(self, first: int, stop: int) -> np.ndarray:
        """Start times of the bar before bar ``first`` through bar ``stop - 1`` (SBB-EMA's window)."""
        at = int(np.searchsorted(self.calendar, np.datetime64(self.starts[first]), "left"))
        return self.calendar[max(at - 1, 0) : at + (stop - first)]

    @classmethod
    def of_minutes(cls, bars: MinuteBars) -> LevelBars:
        """The 1-minute level: the minutes themselves."""
        from qlib.data.data import Cal

        cols = len(bars.minutes)
        return cls(
            frequency="1min",
            starts=bars.minutes,
            edges=np.arange(cols + 1),
            bar_of_minute=np.arange(cols),
            buy_price=bars.buy_price,
            sell_price=bars.sell_price,
            close=bars.close,
            volume=bars.volume,
            factor=bars.factor,
            limit_buy=bars.limit_buy,
            limit_sell=bars.limit_sell,
            sigma=bars.sigma,
            calendar=np.asarray(Cal.calendar(freq="1min"), dtype="datetime64[ns]"),
        )

    @classmethod
    def aggregate(cls, bars: MinuteBars, frequency: str) -> LevelBars:
        """Bars of ``frequency`` (qlib's resampled calendar), quoted from the minutes."""
        from qlib.data.data import Cal

        if frequency == "1min":
            return cls.of_minutes(bars)
        calendar = np.asarray(Cal.calendar(freq=frequency), dtype="datetime64[ns]")
        bar_index = np.searchsorted(calendar, bars.minutes.to_numpy(), "right") - 1
        first = np.flatnonzero(np.diff(bar_index, prepend=-1))
        edges = np.append(first, len(bar_index)).astype(np.int64)
        close = last_valid(bars.close, edges)

        def deal(raw: np.ndarray) -> np.ndarray:
            price = last_valid(raw, edges)
            with np.errstate(invalid="ignore"):
                bad = np.isnan(price) | (price <= 1e-08)
            return np.where(bad, close, price)

        return cls(
            frequency=frequency,
            starts=pd.DatetimeIndex(calendar[bar_index[first]]),
            edges=edges,
            bar_of_minute=np.repeat(np.arange(len(first)), np.diff(edges)),
            buy_price=deal(bars.raw_buy),
            sell_price=deal(bars.raw_sell),
            close=close,
            volume=np.add.reduceat(np.nan_to_num(bars.volume), first, axis=1),
            factor=last_valid(bars.factor, edges),
            limit_buy=np.logical_and.reduceat(bars.limit_buy, first, axis=1),
            limit_sell=np.logical_and.reduceat(bars.limit_sell, first, axis=1),
            sigma=bars.sigma[:, first],
            calendar=calendar,
        )
