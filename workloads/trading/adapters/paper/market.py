"""Bars of a qlib bundle and the Backtest's own deal rules: every paper fill goes through qlib's Exchange.

The Exchange is built by ``qlib.backtest.get_exchange`` from the very kwargs the Backtest runner
passes (``workloads.backtest.qlib_config.exchange_kwargs``: qlib's Exchange, or kubequant's
ImpactExchange when ``spec.exchange.impact`` is set), and each fill's quantity, price and cost
come from its ``deal_order``: the same lot rounding, limit-up/down and suspension rules, cash
clipping, open/close/min cost, participation cap and impact as a Backtest, not a copy of them.

Units: qlib trades adjusted amounts at adjusted prices; a broker speaks shares at traded prices.
With qlib's factor f, shares = amount * f and price = adjusted price / f, so value and cost are
the same number in both.

For the A-share rules (region cn) the market also says each day's price-limit reference (the
previous close, ex-rights: the last close in today's units) and which names are ST: a bundle marks
them in ``instruments/st.txt``, qlib's instruments format (``CODE<TAB>START<TAB>END`` per line, the
days the name carries the ST or *ST tag, both ends included).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kubequant.api.backtest import BacktestSpec, Executor, Signal, SignalFile
from kubequant.api.backtest import Exchange as ExchangeSpec
from kubequant.api.common import DateRange
from kubequant.errors import DataError
from kubequant.workloads.backtest.qlib_config import exchange_kwargs
from kubequant.workloads.trading.model.domain import Side, as_money, as_price, as_quantity


@dataclass(frozen=True, slots=True)
class Deal:
    """What qlib's Exchange dealt: shares, traded price and cost."""

    quantity: Decimal
    price: Decimal
    fee: Decimal


def exchange_config(
    spec: ExchangeSpec, codes: list[str], start: str, end: str, freq: str = "day"
) -> dict[str, Any]:
    """``get_exchange`` kwargs for a session's ``spec.exchange``: the Backtest runner's, for the same days.

    ``exchange_kwargs`` takes a BacktestSpec, so the session's exchange goes into one (its signal
    is never read). With an impact model the result is the ImpactExchange class config.
    """
    backtest = BacktestSpec(
        period=DateRange(start=start, end=end),
        signal=Signal(file=SignalFile(path="unused")),
        exchange=spec,
        executor=Executor(frequency=freq),
    )
    kwargs = exchange_kwargs(backtest)
    # Load only the session's instruments (a Backtest loads the whole market; the costs are the same).
    if "exchange" in kwargs:
        kwargs["exchange"]["kwargs"]["codes"] = codes
        return kwargs
    return kwargs | {"start_time": start, "end_time": end, "codes": codes}


