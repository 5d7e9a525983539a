"""Trading value types: identifiers, sides, Decimal prices and quantities, intents, fills, positions, accounts."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import NewType, Protocol

ClientOrderId = NewType("ClientOrderId", str)
BrokerOrderId = NewType("BrokerOrderId", str)
FillId = NewType("FillId", str)
InstrumentId = NewType("InstrumentId", str)

# Fixed quanta keep Decimal arithmetic exact and comparable across the journal, the broker and the risk engine.
PRICE_QUANTUM = Decimal("0.0001")
QUANTITY_QUANTUM = Decimal("0.000001")
MONEY_QUANTUM = Decimal("0.01")
ZERO = Decimal(0)


def to_decimal(value: Decimal | float | int | str) -> Decimal:
    """A Decimal from a number; floats go through their shortest repr, so 0.1 is Decimal('0.1')."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(float(value)))  # float() also unwraps numpy scalars
    return Decimal(value)


def as_price(value: Decimal | float | int | str) -> Decimal:
    """A price rounded to the price quantum."""
    return to_decimal(value).quantize(PRICE_QUANTUM)


def as_quantity(value: Decimal | float | int | str) -> Decimal:
    """A quantity rounded to the quantity quantum."""
    return to_decimal(value).quantize(QUANTITY_QUANTUM)


def as_money(value: Decimal | float | int | str) -> Decimal:
    """An amount of money rounded to the money quantum (cents)."""
    return to_decimal(value).quantize(MONEY_QUANTUM)


def utcnow() -> dt.datetime:
    """The current time, timezone-aware in UTC."""
    return dt.datetime.now(dt.UTC)


class Clock(Protocol):
    """Where the runtime reads the time: the wall clock live, the bar clock in a replay."""

    def now(self) -> dt.datetime: ...


class WallClock:
    """The system clock, in UTC."""

    def now(self) -> dt.datetime:
        """The current time."""
        return utcnow()


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"

    @property
    def sign(self) -> int:
        """+1 for a buy, -1 for a sell."""
        return 1 if self is Side.BUY else -1


CLIENT_ORDER_ID_PREFIX = "kq-"  # every client order id a kubequant session makes starts with it


def client_order_id(session_id: str, signal_id: str, leg: str) -> ClientOrderId:
    """The idempotency key of one leg of one signal: the same inputs always give the same id."""
    # A unit separator between the parts keeps ("a", "bc") and ("ab", "c") apart.
    digest = hashlib.sha256(f"{session_id}\x1f{signal_id}\x1f{leg}".encode()).hexdigest()
    return ClientOrderId(f"{CLIENT_ORDER_ID_PREFIX}{digest[:24]}")


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """What a signal asks for: one order of one leg, before the risk engine has seen it."""

    instrument: str
    side: Side
    quantity: Decimal
    signal_id: str
    leg: str
    limit_price: Decimal | None = None

    def __post_init__(self) -> None:
        if self.quantity <= 0:
            raise ValueError(f"quantity must be positive, got {self.quantity}")
        if self.limit_price is not None and self.limit_price <= 0:
            raise ValueError(f"limit price must be positive, got {self.limit_price}")
        if not self.signal_id or not self.leg:
            raise ValueError("signal_id and leg are required (they make the client order id)")

    @property
    def signed_quantity(self) -> Decimal:
        """The quantity with the sign of the side."""
        return self.quantity * self.side.sign


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution reported by the broker; ``fill_id`` is unique per broker."""

    fill_id: str
    client_order_id: str
    broker_order_id: str
    instrument: str
    side: Side
    quantity: Decimal
    price: Decimal
    fee: Decimal
    ts: dt.datetime

    @property
    def signed_quantity(self) -> Decimal:
        """The quantity with the sign of the side."""
        return self.quantity * self.side.sign

    @property
    def cash_delta(self) -> Decimal:
        """What the fill does to cash: a buy pays value plus fee, a sell receives value less fee."""
        return -self.signed_quantity * self.price - self.fee


@dataclass(frozen=True, slots=True)
class Position:
    """Signed holdings of one instrument, with the average cost of the open quantity."""

    instrument: str
    quantity: Decimal = ZERO
    average_price: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO

    def apply(self, fill: Fill) -> Position:
        """The position after ``fill``."""
        q, dq = self.quantity, fill.signed_quantity
        after = q + dq
        realized = self.realized_pnl
        if q == 0 or (q > 0) == (dq > 0):
            # Opening or adding: the average price moves towards the fill price.
            avg = (q * self.average_price + dq * fill.price) / after if after else ZERO
        else:
            closed = min(abs(dq), abs(q))
            realized += closed * (fill.price - self.average_price) * (1 if q > 0 else -1)
            # Crossing through zero opens the remainder at the fill price.
            avg = self.average_price if (after != 0 and (after > 0) == (q > 0)) else fill.price
            if after == 0:
                avg = ZERO
        return Position(self.instrument, after, avg.quantize(PRICE_QUANTUM), realized, self.fees + fill.fee)


@dataclass(frozen=True, slots=True)
class Account:
    """The broker's view of the money: cash and equity (cash plus positions at their marks)."""

    cash: Decimal
    equity: Decimal
    ts: dt.datetime


@dataclass(frozen=True, slots=True)
class PortfolioView:
    """What the risk engine sees: equity, signed positions as if every open order filled, last prices.

    ``filled`` holds the filled positions and ``resting`` the (buy, sell) quantities still working,
    for the instruments the view was asked about; ``ages`` the seconds since each mark was observed
    (absent: the source does not say).
    """

    equity: Decimal
    positions: Mapping[str, Decimal] = field(default_factory=dict)
    marks: Mapping[str, Decimal] = field(default_factory=dict)
    filled: Mapping[str, Decimal] = field(default_factory=dict)
    resting: Mapping[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    ages: Mapping[str, float] = field(default_factory=dict)
