"""The risk engine's trading states: kill switch, reduce-only, loss breakers, broker disconnects, live policy changes."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from decimal import Decimal
from pathlib import Path

import pytest

from kubequant.api.live import TradingState
from kubequant.api.risk import RiskPolicySpec
from kubequant.workloads.trading.domain import OrderIntent, PortfolioView, Side
from kubequant.workloads.trading.events import RiskStateChanged
from kubequant.workloads.trading.orders import OrderStatus
from kubequant.workloads.trading.policy import PolicyWatcher, load_policy
from kubequant.workloads.trading.reconcile import poll
from kubequant.workloads.trading.recovery import recover
from kubequant.workloads.trading.risk_engine import Accept, Reason, Reject, RiskEngine

pytestmark = pytest.mark.unit

# Monday 2024-03-04 10:00 in Shanghai.
MON_10 = dt.datetime(2024, 3, 4, 2, 0, tzinfo=dt.UTC)
VIEW = PortfolioView(Decimal(1_000_000), {"AAA": Decimal(1000)}, {"AAA": Decimal(10), "BBB": Decimal(20)})


def policy(**spec: object) -> RiskPolicySpec:
    return RiskPolicySpec.model_validate(spec)


def order(side: Side = Side.BUY, qty: int = 100, inst: str = "AAA") -> OrderIntent:
    return OrderIntent(inst, side, Decimal(qty), "sig", inst)


def reason(engine: RiskEngine, intent: OrderIntent, now: dt.datetime = MON_10) -> Reason | None:
    verdict = engine.check(intent, VIEW, now)
    return verdict.reason if isinstance(verdict, Reject) else None


def test_kill_switch_halts_at_once_and_reducing_lets_only_shrinking_orders_through() -> None:
    engine = RiskEngine(policy())
    assert reason(engine, order()) is None
    engine.set_kill_switch(True)
    assert engine.state is TradingState.HALTED
    assert reason(engine, order(Side.SELL)) is Reason.KILL_SWITCH
    engine.set_kill_switch(False)
    engine.set_condition("manual", TradingState.REDUCING, "operator")
    assert reason(engine, order(Side.BUY)) is Reason.REDUCE_ONLY
    assert reason(engine, order(Side.SELL, 1000)) is None  # to flat
    assert reason(engine, order(Side.SELL, 1100)) is Reason.REDUCE_ONLY  # through zero
    assert reason(engine, order(Side.SELL, 100, "BBB")) is Reason.REDUCE_ONLY  # opens a short
    engine.set_condition("other", TradingState.HALTED, "x")
    assert engine.state is TradingState.HALTED and reason(engine, order(Side.SELL)) is Reason.HALTED


def test_loss_breakers_take_the_configured_action() -> None:
    engine = RiskEngine(
        policy(breakers={"max_daily_loss": 0.05, "max_drawdown": 0.1, "action": "reduceOnly"})
    )
    engine.observe_equity(Decimal(100_000), MON_10)
    engine.observe_equity(Decimal(96_000), MON_10 + dt.timedelta(hours=1))
    assert engine.state is TradingState.ACTIVE
    engine.observe_equity(Decimal(95_000), MON_10 + dt.timedelta(hours=2))  # 5% down on the day
    assert engine.state is TradingState.REDUCING and "max_daily_loss" in engine.conditions
    tuesday = MON_10 + dt.timedelta(days=1)
    engine.observe_equity(Decimal(91_000), tuesday)  # a new day clears the daily breaker ...
    assert engine.state is TradingState.ACTIVE
    engine.observe_equity(
        Decimal(90_000), tuesday + dt.timedelta(hours=1)
    )  # ... the drawdown is 10% from the peak
    assert set(engine.conditions) == {"max_drawdown"}
    engine.observe_equity(Decimal(99_000), tuesday + dt.timedelta(days=1))
    assert "max_drawdown" in engine.conditions  # latched until an operator resets it
    engine.reset("max_drawdown")
    assert engine.state is TradingState.ACTIVE

    halting = RiskEngine(policy(breakers={"max_drawdown": 0.2}))
    halting.observe_equity(Decimal(100), MON_10)
    halting.observe_equity(Decimal(80), MON_10)
    assert halting.state is TradingState.HALTED


def test_broker_disconnect_acts_after_the_grace_period_in_trading_hours_and_clears_on_reconnect() -> None:
    windows = [{"start": "09:30", "end": "15:00"}]
    engine = RiskEngine(policy(trading_windows=windows, broker_disconnect={"grace_period_seconds": 30}))
    engine.observe_connectivity(False, MON_10)
    engine.observe_connectivity(False, MON_10 + dt.timedelta(seconds=29))
    assert engine.state is TradingState.ACTIVE
    engine.observe_connectivity(False, MON_10 + dt.timedelta(seconds=30))
    assert engine.state is TradingState.REDUCING  # the default action
    engine.observe_connectivity(True, MON_10 + dt.timedelta(seconds=31))
    assert engine.state is TradingState.ACTIVE

    night = dt.datetime(2024, 3, 4, 14, 0, tzinfo=dt.UTC)  # 22:00 in Shanghai
    engine.observe_connectivity(False, night)
    engine.observe_connectivity(False, night + dt.timedelta(minutes=10))
    assert engine.state is TradingState.ACTIVE  # outside trading hours nothing happens

    halting = RiskEngine(policy(broker_disconnect={"grace_period_seconds": 0, "action": "halt"}))
    halting.observe_connectivity(False, MON_10)
    assert halting.state is TradingState.HALTED


def test_trading_windows_are_in_the_policy_time_zone() -> None:
    engine = RiskEngine(
        policy(trading_windows=[{"start": "09:30", "end": "11:30"}], timezone="Asia/Shanghai")
    )
    assert reason(engine, order(), MON_10) is None
    assert reason(engine, order(), MON_10 + dt.timedelta(hours=2)) is Reason.OUTSIDE_TRADING_WINDOW  # 12:00
    saturday = MON_10 - dt.timedelta(days=2)
    assert reason(engine, order(), saturday) is Reason.OUTSIDE_TRADING_WINDOW
    engine.update_policy(
        policy(trading_windows=[{"start": "09:30", "end": "11:30"}], timezone="Europe/London")
    )
    assert reason(engine, order(), MON_10) is Reason.OUTSIDE_TRADING_WINDOW  # 02:00 in London


def test_a_changed_policy_file_is_picked_up_and_a_bad_one_keeps_the_old(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("limits: {maxOrderQuantity: 500}\n")
    engine = RiskEngine(load_policy(path))
    watcher = PolicyWatcher(path, engine)
    assert reason(engine, order(qty=600)) is Reason.ORDER_QUANTITY
    path.write_text(
        "apiVersion: kubequant.io/v1alpha1\nkind: RiskPolicy\nmetadata: {name: p}\n"
        "spec: {limits: {maxOrderQuantity: 1000}}\n"
    )
    os.utime(path, ns=(1, 10**18))  # a new mtime even on a coarse clock
    assert watcher.poll() is True
    assert reason(engine, order(qty=600)) is None
    assert watcher.poll() is False  # unchanged file, nothing to do
    path.write_text("limits: {maxOrderQuantity: -1}\n")
    os.utime(path, ns=(1, 2 * 10**18))
    assert watcher.poll() is False
    assert engine.policy.limits.max_order_quantity == 1000


def test_a_breaker_halt_cancels_open_orders_and_survives_a_restart(open_session) -> None:  # type: ignore[no-untyped-def]
    spec = policy(breakers={"max_drawdown": 0.01})
    s = open_session(spec)
    asyncio.run(recover(s.oms))
    out = asyncio.run(s.oms.submit(OrderIntent("SYN0001", Side.BUY, Decimal(300), "sig-1", "SYN0001")))
    assert out.order.status is OrderStatus.ACCEPTED
    s.oms.risk.observe_equity(Decimal(10_000_000), s.oms.clock.now())  # a peak far above: 90% drawdown
    asyncio.run(poll(s.oms))
    assert s.oms.risk.state is TradingState.HALTED
    assert s.oms.state.orders[out.order.client_order_id].status is OrderStatus.PENDING_CANCEL
    asyncio.run(poll(s.oms))
    assert s.oms.state.orders[out.order.client_order_id].status is OrderStatus.CANCELED
    assert any(isinstance(e, RiskStateChanged) and e.state == "HALTED" for e in s.journal.events())
    refused = asyncio.run(s.oms.submit(OrderIntent("SYN0002", Side.BUY, Decimal(100), "sig-2", "SYN0002")))
    assert not refused.accepted and "HALTED" in refused.reason
    assert s.broker.record_submissions().keys() == {out.order.client_order_id}
    s.close()

    again = open_session(spec)
    asyncio.run(recover(again.oms))
    assert "max_drawdown" in again.oms.risk.conditions and again.oms.risk.state is TradingState.HALTED


def test_accept_carries_the_notional_that_counts_against_the_limits() -> None:
    engine = RiskEngine(policy())
    verdict = engine.check(
        OrderIntent("AAA", Side.BUY, Decimal(100), "s", "l", Decimal("10.5")), VIEW, MON_10
    )
    assert verdict == Accept(Decimal("1050.0"))


SESSION = """\
apiVersion: kubequant.io/v1alpha1
kind: LiveTradingSession
metadata: {{name: k}}
spec: {{account: a, riskPolicyRef: {{name: p}}, halted: {halted}}}
---
apiVersion: kubequant.io/v1alpha1
kind: RiskPolicy
metadata: {{name: p}}
spec: {{}}
"""


def test_the_kill_switch_in_the_session_file_halts_a_running_session_at_once(tmp_path: Path, market) -> None:  # type: ignore[no-untyped-def]
    from kubequant.workloads.trading.brokers.base import Broker
    from kubequant.workloads.trading.runtime import RuntimeConfig, TradingRuntime, read_session

    path = tmp_path / "session.yaml"
    path.write_text(SESSION.format(halted="false"))
    session, _ = read_session(path)
    cfg = RuntimeConfig(session=session, policy_path=path, state_dir=tmp_path, session_path=path)
    runtime = TradingRuntime(cfg, market)
    assert isinstance(runtime.broker, Broker)
    asyncio.run(runtime.start())
    out = asyncio.run(runtime.oms.submit(OrderIntent("SYN0001", Side.BUY, Decimal(100), "s1", "SYN0001")))
    assert out.order.status is OrderStatus.ACCEPTED

    path.write_text(
        SESSION.format(halted="true")
    )  # kubectl patch ... spec.halted=true, projected into the pod
    os.utime(path, ns=(1, 10**18))
    asyncio.run(runtime.tick())
    assert runtime.risk.state is TradingState.HALTED
    assert runtime.oms.state.orders[out.order.client_order_id].status is OrderStatus.PENDING_CANCEL
    refused = asyncio.run(runtime.oms.submit(OrderIntent("SYN0001", Side.BUY, Decimal(100), "s2", "SYN0001")))
    assert not refused.accepted and refused.reason.startswith("KILL_SWITCH")
    runtime.close()
