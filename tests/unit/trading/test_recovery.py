"""Recovery after a restart: every case the issue names, against the paper broker's own record."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from kubequant.api.live import TradingState
from kubequant.workloads.trading.adapters.base import SubmitRequest
from kubequant.workloads.trading.execution.oms import NotReady
from kubequant.workloads.trading.execution.reconcile import poll, sync_fills
from kubequant.workloads.trading.execution.recovery import recover
from kubequant.workloads.trading.model.domain import OrderIntent, Side, client_order_id
from kubequant.workloads.trading.model.events import OrderFilled, RecoveryCompleted
from kubequant.workloads.trading.model.orders import OrderStatus

pytestmark = pytest.mark.unit


def buy(signal: str, qty: int = 300, inst: str = "SYN0001") -> OrderIntent:
    return OrderIntent(inst, Side.BUY, Decimal(qty), signal, inst)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_fresh_session_trades_and_a_restart_replays_to_the_same_state(open_session) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    report = run(recover(s.oms))
    assert s.oms.ready and report.replayed == 0
    out = run(s.oms.submit(buy("sig-1")))
    assert out.accepted and out.order.status is OrderStatus.ACCEPTED
    s.broker.advance()
    run(poll(s.oms))
    assert s.oms.state.orders[out.order.client_order_id].status is OrderStatus.FILLED
    live_positions = s.oms.state.position_quantities()
    s.close()

    again = open_session()
    report = run(recover(again.oms))
    assert report.fills_applied == 0 and report.position_mismatches == 0
    assert again.oms.state.position_quantities() == live_positions == again.broker.record_positions()
    # The same signal again is the same order: nothing new reaches the broker.
    dup = run(again.oms.submit(buy("sig-1")))
    assert dup.duplicate and again.broker.record_submissions() == {out.order.client_order_id: 1}


def test_submitted_but_unknown_to_broker_is_rejected_after_one_query_then_retried_once(open_session) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    run(recover(s.oms))
    s.broker.faults.lose_submits = 1  # the request never arrives; the OMS sees a timeout
    out = run(s.oms.submit(buy("sig-lost")))
    cid = out.order.client_order_id
    assert out.order.status is OrderStatus.SUBMITTED  # in flight, not resent on a guess
    assert s.broker.record_submissions() == {}
    s.close()  # the process dies with the order in flight

    again = open_session()
    report = run(recover(again.oms))
    order = again.oms.state.orders[cid]
    assert again.broker.get_order_calls.count(cid) == 1  # one targeted query
    assert order.status is OrderStatus.REJECTED and order.retryable
    assert "UNKNOWN_AT_BROKER" in order.reason and report.resolved == {"unknown-rejected": 1}
    assert again.broker.record_submissions() == {}  # recovery sent nothing

    retried = run(again.oms.submit(buy("sig-lost")))
    assert retried.accepted and retried.order.client_order_id == cid
    assert again.broker.record_submissions() == {cid: 1}


def test_timeout_after_submit_stays_in_flight_until_a_query_resolves_it(open_session) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    run(recover(s.oms))
    s.broker.faults.lose_acks = 1  # placed at the broker, the answer lost
    out = run(s.oms.submit(buy("sig-ack")))
    cid = out.order.client_order_id
    assert out.order.status is OrderStatus.SUBMITTED
    run(s.oms.submit(buy("sig-ack")))  # the signal retried while in flight: still nothing resent
    run(poll(s.oms))  # the broker's open orders hold it: accepted, under the broker's id
    assert s.oms.state.orders[cid].status is OrderStatus.ACCEPTED
    assert s.oms.state.orders[cid].broker_order_id
    assert s.broker.record_submissions() == {cid: 1}


def test_fills_missed_while_down_are_generated_from_the_broker_report(open_session) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    run(recover(s.oms))
    cids = [run(s.oms.submit(buy(f"sig-{i}", inst=f"SYN000{i}"))).order.client_order_id for i in (1, 2, 3)]
    s.close()
    s.broker.__init__(s.broker.market, s.broker.path, starting_cash=Decimal(0))  # the venue keeps trading
    fills = s.broker.advance()
    assert len(fills) == 3

    again = open_session()
    report = run(recover(again.oms))
    assert report.fills_applied == 3
    assert {again.oms.state.orders[c].status for c in cids} == {OrderStatus.FILLED}
    assert again.oms.state.position_quantities() == again.broker.record_positions()
    assert again.oms.state.fill_ids == {f.fill_id for f in again.broker.record_fills()}


def test_orders_placed_outside_the_session_are_adopted_and_tagged(open_session) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    run(recover(s.oms))
    run(s.broker.submit(SubmitRequest("manual-1", "SYN0002", Side.BUY, Decimal(200))))
    s.broker.advance()  # manual-1 fills while nobody watches
    run(s.broker.submit(SubmitRequest("manual-2", "SYN0003", Side.BUY, Decimal(100))))  # still open
    s.close()

    again = open_session()
    report = run(recover(again.oms))
    state = again.oms.state
    assert state.orders["manual-1"].external and state.orders["manual-1"].status is OrderStatus.FILLED
    assert state.orders["manual-2"].external and state.orders["manual-2"].status is OrderStatus.ACCEPTED
    assert report.adopted == 1 and report.fills_applied == 1  # manual-1 was adopted from its fill
    assert state.position_quantities() == again.broker.record_positions() == {"SYN0002": Decimal(200)}
    assert again.oms.ready and again.oms.risk.state is TradingState.ACTIVE


def test_a_position_that_still_differs_halts_and_no_strategy_starts(open_session) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    run(recover(s.oms))
    run(s.oms.submit(buy("sig-1")))
    s.broker.advance()
    run(poll(s.oms))
    s.close()
    s.broker.__init__(s.broker.market, s.broker.path, starting_cash=Decimal(0))
    s.broker.set_position("SYN0004", Decimal(500))  # a transfer the journal knows nothing about

    again = open_session()
    report = run(recover(again.oms))
    assert report.position_mismatches == 1
    assert report.halted and "positions differ" in report.halted and "SYN0004" in report.halted
    assert not again.oms.ready and again.oms.risk.state is TradingState.HALTED
    with pytest.raises(NotReady):
        run(again.oms.submit(buy("sig-2")))
    completed = [e for e in again.journal.events() if isinstance(e, RecoveryCompleted)]
    assert completed[-1].halted == report.halted

    # Fail closed survives a restart: the halt is in the journal, not only in memory.
    third = open_session()
    run(recover(third.oms))
    assert third.oms.risk.state is TradingState.HALTED and not third.oms.ready


def test_a_repeated_fill_id_is_ignored(open_session) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    run(recover(s.oms))
    out = run(s.oms.submit(buy("sig-1", 500)))
    s.broker.advance()
    applied, repeated = run(sync_fills(s.oms))
    assert (applied, repeated) == (1, 0)
    s.broker.repeat_fills = True  # the venue delivers every fill again
    applied, repeated = run(sync_fills(s.oms))
    assert (applied, repeated) == (0, 1)
    fills = [e for e in s.journal.events() if isinstance(e, OrderFilled)]
    assert len(fills) == 1
    assert s.oms.state.position("SYN0001") == Decimal(500) == s.broker.record_positions()["SYN0001"]
    assert s.oms.state.orders[out.order.client_order_id].filled_quantity == Decimal(500)
    # And across a restart: the replayed journal knows the fill id too.
    again = open_session()
    again.broker.repeat_fills = True
    report = run(recover(again.oms))
    assert report.repeated_fills == 1 and report.fills_applied == 0
    assert again.oms.state.position("SYN0001") == Decimal(500)


def test_client_order_ids_are_deterministic() -> None:
    a = client_order_id("s1", "sig-1", "SYN0001")
    assert a == client_order_id("s1", "sig-1", "SYN0001")
    assert len({a, client_order_id("s2", "sig-1", "SYN0001"), client_order_id("s1", "sig-2", "SYN0001")}) == 3
    assert client_order_id("s", "ab", "c") != client_order_id("s", "a", "bc")


# --- an empty journal never adopts the account on its own (issue 15) ------------------------------
def test_an_empty_journal_on_an_account_that_holds_positions_fails_closed_until_adopted(
    open_session,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    from kubequant.errors import KubequantError
    from kubequant.workloads.trading.model.events import AdoptionAuthorized, PositionSnapshot
    from kubequant.workloads.trading.risk.trading_state import adopt_stopped

    s = open_session()
    s.broker.set_position("SYN0001", Decimal(500))  # what a lost journal volume leaves behind
    report = run(recover(s.oms))
    assert not s.oms.ready and report.halted and "kubequant trading adopt" in report.halted
    assert "1 positions (SYN0001)" in report.halted
    assert not any(isinstance(e, PositionSnapshot) for e in s.journal.events())  # nothing adopted
    with pytest.raises(NotReady):
        run(s.oms.submit(buy("sig-1")))
    s.close()

    again = open_session()
    assert run(recover(again.oms)).halted is not None  # still refused on the next start
    assert not again.oms.ready
    again.close()

    with pytest.raises(KubequantError):
        adopt_stopped(tmp_path, "   ")  # a reason is required
    result = adopt_stopped(tmp_path, "new session on an account in use")
    assert "reconciliation" in result.cleared and not result.created
    adopted = open_session()
    run(recover(adopted.oms))
    assert adopted.oms.ready and adopted.oms.risk.state is TradingState.ACTIVE
    assert adopted.oms.state.position_quantities() == {"SYN0001": Decimal(500)}
    assert any(isinstance(e, AdoptionAuthorized) and "in use" in e.reason for e in adopted.journal.events())
    adopted.close()
    with pytest.raises(KubequantError, match="already holds"):
        adopt_stopped(tmp_path, "again")  # the journal has a history now


def test_an_empty_journal_on_a_clean_account_starts_and_kubequant_orders_at_the_broker_refuse(
    open_session,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    s = open_session()
    assert run(recover(s.oms)).halted is None and s.oms.ready  # a new session on a clean account
    out = run(s.oms.submit(buy("sig-1")))
    assert out.accepted
    s.close()
    (tmp_path / "journal.sqlite").unlink()  # the journal volume is lost; the broker still has the order
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"journal.sqlite{suffix}").unlink(missing_ok=True)
    lost = open_session()
    report = run(recover(lost.oms))
    assert not lost.oms.ready and report.halted and "1 open orders" in report.halted
    assert out.order.client_order_id in report.halted  # its own kq- id at the broker
