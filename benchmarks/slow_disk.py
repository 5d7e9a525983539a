"""Signal latency of the trading pod on a slow disk: every fsync delayed 0, 5 and 20 ms (LD_PRELOAD).

    .venv/bin/python benchmarks/slow_disk.py [--signals 200] [--clients 4] [--runs 3] [--delays 0,5,20]

Each run starts the pod program (``python -m kubequant.workloads.trading.node.runtime``, paper broker,
journal on a fresh folder) once per delay, with ``tests/integration/trading/fsync_delay.c`` compiled
by gcc and preloaded: fsync and fdatasync of the journal's folder sleep ``KUBEQUANT_FSYNC_DELAY_MS``
before the real call (the paper broker's record, the venue, is on another folder and keeps its pace).
``--clients`` threads send ``--signals`` signals over loopback HTTP, closed loop (each client sends
its next signal once the last one is answered); a signal's latency is its round trip to the 202,
which comes only once its orders are journaled (fsync included) and handed to the broker. Ratios
are against the 0 ms delay of the same run. After the runs: the median and the worst of each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "tests" / "integration" / "trading" / "fsync_delay.c"
TOKEN = "slow-disk-benchmark-token-0123456789"
SESSION = """\
apiVersion: kubequant.io/v1alpha1
kind: LiveTradingSession
metadata:
  name: slow-disk
spec:
  account: paper-slow-disk
  riskPolicyRef: {{name: slow-disk}}
  data: {{path: {bundle}}}
  startingCash: 100000000
  exchange: {{openCost: 0.0005, closeCost: 0.0015, minCost: 5}}
---
apiVersion: kubequant.io/v1alpha1
kind: RiskPolicy
metadata:
  name: slow-disk
spec:
  limits:
    maxOrderQuantity: 100000
    maxConcentration: 0.9
    maxDailyTrades: 1000000
"""


@dataclass(frozen=True)
class Figure:
    """One delay of one run."""

    delay_ms: float
    p50: float  # seconds
    p99: float
    journal_write: float  # mean seconds per journal transaction
    per_transaction: float  # signals per journal transaction (group commit)


def compile_library(out: Path) -> Path:
    """fsync_delay.c as a shared library in ``out``."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SystemExit("gcc is needed to compile the fsync delay library; install gcc")
    lib = out / "libfsync_delay.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(SOURCE), "-ldl"], check=True)
    return lib


