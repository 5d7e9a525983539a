"""Group commit under SIGKILL: concurrent submits sharing fsyncs, killed at random points, lose and duplicate nothing.

The integration crash test drives one signal at a time; here every life submits batches of
concurrent signals (so journal transactions carry several orders) while the paper market deals
and the OMS polls, and is killed mid-stream. The next life recovers from the journal and the
broker's record; the last one, in the test process, compares them.
"""

from __future__ import annotations

import asyncio
import os
import random
import select
import signal
import sys
import traceback
from decimal import Decimal
from pathlib import Path

import pytest

from kubequant.api.risk import RiskPolicySpec
from kubequant.workloads.trading.adapters.base import RetryPolicy
from kubequant.workloads.trading.adapters.paper.broker import PaperBroker
from kubequant.workloads.trading.adapters.paper.market import QlibMarket
from kubequant.workloads.trading.execution.journal import Journal
from kubequant.workloads.trading.execution.oms import OrderManager
from kubequant.workloads.trading.execution.reconcile import poll
from kubequant.workloads.trading.execution.recovery import recover
from kubequant.workloads.trading.model.domain import OrderIntent, Side
from kubequant.workloads.trading.model.orders import OrderStatus

pytestmark = [pytest.mark.unit, pytest.mark.slow]
KILLS = 20
BATCH = 16  # concurrent signals in flight together
REDELIVER = 2 * BATCH  # after a restart the last signals come again: they must change nothing


def open_oms(root: Path, market: QlibMarket) -> tuple[Journal, PaperBroker, OrderManager]:
    from kubequant.workloads.trading.risk.engine import RiskEngine

    journal = Journal(root / "journal.sqlite")
    broker = PaperBroker(market, root / "venue.sqlite", starting_cash=Decimal(10_000_000))
    retry = RetryPolicy(attempts=3, first_delay=0.0, max_delay=0.0)
    oms = OrderManager("crash", journal, broker, RiskEngine(RiskPolicySpec()), broker, retry=retry)
    return journal, broker, oms


def intent(k: int, instruments: list[str]) -> OrderIntent:
    inst = instruments[k % len(instruments)]
    side = Side.BUY if (k // len(instruments)) % 3 != 2 else Side.SELL
    return OrderIntent(inst, side, Decimal(100 * (1 + k % 5)), f"g-{k:08d}", inst)


async def life(root: Path, market: QlibMarket, ready_fd: int) -> None:
    journal, broker, oms = open_oms(root, market)
    await recover(oms)
    assert oms.ready, oms.anomalies
    os.write(ready_fd, b"R")
    done = [
        int(o.signal_id[2:])
        for o in [*oms.state.orders.values(), *oms.state.superseded]
        if o.signal_id.startswith("g-")
    ]
    k = max(0, max(done, default=-1) + 1 - REDELIVER)
    instruments = list(market.instruments)
    while True:
        await asyncio.gather(*(oms.submit(intent(k + i, instruments)) for i in range(BATCH)))
        k += BATCH
        (root / f"grouping-{os.getpid()}").write_text(f"{journal.written} {journal.transactions}")
        if (k // BATCH) % 2 == 0 and not broker.exhausted:
            broker.advance()
        await poll(oms)


def _child(root: Path, market: QlibMarket, ready_fd: int) -> None:
    code = 70
    try:
        asyncio.run(life(root, market, ready_fd))
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def test_sigkill_during_group_commits_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, market: QlibMarket
) -> None:
    rng = random.Random(5)
    for _ in range(KILLS):
        read_fd, write_fd = os.pipe()
        sys.stdout.flush(), sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child(tmp_path, market, write_fd)
        os.close(write_fd)
        readable, _, _ = select.select([read_fd], [], [], 60)
        assert readable and os.read(read_fd, 1) == b"R", "the OMS never became ready"
        select.select([], [], [], rng.uniform(0.02, 0.25))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(read_fd)
        assert os.WIFSIGNALED(status), f"a life ended on its own ({os.waitstatus_to_exitcode(status)})"

    journal, broker, oms = open_oms(tmp_path, market)
    report = asyncio.run(recover(oms))
    try:
        state = oms.state
        submissions = broker.record_submissions()
        broker_fills = {f.fill_id for f in broker.record_fills()}
        assert len(submissions) > 5 * BATCH  # the lives really traded
        assert sum(1 for n in submissions.values() if n > 1) == 0  # no duplicate orders
        assert broker_fills == state.fill_ids  # no lost and no phantom fills
        assert state.position_quantities() == broker.record_positions()
        assert report.halted is None and oms.ready and not oms.anomalies
        assert not any(o.status is OrderStatus.SUBMITTED for o in state.orders.values())
        # Group commit really grouped: the lives wrote fewer transactions than events.
        # (A life killed while writing its file leaves it empty.)
        counts = [
            tuple(map(int, text.split())) for p in tmp_path.glob("grouping-*") if (text := p.read_text())
        ]
        assert counts and sum(w for w, _ in counts) > 1.5 * sum(t for _, t in counts)
    finally:
        journal.close()
        broker.close()
