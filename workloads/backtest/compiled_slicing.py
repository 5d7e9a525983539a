"""Compiled execution levels under a daily one (day → 60/30/15min → … → 1min), with qlib's rules, in numba.

qlib's NestedExecutor runs, for every bar of every inner level of every day, the inner strategy, one
``Exchange.deal_order`` per child order and the inner accounts' bookkeeping in Python: 20–80× the
cost of the daily backtest. ``CompiledSlicingExecutor`` replaces those inner levels — and only
them — when every level slices with a built-in strategy (TWAP, VWAP, SBB-EMA): the daily strategy,
the daily account and report stay qlib's, on a ``MinuteBackedExchange`` that quotes the day as
qlib's 1-minute Exchange would. Each day, the levels (``level_stack.Stack``) run the day's orders
through the compiled kernels (``slicing_kernel``) with the rules of qlib's TWAPStrategy and
SBBStrategyEMA (its EMA trend computed as qlib computes it, ``sbb_signal``), kubequant's VWAP and
expiring variants, and ``Exchange._calc_trade_info_by_order`` (or ``ImpactExchange``'s) on bars that
qlib's 1-minute Exchange would quote (``level_bars``). The day's fills are then booked on qlib's
account, one update per parent order (value, cost and amount sum exactly to the children's). qlib's
NestedExecutor is the reference it is tested against (``tests/integration/test_compiled_slicing.py``,
``tests/integration/test_compiled_levels.py``); custom inner strategies use qlib's path.

Not reproduced: the inner accounts' per-bar portfolio reports and hold counters, which nothing in a
kubequant report reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from qlib.backtest.decision import BaseTradeDecision, Order
from qlib.backtest.executor import SimulatorExecutor

from kubequant.workloads.backtest.level_bars import LevelBars
from kubequant.workloads.backtest.level_stack import Day, Level, Parents, Stack
from kubequant.workloads.backtest.minute_exchange import MinuteBars, end_of_day
from kubequant.workloads.backtest.sbb_signal import SignalCloses
from kubequant.workloads.backtest.slicing import cumulative_profile, volume_history
from kubequant.workloads.backtest.slicing_kernel import MODES, slice_day

__all__ = ["SLICINGS", "CompiledSlicingExecutor", "LevelRecord", "slice_day"]

SLICINGS = tuple(MODES)


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


def keep_fill_by_fill(position: Any, codes: list[str], day: Day) -> None:
    """Holdings and cash as qlib's Position has them after booking each fill in turn (the kernel's).

    qlib adds value/price of every child fill to the position; booking one update per daily order
    adds value/average price instead, which differs in the last bits — and SBB-EMA's whole-lot
    counts (``amount // unit``) of the next day read those bits.
    """
    for i, code in enumerate(codes):
        if position.check_stock(code):
            if day.present[i]:
                position.position[code]["amount"] = float(day.held[i])
            else:
                position._del_stock(code)
    position.position["cash"] = float(day.cash)


def _per_bar_means(bar: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bars, child counts and NaN-skipping means of ``values`` per bar (children given by their bar)."""
    order = np.argsort(bar, kind="stable")
    bars, first, count = np.unique(bar[order], return_index=True, return_counts=True)
    sorted_values = values[order]
    valid = ~np.isnan(sorted_values)
    sums = np.add.reduceat(np.where(valid, sorted_values, 0.0), first)
    counts = np.add.reduceat(valid.astype(np.float64), first)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return bars, count, means


class CompiledSlicingExecutor(SimulatorExecutor):  # type: ignore[misc]
    """A daily executor whose orders are worked through compiled inner levels, bar by bar."""

    def __init__(
        self,
        time_per_step: str = "day",
        levels: list[dict[str, Any]] | None = None,
        slicing: str = "twap",
        lookback_days: int = 5,
        expire_unfilled: bool = False,
        instruments: str | list[str] = "all",
        **kwargs: Any,
    ) -> None:
        """``levels``: [{frequency, slicing, lookback_days}], outermost first; default one 1min ``slicing`` level.

        ``instruments``: the market (or list) whose minute bars SBB-EMA's signal reads, as qlib's
        SBBStrategyEMA is given it.
        """
        if time_per_step != "day":
            raise ValueError("the compiled levels run under a daily level only")
        levels = levels or [{"frequency": "1min", "slicing": slicing, "lookback_days": lookback_days}]
        for i, spec in enumerate(levels):
            if spec["slicing"] not in MODES:
                raise ValueError(f"levels[{i}].slicing must be one of {SLICINGS}, not {spec['slicing']!r}")
        super().__init__(time_per_step=time_per_step, **kwargs)
        self.level_specs = levels
        self.expire_unfilled = expire_unfilled
        self.instruments = instruments
        self.fills: list[dict[str, np.ndarray]] = []
        self.day_level = LevelRecord()
        self.records = [LevelRecord() for _ in levels]
        self._volumes: dict[str, pd.Series] = {}
        self._stack: Stack | None = None
        self._closes: SignalCloses | None = None

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

    def stack(self) -> Stack:
        """The levels over the exchange's minutes (built on first use)."""
        if self._stack is None:
            bars: MinuteBars = self.trade_exchange.minutes
            costs = self._costs()
            levels = [
                Level(
                    LevelBars.aggregate(bars, s["frequency"]),
                    MODES[s["slicing"]],
                    int(s.get("lookback_days", 5)),
                )
                for s in self.level_specs
            ]
            self._stack = Stack(
                levels=levels,
                costs=costs,
                impact=self._impact(),
                expire=self.expire_unfilled,
                trade_unit=float(costs[4]),
                trends=self._trends,
                profile=self._profile,
            )
        return self._stack

    # ---- what the slicing strategies read ------------------------------------------------------

    def _trends(self, index: int, day: Day, parents: Parents, first: int, stop: int) -> np.ndarray:
        """SBB-EMA's trend per parent and step, from the EMA signal of this reset's window."""
        if self._closes is None:
            from qlib.data import D

            bars: MinuteBars = self.trade_exchange.minutes
            market = (
                D.instruments(self.instruments) if isinstance(self.instruments, str) else self.instruments
            )
            self._closes = SignalCloses.for_period(market, bars.minutes[0], end_of_day(bars.minutes[-1]))
        level = self.stack().levels[index]
        codes = [day.codes[r] for r in parents.row]
        trends: np.ndarray = self._closes.trends(codes, level.bars.starts_around(first, stop), stop - first)
        return trends

    def _profile(self, index: int, day: Day, parents: Parents, first: int, stop: int) -> np.ndarray:
        """VWAP: each parent's expected share done after each step of the bars [first, stop)."""
        level = self.stack().levels[index]
        starts = level.bars.starts[first:stop]
        if level.bars.frequency == "1min":
            spans = list(zip(starts, starts + pd.Timedelta(seconds=59), strict=True))
        else:
            spans = level.bars.spans(first, stop)
        when = starts[0].normalize()
        return np.vstack(
            [
                cumulative_profile(self._history(day.codes[r]), when, spans, level.lookback_days)
                for r in parents.row
            ]
        )

    def _history(self, stock_id: str) -> pd.Series:
        """1-minute volumes from VWAP's look-back window before the period to its end (loaded once)."""
        if stock_id not in self._volumes:
            bars: MinuteBars = self.trade_exchange.minutes
            lookback = max(int(s.get("lookback_days", 5)) for s in self.level_specs)
            self._volumes[stock_id] = volume_history(
                stock_id, bars.minutes[0], lookback, end=bars.minutes[-1]
            )
        return self._volumes[stock_id]

    # ---- one day -------------------------------------------------------------------------------

    def _day_columns(self, trade_decision: BaseTradeDecision, start: pd.Timestamp) -> tuple[int, int]:
        """Minute columns of the day, clipped to the decision's trade range (one 1-minute level only)."""
        bars: MinuteBars = self.trade_exchange.minutes
        lo, hi = bars.day_span(start)
        if trade_decision.trade_range is None or hi <= lo:
            return lo, hi
        only = self.level_specs[0]
        if len(self.level_specs) > 1 or only["frequency"] != "1min" or only["slicing"] == "sbb_ema":
            raise ValueError(
                "a trade range on the daily decision runs compiled only above one 1min TWAP/VWAP level; "
                "set spec.executor.engine: qlib"
            )
        first, last = trade_decision.trade_range.clip_time_range(
            start_time=bars.minutes[lo], end_time=bars.minutes[hi - 1]
        )
        inside = np.flatnonzero((bars.minutes[lo:hi] >= first) & (bars.minutes[lo:hi] <= last))
        return (lo + int(inside[0]), lo + int(inside[-1]) + 1) if len(inside) else (lo, lo)

    def _collect_data(
        self, trade_decision: BaseTradeDecision, level: int = 0
    ) -> tuple[list[Any], dict[str, Any]]:
        start, _end = self.trade_calendar.get_step_time()
        orders: list[Order] = list(self._get_order_iterator(trade_decision))
        bars: MinuteBars = self.trade_exchange.minutes
        lo, hi = self._day_columns(trade_decision, start)
        row_of = bars.row
        known = [o for o in orders if o.stock_id in row_of]
        execute_result: list[Any] = [(o, 0.0, 0.0, np.nan) for o in orders if o.stock_id not in row_of]
        for o in orders:
            o.deal_amount = 0.0
        if not known or hi <= lo:
            self._record(start, orders, execute_result, None)
            return execute_result, {"trade_info": execute_result}

        ex = self.trade_exchange
        stack = self.stack()
        codes = sorted({o.stock_id for o in known})
        local = {code: i for i, code in enumerate(codes)}
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
        rows = np.array([row_of[c] for c in codes], dtype=np.int64)
        day = stack.day(codes, rows, lo, hi, held, present, float(position.get_cash()))
        parents = Parents(
            row=np.array([local[o.stock_id] for o in known], dtype=np.int64),
            is_buy=np.array([o.direction == Order.BUY for o in known], dtype=np.bool_),
            amount=np.array([o.amount for o in known], dtype=np.float64),
            lot=np.array(lots, dtype=np.float64),
            origin=np.arange(len(known), dtype=np.int64),
        )
        dealt_by, value_by, _asked = stack.run(0, day, parents, lo, hi)
        finest = day.children[-1]
        cost_by = np.bincount(finest.column("origin"), weights=finest.column("cost"), minlength=len(known))
        for k, o in enumerate(known):
            dealt, val, fee = float(dealt_by[k]), float(value_by[k]), float(cost_by[k])
            o.deal_amount = dealt
            o.factor = ex.get_factor(o.stock_id, o.start_time, o.end_time)
            avg = val / dealt if dealt > 0 else np.nan
            if val > 1e-05:
                self.trade_account.update_order(order=o, trade_val=val, cost=fee, trade_price=avg)
            execute_result.append((o, val, fee, avg))
        keep_fill_by_fill(position, codes, day)
        self._keep_fills(day, rows)
        self._record(start, orders, execute_result, day, rows)
        return execute_result, {"trade_info": execute_result}

    # ---- what the report reads -----------------------------------------------------------------

    def _keep_fills(self, day: Day, rows: np.ndarray) -> None:
        finest = day.children[-1]
        deal = finest.column("deal")
        filled = np.flatnonzero(deal > 0)
        if len(filled) == 0:
            return
        level = self.stack().levels[-1].bars
        bar = finest.column("bar")[filled]
        row = finest.column("row")[filled]
        is_buy = finest.column("is_buy")[filled]
        codes = np.array(day.codes)
        self.fills.append(
            {
                "datetime": level.starts.to_numpy()[bar],
                "instrument": codes[row],
                "side": np.where(is_buy, "buy", "sell"),
                "amount": deal[filled],
                "price": finest.column("price")[filled],
                "value": finest.column("value")[filled],
                "cost": finest.column("cost")[filled],
                "factor": level.factor[rows[row], bar],
            }
        )

    def _base_prices(
        self, rows: np.ndarray, is_buy: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> np.ndarray:
        """qlib's price-advantage base: the mean of the deal price over each range's minutes (prices > 1e-8)."""
        bars: MinuteBars = self.trade_exchange.minutes
        out = np.full(len(rows), np.nan)
        for i, (r, buy, a, b) in enumerate(zip(rows, is_buy, lo, hi, strict=True)):
            prices = (bars.raw_buy if buy else bars.raw_sell)[r, a:b]
            with np.errstate(invalid="ignore"):
                prices = prices[prices > 1e-08]
            if len(prices):
                out[i] = prices.mean()
        return out

    def _record(
        self,
        start: pd.Timestamp,
        orders: list[Order],
        execute_result: list[Any],
        day: Day | None,
        rows: np.ndarray | None = None,
    ) -> None:
        """qlib's indicators of every level: fill rate, and price advantage against the step's TWAP price."""
        bars: MinuteBars = self.trade_exchange.minutes
        ffr, pa = [], []
        row_of = bars.row
        lo_d, hi_d = bars.day_span(start)
        for o, _val, _fee, avg in execute_result:
            ffr.append(o.deal_amount / o.amount if o.amount else np.nan)
            if o.stock_id in row_of and o.deal_amount > 0 and hi_d > lo_d:
                buy = o.direction == Order.BUY
                base = self._base_prices(
                    np.array([row_of[o.stock_id]]), np.array([buy]), np.array([lo_d]), np.array([hi_d])
                )[0]
                if not np.isnan(base):
                    pa.append((-1.0 if buy else 1.0) * (avg / base - 1))
        self.day_level.add(
            np.datetime64(pd.Timestamp(start)),
            len(orders),
            np.mean(ffr) if ffr else np.nan,
            np.mean(pa) if pa else np.nan,
        )
        if day is None or rows is None:
            return
        for index, children in enumerate(day.children):
            bar = children.column("bar")
            if len(bar) == 0:
                continue
            level = self.stack().levels[index].bars
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = children.column("deal") / children.column("amount")
            if index == len(day.children) - 1:
                steps, count, means = _per_bar_means(bar, ratio)
                self.records[index].add(level.starts[steps].to_numpy(), count, means, np.zeros(len(steps)))
                continue
            deal, value = children.column("deal"), children.column("value")
            is_buy = children.column("is_buy")
            base = self._base_prices(
                rows[children.column("row")], is_buy, level.edges[bar], level.edges[bar + 1]
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                advantage = np.where(is_buy, -1.0, 1.0) * (value / deal / base - 1)
            advantage = np.where(deal > 0, advantage, np.nan)
            steps, count, means = _per_bar_means(bar, ratio)
            _steps, _count, pa_means = _per_bar_means(bar, advantage)
            self.records[index].add(level.starts[steps].to_numpy(), count, means, pa_means)

    def trades(self) -> pd.DataFrame:
        """Every fill of the finest level, in the columns of ``report.trades_frame``."""
        columns = ["datetime", "instrument", "side", "amount", "price", "value", "cost", "factor"]
        if not self.fills:
            return pd.DataFrame(columns=columns)
        return pd.DataFrame({c: np.concatenate([day[c] for day in self.fills]) for c in columns})

    def level_indicators(self) -> dict[str, tuple[pd.DataFrame, None]]:
        """Every level's indicator frames, keyed like qlib's backtest indicators ('1day', '30min', '1min')."""
        out = {"1day": (self.day_level.frame(), None)}
        for spec, record in zip(self.level_specs, self.records, strict=True):
            out[spec["frequency"]] = (record.frame(), None)
        return out
