"""The trading pod's program as a real process: recover, serve the signal API, stop on SIGTERM, restart."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "pod-test-token-0123456789"


class Pod:
    """One life of ``python -m kubequant.workloads.trading.node.runtime`` on loopback."""

    def __init__(self, session: Path, state: Path, token_file: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "kubequant.workloads.trading.node.runtime", "--session", str(session)]
        cmd += [
            "--state-dir",
            str(state),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--token-file",
            str(token_file),
        ]
        cmd += ["--tick-seconds", "0.2", *extra]
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
        assert listening.wait(120), self.output()
        assert self.port, self.output()

    def output(self) -> str:
        return "".join(self.lines)

    def call(self, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.call("GET", "/readyz", token=None)[0] == 200:
                return
            assert self.proc.poll() is None, self.output()
            time.sleep(0.05)
        raise AssertionError(f"never ready:\n{self.output()}")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def submissions(state: Path) -> dict[str, int]:
    db = sqlite3.connect(state / "paper-broker.sqlite")
    try:
        return dict(db.execute("SELECT client_order_id, COUNT(*) FROM submissions GROUP BY client_order_id"))
    finally:
        db.close()


def test_the_pod_serves_signals_stops_gracefully_and_restarts_without_duplicates(
    tmp_path: Path, session_file: Path
) -> None:
    state, token_file = tmp_path / "volume", tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # a mounted Secret key ends with a newline more often than not
    pod = Pod(session_file, state, token_file, "--bar-seconds", "0.3")
    pod.wait_ready()
    assert pod.call("GET", "/healthz", token=None)[0] == 200
    assert pod.call("GET", "/v1/orders", token="wrong")[0] == 401

    first = {"id": "sig-1", "targets": [{"instrument": "SYN0001", "quantity": 500}]}
    code, answer = pod.call("POST", "/v1/signals", first)
    assert code == 202 and answer["orders"][0]["accepted"], answer
    code, again = pod.call("POST", "/v1/signals", first)
    assert code == 200 and again["duplicate"] is True
    code, answer = pod.call(
        "POST", "/v1/signals", {"id": "sig-2", "targets": [{"instrument": "SYN0002", "quantity": 400}]}
    )
    assert code == 202, answer

    # The paper market advances with the clock: the orders fill without anyone asking.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        positions = pod.call("GET", "/v1/positions")[1]["positions"]
        if {p["instrument"] for p in positions} == {"SYN0001", "SYN0002"}:
            break
        time.sleep(0.2)
    assert {p["instrument"] for p in positions} == {"SYN0001", "SYN0002"}, pod.output()
    status = pod.call("GET", "/v1/status")[1]
    assert status["phase"] == "Trading" and status["tradingState"] == "ACTIVE"
    assert (
        "kubequant_signal_to_submit_seconds"
        in urllib.request.urlopen(f"http://127.0.0.1:{pod.port}/metrics", timeout=10).read().decode()
    )

    # A burst of signals with SIGTERM in the middle: every acknowledged one is kept, none is lost half-way.
    def send(k: int) -> tuple[str, int]:
        sid = f"burst-{k}"
        body = {"id": sid, "targets": [{"instrument": f"SYN000{1 + k % 8}", "quantity": 100 * (k % 5)}]}
        try:
            return sid, pod.call("POST", "/v1/signals", body)[0]
        except (urllib.error.URLError, ConnectionError, OSError):
            return sid, 0  # refused once the pod stopped accepting

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(send, k) for k in range(40)]
        time.sleep(0.05)
        pod.proc.send_signal(signal.SIGTERM)
        answers = dict(f.result() for f in futures)
    assert pod.proc.wait(60) == 0, pod.output()
    assert "journal closed" in pod.output()
    acknowledged = {sid for sid, code in answers.items() if code in (200, 202)}
    assert set(answers.values()) <= {0, 200, 202}, answers
    orders = len([1 for _ in submissions(state)])

    again_pod = Pod(session_file, state, token_file, "--bar-seconds", "0")
    again_pod.wait_ready()
    before = again_pod.call("GET", "/v1/orders")[1]["orders"]
    signals = {o["signalId"] for o in before}
    assert {"sig-1", "sig-2"} | {s for s in acknowledged if s in signals} <= signals
    # Every acknowledged signal that made an order is still there (a target equal to the position makes none).
    assert all(s in signals for s in acknowledged if answers[s] == 202 and not s.endswith(("-0", "-5")))
    code, dup = again_pod.call("POST", "/v1/signals", first)
    assert code == 200 and dup["duplicate"] is True
    after = again_pod.call("GET", "/v1/orders")[1]["orders"]
    assert [o["clientOrderId"] for o in after] == [o["clientOrderId"] for o in before]
    assert again_pod.terminate() == 0
    venue = submissions(state)
    assert len(venue) == orders and set(venue.values()) == {1}, venue  # nothing sent twice


def test_a_pod_that_cannot_reconcile_exits_halted(tmp_path: Path, session_file: Path) -> None:
    from kubequant.workloads.trading.node.runtime import EXIT_HALTED

    state, token_file = tmp_path / "volume", tmp_path / "token"
    token_file.write_text(TOKEN)
    pod = Pod(session_file, state, token_file, "--bar-seconds", "0.2")
    pod.wait_ready()
    code, _ = pod.call(
        "POST", "/v1/signals", {"id": "s", "targets": [{"instrument": "SYN0003", "quantity": 300}]}
    )
    assert code == 202
    time.sleep(1.0)
    assert pod.terminate() == 0
    db = sqlite3.connect(state / "paper-broker.sqlite")
    with db:
        db.execute("INSERT OR REPLACE INTO positions VALUES ('SYN0004', '777')")  # moved behind its back
    db.close()
    halted = Pod(session_file, state, token_file)
    assert halted.proc.wait(120) == EXIT_HALTED, halted.output()
    assert "positions differ" in halted.output()


def test_a_second_runtime_on_the_same_volume_is_refused(tmp_path: Path, session_file: Path) -> None:
    state, token_file = tmp_path / "volume", tmp_path / "token"
    token_file.write_text(TOKEN)
    pod = Pod(session_file, state, token_file)
    pod.wait_ready()
    cmd = [sys.executable, "-m", "kubequant.workloads.trading.node.runtime", "--session", str(session_file)]
    cmd += ["--state-dir", str(state), "--host", "127.0.0.1", "--port", "0", "--token-file", str(token_file)]
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and "in use by pid" in second.stderr, second.stderr
    assert pod.terminate() == 0
