"""Stress: 100 concurrent clients on the signal API of the trading pod program (the users' "100 concurrency").

    .venv/bin/python benchmarks/signal_stress.py [--clients 100] [--signals 50] [--runs 3] [--json]

The pod program (``python -m kubequant.workloads.trading.node.runtime``: real OMS, risk engine,
SQLite journal with fsync, paper broker) serves its signal API on loopback, its paper market
dealing a bar every ``--bar-seconds`` and its housekeeping running every 0.2 s meanwhile. Each of
``--clients`` asyncio clients (aiohttp, one keep-alive connection each: 100 connections at once)
waits for the common start, then sends ``--signals`` signals closed loop, each one lot more of its
own instrument (the bundle has one listed throughout for each client), so that every signal is one buy order.

Every answer must be a 2xx or a documented refusal (429 with Retry-After and a ``fix``, from the
per-client rate limit; all clients share 127.0.0.1, so one bucket); an exception, a 5xx or any
other status is an error. After the stream the pod is stopped (SIGTERM, exit 0) and its journal
is compared with the paper venue's record (``soak.compare``): every accepted signal journaled
exactly once, one order per signal, each submitted once, none lost. Latency: from the client
sending a request to its answer, p50/p99/max per run; the benchmark prints each run and the median
and worst of ``--runs`` runs, with the load average (the clients share the machine's cores with the pod).
``tests/integration/trading/test_signal_api_stress.py`` runs it once with the same code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import broker_faults
import soak
from broker_faults import Pod

LOT = soak.LOT
DOCUMENTED = {429}  # refusals the API documents for a well-formed, authorised signal under load

SESSION = """\
apiVersion: kubequant.io/v1alpha1
kind: LiveTradingSession
metadata: {{name: stress}}
spec:
  account: paper-stress
  riskPolicyRef: {{name: stress}}
  data: {{path: {bundle}}}
  startingCash: 10000000000
  replay: {{period: "{start}..{end}", speed: {speed}}}
  strategy: {{signalApi: {{}}}}
---
apiVersion: kubequant.io/v1alpha1
kind: RiskPolicy
metadata: {{name: stress}}
spec:
  limits: {{maxOrderQuantity: 100000}}
"""


@dataclass
class StressResult:
    """One run of the stress."""

    clients: int
    signals_per_client: int
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # exceptions, 5xx, undocumented statuses
    latencies: list[float] = field(default_factory=list, repr=False)  # seconds
    seconds: float = 0.0
    exit_code: int | None = None
    ledger: soak.Ledger = field(default_factory=soak.Ledger)
    orders_per_signal: Counter[int] = field(default_factory=Counter)  # orders in an answer -> signals
    load: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def ms(self, q: float) -> float:
        return float(soak.percentile_ms(self.latencies, q))

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["latencies"]
        out["statuses"] = {str(k): v for k, v in self.statuses.items()}
        out["orders_per_signal"] = {str(k): v for k, v in self.orders_per_signal.items()}
        out["ledger"]["clean"] = self.ledger.clean
        out["ledger"]["rejected"] = dict(self.ledger.rejected)  # asdict garbles a Counter
        return out | {
            "p50_ms": self.ms(0.5),
            "p99_ms": self.ms(0.99),
            "max_ms": max(self.latencies, default=0) * 1000,
        }

    def line(self) -> str:
        codes = ", ".join(f"{k}: {n}" for k, n in sorted(self.statuses.items()))
        return (
            f"{self.clients} clients x {self.signals_per_client}: {self.requests} requests in {self.seconds:.1f}s "
            f"({self.throughput:.0f}/s), answers {codes}, errors {len(self.errors)}; "
            f"p50 {self.ms(0.5):.1f} ms, p99 {self.ms(0.99):.1f} ms, max {max(self.latencies, default=0) * 1000:.1f} ms; "
            f"journaled {self.ledger.signals_journaled} (twice {self.ledger.signals_journaled_twice}), "
            f"duplicates {self.ledger.duplicates}, lost {self.ledger.lost}; pod exit {self.exit_code}; "
            f"load {self.load:.2f}"
        )


def stress_bundle(folder: Path, clients: int) -> Path:
    """A sample bundle with an instrument listed throughout for each client, half a year of daily bars."""
    from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

    out = folder / "bundle"
    # A fifth more than the clients: the sample lists a few late and delists a few early (no price all along).
    spec = SampleSpec(instruments=max(clients * 6 // 5, 8), start="2021-01-01", end="2021-06-30", seed=5)
    write_sample_bundle(out, spec)
    return out


def listed_throughout(bundle: Path) -> list[str]:
    """The bundle's instruments with bars from its first day to its last (a price at every bar)."""
    days = soak.calendar(bundle)
    rows = [row.split("\t") for row in (bundle / "instruments" / "all.txt").read_text().splitlines() if row]
    return [name for name, first, last in rows if first <= days[0] and last >= days[-1]]


def start_pod(folder: Path, bundle: Path, bar_seconds: float) -> Pod:
    """The pod program on a paper session over the bundle's days, ready."""
    folder.mkdir(parents=True, exist_ok=True)
    days = soak.calendar(bundle)
    session = folder / "session.yaml"
    speed = 86400 / bar_seconds if bar_seconds > 0 else 0
    session.write_text(SESSION.format(bundle=bundle, start=days[0], end=days[-1], speed=speed))
    token_file = folder / "token"
    token_file.write_text(broker_faults.TOKEN)
    secrets = folder / "no-secrets"
    secrets.mkdir(exist_ok=True)
    pod = Pod(session, folder / "volume", secrets, token_file)
    try:
        pod.wait_ready()
    except BaseException:
        pod.kill()
        raise
    return pod


