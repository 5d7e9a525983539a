"""A compiled 1-minute execution level under a daily one: TWAP or VWAP slicing with qlib's fill rules, in numba.

qlib's NestedExecutor(day → 1min) runs, for every minute of every day, the inner strategy, one
``Exchange.deal_order`` per child order and the inner account's bookkeeping in Python: ~20× the cost
of the daily backtest. ``CompiledSlicingExecutor`` replaces that inner loop — and only that — for
the standard slicing strategies: the daily strategy, the daily account and report stay qlib's, on a
``MinuteBackedExchange`` that quotes the day as qlib's 1-minute Exchange would. Each day, one call
of ``slice_day`` (compiled) runs the minutes for all of the day's orders with the rules of qlib's
TWAPStrategy (and kubequant's VWAP and expiring variants) and of ``Exchange._calc_trade_info_by_order``
(or ``ImpactExchange``'s): suspended minutes skipped, the expected amount rounded to the trade unit
and clipped to what remains, the last minute taking the remainder, limit flags, the fallback to the
close, the volume cap, the position and cash limits (in the order the orders are dealt), rounding,
open/close costs, minimum cost, qlib's quadratic impact rate, the Almgren–Chriss fill price. The
day's fills are then booked on qlib's account, one update per parent order (value, cost and amount
sum exactly to the children's). qlib's NestedExecutor is the reference it is tested against
(``tests/integration/test_compiled_slicing.py``); other inner strategies use qlib's path.

Not reproduced: the inner account's per-minute portfolio report and ``count_1min`` hold counters,
which nothing in a kubequant report reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from numba import njit
from qlib.backtest.decision import BaseTradeDecision, Order
from qlib.backtest.executor import SimulatorExecutor

from kubequant.workloads.backtest.minute_exchange import MinuteBars
from kubequant.workloads.backtest.slicing import cumulative_profile, volume_history

SLICINGS = ("twap", "vwap")


@njit(cache=True)
def _round_unit(amount: float, factor: float, unit: float) -> float:  # pragma: no cover - compiled
    """qlib's round_amount_by_trade_unit: whole lots of ``unit`` shares, 0.1 share of slack."""
    if np.isnan(unit):
        return amount
    return (amount * factor + 0.1) // unit * unit / factor


@njit(cache=True)
def _isclose(a: float, b: float) -> bool:  # pragma: no cover - compiled
    return abs(a - b) <= 1e-08 + 1e-05 * abs(b)


@njit(cache=True)
def _fill_price(
    arrival: float, amount: float, volume: float, sigma: float, sign: float, impact: np.ndarray
) -> float:  # pragma: no cover - compiled
    """impact.py's fill price P·(1 + d·f) of ``amount`` in a bar of ``volume`` (impact[0] = 0: none)."""
    if impact[0] == 0.0:
        return arrival
    p = 0.0
    if amount > 0:
        p = amount / volume if (np.isfinite(volume) and volume > 0) else np.nan
    f = impact[1] / 1e4 + impact[2] * sigma * p ** impact[4] + impact[3] * p
    return max(arrival * (1.0 + sign * f), 0.0)


