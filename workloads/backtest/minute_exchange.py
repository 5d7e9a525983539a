"""A daily Exchange whose answers come from 1-minute bars, and those bars as arrays for a compiled inner level.

Under qlib's NestedExecutor (day → 1min) the daily strategy shares a 1-minute Exchange: every daily
question — is the stock tradable today, at what price, how much traded, which adjustment factor —
is answered by aggregating the day's minutes: ``ts_data_last`` (the last value that is not NaN) for
prices and factors, NumPy's NaN-skipping sum for volume, ``all`` for the limit flags (a suspended
minute counts as limited). ``MinuteBarsMixin`` loads the same minutes with qlib's own quote code
(fields, the adjusted-price check, the limit flags), keeps them as ``MinuteBars`` for the compiled
level (``compiled_slicing.py``), and gives qlib one pre-aggregated row per instrument and day, so
the daily strategy and account get exactly the 1-minute Exchange's answers at daily cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from qlib.backtest.exchange import Exchange
from qlib.data import D

from kubequant.workloads.backtest.impact_exchange import SIGMA_FIELD, ImpactExchange

MINUTE = "1min"
LAST_VALID = "last"  # pandas' groupby last() skips NaN, as qlib's ts_data_last does
BOOL_FIELDS = ("limit_buy", "limit_sell")


@dataclass(frozen=True)
class MinuteBars:
    """One row per instrument, one column per minute of the period's 1-minute calendar."""

    instruments: tuple[str, ...]
    minutes: pd.DatetimeIndex
    buy_price: np.ndarray  # the deal price, or the close where qlib would fall back to it
    sell_price: np.ndarray
    close: np.ndarray  # NaN: suspended in that minute
    volume: np.ndarray
    factor: np.ndarray
    limit_buy: np.ndarray  # bool; qlib's flags, suspended minutes included
    limit_sell: np.ndarray
    sigma: np.ndarray  # σ of the impact model (the minute's day); zeros without one
    day_start: dict[pd.Timestamp, int]  # first minute column of each day
    day_stop: dict[pd.Timestamp, int]

    @property
    def row(self) -> dict[str, int]:
        """Row of each instrument."""
        return {code: i for i, code in enumerate(self.instruments)}

    def day_span(self, day: pd.Timestamp) -> tuple[int, int]:
        """Columns [start, stop) of the minutes of ``day`` (empty when the calendar has none)."""
        key = pd.Timestamp(day).normalize()
        return self.day_start.get(key, 0), self.day_stop.get(key, 0)

    @classmethod
    def from_quote(
        cls, quote: pd.DataFrame, buy_field: str, sell_field: str, calendar: pd.DatetimeIndex
    ) -> MinuteBars:
        """Arrays of a qlib 1-minute quote frame (index instrument, datetime) on the 1-minute calendar."""
        index = quote.index
        assert isinstance(index, pd.MultiIndex)
        level_of = {name: i for i, name in enumerate(index.names)}
        inst_level, time_level = level_of["instrument"], level_of["datetime"]
        present = np.unique(index.codes[inst_level])
        instruments = tuple(sorted(str(index.levels[inst_level][i]) for i in present))
        shape = (len(instruments), len(calendar))
        # Each quote row's cell in the (instrument × minute) grid, through the index's level codes
        # (the levels are small); rows off the calendar are dropped.
        row_of_level = pd.Index(instruments).get_indexer(index.levels[inst_level])
        col_of_level = calendar.get_indexer(pd.DatetimeIndex(index.levels[time_level]))
        row = row_of_level[index.codes[inst_level]]
        col = col_of_level[index.codes[time_level]]
        on_grid = (col >= 0) & (row >= 0)
        row, col = row[on_grid], col[on_grid]

        def wide(field: str, fill: Any) -> np.ndarray:
            out = np.full(shape, fill, dtype=bool if isinstance(fill, bool) else np.float64)
            if field in quote.columns:
                values = quote[field].to_numpy()[on_grid]
                if isinstance(fill, bool):
                    values = pd.Series(values).fillna(fill).to_numpy(dtype=bool)
                out[row, col] = values
            return out

        close = wide("$close", np.nan)

        def deal(field: str) -> np.ndarray:
            # qlib's get_deal_price falls back to the close when the deal price is NaN or not positive.
            price = wide(field, np.nan)
            bad = np.isnan(price) | (price <= 1e-08)
            return np.where(bad, close, price)

        days = calendar.normalize()
        starts: dict[pd.Timestamp, int] = {}
        stops: dict[pd.Timestamp, int] = {}
        for i, day in enumerate(days):
            starts.setdefault(day, i)
            stops[day] = i + 1
        return cls(
            instruments=instruments,
            minutes=calendar,
            buy_price=deal(buy_field),
            sell_price=deal(sell_field),
            close=close,
            volume=wide("$volume", np.nan),
            factor=wide("$factor", np.nan),
            limit_buy=wide("limit_buy", True),
            limit_sell=wide("limit_sell", True),
            sigma=np.nan_to_num(wide(SIGMA_FIELD, 0.0), nan=0.0),
            day_start=starts,
            day_stop=stops,
        )


