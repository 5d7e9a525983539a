"""SBB-EMA's signal and rules in the compiled levels: pandas' EMA bit for bit, qlib's SBB amounts on hand cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kubequant.workloads.backtest.sbb_signal import LONG, MID, SHORT, ewm_mean, window_trends
from kubequant.workloads.backtest.slicing_kernel import SBB, slice_target

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("span", [10, 20])
def test_ema_is_pandas_ewm_bit_for_bit(span: int) -> None:
    rng = np.random.default_rng(7)
    closes = (10 + np.cumsum(rng.normal(0, 0.01, 2000))).astype(np.float32).astype(np.float64)
    closes[rng.random(2000) < 0.05] = np.nan  # suspended minutes
    closes[:3] = np.nan  # the window may start before the first bar
    closes[500:520] = closes[499]  # a flat stretch: pandas keeps the value exactly
    expected = pd.Series(closes.astype(np.float32)).ewm(span=span, min_periods=1).mean().to_numpy()
    np.testing.assert_array_equal(ewm_mean(closes, float(span)), expected)


def test_trend_is_the_sign_of_the_last_signal_in_the_bar_before() -> None:
    rising = np.linspace(10, 11, 60)
    falling = np.linspace(11, 10, 60)
    close = np.concatenate([rising, falling])[None, :].astype(np.float32).astype(np.float64)
    inside = np.ones_like(close, dtype=bool)
    edges = np.array([0, 60, 120])  # two bars: rising, then falling
    trends = window_trends(close, np.array([0]), np.array([119]), inside, np.array([0]), 0, 119, edges)
    assert list(trends[0]) == [LONG, SHORT]
    # outside the listing spans (or no data), the trend is MID
    trends = window_trends(
        close, np.array([0]), np.array([119]), np.zeros_like(inside), np.array([0]), 0, 119, edges
    )
    assert list(trends[0]) == [MID, MID]


def _sbb(remaining: float, t: int, steps: int, trend: int, buy: bool, lot: float = 100.0) -> float:
    """SBB's child at step t, the step's trend given (even step: predicted now; odd: from the step before)."""
    trends = np.full((1, steps), trend, np.int8)
    state = np.array([trend], np.int8)
    return slice_target(
        SBB,
        0,
        t,
        steps,
        np.array([1e9]),
        np.array([remaining]),
        np.array([lot]),
        np.empty((1, 0)),
        trends,
        state,
        False,
        True,
        buy,
    )


def test_sbb_amounts_follow_qlibs_rules() -> None:
    # MID: an equal part of what remains, in whole lots rounded up: 1000 shares over 8 steps → 2 lots
    assert _sbb(1000, 0, 8, MID, True) == 200
    # A trend: two parts in the better step of the pair (N steps left → N + 1 parts, 2 of them)
    assert _sbb(1000, 0, 8, LONG, True) == 2 * ((10 + 8) // 9) * 100  # buy first when prices rise
    assert _sbb(1000, 0, 8, LONG, False) == 0.0  # sell in the second step of the pair
    assert _sbb(1000, 1, 8, LONG, False) == 2 * ((10 + 7) // 8) * 100
    assert _sbb(1000, 0, 8, SHORT, False) > 0 and _sbb(1000, 1, 8, SHORT, True) > 0
    # a sell takes everything left at the last step; a buy keeps its rounding
    assert _sbb(1234, 7, 8, MID, False) == 1234
    assert _sbb(1234, 7, 8, MID, True) == 1200
    # without a trade unit, plain fractions
    assert _sbb(1000, 0, 8, MID, True, lot=np.nan) == pytest.approx(125.0)