@njit(cache=True, error_model="numpy")
def slice_day(
    stock: np.ndarray,
    is_buy: np.ndarray,
    amount: np.ndarray,
    lot: np.ndarray,
    expected: np.ndarray,
    buy_price: np.ndarray,
    sell_price: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    factor: np.ndarray,
    limit_buy: np.ndarray,
    limit_sell: np.ndarray,
    sigma: np.ndarray,
    held: np.ndarray,
    present: np.ndarray,
    cash: float,
    costs: np.ndarray,
    impact: np.ndarray,
    expire: bool,
    twap: bool,
) -> tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, float
]:  # pragma: no cover - compiled
    """Run one day's minutes for ``n`` parent orders; the children, and the cash after.

    Parents ``k`` trade instrument row ``stock[k]`` of the day's (rows × minutes) bars; ``expected[k, t]``
    is the share of the parent expected done after minute ``t`` (unused with ``twap``: the kernel
    takes equal steps in qlib's TWAP operation order); ``lot[k]`` is the parent's trade unit in shares (NaN: no rounding). ``held``/``present`` are the position (updated in place). ``costs``:
    open, close, min cost, qlib's impact_cost, trade unit (NaN: none). ``impact``: enabled (0/1),
    slippage bps, temporary, permanent, beta, max participation (NaN: no cap).
    """
    n = amount.shape[0]
    steps = close.shape[1]
    open_cost, close_cost, min_cost, impact_cost, trade_unit = (
        costs[0],
        costs[1],
        costs[2],
        costs[3],
        costs[4],
    )
    capped = impact[0] != 0.0
    max_part = impact[5]
    size = n * steps
    out_parent = np.empty(size, np.int64)
    out_step = np.empty(size, np.int64)
    out_amount = np.empty(size)
    out_deal = np.empty(size)
    out_price = np.empty(size)
    out_value = np.empty(size)
    out_cost = np.empty(size)
    remain = amount.copy()
    count = 0
    for t in range(steps):
        for k in range(n):
            s = stock[k]
            if np.isnan(close[s, t]):
                continue  # suspended: the slicing strategy makes no child order this minute
            if twap:  # qlib's TWAPStrategy's operation order: amount / steps * (step + 1)
                delta = amount[k] / steps * (t + 1) - (amount[k] - remain[k])
            else:
                delta = amount[k] * expected[k, t] - (amount[k] - remain[k])
            if np.isnan(lot[k]):
                target = delta
            else:
                target = min(np.rint(delta / lot[k]) * lot[k], remain[k])
            if t == steps - 1:
                target = remain[k]
            if not target > 1e-05:
                continue
            buy = is_buy[k]
            deal = 0.0
            price = np.nan
            value = 0.0
            cost = 0.0
            if not (limit_buy[s, t] if buy else limit_sell[s, t]):
                arrival = buy_price[s, t] if buy else sell_price[s, t]
                vol = volume[s, t]
                f = factor[s, t]
                sign = 1.0 if buy else -1.0
                deal = target
                if capped:
                    if np.isfinite(vol) and vol > 0:
                        if not np.isnan(max_part):
                            deal = min(deal, max_part * vol)
                    else:
                        deal = 0.0
                total = vol * arrival
                if total == 0.0 or np.isnan(total):
                    adj = impact_cost
                else:
                    adj = impact_cost * (deal * arrival / total) ** 2
                if buy:
                    ratio = open_cost + adj
                    p = _fill_price(arrival, deal, vol, sigma[s], sign, impact)
                    value = deal * p
                    if cash < max(value * ratio, min_cost):
                        deal = 0.0
                    elif cash < value + max(value * ratio, min_cost):
                        affordable = 0.0
                        if cash >= min_cost:
                            if cash >= min_cost / ratio + min_cost:
                                affordable = cash / (1 + ratio) / p
                            else:
                                affordable = (cash - min_cost) / p
                        deal = _round_unit(min(affordable, deal), f, trade_unit)
                    else:
                        deal = _round_unit(deal, f, trade_unit)
                else:
                    ratio = close_cost + adj
                    current = held[s] if present[s] else 0.0
                    if not _isclose(deal, current):
                        deal = _round_unit(min(current, deal), f, trade_unit)
                    p = _fill_price(arrival, deal, vol, sigma[s], sign, impact)
                    value = deal * p
                    if cash + value < max(value * ratio, min_cost):
                        deal = 0.0
                price = _fill_price(arrival, deal, vol, sigma[s], sign, impact)
                value = deal * price
                cost = max(value * ratio, min_cost)
                if value <= 1e-05:
                    cost = 0.0
                if value > 1e-05:
                    shares = value / price
                    if buy:
                        held[s] = held[s] + shares if present[s] else shares
                        present[s] = True
                        cash -= value + cost
                    else:
                        left = held[s] - shares
                        if abs(left) < 1e-05:
                            held[s] = 0.0
                            present[s] = False
                        else:
                            held[s] = left
                        cash += value - cost
            out_parent[count] = k
            out_step[count] = t
            out_amount[count] = target
            out_deal[count] = deal
            out_price[count] = price
            out_value[count] = value
            out_cost[count] = cost
            count += 1
            remain[k] -= target if expire else deal
    return out_parent, out_step, out_amount, out_deal, out_price, out_value, out_cost, count, cash


