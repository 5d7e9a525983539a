"""A daily Exchange whose answers come from 1-minute bars, and those bars as arrays for a compiled inner level.

Under qlib's NestedExecutor (day → 1min) the daily strategy shares a 1-minute Exchange: every daily
question — is the stock tradable today, at what price, how much traded, which adjustment factor —
is answered by aggregating the day's minutes: ``ts_data_last`` (the last value that is not NaN) for
prices and factors, NumPy's NaN-skipping sum for volume, ``all`` for the limit flags (a suspended
minute counts as limited). ``MinuteBarsMixin`` reads the same minutes through qlib's expression
provider (``ExpressionD``: the fields and limit expressions of the Exchange, each instrument's
listing spans from ``D.list_instruments``), applies qlib's rules of ``Exchange.get_quote_from_qlib``
on arrays (limit flags, suspended = NaN close, the adjusted-price switch), keeps them as
``MinuteBars`` for the compiled level (``compiled_slicing.py``), and gives qlib one aggregated row
per instrument and day, so the daily strategy and account get the 1-minute Exchange's answers at
daily cost. qlib's own 1-minute Exchange under its NestedExecutor is the reference this is tested
against (``tests/integration/test_compiled_slicing.py``, ``tests/integration/test_minute_exchange.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from qlib.backtest.exchange import Exchange
from qlib.data import D

from kubequant.workloads.backtest.impact_exchange import SIGMA_FIELD, ImpactExchange
from kubequant.workloads.data.bars import is_raw, local_features_dir, read_panel

MINUTE = "1min"


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
    raw_buy: np.ndarray  # the deal-price fields as quoted (NaN kept): what a longer bar's price is taken from
    raw_sell: np.ndarray

    @cached_property
    def row(self) -> dict[str, int]:
        """Row of each instrument."""
        return {code: i for i, code in enumerate(self.instruments)}

    def day_span(self, day: pd.Timestamp) -> tuple[int, int]:
        """Columns [start, stop) of the minutes of ``day`` (empty when the calendar has none)."""
        key = pd.Timestamp(day).normalize()
        return self.day_start.get(key, 0), self.day_stop.get(key, 0)

    @classmethod
    def build(
        cls,
        fields: MinuteFields,
        buy_field: str,
        sell_field: str,
        limit_buy: np.ndarray,
        limit_sell: np.ndarray,
        sigma: np.ndarray,
        spans: list[tuple[pd.Timestamp, int, int]],
    ) -> MinuteBars:
        """The kernel's arrays; deal prices fall back to the close where qlib's get_deal_price does."""
        close = fields.values["$close"]

        def deal(field: str) -> np.ndarray:
            price = fields.values[field]
            with np.errstate(invalid="ignore"):
                bad = np.isnan(price) | (price <= 1e-08)
            return np.where(bad, close, price)

        return cls(
            instruments=fields.instruments,
            minutes=fields.calendar,
            buy_price=deal(buy_field),
            sell_price=deal(sell_field),
            close=close,
            volume=fields.values["$volume"],
            factor=fields.values["$factor"],
            limit_buy=limit_buy,
            limit_sell=limit_sell,
            sigma=sigma,
            day_start={day: lo for day, lo, _ in spans},
            day_stop={day: hi for day, _, hi in spans},
            raw_buy=fields.values[buy_field],
            raw_sell=fields.values[sell_field],
        )


def end_of_day(day: Any) -> pd.Timestamp:
    """The last instant of ``day``."""
    return pd.Timestamp(day).normalize() + pd.Timedelta(hours=23, minutes=59, seconds=59)


@dataclass(frozen=True)
class MinuteFields:
    """Fields of the period's 1-minute bars: one row per instrument, one column per calendar minute."""

    instruments: tuple[str, ...]
    calendar: pd.DatetimeIndex
    values: dict[str, np.ndarray]  # NaN where the instrument has no bar
    present: np.ndarray  # bool: a row exists in qlib's quote (inside the instrument's listing spans)

    @classmethod
    def load(cls, codes: Any, fields: list[str], start: Any, end: Any) -> MinuteFields:
        """``fields`` (qlib expressions) of ``codes`` (a market config or a list) through ``ExpressionD``."""
        from qlib.data.data import Cal, ExpressionD

        # A market config comes with each instrument's listing spans; an explicit list has none (as in D.features).
        spans: dict[str, Any] = (
            D.list_instruments(codes, start_time=start, end_time=end, freq=MINUTE, as_list=False)
            if isinstance(codes, dict)
            else dict.fromkeys(codes)
        )
        calendar = pd.DatetimeIndex(D.calendar(start_time=start, end_time=end, freq=MINUTE))
        instruments = tuple(sorted(spans))
        shape = (len(instruments), len(calendar))
        values = {f: np.full(shape, np.nan) for f in fields}
        present = np.zeros(shape, dtype=bool)
        if len(calendar) == 0:
            return cls(instruments, calendar, values, present)
        _, _, first, _last = Cal.locate_index(calendar[0], calendar[-1], freq=MINUTE, future=False)
        stamps = calendar.to_numpy()
        # Raw fields ($close, $volume, ...) straight from the memory-mapped files, the same values and
        # ranges ExpressionD gives (tests/integration/test_bundle_bars.py); expressions through qlib.
        features_dir = local_features_dir(MINUTE)
        raw = [f for f in fields if is_raw(f)] if features_dir is not None else []
        panel = (
            read_panel(features_dir, instruments, raw, MINUTE, first, first + len(calendar) - 1)
            if features_dir is not None and raw
            else None
        )
        computed = [f for f in fields if f not in raw]
        for row, code in enumerate(instruments):
            inside = (
                np.zeros(len(calendar), dtype=bool)
                if spans[code] is not None
                else np.ones(len(calendar), bool)
            )
            for begin, finish in spans[code] or []:
                inside |= (stamps >= np.datetime64(pd.Timestamp(begin))) & (
                    stamps <= np.datetime64(pd.Timestamp(finish))
                )
            had_rows = np.zeros(len(calendar), dtype=bool)
            if panel is not None:
                for field in raw:
                    values[field][row] = panel.values[field][row]
                had_rows |= panel.has_row[row]
            for field in computed:
                series = ExpressionD.expression(code, field, calendar[0], calendar[-1], MINUTE)
                if series.empty:
                    continue
                cols = series.index.to_numpy(dtype=np.int64) - first
                ok = (cols >= 0) & (cols < len(calendar))
                cols = cols[ok]
                values[field][row, cols] = series.to_numpy(dtype=np.float64)[ok]
                had_rows[cols] = True
            present[row] = had_rows & inside
        if not present.all():
            for field in fields:
                values[field][~present] = np.nan
        return cls(instruments, calendar, values, present)


