"""Crash test: SIGKILL the trading runtime at random points 100 times, then compare the journal with the broker.

Each life is a real process (forked from this prepared one, so a restart costs milliseconds
rather than the seconds of importing qlib) running ``runtime.run``: it replays its journal,
reconciles with the paper broker, then trades a steady stream of synthetic signals until it is
killed, either during start-up and recovery or 50-300 ms into trading. The paper broker's
SQLite record plays the venue, which outlives the process.
"""

from __future__ import annotations

import asyncio
import os
import random
import select
import signal
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import pytest

from kubequant.workloads.trading.model.orders import OrderStatus
from kubequant.workloads.trading.node.runtime import RuntimeConfig, TradingRuntime, prepare, read_session, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = 100
SEED = 20241125


def _life(cfg: RuntimeConfig, market: object, ready_fd: int) -> None:
    """The child: one life of the runtime; never returns into pytest."""
    code = 70
    try:
        code = asyncio.run(run(cfg, market, lambda _report: os.write(ready_fd, b"R")))  # type: ignore[arg-type]
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def test_sigkill_at_random_points_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, session_file: Path
) -> None:
    session, _ = read_session(session_file)
    cfg = RuntimeConfig(
        session=session,
        policy_path=session_file,
        state_dir=tmp_path / "volume",
        broker_record=tmp_path / "venue" / "paper-broker.sqlite",
        signals=10**9,  # a steady stream until killed
        signal_seed=7,
        advance_every=8,
    )
    market = prepare(cfg)
    rng = random.Random(SEED)
    started = time.monotonic()
    kills = early = 0
    while kills < KILLS:
        read_fd, write_fd = os.pipe()
        sys.stdout.flush(), sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _life(cfg, market, write_fd)
        os.close(write_fd)
        if rng.random() < 0.25:
            early += 1  # somewhere in start-up: journal replay, reconciliation, in-flight resolution
            time.sleep(rng.uniform(0.0, 0.05))
        else:
            readable, _, _ = select.select([read_fd], [], [], 60)
            assert readable and os.read(read_fd, 1) == b"R", "the runtime never became ready"
            time.sleep(rng.uniform(0.05, 0.3))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(read_fd)
        assert os.WIFSIGNALED(status), (
            f"life {kills} ended on its own with exit code {os.waitstatus_to_exitcode(status)}"
        )
        kills += 1
    killing = time.monotonic() - started

    # The last restart, here in the test process: it recovers and compares.
    runtime = TradingRuntime(cfg, market)  # type: ignore[arg-type]
    report = asyncio.run(runtime.start())
    state, broker = runtime.oms.state, runtime.broker
    submissions = broker.record_submissions()
    broker_fills = {f.fill_id for f in broker.record_fills()}
    duplicates = sum(1 for n in submissions.values() if n > 1)
    lost = broker_fills - state.fill_ids
    phantom = state.fill_ids - broker_fills
    positions_equal = state.position_quantities() == broker.record_positions()
    resolved: Counter[str] = Counter()
    for rec in state.recoveries:
        resolved.update(
            {k: v for k, v in rec.counts.items() if k.startswith("resolved_") or k == "fills_applied"}
        )
    statuses = Counter(o.status.value for o in state.orders.values())
    bars = f"{broker.bar}/{len(broker.market.calendar)}"
    ended_bar = broker.bar
    runtime.close()

    print(
        f"\ncrash test: {kills} SIGKILLs ({early} during start-up) in {killing:.1f}s, {len(state.recoveries)} recoveries;"
        f" {len(submissions)} orders at the broker, {len(broker_fills)} broker fills, {len(state.orders)} orders"
        f" in the journal {dict(statuses)}, {len(state.superseded)} retried after the broker never saw them;"
        f" recovered across restarts: {dict(resolved)}; bars dealt {bars}\n"
        f"duplicate orders: {duplicates}; lost fills: {len(lost)}; phantom fills: {len(phantom)};"
        f" positions equal: {positions_equal} ({len(state.position_quantities())} instruments)"
    )
    assert duplicates == 0
    assert not lost and not phantom
    assert positions_equal
    assert report.halted is None and runtime.oms.ready and not runtime.oms.anomalies
    assert not any(o.is_live and o.status is OrderStatus.SUBMITTED for o in state.orders.values())
    assert len(submissions) > 300 and len(broker_fills) > 100  # the stream really traded ...
    assert ended_bar < len(broker.market.calendar)  # ... and the market never ran out of bars
