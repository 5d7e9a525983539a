"""Slicing strategies for inner execution levels that qlib lacks: VWAP, and TWAP/VWAP whose unfilled slices expire.

VWAP: each order of the level above is split over this level's steps in proportion to the volume
the instrument usually trades in each step: its 1-minute volumes over the previous ``lookback_days``
trading days (nothing from the day being traded), summed over each step's time of day. Without
history it falls back to equal slices (TWAP). The order bookkeeping — remaining amount, lot
rounding, suspended steps, the last step taking the remainder — is qlib's TWAPStrategy's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from qlib.backtest.decision import Order, TradeDecisionWO
from qlib.backtest.utils import get_start_end_idx
from qlib.contrib.strategy.rule_strategy import TWAPStrategy


def history_window(day: pd.Timestamp, lookback_days: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Calendar span searched for the ``lookback_days`` trading days before ``day`` (nothing of ``day``)."""
    day = pd.Timestamp(day).normalize()
    return day - pd.Timedelta(days=3 * lookback_days + 7), day - pd.Timedelta(seconds=1)


def volume_history(stock_id: str, until: pd.Timestamp, lookback_days: int, end: Any = None) -> pd.Series:
    """1-minute volumes of ``stock_id`` from the window before ``until``'s day up to ``end`` (default: that day)."""
    from qlib.data import D

    start, before = history_window(until, lookback_days)
    frame = D.features([stock_id], ["$volume"], start_time=start, end_time=end or before, freq="1min")
    if frame.empty:
        return pd.Series(dtype=np.float64)
    return frame.iloc[:, 0].droplevel(0).dropna()


def cumulative_profile(
    volume: pd.Series, day: pd.Timestamp, steps: list[tuple[pd.Timestamp, pd.Timestamp]], lookback_days: int
) -> np.ndarray:
    """Cumulative share of the volume expected by the end of each step of ``day``.

    ``volume``: the instrument's 1-minute volumes (any span; only the ``lookback_days`` trading days
    before ``day`` are read). Equal shares (TWAP) without history.
    """
    day = pd.Timestamp(day).normalize()
    start, before = history_window(day, lookback_days)
    history = volume[(volume.index >= start) & (volume.index <= before)]
    weights = np.ones(len(steps))
    if not history.empty:
        days = history.index.normalize().unique()[-lookback_days:]
        history = history[history.index.normalize().isin(days)]
        minute = history.index - history.index.normalize()
        totals = np.array(
            [history[(minute >= t0 - day) & (minute <= t1 - day)].sum() for t0, t1 in steps], dtype=float
        )
        if totals.sum() > 0:
            weights = totals
    return np.cumsum(weights) / weights.sum()


class VWAPStrategy(TWAPStrategy):
    """Slices orders by the instrument's usual intraday volume profile."""

    def __init__(self, lookback_days: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lookback_days = lookback_days
        self._cumulative: dict[str, np.ndarray] = {}

    def reset(self, outer_trade_decision: Any = None, **kwargs: Any) -> None:
        super().reset(outer_trade_decision=outer_trade_decision, **kwargs)
        if outer_trade_decision is not None:
            self._cumulative = {}

    def _profile(self, stock_id: str, steps: list[tuple[pd.Timestamp, pd.Timestamp]]) -> np.ndarray:
        """Cumulative expected share of the day's volume traded by the end of each step."""
        day = pd.Timestamp(steps[0][0]).normalize()
        history = volume_history(stock_id, day, self.lookback_days)
        return cumulative_profile(history, day, steps, self.lookback_days)

    def generate_trade_decision(self, execute_result: Any = None) -> TradeDecisionWO:
        """TWAP's decision with the expected amount by step taken from the volume profile."""
        if len(self.outer_trade_decision.get_decision()) == 0:
            return TradeDecisionWO(order_list=[], strategy=self)
        trade_step = self.trade_calendar.get_trade_step()
        start_idx, end_idx = get_start_end_idx(self.trade_calendar, self.outer_trade_decision)
        trade_len = end_idx - start_idx + 1
        if trade_step < start_idx or trade_step > end_idx:
            return TradeDecisionWO(order_list=[], strategy=self)
        rel_trade_step = trade_step - start_idx
        if execute_result is not None:
            for order, _, _, _ in execute_result:
                self.trade_amount_remain[order.stock_id] -= order.deal_amount
        steps = [self.trade_calendar.get_step_time(i) for i in range(start_idx, end_idx + 1)]
        trade_start_time, trade_end_time = self.trade_calendar.get_step_time(trade_step)
        order_list = []
        for order in self.outer_trade_decision.get_decision():
            if self.trade_exchange.check_stock_suspended(
                stock_id=order.stock_id, start_time=trade_start_time, end_time=trade_end_time
            ):
                continue
            if order.stock_id not in self._cumulative:
                self._cumulative[order.stock_id] = self._profile(order.stock_id, steps)
            amount_expect = order.amount * self._cumulative[order.stock_id][rel_trade_step]
            amount_remain = self.trade_amount_remain[order.stock_id]
            amount_delta = amount_expect - (order.amount - amount_remain)
            unit = self.trade_exchange.get_amount_of_trade_unit(
                stock_id=order.stock_id, start_time=order.start_time, end_time=order.end_time
            )
            target = (
                amount_delta if unit is None else min(np.round(amount_delta / unit) * unit, amount_remain)
            )
            if rel_trade_step == trade_len - 1:
                target = amount_remain
            if target > 1e-5:
                order_list.append(
                    Order(
                        stock_id=order.stock_id,
                        amount=target,
                        start_time=trade_start_time,
                        end_time=trade_end_time,
                        direction=order.direction,
                    )
                )
        return TradeDecisionWO(order_list=order_list, strategy=self)


class _ExpireUnfilled:
    """Gives up what a slice did not fill (above the participation cap, or untradable) instead of
    letting the next slices make it up, which is what TWAP's bookkeeping does by itself (carry)."""

    trade_amount_remain: dict[str, float]

    def generate_trade_decision(self, execute_result: Any = None) -> TradeDecisionWO:
        if execute_result is not None:
            for order, *_ in execute_result:
                self.trade_amount_remain[order.stock_id] -= order.amount - order.deal_amount
        return super().generate_trade_decision(execute_result)  # type: ignore[misc, no-any-return]


class ExpiringTWAPStrategy(_ExpireUnfilled, TWAPStrategy):
    """qlib's TWAP where an unfilled slice expires (``onCap: expire``)."""


class ExpiringVWAPStrategy(_ExpireUnfilled, VWAPStrategy):
    """VWAP where an unfilled slice expires (``onCap: expire``)."""
