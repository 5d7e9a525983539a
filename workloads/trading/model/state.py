"""The OMS state as a fold over journal events: the same code rebuilds it on replay and advances it live."""

from __future__ import annotations

import bisect
import datetime as dt
import decimal
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from kubequant.workloads.trading.model.domain import ZERO, Account, Fill, Position, Side
from kubequant.workloads.trading.model.events import (
    AccountSnapshot,
    AdoptionAuthorized,
    Event,
    OrderCreated,
    OrderEvent,
    OrderFilled,
    PositionSnapshot,
    RecoveryCompleted,
    RiskStateChanged,
    SignalReceived,
)
from kubequant.workloads.trading.model.orders import IllegalTransition, Order, OrderStatus, next_status

# Sums of quantities kept exact (no rounding at the default 28 digits) however many orders go through.
_EXACT = decimal.Context(prec=80, traps=[decimal.InvalidOperation])
# Buy fills older than this before the newest one cannot fall on a later check's trading day (T+1).
_BUYS_KEPT = dt.timedelta(days=2)


@dataclass
class OmsState:
    """Orders, positions, fills seen, the broker's fill cursor, the account and the risk state."""

    orders: dict[str, Order] = field(default_factory=dict)
    # Orders replaced by a retry of the same signal after the broker provably never saw them.
    superseded: list[Order] = field(default_factory=list)
    by_broker_id: dict[str, str] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)
    fill_ids: set[str] = field(default_factory=set)
    cursor: str | None = None
    account: Account | None = None
    risk_state: str = "ACTIVE"
    risk_conditions: dict[str, str] = field(default_factory=dict)
    # Broker facts that contradict the order they belong to (e.g. a fill on a closed order).
    anomalies: list[str] = field(default_factory=list)
    recoveries: list[RecoveryCompleted] = field(default_factory=list)
    events: int = 0
    has_baseline: bool = False
    # An operator's `kubequant trading adopt` waiting for the next start (cleared by the baseline).
    adoption: AdoptionAuthorized | None = None
    # Payload digests of the signals taken, by signal id (a retry with another payload is refused).
    signals: dict[str, str] = field(default_factory=dict)
    # Client order ids of live orders, oldest first (a dict keeps insertion order): the hot path
    # (the risk view of every signal) must not walk every order of the session.
    live: dict[str, None] = field(default_factory=dict)
    # The same by instrument, and each instrument's remaining (buy, sell) quantities of live orders,
    # kept up to date by each order's change (O(1)), so a view never walks the orders of an instrument.
    live_by_instrument: dict[str, dict[str, None]] = field(default_factory=dict, compare=False, repr=False)
    _live_sums: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict, compare=False, repr=False)
    _pending: dict[str, Decimal] = field(default_factory=dict, compare=False, repr=False)
    # Recent buy fills per instrument, oldest first: (time, shares). What T+1 keeps from selling
    # today (``bought_since``); replay rebuilds it, so it survives a restart.
    buys: dict[str, list[tuple[dt.datetime, Decimal]]] = field(default_factory=dict, repr=False)

    @property
    def has_history(self) -> bool:
        """Whether the journal holds a baseline or any order: a session that has traded."""
        return self.has_baseline or bool(self.orders)

    @classmethod
    def rebuild(cls, events: Iterable[Event]) -> OmsState:
        """The state after ``events`` (a journal replay)."""
        state = cls()
        for event in events:
            state.apply(event)
        return state

    def check(self, event: Event) -> None:
        """Raise IllegalTransition if ``event`` cannot be applied; changes nothing."""
        if isinstance(event, OrderCreated):
            old = self.orders.get(event.client_order_id)
            if old is not None and not (old.is_terminal and old.retryable and not old.fills):
                raise IllegalTransition(f"order {event.client_order_id} already exists ({old.status})")
            return
        if not isinstance(event, OrderEvent):
            return
        order = self.orders.get(event.client_order_id)
        if order is None:
            raise IllegalTransition(f"{event.kind} for unknown order {event.client_order_id}")
        if isinstance(event, OrderFilled) and order.is_terminal:
            return  # a late fill: apply records it as an anomaly, and the position still follows the broker
        trigger = order.trigger_for(event)
        if trigger is not None:
            next_status(order.status, trigger)

    def apply(self, event: Event) -> bool:
        """Apply one event; False when it changed nothing (a repeated fill)."""
        self.check(event)
        self.events += 1
        match event:
            case OrderCreated():
                old = self.orders.get(event.client_order_id)
                if old is not None:
                    self.superseded.append(old)
                self.orders[event.client_order_id] = Order.create(event)
                self._track(self.orders[event.client_order_id])
                return True
            case OrderFilled(fill=fill) if fill is not None:
                return self._apply_fill(event, fill)
            case OrderEvent():
                order = self.orders[event.client_order_id]
                changed = order.apply(event)
                self._track(order)
                return changed
            case PositionSnapshot(positions=positions, baseline=True, cursor=cursor):
                self.positions = {k: Position(k, q) for k, q in positions.items() if q}
                self.cursor = cursor
                self.has_baseline = True
                self.adoption = None
            case AdoptionAuthorized():
                self.adoption = event
            case SignalReceived(signal_id=sid, digest=digest):
                self.signals[sid] = digest
            case AccountSnapshot(cash=cash, equity=equity, ts=ts):
                self.account = Account(cash, equity, ts)
            case RiskStateChanged(state=state, conditions=conditions):
                self.risk_state, self.risk_conditions = state, dict(conditions)
            case RecoveryCompleted():
                self.recoveries.append(event)
        return True

    def _apply_fill(self, event: OrderFilled, fill: Fill) -> bool:
        if fill.fill_id in self.fill_ids:
            return False
        order = self.orders[event.client_order_id]
        if order.is_terminal:
            self.anomalies.append(f"fill {fill.fill_id} on {order.status} order {order.client_order_id}")
        else:
            order.apply(event)
            self._track(order)
        self.fill_ids.add(fill.fill_id)
        if fill.side is Side.BUY:
            recent = self.buys.setdefault(fill.instrument, [])
            # Kept in time order (a late fill may come after newer ones).
            bisect.insort(recent, (fill.ts, fill.quantity), key=lambda entry: entry[0])
            horizon = recent[-1][0] - _BUYS_KEPT
            while recent[0][0] < horizon:
                del recent[0]
        pos = self.positions.get(fill.instrument) or Position(fill.instrument)
        self.positions[fill.instrument] = pos.apply(fill)
        if event.cursor is not None:
            self.cursor = event.cursor
        return True

    def _track(self, order: Order) -> None:
        if order.broker_order_id:
            self.by_broker_id[order.broker_order_id] = order.client_order_id
        cid, inst, buy = order.client_order_id, order.instrument, order.side.sign > 0
        old = self._pending.get(cid)
        if order.is_live:
            new = order.remaining
            if old is None:
                self.live.setdefault(cid)
                self.live_by_instrument.setdefault(inst, {}).setdefault(cid)
                self._shift(inst, buy, new)
            elif new != old:
                self._shift(inst, buy, _EXACT.subtract(new, old))
            self._pending[cid] = new
        elif old is not None:
            del self.live[cid], self._pending[cid]
            same = self.live_by_instrument[inst]
            del same[cid]
            if same:
                self._shift(inst, buy, -old)
            else:  # the last live order of the instrument: exactly nothing pending
                del self.live_by_instrument[inst], self._live_sums[inst]

    def _shift(self, inst: str, buy: bool, delta: Decimal) -> None:
        buys, sells = self._live_sums.get(inst, (ZERO, ZERO))
        if buy:
            self._live_sums[inst] = (_EXACT.add(buys, delta), sells)
        else:
            self._live_sums[inst] = (buys, _EXACT.add(sells, delta))

    def position(self, instrument: str) -> Decimal:
        """Signed filled quantity of ``instrument``."""
        pos = self.positions.get(instrument)
        return pos.quantity if pos else ZERO

    def bought_since(self, instrument: str, start: dt.datetime) -> Decimal:
        """Shares of ``instrument`` bought by fills at or after ``start`` (the trading day's start, for T+1)."""
        total = ZERO
        for ts, quantity in reversed(self.buys.get(instrument, ())):
            if ts < start:
                break
            total = _EXACT.add(total, quantity)
        return total

    def position_quantities(self) -> dict[str, Decimal]:
        """Non-zero filled positions by instrument."""
        return {k: p.quantity for k, p in self.positions.items() if p.quantity}

    def projected(self) -> dict[str, Decimal]:
        """Positions as if every live order filled completely (what the risk engine limits)."""
        out = self.position_quantities()
        for inst, (buys, sells) in self._live_sums.items():
            out[inst] = out.get(inst, ZERO) + buys - sells
        return out

    def projected_view(self) -> ProjectedPositions:
        """``projected()`` as a live mapping: a position is worked out when read (O(1) per instrument)."""
        return ProjectedPositions(self)

    def resting(self, instrument: str) -> tuple[Decimal, Decimal]:
        """Remaining (buy, sell) quantities of the live orders of ``instrument`` (kept per change: O(1))."""
        return self._live_sums.get(instrument, (ZERO, ZERO))

    def exposure_increasing(self) -> list[Order]:
        """Live orders that would add to a position rather than reduce it (what REDUCING cancels).

        Per instrument, oldest first: an order counts as reducing while the orders before it on the
        same side have not yet claimed the whole filled position.
        """
        out = []
        for inst, cids in self.live_by_instrument.items():
            filled = self.position(inst)
            claimed = ZERO
            for cid in cids:
                order = self.orders[cid]
                if order.side.sign * filled < 0 and claimed + order.remaining <= abs(filled):
                    claimed += order.remaining
                else:
                    out.append(order)
        return out

    def live_orders(self) -> list[Order]:
        """Orders the broker may still fill (in flight included), oldest first."""
        return [self.orders[cid] for cid in self.live]

    def in_flight(self) -> list[Order]:
        """Orders sent (or about to be) that the broker has not acknowledged."""
        return [o for o in self.live_orders() if o.status is OrderStatus.SUBMITTED]


