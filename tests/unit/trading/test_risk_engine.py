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
from kubequant.workloads.trading.execution.reconcile import poll
from kubequant.workloads.trading.execution.recovery import recover
from kubequant.workloads.trading.model.domain import OrderIntent, PortfolioView, Side
from kubequant.workloads.trading.model.events import RiskStateChanged
from kubequant.workloads.trading.model.orders import OrderStatus
from kubequant.workloads.trading.risk.engine import Accept, Reason, Reject, RiskEngine
from kubequant.workloads.trading.risk.policy import PolicyWatcher, load_policy

pytestmark = pytest.mark.unit

# Monday 2024-03-04 10:00 in Shanghai.
MON_10 = dt.datetime(2024, 3, 4, 2, 0, tzinfo=dt.UTC)
VIEW = PortfolioView(
    Decimal(1_000_000),
    {"AAA": Decimal(1000)},
    {"AAA": Decimal(10), "BBB": Decimal(20)},
    filled={"AAA": Decimal(1000)},
)


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
    from kubequant.workloads.trading.adapters.base import Broker
    from kubequant.workloads.trading.node.runtime import RuntimeConfig, TradingRuntime, read_session

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
    # Cancelled at once (the paper venue confirms within the same tick), journaled with its source.
    assert runtime.oms.state.orders[out.order.client_order_id].status in (
        OrderStatus.PENDING_CANCEL,
        OrderStatus.CANCELED,
    )
    switched = [e for _, e in runtime.journal.replay() if e.kind == "KillSwitchSet"]
    assert [(e.on, e.source) for e in switched] == [(True, "file")]  # type: ignore[attr-defined]
    refused = asyncio.run(runtime.oms.submit(OrderIntent("SYN0001", Side.BUY, Decimal(100), "s2", "SYN0001")))
    assert not refused.accepted and refused.reason.startswith("KILL_SWITCH")
    runtime.close()


# --- the independent review's findings (issue 15) ------------------------------------------------
NY = dt.timezone(dt.timedelta(hours=-5))  # New York in March before DST: 10:30 NY is 15:30 UTC


def test_the_trading_day_is_the_sessions_exchange_day_not_the_policys_zone() -> None:
    """A shared policy (Asia/Shanghai) guarding a New York session: 11:00 NY is midnight in Shanghai."""
    shared = policy(
        limits={"max_daily_trades": 2}, breakers={"max_daily_loss": 0.02, "action": "halt"}
    )  # timezone: Asia/Shanghai by default
    engine = RiskEngine(shared, exchange_tz="America/New_York")
    open_ = dt.datetime(2024, 3, 4, 9, 30, tzinfo=NY)
    engine.observe_equity(Decimal(100_000), open_)
    engine.observe_equity(Decimal(97_000), dt.datetime(2024, 3, 4, 10, 30, tzinfo=NY))  # -3% on the day
    assert engine.state is TradingState.HALTED
    engine.observe_equity(Decimal(97_100), dt.datetime(2024, 3, 4, 11, 15, tzinfo=NY))
    assert engine.state is TradingState.HALTED  # before the fix: ACTIVE again at 11:15 NY

    counting = RiskEngine(shared, exchange_tz="America/New_York")
    view = PortfolioView(Decimal(10**6), {}, {"AAA": Decimal(10)})
    for hour in (10, 10.5):
        at = dt.datetime(2024, 3, 4, int(hour), int(hour % 1 * 60), tzinfo=NY)
        verdict = counting.check(order(), view, at)
        assert isinstance(verdict, Accept)
        counting.record(verdict.notional, at)
    after_11 = dt.datetime(2024, 3, 4, 11, 15, tzinfo=NY)
    assert counting.check(order(), view, after_11) == Reject(Reason.DAILY_TRADES, "2 orders today")
    next_day = dt.datetime(2024, 3, 5, 9, 31, tzinfo=NY)
    assert isinstance(counting.check(order(), view, next_day), Accept)


