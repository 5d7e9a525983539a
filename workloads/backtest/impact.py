"""Almgren–Chriss market impact of one order in one bar: the pure cost model ``ImpactExchange`` charges.

The convention, exact for every fill (numpy-vectorised; scalars work too):

    q     shares dealt in the bar (after the participation cap), V the bar's volume (same units)
    p     = q / V                                       participation in the bar's volume
    f     = slippageBps / 1e4                           fixed slippage
          + temporary · σ · p^β                         temporary impact (σ: daily volatility)
          + permanent · p                               permanent impact
    fill  = P · (1 + d · f)                             P the arrival (deal) price, d = +1 buy, −1 sell
    cost  = |fill − P| · q                              impact in account currency (= P · f · q)

A sell's fill price is floored at 0 (a sell never pays to deliver shares). Permanent impact is
charged in full to the order that causes it and does not move the reference price of later bars:
a backtest replays recorded prices, and qlib's strategies deal orders speculatively on scratch
positions (TopkDropout estimates its cash that way), so a price state carried between fills would be
moved by orders that never happen. A bar with no (or unknown) volume cannot be traded at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

ArrayLike = npt.ArrayLike
BPS = 1e4


@dataclass(frozen=True)
class ImpactParams:
    """Coefficients of the model (the API's ``spec.exchange.impact`` without its data settings)."""

    permanent: float = 0.0
    temporary: float = 0.0
    beta: float = 0.5
    slippage_bps: float = 0.0
    max_participation: float | None = None

    def __post_init__(self) -> None:
        if self.permanent < 0 or self.temporary < 0 or self.slippage_bps < 0:
            raise ValueError("permanent, temporary and slippage_bps must be >= 0")
        if not 0 < self.beta <= 2:
            raise ValueError("beta must be in (0, 2]")
        if self.max_participation is not None and not 0 < self.max_participation <= 1:
            raise ValueError("max_participation must be in (0, 1]")


def direction_sign(is_buy: ArrayLike) -> npt.NDArray[np.float64]:
    """d of the formula: +1 for a buy, −1 for a sell."""
    return np.where(np.asarray(is_buy, dtype=bool), 1.0, -1.0)


def tradable_quantity(
    quantity: ArrayLike, volume: ArrayLike, max_participation: float | None
) -> npt.NDArray[np.float64]:
    """How much of ``quantity`` may be dealt in a bar of ``volume``: 0 without volume, else min(q, cap·V)."""
    q = np.asarray(quantity, dtype=np.float64)
    v = np.asarray(volume, dtype=np.float64)
    has_volume = np.isfinite(v) & (v > 0)
    capped = q if max_participation is None else np.minimum(q, max_participation * v)
    return np.where(has_volume, capped, 0.0)


def participation(quantity: ArrayLike, volume: ArrayLike) -> npt.NDArray[np.float64]:
    """p = q / V; NaN where the bar has no (or unknown) volume."""
    q = np.asarray(quantity, dtype=np.float64)
    v = np.asarray(volume, dtype=np.float64)
    ok = np.isfinite(v) & (v > 0)
    out: npt.NDArray[np.float64] = np.full(np.broadcast(q, v).shape, np.nan)
    np.divide(q, v, out=out, where=ok)
    return out


def impact_fraction(
    participation: ArrayLike, sigma: ArrayLike, params: ImpactParams
) -> npt.NDArray[np.float64]:
    """f = slippageBps/1e4 + temporary·σ·p^β + permanent·p: how far the fill moves from the arrival price."""
    p = np.asarray(participation, dtype=np.float64)
    s = np.asarray(sigma, dtype=np.float64)
    return params.slippage_bps / BPS + params.temporary * s * np.power(p, params.beta) + params.permanent * p


def fill_price(price: ArrayLike, direction: ArrayLike, fraction: ArrayLike) -> npt.NDArray[np.float64]:
    """P·(1 + d·f), a sell's floored at 0."""
    p = np.asarray(price, dtype=np.float64)
    d = np.asarray(direction, dtype=np.float64)
    return np.maximum(p * (1.0 + d * np.asarray(fraction, dtype=np.float64)), 0.0)


def impact_cost(price: ArrayLike, fill: ArrayLike, quantity: ArrayLike) -> npt.NDArray[np.float64]:
    """|fill − P|·q, the impact of a fill in account currency."""
    return np.abs(np.asarray(fill, dtype=np.float64) - np.asarray(price, dtype=np.float64)) * np.asarray(
        quantity, dtype=np.float64
    )


@dataclass(frozen=True)
class Fill:
    """One priced order: what was dealt, at what price, and what the impact cost."""

    quantity: Any
    participation: Any
    fraction: Any
    price: Any
    impact_cost: Any


def price_order(
    price: ArrayLike,
    quantity: ArrayLike,
    volume: ArrayLike,
    sigma: ArrayLike,
    direction: ArrayLike,
    params: ImpactParams,
) -> Fill:
    """Cap an order by the bar's volume and price what is dealt (all the steps of the module docstring)."""
    q = tradable_quantity(quantity, volume, params.max_participation)
    p = np.where(q > 0, participation(q, volume), 0.0)
    f = impact_fraction(p, sigma, params)
    fill = fill_price(price, direction, f)
    return Fill(quantity=q, participation=p, fraction=f, price=fill, impact_cost=impact_cost(price, fill, q))


def rolling_volatility(close: pd.DataFrame, window: int) -> pd.DataFrame:
    """σ per day and instrument from a (day × instrument) table of closes on the market calendar.

    σ on day t is the sample standard deviation (ddof = 1) of the close-to-close returns of the
    ``window`` days before t (days t−window … t−1; a return needs closes on both of its days), so day
    t uses nothing after t−1. With fewer than two such returns (a new listing, a long suspension)
    σ is the median σ of the other instruments that day, and 0 when no instrument has one.
    """
    close = close.astype(np.float64)
    returns = close / close.shift(1) - 1.0
    sigma = returns.rolling(window, min_periods=2).std(ddof=1).shift(1)
    median = sigma.median(axis=1, skipna=True)
    return sigma.apply(lambda col: col.fillna(median)).fillna(0.0)
