"""A broker outage past the disconnect grace: the state it sets holds after the reconnect until the
resting orders it cancels are cancelled and the OMS has reconciled; only then does trading resume.

The real OMS, journal and paper broker, with the paper broker's injected disconnects.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kubequant.api.live import TradingState
from kubequant.api.risk import RiskPolicySpec
from kubequant.workloads.trading.adapters.base import BrokerDisconnected, BrokerTimeout
from kubequant.workloads.trading.adapters.paper.broker import PaperBroker
from kubequant.workloads.trading.execution.reconcile import poll
from kubequant.workloads.trading.execution.recovery import recover
from kubequant.workloads.trading.model.domain import OrderIntent, Side
from kubequant.workloads.trading.model.events import (
    OrderCanceled,
    OrderCancelRequested,
    RiskStateChanged,
)
from kubequant.workloads.trading.model.orders import OrderStatus

pytestmark = pytest.mark.unit
Session = Any  # conftest.Session: the journal, the paper broker and the OMS of one life


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def disconnect_policy(action: str) -> RiskPolicySpec:
    return RiskPolicySpec.model_validate({"brokerDisconnect": {"gracePeriodSeconds": 0, "action": action}})


def limit(side: Side, qty: int, inst: str, price: Decimal, signal: str) -> OrderIntent:
    return OrderIntent(inst, side, Decimal(qty), signal, inst, limit_price=price.quantize(Decimal("0.01")))


def resting_buy(s: Session, signal: str, inst: str = "SYN0001") -> str:
    """A limit buy far below the market: it rests at the venue, adding exposure if it fills."""
    last = s.broker.last_price(inst)
    out = run(s.oms.submit(limit(Side.BUY, 100, inst, last / 2, signal)))
    assert out.order.status is OrderStatus.ACCEPTED, out
    return str(out.order.client_order_id)


def states(s: Session) -> list[tuple[int, str]]:
    return [(i, e.state) for i, e in enumerate(s.journal.events()) if isinstance(e, RiskStateChanged)]


def index_of(s: Session, kind: type, cid: str) -> int:
    return next(
        i for i, e in enumerate(s.journal.events()) if isinstance(e, kind) and e.client_order_id == cid
    )


def test_a_halt_for_an_outage_cancels_the_resting_orders_on_reconnect_before_trading_resumes(
    open_session: Any,
) -> None:
    s = open_session(disconnect_policy("halt"))
    run(recover(s.oms))
    cid = resting_buy(s, "sig-rest")

    s.broker.faults.connected = False
    run(poll(s.oms))
    assert s.oms.risk.state is TradingState.HALTED
    # Unreachable: nothing could be cancelled, the order still works at the venue.
    assert s.oms.state.orders[cid].status is OrderStatus.ACCEPTED
    refused = run(s.oms.submit(limit(Side.BUY, 100, "SYN0002", Decimal(1), "sig-down")))
    assert not refused.accepted and "HALTED" in refused.reason

    s.broker.faults.connected = True
    run(poll(s.oms))
    order = s.oms.state.orders[cid]
    remote = run(s.broker.get_order(cid))
    assert order.status is OrderStatus.CANCELED and remote.status is OrderStatus.CANCELED
    assert s.oms.risk.state is TradingState.ACTIVE
    # The journal lifts the halt only after the cancel was asked and the venue's answer reconciled.
    (halted, halted_state), (resumed, resumed_state) = states(s)
    assert (halted_state, resumed_state) == ("HALTED", "ACTIVE")
    assert halted < index_of(s, OrderCancelRequested, cid) < index_of(s, OrderCanceled, cid) < resumed
    assert run(s.oms.submit(limit(Side.BUY, 100, "SYN0002", Decimal(1), "sig-up"))).accepted


class LostCancels(PaperBroker):
    """The paper venue losing the next ``lose_cancels`` cancel requests (the caller times out)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lose_cancels = 0

    async def cancel(self, broker_order_id: str) -> None:
        if self.lose_cancels > 0:
            self.lose_cancels -= 1
            raise BrokerTimeout("paper broker: cancel timed out (request lost)")
        await super().cancel(broker_order_id)


def test_the_halt_holds_while_a_cancel_is_unconfirmed_and_lifts_once_it_is(
    open_session: Any, tmp_path: Path
) -> None:
    s = open_session(disconnect_policy("halt"))
    s.broker.close()
    broker = LostCancels(s.broker.market, tmp_path / "venue.sqlite", starting_cash=Decimal(1_000_000))
    s.broker = s.oms.broker = s.oms.prices = broker
    run(recover(s.oms))
    cid = resting_buy(s, "sig-rest")

    broker.faults.connected = False
    run(poll(s.oms))
    broker.faults.connected = True
    broker.lose_cancels = s.oms.retry.attempts  # every try of the first reconnect's cancel is lost
    run(poll(s.oms))
    assert s.oms.state.orders[cid].status is OrderStatus.PENDING_CANCEL
    assert run(broker.get_order(cid)).status is OrderStatus.ACCEPTED  # still working at the venue
    assert s.oms.risk.state is TradingState.HALTED and [st for _, st in states(s)] == ["HALTED"]
    refused = run(s.oms.submit(limit(Side.BUY, 100, "SYN0002", Decimal(1), "sig-early")))
    assert not refused.accepted and "HALTED" in refused.reason

    run(poll(s.oms))  # the cancel asked again, this time it arrives
    assert s.oms.state.orders[cid].status is OrderStatus.CANCELED
    assert s.oms.risk.state is TradingState.ACTIVE and [st for _, st in states(s)] == ["HALTED", "ACTIVE"]


