"""The runtime's real entrypoint as a process: killed mid-stream, restarted, and failing closed on a bad venue."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from kubequant.workloads.trading.execution.journal import Journal
from kubequant.workloads.trading.execution.recovery import rebuild
from kubequant.workloads.trading.model.signals import SyntheticSignals
from kubequant.workloads.trading.model.state import OmsState
from kubequant.workloads.trading.node.runtime import EXIT_HALTED, read_session
from kubequant.workloads.trading.risk.engine import RiskEngine

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def start(session: Path, state: Path, signals: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "kubequant.workloads.trading.node.runtime", "--session", str(session)]
    cmd += ["--state-dir", str(state), "--signals", str(signals), "--seed", "3"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_killed_restarted_and_halted_on_a_position_it_cannot_explain(
    tmp_path: Path, session_file: Path
) -> None:
    state = tmp_path / "volume"
    proc = start(session_file, state, 10**6)
    assert proc.stdout is not None
    for line in proc.stdout:  # trade for a moment after recovery, then SIGKILL
        if "recovery:" in line:
            time.sleep(1.0)
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    done = max(
        SyntheticSignals.index(o.signal_id) or 0 for o in journal_state(state, session_file).orders.values()
    )
    finished = start(session_file, state, done + 20)
    out, _ = finished.communicate(timeout=120)
    assert finished.returncode == 0, out
    assert out.count("recovery: {") == 1

    oms_state = journal_state(state, session_file)
    venue = sqlite_positions(state / "paper-broker.sqlite")
    assert oms_state.position_quantities() == venue and venue

    # Someone moves shares at the venue behind the session's back: the next start refuses to trade.
    set_position(state / "paper-broker.sqlite", "SYN0001", Decimal(123))
    halted = start(session_file, state, done + 40)
    out, _ = halted.communicate(timeout=120)
    assert halted.returncode == EXIT_HALTED, out
    assert "positions differ" in out and "SYN0001" in out


def journal_state(state: Path, session_file: Path) -> OmsState:
    """The OMS state a restart would rebuild from the journal."""
    _, policy = read_session(session_file)
    assert policy is not None
    with Journal(state / "journal.sqlite") as journal:
        return rebuild(journal, RiskEngine(policy.spec))


def sqlite_positions(path: Path) -> dict[str, Decimal]:
    import sqlite3

    db = sqlite3.connect(path)
    try:
        return {
            k: Decimal(q) for k, q in db.execute("SELECT instrument, quantity FROM positions") if Decimal(q)
        }
    finally:
        db.close()


def set_position(path: Path, instrument: str, quantity: Decimal) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    with db:
        db.execute("INSERT OR REPLACE INTO positions VALUES (?, ?)", (instrument, str(quantity)))
    db.close()
