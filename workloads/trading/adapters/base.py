"""The one Broker protocol every venue adapter implements, its reports, its errors, and retry with backoff."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar, Protocol, TypeVar, runtime_checkable

from kubequant.api.broker_capabilities import BrokerCapabilities
from kubequant.errors import BrokerError
from kubequant.workloads.trading.model.domain import Fill, Side
from kubequant.workloads.trading.model.orders import OrderStatus

log = logging.getLogger(__name__)
T = TypeVar("T")


class BrokerRejected(BrokerError):
    """The broker refused the request; definitive, never retried."""


class DuplicateOrder(BrokerRejected):
    """The broker already has an order with this client order id; it placed nothing new."""


class BrokerTimeout(BrokerError):
    """No answer in time: the request may or may not have reached the broker."""


class BrokerDisconnected(BrokerError):
    """There is no connection: the request did not reach the broker, so it is safe to try again."""


class BrokerBusy(BrokerDisconnected):
    """The venue refused the request unprocessed (a rate limit: HTTP 429) and may say when to come back.

    ``retry_after``: the seconds the venue asked to wait (its Retry-After), None when it did not say.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: str | None) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


# The longest Retry-After a retry honours: a venue asking for more gets the error instead, so a signal
# is not held for minutes (the OMS rejects it as retryable; the caller may send it again later).
MAX_RETRY_AFTER = 5.0


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    """What the OMS asks the broker to place (time in force: the trading day)."""

    client_order_id: str
    instrument: str
    side: Side
    quantity: Decimal
    limit_price: Decimal | None = None


@dataclass(frozen=True, slots=True)
class BrokerAck:
    """The broker accepted the order under ``broker_order_id``."""

    client_order_id: str
    broker_order_id: str
    ts: dt.datetime


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """The broker's report of one order, in the OMS's status vocabulary."""

    client_order_id: str
    broker_order_id: str
    instrument: str
    side: Side
    quantity: Decimal
    filled_quantity: Decimal
    status: OrderStatus
    limit_price: Decimal | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class BrokerFill:
    """A fill with the cursor just after it, so a reader can resume exactly there."""

    fill: Fill
    cursor: str


@dataclass(frozen=True, slots=True)
class BrokerAccount:
    """Cash and equity at the broker."""

    cash: Decimal
    equity: Decimal
    ts: dt.datetime


@runtime_checkable
class Broker(Protocol):
    """A venue. Implementations map their SDK's errors onto BrokerRejected/BrokerTimeout/BrokerDisconnected."""

    # What the venue supports: its row of kubequant/api/broker_capabilities.py (a test holds them equal).
    capabilities: ClassVar[BrokerCapabilities]

    async def submit(self, request: SubmitRequest) -> BrokerAck:
        """Place an order; a duplicate client order id is rejected, never placed twice."""
        ...

    async def cancel(self, broker_order_id: str) -> None:
        """Ask to cancel an open order (the outcome arrives as the order's status)."""
        ...

    async def get_order(self, client_order_id: str) -> BrokerOrder | None:
        """One order by client order id; None if the broker never received it."""
        ...

    async def open_orders(self) -> list[BrokerOrder]:
        """Every order the broker may still fill, including ones placed outside this session."""
        ...

    async def fills_since(self, cursor: str | None) -> list[BrokerFill]:
        """Fills after ``cursor`` (all of them for None), oldest first."""
        ...

    async def positions(self) -> dict[str, Decimal]:
        """Signed non-zero quantity by instrument."""
        ...

    async def account(self) -> BrokerAccount:
        """Cash and equity."""
        ...

    def is_connected(self) -> bool:
        """Whether the connection is up right now (no I/O)."""
        ...

    async def connect(self, account: str | None) -> BrokerAccount | None:
        """Check the credentials and, if given, that they belong to ``account`` (``spec.account``).

        The account as the venue reports it; None for a venue without credentials (the paper broker).
        A refused key or another account's key is a ConfigError naming the Secret or ``spec.account``.
        """
        ...

    async def listed_instruments(self) -> frozenset[str] | None:
        """What the account may trade; None when the venue does not say (the paper broker's bundle)."""
        ...

    def close(self) -> None:
        """Release the venue's connections, threads or record; called once, when the runtime stops."""
        ...


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``attempts`` tries, the delay doubling from ``first_delay`` up to ``max_delay``."""

    attempts: int = 5
    first_delay: float = 0.02
    max_delay: float = 1.0

    def delays(self) -> list[float]:
        """The sleeps between attempts."""
        return [min(self.first_delay * 2**i, self.max_delay) for i in range(self.attempts - 1)]


async def with_retry(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    retry_on: tuple[type[BrokerError], ...] = (BrokerDisconnected, BrokerTimeout),
    what: str = "broker call",
) -> T:
    """Run ``call``, retrying the transient errors in ``retry_on`` with backoff; the last error propagates.

    Only idempotent calls may retry on BrokerTimeout; a submit retries on BrokerDisconnected alone.
    tenacity is not a dependency of the project, and a bounded loop is all this needs.
    """
    delays = policy.delays()
    for attempt in range(policy.attempts):
        try:
            return await call()
        except retry_on as err:
            if attempt == len(delays):
                raise
            delay = delays[attempt]
            asked = err.retry_after if isinstance(err, BrokerBusy) else None
            if asked is not None:
                if asked > MAX_RETRY_AFTER:
                    raise  # the venue wants a long pause: not while a signal waits
                delay = max(delay, asked)  # the venue said when: earlier attempts would be refused too
            log.warning("%s failed (%s); retrying in %.3fs", what, err, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
