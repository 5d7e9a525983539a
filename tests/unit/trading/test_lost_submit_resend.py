"""A submit the venue never received: sent once more under its client order id, only where that is safe.

Safe means the venue refuses a reused client order id (``refuses_duplicate_client_order_id``: the
paper broker's record, Alpaca's 422), the order is young, the OMS is open and the risk engine still
lets it out. The real OMS and journal run against the paper broker's injected lost submits, the
fake Alpaca over alpaca-py and the fake Xueqiu through easytrader.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pytest

from kubequant.api.broker_capabilities import BrokerCapabilities, capabilities_of
from kubequant.api.live import TradingState
from kubequant.api.risk import RiskPolicySpec
from kubequant.workloads.trading.adapters.base import RetryPolicy
from kubequant.workloads.trading.adapters.paper.broker import PaperBroker
from kubequant.workloads.trading.execution.journal import Journal
from kubequant.workloads.trading.execution.oms import RESEND_WITHIN_SECONDS, OrderManager
from kubequant.workloads.trading.execution.reconcile import poll
from kubequant.workloads.trading.execution.recovery import recover
from kubequant.workloads.trading.model.domain import OrderIntent, Side, utcnow
from kubequant.workloads.trading.model.events import OrderResent
from kubequant.workloads.trading.model.orders import OrderStatus
from kubequant.workloads.trading.risk.engine import RiskEngine

pytestmark = pytest.mark.unit
FAST_RETRY = RetryPolicy(attempts=3, first_delay=0.0, max_delay=0.0)
Session = Any  # conftest.Session: the journal, the (spy) paper broker and the OMS of one life
SessionFactory = Any


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def buy(signal: str, qty: int = 300, inst: str = "SYN0001", **kw: Any) -> OrderIntent:
    return OrderIntent(inst, Side.BUY, Decimal(qty), signal, inst, **kw)


def resends(s: Session, cid: str | None = None) -> list[OrderResent]:
    return [
        e
        for e in s.journal.events()
        if isinstance(e, OrderResent) and (cid is None or e.client_order_id == cid)
    ]


class LaterClock:
    """The wall clock moved on by ``ahead`` (the OMS's only source of time)."""

    def __init__(self) -> None:
        self.ahead = dt.timedelta(0)

    def now(self) -> dt.datetime:
        return utcnow() + self.ahead


def opened(open_session: SessionFactory, **kw: Any) -> Session:
    s = open_session(**kw)
    run(recover(s.oms))
    assert s.oms.ready
    return s


# --- the paper broker: its record refuses a reused client order id -------------------------------------
def test_a_lost_submit_is_sent_once_more_and_reaches_the_venue_once(open_session: SessionFactory) -> None:
    s = opened(open_session)
    s.broker.faults.lose_submits = 1  # the request never arrives; the OMS sees a timeout
    out = run(s.oms.submit(buy("sig-lost")))
    cid = out.order.client_order_id
    assert out.order.status is OrderStatus.SUBMITTED and s.broker.record_submissions() == {}

    run(poll(s.oms))  # one query: never received; a young order on a venue that refuses a reused id
    order = s.oms.state.orders[cid]
    assert s.broker.get_order_calls.count(cid) == 1
    assert order.status is OrderStatus.ACCEPTED and order.broker_order_id
    assert s.broker.record_submissions() == {cid: 1}
    (resent,) = resends(s, cid)
    assert "found no order" in resent.detail

    s.broker.advance()
    run(poll(s.oms))
    run(poll(s.oms))
    assert order.status is OrderStatus.FILLED
    assert s.oms.state.position_quantities() == s.broker.record_positions() == {"SYN0001": Decimal(300)}
    assert s.broker.record_submissions() == {cid: 1} and len(resends(s)) == 1
    # The signal sent again is the same order: nothing new reaches the venue.
    assert run(s.oms.submit(buy("sig-lost"))).duplicate
    assert s.broker.record_submissions() == {cid: 1} and not s.oms.anomalies


def test_a_resend_lost_too_is_rejected_and_never_sent_a_third_time(open_session: SessionFactory) -> None:
    s = opened(open_session)
    s.broker.faults.lose_submits = 2  # the first call and its resend are both lost
    cid = run(s.oms.submit(buy("sig-twice"))).order.client_order_id
    run(poll(s.oms))
    assert s.oms.state.orders[cid].status is OrderStatus.SUBMITTED  # the resend timed out: in flight
    run(poll(s.oms))
    order = s.oms.state.orders[cid]
    assert order.status is OrderStatus.REJECTED and order.retryable
    assert "UNKNOWN_AT_BROKER" in order.reason and "sent once more already" in order.reason
    assert s.broker.record_submissions() == {} and len(resends(s, cid)) == 1
    s.close()

    again = open_session()
    run(recover(again.oms))
    assert again.oms.resent == {cid}  # the journal's OrderResent survives a restart
    # Rejected as never received (retryable): the same signal may go out again, as a new attempt.
    assert run(again.oms.submit(buy("sig-twice"))).accepted
    assert again.broker.record_submissions() == {cid: 1}


def test_recovery_resolves_a_lost_submit_without_sending_anything(open_session: SessionFactory) -> None:
    s = opened(open_session)
    s.broker.faults.lose_submits = 1
    cid = run(s.oms.submit(buy("sig-crash"))).order.client_order_id
    s.close()  # the process dies with the order in flight, seconds after its signal

    again = open_session()
    report = run(recover(again.oms))
    order = again.oms.state.orders[cid]
    assert order.status is OrderStatus.REJECTED and "the OMS is not open" in order.reason
    assert report.resolved == {"unknown-rejected": 1} and again.broker.record_submissions() == {}
    assert resends(again) == []


def test_an_order_older_than_the_bound_is_rejected_not_resent(open_session: SessionFactory) -> None:
    s = opened(open_session)
    clock = LaterClock()
    s.oms.clock = clock
    s.broker.faults.lose_submits = 1
    cid = run(s.oms.submit(buy("sig-old"))).order.client_order_id
    clock.ahead = dt.timedelta(seconds=RESEND_WITHIN_SECONDS + 1)  # the housekeeping comes late
    run(poll(s.oms))
    order = s.oms.state.orders[cid]
    assert order.status is OrderStatus.REJECTED and "old (a resend only within" in order.reason
    assert s.broker.record_submissions() == {} and resends(s) == []


@pytest.mark.parametrize("hold", ["kill_switch", "halted", "reducing"])
def test_the_risk_engine_stops_a_resend_the_state_no_longer_allows(
    open_session: SessionFactory, hold: str
) -> None:
    s = opened(open_session)
    s.broker.faults.lose_submits = 1
    cid = run(s.oms.submit(buy("sig-held"))).order.client_order_id
    if hold == "kill_switch":
        s.oms.risk.set_kill_switch(True)
    elif hold == "halted":
        s.oms.risk.set_condition("manual", TradingState.HALTED, "an operator halted it")
    else:
        s.oms.risk.set_condition("manual", TradingState.REDUCING, "an operator reduced it")
    run(poll(s.oms))
    order = s.oms.state.orders[cid]
    want = {"kill_switch": "KILL_SWITCH", "halted": "HALTED", "reducing": "REDUCE_ONLY"}[hold]
    assert order.status is OrderStatus.REJECTED and f"not sent again: {want}" in order.reason
    assert s.broker.record_submissions() == {} and resends(s) == []


def test_a_lost_sell_that_reduces_is_still_resent_while_reducing(open_session: SessionFactory) -> None:
    s = opened(open_session)
    run(s.oms.submit(buy("sig-hold", 600)))
    s.broker.advance()
    run(poll(s.oms))
    assert s.oms.state.position_quantities() == {"SYN0001": Decimal(600)}
    s.oms.risk.set_condition("manual", TradingState.REDUCING, "an operator reduced it")
    s.broker.faults.lose_submits = 1
    sell = OrderIntent("SYN0001", Side.SELL, Decimal(300), "sig-trim", "SYN0001")
    cid = run(s.oms.submit(sell)).order.client_order_id
    run(poll(s.oms))
    assert s.oms.state.orders[cid].status is OrderStatus.ACCEPTED
    assert s.broker.record_submissions()[cid] == 1 and len(resends(s, cid)) == 1


class GatewayLikePaper(PaperBroker):
    """The paper venue declared as one that does not refuse a reused client order id (xueqiu, gateway)."""

    capabilities: ClassVar[BrokerCapabilities] = dataclasses.replace(
        capabilities_of("paper"), refuses_duplicate_client_order_id=False
    )


def test_a_venue_that_does_not_refuse_a_reused_id_never_gets_a_resend(
    tmp_path: Path, open_session: SessionFactory
) -> None:
    s = open_session()
    s.broker.close()
    broker = GatewayLikePaper(s.broker.market, tmp_path / "venue.sqlite", starting_cash=Decimal(1_000_000))
    s.broker = broker
    s.oms.broker = broker
    s.oms.prices = broker
    run(recover(s.oms))
    broker.faults.lose_submits = 1
    cid = run(s.oms.submit(buy("sig-gw"))).order.client_order_id
    run(poll(s.oms))
    order = s.oms.state.orders[cid]
    assert order.status is OrderStatus.REJECTED and "does not refuse a reused client order id" in order.reason
    assert broker.record_submissions() == {} and resends(s) == []


# --- Alpaca (over alpaca-py and HTTP): 422 "client_order_id must be unique" -------------------------------
@pytest.fixture
def alpaca() -> Iterator[Any]:
    pytest.importorskip("alpaca.trading.client")
    from alpaca_fake import FakeAlpaca, serve

    fake = FakeAlpaca()
    fake.positions = []  # a clean account: the session starts without adopting anything
    with serve(fake):
        yield fake


def alpaca_oms(fake: Any, tmp_path: Path) -> tuple[OrderManager, Journal, Any]:
    from alpaca.trading.client import TradingClient
    from alpaca_fake import KEY, SECRET

    from kubequant.workloads.trading.adapters.alpaca.broker import AlpacaBroker

    class Marks:
        def last_price(self, instrument: str) -> Decimal | None:
            return Decimal("120")

    client = TradingClient(api_key=KEY, secret_key=SECRET, paper=True, raw_data=True, url_override=fake.url)
    broker = AlpacaBroker(client, timeout=(1.0, 0.4))
    journal = Journal(tmp_path / "journal.sqlite")
    oms = OrderManager("s1", journal, broker, RiskEngine(RiskPolicySpec()), Marks(), retry=FAST_RETRY)
    return oms, journal, broker


def test_alpaca_a_503_submit_is_resent_once_and_placed_once(alpaca: Any, tmp_path: Path) -> None:
    oms, journal, broker = alpaca_oms(alpaca, tmp_path)

    async def life() -> str:
        await recover(oms)
        alpaca.script["POST", "/v2/orders"] = ["503"]  # refused before processing: nothing placed
        out = await oms.submit(OrderIntent("AAPL", Side.BUY, Decimal(3), "sig-503", "AAPL"))
        assert out.order.status is OrderStatus.SUBMITTED and alpaca.orders == {}
        await poll(oms)
        return out.order.client_order_id

    try:
        cid = run(life())
        assert [e.client_order_id for e in journal.events() if isinstance(e, OrderResent)] == [cid]
    finally:
        journal.close()
        broker.close()
    order = oms.state.orders[cid]
    (remote,) = alpaca.orders.values()
    assert order.status is OrderStatus.ACCEPTED and order.broker_order_id == remote["id"]
    assert alpaca.posts == 2 and len(alpaca.bodies) == 1  # the 503 and the resend; one order placed


def test_alpaca_a_resend_refused_as_a_duplicate_is_settled_from_the_first_copy(
    alpaca: Any, tmp_path: Path
) -> None:
    from alpaca_fake import payload

    oms, journal, broker = alpaca_oms(alpaca, tmp_path)

    async def life() -> str:
        await recover(oms)
        # Placed, but the answer is lost (504 after processing), and neither the open orders nor the
        # targeted query show it yet (the race the venue's refusal of a reused id makes harmless).
        alpaca.script["POST", "/v2/orders"] = ["504"]
        alpaca.script["GET", "/v2/orders"] = [(200, [])]
        alpaca.script["GET", "/v2/orders:by_client_order_id"] = [(404, payload("error_order_not_found"))]
        out = await oms.submit(OrderIntent("AAPL", Side.BUY, Decimal(3), "sig-504", "AAPL"))
        assert out.order.status is OrderStatus.SUBMITTED and len(alpaca.orders) == 1
        await poll(oms)
        return out.order.client_order_id

    try:
        cid = run(life())
        resent = [e.client_order_id for e in journal.events() if isinstance(e, OrderResent)]
    finally:
        journal.close()
        broker.close()
    assert resent == [cid]
    order = oms.state.orders[cid]
    (remote,) = alpaca.orders.values()
    # The resend met Alpaca's 422: the first copy is the order, nothing was placed twice.
    assert len(alpaca.bodies) == 2 and alpaca.posts == 2
    assert order.status is OrderStatus.ACCEPTED and order.broker_order_id == remote["id"]
    assert not oms.anomalies


# --- Xueqiu (through easytrader): its history check races, so a lost rebalance is never resent ------------
def test_xueqiu_a_lost_rebalance_is_rejected_never_resent(tmp_path: Path) -> None:
    pytest.importorskip("easytrader.xqtrader")
    from xueqiu_fake import CODE, COOKIES, FakeXueqiu, serve

    from kubequant.workloads.trading.adapters.xueqiu.broker import XueqiuBroker
    from kubequant.workloads.trading.adapters.xueqiu.client import XueqiuClient
    from kubequant.workloads.trading.adapters.xueqiu.config import XueqiuCookies

    with serve(FakeXueqiu()) as api:

        class Marks:
            def last_price(self, instrument: str) -> Decimal | None:
                return Decimal(api.price(instrument))

        client = XueqiuClient(
            XueqiuCookies(COOKIES), CODE, multiple=Decimal(1_000_000), base=api.url, timeout=(1.0, 0.4)
        )
        broker = XueqiuBroker(client, secret_name="xueqiu", universe=("SH600519", "SZ000001", "SH601318"))
        journal = Journal(tmp_path / "journal.sqlite")
        oms = OrderManager("s1", journal, broker, RiskEngine(RiskPolicySpec()), Marks(), retry=FAST_RETRY)

        async def life() -> str:
            await recover(oms)
            # A 502 from Xueqiu's front: the rebalance was not made, the outcome looks unknown.
            api.script["POST", "/cubes/rebalancing/create.json"] = [(502, "<html>502 Bad Gateway</html>")]
            out = await oms.submit(OrderIntent("SH600519", Side.BUY, Decimal(100), "sig-x", "SH600519"))
            assert out.order.status is OrderStatus.SUBMITTED
            await poll(oms)
            return out.order.client_order_id

        try:
            cid = run(life())
            events = journal.events()
        finally:
            journal.close()
            broker.close()
        order = oms.state.orders[cid]
        assert (
            order.status is OrderStatus.REJECTED
            and "does not refuse a reused client order id" in order.reason
        )
        assert api.posts == 1 and api.rebalances == []
        assert not any(isinstance(e, OrderResent) for e in events)
