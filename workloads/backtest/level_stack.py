"""One day of a compiled stack of execution levels (day → 60/30/15min → … → 1min), level by level.

qlib's NestedExecutor runs each inner level as a strategy that turns the orders of the level above
into child orders step by step, and an executor that works each child through the levels below; the
strategy learns what was dealt from the finest level's execute results at its next step. ``Stack``
does the same over the compiled kernels: a coarser level asks ``step_targets`` for each bar's
children, works them through the levels below inside that bar, and takes what they dealt (or, with
``onCap: expire`` under TWAP/VWAP, what they asked for) off each parent's remainder; the finest
level's bars are dealt by ``work_bars``. A child's trade unit comes from the factor of its parent's
range (the bar), as ``Exchange.get_amount_of_trade_unit`` takes it in qlib.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kubequant.workloads.backtest.level_bars import LevelBars
from kubequant.workloads.backtest.slicing_kernel import SBB, VWAP, step_targets, work_bars


@dataclass
class Level:
    """One compiled level: its bars, its slicing (a kernel mode) and VWAP's look-back."""

    bars: LevelBars
    mode: int
    lookback_days: int = 5


@dataclass
class Parents:
    """Orders a level receives: instrument (row of the day's codes), side, amount, trade unit, daily order."""

    row: np.ndarray
    is_buy: np.ndarray
    amount: np.ndarray
    lot: np.ndarray  # NaN: no rounding
    origin: np.ndarray  # index of the daily order each one works

    def take(self, which: np.ndarray, amount: np.ndarray, lot: np.ndarray) -> Parents:
        return Parents(self.row[which], self.is_buy[which], amount, lot, self.origin[which])


@dataclass
class LevelDay:
    """One level's bars of one day, for the day's instruments only (rows = the day's codes)."""

    first: int  # index of the day's first bar in the level's bars
    buy_price: np.ndarray
    sell_price: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    factor: np.ndarray
    limit_buy: np.ndarray
    limit_sell: np.ndarray
    sigma: np.ndarray

    @classmethod
    def cut(cls, bars: LevelBars, rows: np.ndarray, first: int, stop: int) -> LevelDay:
        cols = slice(first, stop)
        return cls(
            first,
            bars.buy_price[rows, cols],
            bars.sell_price[rows, cols],
            bars.close[rows, cols],
            bars.volume[rows, cols],
            bars.factor[rows, cols],
            bars.limit_buy[rows, cols],
            bars.limit_sell[rows, cols],
            bars.sigma[rows, first] if stop > first else np.zeros(len(rows)),
        )


@dataclass
class Children:
    """Child orders of one level over a day (one entry per child, dealt or not)."""

    bar: list[np.ndarray] = field(default_factory=list)  # the level's bar index
    origin: list[np.ndarray] = field(default_factory=list)
    row: list[np.ndarray] = field(default_factory=list)
    is_buy: list[np.ndarray] = field(default_factory=list)
    amount: list[np.ndarray] = field(default_factory=list)
    deal: list[np.ndarray] = field(default_factory=list)
    price: list[np.ndarray] = field(default_factory=list)
    value: list[np.ndarray] = field(default_factory=list)
    cost: list[np.ndarray] = field(default_factory=list)

    def add(self, **columns: np.ndarray) -> None:
        for name, values in columns.items():
            getattr(self, name).append(values)

    def column(self, name: str) -> np.ndarray:
        parts = getattr(self, name)
        dtype = {"bar": np.int64, "origin": np.int64, "row": np.int64, "is_buy": np.bool_}.get(
            name, np.float64
        )
        return np.concatenate(parts) if parts else np.zeros(0, dtype)


@dataclass
class Day:
    """What one day's run reads and moves: the day's codes, bars per level, holdings and cash, children."""

    codes: list[str]
    levels: list[LevelDay]
    held: np.ndarray  # by row of ``codes``; updated in place by every fill
    present: np.ndarray
    cash: float
    children: list[Children]


# (level index, the day, parents, first bar, stop bar) → per parent and step
StepTable = Callable[[int, Day, Parents, int, int], np.ndarray]