class ProjectedPositions(Mapping[str, Decimal]):
    """``OmsState.projected()`` without building it: each instrument is read from the state when asked.

    Building the whole dict walked every position and every instrument with live orders for each
    order checked (twice per signal); the risk check and the planner read a few instruments, and only
    a gross-exposure limit walks the book. A live view: read it before the state changes (its callers
    do, with no ``await`` between taking it and reading it). Same keys and values as ``projected()``.
    """

    __slots__ = ("_state",)

    def __init__(self, state: OmsState) -> None:
        self._state = state

    def __getitem__(self, instrument: str) -> Decimal:
        state = self._state
        pos = state.positions.get(instrument)
        sums = state._live_sums.get(instrument)
        if sums is None:
            if pos is None or not pos.quantity:
                raise KeyError(instrument)
            return pos.quantity
        return (pos.quantity if pos is not None else ZERO) + sums[0] - sums[1]

    def __contains__(self, instrument: object) -> bool:
        state = self._state
        if instrument in state._live_sums:
            return True
        pos = state.positions.get(instrument)  # type: ignore[call-overload]
        return pos is not None and bool(pos.quantity)

    def __iter__(self) -> Iterator[str]:
        state = self._state
        keys = dict.fromkeys(k for k, p in state.positions.items() if p.quantity)
        keys.update(dict.fromkeys(state._live_sums))
        return iter(keys)

    def __len__(self) -> int:
        return sum(1 for _ in self)
