"""The order state machine: every cell of the table, and random event sequences against its invariants."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubequant.workloads.trading.model.domain import Fill, Side
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
from kubequant.workloads.trading.model.orders import (
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    Order,
    OrderStatus,
    Trigger,
    next_status,
)

pytestmark = pytest.mark.unit

T0 = dt.datetime(2024, 1, 2, 9, 30, tzinfo=dt.UTC)
QTY = Decimal(1000)
# The lifecycle written out by hand, independently of the module's table.
EXPECTED = {
    "pending-new": {"submit": "submitted", "reject": "rejected", "cancel": "canceled"},
    "submitted": {
        "accept": "accepted",
        "reject": "rejected",
        "partial-fill": "partially-filled",
        "fill": "filled",
        "request-cancel": "pending-cancel",
        "cancel": "canceled",
        "expire": "expired",
    },
    "accepted": {
        "reject": "rejected",
        "partial-fill": "partially-filled",
        "fill": "filled",
        "request-cancel": "pending-cancel",
        "cancel": "canceled",
        "expire": "expired",
    },
    "partially-filled": {
        "partial-fill": "partially-filled",
        "fill": "filled",
        "request-cancel": "pending-cancel",
        "cancel": "canceled",
        "expire": "expired",
    },
    "pending-cancel": {
        "partial-fill": "pending-cancel",
        "fill": "filled",
        "cancel": "canceled",
        "expire": "expired",
    },
    "filled": {},
    "canceled": {},
    "rejected": {},
    "expired": {},
}


def new_order(status: OrderStatus = OrderStatus.PENDING_NEW, filled: Decimal = Decimal(0)) -> Order:
    order = Order.create(OrderCreated(T0, "c1", "SYN0001", Side.BUY, QTY, "sig", "leg"))
    order.status, order.filled_quantity = status, filled
    return order


def fill(fill_id: str, qty: Decimal) -> OrderFilled:
    return OrderFilled(
        T0, "c1", Fill(fill_id, "c1", "b1", "SYN0001", Side.BUY, qty, Decimal("10.5"), Decimal(5), T0)
    )


def event_for(trigger: Trigger, order: Order, fill_id: str = "f1") -> OrderEvent:
    """An event that means ``trigger`` for ``order`` (a fill completes or does not complete it)."""
    match trigger:
        case Trigger.SUBMIT:
            return OrderSubmitted(T0, "c1")
        case Trigger.ACCEPT:
            return OrderAccepted(T0, "c1", "b1")
        case Trigger.REJECT:
            return OrderRejected(T0, "c1", reason="NO")
        case Trigger.REQUEST_CANCEL:
            return OrderCancelRequested(T0, "c1")
        case Trigger.CANCEL:
            return OrderCanceled(T0, "c1")
        case Trigger.EXPIRE:
            return OrderExpired(T0, "c1")
        case Trigger.FILL:
            return fill(fill_id, order.remaining)
        case Trigger.PARTIAL_FILL:
            return fill(fill_id, Decimal(1))
    raise AssertionError(trigger)


def test_the_table_is_the_documented_lifecycle() -> None:
    table = {(s.value, t.value): n.value for (s, t), n in TRANSITIONS.items()}
    expected = {(s, t): n for s, row in EXPECTED.items() for t, n in row.items()}
    assert table == expected
    assert {s.value for s in TERMINAL} == {s for s, row in EXPECTED.items() if not row}


@pytest.mark.parametrize(("status", "trigger"), list(itertools.product(OrderStatus, Trigger)))
def test_every_cell(status: OrderStatus, trigger: Trigger) -> None:
    """Each (state, trigger) either moves the order where the table says, or raises and changes nothing."""
    filled = (
        Decimal(10) if status in (OrderStatus.PARTIALLY_FILLED, OrderStatus.PENDING_CANCEL) else Decimal(0)
    )
    order = new_order(status, filled)
    before = copy.deepcopy(order)
    event = event_for(trigger, order)
    assert order.trigger_for(event) is trigger
    target = EXPECTED[status.value].get(trigger.value)
    if target is None:
        with pytest.raises(IllegalTransition):
            next_status(status, trigger)
        with pytest.raises(IllegalTransition):
            order.apply(event)
        assert order == before
    else:
        assert next_status(status, trigger).value == target
        assert order.apply(event) is True
        assert order.status.value == target


def test_overfill_and_mismatched_fill_are_refused() -> None:
    order = new_order(OrderStatus.ACCEPTED)
    with pytest.raises(IllegalTransition, match="overfills"):
        order.apply(fill("f1", QTY + 1))
    wrong = OrderFilled(
        T0, "c1", Fill("f2", "c1", "b1", "SYN0002", Side.BUY, Decimal(1), Decimal(1), Decimal(0), T0)
    )
    with pytest.raises(IllegalTransition, match="does not match"):
        order.apply(wrong)
    assert order.status is OrderStatus.ACCEPTED and order.filled_quantity == 0


# A random event: a trigger kind, or a fill of some quantity under one of a few ids (so ids repeat).
event_specs = st.one_of(
    st.sampled_from(["submit", "accept", "reject", "request-cancel", "cancel", "expire"]),
    st.tuples(st.sampled_from(["f1", "f2", "f3", "f4", "f5"]), st.integers(min_value=1, max_value=600)),
)


def build(spec: str | tuple[str, int]) -> OrderEvent:
    if isinstance(spec, tuple):
        return fill(spec[0], Decimal(spec[1]))
    return event_for(Trigger(spec), new_order())


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event_specs, max_size=25))
def test_random_event_sequences_keep_the_invariants(specs: list[str | tuple[str, int]]) -> None:
    order = new_order()
    terminal_at: OrderStatus | None = None
    for spec in specs:
        before = copy.deepcopy(order)
        event = build(spec)
        try:
            changed = order.apply(event)
        except IllegalTransition:
            assert order == before  # a refused event changes nothing
            continue
        if not changed:  # a repeated fill id
            assert (
                isinstance(event, OrderFilled)
                and event.fill is not None
                and event.fill.fill_id in before.fills
            )
            assert order == before
        assert order.status in OrderStatus
        if terminal_at is not None:
            assert order.status is terminal_at  # terminal states never change
        if order.status in TERMINAL:
            terminal_at = order.status
        assert order.filled_quantity == sum((f.quantity for f in order.fills.values()), Decimal(0))
        assert order.filled_quantity <= order.quantity
        assert (order.status is OrderStatus.FILLED) == (order.filled_quantity == order.quantity)