@dataclass
class Stack:
    """The levels under the day, outermost first, with the exchange's costs and the slicing inputs."""

    levels: list[Level]
    costs: np.ndarray
    impact: np.ndarray
    expire: bool
    trade_unit: float  # NaN: no rounding to lots
    trends: StepTable  # SBB-EMA's trend each step reads
    profile: StepTable  # VWAP's cumulative expected share after each step

    def day(
        self, codes: list[str], rows: np.ndarray, lo: int, hi: int, held: Any, present: Any, cash: float
    ) -> Day:
        """A day over minute columns [lo, hi) for ``codes`` (``rows`` of the bars)."""
        cut = []
        for level in self.levels:
            first, stop = level.bars.span(lo, hi)
            cut.append(LevelDay.cut(level.bars, rows, first, stop))
        return Day(codes, cut, held, present, cash, [Children() for _ in self.levels])

    def run(self, index: int, day: Day, parents: Parents, lo: int, hi: int) -> tuple[np.ndarray, ...]:
        """Work ``parents`` through level ``index`` and those below, inside minute columns [lo, hi).

        Returns, per parent: the amount dealt, its value, and the amount the finest children asked for.
        """
        level = self.levels[index]
        first, stop = level.bars.span(lo, hi)
        steps = stop - first
        n = len(parents.amount)
        trends = (
            self.trends(index, day, parents, first, stop) if level.mode == SBB else np.zeros((n, 0), np.int8)
        )
        expected = self.profile(index, day, parents, first, stop) if level.mode == VWAP else np.empty((n, 0))
        bars = day.levels[index]
        window = slice(first - bars.first, stop - bars.first)
        if index == len(self.levels) - 1:
            return self._deal(index, day, parents, window, expected, trends)
        remain = parents.amount.copy()
        state = np.zeros(n, np.int8)
        dealt, value, asked = np.zeros(n), np.zeros(n), np.zeros(n)
        carry = level.mode == SBB or not self.expire
        edges = level.bars.edges
        close, limit_buy, limit_sell = (
            bars.close[:, window],
            bars.limit_buy[:, window],
            bars.limit_sell[:, window],
        )
        for t in range(steps):
            targets = step_targets(
                level.mode,
                t,
                steps,
                parents.row,
                parents.is_buy,
                parents.amount,
                remain,
                parents.lot,
                expected,
                trends,
                state,
                close,
                limit_buy,
                limit_sell,
            )
            chosen = np.flatnonzero(targets)
            if len(chosen) == 0:
                continue
            b = first + t
            # qlib's quote is float32, and so is trade_unit / factor there (NumPy 2 keeps float32)
            factor = bars.factor[parents.row[chosen], window.start + t].astype(np.float32)
            lots = (np.float32(self.trade_unit) / factor).astype(np.float64)
            children = parents.take(chosen, targets[chosen], lots)
            got, worth, wanted = self.run(index + 1, day, children, int(edges[b]), int(edges[b + 1]))
            day.children[index].add(
                bar=np.full(len(chosen), b),
                origin=children.origin,
                row=children.row,
                is_buy=children.is_buy,
                amount=children.amount,
                deal=got,
                value=worth,
            )
            remain[chosen] -= got if carry else wanted
            dealt[chosen] += got
            value[chosen] += worth
            asked[chosen] += wanted
        return dealt, value, asked

    def _deal(
        self, index: int, day: Day, parents: Parents, window: slice, expected: np.ndarray, trends: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        bars = day.levels[index]
        parent, step, target, deal, price, value, cost, count, cash = work_bars(
            parents.row,
            parents.is_buy,
            parents.amount,
            parents.lot,
            expected,
            bars.buy_price[:, window],
            bars.sell_price[:, window],
            bars.close[:, window],
            bars.volume[:, window],
            bars.factor[:, window],
            bars.limit_buy[:, window],
            bars.limit_sell[:, window],
            bars.sigma,
            day.held,
            day.present,
            day.cash,
            self.costs,
            self.impact,
            self.expire,
            self.levels[index].mode,
            trends,
        )
        day.cash = cash
        parent, step, target, deal, value = (
            parent[:count],
            step[:count],
            target[:count],
            deal[:count],
            value[:count],
        )
        day.children[index].add(
            bar=bars.first + window.start + step,
            origin=parents.origin[parent],
            row=parents.row[parent],
            is_buy=parents.is_buy[parent],
            amount=target,
            deal=deal,
            price=price[:count],
            value=value,
            cost=cost[:count],
        )
        n = len(parents.amount)
        return (
            np.bincount(parent, weights=deal, minlength=n),
            np.bincount(parent, weights=value, minlength=n),
            np.bincount(parent, weights=target, minlength=n),
        )