def limit_flags(fields: MinuteFields, limit_type: str, threshold: Any) -> tuple[np.ndarray, np.ndarray]:
    """qlib's ``Exchange._update_limit`` on arrays: (limit_buy, limit_sell), suspended minutes included."""
    suspended = np.isnan(fields.values["$close"])
    if limit_type == Exchange.LT_NONE:
        return suspended.copy(), suspended.copy()
    if limit_type == Exchange.LT_TP_EXP:
        # astype(bool), as qlib does: NaN counts as limited.
        buy = fields.values[threshold[0]].astype(bool)
        sell = fields.values[threshold[1]].astype(bool)
        return buy | suspended, sell | suspended
    change = fields.values["$change"]
    with np.errstate(invalid="ignore"):
        return (change >= threshold) | suspended, (change <= -threshold) | suspended


def daily_quote(
    fields: MinuteFields,
    limit_buy: np.ndarray,
    limit_sell: np.ndarray,
    spans: list[tuple[pd.Timestamp, int, int]],
) -> pd.DataFrame:
    """One row per instrument and day with what qlib's 1-minute quote answers for that day's range.

    ``spans``: each day's minute columns [lo, hi). Days of equal length are reduced together as one
    (instrument × day × minute) cube — one group when every day has the same session.
    """
    parts = []
    for length in sorted({hi - lo for _, lo, hi in spans} - {0}):
        group = [(day, lo, hi) for day, lo, hi in spans if hi - lo == length]
        columns = np.concatenate([np.arange(lo, hi) for _, lo, hi in group])
        parts.append(_days_of_equal_length(fields, limit_buy, limit_sell, columns, [d for d, _, _ in group]))
    if not parts:
        index = pd.MultiIndex.from_arrays([[], []], names=["instrument", "datetime"])
        return pd.DataFrame({name: [] for name in [*fields.values, "limit_buy", "limit_sell"]}, index=index)
    return pd.concat(parts).sort_index()


