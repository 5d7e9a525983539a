"""Group commit: concurrent submits share fsynced transactions, yet nothing reaches the broker before it is on disk."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kubequant.api.risk import RiskPolicySpec
from kubequant.workloads.trading.adapters.base import BrokerAck, SubmitRequest
from kubequant.workloads.trading.execution.journal import Journal, JournalError
from kubequant.workloads.trading.execution.oms import NotReady
from kubequant.workloads.trading.execution.recovery import recover
from kubequant.workloads.trading.model.domain import OrderIntent, Side, client_order_id
from kubequant.workloads.trading.model.events import AccountSnapshot, OrderCreated, OrderSubmitted
from kubequant.workloads.trading.model.orders import OrderStatus
from kubequant.workloads.trading.model.state import OmsState

pytestmark = pytest.mark.unit
T0 = dt.datetime(2024, 3, 4, 2, 0, tzinfo=dt.UTC)
INSTRUMENTS = ("SYN0001", "SYN0002", "SYN0003", "SYN0004")


def snapshot(i: int) -> AccountSnapshot:
    return AccountSnapshot(T0, Decimal(i), Decimal(i))


def intents(n: int) -> list[OrderIntent]:
    return [
        OrderIntent(INSTRUMENTS[k % 4], Side.BUY if k % 3 else Side.SELL, Decimal(100 + k), f"sig-{k}", "leg")
        for k in range(n)
    ]


def kinds_on_disk(path: Path, cid: str) -> list[str]:
    """What a restarted process would read for one order (another connection)."""
    other = sqlite3.connect(path)
    try:
        return [
            k
            for (k,) in other.execute(
                "SELECT kind FROM events WHERE client_order_id = ? ORDER BY seq", (cid,)
            )
        ]
    finally:
        other.close()


class FailingConnection:
    """The journal's connection, until ``armed``: then every INSERT fails as a full or broken volume would."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real
        self.armed = False

    def execute(self, sql: str, *args: Any) -> Any:
        if self.armed and sql.startswith("INSERT"):
            raise sqlite3.OperationalError("disk I/O error")
        return self.real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


