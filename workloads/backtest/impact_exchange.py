"""qlib's Exchange with the Almgren–Chriss impact model of ``impact.py`` in every fill's price.

The extension point is ``Exchange._calc_trade_info_by_order``, the one method that turns an order
into (price, value, cost); ``deal_order`` and the accounts around it are qlib's. The override keeps
qlib's steps in qlib's order (volume clip, position and cash limits, rounding to the trade unit,
open/close cost rates, minimum cost, qlib's own quadratic ``impact_cost`` rate) and changes two
things:

- the amount is first capped at ``maxParticipation`` of the bar's ``$volume`` (a bar with no
  volume cannot be traded at all), with the same V the impact formula uses;
- the price is the fill price ``P·(1 + d·f)`` of the dealt amount instead of the deal price P.

Fees are qlib's rates on the fill's value; the impact lives in the price (so it shows in the
return, and ``|fill − P|·q`` is its cost in currency). When cash limits a buy, the affordable
amount is found at the fill price of the amount asked for; the amount finally dealt is smaller or
equal and fills at a price no higher, so cash never goes negative.

What happens to the part above the cap (``onCap``): in a single-level backtest each step's orders
are final, so the part above the cap is simply not traded that step, for ``carry`` and ``expire``
alike; the strategy decides afresh at the next step (TopkDropout recomputes its targets from the
positions it holds). ``carry`` is meaningful for nested execution, where an inner strategy keeps
working the outer order's remaining amount in the next bars; ``expire`` drops it there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from qlib.backtest.decision import Order
from qlib.backtest.exchange import Exchange
from qlib.backtest.position import BasePosition
from qlib.data import D

from kubequant.workloads.backtest.impact import (
    ImpactParams,
    direction_sign,
    fill_price,
    impact_fraction,
    participation,
    rolling_volatility,
    tradable_quantity,
)

log = logging.getLogger(__name__)

# The quote column holding σ of each bar's day (qlib keeps quote fields as "$name").
SIGMA_FIELD = "$kq_sigma"
ON_CAP = ("carry", "expire")


@dataclass(frozen=True)
class ImpactSettings:
    """``spec.exchange.impact`` as the exchange reads it (snake_case keys of the API model)."""

    params: ImpactParams
    volatility_window: int = 20
    on_cap: str = "carry"

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> ImpactSettings:
        """Settings from the API model's dump (``ImpactModel.model_dump()``); unknown keys refused."""
        cfg = dict(cfg)
        model = cfg.pop("model", "almgrenChriss")
        if model != "almgrenChriss":
            raise ValueError(f"unknown impact model {model!r}")
        window = int(cfg.pop("volatility_window", 20))
        on_cap = str(cfg.pop("on_cap", "carry"))
        if window < 2:
            raise ValueError("volatility_window must be at least 2")
        if on_cap not in ON_CAP:
            raise ValueError(f"on_cap must be one of {ON_CAP}")
        return cls(params=ImpactParams(**cfg), volatility_window=window, on_cap=on_cap)


