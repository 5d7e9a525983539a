"""The order state machine: an explicit transition table and the Order aggregate that obeys it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from kubequant.errors import KubequantError
from kubequant.workloads.trading.model.domain import ZERO, Fill, Side
from kubequant.workloads.trading.model.events import (
    OrderAccepted,
    OrderCanceled,
    OrderCancelRequested,
    OrderCreated,
    OrderEvent,
    OrderExpired,
    OrderFilled,
    OrderRejected,
    OrderSubmitted,
)


class OrderStatus(StrEnum):
    PENDING_NEW = "pending-new"
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially-filled"
    FILLED = "filled"
    PENDING_CANCEL = "pending-cancel"
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"


class Trigger(StrEnum):
    SUBMIT = "submit"
    ACCEPT = "accept"
    REJECT = "reject"
    PARTIAL_FILL = "partial-fill"
    FILL = "fill"  # the fill that completes the quantity
    REQUEST_CANCEL = "request-cancel"
    CANCEL = "cancel"
    EXPIRE = "expire"


S, T = OrderStatus, Trigger
# The whole lifecycle in one place; anything not listed is illegal. Fills may overtake the ack
# (submitted -> filled) and a cancel request (pending-cancel -> filled), as they do at real venues.
TRANSITIONS: dict[tuple[OrderStatus, Trigger], OrderStatus] = {
    (S.PENDING_NEW, T.SUBMIT): S.SUBMITTED,
    (S.PENDING_NEW, T.REJECT): S.REJECTED,
    (S.PENDING_NEW, T.CANCEL): S.CANCELED,
    (S.SUBMITTED, T.ACCEPT): S.ACCEPTED,
    (S.SUBMITTED, T.REJECT): S.REJECTED,
    (S.SUBMITTED, T.PARTIAL_FILL): S.PARTIALLY_FILLED,
    (S.SUBMITTED, T.FILL): S.FILLED,
    (S.SUBMITTED, T.REQUEST_CANCEL): S.PENDING_CANCEL,
    (S.SUBMITTED, T.CANCEL): S.CANCELED,
    (S.SUBMITTED, T.EXPIRE): S.EXPIRED,
    (S.ACCEPTED, T.REJECT): S.REJECTED,
    (S.ACCEPTED, T.PARTIAL_FILL): S.PARTIALLY_FILLED,
    (S.ACCEPTED, T.FILL): S.FILLED,
    (S.ACCEPTED, T.REQUEST_CANCEL): S.PENDING_CANCEL,
    (S.ACCEPTED, T.CANCEL): S.CANCELED,
    (S.ACCEPTED, T.EXPIRE): S.EXPIRED,
    (S.PARTIALLY_FILLED, T.PARTIAL_FILL): S.PARTIALLY_FILLED,
    (S.PARTIALLY_FILLED, T.FILL): S.FILLED,
    (S.PARTIALLY_FILLED, T.REQUEST_CANCEL): S.PENDING_CANCEL,
    (S.PARTIALLY_FILLED, T.CANCEL): S.CANCELED,
    (S.PARTIALLY_FILLED, T.EXPIRE): S.EXPIRED,
    (S.PENDING_CANCEL, T.PARTIAL_FILL): S.PENDING_CANCEL,
    (S.PENDING_CANCEL, T.FILL): S.FILLED,
    (S.PENDING_CANCEL, T.CANCEL): S.CANCELED,
    (S.PENDING_CANCEL, T.EXPIRE): S.EXPIRED,
}
del S, T

TERMINAL: frozenset[OrderStatus] = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED, OrderStatus.EXPIRED}
)
# Orders the broker may still fill.
LIVE: frozenset[OrderStatus] = frozenset(
    {OrderStatus.SUBMITTED, OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED, OrderStatus.PENDING_CANCEL}
)


class IllegalTransition(KubequantError):
    """An event that the order's state does not allow."""


def next_status(status: OrderStatus, trigger: Trigger) -> OrderStatus:
    """The status after ``trigger``, or IllegalTransition."""
    try:
        return TRANSITIONS[(status, trigger)]
    except KeyError:
        raise IllegalTransition(f"{trigger} is not allowed from {status}") from None