# --- the journal ---------------------------------------------------------------------------------
def test_events_queued_together_share_one_transaction_in_queue_order(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:

        async def main() -> list[int]:
            # Holding the connection, as a transaction being fsynced does, while ten commits queue up.
            with journal._db_lock:
                futures = [journal.append_async(snapshot(i), snapshot(i + 100)) for i in range(10)]
                await asyncio.sleep(0.01)
                assert not any(f.done() for f in futures)  # nothing is acknowledged before it is written
            return list(await asyncio.gather(*futures))

        last_seqs = asyncio.run(main())
        assert journal.transactions == 1 and journal.written == 20
        assert last_seqs == [2 * (i + 1) for i in range(10)]  # each commit learns its own last seq
        assert [e.cash for e in journal.events()] == [Decimal(x) for i in range(10) for x in (i, i + 100)]


def test_a_synchronous_append_writes_what_was_queued_before_it_first(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:

        async def main() -> int:
            with journal._db_lock:
                first = journal.append_async(snapshot(1))
                second = journal.append_async(snapshot(2))
            journal.append(snapshot(3))  # may run before the writer thread gets to the queue
            assert journal.count() == 3
            return (await first) + (await second)

        assert asyncio.run(main()) == 1 + 2
        assert [e.cash for e in journal.events()] == [1, 2, 3]


def test_a_failed_write_fails_its_waiters_and_refuses_every_later_write(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal(path) as journal:
        journal.append(snapshot(0))
        failing = FailingConnection(journal._db)
        journal._db = failing

        async def main() -> list[Any]:
            with journal._db_lock:
                futures = [journal.append_async(snapshot(i)) for i in (1, 2, 3)]
                failing.armed = True
            return await asyncio.gather(*futures, return_exceptions=True)

        outcomes = asyncio.run(main())
        assert all(isinstance(o, JournalError) for o in outcomes)
        failing.armed = False  # the volume is back, but a later event must not land after a lost one
        with pytest.raises(JournalError, match="refuses writes"):
            journal.append(snapshot(4))
        journal._db = failing.real
    with Journal(path) as reopened:
        assert [e.cash for e in reopened.events()] == [0]


# --- the OMS -------------------------------------------------------------------------------------
def test_concurrent_submits_share_fsyncs_and_each_order_is_on_disk_before_the_broker_sees_it(
    open_session: Any, tmp_path: Path
) -> None:
    s = open_session(RiskPolicySpec.model_validate({"limits": {"longOnly": False}}))  # sells from flat
    asyncio.run(recover(s.oms))
    seen: dict[str, list[str]] = {}
    real_submit = s.broker.submit

    async def submit(request: SubmitRequest) -> BrokerAck:
        seen[request.client_order_id] = kinds_on_disk(tmp_path / "journal.sqlite", request.client_order_id)
        return await real_submit(request)

    s.broker.submit = submit
    before_tx, before_events = s.journal.transactions, s.journal.written

    async def main() -> list[Any]:
        return await asyncio.gather(*(s.oms.submit(i) for i in intents(40)))

    outcomes = asyncio.run(main())
    assert all(o.accepted and o.order.status is OrderStatus.ACCEPTED for o in outcomes)
    assert all(kinds == ["OrderCreated", "OrderSubmitted"] for kinds in seen.values()) and len(seen) == 40
    events, transactions = s.journal.written - before_events, s.journal.transactions - before_tx
    assert events == 3 * 40  # created + submitted, then accepted, per order
    assert transactions < events / 2  # grouped: one fsync served several submits
    assert s.broker.record_submissions() == {o.order.client_order_id: 1 for o in outcomes}
    # The journal's order is the order the state applied them in: a replay gives the same state.
    rebuilt = OmsState.rebuild(s.journal.events())
    assert rebuilt.orders == s.oms.state.orders and rebuilt.projected() == s.oms.state.projected()


def test_a_failed_group_write_stops_the_oms_and_sends_nothing(open_session: Any, tmp_path: Path) -> None:
    s = open_session()
    asyncio.run(recover(s.oms))
    on_disk = s.journal.count()
    failing = FailingConnection(s.journal._db)
    s.journal._db = failing
    failing.armed = True

    async def main() -> list[Any]:
        return await asyncio.gather(*(s.oms.submit(i) for i in intents(12)), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, JournalError | NotReady) for o in outcomes), outcomes
    assert any(isinstance(o, JournalError) for o in outcomes)
    assert s.oms.failed and not s.oms.ready
    assert s.broker.record_submissions() == {}  # not one order reached the broker
    with pytest.raises(NotReady):
        asyncio.run(s.oms.submit(OrderIntent("SYN0001", Side.BUY, Decimal(1), "after", "leg")))
    failing.armed = False
    s.journal._db = failing.real
    assert s.journal.count() == on_disk  # nothing of the failed group, nor after it


def test_a_duplicate_arriving_while_the_original_is_being_written_waits_for_the_disk(
    open_session: Any,
) -> None:
    s = open_session()
    asyncio.run(recover(s.oms))
    intent = OrderIntent("SYN0001", Side.BUY, Decimal(100), "sig-dup", "SYN0001")
    cid = client_order_id("s1", "sig-dup", "SYN0001")

    async def main() -> tuple[Any, Any, list[str]]:
        with s.journal._db_lock:  # the original's transaction is being fsynced
            first = asyncio.create_task(s.oms.submit(intent))
            await asyncio.sleep(0)
            second = asyncio.create_task(s.oms.submit(intent))
            await asyncio.sleep(0.01)
            assert not second.done()  # not acknowledged while nothing is on disk
        dup = await second
        on_disk = [type(e).__name__ for e in s.journal.events() if getattr(e, "client_order_id", None) == cid]
        return await first, dup, on_disk

    original, dup, on_disk = asyncio.run(main())
    assert dup.duplicate and not original.duplicate
    assert on_disk[:2] == [OrderCreated.kind, OrderSubmitted.kind]
    assert s.broker.record_submissions() == {cid: 1}


def test_a_waiter_cancelled_during_a_group_write_leaves_the_shared_write_to_the_others(
    open_session: Any,
) -> None:
    """The OMS awaits the journal's futures as they are (no shield): a cancelled submit must not cancel
    the write that ``settled`` (every later acknowledgement) waits on."""
    s = open_session()
    asyncio.run(recover(s.oms))
    intent = OrderIntent("SYN0003", Side.BUY, Decimal(100), "sig-shared", "SYN0003")

    async def main() -> None:
        with s.journal._db_lock:  # the group is being written
            submit = asyncio.create_task(s.oms.submit(intent))
            await asyncio.sleep(0)
            settled = asyncio.create_task(s.oms.settled())  # waits on the same write
            await asyncio.sleep(0)
            submit.cancel()
            await asyncio.sleep(0.01)
        with pytest.raises(asyncio.CancelledError):
            await submit
        await settled  # the write, not a CancelledError

    asyncio.run(main())
    cid = client_order_id("s1", "sig-shared", "SYN0003")
    assert s.oms.state.orders[cid].status is OrderStatus.SUBMITTED and not s.oms.failed
    assert s.broker.record_submissions() == {}


def test_a_submit_cancelled_while_its_events_are_written_leaves_them_on_disk_and_sends_nothing(
    open_session: Any, tmp_path: Path
) -> None:
    s = open_session()
    asyncio.run(recover(s.oms))
    intent = OrderIntent("SYN0002", Side.BUY, Decimal(100), "sig-cancel", "SYN0002")

    async def main() -> None:
        with s.journal._db_lock:
            task = asyncio.create_task(s.oms.submit(intent))
            await asyncio.sleep(0)
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await s.oms.settled()

    asyncio.run(main())
    cid = client_order_id("s1", "sig-cancel", "SYN0002")
    # Like a crash after the journal write: in flight, never sent, for a query to resolve; the OMS goes on.
    assert kinds_on_disk(tmp_path / "journal.sqlite", cid) == ["OrderCreated", "OrderSubmitted"]
    assert s.oms.state.orders[cid].status is OrderStatus.SUBMITTED and not s.oms.failed
    assert s.broker.record_submissions() == {} and cid not in s.oms.sending
