"""The scheduled strategy in region cn: slices run on trading time and never fall in the lunch break."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from kubequant.api.backtest import TopkDropout
from kubequant.workloads.trading.execution.recovery import recover
from kubequant.workloads.trading.model.domain import WallClock
from kubequant.workloads.trading.model.events import AccountSnapshot, decode, encode
from kubequant.workloads.trading.node.scheduled import RebalancePlanned, Rebalancer, ScoreBook
from kubequant.workloads.trading.risk import ashare
from kubequant.workloads.trading.risk.ashare import AShareRules

pytestmark = pytest.mark.unit


def sh(hh: int, mm: int = 0) -> dt.datetime:
    return dt.datetime(2021, 3, 1, hh, mm, tzinfo=ashare.CN_TZ).astimezone(dt.UTC)


class SetClock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def now(self) -> dt.datetime:
        return self.at


def plan(
    start: dt.datetime, trading_time: bool, slices: int = 6, interval: float = 1800.0
) -> RebalancePlanned:
    return RebalancePlanned(
        start, "rebalance-2021-03-01", "2021-03-01", "2021-02-26", start, slices, interval, {}, trading_time
    )


def test_slots_on_trading_time_skip_the_lunch_break() -> None:
    p = plan(sh(10, 30), trading_time=True)
    assert [p.due(k) for k in range(6)] == [sh(10, 30), sh(11), sh(13), sh(13, 30), sh(14), sh(14, 30)]
    assert all(ashare.in_session(p.due(k)) for k in range(6))
    # Without trading time (other regions, journals written before) slots are wall-clock apart.
    q = plan(sh(10, 30), trading_time=False)
    assert q.due(2) == sh(11, 30) and q.due(3) == sh(12)
    # A start in the break waits for the afternoon session.
    assert plan(sh(12), trading_time=True).due(0) == sh(13)
    # The flag is journaled (an old journal without it decodes as wall-clock slots).
    assert decode(p.kind, encode(p)) == p
    body = encode(q).replace(',"trading_time":false', "")
    assert "trading_time" not in body and decode(q.kind, body) == q


def test_a_cn_rebalancer_plans_on_trading_time_and_sends_nothing_at_lunch(
    open_session: Any, market: Any
) -> None:
    s = open_session()
    s.oms.risk.ashare = AShareRules(sessions=True)
    clock = SetClock(sh(11, 20))
    s.oms.clock = s.broker.clock = clock
    asyncio.run(recover(s.oms))
    inst = market.instruments[0]
    rebalancer = Rebalancer(
        s.oms, TopkDropout(), ScoreBook({}), slices=3, interval_seconds=600, lot=Decimal(100)
    )
    p = RebalancePlanned(
        clock.at,
        "rebalance-2021-03-01",
        "2021-03-01",
        "2021-02-26",
        sh(11, 20),
        3,
        600.0,
        {inst: Decimal(300)},
        trading_time=True,
    )
    s.oms.commit(p)
    rebalancer.plans[p.rebalance_id] = p
    day = sh(11).astimezone(ashare.CN_TZ).date()
    sent: list[dt.datetime] = []
    at: dt.datetime | None = sh(11, 20)
    while at is not None:
        clock.at = at
        for outcome in asyncio.run(rebalancer.run_due(day, sh(11, 20), at)):
            sent.append(at)
            assert outcome.accepted, outcome.reason
        # Polled in the break (as the runtime's timer does), nothing goes out.
        clock.at = sh(12, 10)
        assert asyncio.run(rebalancer.run_due(day, sh(11, 20), sh(12, 10))) == []
        at = rebalancer.next_due(day)
    assert sent == [sh(11, 20), sh(13), sh(13, 10)]


def test_the_plan_is_on_trading_time_only_with_the_cn_rules(open_session: Any, market: Any) -> None:
    s = open_session()
    s.oms.clock = SetClock(sh(10))
    asyncio.run(recover(s.oms))
    s.oms.commit(AccountSnapshot(sh(10), cash=Decimal(1_000_000), equity=Decimal(1_000_000)))
    scores = ScoreBook({dt.date(2021, 2, 26): {"SYN0001": 1.0, "SYN0002": 0.5}})
    rebalancer = Rebalancer(s.oms, TopkDropout(topk=2, n_drop=1), scores)
    cases = (
        (1, AShareRules(), SetClock(sh(10)), True),  # a real broker's session: the hours bind
        (2, None, SetClock(sh(10)), False),  # another region
        (3, AShareRules(sessions=False), SetClock(sh(10)), True),  # a replay: its clock is the exchange's
        (4, AShareRules(sessions=False), WallClock(), False),  # paper on the wall clock: round the clock
    )
    for day, rules, clock, expected in cases:
        s.oms.risk.ashare, s.oms.clock = rules, clock
        made = rebalancer.plan(dt.date(2021, 3, day), sh(10))
        assert made is not None and made.trading_time is expected
