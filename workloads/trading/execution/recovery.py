"""Start-up: replay the journal, reconcile with the broker, resolve every in-flight order, then open for signals.

Anything the broker reports that the journal cannot explain halts the session with the reason
(fail closed); the runtime then starts no strategy and ``/readyz`` stays false.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal

from kubequant.api.live import TradingState
from kubequant.workloads.trading.adapters.base import BrokerFill
from kubequant.workloads.trading.execution.journal import Journal
from kubequant.workloads.trading.execution.oms import OrderManager
from kubequant.workloads.trading.execution.reconcile import (
    reconcile_orders,
    refresh_account,
    sync_fills,
    sync_risk_state,
)
from kubequant.workloads.trading.model.domain import CLIENT_ORDER_ID_PREFIX
from kubequant.workloads.trading.model.events import (
    AccountSnapshot,
    OrderResent,
    OrderSubmitted,
    PositionSnapshot,
    RecoveryCompleted,
    RiskStateChanged,
)
from kubequant.workloads.trading.model.state import OmsState
from kubequant.workloads.trading.node.scheduled import RebalancePlanned  # noqa: F401  (registers the kind)
from kubequant.workloads.trading.risk.engine import RiskEngine
from kubequant.workloads.trading.risk.trading_state import TradingStateSet, reset_baseline

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    """What recovery found and did."""

    replayed: int = 0
    fills_applied: int = 0
    repeated_fills: int = 0
    adopted: int = 0
    resolved: dict[str, int] = field(default_factory=dict)
    position_mismatches: int = 0
    halted: str | None = None

    def counts(self) -> dict[str, int]:
        """Flat counts for the journal and the log."""
        out = {
            "replayed": self.replayed,
            "fills_applied": self.fills_applied,
            "repeated_fills": self.repeated_fills,
            "adopted": self.adopted,
            "position_mismatches": self.position_mismatches,
        }
        return out | {f"resolved_{k}": v for k, v in sorted(self.resolved.items())}


def rebuild(journal: Journal, risk: RiskEngine, resent: set[str] | None = None) -> OmsState:
    """The OMS state from the journal, with the risk engine's counters, peak equity and latched breakers.

    ``resent`` collects the orders already sent once more (``OrderResent``): none is resent again.
    """
    state = OmsState()
    last_risk: RiskStateChanged | None = None
    for _, event in journal.replay():
        state.apply(event)
        match event:
            case OrderSubmitted(ts=ts, notional=notional, client_order_id=cid):
                # Today's orders and the rate window survive a restart: a crash must not reset the limits.
                if not state.orders[cid].external:
                    risk.record(notional, ts)
            case AccountSnapshot(ts=ts, equity=equity):
                risk.observe_equity(equity, ts, evaluate=False)
            case RiskStateChanged():
                last_risk = event
            case OrderResent(client_order_id=cid) if resent is not None:
                resent.add(cid)
            case TradingStateSet():
                reset_baseline(risk, event)  # a resume's accepted loss stays accepted after a restart
    if last_risk is not None:
        risk.restore(last_risk.conditions)
    return state


ADOPT_FIX = (
    "if the journal volume was lost, restore it; if this is a new session on an account already in use, "
    "adopt the account's positions and open orders explicitly: "
    "kubequant trading adopt --state-dir DIR --reason TEXT"
)


async def account_in_use(
    oms: OrderManager, positions: dict[str, Decimal], fills: list[BrokerFill]
) -> str | None:
    """Why an empty journal must not start on this account (it holds something), or None when it is clean."""
    open_orders = await oms.call(oms.broker.open_orders, "open orders")
    ours = sorted(
        {f.fill.client_order_id for f in fills if f.fill.client_order_id.startswith(CLIENT_ORDER_ID_PREFIX)}
        | {o.client_order_id for o in open_orders if o.client_order_id.startswith(CLIENT_ORDER_ID_PREFIX)}
    )
    found = []
    if held := [k for k, q in positions.items() if q]:
        found.append(
            f"{len(held)} positions ({', '.join(sorted(held)[:5])}{', ...' if len(held) > 5 else ''})"
        )
    if open_orders:
        found.append(f"{len(open_orders)} open orders")
    if ours:
        found.append(f"{len(ours)} orders placed by a kubequant session ({', '.join(ours[:3])})")
    if not found:
        return None
    return "the journal is empty but the broker account holds " + "; ".join(found)


async def refuse_to_start(oms: OrderManager, report: RecoveryReport, why: str) -> RecoveryReport:
    """Fail closed: journal why (halted, reconciliation), and leave the OMS closed."""
    log.error("%s: %s", why, ADOPT_FIX)
    oms.anomaly(f"{why}; {ADOPT_FIX}")
    await sync_risk_state(oms)
    report.halted = "; ".join(oms.risk.describe().values())
    oms.commit(RecoveryCompleted(oms.clock.now(), report.counts(), report.halted))
    oms.ready = False
    return report


async def recover(oms: OrderManager) -> RecoveryReport:
    """Replay and reconcile; on return every order is settled and ``oms.ready`` says whether to trade."""
    report = RecoveryReport()
    oms.ready = False
    oms.resent = set()
    oms.state = rebuild(oms.journal, oms.risk, oms.resent)
    report.replayed = oms.state.events
    broker, now = oms.broker, oms.clock.now()
    if not oms.state.has_history:
        fills = await oms.call(lambda: broker.fills_since(None), "fills")
        positions = await oms.call(broker.positions, "positions")
        refusal = None if oms.state.adoption is not None else await account_in_use(oms, positions, fills)
        if refusal is not None:
            # A lost journal volume looks exactly like this: adopting would forget today's orders,
            # the limits' counters and any latched halt. Only an operator may decide to adopt.
            return await refuse_to_start(oms, report, refusal)
        # A fresh journal (or an authorised adoption) starts from the broker's positions as they
        # are, and its fills so far; open orders are adopted as external below.
        cursor = fills[-1].cursor if fills else None
        oms.commit(PositionSnapshot(now, positions, baseline=True, cursor=cursor))

    # Fills missed while down come first, so that the order statuses below see them.
    report.fills_applied, report.repeated_fills = await sync_fills(oms)
    report.adopted, report.resolved = await reconcile_orders(oms)

    remote_positions = await oms.call(broker.positions, "positions")
    local_positions = oms.state.position_quantities()
    differ = {
        inst: (local_positions.get(inst), remote_positions.get(inst))
        for inst in set(local_positions) | set(remote_positions)
        if local_positions.get(inst) != remote_positions.get(inst)
    }
    if differ:
        report.position_mismatches = len(differ)
        oms.commit(PositionSnapshot(oms.clock.now(), dict(remote_positions)))
        detail = ", ".join(f"{k} journal {v[0] or 0} broker {v[1] or 0}" for k, v in sorted(differ.items()))
        oms.anomaly(f"positions differ after reconciliation: {detail}")

    await refresh_account(oms)
    await sync_risk_state(oms)
    if oms.risk.state is TradingState.HALTED:
        report.halted = "; ".join(oms.risk.describe().values())
    oms.commit(RecoveryCompleted(oms.clock.now(), report.counts(), report.halted))
    # A reconciliation failure keeps the session closed; a kill switch still lets signals be refused politely.
    oms.ready = "reconciliation" not in oms.risk.conditions and oms.failed is None
    log.info("recovery: %s%s", report.counts(), f"; HALTED: {report.halted}" if report.halted else "")
    return report
