"""The compiled 1-minute kernel on hand-computed cases (qlib's NestedExecutor parity is tested elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest

from kubequant.workloads.backtest.compiled_slicing import slice_day

pytestmark = pytest.mark.unit

NO_IMPACT = np.zeros(6)
COSTS = np.array([0.0005, 0.0015, 5.0, 0.0, 100.0])  # open, close, min cost, impact_cost, trade unit


def _run(
    amount: float,
    buy: bool = True,
    steps: int = 4,
    price: float = 10.0,
    limit: list[int] | None = None,
    suspended: list[int] | None = None,
    cash: float = 1e9,
    held: float = 0.0,
    volume: float = 1e6,
    impact: np.ndarray = NO_IMPACT,
    expire: bool = False,
) -> dict[str, np.ndarray]:
    close = np.full((1, steps), price)
    for t in suspended or []:
        close[0, t] = np.nan
    flags = np.zeros((1, steps), dtype=bool)
    for t in limit or []:
        flags[0, t] = True
    _parent, step, target, deal, fill, value, cost, count, left = slice_day(
        np.array([0]),
        np.array([buy]),
        np.array([amount]),
        np.array([100.0]),  # one lot = 100 shares (factor 1)
        np.empty((1, 0)),  # TWAP: the kernel takes equal steps itself
        close.copy(),
        close.copy(),
        close,
        np.full((1, steps), volume),
        np.ones((1, steps)),
        flags if buy else np.zeros_like(flags),
        flags if not buy else np.zeros_like(flags),
        np.array([0.02]),
        np.array([held]),
        np.array([held > 0]),
        cash,
        COSTS,
        impact,
        expire,
        True,
    )
    n = count
    return {
        "step": step[:n],
        "target": target[:n],
        "deal": deal[:n],
        "price": fill[:n],
        "value": value[:n],
        "cost": cost[:n],
        "cash": np.array(left),
    }


def test_twap_splits_into_lots_and_the_last_minute_takes_the_rest() -> None:
    out = _run(1000.0)
    # qlib's TWAP: 250 expected per minute, rounded to lots (half to even) and clipped: 200, 300, 200, 300.
    np.testing.assert_array_equal(out["deal"], [200, 300, 200, 300])
    np.testing.assert_allclose(out["value"], out["deal"] * 10.0)
    np.testing.assert_allclose(
        out["cost"], [5.0, 5.0, 5.0, 5.0]
    )  # 0.05 % of 2,000-3,000 is below the 5 minimum
    assert float(out["cash"]) == pytest.approx(1e9 - 10_000 - 20)


def test_a_limit_up_minute_deals_nothing_and_the_next_minutes_make_it_up() -> None:
    out = _run(1000.0, limit=[0, 1])
    np.testing.assert_array_equal(out["step"], [0, 1, 2, 3])
    np.testing.assert_array_equal(out["deal"], [0, 0, 800, 200])  # minute 2 catches up to 750 → 800 lots
    assert np.isnan(out["price"][:2]).all() and (out["cost"][:2] == 0).all()


def test_a_suspended_minute_gets_no_child_order() -> None:
    out = _run(1000.0, suspended=[1])
    np.testing.assert_array_equal(out["step"], [0, 2, 3])
    assert out["deal"].sum() == 1000


def test_expire_drops_what_a_limited_minute_did_not_fill() -> None:
    out = _run(1000.0, limit=[0, 1], expire=True)
    assert out["deal"].sum() == 500  # only the slices of minutes 2 and 3


def test_cash_limits_a_buy_to_what_it_can_afford_in_whole_lots() -> None:
    out = _run(1000.0, steps=1, cash=5_000.0)
    # (5,000 − 5) / 10 = 499.5 shares affordable with the minimum cost → 400 shares in whole lots.
    np.testing.assert_array_equal(out["deal"], [400])
    assert float(out["cash"]) == pytest.approx(5_000 - 4_000 - 5)


def test_a_sell_is_capped_by_the_position_and_sells_it_all_when_asked_for_all() -> None:
    out = _run(1000.0, buy=False, steps=1, held=650.0)
    np.testing.assert_array_equal(out["deal"], [600])  # rounded down to lots
    all_of_it = _run(650.0, buy=False, steps=1, held=650.0)
    np.testing.assert_array_equal(all_of_it["deal"], [650])  # the whole position, no rounding


def test_impact_caps_participation_and_moves_the_fill_price_by_the_formula() -> None:
    impact = np.array([1.0, 5.0, 0.5, 0.1, 0.5, 0.01])  # on, 5 bp, temporary, permanent, beta, 1 % cap
    out = _run(5000.0, steps=1, volume=20_000.0, impact=impact)
    assert out["deal"][0] == 200  # 1 % of 20,000
    p = 200 / 20_000
    expected = 10.0 * (1 + (5 / 1e4 + 0.5 * 0.02 * p**0.5 + 0.1 * p))
    assert out["price"][0] == pytest.approx(expected, rel=1e-12)