def call(port: int, method: str, path: str, body: object = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def measure(root: Path, lib: Path, delay_ms: float, args: argparse.Namespace, run: int) -> Figure:
    """Start the pod with ``delay_ms`` per fsync, send the signals, stop it; the figure."""
    state = root / f"state-{run}-{delay_ms:g}"
    env = dict(os.environ, LD_PRELOAD=str(lib), KUBEQUANT_FSYNC_DELAY_MS=str(delay_ms))
    env["KUBEQUANT_FSYNC_DELAY_PREFIX"] = f"{state}/"  # the journal's disk only: the venue keeps its pace
    cmd = [sys.executable, "-m", "kubequant.workloads.trading.node.runtime"]
    cmd += ["--session", str(root / "session.yaml"), "--state-dir", str(state), "--host", "127.0.0.1"]
    cmd += ["--port", "0", "--token-file", str(root / "token"), "--bar-seconds", "0"]
    cmd += ["--broker-record", str(root / f"venue-{run}-{delay_ms:g}" / "paper-broker.sqlite")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    ports: list[int] = []
    listening = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "signal API listening on" in line:
                ports.append(int(line.rsplit(":", 1)[1]))
                listening.set()
        listening.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        if not listening.wait(180) or not ports:
            raise SystemExit(f"the pod did not start (exit code {proc.poll()})")
        port = ports[0]
        deadline = time.monotonic() + 120
        while call(port, "GET", "/readyz")[0] != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the pod never became ready")
            time.sleep(0.05)

        def send(k: int) -> float:
            body = {
                "id": f"s-{k}",
                "targets": [{"instrument": f"SYN{1 + k % 20:04d}", "quantity": 100 * (1 + k)}],
            }
            start = time.perf_counter()
            code, raw = call(port, "POST", "/v1/signals", body)
            if code != 202:
                raise SystemExit(f"signal s-{k} got {code}: {raw[:300]!r}")
            return time.perf_counter() - start

        warm = args.clients * 2
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(send, range(warm)))  # connections, first transactions, caches
            before = call(port, "GET", "/metrics")[1].decode()
            latencies = sorted(pool.map(send, range(warm, warm + args.signals)))
        after = call(port, "GET", "/metrics")[1].decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    name = "kubequant_journal_write_seconds"
    writes = metric(after, name + "_count") - metric(before, name + "_count")
    spent = metric(after, name + "_sum") - metric(before, name + "_sum")
    return Figure(
        delay_ms,
        statistics.median(latencies),
        latencies[int(0.99 * (len(latencies) - 1))],
        spent / writes if writes else float("nan"),
        args.signals / writes if writes else float("nan"),
    )


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--signals", type=int, default=200, help="signals per delay (default 200)")
    p.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (default 4)")
    p.add_argument("--runs", type=int, default=3, help="runs, each over every delay (default 3)")
    p.add_argument(
        "--delays", default="0,5,20", help="fsync delays in ms, the first the reference (default 0,5,20)"
    )
    args = p.parse_args()
    delays = [float(d) for d in args.delays.split(",")]
    if args.signals < 1 or args.clients < 1 or args.runs < 1 or not delays or delays[0] != 0:
        raise SystemExit(
            "--signals, --clients and --runs must be >= 1; list --delays starting with 0 (the reference)"
        )

    from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

    with tempfile.TemporaryDirectory(prefix="kq-slow-disk-") as tmp:
        root = Path(tmp)
        write_sample_bundle(
            root / "bundle", SampleSpec(instruments=20, start="2020-06-01", end="2021-12-31", seed=5)
        )
        (root / "session.yaml").write_text(SESSION.format(bundle=root / "bundle"))
        (root / "token").write_text(TOKEN)
        lib = compile_library(root)
        print(f"load average before: {load()}  ({os.cpu_count()} CPUs)")
        print(
            f"{args.signals} signals per delay from {args.clients} clients, closed loop, HTTP round trip to the 202"
        )
        header = f"{'run':>3} {'fsync +ms':>9} {'p50 ms':>8} {'p99 ms':>8} {'p50 x':>6} {'p99 x':>6} {'write ms':>9} {'sig/tx':>6}"
        print(header)
        runs: list[list[Figure]] = []
        for run in range(args.runs):
            figures = [measure(root, lib, d, args, run) for d in delays]
            runs.append(figures)
            ref = figures[0]
            for f in figures:
                print(
                    f"{run + 1:>3} {f.delay_ms:>9g} {f.p50 * 1e3:>8.2f} {f.p99 * 1e3:>8.2f}"
                    f" {f.p50 / ref.p50:>6.2f} {f.p99 / ref.p99:>6.2f} {f.journal_write * 1e3:>9.2f}"
                    f" {f.per_transaction:>6.2f}"
                )
        print(f"\nover {args.runs} runs: median (worst)")
        print(f"{'fsync +ms':>9} {'p50 ms':>16} {'p99 ms':>16} {'p50 x':>14} {'p99 x':>14}")
        for i, d in enumerate(delays):
            p50 = [r[i].p50 * 1e3 for r in runs]
            p99 = [r[i].p99 * 1e3 for r in runs]
            x50 = [r[i].p50 / r[0].p50 for r in runs]
            x99 = [r[i].p99 / r[0].p99 for r in runs]
            print(
                f"{d:>9g} {statistics.median(p50):>7.2f} ({max(p50):>6.2f}) {statistics.median(p99):>7.2f} ({max(p99):>6.2f})"
                f" {statistics.median(x50):>5.2f} ({max(x50):>5.2f}) {statistics.median(x99):>5.2f} ({max(x99):>5.2f})"
            )
        print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
