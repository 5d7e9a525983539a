"""The paper broker: fills against a qlib bundle's bars with the Backtest's deal and cost rules.

It keeps its own record (orders, every submit attempt, fills, positions, cash, the bar cursor) in
its own SQLite file, one transaction per request, so it behaves like a venue that outlives the
trading process: the crash test compares the OMS journal with this record. Faults can be
injected (lost submits, lost acks, query timeouts, disconnects) for tests.

With ``ashare`` rules (a session in region cn) it refuses, as a Chinese venue would, what breaks
T+1, the lot size, the day's price limit or the trading sessions, with a BrokerRejected naming
the rule (``risk/ashare.py``, the same functions as the risk engine's): an order that slipped
past the OMS fares at the paper venue as at the live one. Its trading day for T+1 is its bar (a
fill is dealt at a bar's close; the next bar is the next day), within the Shanghai calendar day.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import sqlite3
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import ClassVar

from kubequant.api.broker_capabilities import BrokerCapabilities, capabilities_of
from kubequant.workloads.trading.adapters.base import (
    BrokerAccount,
    BrokerAck,
    BrokerDisconnected,
    BrokerFill,
    BrokerOrder,
    BrokerRejected,
    BrokerTimeout,
    DuplicateOrder,
    SubmitRequest,
)
from kubequant.workloads.trading.adapters.paper.market import QlibMarket
from kubequant.workloads.trading.execution.journal import Checkpointer
from kubequant.workloads.trading.model.domain import ZERO, Clock, Fill, Side, WallClock, as_money
from kubequant.workloads.trading.model.orders import OrderStatus
from kubequant.workloads.trading.risk import ashare
from kubequant.workloads.trading.risk.ashare import AShareRules

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    client_order_id TEXT NOT NULL UNIQUE,
    instrument TEXT NOT NULL, side TEXT NOT NULL, quantity TEXT NOT NULL, limit_price TEXT,
    filled TEXT NOT NULL DEFAULT '0', status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    bar INTEGER NOT NULL, ts TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS submissions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, client_order_id TEXT NOT NULL, ts TEXT NOT NULL, outcome TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fills (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, order_seq INTEGER NOT NULL, client_order_id TEXT NOT NULL,
    instrument TEXT NOT NULL, side TEXT NOT NULL, quantity TEXT NOT NULL, price TEXT NOT NULL,
    fee TEXT NOT NULL, ts TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (instrument TEXT PRIMARY KEY, quantity TEXT NOT NULL);
-- What the venue's rules read per order (T+1: today's buys, resting sells) and each tick (open orders):
-- without them every submit scanned the session's whole record (~200 µs per order at 5k orders, growing).
CREATE INDEX IF NOT EXISTS fills_by_instrument ON fills (instrument, side, ts);
CREATE INDEX IF NOT EXISTS orders_by_instrument ON orders (instrument, side, status);
CREATE INDEX IF NOT EXISTS orders_by_status ON orders (status, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Every new order is also an attempt: the trigger records it in the same statement, so a submit is
-- one autocommit INSERT (it was four statements on the event loop per order: BEGIN, 2 INSERTs, COMMIT).
CREATE TRIGGER IF NOT EXISTS order_is_a_submission AFTER INSERT ON orders BEGIN
    INSERT INTO submissions (client_order_id, ts, outcome)
    VALUES (NEW.client_order_id, NEW.ts, CASE NEW.status WHEN 'rejected' THEN 'rejected' ELSE 'accepted' END);
END;
"""
OPEN = (OrderStatus.ACCEPTED.value, OrderStatus.PARTIALLY_FILLED.value)
# Orders dealt between two returns of the event loop by ``advance_async`` (25-70 µs each through qlib).
DEAL_CHUNK = 4
# Order reports built between two returns of the event loop by ``open_orders`` (~10 µs each).
REPORT_CHUNK = 64


