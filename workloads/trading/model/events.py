"""Immutable events: every state change of the OMS is one of these, journaled before anything acts on it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import types
import typing
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum, StrEnum
from functools import cache
from typing import Any, ClassVar

from kubequant.workloads.trading.model.domain import Fill, Side


class RejectSource(StrEnum):
    RISK = "risk"  # the risk engine refused it; never sent
    BROKER = "broker"  # the broker refused it
    RECOVERY = "recovery"  # reconciliation found the broker never saw it


@dataclass(frozen=True, slots=True)
class Event:
    """Base of all journaled events; ``ts`` is UTC."""

    kind: ClassVar[str] = "Event"
    ts: dt.datetime


@dataclass(frozen=True, slots=True)
class OrderEvent(Event):
    """An event about one order."""

    client_order_id: str


@dataclass(frozen=True, slots=True)
class OrderCreated(OrderEvent):
    """The OMS created an order (pending-new); ``external`` marks one adopted from the broker."""

    kind: ClassVar[str] = "OrderCreated"
    instrument: str
    side: Side
    quantity: Decimal
    signal_id: str
    leg: str
    limit_price: Decimal | None = None
    reference_price: Decimal | None = None
    external: bool = False


@dataclass(frozen=True, slots=True)
class OrderSubmitted(OrderEvent):
    """The order is about to be sent; written before the broker call, so a crash leaves it in flight."""

    kind: ClassVar[str] = "OrderSubmitted"
    notional: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class OrderAccepted(OrderEvent):
    """The broker acknowledged the order."""

    kind: ClassVar[str] = "OrderAccepted"
    broker_order_id: str = ""


@dataclass(frozen=True, slots=True)
class OrderRejected(OrderEvent):
    """Refused by the risk engine or the broker, or unknown to the broker after a restart."""

    kind: ClassVar[str] = "OrderRejected"
    source: RejectSource = RejectSource.BROKER
    reason: str = ""
    detail: str = ""
    # True when the broker provably never saw it: the same signal may then be sent again.
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class OrderResent(Event):
    """A submit the venue's targeted query said it never received is sent once more, under the same id.

    Written before the second call, so a restart knows the order had its one resend. Only on a
    venue that refuses a reused client order id (``refuses_duplicate_client_order_id``): a first
    copy that did arrive makes the resend a refusal, never a second order. Not an ``OrderEvent``:
    the order stays submitted (the state machine has no transition for it).
    """

    kind: ClassVar[str] = "OrderResent"
    client_order_id: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class OrderFilled(OrderEvent):
    """One fill; ``cursor`` is the broker's fill cursor just after it."""

    kind: ClassVar[str] = "OrderFilled"
    fill: Fill | None = None
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class OrderCancelRequested(OrderEvent):
    """A cancel is about to be sent."""

    kind: ClassVar[str] = "OrderCancelRequested"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class OrderCanceled(OrderEvent):
    """The order is cancelled (by us, by the broker, or never sent)."""

    kind: ClassVar[str] = "OrderCanceled"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class OrderExpired(OrderEvent):
    """The order's time in force ran out (the rest is not filled)."""

    kind: ClassVar[str] = "OrderExpired"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PositionSnapshot(Event):
    """Positions seen at the broker; a ``baseline`` replaces the local positions (a fresh journal)."""

    kind: ClassVar[str] = "PositionSnapshot"
    positions: dict[str, Decimal] = field(default_factory=dict)
    baseline: bool = False
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class AccountSnapshot(Event):
    """Cash and equity reported by the broker."""

    kind: ClassVar[str] = "AccountSnapshot"
    cash: Decimal = Decimal(0)
    equity: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class RiskStateChanged(Event):
    """The trading state and every condition that holds it there (name -> "STATE: detail")."""

    kind: ClassVar[str] = "RiskStateChanged"
    state: str = "ACTIVE"
    conditions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecoveryCompleted(Event):
    """Reconciliation with the broker finished; ``halted`` carries the reason when it failed closed."""

    kind: ClassVar[str] = "RecoveryCompleted"
    counts: dict[str, int] = field(default_factory=dict)
    halted: str | None = None


@dataclass(frozen=True, slots=True)
class AdoptionAuthorized(Event):
    """An operator allowed an empty journal to start from the broker's positions and open orders (``kubequant trading adopt``)."""

    kind: ClassVar[str] = "AdoptionAuthorized"
    reason: str = ""
    source: str = ""


@dataclass(frozen=True, slots=True)
class SignalReceived(Event):
    """A signal was taken: its id and a digest of its payload (a retry must carry the same payload)."""

    kind: ClassVar[str] = "SignalReceived"
    signal_id: str = ""
    digest: str = ""


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        OrderCreated,
        OrderSubmitted,
        OrderAccepted,
        OrderRejected,
        OrderResent,
        OrderFilled,
        OrderCancelRequested,
        OrderCanceled,
        OrderExpired,
        PositionSnapshot,
        AccountSnapshot,
        RiskStateChanged,
        RecoveryCompleted,
        AdoptionAuthorized,
        SignalReceived,
    )
}


@cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _encode(value: Any) -> Any:
    # Exact types first: the hot path encodes a few events per order (str, Decimal, datetime, enums).
    kind: type = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is Decimal:
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _encode_fields(value)
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _encode_fields(value: Any) -> dict[str, Any]:
    out = {}
    cls: type = type(value)
    for name in _field_names(cls):
        field_value = getattr(value, name)
        kind = type(field_value)
        # Most fields are text or absent: taken as they are, without a call per field.
        out[name] = field_value if kind is str or field_value is None else _encode(field_value)
    return out


# One encoder for every event: json.dumps with options builds a new one per call.
_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def encode(event: Event) -> str:
    """The event's JSON body (Decimals as strings, so nothing is rounded)."""
    return _JSON.encode(_encode_fields(event))


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(tp: Any, raw: Any) -> Any:
    if raw is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _decode(inner, raw)
    if origin is dict:
        _, value_tp = typing.get_args(tp)
        return {k: _decode(value_tp, v) for k, v in raw.items()}
    if tp is Decimal:
        return Decimal(raw)
    if tp is dt.datetime:
        return dt.datetime.fromisoformat(raw)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tp(raw)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        return tp(**{k: _decode(hints[k], v) for k, v in raw.items()})
    return raw


# Events defined next to the code that writes them register themselves when their module is imported.
EXTENSION_MODULES = (
    "kubequant.workloads.trading.node.scheduled",
    "kubequant.workloads.trading.risk.trading_state",
    "kubequant.workloads.trading.risk.control",
)


def decode(kind: str, body: str) -> Event:
    """The event of ``kind`` from its JSON body."""
    if kind not in EVENT_TYPES:
        import importlib

        for module in EXTENSION_MODULES:
            importlib.import_module(module)
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown journal event kind {kind!r}: written by a newer kubequant?")
    return typing.cast(Event, _decode(EVENT_TYPES[kind], json.loads(body)))