@dataclass
class Order:
    """One order: its request, its status and its fills; changed only through ``apply``."""

    client_order_id: str
    instrument: str
    side: Side
    quantity: Decimal
    signal_id: str
    leg: str
    limit_price: Decimal | None
    created: dt.datetime
    external: bool = False
    reference_price: Decimal | None = None
    status: OrderStatus = OrderStatus.PENDING_NEW
    broker_order_id: str | None = None
    notional: Decimal = ZERO
    filled_quantity: Decimal = ZERO
    fees: Decimal = ZERO
    value: Decimal = ZERO  # sum of fill quantity x price
    reason: str = ""
    retryable: bool = False
    updated: dt.datetime | None = None
    fills: dict[str, Fill] = field(default_factory=dict)

    @classmethod
    def create(cls, event: OrderCreated) -> Order:
        """A new order in pending-new from its creation event."""
        return cls(
            client_order_id=event.client_order_id,
            instrument=event.instrument,
            side=event.side,
            quantity=event.quantity,
            signal_id=event.signal_id,
            leg=event.leg,
            limit_price=event.limit_price,
            created=event.ts,
            external=event.external,
            reference_price=event.reference_price,
            updated=event.ts,
        )

    @property
    def is_terminal(self) -> bool:
        """True once nothing can change the order any more."""
        return self.status in TERMINAL

    @property
    def is_live(self) -> bool:
        """True while the broker may still fill it (including in flight)."""
        return self.status in LIVE

    @property
    def remaining(self) -> Decimal:
        """Quantity not yet filled."""
        return self.quantity - self.filled_quantity

    @property
    def average_price(self) -> Decimal | None:
        """Average fill price, if anything filled."""
        return self.value / self.filled_quantity if self.filled_quantity else None

    def to_dict(self) -> dict[str, object]:
        """The order as JSON-able values (Decimals as strings), for the signal API and the status."""
        avg = self.average_price
        return {
            "clientOrderId": self.client_order_id,
            "brokerOrderId": self.broker_order_id,
            "instrument": self.instrument,
            "side": self.side.value,
            "quantity": str(self.quantity),
            "limitPrice": None if self.limit_price is None else str(self.limit_price),
            "status": self.status.value,
            "filledQuantity": str(self.filled_quantity),
            "averagePrice": None if avg is None else str(avg.quantize(Decimal("0.0001"))),
            "fees": str(self.fees),
            "signalId": self.signal_id,
            "leg": self.leg,
            "external": self.external,
            "reason": self.reason,
            "created": self.created.isoformat(),
            "updated": None if self.updated is None else self.updated.isoformat(),
        }

    def trigger_for(self, event: OrderEvent) -> Trigger | None:
        """The table's trigger for ``event``; None for a fill already applied (fills are idempotent)."""
        match event:
            case OrderSubmitted():
                return Trigger.SUBMIT
            case OrderAccepted():
                return Trigger.ACCEPT
            case OrderRejected():
                return Trigger.REJECT
            case OrderCancelRequested():
                return Trigger.REQUEST_CANCEL
            case OrderCanceled():
                return Trigger.CANCEL
            case OrderExpired():
                return Trigger.EXPIRE
            case OrderFilled(fill=fill) if fill is not None:
                if fill.fill_id in self.fills:
                    return None
                if fill.instrument != self.instrument or fill.side != self.side or fill.quantity <= 0:
                    raise IllegalTransition(
                        f"fill {fill.fill_id} does not match order {self.client_order_id}"
                    )
                after = self.filled_quantity + fill.quantity
                if after > self.quantity:
                    raise IllegalTransition(
                        f"fill {fill.fill_id} overfills {self.client_order_id}: {after} > {self.quantity}"
                    )
                return Trigger.FILL if after == self.quantity else Trigger.PARTIAL_FILL
        raise IllegalTransition(f"{type(event).__name__} does not apply to an order")

    def apply(self, event: OrderEvent) -> bool:
        """Move the order by ``event``; False for a repeated fill (ignored), IllegalTransition if refused."""
        trigger = self.trigger_for(event)
        if trigger is None:
            return False
        self.status = next_status(self.status, trigger)
        self.updated = event.ts
        match event:
            case OrderSubmitted(notional=notional):
                self.notional = notional
            case OrderAccepted(broker_order_id=bid):
                self.broker_order_id = bid
            case OrderRejected(reason=reason, detail=detail, retryable=retryable):
                self.reason = f"{reason}: {detail}" if detail else reason
                self.retryable = retryable
            case OrderCanceled(reason=reason) | OrderExpired(reason=reason):
                self.reason = reason
            case OrderFilled(fill=fill) if fill is not None:
                self.fills[fill.fill_id] = fill
                self.filled_quantity += fill.quantity
                self.value += fill.quantity * fill.price
                self.fees += fill.fee
                self.broker_order_id = self.broker_order_id or fill.broker_order_id
        return True
