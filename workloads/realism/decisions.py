"""A Backtest's daily decisions: every order qlib's strategy produced, day by day, with what qlib dealt.

The Backtest runs through the runner's own pieces (qlib set up by ``init_qlib``, the strategy,
executor and exchange configs of ``qlib_config``), its strategy subclassed only to keep the
execute results qlib hands it each step (``recording_strategy``): each is qlib's ``Order`` as the
strategy made it (requested amount, direction, day) with what the exchange dealt (deal amount,
price, value, cost), in the order the executor dealt them. Amounts are qlib's adjusted amounts;
``shares`` and ``traded_price`` convert with the order's factor (shares = amount · factor).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kubequant.api.backtest import Backtest, BacktestSpec
from kubequant.errors import ConfigError

Progress = Callable[[str, str], None]


@dataclass(frozen=True)
class BacktestOrder:
    """One order of the strategy on one day, and what qlib's exchange dealt of it."""

    day: dt.date
    seq: int  # position in the day's execution order
    instrument: str
    side: str  # "buy" | "sell"
    amount: float  # requested, adjusted units
    factor: float | None  # qlib's factor at the bar (None: no quote, not tradable)
    deal_amount: float  # dealt, adjusted units
    price: float  # adjusted deal price (NaN when nothing traded)
    value: float
    cost: float

    @property
    def shares(self) -> float:
        """Requested shares (amount · factor; the amount itself without a factor)."""
        return self.amount * (self.factor or 1.0)

    @property
    def dealt_shares(self) -> float:
        """Dealt shares."""
        return self.deal_amount * (self.factor or 1.0)

    @property
    def traded_price(self) -> float:
        """The price per share (adjusted price / factor)."""
        return self.price / (self.factor or 1.0)

    @property
    def filled(self) -> bool:
        """Whether qlib dealt any of it."""
        return self.deal_amount > 0 and self.value > 1e-5


@dataclass
class BacktestRun:
    """One Backtest level's decisions and daily account."""

    level: str  # "day" (single level) or e.g. "day→1min"
    orders: list[BacktestOrder]
    daily: pd.DataFrame  # qlib's report: account, cash, value, cost, turnover … indexed by day
    account: float
    # The finest level's fills of a compiled nested run (datetime, instrument, side, amount, price,
    # value, cost, factor: ``CompiledSlicingExecutor.trades()``); None for a single-level run.
    children: pd.DataFrame | None = None

    def days(self) -> list[dt.date]:
        """The trading days of the run."""
        return [pd.Timestamp(t).date() for t in self.daily.index]

    def fills(self) -> list[BacktestOrder]:
        """The orders qlib dealt."""
        return [o for o in self.orders if o.filled]


def load_scores(bt: Backtest, progress: Progress) -> pd.Series:
    """The Backtest's scores, from the same source the runner uses (qlib must be initialised)."""
    from kubequant.workloads.backtest.signal import read_signal_file, train_and_predict

    spec = bt.spec
    if spec.signal.model is not None:
        scores = train_and_predict(spec.signal.model, spec.universe.resolved_market(), progress).scores
    elif spec.signal.file is not None:
        progress("signal", f"reading {spec.signal.file.path}")
        scores = read_signal_file(Path(spec.signal.file.path), spec).scores
    else:
        raise ConfigError(
            "parity needs scores from spec.signal.model or spec.signal.file",
            where="spec.signal.modelRef",
            fix="use signal.file (the TrainingJob's predictions) or signal.model",
        )
    if scores.empty:
        raise ConfigError(
            "the signal has no scores in the period", where="spec.signal", fix="check the period and universe"
        )
    return scores


def single_level(spec: BacktestSpec) -> BacktestSpec:
    """The spec with the single-level daily executor (as the runner's comparison runs it)."""
    return spec.model_copy(
        update={"executor": spec.executor.model_copy(update={"levels": None, "frequency": "day"})}
    )


def _float(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def record_decisions(spec: BacktestSpec, scores: pd.Series, level: str = "day") -> BacktestRun:
    """Run qlib's backtest of ``spec`` on ``scores`` and keep every order of every step, in execution order."""
    from kubequant.workloads.backtest.runner import recorded_backtest

    portfolio, _indicators, executor, executed = recorded_backtest(spec, scores)
    daily, _positions = next(iter(portfolio.values()))
    orders: list[BacktestOrder] = []
    seq_of_day: dict[dt.date, int] = {}
    for order, value, cost, price in executed:
        day = pd.Timestamp(order.start_time).date()
        seq = seq_of_day.get(day, 0)
        seq_of_day[day] = seq + 1
        factor = _float(order.factor)
        orders.append(
            BacktestOrder(
                day=day,
                seq=seq,
                instrument=str(order.stock_id),
                side="buy" if int(order.direction) == 1 else "sell",
                amount=float(order.amount),
                factor=None if math.isnan(factor) else factor,
                deal_amount=float(order.deal_amount or 0.0),
                price=_float(price),
                value=float(value or 0.0),
                cost=float(cost or 0.0),
            )
        )
    from kubequant.workloads.backtest.compiled_slicing import CompiledSlicingExecutor

    children = executor.trades() if isinstance(executor, CompiledSlicingExecutor) else None
    return BacktestRun(
        level=level, orders=orders, daily=daily, account=float(spec.account), children=children
    )
