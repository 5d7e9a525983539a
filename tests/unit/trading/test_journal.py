"""The journal: durable settings, append-only, every event written before the broker sees it, exact replay."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import sqlite3
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

from kubequant.workloads.trading.adapters.base import BrokerAck, SubmitRequest
from kubequant.workloads.trading.execution.journal import JOURNAL_WRITE_SECONDS, Journal
from kubequant.workloads.trading.execution.reconcile import poll
from kubequant.workloads.trading.execution.recovery import recover
from kubequant.workloads.trading.model.domain import Fill, OrderIntent, Side
from kubequant.workloads.trading.model.events import (
    EVENT_TYPES,
    AccountSnapshot,
    AdoptionAuthorized,
    OrderAccepted,
    OrderCanceled,
    OrderCancelRequested,
    OrderCreated,
    OrderExpired,
    OrderFilled,
    OrderRejected,
    OrderResent,
    OrderSubmitted,
    PositionSnapshot,
    RecoveryCompleted,
    RejectSource,
    RiskStateChanged,
    SignalReceived,
    encode,
)
from kubequant.workloads.trading.model.state import OmsState
from kubequant.workloads.trading.node.scheduled import RebalancePlanned, RebalanceSlotsSkipped
from kubequant.workloads.trading.risk.control import KillSwitchSet, RiskPolicyApplied
from kubequant.workloads.trading.risk.trading_state import TradingStateSet

pytestmark = pytest.mark.unit
T0 = dt.datetime(2024, 3, 4, 2, 0, 0, 123456, tzinfo=dt.UTC)
FILL = Fill("f1", "c1", "b1", "SYN0001", Side.BUY, Decimal("300"), Decimal("11.7257"), Decimal("5.00"), T0)
ONE_OF_EACH = [
    OrderCreated(
        T0, "c1", "SYN0001", Side.BUY, Decimal(300), "sig", "SYN0001", Decimal("12.5"), Decimal("11.7")
    ),
    OrderSubmitted(T0, "c1", Decimal("3750.0")),
    OrderAccepted(T0, "c1", "b1"),
    OrderFilled(T0, "c1", FILL, "PF0000000001"),
    OrderCancelRequested(T0, "c1", "halted"),
    OrderCanceled(T0, "c1", "gone"),
    OrderExpired(T0, "c1", "day over"),
    OrderRejected(T0, "c1", RejectSource.RECOVERY, "UNKNOWN_AT_BROKER", "never seen", True),
    OrderResent(T0, "c1", "the venue's query found no order c1 0.8s after its signal"),
    PositionSnapshot(T0, {"SYN0001": Decimal("300")}, True, "PF0000000001"),
    AccountSnapshot(T0, Decimal("996244.29"), Decimal("999761.00")),
    RiskStateChanged(T0, "HALTED", {"kill_switch": "HALTED: kill switch"}),
    RecoveryCompleted(T0, {"replayed": 3}, "reason"),
    AdoptionAuthorized(T0, "new session on an account in use", "cli"),
    SignalReceived(T0, "sig-7", "5f1c0d"),
    # Kinds registered by the modules that own them (the scheduled strategy, the operator's resume).
    RebalancePlanned(
        T0, "rebalance-2024-03-04", "2024-03-04", "2024-03-01", T0, 10, 60.0, {"SYN0001": Decimal("-300")}
    ),
    RebalanceSlotsSkipped(T0, "rebalance-2024-03-04", 0, 8, "not sent in time"),
    TradingStateSet(
        T0, "REDUCING", "loss reviewed", "cli", "HALTED", {"max_drawdown": "HALTED: dd"}, Decimal("9.5")
    ),
    # The kill switch and a RiskPolicy reaching a running session (control.py).
    KillSwitchSet(T0, True, "api", "kubectl-patch (Update) at 2024-03-04T01:02:03Z", "drill", 4),
    RiskPolicyApplied(T0, "limits", 7, "0123456789abcdef", "api"),
]


# Values whose text is easy to get wrong: an exponent, a tiny negative, an external order.
EDGE_CASES = [
    OrderCreated(T0, "c2", "SYN0002", Side.SELL, Decimal("1E+2"), "sig", "SYN0002", external=True),
    PositionSnapshot(T0, {"SYN0001": Decimal("300"), "SYN0002": Decimal("-0.000001")}, True, None),
    RecoveryCompleted(T0, {"replayed": 3}, None),
]


def generic(value: Any) -> Any:
    """The journal's encoding written the slow, obviously right way."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: generic(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: generic(v) for k, v in value.items()}
    return value


def test_the_journal_text_of_every_event_is_the_generic_encoding() -> None:
    """encode's per-class field lists write exactly what a generic dataclass walk would."""
    for event in [*ONE_OF_EACH, *EDGE_CASES]:
        assert encode(event) == json.dumps(generic(event), separators=(",", ":"), sort_keys=True)


