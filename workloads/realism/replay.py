"""A Backtest's decisions replayed through the trading runtime: OMS → risk engine → paper broker → journal.

The session is built from the Backtest: the same bundle, exchange settings (the paper broker's
qlib Exchange comes from the Backtest's own ``exchange_kwargs``), starting cash and time zone.
Each day the orders qlib's strategy produced go to the OMS in the order qlib's executor dealt
them, as one signal (``parity-<day>``, one leg per order), at 14:30 on the replay's clock; the
paper broker deals them at the day's bar, the runtime's housekeeping journals fills and equity.
Nothing is re-implemented: these are the runtime's own ``TradingRuntime``, ``OrderManager``,
``RiskEngine``, ``PaperBroker`` and ``Journal``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from kubequant.api.backtest import BacktestSpec, TopkDropout
from kubequant.api.live import LiveTradingSession
from kubequant.api.risk import RiskPolicy
from kubequant.errors import ConfigError
from kubequant.workloads.realism.decisions import BacktestOrder, BacktestRun
from kubequant.workloads.trading.adapters.paper.market import QlibMarket
from kubequant.workloads.trading.execution.oms import OrderManager
from kubequant.workloads.trading.model.domain import OrderIntent, Side, as_quantity
from kubequant.workloads.trading.model.events import RejectSource
from kubequant.workloads.trading.model.orders import Order
from kubequant.workloads.trading.node.replay import BarClock
from kubequant.workloads.trading.node.runtime import RuntimeConfig, TradingRuntime
from kubequant.workloads.trading.node.scheduled import RebalancePlanned, Rebalancer, ScoreBook

SESSION_FILE = "session.yaml"  # what ``kubequant trading report`` looks for in a state dir
SEND_AT = "14:30"  # inside every session of the regions' exchanges (cn: 13:00-15:00)
REGION_TZ = {"cn": "Asia/Shanghai", "us": "America/New_York"}


@dataclass
class ReplayedOrder:
    """What the runtime made of one Backtest order."""

    decision: BacktestOrder
    sent: bool  # False: nothing to send (no shares)
    status: str = ""
    source: str = ""  # "risk" / "broker" for a rejection
    reason: str = ""  # the rejection's code (or why it expired)
    quantity: float = 0.0  # filled shares
    price: float = 0.0  # average fill price per share
    fee: float = 0.0
    value: float = 0.0
    detail: str = ""  # the rest of the journaled reason


@dataclass
class ReplayRun:
    """The replay's orders (by the Backtest's day and sequence) and its equity after each day."""

    orders: list[ReplayedOrder]
    equity: dict[dt.date, float]
    cash: dict[dt.date, float]
    state_dir: Path
    rejections: dict[str, int] = field(default_factory=dict)


def permissive_policy(timezone: str) -> RiskPolicy:
    """A RiskPolicy with no limits, windows or breakers (the engine's built-in checks still apply)."""
    return RiskPolicy.model_validate(
        {
            "apiVersion": "kubequant.io/v1alpha1",
            "kind": "RiskPolicy",
            "metadata": {"name": "parity-permissive"},
            "spec": {"timezone": timezone},
        }
    )


def session_for(spec: BacktestSpec, name: str, policy: RiskPolicy) -> LiveTradingSession:
    """A paper session on the Backtest's bundle, universe, exchange and account."""
    region = spec.data.region
    return LiveTradingSession.model_validate(
        {
            "apiVersion": "kubequant.io/v1alpha1",
            "kind": "LiveTradingSession",
            "metadata": {"name": f"parity-{name}"[:63].rstrip("-")},
            "spec": {
                "mode": "paper",
                "account": "parity",
                "broker": {"type": "paper"},
                "riskPolicyRef": {"name": policy.metadata.name},
                "strategy": {"signalApi": {}},
                "data": spec.data.model_dump(by_alias=True, exclude_none=True, mode="json"),
                "universe": spec.universe.model_dump(by_alias=True, exclude_none=True, mode="json"),
                "exchange": spec.exchange.model_dump(by_alias=True, exclude_none=True, mode="json"),
                "startingCash": spec.account,
                "timezone": REGION_TZ.get(region, "Asia/Shanghai"),
            },
        }
    )


def backtest_market(spec: BacktestSpec, days: list[dt.date]) -> QlibMarket:
    """qlib's Exchange from the Backtest's own ``exchange_kwargs``, its bars from the day before the first.

    The paper broker trades from its second bar (the first gives the last prices), so the bars start
    one trading day before the Backtest's first day; the exchange is the one the Backtest builds.
    """
    from qlib.backtest import get_exchange
    from qlib.data import D

    from kubequant.workloads.backtest.qlib_config import exchange_kwargs

    before = [t for t in D.calendar(end_time=str(days[0]), freq="day") if t.date() < days[0]]
    if not before:
        raise ConfigError(
            f"the bundle has no trading day before {days[0]}",
            where="spec.period.start",
            fix="start the period at least one trading day after the bundle's first day",
        )
    start, end = str(before[-1].date()), str(spec.period.end)
    kwargs = exchange_kwargs(spec)
    if "exchange" in kwargs:
        kwargs["exchange"]["kwargs"].update(start_time=start, end_time=end)
    else:
        kwargs = kwargs | {"start_time": start, "end_time": end}
    calendar = D.calendar(start_time=start, end_time=end, freq="day")
    return QlibMarket(get_exchange(**kwargs), list(calendar))


def write_policy(policy: RiskPolicy, folder: Path) -> Path:
    """The policy as the runtime reads it (a RiskPolicy manifest file)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(policy.model_dump(by_alias=True, exclude_none=True, mode="json")))
    return path


def replay_decisions(
    spec: BacktestSpec, run: BacktestRun, name: str, policy: RiskPolicy, out: Path
) -> ReplayRun:
    """Replay ``run``'s orders day by day through a paper session (qlib initialised on the bundle)."""
    session = session_for(spec, name, policy)
    state_dir = out / "state"
    if state_dir.exists():
        shutil.rmtree(state_dir)  # a fresh journal and paper account
    cfg = RuntimeConfig(session=session, policy_path=write_policy(policy, out), state_dir=state_dir)
    state_dir.mkdir(parents=True)
    # The session beside its journal: ``kubequant trading report --state-dir`` reads it from there.
    doc = session.model_dump(by_alias=True, exclude_none=True, mode="json")
    (state_dir / SESSION_FILE).write_text(yaml.safe_dump(doc, sort_keys=False))
    market = backtest_market(spec, run.days())
    return asyncio.run(_replay(cfg, market, run))


def _intent(order: BacktestOrder) -> OrderIntent | None:
    shares = as_quantity(Decimal(repr(order.shares)))
    if shares <= 0:
        return None
    side = Side.BUY if order.side == "buy" else Side.SELL
    return OrderIntent(
        order.instrument, side, shares, f"parity-{order.day}", f"{order.seq:05d}-{order.instrument}"
    )


async def _replay(cfg: RuntimeConfig, market: QlibMarket, run: BacktestRun) -> ReplayRun:
    runtime = TradingRuntime(cfg, market)
    clock = BarClock(market, runtime.broker, cfg.session.spec.timezone)
    runtime.oms.clock = clock
    broker = runtime.paper
    assert broker is not None  # a paper session
    broker.clock = clock
    by_day: dict[dt.date, list[BacktestOrder]] = {}
    for order in run.orders:
        by_day.setdefault(order.day, []).append(order)
    sent: list[tuple[BacktestOrder, str | None]] = []
    equity: dict[dt.date, float] = {}
    cash: dict[dt.date, float] = {}
    try:
        report = await runtime.start()
        if not runtime.oms.ready:
            raise ConfigError(f"recovery failed closed: {report.halted}", where=str(cfg.state_dir))
        for day in run.days():
            if broker.exhausted or clock.day() != day:
                raise ConfigError(
                    f"the paper market's bar is {clock.day() if not broker.exhausted else 'past the end'}, "
                    f"the Backtest's day {day}",
                    where="spec.period",
                    fix="use a period inside the bundle's calendar",
                )
            clock.set(clock.at(SEND_AT))
            for order in sorted(by_day.get(day, []), key=lambda o: o.seq):
                intent = _intent(order)
                if intent is None:
                    sent.append((order, None))
                    continue
                outcome = await runtime.oms.submit(intent)
                sent.append((order, outcome.order.client_order_id))
            clock.set(clock.at(dt.time(15, 0)))
            broker.advance()
            await runtime.tick()
            clock.set(None)
            account = runtime.oms.state.account
            if account is not None:
                equity[day], cash[day] = float(account.equity), float(account.cash)
        orders = [_outcome(order, runtime.oms.state.orders.get(cid) if cid else None) for order, cid in sent]
    finally:
        runtime.close()
    rejections: dict[str, int] = {}
    for o in orders:
        if o.status == "rejected":
            rejections[o.reason] = rejections.get(o.reason, 0) + 1
    return ReplayRun(orders, equity, cash, cfg.state_dir, rejections)


def _outcome(decision: BacktestOrder, order: Order | None) -> ReplayedOrder:
    if order is None:
        return ReplayedOrder(decision, sent=False, status="not sent", reason="no shares")
    qty = float(order.filled_quantity)
    value = float(order.value)
    reason, _, detail = order.reason.partition(":")
    return ReplayedOrder(
        decision,
        sent=True,
        status=str(order.status.value),
        source=_source(order),
        reason=reason.strip(),
        quantity=qty,
        price=value / qty if qty else 0.0,
        fee=float(order.fees),
        value=value,
        detail=detail.strip(),
    )


def _source(order: Order) -> str:
    """Who refused an order: the risk engine or the broker (from its journaled rejection)."""
    if order.status.value != "rejected":
        return ""
    source = RejectSource.BROKER if order.reason.startswith("BROKER") else RejectSource.RISK
    return str(source.value)


def replay_summary(run: ReplayRun) -> dict[str, Any]:
    """Counts for the report."""
    return {
        "orders": sum(1 for o in run.orders if o.sent),
        "fills": sum(1 for o in run.orders if o.quantity > 0),
        "rejections": dict(sorted(run.rejections.items())),
        "stateDir": str(run.state_dir),
    }


# --- the nested level: the day's parents sliced by the scheduled strategy on minute bars -------------


def minute_market(spec: BacktestSpec, days: list[dt.date]) -> QlibMarket:
    """qlib's 1-minute Exchange the Backtest's inner level deals on (qlib's path, not the compiled copy).

    Bars: the last minute of the day before the first day (the paper broker's first bar gives last
    prices), then every minute of the Backtest's days.
    """
    from qlib.backtest import get_exchange
    from qlib.data import D

    from kubequant.api.backtest import ExecutionEngine
    from kubequant.workloads.backtest.qlib_config import exchange_kwargs

    before = [t for t in D.calendar(end_time=str(days[0]), freq="day") if t.date() < days[0]]
    if not before:
        raise ConfigError(
            f"the bundle has no trading day before {days[0]}",
            where="spec.period.start",
            fix="start the period at least one trading day after the bundle's first day",
        )
    reference = spec.model_copy(
        update={"executor": spec.executor.model_copy(update={"engine": ExecutionEngine.QLIB})}
    )
    start, end = str(before[-1].date()), f"{spec.period.end} 15:00:00"
    kwargs = exchange_kwargs(reference)
    if "exchange" in kwargs:
        kwargs["exchange"]["kwargs"].update(start_time=start, end_time=end)
    else:
        kwargs = kwargs | {"start_time": start, "end_time": end}
    minutes = list(D.calendar(start_time=start, end_time=end, freq="1min"))
    wanted = set(days)
    first = [t for t in minutes if t.date() == before[-1].date()][-1:]
    calendar = first + [t for t in minutes if t.date() in wanted]
    return QlibMarket(get_exchange(**kwargs), calendar)


class ParentRebalancer(Rebalancer):
    """The scheduled strategy's ``Rebalancer`` with the Backtest's parents as each day's plan.

    The runtime's slicing (``slice_quantity``: equal whole lots, the last slot the rest; sells first;
    the A-share trading clock skipping the lunch break when the risk engine has it) sends the
    children; only the plan — what the strategy decided — comes from the Backtest.
    """

    def __init__(
        self, oms: OrderManager, parents: dict[dt.date, dict[str, Decimal]], slices: int, lot: Decimal
    ) -> None:
        super().__init__(oms, TopkDropout(), ScoreBook({}), slices=slices, interval_seconds=60.0, lot=lot)
        self.parents = parents

    def plan(self, day: dt.date, start: dt.datetime) -> RebalancePlanned | None:
        """Journal the Backtest's parents of ``day`` as the day's plan."""
        orders = {k: v for k, v in self.parents.get(day, {}).items() if v != 0}
        ashare = getattr(self.oms.risk, "ashare", None)
        event = RebalancePlanned(
            self.oms.clock.now(),
            rebalance_id=self.plan_id(day),
            day=day.isoformat(),
            scores_day=day.isoformat(),
            start=start,
            slices=self.slices,
            interval_seconds=self.interval,
            orders=orders,
            trading_time=bool(ashare is not None and getattr(ashare, "sessions", False)),
        )
        self.oms.commit(event)
        self.plans[event.rebalance_id] = event
        return event


def replay_sliced(
    spec: BacktestSpec, run: BacktestRun, name: str, policy: RiskPolicy, out: Path
) -> ReplayRun:
    """Replay ``run``'s daily parents sliced by the runtime's scheduled strategy, one paper bar a minute."""
    session = session_for(spec, name, policy)
    state_dir = out / "state"
    if state_dir.exists():
        shutil.rmtree(state_dir)
    cfg = RuntimeConfig(session=session, policy_path=write_policy(policy, out), state_dir=state_dir)
    state_dir.mkdir(parents=True)
    doc = session.model_dump(by_alias=True, exclude_none=True, mode="json")
    (state_dir / SESSION_FILE).write_text(yaml.safe_dump(doc, sort_keys=False))
    market = minute_market(spec, run.days())
    return asyncio.run(_replay_sliced(cfg, market, run))


async def _replay_sliced(cfg: RuntimeConfig, market: QlibMarket, run: BacktestRun) -> ReplayRun:
    from zoneinfo import ZoneInfo

    runtime = TradingRuntime(cfg, market)
    tz = ZoneInfo(cfg.session.spec.timezone)
    clock = BarClock(market, runtime.broker, cfg.session.spec.timezone)
    runtime.oms.clock = clock
    broker = runtime.paper
    assert broker is not None
    broker.clock = clock
    parents: dict[dt.date, dict[str, Decimal]] = {}
    for order in run.orders:
        shares = as_quantity(Decimal(repr(order.shares)))
        signed = shares if order.side == "buy" else -shares
        of_day = parents.setdefault(order.day, {})
        of_day[order.instrument] = of_day.get(order.instrument, Decimal(0)) + signed
    bars_of: dict[dt.date, list[int]] = {}
    for index in range(1, len(market.calendar)):
        bars_of.setdefault(market.bar_time(index).date(), []).append(index)
    slices = max((len(v) for v in bars_of.values()), default=1)
    rebalancer = ParentRebalancer(runtime.oms, parents, slices, runtime.lot())
    equity: dict[dt.date, float] = {}
    cash: dict[dt.date, float] = {}
    try:
        report = await runtime.start()
        if not runtime.oms.ready:
            raise ConfigError(f"recovery failed closed: {report.halted}", where=str(cfg.state_dir))
        for day in run.days():
            bars = bars_of.get(day, [])
            if not bars:
                raise ConfigError(
                    f"no minute bars on {day}", where="spec.data", fix="use days with minute bars"
                )
            start = market.bar_time(bars[0]).to_pydatetime().replace(tzinfo=tz).astimezone(dt.UTC)
            for index in bars:
                if broker.bar != index:
                    raise RuntimeError(f"the paper market is at bar {broker.bar}, expected {index}")
                now = market.bar_time(index).to_pydatetime().replace(tzinfo=tz).astimezone(dt.UTC)
                clock.set(now)
                await rebalancer.run_due(day, start, now)
                broker.advance()
                await runtime.tick()
            clock.set(None)
            account = runtime.oms.state.account
            if account is not None:
                equity[day], cash[day] = float(account.equity), float(account.cash)
        orders = _child_outcomes(runtime.oms.state.orders.values(), tz)
    finally:
        runtime.close()
    rejections: dict[str, int] = {}
    for o in orders:
        if o.status == "rejected":
            rejections[o.reason] = rejections.get(o.reason, 0) + 1
    return ReplayRun(orders, equity, cash, cfg.state_dir, rejections)


def _child_outcomes(orders: Any, tz: Any) -> list[ReplayedOrder]:
    """Every child the scheduled strategy sent, as a ReplayedOrder keyed by its minute (in ``decision``)."""
    out = []
    for order in sorted(orders, key=lambda o: (o.created, o.instrument)):
        if not order.signal_id.startswith("rebalance-"):
            continue
        minute = order.created.astimezone(tz).replace(tzinfo=None)
        decision = BacktestOrder(
            day=minute.date(),
            seq=minute.hour * 60 + minute.minute,
            instrument=order.instrument,
            side=order.side.value.lower(),
            amount=float(order.quantity),
            factor=1.0,
            deal_amount=0.0,
            price=float("nan"),
            value=0.0,
            cost=0.0,
        )
        out.append(_outcome(decision, order))
    return out