@dataclass
class _Bar:
    """A bar being dealt, not yet written: its index, the last fill before it, and the record's rows."""

    bar: int
    after_fill: int  # the sequence number of the last fill before this bar's
    fills: list[tuple[int, Fill]]
    fill_rows: list[tuple[object, ...]]
    updates: list[tuple[str, str, str, int]]  # filled, status, reason, seq of each order dealt
    holdings: list[tuple[str, str]] = field(default_factory=list)  # the holdings that changed
    meta: list[tuple[str, str]] = field(default_factory=list)  # cash and bar after it


@dataclass
class Faults:
    """Faults to inject: each counter applies to that many of the next calls."""

    connected: bool = True
    lose_submits: int = 0  # the request never arrives; the caller times out
    lose_acks: int = 0  # the order is placed but the answer is lost; the caller times out
    query_timeouts: int = 0  # reads time out


def _broker_id(seq: int) -> str:
    return f"P{seq:010d}"


def _fill_id(seq: int) -> str:
    return f"PF{seq:010d}"


class PaperBroker:
    """A Broker over a QlibMarket; ``advance`` deals the open orders at the current bar, then moves on."""

    capabilities: ClassVar[BrokerCapabilities] = capabilities_of("paper")

    def __init__(
        self,
        market: QlibMarket,
        path: Path,
        *,
        starting_cash: Decimal,
        start_bar: int = 1,
        clock: Clock | None = None,
        ashare_rules: AShareRules | None = None,
    ) -> None:
        self.market = market
        self.ashare = ashare_rules
        self.clock = clock or WallClock()
        self.faults = Faults()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # The paper broker stands in for a remote venue: its record must survive the runtime being
        # killed, which WAL gives without an fsync per commit; the session's journal keeps FULL.
        self._db.execute("PRAGMA synchronous=NORMAL")
        # A checkpoint inside a submit's commit held the event loop for ms (it fsyncs the record):
        # a thread of its own checkpoints instead.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer = Checkpointer(self.path)
        self._db.executescript(SCHEMA)
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('cash', ?)", (str(as_money(starting_cash)),))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('bar', ?)", (str(start_bar),))
            # When the bar now trading opened (the last bar was dealt): the venue's trading day for T+1.
            db.execute("INSERT OR IGNORE INTO meta VALUES ('bar_opened', '')")
        # The record has one writer at a time (this object; a restarted process opens its own), so
        # the bar and the last prices it implies are kept in memory: the risk view reads them per order.
        self._bar = int(self._meta("bar"))
        opened = self._meta("bar_opened")
        self._bar_opened = dt.datetime.fromisoformat(opened) if opened else None
        # instrument -> (last close, index of the bar it closed) up to the last completed bar.
        self._last_prices: dict[str, tuple[Decimal | None, int]] = {}
        # instrument -> the price-limit reference of the bar now trading (the risk check reads it per order).
        self._references: dict[str, Decimal | None] = {}
        # Client order ids the record has (duplicates are refused without a query), the orders of
        # the bar being dealt (None when not dealing), and the fills this object made, which
        # ``fills_since`` serves from memory rather than re-reading and re-parsing the record.
        self._ids = {str(cid) for (cid,) in self._db.execute("SELECT client_order_id FROM orders")}
        self._dealing: set[int] | None = None
        self._fills: list[tuple[int, Fill]] = []
        self._fills_from = int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM fills").fetchone()[0])
        # While a bar's outcome is written (on a worker thread, by a connection of its own), every
        # request waits on this future: the venue answers once the bar is wholly dealt.
        self._recording: asyncio.Future[None] | None = None
        self._bar_db: sqlite3.Connection | None = None

    @contextmanager
    def _tx(self, db: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        db = self._db if db is None else db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if db is self._db:  # the worker thread's commits are counted on the loop
            self._checkpointer.committed()

    async def _idle(self) -> None:
        """Wait while a bar's outcome is being written (a request is answered after the whole bar)."""
        while (recording := self._recording) is not None:
            await asyncio.wait((recording,))  # never cancels the shared future

    def _meta(self, key: str) -> str:
        return str(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def _guard(self, query: bool = False) -> None:
        if not self.faults.connected:
            raise BrokerDisconnected("paper broker: disconnected")
        if query and self.faults.query_timeouts > 0:
            self.faults.query_timeouts -= 1
            raise BrokerTimeout("paper broker: query timed out")

    # --- the bar clock ---------------------------------------------------------------------
    @property
    def bar(self) -> int:
        """Index of the bar now trading (orders placed now fill at its close)."""
        return self._bar

    @property
    def exhausted(self) -> bool:
        """True once every bar has been dealt."""
        return self.bar >= len(self.market.calendar)

    def newest_bar_time(self) -> dt.datetime | None:
        """When the last completed bar was (the bundle's calendar, naive: the exchange's local time)."""
        return None if self._bar < 1 else self.market.bar_time(self._bar - 1).to_pydatetime()

    def last_price(self, instrument: str) -> Decimal | None:
        """Last traded close up to the last completed bar (the risk engine's last price).

        A suspended instrument has no bar; it keeps its last close, as a broker marks it, rather
        than counting as worth nothing (which would fake a loss and trip the breakers).
        """
        return self._last_close(instrument)[0]

    def price_age(self, instrument: str) -> float | None:
        """Seconds of market time between the last price's bar and the last completed bar (0 unless suspended since)."""
        price, index = self._last_close(instrument)
        if price is None or index == self._bar - 1:
            return None if price is None else 0.0
        return float((self.market.bar_time(self._bar - 1) - self.market.bar_time(index)).total_seconds())

    def _last_close(self, instrument: str) -> tuple[Decimal | None, int]:
        try:
            return self._last_prices[instrument]
        except KeyError:
            pass
        found: tuple[Decimal | None, int] = (None, -1)
        for index in range(self._bar - 1, -1, -1):
            price = self.market.close(instrument, index)
            if price is not None:
                found = (price, index)
                break
        self._last_prices[instrument] = found
        return found

    # --- the A-share facts (region cn) ------------------------------------------------------
    def _day(self) -> dt.date:
        """The date of the bar now trading (orders placed now are dealt at its close)."""
        day: dt.date = self.market.bar_time(min(self._bar, len(self.market.calendar) - 1)).date()
        return day

    def previous_close(self, instrument: str) -> Decimal | None:
        """The price-limit reference of the bar now trading: the previous close, ex-rights."""
        try:
            return self._references[instrument]
        except KeyError:
            found = self._references[instrument] = self.market.reference_close(instrument, self._bar)
            return found

    def is_st(self, instrument: str) -> bool:
        """Whether the bundle marks ``instrument`` ST on the bar now trading."""
        return self.market.is_st(instrument, self._day())

    def is_trading_day(self, day: dt.date) -> bool:
        """The exchange calendar: the bundle's, weekdays beyond it."""
        return self.market.is_trading_day(day)

    def trading_day_start(self, now: dt.datetime) -> dt.datetime | None:
        """From when a fill counts as today's (T+1): just after the last bar was dealt.

        The paper venue's trading day is its bar: a fill is dealt at a bar's close, and the next bar
        is the next trading day, whatever the wall clock says (a paper session off replay moves its
        bars on a timer). None before the first bar was dealt.
        """
        opened = self._bar_opened
        return None if opened is None else opened + dt.timedelta(microseconds=1)

    def _venue_rules(self, request: SubmitRequest, now: dt.datetime) -> ashare.Violation | None:
        """What a Chinese venue refuses of ``request``, from the record: sessions, T+1, lots, price limit."""
        rules = self.ashare
        if rules is None:
            return None
        inst, buy = request.instrument, request.side is Side.BUY
        if rules.sessions and (closed := ashare.check_session(now, self.is_trading_day)) is not None:
            return closed
        held = ZERO  # a buy's checks never read the holding: no read of the record on its path
        if not buy and (rules.t_plus_one or rules.lots):
            row = self._db.execute("SELECT quantity FROM positions WHERE instrument = ?", (inst,)).fetchone()
            held = Decimal(row[0]) if row else ZERO
        if rules.t_plus_one and not buy:
            start = ashare.day_start(now.astimezone(ashare.CN_TZ).date(), ashare.CN_TZ)
            start = max(start, self.trading_day_start(now) or start)
            # Fill times are UTC ISO strings (the clocks are UTC), so text order is time order.
            bought = sum(
                (
                    Decimal(q)
                    for (q,) in self._db.execute(
                        "SELECT quantity FROM fills WHERE instrument = ? AND side = 'BUY' AND ts >= ?",
                        (inst, start.isoformat()),
                    )
                ),
                ZERO,
            )
            resting = sum(
                (
                    Decimal(q) - Decimal(f)
                    for q, f in self._db.execute(
                        "SELECT quantity, filled FROM orders WHERE instrument = ? AND side = 'SELL'"
                        " AND status IN (?, ?)",
                        (inst, *OPEN),
                    )
                ),
                ZERO,
            )
            if (broken := ashare.check_sellable(inst, request.quantity, held, bought, resting)) is not None:
                return broken
        if rules.lots and (broken := ashare.check_lot(buy, request.quantity, rules.lot, held)) is not None:
            return broken
        if rules.price_limits and request.limit_price is not None:
            # A market order trades at the bar's price, which qlib keeps inside the band.
            return ashare.check_price(inst, request.limit_price, self.previous_close(inst), self.is_st(inst))
        return None

    def advance(self) -> list[Fill]:
        """Deal every open order at the current bar, expire what is left (day orders), move to the next bar."""
        steps = self._deal_orders(DEAL_CHUNK)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                bar = done.value
                break
        if bar is None:
            return []
        try:
            fills = self._record_bar(self._db, bar)
        finally:
            self._dealing = None
        return self._close_bar(bar, fills)

    async def advance_async(self, chunk: int = DEAL_CHUNK) -> list[Fill]:
        """``advance``, giving the event loop back every ``chunk`` orders dealt and while the outcome is written.

        qlib's deal takes 25-70 µs an order, so a bar of 500 orders dealt in one go held the loop
        (and every signal behind it) ~35 ms; after each chunk the venue pauses as long as the chunk
        took, so a bar takes at most half of the loop while it is dealt. Writing its outcome (fills,
        order statuses, holdings: one transaction) held the loop another 5-20 ms, so a worker thread
        writes it, with a connection of its own. The outcome is the same as ``advance``: the open
        orders are taken when the bar starts dealing, and the record changes in one transaction at
        the end; an order placed meanwhile trades at the next bar, a cancel of one being dealt is
        refused (too late, as at a closing auction), and while the outcome is written every request
        waits for it.
        """
        steps = self._deal_orders(chunk)
        while True:
            started = time.perf_counter()
            try:
                next(steps)
            except StopIteration as done:
                bar = done.value
                break
            # As long again with the loop given back: while it deals, the venue takes at most half of
            # the loop, and the loop goes idle between chunks, so the journal's writer gets the GIL
            # (with back-to-back chunks it waited for it up to 30 ms).
            await asyncio.sleep(time.perf_counter() - started)
        if bar is None:
            return []
        loop = asyncio.get_running_loop()
        self._recording = recording = loop.create_future()
        outcome: asyncio.Future[list[Fill]] = loop.create_future()
        if self._bar_db is None:
            self._bar_db = self._connect()
        written = loop.run_in_executor(None, self._record_bar, self._bar_db, bar)

        def close(written: asyncio.Future[list[tuple[int, Fill]]]) -> None:
            # On the loop, whether or not the caller still waits: the memory follows the record.
            self._dealing = self._recording = None
            recording.set_result(None)
            try:
                outcome.set_result(self._close_bar(bar, written.result()))
            except BaseException as err:  # the write failed: nothing changed
                outcome.set_exception(err)
            self._checkpointer.committed()

        written.add_done_callback(close)
        return await asyncio.shield(outcome)

    def _deal_orders(self, chunk: int) -> Generator[None, None, _Bar | None]:
        """Take the open orders and deal them at the bar, yielding every ``chunk`` orders; writes nothing.

        Also prepares the record's rows, so that writing them (perhaps on a worker thread) runs no
        Python beside the loop. None when every bar has been dealt. Marks the orders as being dealt
        until the bar is closed.
        """
        if self._dealing is not None:
            raise RuntimeError("the paper broker is already dealing a bar")
        bar = self.bar
        if bar >= len(self.market.calendar):
            return None
        now = self.clock.now()
        ts = now.isoformat()
        rows = self._db.execute(
            "SELECT seq, client_order_id, instrument, side, quantity, limit_price, filled FROM orders"
            " WHERE status IN (?, ?) ORDER BY seq",
            OPEN,
        ).fetchall()
        cash = Decimal(self._meta("cash"))
        holdings = {
            inst: Decimal(q) for inst, q in self._db.execute("SELECT instrument, quantity FROM positions")
        }
        self._dealing = {int(row[0]) for row in rows}
        out = _Bar(bar, self._last_fill, [], [], [])
        moved: set[str] = set()
        last = out.after_fill
        try:
            for i, (seq, cid, inst, side_s, qty_s, limit_s, filled_s) in enumerate(rows):
                if i and i % chunk == 0:
                    yield
                side, quantity, filled = Side(side_s), Decimal(qty_s), Decimal(filled_s)
                limit = Decimal(limit_s) if limit_s is not None else None
                held = holdings.get(inst, ZERO)
                deal = self.market.deal(inst, side, quantity - filled, limit, cash, held, bar)
                if deal is not None:
                    signed = deal.quantity * side.sign
                    cash += -signed * deal.price - deal.fee  # Fill.cash_delta
                    holdings[inst] = held + signed
                    last += 1
                    fill = Fill(
                        _fill_id(last),
                        cid,
                        _broker_id(seq),
                        inst,
                        side,
                        deal.quantity,
                        deal.price,
                        deal.fee,
                        now,
                    )
                    out.fills.append((last, fill))
                    out.fill_rows.append(
                        (
                            last,
                            seq,
                            cid,
                            inst,
                            side.value,
                            str(deal.quantity),
                            str(deal.price),
                            str(deal.fee),
                            ts,
                        )
                    )
                    moved.add(inst)
                    filled += deal.quantity
                done = filled >= quantity
                status = OrderStatus.FILLED if done else OrderStatus.EXPIRED
                reason = (
                    "" if done else ("not tradable at the bar" if deal is None else "rest of a day order")
                )
                out.updates.append((str(filled), status.value, reason, seq))
        except BaseException:
            self._dealing = None
            raise
        out.meta.extend([(str(cash), "cash"), (str(bar + 1), "bar"), (ts, "bar_opened")])
        out.holdings.extend((inst, str(holdings[inst])) for inst in sorted(moved))
        return out

    def _record_bar(self, db: sqlite3.Connection, dealt: _Bar) -> list[tuple[int, Fill]]:
        """Write a dealt bar's outcome in one transaction on ``db``: a crash leaves it wholly dealt or not at all.

        Touches nothing in memory (it may run on a worker thread); the fills with their sequence numbers.
        """
        with self._tx(db):
            # The fills were numbered from memory: this object is the record's only writer.
            last = db.execute("SELECT COALESCE(MAX(seq), 0) FROM fills").fetchone()[0]
            if last != dealt.after_fill:
                raise RuntimeError(
                    f"the venue's record has fills up to {last}, this object knew {dealt.after_fill}"
                )
            db.executemany(
                "INSERT INTO fills (seq, order_seq, client_order_id, instrument, side, quantity, price, fee, ts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                dealt.fill_rows,
            )
            db.executemany(
                "UPDATE orders SET filled = ?, status = ?, reason = ? WHERE seq = ?", dealt.updates
            )
            db.executemany("INSERT OR REPLACE INTO positions VALUES (?, ?)", dealt.holdings)
            db.executemany("UPDATE meta SET value = ? WHERE key = ?", dealt.meta)
        return dealt.fills

    @property
    def _last_fill(self) -> int:
        return self._fills[-1][0] if self._fills else self._fills_from

    def _close_bar(self, dealt: _Bar, fills: list[tuple[int, Fill]]) -> list[Fill]:
        """Move to the next bar in memory once its outcome is in the record."""
        self._bar, self._last_prices, self._references = dealt.bar + 1, {}, {}
        self._bar_opened = dt.datetime.fromisoformat(dict((k, v) for v, k in dealt.meta)["bar_opened"])
        self._fills.extend(fills)
        return [fill for _, fill in fills]

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_autocheckpoint=0")
        return db

    # --- the Broker protocol ---------------------------------------------------------------
    def is_connected(self) -> bool:
        """Whether the (simulated) connection is up."""
        return self.faults.connected

    async def submit(self, request: SubmitRequest) -> BrokerAck:
        """Place an order; the attempt is recorded even when refused, so duplicates can be counted."""
        if self._recording is not None:
            await self._idle()
        self._guard()
        if self.faults.lose_submits > 0:
            self.faults.lose_submits -= 1
            raise BrokerTimeout("paper broker: submit timed out (request lost)")
        now = self.clock.now()
        reason = ""
        if request.quantity <= 0:
            reason = "quantity must be positive"
        elif not self.market.knows(request.instrument):
            reason = f"unknown instrument {request.instrument}"
        elif (broken := self._venue_rules(request, now)) is not None:
            reason = str(broken)
        dup = request.client_order_id in self._ids
        # One statement, committed on its own (autocommit): atomic without BEGIN/COMMIT round trips.
        # (A thread of its own for these writes was tried: the hand-overs cost the loop more CPU
        # time than the write, measured side by side.)
        if dup:
            self._db.execute(
                "INSERT INTO submissions (client_order_id, ts, outcome) VALUES (?, ?, 'duplicate')",
                (request.client_order_id, now.isoformat()),
            )
        else:
            cur = self._db.execute(
                "INSERT INTO orders (client_order_id, instrument, side, quantity, limit_price, status, reason, bar, ts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.client_order_id,
                    request.instrument,
                    request.side.value,
                    str(request.quantity),
                    None if request.limit_price is None else str(request.limit_price),
                    (OrderStatus.REJECTED if reason else OrderStatus.ACCEPTED).value,
                    reason,
                    self.bar,
                    now.isoformat(),
                ),
            )
            seq = int(cur.lastrowid or 0)
        self._checkpointer.committed()
        if not dup:
            self._ids.add(request.client_order_id)
        if dup:
            raise DuplicateOrder(f"duplicate client order id {request.client_order_id}")
        if reason:
            raise BrokerRejected(reason)
        if self.faults.lose_acks > 0:
            self.faults.lose_acks -= 1
            raise BrokerTimeout("paper broker: submit timed out (ack lost)")
        return BrokerAck(request.client_order_id, _broker_id(seq), now)

    async def cancel(self, broker_order_id: str) -> None:
        """Cancel an open order."""
        if self._recording is not None:
            await self._idle()
        self._guard()
        seq = int(broker_order_id.removeprefix("P"))
        if self._dealing is not None and seq in self._dealing:
            raise BrokerRejected(f"order {broker_order_id} is being dealt at the bar's close")
        with self._tx() as db:
            cur = db.execute(
                "UPDATE orders SET status = ?, reason = 'canceled by request' WHERE seq = ? AND status IN (?, ?)",
                (OrderStatus.CANCELED.value, seq, *OPEN),
            )
            if cur.rowcount == 0:
                raise BrokerRejected(f"order {broker_order_id} is not open")

    def _report(self, row: tuple[object, ...]) -> BrokerOrder:
        seq, cid, inst, side, qty, limit, filled, status, reason = row
        return BrokerOrder(
            client_order_id=str(cid),
            broker_order_id=_broker_id(int(str(seq))),
            instrument=str(inst),
            side=Side(str(side)),
            quantity=Decimal(str(qty)),
            filled_quantity=Decimal(str(filled)),
            status=OrderStatus(str(status)),
            limit_price=None if limit is None else Decimal(str(limit)),
            reason=str(reason),
        )

    _COLUMNS = "seq, client_order_id, instrument, side, quantity, limit_price, filled, status, reason"

    async def get_order(self, client_order_id: str) -> BrokerOrder | None:
        """One order by client order id; None if it never arrived."""
        if self._recording is not None:
            await self._idle()
        self._guard(query=True)
        row = self._db.execute(
            f"SELECT {self._COLUMNS} FROM orders WHERE client_order_id = ?", (client_order_id,)
        ).fetchone()
        return None if row is None else self._report(row)

    async def open_orders(self) -> list[BrokerOrder]:
        """Orders that may still fill."""
        if self._recording is not None:
            await self._idle()
        self._guard(query=True)
        rows = self._db.execute(
            f"SELECT {self._COLUMNS} FROM orders WHERE status IN (?, ?) ORDER BY seq", OPEN
        ).fetchall()
        reports = []
        for i, row in enumerate(rows):
            if i and i % REPORT_CHUNK == 0:
                await asyncio.sleep(0)  # hundreds of orders are ms of parsing: the loop gets turns
            reports.append(self._report(row))
        return reports

    async def fills_since(self, cursor: str | None) -> list[BrokerFill]:
        """Fills after ``cursor``, oldest first."""
        if self._recording is not None:
            await self._idle()
        self._guard(query=True)
        after = int((cursor or "PF0")[2:])
        if after >= self._fills_from:  # every fill after the cursor was made by this object
            start = bisect.bisect_right(self._fills, after, key=lambda sf: sf[0])
            return [BrokerFill(f, _fill_id(seq)) for seq, f in self._fills[start:]]
        return [BrokerFill(f, _fill_id(seq)) for seq, f in self._fills_after(after)]

    def _fills_after(self, seq: int) -> list[tuple[int, Fill]]:
        rows = self._db.execute(
            "SELECT seq, order_seq, client_order_id, instrument, side, quantity, price, fee, ts FROM fills"
            " WHERE seq > ? ORDER BY seq",
            (seq,),
        ).fetchall()
        return [
            (
                s,
                Fill(
                    _fill_id(s),
                    cid,
                    _broker_id(o),
                    inst,
                    Side(side),
                    Decimal(q),
                    Decimal(p),
                    Decimal(fee),
                    dt.datetime.fromisoformat(ts),
                ),
            )
            for s, o, cid, inst, side, q, p, fee, ts in rows
        ]

    async def positions(self) -> dict[str, Decimal]:
        """Non-zero holdings."""
        if self._recording is not None:
            await self._idle()
        self._guard(query=True)
        return self.record_positions()

    async def account(self) -> BrokerAccount:
        """Cash, and equity at the last completed bar's closes."""
        if self._recording is not None:
            await self._idle()
        self._guard(query=True)
        cash = Decimal(self._meta("cash"))
        value = ZERO
        for inst, qty in self.record_positions().items():
            price = self.last_price(inst)
            value += qty * (price if price is not None else ZERO)
        return BrokerAccount(cash, as_money(cash + value), self.clock.now())

    # --- the broker's own record (what tests compare against) ------------------------------
    def record_positions(self) -> dict[str, Decimal]:
        """Holdings in the broker's record."""
        rows = self._db.execute("SELECT instrument, quantity FROM positions").fetchall()
        return {inst: Decimal(q) for inst, q in rows if Decimal(q) != 0}

    def record_fills(self) -> list[Fill]:
        """Every fill the broker made."""
        return [f for _, f in self._fills_after(0)]

    def record_submissions(self) -> dict[str, int]:
        """How many times each client order id was submitted."""
        rows = self._db.execute("SELECT client_order_id, COUNT(*) FROM submissions GROUP BY client_order_id")
        return {cid: int(n) for cid, n in rows}

    def set_position(self, instrument: str, quantity: Decimal) -> None:
        """Change a holding behind everyone's back (a corporate action, a manual transfer): for tests."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO positions VALUES (?, ?)", (instrument, str(quantity)))

    async def connect(self, account: str | None) -> None:
        """Nothing to check: the paper broker has no credentials and its account is its record."""
        return None

    async def listed_instruments(self) -> None:
        """The paper broker trades whatever its bundle has bars for."""
        return None

    def close(self) -> None:
        """Close the record."""
        self._checkpointer.close()
        if self._bar_db is not None:
            self._bar_db.close()
        self._db.close()
