"""The execution path: intents become journaled orders, pass the risk engine, reach the broker exactly once.

Every state change goes to the journal before anything outside the process sees it: an order is
journaled as submitted before the broker call, a fill before it counts. Nothing is ever sent
twice on a guess: a submit that times out stays in flight until a query about that client order
id resolves it. Only when that query says the venue never received it, and the venue refuses a
reused client order id (so a first copy that did arrive turns a second into a refusal, never a
second order), is it sent once more (``resend``), while its signal is young and the risk engine
still allows it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol, TypeVar

from kubequant.api.live import TradingState
from kubequant.errors import KubequantError
from kubequant.workloads.trading.adapters.base import (
    Broker,
    BrokerAck,
    BrokerDisconnected,
    BrokerError,
    BrokerRejected,
    BrokerTimeout,
    DuplicateOrder,
    RetryPolicy,
    SubmitRequest,
    with_retry,
)
from kubequant.workloads.trading.execution.journal import Journal, JournalError
from kubequant.workloads.trading.model.domain import (
    ZERO,
    Clock,
    OrderIntent,
    PortfolioView,
    WallClock,
    client_order_id,
)
from kubequant.workloads.trading.model.events import (
    Event,
    OrderAccepted,
    OrderCancelRequested,
    OrderCreated,
    OrderEvent,
    OrderFilled,
    OrderRejected,
    OrderResent,
    OrderSubmitted,
    RejectSource,
)
from kubequant.workloads.trading.model.orders import IllegalTransition, Order, OrderStatus
from kubequant.workloads.trading.model.state import OmsState
from kubequant.workloads.trading.node import metrics
from kubequant.workloads.trading.risk.ashare import MarketFacts, day_start
from kubequant.workloads.trading.risk.engine import Reject, RiskEngine

log = logging.getLogger(__name__)
T = TypeVar("T")
DURABLE_READ_ROUNDS = 50
# How long after its signal a submit the venue never received may still be sent once more. It covers
# an adapter's read timeout (Alpaca's 10 s) and a few housekeeping rounds; an older signal is stale,
# so its order is rejected as unknown (retryable) and whoever sent the signal decides.
RESEND_WITHIN_SECONDS = 15.0


class PriceSource(Protocol):
    """Last traded prices (the paper broker's bars, or a market data feed).

    A source may also say how old a price is (``price_age(instrument)``, seconds); the risk engine
    refuses exposure-increasing orders on a price older than the policy's ``maxPriceAgeSeconds``.
    For the A-share rules (region cn) it may also give ``previous_close(instrument)`` (the day's
    price-limit reference; without it the limit is left to the venue), ``is_st(instrument)``,
    ``is_trading_day(date)`` (the exchange calendar) and ``trading_day_start(now)`` (from when a
    fill counts as today's for T+1, where the venue's day is not the calendar's).
    """

    def last_price(self, instrument: str) -> Decimal | None: ...


class NotReady(KubequantError):
    """The OMS does not take signals yet (recovery has not finished) or any more (it failed)."""


@dataclass(frozen=True)
class SubmitOutcome:
    """What became of an intent: the order, whether it is on its way, and why not."""

    order: Order
    accepted: bool
    duplicate: bool = False
    reason: str = ""


class Marks(Mapping[str, Decimal]):
    """Last prices of the positions (live orders included) and of the instruments asked about, read on demand.

    The same keys as a dict built from ``last_price`` over those instruments (one without a price is
    absent), without calling it for every instrument of the book per order checked.
    """

    __slots__ = ("_asked", "_last_price", "_positions")

    def __init__(
        self,
        last_price: Callable[[str], Decimal | None],
        positions: Mapping[str, Decimal],
        asked: frozenset[str],
    ) -> None:
        self._last_price, self._positions, self._asked = last_price, positions, asked

    def __getitem__(self, instrument: str) -> Decimal:
        if instrument in self._asked or instrument in self._positions:
            if (price := self._last_price(instrument)) is not None:
                return price
        raise KeyError(instrument)

    def __iter__(self) -> Iterator[str]:
        last_price = self._last_price
        return iter([i for i in dict.fromkeys([*self._positions, *self._asked]) if last_price(i) is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)


class OrderManager:
    """Orders, fills and positions of one session, journaled, checked by the risk engine, sent to one broker."""

    def __init__(
        self,
        session_id: str,
        journal: Journal,
        broker: Broker,
        risk: RiskEngine,
        prices: PriceSource,
        *,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.session_id = session_id
        self.journal = journal
        self.broker = broker
        self.risk = risk
        self.prices = prices
        self._price_age: Callable[[str], float | None] | None = getattr(prices, "price_age", None)
        self.clock = clock or WallClock()
        self.retry = retry or RetryPolicy()
        self.state = OmsState()
        self.ready = False  # set by recovery once every in-flight order is resolved
        self.failed: str | None = None
        self._sending: set[str] = set()
        # Orders sent once more after a query found them missing at the venue (``resend``); from the
        # journal's OrderResent on restart, so no order is ever resent twice.
        self.resent: set[str] = set()
        self._tail: asyncio.Future[int] | None = None  # the last events queued for the journal
        self.anomalies: list[str] = []

    # --- journal ---------------------------------------------------------------------------
    def commit(self, *events: Event) -> None:
        """Apply ``events`` to the state and write them (after anything queued before) in one durable transaction.

        Both happen before anything is sent or acknowledged. If either fails the in-memory state can
        no longer be trusted, so the OMS stops; a restart rebuilds it from the journal.
        """
        self._apply(events)
        try:
            self.journal.append(*events)
        except JournalError as err:
            self._fail(err)
            raise
        self._count_transitions(events)

    async def commit_async(self, *events: Event) -> None:
        """``commit``, group-committed: returns once ``events`` are on disk, sharing the fsync with concurrent commits.

        The state changes at once, in the journal's order; nothing may act on ``events`` outside the
        process before this returns.
        """
        await self._durable(self._stage(events))
        self._count_transitions(events)

    def stage(self, *events: Event) -> None:
        """Apply ``events`` and queue them for the journal without waiting: on disk once ``settled()`` returns.

        For facts that need no broker call of their own (a signal taken); the journal's single queue
        keeps them ahead of everything committed after them.
        """
        self._stage(events)

    def _apply(self, events: tuple[Event, ...]) -> None:
        if self.failed:
            raise NotReady(f"the OMS stopped: {self.failed}", fix="restart the runtime")
        try:
            for event in events:
                self.state.apply(event)
        except IllegalTransition as err:
            self._fail(err)
            raise

    def _stage(self, events: tuple[Event, ...]) -> asyncio.Future[int]:
        """Apply ``events`` and queue them for the journal, with no await between: both keep one order."""
        self._apply(events)
        try:
            self._tail = self.journal.append_async(*events)
        except JournalError as err:
            self._fail(err)
            raise
        return self._tail

    async def _durable(self, written: asyncio.Future[int]) -> None:
        """Wait until ``written`` is on disk; a failed write stops the OMS."""
        try:
            if written.done():
                written.result()
            else:
                # Shared (``settled``), and safe to await as it is: the journal's futures refuse
                # cancellation, so a cancelled waiter leaves it to the others.
                await written
        except JournalError as err:
            self._fail(err)
            raise

    async def settled(self) -> None:
        """Wait until every event committed so far is on disk (before acknowledging what the state shows)."""
        if self._tail is not None:
            await self._durable(self._tail)

    async def read_durable(self, read: Callable[[], T], rounds: int = DURABLE_READ_ROUNDS) -> tuple[T, bool]:
        """``read()`` of a state in which every event applied is on disk, and True; after ``rounds``
        group commits that each found new events behind them, ``read()`` as it is, and False."""
        for _ in range(rounds):
            tail = self._tail
            if tail is None or tail.done():
                return read(), True  # no await between the check and the read
            await self._durable(tail)
        return read(), False

    def _fail(self, err: Exception) -> None:
        if not self.failed:
            self.failed, self.ready = str(err), False

    def _count_transitions(self, events: tuple[Event, ...]) -> None:
        for event in events:
            if isinstance(event, OrderEvent) and (order := self.state.orders.get(event.client_order_id)):
                metrics.order_transitions(order.status.value).inc()
                if type(event) is OrderFilled and event.fill is not None:
                    metrics.record_fill(order.side.sign, event.fill.price, order.reference_price)
                    if order.status is OrderStatus.FILLED:
                        metrics.FILLS_PER_ORDER.observe(len(order.fills))
                elif order.fills and order.is_terminal and type(event) is not OrderFilled:
                    metrics.FILLS_PER_ORDER.observe(len(order.fills))  # closed partly filled

    def try_commit(self, event: Event) -> bool:
        """Commit a broker-driven event if the state machine allows it; else record an anomaly and halt."""
        try:
            self.state.check(event)
        except IllegalTransition as err:
            self.anomaly(str(err))
            return False
        self.commit(event)
        return True

    def try_stage(self, event: Event) -> bool:
        """``try_commit`` without waiting for the disk: apply ``event`` and queue it for the journal if legal.

        For housekeeping that journals many broker facts (fills, expiries): they share transactions
        instead of waiting for one fsync each. Nothing may act on ``event`` outside the process
        before ``settled()`` returns (the journal's single queue keeps it ahead of every later event).
        """
        try:
            self.state.check(event)
        except IllegalTransition as err:
            self.anomaly(str(err))
            return False
        self._stage((event,))
        self._count_transitions((event,))
        return True

    async def try_commit_async(self, event: Event) -> bool:
        """``try_commit``, group-committed: True once ``event`` is on disk, False (and halted) if illegal.

        The loop stays free while the event is written, so housekeeping (fills, order statuses)
        does not hold up signals.
        """
        try:
            self.state.check(event)
        except IllegalTransition as err:
            self.anomaly(str(err))
            return False
        await self.commit_async(event)
        return True

    def anomaly(self, detail: str) -> None:
        """A broker fact the OMS cannot explain: fail closed."""
        log.error("reconciliation anomaly: %s", detail)
        metrics.RECONCILIATION_ANOMALIES.inc()
        self.anomalies.append(detail)
        self.risk.set_condition("reconciliation", TradingState.HALTED, detail[:500])

    async def call(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        """A read-only broker call, retried with backoff on timeouts and disconnects."""
        return await with_retry(fn, self.retry, what=what)

    # --- views -----------------------------------------------------------------------------
    def mark(self, instrument: str) -> Decimal | None:
        """The price source's last price; None when it has none (never a stand-in such as the average cost)."""
        return self.prices.last_price(instrument)

    def view(self, *instruments: str) -> PortfolioView:
        """The risk engine's view: equity, positions with live orders included, marks and their ages.

        Filled positions and resting quantities are given for ``instruments`` (the orders' own).
        Positions and marks are live mappings read on demand (a view is used before the next
        ``await``): the check of one order reads its own instrument, not the whole book.
        """
        state = self.state
        projected = state.projected_view()
        ages: dict[str, float] = {}
        if self._price_age is not None:
            for inst in instruments:
                if (age := self._price_age(inst)) is not None:
                    ages[inst] = age
        equity = state.account.equity if state.account else ZERO
        filled = {inst: state.position(inst) for inst in instruments}
        resting = {inst: state.resting(inst) for inst in instruments}
        marks = Marks(self.prices.last_price, projected, frozenset(instruments))
        return PortfolioView(equity, projected, marks, filled, resting, ages)

    def market_facts(self, instrument: str, now: datetime) -> MarketFacts:
        """What the A-share rules need: today's buys (the journal's fills) and the price source's facts."""
        prices = self.prices
        previous: Callable[[str], Decimal | None] | None = getattr(prices, "previous_close", None)
        is_st: Callable[[str], bool] | None = getattr(prices, "is_st", None)
        start = day_start(self.risk.trading_day(now), self.risk.exchange_tz)
        # A venue whose trading day is not the calendar's (the paper market's is its bar) says when it began.
        venue_day: Callable[[datetime], datetime | None] | None = getattr(prices, "trading_day_start", None)
        if venue_day is not None and (began := venue_day(now)) is not None:
            start = max(start, began)
        return MarketFacts(
            bought_today=self.state.bought_since(instrument, start),
            previous_close=previous(instrument) if previous is not None else None,
            limits_known=previous is not None,
            st=bool(is_st(instrument)) if is_st is not None else False,
            trading_day=getattr(prices, "is_trading_day", None),
        )

    # --- submit ----------------------------------------------------------------------------
    async def submit(self, intent: OrderIntent, received: float | None = None) -> SubmitOutcome:
        """Check, journal and send one intent; a leg already known returns its order (idempotent).

        ``received`` is the ``time.perf_counter()`` at which the signal arrived (for the latency metric).
        Concurrent submits share journal transactions (group commit); each order reaches the broker
        only once its events are on disk.
        """
        received = time.perf_counter() if received is None else received
        if not self.ready:
            raise NotReady(self.failed or "recovery has not finished", fix="wait for /readyz")
        cid = client_order_id(self.session_id, intent.signal_id, intent.leg)
        # No await from this check to ``_stage``: on the event loop, checking and recording are one step.
        old = self.state.orders.get(cid)
        if old is not None and not (old.is_terminal and old.retryable and not old.fills):
            await self.settled()  # its events may still be on their way to the disk
            return SubmitOutcome(old, accepted=old.status is not OrderStatus.REJECTED, duplicate=True)
        now = self.clock.now()
        view = self.view(intent.instrument)
        facts = self.market_facts(intent.instrument, now) if self.risk.ashare is not None else None
        verdict = self.risk.check(intent, view, now, facts)
        created = OrderCreated(
            now,
            cid,
            intent.instrument,
            intent.side,
            intent.quantity,
            intent.signal_id,
            intent.leg,
            limit_price=intent.limit_price,
            reference_price=view.marks.get(intent.instrument),
        )
        if isinstance(verdict, Reject):
            rejected = (
                created,
                OrderRejected(now, cid, RejectSource.RISK, verdict.reason.value, verdict.detail),
            )
            await self._durable(self._stage(rejected))
            self._count_transitions(rejected)
            metrics.RISK_REJECTIONS.labels(verdict.reason.value).inc()
            return SubmitOutcome(self.state.orders[cid], False, reason=f"{verdict.reason}: {verdict.detail}")
        submitted = (created, OrderSubmitted(now, cid, verdict.notional))
        # From here to the broker call nothing else may submit this order, nor may a query settle it.
        written = self._stage(submitted)
        self.risk.record(verdict.notional, now)
        self._sending.add(cid)
        order = self.state.orders[cid]
        try:
            await self._durable(written)
            self._count_transitions(submitted)
            metrics.SIGNAL_TO_SUBMIT_SECONDS.observe(time.perf_counter() - received)
            await self._send(order)
        finally:
            self._sending.discard(cid)
        return SubmitOutcome(order, accepted=order.status is not OrderStatus.REJECTED, reason=order.reason)

    async def _send(self, order: Order, *, again: bool = False) -> str:
        """One submit call (retried only on a disconnect); what became of it: accepted, rejected,
        unreachable (rejected, provably never sent), duplicate (the venue has the id) or in-flight."""
        request = SubmitRequest(
            order.client_order_id, order.instrument, order.side, order.quantity, order.limit_price
        )
        cid = order.client_order_id
        try:
            # Only a disconnect proves the request never left; a timeout is resolved by a query instead.
            ack = await with_retry(
                lambda: self.broker.submit(request), self.retry, (BrokerDisconnected,), f"submit {cid}"
            )
        except DuplicateOrder:
            log.warning("broker already has %s; a query will settle it", cid)
            return "duplicate"
        except BrokerRejected as err:
            await self.try_commit_async(
                OrderRejected(self.clock.now(), cid, RejectSource.BROKER, "BROKER_REJECTED", str(err))
            )
            return "rejected"
        except BrokerDisconnected as err:
            await self.try_commit_async(
                OrderRejected(
                    self.clock.now(), cid, RejectSource.BROKER, "BROKER_DISCONNECTED", str(err), True
                )
            )
            return "unreachable"
        except BrokerTimeout:
            if again:
                log.warning("the resend of %s timed out; the next query settles it, nothing is resent", cid)
            else:
                log.warning("submit of %s timed out; it stays in flight until a query resolves it", cid)
            return "in-flight"
        order = self.state.orders.get(ack.client_order_id) or order
        if order.status is OrderStatus.SUBMITTED:
            await self.commit_async(
                OrderAccepted(self.clock.now(), order.client_order_id, ack.broker_order_id)
            )
        return "accepted"

    # --- resend ----------------------------------------------------------------------------
    def resend_refusal(self, order: Order, now: datetime) -> str | None:
        """Why an order the venue's query says it never received must not be sent once more; None if it may.

        Only on a venue that refuses a reused client order id, only once, only while the OMS is open
        (recovery sends nothing) and the signal is under ``RESEND_WITHIN_SECONDS`` old, and only if
        the risk engine still lets the order out (a halt, reduce-only for an order adding exposure,
        a closed window or a stale price stop it).
        """
        caps = getattr(self.broker, "capabilities", None)
        if caps is None or not caps.refuses_duplicate_client_order_id:
            return "the venue does not refuse a reused client order id, so a resend could place it twice"
        if not self.ready:
            return "the OMS is not open (recovery resolves in-flight orders without sending anything)"
        if order.client_order_id in self.resent:
            return "it was sent once more already"
        age = (now - order.created).total_seconds()
        if age > RESEND_WITHIN_SECONDS:
            return f"its signal is {age:.0f}s old (a resend only within {RESEND_WITHIN_SECONDS:g}s)"
        adds = any(o is order for o in self.state.exposure_increasing())
        refusal = self.risk.check_resend(
            order.instrument,
            adds,
            now,
            price_age=self._price_age(order.instrument) if self._price_age is not None else None,
            trading_day=getattr(self.prices, "is_trading_day", None),
        )
        return None if refusal is None else f"{refusal.reason.value}: {refusal.detail}"

    async def resend(self, order: Order, detail: str) -> str:
        """Send ``order`` once more under its client order id (``resend_refusal`` said it may); journaled first.

        Returns what became of it, as ``_send`` says; "duplicate" means the first copy reached the
        venue after all, and the venue's report of it must settle the order.
        """
        cid = order.client_order_id
        # No await from the caller's check to here: the order is marked before anything can look again.
        self.resent.add(cid)
        self._sending.add(cid)
        try:
            await self.commit_async(OrderResent(self.clock.now(), cid, detail))
            log.warning("resending %s under the same client order id: %s", cid, detail)
            return await self._send(order, again=True)
        finally:
            self._sending.discard(cid)

    def on_ack(self, ack: BrokerAck) -> None:
        """Record the broker's acknowledgement (a late one, after a fill or cancel request, is ignored)."""
        order = self.state.orders.get(ack.client_order_id)
        if order is not None and order.status is OrderStatus.SUBMITTED:
            self.commit(OrderAccepted(self.clock.now(), order.client_order_id, ack.broker_order_id))

    # --- cancel ----------------------------------------------------------------------------
    async def cancel(self, client_order_id: str, reason: str = "requested") -> bool:
        """Ask the broker to cancel a live order; False if it cannot be asked now."""
        order = self.state.orders.get(client_order_id)
        if order is None or not order.is_live or order.broker_order_id is None:
            return False
        if order.status is not OrderStatus.PENDING_CANCEL:
            # On disk before the broker hears of it; the loop stays free meanwhile.
            await self.commit_async(OrderCancelRequested(self.clock.now(), client_order_id, reason))
        try:
            await self.call(
                lambda: self.broker.cancel(order.broker_order_id or ""), f"cancel {client_order_id}"
            )
        except BrokerError as err:
            # Already filled or closed at the broker: the next reconciliation settles the status.
            log.warning("cancel of %s failed: %s", client_order_id, err)
            return False
        return True

    async def cancel_all(self, reason: str) -> int:
        """Cancel every live order the broker knows; returns how many were asked."""
        asked = 0
        for order in self.state.live_orders():
            # Pending cancels are asked again: a cancel lost on the way must not leave an order working.
            if await self.cancel(order.client_order_id, reason):
                asked += 1
        return asked

    def local_id(self, client_id: str, broker_id: str) -> str | None:
        """The local key of a broker order, by client order id or broker order id."""
        if client_id in self.state.orders:
            return client_id
        return self.state.by_broker_id.get(broker_id)

    @property
    def sending(self) -> frozenset[str]:
        """Client order ids whose submit call has not returned yet."""
        return frozenset(self._sending)