def daily_quote(minutes: pd.DataFrame) -> pd.DataFrame:
    """One row per instrument and day, holding what qlib's 1-minute quote answers for that day."""
    days = pd.DatetimeIndex(minutes.index.get_level_values("datetime")).normalize()
    keys = [minutes.index.get_level_values("instrument"), days]
    grouped = minutes.groupby(keys, sort=True)
    parts = {}
    for column in minutes.columns:
        if column == "$volume":
            parts[column] = grouped[column].sum(min_count=0)
        elif column in BOOL_FIELDS:
            parts[column] = grouped[column].all()
        else:
            parts[column] = grouped[column].last()
    out = pd.DataFrame(parts)[list(minutes.columns)]
    out.index = out.index.set_names(["instrument", "datetime"])
    return out


class MinuteBarsMixin:
    """Loads the period's 1-minute quote with qlib's code, keeps it as arrays, quotes qlib by the day."""

    minutes: MinuteBars
    freq: str
    end_time: Any
    start_time: Any
    quote_df: pd.DataFrame
    buy_price: str
    sell_price: str

    def get_quote_from_qlib(self) -> None:
        freq, end = self.freq, self.end_time
        last_day = pd.Timestamp(end).normalize()
        self.freq, self.end_time = MINUTE, last_day + pd.Timedelta(hours=23, minutes=59, seconds=59)
        try:
            super().get_quote_from_qlib()  # type: ignore[misc]
        finally:
            self.freq, self.end_time = freq, end
        calendar = pd.DatetimeIndex(
            D.calendar(start_time=self.start_time, end_time=self.end_time_of_day(last_day), freq=MINUTE)
        )
        self.minutes = MinuteBars.from_quote(self.quote_df, self.buy_price, self.sell_price, calendar)
        self.quote_df = daily_quote(self.quote_df)

    @staticmethod
    def end_time_of_day(day: pd.Timestamp) -> pd.Timestamp:
        """The last instant of ``day``."""
        return day + pd.Timedelta(hours=23, minutes=59, seconds=59)


class MinuteBackedExchange(MinuteBarsMixin, Exchange):  # type: ignore[misc]
    """qlib's Exchange at daily frequency, quoting what its 1-minute Exchange would, with the minutes kept."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{**kwargs, "freq": "day"})


class MinuteBackedImpactExchange(MinuteBarsMixin, ImpactExchange):  # type: ignore[misc]
    """The same, for ImpactExchange: σ of each day in the minutes, fills priced by the impact model."""

    def __init__(self, impact: Any = None, **kwargs: Any) -> None:
        super().__init__(impact=impact, **{**kwargs, "freq": "day"})