def test_the_session_sets_the_trading_day_and_shorting_for_its_engine() -> None:
    from kubequant.api.live import LiveTradingSessionSpec

    spec = LiveTradingSessionSpec.model_validate(
        {
            "account": "a",
            "riskPolicyRef": {"name": "p"},
            "timezone": "America/New_York",
            "broker": {"accountType": "margin"},
            "data": {"sample": {}, "region": "us"},
        }
    )
    engine = RiskEngine.for_session(policy(), spec)
    assert engine.trading_day(dt.datetime(2024, 3, 5, 3, 0, tzinfo=dt.UTC)) == dt.date(2024, 3, 4)
    assert engine.long_only is False
    cash = spec.model_copy(update={"broker": spec.broker.model_copy(update={"account_type": "cash"})})
    assert RiskEngine.for_session(policy(), cash).long_only is True
    cn_margin = spec.model_copy(update={"data": spec.data.model_copy(update={"region": "cn"})})
    assert RiskEngine.for_session(policy(), cn_margin).long_only is True  # no short selling in region cn
    assert RiskEngine.for_session(policy(limits={"long_only": True}), spec).long_only is True


def test_without_a_fresh_price_no_order_adds_exposure() -> None:
    engine = RiskEngine(policy(limits={"max_price_age_seconds": 60}))
    held = PortfolioView(Decimal(10**6), {"AAA": Decimal(1000)}, {}, filled={"AAA": Decimal(1000)})
    assert reason(engine, order(Side.BUY, 900), MON_10) is None  # VIEW has a fresh price
    verdict = engine.check(order(Side.BUY, 900), held, MON_10)
    assert isinstance(verdict, Reject) and verdict.reason is Reason.NO_PRICE
    limit_buy = OrderIntent("AAA", Side.BUY, Decimal(900), "s", "AAA", Decimal(10))
    assert engine.check(limit_buy, held, MON_10).reason is Reason.NO_PRICE  # type: ignore[union-attr]
    # A reducing limit order needs no market price: it is valued at its limit.
    limit_sell = OrderIntent("AAA", Side.SELL, Decimal(500), "s", "AAA", Decimal(10))
    assert engine.check(limit_sell, held, MON_10) == Accept(Decimal(5000))

    stale = PortfolioView(
        Decimal(10**6),
        {"AAA": Decimal(1000)},
        {"AAA": Decimal(10)},
        {"AAA": Decimal(1000)},
        ages={"AAA": 61.0},
    )
    verdict = engine.check(order(Side.BUY, 100), stale, MON_10)
    assert isinstance(verdict, Reject) and verdict.reason is Reason.STALE_PRICE and "61s" in verdict.detail
    assert isinstance(engine.check(order(Side.SELL, 100), stale, MON_10), Accept)  # selling down is fine
    fresh = PortfolioView(stale.equity, stale.positions, stale.marks, stale.filled, ages={"AAA": 59.0})
    assert isinstance(engine.check(order(Side.BUY, 100), fresh, MON_10), Accept)


def test_the_oms_never_marks_at_the_average_cost(open_session) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    asyncio.run(recover(s.oms))
    out = asyncio.run(s.oms.submit(OrderIntent("SYN0001", Side.BUY, Decimal(300), "sig-1", "SYN0001")))
    s.broker.advance()
    asyncio.run(poll(s.oms))
    assert s.oms.state.position("SYN0001") == 300 and out.accepted

    class NoPrices:
        def last_price(self, instrument: str) -> Decimal | None:
            return None  # a feed that went quiet (Alpaca's source returns None when stale)

    s.oms.prices = NoPrices()
    s.oms._price_age = None
    assert s.oms.mark("SYN0001") is None
    refused = asyncio.run(s.oms.submit(OrderIntent("SYN0001", Side.BUY, Decimal(900), "sig-2", "SYN0001")))
    assert not refused.accepted and refused.reason.startswith("NO_PRICE")


def test_a_paper_price_carried_over_a_suspension_has_an_age(open_session, market) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    broker = s.broker
    broker.advance()
    broker.advance()
    inst = market.instruments[0]
    assert broker.price_age(inst) == 0.0  # the last completed bar's close
    assert broker.price_age("NOT-LISTED") is None


def test_a_limit_far_from_the_market_is_valued_at_the_market() -> None:
    """5,000 shares at a limit of 1 with the market at 100 pass a 10,000 cap the market order fails."""
    engine = RiskEngine(policy(limits={"max_order_notional": 10_000, "long_only": False}))
    view = PortfolioView(
        Decimal(10**6), {"AAA": Decimal(5000)}, {"AAA": Decimal(100)}, {"AAA": Decimal(5000)}
    )
    low_sell = OrderIntent("AAA", Side.SELL, Decimal(5000), "s", "AAA", Decimal(1))
    verdict = engine.check(low_sell, view, MON_10)
    assert isinstance(verdict, Reject) and verdict.reason is Reason.ORDER_NOTIONAL
    assert "500000" in verdict.detail
    high_buy = OrderIntent("AAA", Side.BUY, Decimal(50), "s", "AAA", Decimal(150))
    assert engine.check(high_buy, view, MON_10) == Accept(Decimal(7500))  # the limit is the larger


