"""The scheduled strategy's pacing: a stall or a restart never sends the overdue slices at once.

A review found that after a 9-minute stall every overdue child went out in one call (10 children:
the whole parent). Each call now sends at most the open slot's share of each parent; the missed
slots are journaled as skipped and worked off at the same pace after the planned window; a child
refused for the order rate is tried again at a later slot.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from kubequant.api.backtest import TopkDropout
from kubequant.api.risk import RiskPolicySpec
from kubequant.workloads.trading.execution.recovery import recover
from kubequant.workloads.trading.model.orders import OrderStatus
from kubequant.workloads.trading.node.scheduled import (
    RebalancePlanned,
    Rebalancer,
    RebalanceSlotsSkipped,
    ScoreBook,
)

pytestmark = pytest.mark.unit
T0 = dt.datetime(2021, 3, 1, 1, 35, tzinfo=dt.UTC)
MINUTE = dt.timedelta(seconds=60)


class SetClock:
    """A clock the test moves (the OMS stamps events and the risk engine's rate window with it)."""

    def __init__(self, now: dt.datetime) -> None:
        self.at = now

    def now(self) -> dt.datetime:
        return self.at


def rebalancer_with_plan(s: Any, market: Any, orders: dict[str, Decimal], slices: int) -> Rebalancer:
    """A rebalancer holding one journaled plan (10 slices a minute apart by default), lot 100."""
    rebalancer = Rebalancer(
        s.oms, TopkDropout(), ScoreBook({}), slices=slices, interval_seconds=60, lot=Decimal(100)
    )
    plan = RebalancePlanned(T0, "rebalance-2021-03-01", "2021-03-01", "2021-02-26", T0, slices, 60.0, orders)
    s.oms.commit(plan)
    rebalancer.plans[plan.rebalance_id] = plan
    return rebalancer


def sent_by_instrument(outcomes: list[Any]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for o in outcomes:
        out[o.order.instrument] = out.get(o.order.instrument, Decimal(0)) + o.order.quantity
    return out


def test_a_stall_of_nine_minutes_sends_one_share_per_parent_not_the_whole_parent(
    open_session: Any, market: Any
) -> None:
    s = open_session()
    clock = SetClock(T0)
    s.oms.clock = clock
    asyncio.run(recover(s.oms))
    a, b = market.instruments[:2]
    parents = {a: Decimal(1000), b: Decimal(2000)}
    rebalancer = rebalancer_with_plan(s, market, parents, slices=10)
    day = T0.date()

    async def call(at: dt.datetime) -> list[Any]:
        clock.at = at
        return await rebalancer.run_due(day, T0, at)

    late = T0 + 9 * MINUTE + dt.timedelta(seconds=5)
    first = asyncio.run(call(late))
    assert sent_by_instrument(first) == {a: Decimal(100), b: Decimal(200)}  # one slot's share, not 10
    assert asyncio.run(call(late + dt.timedelta(seconds=30))) == []  # the same slot: nothing more
    skipped = [e for e in s.journal.events() if isinstance(e, RebalanceSlotsSkipped)]
    assert [(e.first, e.last) for e in skipped] == [(0, 8)] and "restart" in skipped[0].reason

    # The missed nine slots are worked off at the planned pace after the window, one share a minute.
    total = sent_by_instrument(first)
    for k in range(10, 20):
        got = sent_by_instrument(asyncio.run(call(T0 + k * MINUTE)))
        assert got.get(a, 0) <= Decimal(100) and got.get(b, 0) <= Decimal(200)
        for inst, qty in got.items():
            total[inst] += qty
    assert total == parents
    assert rebalancer.next_due(day) is None
    assert all(o.status is not OrderStatus.REJECTED for o in s.oms.state.orders.values())


def test_a_slice_refused_for_the_order_rate_is_sent_again_at_a_later_slot(
    open_session: Any, market: Any
) -> None:
    # One order per 100 s: with a slot every 60 s every second child is refused for the rate.
    s = open_session(
        RiskPolicySpec.model_validate({"limits": {"orderRate": {"maxOrders": 1, "perSeconds": 100}}})
    )
    clock = SetClock(T0)
    s.oms.clock = clock
    asyncio.run(recover(s.oms))
    inst = market.instruments[0]
    rebalancer = rebalancer_with_plan(s, market, {inst: Decimal(400)}, slices=4)
    day = T0.date()
    outcomes = []
    at: dt.datetime | None = T0
    while at is not None:
        clock.at = at
        outcomes += asyncio.run(rebalancer.run_due(day, T0, at))
        at = rebalancer.next_due(day)
    accepted = [o.order for o in outcomes if o.accepted]
    refused = [o.order for o in outcomes if not o.accepted]
    assert sum(o.quantity for o in accepted) == Decimal(400)  # the parent, whole
    assert refused and all(o.reason.startswith("ORDER_RATE") for o in refused)
    assert max(o.quantity for o in accepted) == Decimal(100)  # never more than a slot's share
    assert len(outcomes) == len({o.order.client_order_id for o in outcomes})  # each child once


def test_a_restart_in_the_middle_sends_no_slot_twice(open_session: Any, market: Any) -> None:
    s = open_session()
    clock = SetClock(T0)
    s.oms.clock = clock
    asyncio.run(recover(s.oms))
    inst = market.instruments[0]
    parents = {inst: Decimal(600)}
    rebalancer = rebalancer_with_plan(s, market, parents, slices=3)
    day = T0.date()
    for k in range(2):
        clock.at = T0 + k * MINUTE
        asyncio.run(rebalancer.run_due(day, T0, clock.at))
    # A new process: the plan and its children come back from the journal.
    again = Rebalancer(s.oms, TopkDropout(), ScoreBook({}), slices=3, interval_seconds=60, lot=Decimal(100))
    clock.at = T0 + MINUTE + dt.timedelta(seconds=20)
    assert asyncio.run(again.run_due(day, T0, clock.at)) == []  # slot 1 went out before the restart
    clock.at = T0 + 2 * MINUTE
    last = asyncio.run(again.run_due(day, T0, clock.at))
    assert sent_by_instrument(last) == {inst: Decimal(200)}
    assert sum(o.quantity for o in s.oms.state.orders.values()) == Decimal(600)
