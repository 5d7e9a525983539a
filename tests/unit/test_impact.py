"""The impact model's formula on hand-worked orders: fill price P·(1 + d·f), cost |fill − P|·q.

f = slippageBps/1e4 + temporary·σ·(q/V)^β + permanent·(q/V); the numbers below are worked by hand
(chosen so that p^β is a round number), and the code must reproduce them to the last few ulps.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kubequant.workloads.backtest.impact import (
    ImpactParams,
    direction_sign,
    fill_price,
    impact_fraction,
    participation,
    price_order,
    rolling_volatility,
    tradable_quantity,
)

pytestmark = pytest.mark.unit

BUY, SELL = 1.0, -1.0


def exact(value: float) -> object:
    return pytest.approx(value, rel=1e-12, abs=1e-12)


def test_square_root_law_buy() -> None:
    # p = 2500/10000 = 0.25, √p = 0.5: temporary 0.5·0.02·0.5 = 0.005, permanent 0.1·0.25 = 0.025,
    # slippage 10 bps = 0.001, f = 0.031: fill 10·1.031 = 10.31, cost 0.31·2500 = 775.
    params = ImpactParams(permanent=0.1, temporary=0.5, beta=0.5, slippage_bps=10)
    fill = price_order(10.0, 2500, 10000, 0.02, BUY, params)
    assert float(fill.quantity) == 2500
    assert float(fill.participation) == 0.25
    assert float(fill.fraction) == exact(0.031)
    assert float(fill.price) == exact(10.31)
    assert float(fill.impact_cost) == exact(775.0)


def test_sell_side_moves_the_price_down_by_the_same_fraction() -> None:
    params = ImpactParams(permanent=0.1, temporary=0.5, beta=0.5, slippage_bps=10)
    fill = price_order(10.0, 2500, 10000, 0.02, SELL, params)
    assert float(fill.price) == exact(9.69)
    assert float(fill.impact_cost) == exact(775.0)


def test_beta_one_is_linear_in_participation() -> None:
    # p = 1000/4000 = 0.25: temporary 1·0.04·0.25 = 0.01; fill 20·1.01 = 20.2; cost 0.2·1000 = 200.
    params = ImpactParams(temporary=1.0, beta=1.0)
    fill = price_order(20.0, 1000, 4000, 0.04, BUY, params)
    assert float(fill.price) == exact(20.2)
    assert float(fill.impact_cost) == exact(200.0)


def test_slippage_only_ignores_volume_and_volatility() -> None:
    # 5 bps of 100 = 0.05 per share: buy at 100.05, sell at 99.95, 0.05·300 = 15 either way.
    params = ImpactParams(slippage_bps=5)
    for direction, price in ((BUY, 100.05), (SELL, 99.95)):
        fill = price_order(100.0, 300, 1e9, 0.3, direction, params)
        assert float(fill.price) == exact(price)
        assert float(fill.impact_cost) == exact(15.0)


def test_permanent_only() -> None:
    # p = 500/1000 = 0.5, permanent 0.2·0.5 = 0.1: fill 8·1.1 = 8.8, cost 0.8·500 = 400.
    fill = price_order(8.0, 500, 1000, 0.05, BUY, ImpactParams(permanent=0.2))
    assert float(fill.price) == exact(8.8)
    assert float(fill.impact_cost) == exact(400.0)


def test_cap_at_max_participation_prices_the_capped_amount() -> None:
    # 5000 asked, 25% of 10000 = 2500 dealt; p = 0.25: temporary 0.5·0.02·0.5 = 0.005:
    # fill 50·1.005 = 50.25, cost 0.25·2500 = 625.
    params = ImpactParams(temporary=0.5, max_participation=0.25)
    fill = price_order(50.0, 5000, 10000, 0.02, BUY, params)
    assert float(fill.quantity) == 2500
    assert float(fill.participation) == 0.25
    assert float(fill.price) == exact(50.25)
    assert float(fill.impact_cost) == exact(625.0)
    # An order under the cap is left alone.
    assert float(tradable_quantity(2000, 10000, 0.25)) == 2000


def test_zero_volume_cannot_trade() -> None:
    params = ImpactParams(temporary=0.5, slippage_bps=5)
    for volume in (0.0, float("nan"), -1.0):
        fill = price_order(10.0, 1000, volume, 0.02, BUY, params)
        assert float(fill.quantity) == 0
        assert float(fill.impact_cost) == 0
    assert math.isnan(float(participation(1000, 0.0)))
    assert float(tradable_quantity(1000, 0.0, None)) == 0


def test_no_cap_lets_an_order_exceed_the_volume() -> None:
    # p = 2: with β = 0.5 the temporary impact is 0.1·0.01·√2.
    fill = price_order(10.0, 2000, 1000, 0.01, BUY, ImpactParams(temporary=0.1))
    assert float(fill.quantity) == 2000
    assert float(fill.price) == exact(10.0 * (1 + 0.001 * math.sqrt(2)))


def test_a_sell_never_fills_below_zero() -> None:
    # f = permanent·p = 2·1 = 2: 10·(1 − 2) < 0 → 0; the impact is the whole arrival value.
    fill = price_order(10.0, 1000, 1000, 0.0, SELL, ImpactParams(permanent=2.0))
    assert float(fill.price) == 0.0
    assert float(fill.impact_cost) == exact(10_000.0)


def test_zero_model_is_the_arrival_price() -> None:
    fill = price_order(12.34, 700, 1000, 0.03, BUY, ImpactParams())
    assert float(fill.price) == 12.34 and float(fill.impact_cost) == 0.0


def test_vectorised_over_orders() -> None:
    params = ImpactParams(permanent=0.1, temporary=0.5, slippage_bps=10, max_participation=0.25)
    fill = price_order(
        price=np.array([10.0, 10.0, 50.0, 10.0]),
        quantity=np.array([2500, 2500, 5000, 1000]),
        volume=np.array([10000, 10000, 10000, 0]),
        sigma=np.array([0.02, 0.02, 0.0, 0.02]),
        direction=direction_sign([True, False, True, True]),
        params=params,
    )
    # Row 3: capped to 2500, σ = 0 so only 10 bps + 0.1·0.25: f = 0.026, fill 51.3, cost 1.3·2500.
    assert fill.quantity.tolist() == [2500, 2500, 2500, 0]
    np.testing.assert_allclose(fill.price[:3], [10.31, 9.69, 51.3], rtol=1e-12)
    np.testing.assert_allclose(fill.impact_cost, [775.0, 775.0, 3250.0, 0.0], rtol=1e-12)


def test_fraction_and_price_pieces() -> None:
    params = ImpactParams(permanent=0.1, temporary=0.5, slippage_bps=10)
    assert float(impact_fraction(0.25, 0.02, params)) == exact(0.031)
    assert float(fill_price(10.0, -1.0, 0.031)) == exact(9.69)
    assert direction_sign([True, False]).tolist() == [1.0, -1.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"permanent": -0.1},
        {"temporary": -1},
        {"slippage_bps": -1},
        {"beta": 0},
        {"beta": 2.5},
        {"max_participation": 0},
        {"max_participation": 1.5},
    ],
)
def test_params_out_of_range_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ImpactParams(**kwargs)


def test_rolling_volatility_uses_the_days_before_only() -> None:
    days = pd.bdate_range("2021-01-04", periods=4)
    close = pd.DataFrame(
        {
            # returns 0.1, −0.1, 0.1: σ(day 3) = std(0.1, −0.1) = √0.02
            "A": [10.0, 11.0, 9.9, 10.89],
            # returns 0, 0.1, 0: σ(day 3) = std(0, 0.1) = √0.005
            "B": [20.0, 20.0, 22.0, 22.0],
            # listed on day 2: no two returns before day 3, so the day's median of A and B
            "C": [np.nan, np.nan, 5.0, 5.5],
        },
        index=days,
    )
    sigma = rolling_volatility(close, window=2)
    assert sigma.loc[days[3], "A"] == exact(math.sqrt(0.02))
    assert sigma.loc[days[3], "B"] == exact(math.sqrt(0.005))
    assert sigma.loc[days[3], "C"] == exact((math.sqrt(0.02) + math.sqrt(0.005)) / 2)
    # Days with fewer than two returns before them anywhere: 0.
    assert (sigma.loc[days[:3]] == 0).all().all()
    # Changing the day's own close changes nothing on that day (no look-ahead).
    moved = close.copy()
    moved.loc[days[3]] = [100.0, 1.0, 50.0]
    pd.testing.assert_frame_equal(rolling_volatility(moved, 2), sigma)
