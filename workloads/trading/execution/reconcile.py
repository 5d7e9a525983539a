"""Keeping the OMS in line with the broker: fills, order statuses, orders placed elsewhere, the account.

Used at start-up by ``recovery.recover`` and afterwards by the periodic ``poll``. Whatever the
broker reports that the journal cannot explain halts the session (fail closed).

``poll`` runs on the event loop beside the signals, so it never holds the loop for long: broker
facts are staged in order and written by the journal's group commit, awaited every ``CHUNK``
(the await gives the loop back to the signals, and one fsync serves the whole chunk); a long list
of orders to settle gives the loop back every ``CHUNK`` orders too. Nothing a chunk staged is
acted on outside the process before it is on disk.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from kubequant.api.live import TradingState
from kubequant.workloads.trading.adapters.base import BrokerDisconnected, BrokerOrder, BrokerTimeout
from kubequant.workloads.trading.execution.oms import OrderManager
from kubequant.workloads.trading.model.events import (
    AccountSnapshot,
    OrderAccepted,
    OrderCanceled,
    OrderCreated,
    OrderExpired,
    OrderFilled,
    OrderRejected,
    OrderSubmitted,
    RejectSource,
    RiskStateChanged,
)
from kubequant.workloads.trading.model.orders import Order, OrderStatus
from kubequant.workloads.trading.node import metrics

log = logging.getLogger(__name__)
# Broker facts staged (or orders settled) between two waits for the journal, which give the loop back.
CHUNK = 16


async def sync_fills(oms: OrderManager) -> tuple[int, int]:
    """Journal the broker's new fills (adopting orders placed elsewhere); returns (applied, repeated).

    Returns once every fill applied is on disk.
    """
    applied = repeated = staged = 0
    for bf in await oms.call(lambda: oms.broker.fills_since(oms.state.cursor), "fills"):
        fill = bf.fill
        if fill.fill_id in oms.state.fill_ids:
            repeated += 1
            continue
        cid = oms.local_id(fill.client_order_id, fill.broker_order_id)
        if cid is None:
            report = await oms.call(lambda f=fill: oms.broker.get_order(f.client_order_id), "get order")
            cid = await adopt(oms, report) if report is not None else None
            if cid is None:
                oms.anomaly(f"fill {fill.fill_id} for an order the broker cannot describe")
                continue
        late = oms.state.orders[cid].is_terminal
        if oms.try_stage(OrderFilled(oms.clock.now(), cid, fill, bf.cursor)):
            applied += 1
            if late:
                oms.anomaly(f"fill {fill.fill_id} arrived for closed order {cid}")
        staged += 1
        if staged % CHUNK == 0:
            await oms.settled()  # one fsync for the chunk; signals run meanwhile
    await oms.settled()
    return applied, repeated


async def adopt(oms: OrderManager, report: BrokerOrder) -> str:
    """Take in an order placed outside this session, tagged external; returns once journaled."""
    now = oms.clock.now()
    cid = report.client_order_id or f"external-{report.broker_order_id}"
    if cid in oms.state.orders:
        cid = f"external-{report.broker_order_id}"
    log.warning("adopting external order %s (%s %s %s)", cid, report.side, report.quantity, report.instrument)
    await oms.commit_async(
        OrderCreated(
            now,
            cid,
            report.instrument,
            report.side,
            report.quantity,
            "external",
            report.broker_order_id,
            limit_price=report.limit_price,
            external=True,
        ),
        OrderSubmitted(now, cid),
        OrderAccepted(now, cid, report.broker_order_id),
    )
    return cid


async def settle(oms: OrderManager, order: Order, report: BrokerOrder | None) -> str:
    """Bring a local order in line with the broker's report of it; returns what was done.

    What it journals is staged: on disk once ``oms.settled()`` returns (``reconcile_orders`` waits).
    """
    now, cid = oms.clock.now(), order.client_order_id
    if report is None:
        if order.status is OrderStatus.SUBMITTED and not order.fills:
            # One targeted query said the broker never received it: sent once more only where the
            # venue refuses a reused id (see ``OrderManager.resend_refusal``), else rejected.
            refusal = oms.resend_refusal(order, now)
            if refusal is None:
                return await resend(oms, order, now)
            oms.try_stage(
                OrderRejected(
                    now,
                    cid,
                    RejectSource.RECOVERY,
                    "UNKNOWN_AT_BROKER",
                    f"the broker never received it; not sent again: {refusal}",
                    True,
                )
            )
            return "unknown-rejected"
        oms.anomaly(f"order {cid} ({order.status}) is unknown to the broker")
        return "anomaly"
    if report.status is OrderStatus.REJECTED:
        oms.try_stage(OrderRejected(now, cid, RejectSource.BROKER, "BROKER_REJECTED", report.reason))
        return "rejected"
    if order.status is OrderStatus.SUBMITTED:
        oms.try_stage(OrderAccepted(now, cid, report.broker_order_id))
    if report.filled_quantity > order.filled_quantity:
        await sync_fills(oms)
    if report.filled_quantity != order.filled_quantity:
        oms.anomaly(f"order {cid}: broker filled {report.filled_quantity}, journal {order.filled_quantity}")
        return "anomaly"
    if report.status is OrderStatus.CANCELED and not order.is_terminal:
        oms.try_stage(OrderCanceled(now, cid, report.reason or "canceled at the broker"))
    elif report.status is OrderStatus.EXPIRED and not order.is_terminal:
        oms.try_stage(OrderExpired(now, cid, report.reason or "expired at the broker"))
    return str(order.status)


async def resend(oms: OrderManager, order: Order, now: dt.datetime) -> str:
    """Send an order the venue never received once more; returns "resent-" and what became of it.

    A refusal as a duplicate client order id means the first copy reached the venue after the
    query: the venue's report of it settles the order, as for any other.
    """
    cid = order.client_order_id
    age = (now - order.created).total_seconds()
    outcome = await oms.resend(order, f"the venue's query found no order {cid} {age:.1f}s after its signal")
    if outcome != "duplicate":
        return f"resent-{outcome}"
    report = await oms.call(lambda: oms.broker.get_order(cid), "get order")
    if report is None:
        oms.anomaly(f"the venue refused the resend of {cid} as a duplicate but reports no such order")
        return "anomaly"
    return f"resent-{await settle(oms, order, report)}"


async def reconcile_orders(oms: OrderManager) -> tuple[int, dict[str, int]]:
    """Adopt orders open at the broker that are not ours; settle every other live order by one query.

    Returns (orders adopted, outcomes of the targeted queries by kind) once all it journaled is on
    disk. Orders whose submit is still on its way are left alone: their own call settles them.
    """
    adopted, outcomes = 0, dict[str, int]()
    open_here: set[str] = set()
    for n, remote in enumerate(await oms.call(oms.broker.open_orders, "open orders"), 1):
        if n % CHUNK == 0:
            await oms.settled()
            await asyncio.sleep(0)  # nothing staged: still give the signals a turn
        cid = oms.local_id(remote.client_order_id, remote.broker_order_id)
        if cid is None:
            cid = await adopt(oms, remote)
            adopted += 1
        elif oms.state.orders[cid].is_terminal:
            oms.anomaly(f"order {cid} is {oms.state.orders[cid].status} here but open at the broker")
        else:
            order = oms.state.orders[cid]
            in_flight = order.status is OrderStatus.SUBMITTED
            what = await settle(oms, order, remote)
            if in_flight:  # sent before a crash or a lost ack; the broker's open orders answer for it
                outcomes[f"open-{what}"] = outcomes.get(f"open-{what}", 0) + 1
        open_here.add(cid)
    queried = 0
    for order in oms.state.live_orders():
        if order.client_order_id in open_here or order.client_order_id in oms.sending:
            continue
        queried += 1
        if queried % CHUNK == 0:
            await oms.settled()
            await asyncio.sleep(0)
        remote = await oms.call(lambda o=order: oms.broker.get_order(o.client_order_id), "get order")
        what = await settle(oms, order, remote)
        outcomes[what] = outcomes.get(what, 0) + 1
    await oms.settled()
    return adopted, outcomes


async def poll(oms: OrderManager) -> None:
    """Fills, in-flight orders, account, connectivity and the trading state; halting cancels orders.

    Back after an outage that changed the trading state (the policy's brokerDisconnect), the state
    holds until the OMS has reconciled and the resting orders it cancels are cancelled: nothing could
    be cancelled while the venue was unreachable, and clearing it on the reconnect would let those
    orders keep working (``resume_after_outage``).
    """
    now = oms.clock.now()
    connected = oms.broker.is_connected()
    metrics.record_connectivity(connected)  # also counts kubequant_broker_reconnects_total
    outage = oms.risk.outage_state() if connected else None
    if outage is None:
        oms.risk.observe_connectivity(connected, now)
    reconciled = False
    if connected:
        try:
            await sync_fills(oms)
            await reconcile_orders(oms)
            await refresh_account(oms)
            reconciled = True
        except (BrokerTimeout, BrokerDisconnected) as err:
            log.warning("broker poll failed: %s", err)
    asked = await sync_risk_state(oms)
    if outage is not None and reconciled:
        await resume_after_outage(oms, outage, asked)


async def resume_after_outage(oms: OrderManager, outage: TradingState, asked: int) -> bool:
    """Clear the outage's state once nothing it cancels is still working at the venue; True when cleared.

    ``asked``: the cancels ``sync_risk_state`` just sent, whose outcome a second reconciliation
    reads. HALTED cancels every live order, REDUCING those adding exposure; on a venue that cannot
    cancel, reconciling is all there is to wait for. Until then the state holds and the next poll
    asks again.
    """
    if asked:
        try:
            await sync_fills(oms)
            await reconcile_orders(oms)
        except (BrokerTimeout, BrokerDisconnected) as err:
            log.warning("reconciling the cancels after the outage failed: %s", err)
            return False
    caps = getattr(oms.broker, "capabilities", None)
    if caps is not None and not caps.cancel:
        working: list[Order] = []
    elif outage is TradingState.HALTED:
        working = oms.state.live_orders()
    else:
        working = oms.state.exposure_increasing()
    if working:
        log.warning(
            "broker reachable again; %s holds until %d resting orders are cancelled (%s)",
            outage,
            len(working),
            ", ".join(o.client_order_id for o in working[:5]),
        )
        return False
    oms.risk.observe_connectivity(True, oms.clock.now())
    await sync_risk_state(oms)
    log.warning("broker reachable again, reconciled and its resting orders cancelled: %s lifted", outage)
    return True


async def refresh_account(oms: OrderManager) -> None:
    """Journal a changed account and feed equity to the breakers."""
    acct = await oms.call(oms.broker.account, "account")
    now = oms.clock.now()
    old = oms.state.account
    if old is None or (old.cash, old.equity) != (acct.cash, acct.equity):
        await oms.commit_async(AccountSnapshot(now, acct.cash, acct.equity))
    metrics.EQUITY.set(float(acct.equity))
    metrics.record_book(oms.state.position_quantities(), oms.prices.last_price, acct.equity)
    oms.risk.observe_equity(acct.equity, now)
    metrics.record_risk(oms.risk, acct.equity)  # drawdown, daily PnL and loss, breaker limits, conditions


async def sync_risk_state(oms: OrderManager) -> int:
    """Journal a change of the trading state; while halted cancel whatever is still live, while reducing
    what adds exposure. Returns how many cancels were asked."""
    state, conditions = oms.risk.state, oms.risk.describe()
    if (state.value, conditions) != (oms.state.risk_state, oms.state.risk_conditions):
        await oms.commit_async(RiskStateChanged(oms.clock.now(), state.value, conditions))
        log.warning("trading state %s: %s", state, conditions or "all clear")
    # Every time, not only on a change: a pod that starts ACTIVE, or restarts into the HALTED state its
    # journal holds, changes nothing, and its gauge must still say so (KubequantSessionHalted reads it).
    for s in TradingState:
        metrics.TRADING_STATE.labels(s.value).set(1 if s is state else 0)
    metrics.record_conditions(set(oms.risk.conditions))
    if state is TradingState.ACTIVE or not oms.broker.is_connected():
        return 0
    asked = 0
    try:
        if state is TradingState.HALTED:
            asked = await oms.cancel_all("halted")
        else:  # REDUCING: resting orders that add exposure would keep adding it
            for order in oms.state.exposure_increasing():
                asked += await oms.cancel(order.client_order_id, "reduce-only: the order adds exposure")
    except (BrokerTimeout, BrokerDisconnected) as err:
        log.warning("cancelling on %s failed: %s", state, err)
    return asked
