"""The parity comparison's attribution: every difference gets a cause, and what none explains says so."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from kubequant.workloads.realism.decisions import BacktestOrder, BacktestRun
from kubequant.workloads.realism.parity import Cause, compare
from kubequant.workloads.realism.replay import ReplayedOrder, ReplayRun

pytestmark = pytest.mark.unit
D1, D2 = dt.date(2022, 1, 4), dt.date(2022, 1, 5)


def _order(
    day: dt.date, seq: int, inst: str, side: str, qty: float, price: float, cost: float
) -> BacktestOrder:
    return BacktestOrder(day, seq, inst, side, qty, 1.0, qty, price, qty * price, cost)


def _run(orders: list[BacktestOrder], navs: list[float]) -> BacktestRun:
    return BacktestRun("day", orders, pd.DataFrame({"account": navs}, index=pd.DatetimeIndex([D1, D2])), 1e6)


def _replayed(
    o: BacktestOrder,
    qty: float | None = None,
    price: float | None = None,
    fee: float | None = None,
    status: str = "filled",
    reason: str = "",
) -> ReplayedOrder:
    q = o.dealt_shares if qty is None else qty
    p = round(o.traded_price, 4) if price is None else price
    return ReplayedOrder(
        o,
        True,
        status,
        "risk" if status == "rejected" else "",
        reason,
        q,
        p if q else 0.0,
        round(o.cost, 2) if fee is None else fee,
        q * p,
    )


def test_rounding_only_meets_every_goal() -> None:
    a = _order(D1, 0, "A", "buy", 1000, 10.123456, 5.061728)
    b = _order(D2, 0, "A", "sell", 1000, 10.2, 15.3)
    run = _run([a, b], [999_994.94, 1_000_061.0])
    replay = ReplayRun([_replayed(a), _replayed(b)], {D1: 999_994.94, D2: 1_000_061.0}, {}, Path("."))
    level = compare(run, replay)
    goals = level.goals()
    assert all(g["met"] for g in goals.values()), goals
    assert level.fills[0].causes == [Cause.PRICE_QUANTUM, Cause.MONEY_QUANTUM]  # 10.1235; 5.06
    assert level.fills[1].causes == []  # exactly the same fill


def test_a_risk_rejection_is_named_and_carries_into_later_days() -> None:
    a = _order(D1, 0, "A", "buy", 1000, 10.0, 5.0)
    b = _order(D2, 0, "A", "sell", 1000, 10.5, 15.75)
    run = _run([a, b], [999_995.0, 1_000_479.25])
    replay = ReplayRun(
        [
            _replayed(a, qty=0, status="rejected", reason="ORDER_NOTIONAL"),
            _replayed(b, qty=0, status="rejected", reason="SHORT_SELLING"),
        ],
        {D1: 1_000_000.0, D2: 1_000_000.0},
        {},
        Path("."),
    )
    level = compare(run, replay)
    assert level.fills[0].causes == [f"{Cause.RISK_REJECTION}: ORDER_NOTIONAL"]
    assert level.fills[1].causes == [f"{Cause.RISK_REJECTION}: SHORT_SELLING"]
    assert not level.goals()["sameTradeCount"]["met"]
    assert level.goals()["everyDifferenceAttributed"]["met"]
    assert all(d.causes for d in level.days)


def test_a_price_beyond_rounding_is_unexplained() -> None:
    a = _order(D1, 0, "A", "buy", 1000, 10.0, 5.0)
    run = _run([a], [999_995.0, 999_995.0])
    replay = ReplayRun([_replayed(a, price=10.002)], {D1: 999_993.0, D2: 999_993.0}, {}, Path("."))
    level = compare(run, replay)
    assert Cause.UNEXPLAINED in level.fills[0].causes
    goals = level.goals()
    assert not goals["fillsWithin1bp"]["met"] and goals["fillsWithin1bp"]["worstBps"] == pytest.approx(2.0)
    assert not goals["everyDifferenceAttributed"]["met"]


def test_a_fee_beyond_rounding_is_unexplained_even_beside_a_rounded_price() -> None:
    a = _order(D1, 0, "A", "buy", 1000, 10.123456, 5.061728)
    run = _run([a], [999_994.94, 999_994.94])
    replay = ReplayRun([_replayed(a, fee=7.5)], {D1: 999_992.5, D2: 999_992.5}, {}, Path("."))
    level = compare(run, replay)
    assert level.fills[0].causes == [Cause.PRICE_QUANTUM, Cause.UNEXPLAINED]
    assert not level.goals()["everyDifferenceAttributed"]["met"]


def test_a_net_value_gap_beyond_rounding_is_unexplained() -> None:
    a = _order(D1, 0, "A", "buy", 1000, 10.0, 5.0)
    run = _run([a], [999_995.0, 1_000_100.0])
    replay = ReplayRun([_replayed(a)], {D1: 999_995.0, D2: 1_000_000.0}, {}, Path("."))
    level = compare(run, replay)
    assert level.days[0].causes == []
    assert level.days[1].causes == [Cause.UNEXPLAINED]


def test_a_buy_dealt_smaller_after_an_earlier_difference_is_the_cash_check_order() -> None:
    a = _order(D1, 0, "A", "sell", 1000, 10.0, 15.0)
    b = _order(D1, 1, "B", "buy", 2000, 5.0, 5.0)
    run = _run([a, b], [1e6, 1e6])
    replay = ReplayRun(
        [
            _replayed(a, qty=0, status="rejected", reason="SHORT_SELLING"),
            _replayed(b, qty=1000, status="filled"),
        ],
        {D1: 1e6, D2: 1e6},
        {},
        Path("."),
    )
    level = compare(run, replay)
    assert level.fills[1].causes == [Cause.CASH_CHECK_ORDER]


def test_the_a_share_rules_codes_map_to_their_causes() -> None:
    pytest.importorskip("kubequant.workloads.trading.risk.ashare")
    from kubequant.workloads.realism.parity import _cn_reason_causes

    causes = _cn_reason_causes()
    assert causes["T_PLUS_ONE"] is Cause.T_PLUS_1
    assert causes["ODD_LOT"] is Cause.LOT_ROUNDING
    assert causes["PRICE_LIMIT"] is Cause.PRICE_LIMIT
    assert causes["MARKET_CLOSED"] is Cause.TRADING_SESSION
    assert causes["OUTSIDE_TRADING_WINDOW"] is Cause.TRADING_SESSION


def test_a_t_plus_one_refusal_by_risk_or_broker_is_attributed_to_t_plus_1() -> None:
    pytest.importorskip("kubequant.workloads.trading.risk.ashare")
    a = _order(D1, 0, "A", "sell", 1000, 10.0, 15.0)
    b = _order(D2, 0, "B", "sell", 1000, 10.0, 15.0)
    run = _run([a, b], [1e6, 1e6])
    by_risk = _replayed(a, qty=0, status="rejected", reason="T_PLUS_ONE")
    by_broker = ReplayedOrder(
        b, True, "rejected", "broker", "BROKER_REJECTED", detail="T_PLUS_ONE: bought today"
    )
    level = compare(run, ReplayRun([by_risk, by_broker], {D1: 1e6, D2: 1e6}, {}, Path(".")))
    assert level.fills[0].causes == [f"{Cause.T_PLUS_1}: T_PLUS_ONE"]
    assert level.fills[1].causes == [f"{Cause.T_PLUS_1}: T_PLUS_ONE"]