def _days_of_equal_length(
    fields: MinuteFields,
    limit_buy: np.ndarray,
    limit_sell: np.ndarray,
    columns: np.ndarray,
    days: list[pd.Timestamp],
) -> pd.DataFrame:
    """``daily_quote`` for days whose minutes, in ``columns``, come in runs of the same length."""
    n, d = len(fields.instruments), len(days)

    def cube(a: np.ndarray) -> np.ndarray:
        return a[:, columns].reshape(n, d, -1)

    present = cube(fields.present)
    rows = present.any(axis=2).reshape(-1)  # (instrument, day) pairs with a row in qlib's quote
    data: dict[str, np.ndarray] = {}
    for name, values in fields.values.items():
        block = cube(values)
        if name == "$volume":  # qlib's "sum": NumPy's NaN-skipping sum
            out = np.nansum(block, axis=2)
        else:  # qlib's ts_data_last: the last value that is not NaN
            valid = ~np.isnan(block)
            last = block.shape[2] - 1 - np.argmax(valid[:, :, ::-1], axis=2)
            out = np.take_along_axis(block, last[:, :, None], axis=2)[:, :, 0]
            out = np.where(valid.any(axis=2), out, np.nan)
        data[name] = out.reshape(-1)[rows]
    for name, flags in (("limit_buy", limit_buy), ("limit_sell", limit_sell)):  # qlib's "all"
        data[name] = np.where(present, cube(flags), True).all(axis=2).reshape(-1)[rows]
    index = pd.MultiIndex.from_arrays(
        [
            np.repeat(np.array(fields.instruments), d)[rows],
            np.tile(np.array([np.datetime64(day) for day in days]), n)[rows],
        ],
        names=["instrument", "datetime"],
    )
    return pd.DataFrame(data, index=index)


class MinuteBarsMixin:
    """Loads the period's 1-minute bars through qlib's expression provider, quotes qlib by the day."""

    minutes: MinuteBars
    freq: str
    end_time: Any
    start_time: Any
    codes: Any
    all_fields: list[str]
    quote_df: pd.DataFrame
    buy_price: str
    sell_price: str
    limit_type: str
    limit_threshold: Any
    extra_quote: Any
    trade_w_adj_price: bool

    def get_quote_from_qlib(self) -> None:
        if self.extra_quote is not None:
            raise ValueError("extra_quote is not supported by the compiled execution level's exchange")
        if len(self.codes) == 0:
            self.codes = D.instruments()
        fields = MinuteFields.load(
            self.codes, list(self.all_fields), self.start_time, end_of_day(self.end_time)
        )
        close, factor = fields.values["$close"], fields.values["$factor"]
        # qlib trades in adjusted prices when a factor is missing where a close exists.
        self.trade_w_adj_price = bool((np.isnan(factor) & ~np.isnan(close)).any())
        limit_buy, limit_sell = limit_flags(fields, self.limit_type, self.limit_threshold)
        days = fields.calendar.normalize()
        spans: list[tuple[pd.Timestamp, int, int]] = []
        for i, day in enumerate(days):
            if spans and spans[-1][0] == day:
                spans[-1] = (day, spans[-1][1], i + 1)
            else:
                spans.append((day, i, i + 1))
        quote = daily_quote(fields, limit_buy, limit_sell, spans)
        sigma_minutes = np.zeros(close.shape)
        if isinstance(self, ImpactExchange):
            sigma = self._sigma_of_rows(quote.index)
            quote[SIGMA_FIELD] = sigma
            table = pd.Series(sigma, index=quote.index).unstack("datetime")
            table = table.reindex(index=list(fields.instruments), columns=[d for d, _, _ in spans])
            per_day = np.nan_to_num(table.to_numpy(dtype=np.float64), nan=0.0)
            for j, (_, lo, hi) in enumerate(spans):
                sigma_minutes[:, lo:hi] = per_day[:, j : j + 1]
        self.quote_df = quote
        self.minutes = MinuteBars.build(
            fields, self.buy_price, self.sell_price, limit_buy, limit_sell, sigma_minutes, spans
        )


class MinuteBackedExchange(MinuteBarsMixin, Exchange):  # type: ignore[misc]
    """qlib's Exchange at daily frequency, quoting what its 1-minute Exchange would, with the minutes kept."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{**kwargs, "freq": "day"})


class MinuteBackedImpactExchange(MinuteBarsMixin, ImpactExchange):  # type: ignore[misc]
    """The same, for ImpactExchange: σ of each day in the minutes, fills priced by the impact model."""

    def __init__(self, impact: Any = None, **kwargs: Any) -> None:
        super().__init__(impact=impact, **{**kwargs, "freq": "day"})