class ImpactExchange(Exchange):  # type: ignore[misc]
    """qlib's Exchange whose fills carry Almgren–Chriss impact, slippage and a participation cap."""

    def __init__(self, impact: Mapping[str, Any] | ImpactSettings | None = None, **kwargs: Any) -> None:
        if isinstance(impact, ImpactSettings):
            self.impact = impact
        else:
            self.impact = ImpactSettings.from_mapping(impact or {})
        # Exchange.__init__ loads the quote through get_quote_from_qlib, which adds σ.
        super().__init__(**kwargs)

    # ---- data ---------------------------------------------------------------------------------

    def get_quote_from_qlib(self) -> None:
        """qlib's quote plus σ (rolling daily volatility known before each bar's day) as a column."""
        super().get_quote_from_qlib()
        self.quote_df[SIGMA_FIELD] = self._sigma_of_rows(self.quote_df.index)

    def _sigma_of_rows(self, index: pd.MultiIndex) -> np.ndarray:
        if len(index) == 0:
            return np.zeros(0)
        instruments = index.get_level_values("instrument")
        days = pd.DatetimeIndex(index.get_level_values("datetime")).normalize()
        window = self.impact.volatility_window
        before = D.calendar(end_time=days.min(), freq="day")
        before = before[before < days.min()]
        # window returns before the first day need window + 1 closes before it.
        history_start = (
            before[-(window + 1)] if len(before) > window else (before[0] if len(before) else days.min())
        )
        calendar = D.calendar(start_time=history_start, end_time=days.max(), freq="day")
        close = D.features(self.codes, ["$close"], history_start, days.max(), freq="day", disk_cache=True)
        wide = close["$close"].unstack(level="instrument")
        # Every quoted instrument gets a column, so one without closes falls back like any other.
        wide = wide.reindex(index=pd.DatetimeIndex(calendar), columns=instruments.unique())
        sigma = rolling_volatility(wide, window)
        stacked = sigma.stack()
        stacked.index = stacked.index.set_names(["datetime", "instrument"])
        keys = pd.MultiIndex.from_arrays([days, instruments], names=["datetime", "instrument"])
        values: np.ndarray = np.nan_to_num(stacked.reindex(keys).to_numpy(dtype=np.float64), nan=0.0)
        return values

    def get_sigma(self, stock_id: str, start_time: pd.Timestamp, end_time: pd.Timestamp) -> float:
        """σ used for a bar: the daily volatility known at the start of the bar's day."""
        value = self.quote.get_data(stock_id, start_time, end_time, field=SIGMA_FIELD, method="ts_data_last")
        return 0.0 if value is None or not np.isfinite(value) else float(value)

    # ---- the cap ------------------------------------------------------------------------------

    def bar_volume(self, order: Order) -> float:
        """V of the formula: the volume of the order's bar (NaN when unknown)."""
        volume = self.get_volume(order.stock_id, order.start_time, order.end_time)
        return np.nan if volume is None else float(volume)

    def _clip_amount_by_volume(self, order: Order, dealt_order_amount: dict[str, float]) -> float | None:
        """qlib's volume limits (if any were configured), then the participation cap of the model."""
        out: float | None = super()._clip_amount_by_volume(order, dealt_order_amount)
        volume = self.bar_volume(order)
        allowed = float(tradable_quantity(order.deal_amount, volume, self.impact.params.max_participation))
        if allowed < order.deal_amount:
            log.debug("order capped by participation: %s, %s of %s", order, allowed, order.deal_amount)
        order.deal_amount = allowed
        return out

    # ---- the price ----------------------------------------------------------------------------

    def impact_price(self, order: Order, amount: float, arrival: float, volume: float, sigma: float) -> float:
        """The fill price of ``amount`` of ``order`` in its bar (the formula of impact.py)."""
        p = participation(amount, volume) if amount > 0 else 0.0
        f = impact_fraction(p, sigma, self.impact.params)
        return float(fill_price(arrival, direction_sign(order.direction == Order.BUY), f))

    def _calc_trade_info_by_order(
        self,
        order: Order,
        position: BasePosition | None,
        dealt_order_amount: dict[str, float],
    ) -> tuple[float, float, float]:
        """qlib's calculation with the participation cap and the fill price of the dealt amount."""
        arrival = float(
            self.get_deal_price(order.stock_id, order.start_time, order.end_time, order.direction)
        )
        volume = self.bar_volume(order)
        sigma = self.get_sigma(order.stock_id, order.start_time, order.end_time)
        order.factor = self.get_factor(order.stock_id, order.start_time, order.end_time)
        order.deal_amount = order.amount
        self._clip_amount_by_volume(order, dealt_order_amount)

        def price_of(amount: float) -> float:
            return self.impact_price(order, amount, arrival, volume, sigma)

        # qlib's own quadratic impact rate, unchanged (the API refuses it alongside this model).
        total_trade_val = volume * arrival
        trade_val = order.deal_amount * arrival
        if not total_trade_val or np.isnan(total_trade_val):
            adj_cost_ratio = self.impact_cost
        else:
            adj_cost_ratio = self.impact_cost * (trade_val / total_trade_val) ** 2

        if order.direction == Order.SELL:
            cost_ratio = self.close_cost + adj_cost_ratio
            if position is not None:
                current_amount = (
                    position.get_stock_amount(order.stock_id) if position.check_stock(order.stock_id) else 0
                )
                if not np.isclose(order.deal_amount, current_amount):
                    order.deal_amount = self.round_amount_by_trade_unit(
                        min(current_amount, order.deal_amount), order.factor
                    )
                value = order.deal_amount * price_of(order.deal_amount)
                if position.get_cash() + value < max(value * cost_ratio, self.min_cost):
                    order.deal_amount = 0
                    log.debug("order clipped due to cash limitation: %s", order)
        elif order.direction == Order.BUY:
            cost_ratio = self.open_cost + adj_cost_ratio
            if position is not None:
                cash = position.get_cash()
                price = price_of(order.deal_amount)
                value = order.deal_amount * price
                if cash < max(value * cost_ratio, self.min_cost):
                    order.deal_amount = 0
                    log.debug("order clipped due to cost higher than cash: %s", order)
                elif cash < value + max(value * cost_ratio, self.min_cost):
                    affordable = self._get_buy_amount_by_cash_limit(price, cash, cost_ratio)
                    order.deal_amount = self.round_amount_by_trade_unit(
                        min(affordable, order.deal_amount), order.factor
                    )
                    log.debug("order clipped due to cash limitation: %s", order)
                else:
                    order.deal_amount = self.round_amount_by_trade_unit(order.deal_amount, order.factor)
            else:
                order.deal_amount = self.round_amount_by_trade_unit(order.deal_amount, order.factor)
        else:
            raise NotImplementedError(f"order direction {order.direction} error")

        trade_price = price_of(order.deal_amount)
        trade_val = order.deal_amount * trade_price
        trade_cost = max(trade_val * cost_ratio, self.min_cost)
        if trade_val <= 1e-5:
            trade_cost = 0
        return trade_price, trade_val, trade_cost