def test_every_event_round_trips_exactly(tmp_path: Path) -> None:
    assert {type(e) for e in ONE_OF_EACH} == set(EVENT_TYPES.values())
    with Journal(tmp_path / "j.sqlite") as journal:
        for event in ONE_OF_EACH:
            journal.append(event)
        assert journal.events() == ONE_OF_EACH
        assert [seq for seq, _ in journal.replay()] == list(range(1, len(ONE_OF_EACH) + 1))
        assert [e for _, e in journal.replay(after=10)] == ONE_OF_EACH[10:]


def test_wal_fsync_and_append_only(tmp_path: Path) -> None:
    before = JOURNAL_WRITE_SECONDS._sum.get()  # type: ignore[attr-defined]
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.append(*ONE_OF_EACH[:3])
        db = journal._db
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: fsync at every commit
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE events SET body = '{}'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM events")
        assert journal.count() == 3
    assert JOURNAL_WRITE_SECONDS._sum.get() > before  # type: ignore[attr-defined]


def test_a_burst_does_not_leave_the_wal_at_its_largest(tmp_path: Path) -> None:
    limit = 64 << 10
    path = tmp_path / "j.sqlite"
    wal = path.with_name(path.name + "-wal")
    with Journal(path, wal_size_limit=limit) as journal:
        assert journal._db.execute("PRAGMA journal_size_limit").fetchone()[0] == limit  # set, and it works:
        for _ in range(60):  # a burst: ~300 KB of WAL before any checkpoint
            journal.append(*ONE_OF_EACH * 4)
        assert wal.stat().st_size > 4 * limit
        journal._db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # what the Checkpointer's thread runs
        journal.append(ONE_OF_EACH[0])  # the WAL starts over: truncated back to the limit
        assert wal.stat().st_size <= limit
        assert journal.count() == 60 * 4 * len(ONE_OF_EACH) + 1


def test_submitted_is_on_disk_before_the_broker_is_called(open_session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    asyncio.run(recover(s.oms))
    seen: list[list[str]] = []
    real_submit = s.broker.submit

    async def submit(request: SubmitRequest) -> BrokerAck:
        # Another connection, as a restarted process would read it.
        other = sqlite3.connect(tmp_path / "journal.sqlite")
        seen.append(
            [
                k
                for (k,) in other.execute(
                    "SELECT kind FROM events WHERE client_order_id = ?", (request.client_order_id,)
                )
            ]
        )
        other.close()
        return await real_submit(request)

    s.broker.submit = submit  # type: ignore[method-assign]
    asyncio.run(s.oms.submit(OrderIntent("SYN0001", Side.BUY, Decimal(100), "sig-1", "SYN0001")))
    assert seen == [["OrderCreated", "OrderSubmitted"]]


def test_replay_rebuilds_the_live_state(open_session) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    asyncio.run(recover(s.oms))
    for i, (inst, side, qty) in enumerate(
        [
            ("SYN0001", Side.BUY, 500),
            ("SYN0003", Side.BUY, 250),
            ("SYN0001", Side.SELL, 200),
            ("SYN0006", Side.BUY, 10**9),
        ]
    ):
        asyncio.run(s.oms.submit(OrderIntent(inst, side, Decimal(qty), f"sig-{i}", inst)))
        s.broker.advance()
        asyncio.run(poll(s.oms))
    live = s.oms.state
    rebuilt = OmsState.rebuild(s.journal.events())
    assert rebuilt.orders == live.orders
    assert rebuilt.positions == live.positions and rebuilt.fill_ids == live.fill_ids
    assert rebuilt.cursor == live.cursor and rebuilt.account == live.account
    assert rebuilt.position_quantities() == s.broker.record_positions()


def test_a_fresh_process_decodes_events_registered_by_other_modules() -> None:
    """The scheduled plan and a resume live in their own modules; replay must not depend on import order."""
    import subprocess
    import sys

    code = (
        "from kubequant.workloads.trading.model.events import EVENT_TYPES, decode\n"
        "assert 'TradingStateSet' not in EVENT_TYPES\n"
        "import kubequant.workloads.trading.risk.trading_state as ts, kubequant.workloads.trading.node.scheduled as sc\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
    probe = (
        "import json\n"
        "from kubequant.workloads.trading.model import events\n"
        "try:\n"
        "    events.decode('TradingStateSet', '{}')\n"
        "except TypeError:\n"
        "    pass  # found the class: an empty body lacks its fields\n"
        "assert 'TradingStateSet' in events.EVENT_TYPES and 'RebalancePlanned' in events.EVENT_TYPES\n"
        "try:\n"
        "    events.decode('NoSuchEvent', '{}')\n"
        "except ValueError as err:\n"
        "    assert 'NoSuchEvent' in str(err)\n"
        "else:\n"
        "    raise SystemExit('an unknown kind must be refused')\n"
    )
    subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