class Children(NamedTuple):
    """The child orders of one day, as ``slice_day`` returns them (one entry per child)."""

    parent: np.ndarray
    step: np.ndarray
    amount: np.ndarray
    deal: np.ndarray
    price: np.ndarray
    value: np.ndarray
    cost: np.ndarray


@dataclass
class LevelRecord:
    """Per-step indicators of one level, with qlib's definitions (order count, mean fill rate, mean price advantage)."""

    steps: list[Any] = field(default_factory=list)
    count: list[np.ndarray] = field(default_factory=list)
    ffr: list[np.ndarray] = field(default_factory=list)
    pa: list[np.ndarray] = field(default_factory=list)

    def add(self, steps: Any, count: Any, ffr: Any, pa: Any) -> None:
        self.steps.append(np.atleast_1d(np.asarray(steps)))
        self.count.append(np.atleast_1d(np.asarray(count, dtype=np.float64)))
        self.ffr.append(np.atleast_1d(np.asarray(ffr, dtype=np.float64)))
        self.pa.append(np.atleast_1d(np.asarray(pa, dtype=np.float64)))

    def frame(self) -> pd.DataFrame:
        if not self.steps:
            return pd.DataFrame(columns=["count", "ffr", "pa"], dtype=np.float64)
        return pd.DataFrame(
            {
                "count": np.concatenate(self.count),
                "ffr": np.concatenate(self.ffr),
                "pa": np.concatenate(self.pa),
            },
            index=pd.DatetimeIndex(np.concatenate(self.steps)),
        )


