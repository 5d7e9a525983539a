"""The journal's volume fills up under a running pod: it fails closed, loses nothing, and recovers with room.

The volume is a size-limited tmpfs mounted by the test (root only); the pod program runs as a real
process with its journal there and the paper broker's record (the venue, which outlives the pod)
on a roomy folder. Signals are sent until a journal write fails for want of space.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kubequant.workloads.trading.execution.journal import Journal
from kubequant.workloads.trading.execution.recovery import rebuild
from kubequant.workloads.trading.model.events import SignalReceived
from kubequant.workloads.trading.model.state import OmsState
from kubequant.workloads.trading.node.runtime import read_session
from kubequant.workloads.trading.risk.engine import RiskEngine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "disk-full-token-0123456789"
VOLUME_SIZE = "2m"  # a few hundred journal transactions
ROOMY_SIZE = "64m"  # more than the runtime's JOURNAL_ROOM_BYTES (16 MiB)


def mount_tmpfs(where: Path, size: str) -> None:
    """Mount a tmpfs of ``size`` at ``where``; skip the test when this process may not mount."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root; run the test as root")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs was refused here: {done.stderr.strip()}")


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted after the test."""
    volume = tmp_path / "volume"
    mount_tmpfs(volume, VOLUME_SIZE)
    try:
        yield volume
    finally:
        if subprocess.run(["umount", str(volume)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(volume)], capture_output=True)  # a process still holds it


class Pod:
    """One life of the pod program on loopback, its output collected by a thread."""

    def __init__(self, session: Path, state: Path, venue: Path, token_file: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "kubequant.workloads.trading.node.runtime", "--session", str(session)]
        cmd += ["--state-dir", str(state), "--broker-record", str(venue), "--host", "127.0.0.1"]
        cmd += ["--port", "0", "--token-file", str(token_file), "--tick-seconds", "0.2", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.port = 0
        listening = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                if "signal API listening on" in line:
                    self.port = int(line.rsplit(":", 1)[1])
                    listening.set()
            listening.set()

        threading.Thread(target=pump, daemon=True).start()
        assert listening.wait(120) and self.port, self.output()

    def output(self) -> str:
        return "".join(self.lines)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {TOKEN}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if path != "/metrics" else raw.decode()
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw or b"null")
            except ValueError:
                return err.code, raw.decode(errors="replace")  # aiohttp's own text answer

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.call("GET", "/readyz")[0] == 200:
                return
            assert self.proc.poll() is None, self.output()
            time.sleep(0.05)
        raise AssertionError(f"never ready:\n{self.output()}")


def venue_submissions(venue: Path) -> dict[str, int]:
    db = sqlite3.connect(venue)
    try:
        return dict(db.execute("SELECT client_order_id, COUNT(*) FROM submissions GROUP BY client_order_id"))
    finally:
        db.close()


def venue_positions(venue: Path) -> dict[str, Decimal]:
    db = sqlite3.connect(venue)
    try:
        return {
            k: Decimal(q) for k, q in db.execute("SELECT instrument, quantity FROM positions") if Decimal(q)
        }
    finally:
        db.close()


def journal_state(journal_path: Path, session_file: Path) -> tuple[OmsState, set[str]]:
    """The state a restart rebuilds from the journal, and the signal ids journaled."""
    _, policy = read_session(session_file)
    assert policy is not None
    with Journal(journal_path) as journal:
        signals = {e.signal_id for e in journal.events() if isinstance(e, SignalReceived)}
        return rebuild(journal, RiskEngine(policy.spec)), signals


def wait_for(what: str, check: Any, pod: Pod, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} never happened:\n{pod.output()[-4000:]}")


def test_a_full_journal_volume_fails_closed_loses_nothing_and_recovers_with_room(
    tmp_path: Path, session_file: Path, small_volume: Path
) -> None:
    venue, token_file = tmp_path / "venue" / "paper-broker.sqlite", tmp_path / "token"
    token_file.write_text(TOKEN)
    journal_path = small_volume / "journal.sqlite"
    pod = Pod(session_file, small_volume, venue, token_file, "--bar-seconds", "0.3")
    pod.wait_ready()

    # Drive signals until the journal cannot write: every 2xx before that is an acknowledgement.
    acknowledged: dict[str, list[str]] = {}
    failure: tuple[int, Any] | None = None
    for k in range(5000):
        sid = f"fill-{k}"
        body = {"id": sid, "targets": [{"instrument": f"SYN000{1 + k % 8}", "quantity": 100 * (1 + k % 7)}]}
        code, answer = pod.call("POST", "/v1/signals", body)
        if code not in (200, 202):
            failure = (code, answer)
            break
        acknowledged[sid] = [o["clientOrderId"] for o in answer["orders"]]
        time.sleep(
            0.03
        )  # the paper market deals a bar every 0.3 s: some orders fill before the volume is full
    assert failure is not None, "the 1 MiB volume never filled up"
    # The signal whose write failed (or the next, when a housekeeping write failed first) is refused.
    assert failure[0] == 503 and "disk is full" in failure[1]["error"], failure
    at_failure = venue_submissions(venue)
    print(f"\njournal volume full after {len(acknowledged)} acknowledged signals; the next got {failure}")
    assert len(acknowledged) > 20 and at_failure, "the pod traded too little before the volume filled"

    # Fail closed: every later signal is refused with the reason and the fix; nothing reaches the broker.
    code, refused = pod.call(
        "POST", "/v1/signals", {"id": "after", "targets": [{"instrument": "SYN0001", "quantity": 900}]}
    )
    assert code == 503, (code, refused)
    assert str(journal_path) in refused["error"] and "disk is full" in refused["error"], refused
    assert "free space on the journal's volume" in refused["error"], refused
    assert refused["fix"].startswith("free space on the journal's volume"), refused
    wait_for("/readyz going unready", lambda: pod.call("GET", "/readyz")[0] == 503, pod)
    ready = pod.call("GET", "/readyz")[1]
    assert ready["ready"] is False and str(journal_path) in ready["reason"], ready
    code, status = pod.call("GET", "/v1/status")  # what the pod reports to the operator
    assert code == 200 and status["phase"] == "Failed" and str(journal_path) in status["message"], status

    def alerting() -> bool:
        text = pod.call("GET", "/metrics")[1]
        return (
            'kubequant_trading_state{state="HALTED"} 1.0' in text
            and 'kubequant_risk_condition{condition="journal_write_failed"} 1.0' in text
        )

    wait_for("the HALTED metric (KubequantSessionHalted)", alerting, pod)
    time.sleep(1.5)  # several housekeeping ticks and paper bars: the pod stays up, and trades nothing
    assert pod.proc.poll() is None, pod.output()
    assert venue_submissions(venue) == at_failure

    # The journal is readable while the volume is still full, and holds every acknowledged signal.
    db = sqlite3.connect(f"file:{journal_path}?mode=ro", uri=True)
    try:
        bodies = [
            json.loads(r[0]) for r in db.execute("SELECT body FROM events WHERE kind = 'SignalReceived'")
        ]
        integrity = db.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        db.close()
    assert integrity == "ok"
    assert set(acknowledged) <= {b.get("signal_id") for b in bodies}, bodies[:3]

    # Room again: the pod exits by itself so that its restart recovers.
    subprocess.run(["mount", "-o", f"remount,size={ROOMY_SIZE}", str(small_volume)], check=True)
    assert pod.proc.wait(30) == 1, pod.output()
    assert "the OMS failed: stopping" in pod.output()

    state, signals = journal_state(journal_path, session_file)
    assert set(acknowledged) <= signals  # every acknowledged signal is in the journal ...
    for sid, cids in acknowledged.items():
        assert all(cid in state.orders for cid in cids), sid  # ... with every order it made
    assert set(at_failure) <= set(state.orders)  # nothing reached the broker unjournaled

    again = Pod(session_file, small_volume, venue, token_file, "--bar-seconds", "0")
    again.wait_ready()
    orders = again.call("GET", "/v1/orders")[1]["orders"]
    assert {o["clientOrderId"] for o in orders} == set(state.orders)
    positions = {
        p["instrument"]: Decimal(p["quantity"]) for p in again.call("GET", "/v1/positions")[1]["positions"]
    }
    assert positions == venue_positions(venue) and positions, again.output()
    retry_sid = next(reversed(acknowledged))
    k = int(retry_sid.split("-")[1])
    retry = {
        "id": retry_sid,
        "targets": [{"instrument": f"SYN000{1 + k % 8}", "quantity": 100 * (1 + k % 7)}],
    }
    code, dup = again.call("POST", "/v1/signals", retry)
    assert code == 200 and dup["duplicate"] is True, dup
    code, fresh = again.call(
        "POST", "/v1/signals", {"id": "after-recovery", "targets": [{"instrument": "SYN0002", "quantity": 0}]}
    )
    assert code == 202, fresh
    again.proc.send_signal(signal.SIGTERM)
    assert again.proc.wait(60) == 0, again.output()
    submitted = venue_submissions(venue)
    assert set(submitted.values()) == {1}, (
        submitted
    )  # no order sent twice, across the failure and the restart