def test_a_sell_from_flat_is_short_selling_and_refused_by_default() -> None:
    engine = RiskEngine(policy())
    flat = PortfolioView(Decimal(10**6), {}, {"BBB": Decimal(20)})
    verdict = engine.check(order(Side.SELL, 100, "BBB"), flat, MON_10)
    assert isinstance(verdict, Reject) and verdict.reason is Reason.SHORT_SELLING
    # Resting sells already claim the position: another sell would go short once they fill.
    claimed = PortfolioView(
        Decimal(10**6),
        {"AAA": Decimal(600)},
        {"AAA": Decimal(10)},
        {"AAA": Decimal(1000)},
        {"AAA": (Decimal(0), Decimal(400))},
    )
    assert isinstance(engine.check(order(Side.SELL, 600), claimed, MON_10), Accept)
    assert engine.check(order(Side.SELL, 700), claimed, MON_10).reason is Reason.SHORT_SELLING  # type: ignore[union-attr]
    margin = RiskEngine(policy(), short_selling=True)
    assert isinstance(margin.check(order(Side.SELL, 100, "BBB"), flat, MON_10), Accept)


def test_reduce_only_counts_filled_positions_not_resting_buys() -> None:
    """A sell does not "reduce" a resting buy: cancel the buy and the account would be short."""
    engine = RiskEngine(policy(limits={"long_only": False}))
    engine.set_condition("manual", TradingState.REDUCING, "operator")
    resting_buy = PortfolioView(
        Decimal(10**6), {"AAA": Decimal(500)}, {"AAA": Decimal(10)}, {}, {"AAA": (Decimal(500), Decimal(0))}
    )
    verdict = engine.check(order(Side.SELL, 500), resting_buy, MON_10)
    assert isinstance(verdict, Reject) and verdict.reason is Reason.REDUCE_ONLY
    held = PortfolioView(
        Decimal(10**6),
        {"AAA": Decimal(700)},
        {"AAA": Decimal(10)},
        {"AAA": Decimal(1000)},
        {"AAA": (Decimal(0), Decimal(300))},
    )
    assert isinstance(engine.check(order(Side.SELL, 700), held, MON_10), Accept)  # net of resting sells
    assert engine.check(order(Side.SELL, 800), held, MON_10).reason is Reason.REDUCE_ONLY  # type: ignore[union-attr]


def test_entering_reducing_cancels_the_resting_orders_that_add_exposure(open_session) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    asyncio.run(recover(s.oms))
    first = asyncio.run(s.oms.submit(OrderIntent("SYN0001", Side.BUY, Decimal(500), "sig-1", "SYN0001")))
    s.broker.advance()
    asyncio.run(poll(s.oms))
    assert s.oms.state.position("SYN0001") == 500 and first.accepted
    buy_more = asyncio.run(s.oms.submit(OrderIntent("SYN0001", Side.BUY, Decimal(200), "sig-2", "SYN0001")))
    sell_some = asyncio.run(s.oms.submit(OrderIntent("SYN0001", Side.SELL, Decimal(300), "sig-3", "SYN0001")))
    other = asyncio.run(s.oms.submit(OrderIntent("SYN0002", Side.BUY, Decimal(100), "sig-4", "SYN0002")))
    assert buy_more.accepted and sell_some.accepted and other.accepted
    s.oms.risk.set_condition("manual", TradingState.REDUCING, "operator")
    asyncio.run(poll(s.oms))
    status = {
        cid: s.oms.state.orders[cid].status
        for cid in (
            buy_more.order.client_order_id,
            sell_some.order.client_order_id,
            other.order.client_order_id,
        )
    }
    assert status[buy_more.order.client_order_id] in (OrderStatus.PENDING_CANCEL, OrderStatus.CANCELED)
    assert status[other.order.client_order_id] in (OrderStatus.PENDING_CANCEL, OrderStatus.CANCELED)
    assert status[sell_some.order.client_order_id] is OrderStatus.ACCEPTED  # it reduces: it stays