async def clients(url: str, names: list[str], count: int, per: int, out: StressResult) -> set[str]:
    """``count`` clients at once, ``per`` signals each, closed loop; the ids of the signals answered 2xx."""
    go = asyncio.Event()
    accepted: set[str] = set()
    headers = {"Authorization": f"Bearer {broker_faults.TOKEN}"}

    async def client(c: int) -> None:
        name = names[c % len(names)]
        connector = aiohttp.TCPConnector(limit=1)  # its own connection: 100 clients are 100 connections
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
            await go.wait()
            for k in range(per):
                sid = f"c{c:03d}-{k:04d}"
                body = {"id": sid, "targets": [{"instrument": name, "quantity": (k + 1) * LOT}]}
                started = time.perf_counter()
                try:
                    async with session.post(f"{url}/v1/signals", json=body) as resp:
                        answer = await resp.json(content_type=None)
                        status = resp.status
                        retry_after = resp.headers.get("Retry-After")
                except (aiohttp.ClientError, TimeoutError) as err:
                    out.errors.append(f"{sid}: {type(err).__name__}: {err}")
                    continue
                out.latencies.append(time.perf_counter() - started)
                out.statuses[status] += 1
                if status in (200, 202):
                    accepted.add(sid)
                    out.orders_per_signal[len(answer.get("orders", []))] += 1
                elif status in DOCUMENTED and retry_after and isinstance(answer, dict) and answer.get("fix"):
                    await asyncio.sleep(float(retry_after))
                else:
                    out.errors.append(f"{sid}: {status} {json.dumps(answer)[:300]}")

    tasks = [asyncio.create_task(client(c)) for c in range(count)]
    await asyncio.sleep(0.5)  # every client's session made
    started = time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    out.seconds = time.perf_counter() - started
    return accepted


def run(
    bundle: Path, folder: Path, count: int = 100, per: int = 20, bar_seconds: float = 0.5
) -> StressResult:
    """One stress run on a fresh pod; the journal compared with the venue after it stopped."""
    out = StressResult(count, per)
    names = listed_throughout(bundle)
    if len(names) < count:
        raise SystemExit(
            f"the bundle has {len(names)} instruments for {count} clients: use a bundle with one per client"
        )
    pod = start_pod(folder, bundle, bar_seconds)
    try:
        accepted = asyncio.run(clients(f"http://127.0.0.1:{pod.port}", names, count, per, out))
        out.load = os.getloadavg()[0]
        out.exit_code = pod.terminate()
    finally:
        pod.kill()
    if out.exit_code != 0:
        out.errors.append(f"the pod exited {out.exit_code}:\n{pod.output()[-4000:]}")
    out.ledger.signals_sent = count * per
    out.ledger.signals_answered = len(accepted)
    volume = folder / "volume"
    soak.compare(out.ledger, volume / "journal.sqlite", volume / "paper-broker.sqlite", accepted)
    return out


def summary(results: list[StressResult]) -> str:
    """Median and worst of the runs."""
    p50 = [r.ms(0.5) for r in results]
    p99 = [r.ms(0.99) for r in results]
    tput = [r.throughput for r in results]
    return (
        f"{len(results)} runs: p50 median {statistics.median(p50):.1f} ms, worst {max(p50):.1f} ms; "
        f"p99 median {statistics.median(p99):.1f} ms, worst {max(p99):.1f} ms; "
        f"throughput median {statistics.median(tput):.0f}/s, worst {min(tput):.0f}/s; "
        f"errors {sum(len(r.errors) for r in results)}; all journals clean: {all(r.ledger.clean for r in results)}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    p.add_argument("--clients", type=int, default=100, help="concurrent clients (default 100)")
    p.add_argument("--signals", type=int, default=50, help="signals per client (default 50)")
    p.add_argument("--runs", type=int, default=3, help="runs, each on a fresh pod (default 3)")
    p.add_argument(
        "--bar-seconds", type=float, default=0.5, help="the paper market's bar interval; 0 holds it"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    for flag, value, low in (
        ("--clients", args.clients, 1),
        ("--signals", args.signals, 1),
        ("--runs", args.runs, 1),
    ):
        if value < low:
            print(f"{flag} {value}: set {flag} to {low} or more", file=sys.stderr)
            return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="signal-stress-") as tmp:
        bundle = stress_bundle(Path(tmp), args.clients)
        for i in range(args.runs):
            result = run(bundle, Path(tmp) / f"run{i}", args.clients, args.signals, args.bar_seconds)
            for error in result.errors[:10]:
                print(f"[run {i}] {error}", file=sys.stderr)
            if not args.json:
                print(f"run {i}: {result.line()}", flush=True)
            results.append(result)
    if args.json:
        print(json.dumps({"runs": [r.to_json() for r in results], "summary": summary(results)}, indent=2))
    else:
        print(summary(results))
    ok = all(not r.errors and r.ledger.clean and r.exit_code == 0 for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
