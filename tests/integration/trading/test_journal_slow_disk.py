"""The journal on a slow disk: each of its fsyncs 20 ms late (fsync_delay.c, LD_PRELOAD), the pod stays correct.

The pod program runs as a real process with the delay library preloaded; concurrent clients send
signals; every signal's orders reach the paper broker once, and the journal holds what the broker
got. The latency is printed (benchmarks/slow_disk.py measures it against a 0 ms run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import statistics
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

from kubequant.workloads.trading.execution.journal import Journal
from kubequant.workloads.trading.execution.recovery import rebuild
from kubequant.workloads.trading.node.runtime import read_session
from kubequant.workloads.trading.risk.engine import RiskEngine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "slow-disk-token-0123456789"
DELAY_MS = 20.0
SIGNALS, CLIENTS = 80, 8
SOURCE = Path(__file__).with_name("fsync_delay.c")


@pytest.fixture(scope="module")
def fsync_delay_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fsync_delay.c compiled into a shared library."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("the fsync delay library is compiled with gcc; install gcc")
    out = tmp_path_factory.mktemp("fsync-delay") / "libfsync_delay.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-o", str(out), str(SOURCE), "-ldl"], check=True)
    return out


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read()
            return resp.status, raw.decode() if path == "/metrics" else json.loads(raw)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def test_a_slow_disk_delays_signals_but_every_order_reaches_the_broker_once(
    tmp_path: Path, session_file: Path, fsync_delay_lib: Path
) -> None:
    state, token_file, counted = tmp_path / "volume", tmp_path / "token", tmp_path / "fsyncs"
    venue = tmp_path / "venue" / "paper-broker.sqlite"
    token_file.write_text(TOKEN)
    env = dict(os.environ, LD_PRELOAD=str(fsync_delay_lib), KUBEQUANT_FSYNC_DELAY_MS=str(DELAY_MS))
    env["KUBEQUANT_FSYNC_COUNT_FILE"] = str(counted)
    env["KUBEQUANT_FSYNC_DELAY_PREFIX"] = f"{state}/"  # the journal's disk; the venue's record is elsewhere
    cmd = [sys.executable, "-m", "kubequant.workloads.trading.node.runtime", "--session", str(session_file)]
    cmd += ["--state-dir", str(state), "--host", "127.0.0.1", "--port", "0", "--token-file", str(token_file)]
    cmd += ["--broker-record", str(venue), "--tick-seconds", "0.2", "--bar-seconds", "0.5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    ports: list[int] = []
    listening = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "signal API listening on" in line:
                ports.append(int(line.rsplit(":", 1)[1]))
                listening.set()
        listening.set()

    threading.Thread(target=pump, daemon=True).start()
    assert listening.wait(120) and ports, "".join(lines)
    port = ports[0]
    deadline = time.monotonic() + 60
    while call(port, "GET", "/readyz")[0] != 200:
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.05)

    def send(k: int) -> tuple[str, int, Any, float]:
        sid = f"slow-{k}"
        body = {"id": sid, "targets": [{"instrument": f"SYN000{1 + k % 8}", "quantity": 100 * (1 + k % 9)}]}
        start = time.perf_counter()
        code, answer = call(port, "POST", "/v1/signals", body)
        return sid, code, answer, time.perf_counter() - start

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(send, range(SIGNALS)))
    assert {code for _, code, _, _ in results} == {202}, [r for r in results if r[1] != 202][:3]
    text = call(port, "GET", "/metrics")[1]
    writes = metric(text, "kubequant_journal_write_seconds_count")
    mean_write = metric(text, "kubequant_journal_write_seconds_sum") / writes
    # Resend every signal: each is known, and none makes a second order.
    with ThreadPoolExecutor(CLIENTS) as pool:
        again = list(pool.map(send, range(SIGNALS)))
    assert all(code == 200 and answer["duplicate"] for _, code, answer, _ in again), again[:3]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, "".join(lines)

    latencies = sorted(t for *_, t in results)
    p50, p99 = statistics.median(latencies), latencies[int(0.99 * (len(latencies) - 1))]
    print(
        f"\nslow disk ({DELAY_MS:g} ms per fsync, {int(counted.read_text())} fsyncs delayed): {SIGNALS} signals from"
        f" {CLIENTS} clients, HTTP round trip p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms;"
        f" {writes:.0f} journal transactions, mean {mean_write * 1000:.1f} ms"
    )
    assert int(counted.read_text()) >= writes  # the library delayed the journal's fsyncs ...
    assert mean_write >= DELAY_MS / 1000  # ... and every transaction paid for it
    assert p50 >= DELAY_MS / 1000  # a signal is acknowledged only once on disk

    sent = {o["clientOrderId"]: o for _, _, answer, _ in results for o in answer["orders"]}
    accepted = {cid for cid, o in sent.items() if o["accepted"]}
    db = sqlite3.connect(venue)
    try:
        venue = dict(db.execute("SELECT client_order_id, COUNT(*) FROM submissions GROUP BY client_order_id"))
    finally:
        db.close()
    assert accepted and accepted <= set(venue) <= set(sent), (
        len(venue),
        len(accepted),
    )  # every order sent ...
    assert set(venue.values()) == {1}  # ... once
    _, policy = read_session(session_file)
    assert policy is not None
    with Journal(state / "journal.sqlite") as journal:
        journaled = rebuild(journal, RiskEngine(policy.spec))
    assert set(journaled.orders) == set(sent)  # the journal holds exactly what the broker was sent
    assert set(journaled.signals) == {sid for sid, *_ in results}