class QlibMarket:
    """A qlib Exchange over a calendar of bars; qlib must be initialised on the bundle first."""

    def __init__(
        self,
        exchange: Any,
        calendar: Sequence[pd.Timestamp],
        *,
        st: Mapping[str, Sequence[tuple[dt.date, dt.date]]] | None = None,
    ) -> None:
        self.exchange = exchange
        self.calendar = list(calendar)
        self._known = frozenset(exchange.quote.get_all_stock())
        self._days = frozenset(t.date() for t in self.calendar)
        # ST names: instrument -> the (first, last) days it is tagged ST (instruments/st.txt).
        self.st = {k.upper(): list(v) for k, v in (st or {}).items()}

    @classmethod
    def load(
        cls, spec: ExchangeSpec, codes: str | list[str], start: str, end: str, freq: str = "day"
    ) -> QlibMarket:
        """Load the bars of ``codes`` from ``start`` to ``end`` into qlib's Exchange, as a Backtest does."""
        from qlib.backtest import get_exchange
        from qlib.data import D

        names: list[str] = (
            list(D.list_instruments(D.instruments(codes), start, end, as_list=True))
            if isinstance(codes, str)
            else codes
        )
        from qlib.config import C

        kwargs = exchange_config(spec, names, start, end, freq)
        calendar = D.calendar(start_time=start, end_time=end, freq=freq)
        st = read_st(Path(C.dpm.get_data_uri(freq)) / "instruments" / "st.txt")
        return cls(get_exchange(**kwargs), list(calendar), st=st)

    @property
    def instruments(self) -> list[str]:
        """Instruments the market has bars for."""
        return sorted(self._known)

    def knows(self, instrument: str) -> bool:
        """Whether the market has bars for ``instrument``."""
        return instrument in self._known

    def bar_time(self, index: int) -> pd.Timestamp:
        """Timestamp of bar ``index``."""
        return self.calendar[index]

    def is_st(self, instrument: str, day: dt.date) -> bool:
        """Whether the bundle marks ``instrument`` ST on ``day`` (its price limit is then ±5 %)."""
        return any(first <= day <= last for first, last in self.st.get(instrument.upper(), ()))

    def is_trading_day(self, day: dt.date) -> bool:
        """Whether ``day`` is a trading day of the bundle's calendar; past its ends, whether it is a weekday."""
        if self.calendar and self.calendar[0].date() <= day <= self.calendar[-1].date():
            return day in self._days
        return day.weekday() < 5

    def reference_close(self, instrument: str, index: int) -> Decimal | None:
        """The price-limit reference of bar ``index``: the last close before it, in bar ``index``'s units.

        The exchange takes the previous close ex-rights, so a dividend or split between the two bars
        moves the band with it: the adjusted close divided by the factor of the bar trading now.
        None when the instrument has no earlier close.
        """
        if not 0 < index <= len(self.calendar) or instrument not in self._known:
            return None
        for before in range(index - 1, -1, -1):
            t = self.calendar[before]
            close = self.exchange.get_close(instrument, t, t)
            factor = self._factor(instrument, t)
            if close is None or factor is None or np.isnan(close):
                continue
            if index < len(self.calendar):
                now = self._factor(instrument, self.calendar[index])
                factor = now if now is not None else factor
            return as_price(float(close) / factor)
        return None

    def _factor(self, instrument: str, t: pd.Timestamp) -> float | None:
        factor = self.exchange.get_factor(instrument, t, t)
        if factor is None or np.isnan(factor):
            # qlib's adjusted-price mode (no factor in the bundle): shares are adjusted amounts.
            return None if self.exchange.check_stock_suspended(instrument, t, t) else 1.0
        return float(factor)

    def close(self, instrument: str, index: int) -> Decimal | None:
        """Traded close of bar ``index``; None when suspended or unknown."""
        if not 0 <= index < len(self.calendar) or instrument not in self._known:
            return None
        t = self.calendar[index]
        close = self.exchange.get_close(instrument, t, t)
        factor = self._factor(instrument, t)
        if close is None or factor is None or np.isnan(close):
            return None
        return as_price(float(close) / factor)

    def deal(
        self,
        instrument: str,
        side: Side,
        quantity: Decimal,
        limit_price: Decimal | None,
        cash: Decimal,
        holding: Decimal,
        index: int,
    ) -> Deal | None:
        """Deal an order at bar ``index`` through qlib's ``Exchange.deal_order``; None if nothing trades."""
        from qlib.backtest.decision import Order, OrderDir
        from qlib.backtest.position import Position

        ex, t = self.exchange, self.calendar[index]
        if instrument not in self._known:
            return None
        factor = self._factor(instrument, t)
        if factor is None:
            return None
        direction = OrderDir.BUY if side is Side.BUY else OrderDir.SELL
        order = Order(
            stock_id=instrument,
            amount=float(quantity) / factor,
            direction=direction,
            start_time=t,
            end_time=t,
        )
        holdings: dict[str, Any] = {}
        if holding > 0:
            holdings[instrument] = {
                "amount": float(holding) / factor,
                "price": ex.get_close(instrument, t, t),
            }
        # A throw-away qlib Position carrying just the cash and this holding: deal_order clips a buy to
        # the cash and a sell to the holding with it exactly as in a Backtest, and updates only this copy.
        position = Position(cash=float(cash), position_dict=holdings)
        value, cost, price = ex.deal_order(order, position=position, dealt_order_amount=defaultdict(float))
        shares = as_quantity(order.deal_amount * factor)
        if value <= 1e-5 or shares <= 0:
            return None
        traded = as_price(price / factor)
        # A limit order trades only at its limit or better; the fill price includes any impact.
        if limit_price is not None and (traded > limit_price if side is Side.BUY else traded < limit_price):
            return None
        return Deal(shares, traded, as_money(cost))


def read_st(path: Path) -> dict[str, list[tuple[dt.date, dt.date]]]:
    """ST spans from a qlib instruments file (``CODE<TAB>START<TAB>END``); none when the file is absent.

    A malformed line raises DataError naming the file and the line (a bundle that marks ST names
    wrongly must not trade them under the wrong price limit).
    """
    if not path.is_file():
        return {}
    out: dict[str, list[tuple[dt.date, dt.date]]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        try:
            code, first, last = parts
            span = (dt.date.fromisoformat(first[:10]), dt.date.fromisoformat(last[:10]))
        except ValueError:
            raise DataError(
                f"a line of the ST list is not CODE<TAB>START<TAB>END: {line!r}",
                where=f"{path}:{number}",
                fix="write one name a line in qlib's instruments format, e.g. SH600000\t2020-01-02\t2020-12-31",
            ) from None
        out.setdefault(code.upper(), []).append(span)
    return out