def test_reduce_only_for_an_outage_cancels_only_what_adds_exposure_on_reconnect(open_session: Any) -> None:
    s = open_session(disconnect_policy("reduceOnly"))
    run(recover(s.oms))
    run(s.oms.submit(OrderIntent("SYN0001", Side.BUY, Decimal(600), "sig-hold", "SYN0001")))
    s.broker.advance()
    run(poll(s.oms))
    assert s.oms.state.position_quantities() == {"SYN0001": Decimal(600)}
    last = s.broker.last_price("SYN0001")
    sell = run(s.oms.submit(limit(Side.SELL, 300, "SYN0001", last * 2, "sig-trim"))).order.client_order_id
    buy = resting_buy(s, "sig-add", "SYN0002")

    s.broker.faults.connected = False
    run(poll(s.oms))
    assert s.oms.risk.state is TradingState.REDUCING
    s.broker.faults.connected = True
    run(poll(s.oms))
    assert s.oms.state.orders[buy].status is OrderStatus.CANCELED  # it would have added exposure
    assert s.oms.state.orders[sell].status is OrderStatus.ACCEPTED  # it reduces: it keeps working
    assert s.oms.risk.state is TradingState.ACTIVE
    (_, reducing), (resumed, active) = states(s)
    assert (reducing, active) == ("REDUCING", "ACTIVE") and index_of(s, OrderCanceled, buy) < resumed


def test_an_outage_within_the_grace_cancels_nothing(open_session: Any) -> None:
    s = open_session(
        RiskPolicySpec.model_validate({"brokerDisconnect": {"gracePeriodSeconds": 3600, "action": "halt"}})
    )
    run(recover(s.oms))
    cid = resting_buy(s, "sig-rest")
    s.broker.faults.connected = False
    run(poll(s.oms))
    s.broker.faults.connected = True
    run(poll(s.oms))
    assert s.oms.state.orders[cid].status is OrderStatus.ACCEPTED
    assert s.oms.risk.state is TradingState.ACTIVE and states(s) == []


def test_an_outage_halt_survives_a_restart_and_its_cancels_run_before_trading_resumes(
    open_session: Any,
) -> None:
    first = open_session(disconnect_policy("halt"))
    run(recover(first.oms))
    cid = resting_buy(first, "sig-rest")
    first.broker.faults.connected = False
    run(poll(first.oms))
    assert first.oms.risk.state is TradingState.HALTED
    first.close()  # the pod restarts during the outage; the venue is back when it comes up

    second = open_session(disconnect_policy("halt"))
    run(recover(second.oms))
    # The outage's halt came back from the journal: recovery asked the venue to cancel the resting
    # order, and nothing trades before the poll has reconciled that cancel.
    assert second.oms.risk.state is TradingState.HALTED
    refused = run(second.oms.submit(limit(Side.BUY, 100, "SYN0002", Decimal(1), "sig-early")))
    assert not refused.accepted and "HALTED" in refused.reason
    run(poll(second.oms))
    assert second.oms.state.orders[cid].status is OrderStatus.CANCELED
    assert run(second.broker.get_order(cid)).status is OrderStatus.CANCELED
    assert second.oms.risk.state is TradingState.ACTIVE
    assert run(second.oms.submit(limit(Side.BUY, 100, "SYN0002", Decimal(1), "sig-up"))).accepted


def gauge(name: str, **labels: str) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels)


def test_the_trading_state_gauge_is_set_at_start_and_after_a_restart_into_a_halt(open_session: Any) -> None:
    from kubequant.workloads.trading.node import metrics

    for s in TradingState:  # what an earlier test of this process left
        metrics.TRADING_STATE.labels(s.value).set(-1)
    first = open_session(disconnect_policy("halt"))
    run(recover(first.oms))
    # Nothing changed (a fresh session is ACTIVE), and the gauge says ACTIVE all the same.
    assert gauge("kubequant_trading_state", state="ACTIVE") == 1
    assert gauge("kubequant_trading_state", state="HALTED") == 0
    first.broker.faults.connected = False
    run(poll(first.oms))
    assert gauge("kubequant_trading_state", state="HALTED") == 1
    first.close()
    for s in TradingState:  # a new pod: a new process, whose gauges start unset
        metrics.TRADING_STATE.labels(s.value).set(-1)
    second = open_session(disconnect_policy("halt"))
    second.broker.faults.connected = False  # still down: recovery cannot finish, the halt holds
    with pytest.raises(BrokerDisconnected):
        run(recover(second.oms))
    run(poll(second.oms))
    assert gauge("kubequant_trading_state", state="HALTED") == 1
    assert gauge("kubequant_trading_state", state="ACTIVE") == 0