class CompiledSlicingExecutor(SimulatorExecutor):  # type: ignore[misc]
    """A daily executor whose orders are worked minute by minute by the compiled ``slice_day``."""

    def __init__(
        self,
        time_per_step: str = "day",
        slicing: str = "twap",
        lookback_days: int = 5,
        expire_unfilled: bool = False,
        **kwargs: Any,
    ) -> None:
        if slicing not in SLICINGS:
            raise ValueError(f"slicing must be one of {SLICINGS}, not {slicing!r}")
        if time_per_step != "day":
            raise ValueError("the compiled level runs under a daily level only")
        super().__init__(time_per_step=time_per_step, **kwargs)
        self.slicing = slicing
        self.lookback_days = lookback_days
        self.expire_unfilled = expire_unfilled
        self.fills: list[dict[str, np.ndarray]] = []
        self.day_level = LevelRecord()
        self.minute_level = LevelRecord()
        self._volumes: dict[str, pd.Series] = {}

    # ---- the exchange's parameters, as the kernel takes them --------------------------------

    def _costs(self) -> np.ndarray:
        ex = self.trade_exchange
        unit = np.nan if (ex.trade_w_adj_price or ex.trade_unit is None) else float(ex.trade_unit)
        return np.array([ex.open_cost, ex.close_cost, ex.min_cost, ex.impact_cost, unit], dtype=np.float64)

    def _impact(self) -> np.ndarray:
        settings = getattr(self.trade_exchange, "impact", None)
        if settings is None:
            return np.zeros(6)
        p = settings.params
        cap = np.nan if p.max_participation is None else float(p.max_participation)
        return np.array([1.0, p.slippage_bps, p.temporary, p.permanent, p.beta, cap], dtype=np.float64)

    # ---- one day -------------------------------------------------------------------------------

    def _expected(self, orders: list[Order], lo: int, hi: int) -> np.ndarray:
        """VWAP: share of each parent expected done after each minute. TWAP: none (the kernel computes it)."""
        if self.slicing == "twap":
            return np.empty((len(orders), 0))
        bars: MinuteBars = self.trade_exchange.minutes
        minutes = bars.minutes[lo:hi]
        spans = list(zip(minutes, minutes + pd.Timedelta(seconds=59), strict=True))
        day = minutes[0].normalize()
        return np.vstack(
            [cumulative_profile(self._history(o.stock_id), day, spans, self.lookback_days) for o in orders]
        )

    def _history(self, stock_id: str) -> pd.Series:
        """1-minute volumes from VWAP's look-back window before the period to its end (loaded once)."""
        if stock_id not in self._volumes:
            bars: MinuteBars = self.trade_exchange.minutes
            self._volumes[stock_id] = volume_history(
                stock_id, bars.minutes[0], self.lookback_days, end=bars.minutes[-1]
            )
        return self._volumes[stock_id]

    def _collect_data(self, trade_decision: BaseTradeDecision, level: int = 0) -> tuple[list[Any], dict]:
        start, _end = self.trade_calendar.get_step_time()
        orders: list[Order] = list(self._get_order_iterator(trade_decision))
        bars: MinuteBars = self.trade_exchange.minutes
        lo, hi = bars.day_span(start)
        if trade_decision.trade_range is not None and hi > lo:
            first, last = trade_decision.trade_range.clip_time_range(
                start_time=bars.minutes[lo], end_time=bars.minutes[hi - 1]
            )
            inside = np.flatnonzero((bars.minutes[lo:hi] >= first) & (bars.minutes[lo:hi] <= last))
            lo, hi = (lo + int(inside[0]), lo + int(inside[-1]) + 1) if len(inside) else (lo, lo)
        row_of = bars.row
        known = [o for o in orders if o.stock_id in row_of]
        execute_result: list[Any] = [(o, 0.0, 0.0, np.nan) for o in orders if o.stock_id not in row_of]
        for o in orders:
            o.deal_amount = 0.0
        if not known or hi <= lo:
            self._record(start, orders, execute_result, None, lo)
            return execute_result, {"trade_info": execute_result}

        ex = self.trade_exchange
        codes = sorted({o.stock_id for o in known})
        local = {code: i for i, code in enumerate(codes)}
        rows = [row_of[c] for c in codes]
        position = self.trade_account.current_position
        held = np.array(
            [position.get_stock_amount(c) if position.check_stock(c) else 0.0 for c in codes],
            dtype=np.float64,
        )
        present = np.array([position.check_stock(c) for c in codes], dtype=np.bool_)
        lots = []
        for o in known:
            unit = ex.get_amount_of_trade_unit(
                stock_id=o.stock_id, start_time=o.start_time, end_time=o.end_time
            )
            lots.append(np.nan if unit is None else float(unit))
        day = slice(lo, hi)
        parent, step, target, deal, price, value, cost, count, _cash = slice_day(
            np.array([local[o.stock_id] for o in known], dtype=np.int64),
            np.array([o.direction == Order.BUY for o in known], dtype=np.bool_),
            np.array([o.amount for o in known], dtype=np.float64),
            np.array(lots, dtype=np.float64),
            self._expected(known, lo, hi),
            bars.buy_price[rows, day],
            bars.sell_price[rows, day],
            bars.close[rows, day],
            bars.volume[rows, day],
            bars.factor[rows, day],
            bars.limit_buy[rows, day],
            bars.limit_sell[rows, day],
            bars.sigma[rows, lo],
            held,
            present,
            float(position.get_cash()),
            self._costs(),
            self._impact(),
            self.expire_unfilled,
            self.slicing == "twap",
        )
        children = Children(
            parent[:count],
            step[:count],
            target[:count],
            deal[:count],
            price[:count],
            value[:count],
            cost[:count],
        )
        n = len(known)
        dealt_by = np.bincount(children.parent, weights=children.deal, minlength=n)
        value_by = np.bincount(children.parent, weights=children.value, minlength=n)
        cost_by = np.bincount(children.parent, weights=children.cost, minlength=n)
        for k, o in enumerate(known):
            dealt, val, fee = float(dealt_by[k]), float(value_by[k]), float(cost_by[k])
            o.deal_amount = dealt
            o.factor = ex.get_factor(o.stock_id, o.start_time, o.end_time)
            avg = val / dealt if dealt > 0 else np.nan
            if val > 1e-05:
                self.trade_account.update_order(order=o, trade_val=val, cost=fee, trade_price=avg)
            execute_result.append((o, val, fee, avg))
        self._keep_fills(children, known, bars, lo, rows, local)
        self._record(start, orders, execute_result, children, lo)
        return execute_result, {"trade_info": execute_result}

    # ---- what the report reads -----------------------------------------------------------------

    def _keep_fills(
        self,
        children: Children,
        known: list[Order],
        bars: MinuteBars,
        lo: int,
        rows: list[int],
        local: dict[str, int],
    ) -> None:
        filled = np.flatnonzero(children.deal > 0)
        if len(filled) == 0:
            return
        parent = children.parent[filled]
        codes = np.array([o.stock_id for o in known])
        buys = np.array([o.direction == Order.BUY for o in known])
        rows_of_parent = np.array([rows[local[o.stock_id]] for o in known], dtype=np.int64)
        at = lo + children.step[filled]
        self.fills.append(
            {
                "datetime": bars.minutes.to_numpy()[at],
                "instrument": codes[parent],
                "side": np.where(buys[parent], "buy", "sell"),
                "amount": children.deal[filled],
                "price": children.price[filled],
                "value": children.value[filled],
                "cost": children.cost[filled],
                "factor": bars.factor[rows_of_parent[parent], at],
            }
        )

    def _record(
        self,
        start: pd.Timestamp,
        orders: list[Order],
        execute_result: list[Any],
        children: Children | None,
        lo: int,
    ) -> None:
        """qlib's indicators of both levels: fill rate and price advantage against the day's TWAP price."""
        bars: MinuteBars = self.trade_exchange.minutes
        ffr, pa = [], []
        row_of = bars.row
        lo_d, hi_d = bars.day_span(start)
        for o, _val, _fee, avg in execute_result:
            ffr.append(o.deal_amount / o.amount if o.amount else np.nan)
            if o.stock_id in row_of and o.deal_amount > 0 and hi_d > lo_d:
                prices = (bars.buy_price if o.direction == Order.BUY else bars.sell_price)[
                    row_of[o.stock_id], lo_d:hi_d
                ]
                prices = prices[prices > 1e-08]
                if len(prices):
                    sign = -1.0 if o.direction == Order.BUY else 1.0
                    pa.append(sign * (avg / prices.mean() - 1))
        self.day_level.add(
            np.datetime64(pd.Timestamp(start)),
            len(orders),
            np.mean(ffr) if ffr else np.nan,
            np.mean(pa) if pa else np.nan,
        )
        if children is None or len(children.step) == 0:
            return
        ratio = children.deal / children.amount
        order = np.argsort(children.step, kind="stable")
        steps, first, count = np.unique(children.step[order], return_index=True, return_counts=True)
        means = np.add.reduceat(ratio[order], first) / count
        self.minute_level.add(bars.minutes[lo + steps].to_numpy(), count, means, np.zeros(len(steps)))

    def trades(self) -> pd.DataFrame:
        """Every 1-minute fill, in the columns of ``report.trades_frame``."""
        columns = ["datetime", "instrument", "side", "amount", "price", "value", "cost", "factor"]
        if not self.fills:
            return pd.DataFrame(columns=columns)
        return pd.DataFrame({c: np.concatenate([day[c] for day in self.fills]) for c in columns})

    def level_indicators(self) -> dict[str, tuple[pd.DataFrame, None]]:
        """Both levels' indicator frames, keyed like qlib's backtest indicators ('1day', '1min')."""
        return {"1day": (self.day_level.frame(), None), "1min": (self.minute_level.frame(), None)}
