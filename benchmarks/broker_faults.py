"""Order success, duplicates, lost fills and signal latency of an Alpaca session under broker faults.

    .venv/bin/python benchmarks/broker_faults.py [--orders 2000] [--rates 0,0.01,0.05] [--workers 4]

The trading pod program (``python -m kubequant.workloads.trading.node.runtime``: its real OMS,
SQLite journal and Alpaca adapter over alpaca-py) trades through a real Toxiproxy
(``tests/unit/trading/toxiproxy_server.py``) in front of the fake Alpaca of the tests
(``tests/unit/trading/alpaca_fake.py``, which executes market orders in full as they are placed).
Signals arrive on the signal API from ``--workers`` clients, one instrument each, closed loop;
each raises its instrument's target by one share, so that it makes one market order (a buy). At a fault rate ``r`` each
request to the Trading API meets a fault with probability about ``r``, drawn per connection (the
fake closes every connection after one answer, so a connection is a request), in this mix:

==================  =====  =======================================================================
fault               share  what the adapter sees
==================  =====  =======================================================================
latency             0.20   Toxiproxy ``latency`` downstream, 250 ± 100 ms: a late answer
slow answer         0.10   ``slicer`` downstream: the answer trickles in 32-byte pieces 10 ms apart
answer dropped      0.15   ``timeout`` downstream: processed, the answer dropped, the connection closed
answer reset        0.10   ``reset_peer`` downstream: processed, then a TCP reset instead of the answer
request swallowed   0.15   ``timeout`` upstream, 800 ms: nothing reaches the venue; closed after 0.8 s
request reset       0.10   ``reset_peer`` upstream: a TCP reset; the request never reaches the venue
5xx                 0.10   the fake: 503 before processing, or 504 after it (half each)
429                 0.10   the fake: 429 with ``Retry-After``, nothing done
==================  =====  =======================================================================

The adapter reads every one of them but a 429 and the latencies as "the outcome is unknown"
(``BrokerTimeout``): a submit stays in flight until a query by client order id settles it, and an
order the venue never saw is sent once more under the same client order id (Alpaca refuses a reused
one, so this cannot duplicate), and rejected (``UNKNOWN_AT_BROKER``) only if that resend is lost too.
So the faults that lose the request (swallowed, reset, 503: 0.30 of the mix) cost an order only when
they hit it twice; a 429 is sent again after its ``Retry-After``. (The downstream ``timeout`` toxic does not hold the connection open until its timeout: the
fake closes each connection after its answer, and Toxiproxy closes the client's side as soon as the
venue's side ends. A submit answered after the client's 10 s read timeout takes the same path in
the OMS and is tested in ``tests/unit/trading/test_alpaca_broker.py``.)

After the stream the faults stop, the pod reconciles (its housekeeping every 0.2 s), is stopped,
and its journal is compared with the venue:

- sent: orders the OMS made from the signals; accepted: those the venue holds (by client order id);
- duplicates: venue orders beyond one per (signal, leg), and venue orders the journal does not know;
- lost fills: the venue's fill activities missing from the journal, plus journal fills the venue
  never made; position mismatches: instruments whose journal position differs from the venue's;
- unsettled: journal orders not in a final state;
- signal→submit latency: from the client sending the signal to the arrival at the venue of the
  POST that placed its order (signal API, risk, journal fsync, the proxy, and any resend of a 429).

Each rate prints one row, then the ratios of its latency percentiles to the 0 % run's (run first in
the same process). The binary is built by ``hack/build-k8s.sh toxiproxy``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal as signals
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from kubequant.workloads.trading.execution.journal import Journal
from kubequant.workloads.trading.model.events import (
    OrderCreated,
    OrderFilled,
    OrderRejected,
    RiskStateChanged,
)
from kubequant.workloads.trading.model.state import OmsState

REPO = Path(__file__).resolve().parents[1]
# The fake Alpaca and the Toxiproxy driver are test helpers, beside the adapter's unit tests.
_HELPERS = str(REPO / "tests" / "unit" / "trading")
if _HELPERS not in sys.path:
    sys.path.insert(0, _HELPERS)

import alpaca_fake  # noqa: E402
import toxiproxy_server  # noqa: E402
from toxiproxy_server import Toxic, Toxiproxy  # noqa: E402

TOKEN = "broker-faults-token"
SYMBOLS = ("AAPL", "MSFT", "TSLA", "SPY")
PRICES = {"AAPL": "172.78", "MSFT": "410.10", "TSLA": "180.05", "SPY": "510.25", "BRK.B": "410.00"}
PROXY = "alpaca"
TICK_SECONDS = 0.2
SETTLE_SECONDS = 30.0

# The mix of one unit of fault rate: (name, share).
MIX = (
    ("latency", 0.20),
    ("slow", 0.10),
    ("answer-dropped", 0.15),
    ("answer-reset", 0.10),
    ("request-swallowed", 0.15),
    ("request-reset", 0.10),
    ("5xx", 0.10),
    ("429", 0.10),
)

SESSION = """\
apiVersion: kubequant.io/v1alpha1
kind: LiveTradingSession
metadata: {{name: broker-faults}}
spec:
  mode: paper
  account: "010203ABCD"
  broker:
    type: alpaca
    credentialsSecretRef: {{name: alpaca-keys}}
    endpoint: {trading}
    marketDataEndpoint: {market}
  data: {{region: us}}
  riskPolicyRef: {{name: broker-faults}}
  universe: {{instruments: [{symbols}]}}
  timezone: America/New_York
  strategy: {{signalApi: {{}}}}
---
apiVersion: kubequant.io/v1alpha1
kind: RiskPolicy
metadata: {{name: broker-faults}}
spec:
  limits: {{maxOrderQuantity: 1000}}
  brokerDisconnect: {{gracePeriodSeconds: {grace}, action: {action}}}
"""


def toxics(rate: float) -> list[Toxic]:
    """Toxiproxy's share of the fault mix at ``rate``."""
    share = dict(MIX)
    return [
        Toxic(
            "latency", "latency", "downstream", rate * share["latency"], (("latency", 250), ("jitter", 100))
        ),
        Toxic(
            "slow",
            "slicer",
            "downstream",
            rate * share["slow"],
            (("average_size", 32), ("size_variation", 16), ("delay", 10_000)),
        ),
        Toxic("answer-dropped", "timeout", "downstream", rate * share["answer-dropped"], (("timeout", 800),)),
        Toxic("answer-reset", "reset_peer", "downstream", rate * share["answer-reset"], (("timeout", 0),)),
        Toxic(
            "request-swallowed", "timeout", "upstream", rate * share["request-swallowed"], (("timeout", 800),)
        ),
        Toxic("request-reset", "reset_peer", "upstream", rate * share["request-reset"], (("timeout", 0),)),
    ]


def inject(proxy: Toxiproxy, fake: Any, rate: float, seed: int) -> None:
    """Start the fault mix at ``rate``: Toxiproxy's toxics and the fake's 5xx and 429."""
    proxy.clear(PROXY)
    if rate > 0:
        for toxic in toxics(rate):
            proxy.add(PROXY, toxic)
    share = dict(MIX)
    fake.set_faults(server_errors=rate * share["5xx"], rate_limits=rate * share["429"], seed=seed)


def stop_faults(proxy: Toxiproxy, fake: Any) -> None:
    proxy.clear(PROXY)
    fake.set_faults()


class Pod:
    """The trading pod program on loopback, its output kept (for failures)."""

    def __init__(self, session: Path, state: Path, secrets: Path, token_file: Path) -> None:
        cmd = [sys.executable, "-m", "kubequant.workloads.trading.node.runtime", "--session", str(session)]
        cmd += ["--state-dir", str(state), "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--token-file", str(token_file), "--secrets-dir", str(secrets)]
        cmd += ["--tick-seconds", str(TICK_SECONDS)]
        self.journal = state / "journal.sqlite"
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
        if not listening.wait(120) or not self.port:
            self.kill()
            raise RuntimeError(f"the pod never listened:\n{self.output()}")

    def output(self) -> str:
        return "".join(self.lines)

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {TOKEN}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def wait_ready(self, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if self.call("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the pod never became ready:\n{self.output()}")

    def status(self) -> dict[str, Any]:
        return dict(self.call("GET", "/v1/status")[1])

    def orders(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/v1/orders")[1]["orders"])

    def positions(self) -> dict[str, Decimal]:
        rows = self.call("GET", "/v1/positions")[1]["positions"]
        return {p["instrument"]: Decimal(p["quantity"]) for p in rows if Decimal(p["quantity"])}

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signals.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@dataclass
class Venue:
    """The fake Alpaca behind a Toxiproxy proxy, and the pod trading through it."""

    fake: Any
    proxy: Toxiproxy
    pod: Pod
    folder: Path


@contextmanager
def venue(
    folder: Path, binary: Path, *, seed: int = 0, grace: int = 30, action: str = "reduceOnly"
) -> Iterator[Venue]:
    """A clean fake account, a Toxiproxy proxy in front of its Trading API, and a ready pod trading through it."""
    folder.mkdir(parents=True, exist_ok=True)
    fake = alpaca_fake.FakeAlpaca()
    fake.positions = []  # a clean account: the pod starts without adopting anything
    fake.last_trades = {s: Decimal(p) for s, p in PRICES.items()}
    fake.fill_market_orders = True
    with alpaca_fake.serve(fake), Toxiproxy(binary, seed=seed, log_path=folder / "toxiproxy.log") as proxy:
        upstream = fake.url.removeprefix("http://")
        trading = proxy.proxy(PROXY, upstream)
        session = folder / "session.yaml"
        session.write_text(
            SESSION.format(
                trading=trading, market=fake.url, symbols=", ".join(SYMBOLS), grace=grace, action=action
            )
        )
        secrets = folder / "alpaca-keys"
        secrets.mkdir(exist_ok=True)
        (secrets / "api-key-id").write_text(alpaca_fake.KEY + "\n")
        (secrets / "api-secret-key").write_text(alpaca_fake.SECRET + "\n")
        token_file = folder / "token"
        token_file.write_text(TOKEN)
        pod = Pod(session, folder / "volume", secrets, token_file)
        try:
            pod.wait_ready()
            yield Venue(fake, proxy, pod, folder)
        finally:
            pod.kill()


@dataclass
class Outcome:
    """What one run at one fault rate measured."""

    rate: float
    signals: int = 0
    sent: int = 0  # orders the OMS made from the signals
    accepted: int = 0  # of those, orders the venue holds
    duplicates: int = 0
    refused_resends: int = 0  # POSTs the venue refused as a duplicate client order id (422)
    lost_fills: int = 0
    position_mismatches: int = 0
    unsettled: int = 0
    in_flight: int = 0  # submits whose outcome was unknown (settled later by a query)
    resent: int = 0  # submits sent again after a refusal that proved nothing was done (429)
    rejected: Counter[str] = field(default_factory=Counter)  # the journal's rejections by reason code
    states: list[str] = field(default_factory=list)  # the trading states the journal went through
    latencies: list[float] = field(default_factory=list)  # seconds, signal sent -> POST at the venue
    answers: list[float] = field(default_factory=list)  # seconds, signal sent -> the signal API's answer
    injected: Counter[str] = field(default_factory=Counter)  # the fake's HTTP faults by kind
    seconds: float = 0.0
    settle_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.accepted / self.sent if self.sent else 0.0

    def percentile(self, q: float, of: list[float] | None = None) -> float:
        values = self.latencies if of is None else of
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def targets(worker: int, count: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Worker ``worker``'s signals: its own instrument, a target one share above the last, so each signal buys.

    Only buys: a sell sized from a buy the venue filled but the pod has not heard of yet would be
    refused by the risk engine as a short sale (a valid refusal, but not the broker's doing).
    """
    symbol = SYMBOLS[worker % len(SYMBOLS)]
    for k in range(count):
        quantity = k + 1
        yield (
            f"w{worker}-{k}",
            {"id": f"w{worker}-{k}", "targets": [{"instrument": symbol, "quantity": quantity}]},
        )


def send_stream(
    pod: Pod, signals_total: int, workers: int
) -> tuple[dict[str, float], list[float], list[str]]:
    """Send the signals from ``workers`` threads; (signal id -> time sent, answer times, problems)."""
    sent: dict[str, float] = {}
    answers: list[float] = []
    problems: list[str] = []
    lock = threading.Lock()
    per = [signals_total // workers + (1 if w < signals_total % workers else 0) for w in range(workers)]

    def work(w: int) -> None:
        for sid, body in targets(w, per[w]):
            started = time.monotonic()
            with lock:
                sent[sid] = started
            try:
                code, answer = pod.call("POST", "/v1/signals", body)
            except OSError as err:
                with lock:
                    problems.append(f"signal {sid}: {err}")
                continue
            with lock:
                answers.append(time.monotonic() - started)
            if code != 202:
                with lock:
                    problems.append(f"signal {sid}: {code} {answer}")

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent, answers, problems


def venue_positions(fake: Any) -> dict[str, Decimal]:
    with fake.lock:
        return {
            p["symbol"].strip(): Decimal(p["qty"]) * (-1 if p["side"] == "short" else 1)
            for p in fake.positions
            if Decimal(p["qty"])
        }


def settled(pod: Pod, fake: Any) -> bool:
    """Every journal order final and the pod's positions equal to the venue's."""
    orders = pod.orders()
    final = {"filled", "canceled", "rejected", "expired"}
    return all(o["status"] in final for o in orders) and pod.positions() == venue_positions(fake)


def measure(v: Venue, rate: float, signals_total: int, workers: int, seed: int) -> Outcome:
    """Send the stream at ``rate``, stop the faults, let the pod reconcile, stop it, compare with the venue."""
    out = Outcome(rate)
    fake, pod = v.fake, v.pod
    inject(v.proxy, fake, rate, seed)
    started = time.monotonic()
    sent_at, out.answers, out.problems = send_stream(pod, signals_total, workers)
    out.seconds = time.monotonic() - started
    out.signals = len(sent_at)
    stop_faults(v.proxy, fake)
    with fake.lock:
        out.injected = Counter(
            f"{kind} {method} {route}" for (kind, method, route), n in fake.injected.items() for _ in range(n)
        )
    settle_start = time.monotonic()
    deadline = settle_start + SETTLE_SECONDS
    while time.monotonic() < deadline and not settled(pod, fake):
        time.sleep(TICK_SECONDS)
    out.settle_seconds = time.monotonic() - settle_start
    code = pod.terminate()
    if code != 0:
        out.problems.append(f"the pod exited {code}:\n{pod.output()[-4000:]}")
    log = pod.output()
    out.in_flight = log.count("it stays in flight until a query resolves it")
    out.resent = sum(1 for line in log.splitlines() if "submit kq-" in line and "; retrying in" in line)
    compare(out, pod.journal, fake, sent_at)
    return out


def compare(out: Outcome, journal_path: Path, fake: Any, sent_at: dict[str, float]) -> None:
    """Fill ``out`` from the journal (the pod stopped) and the venue."""
    journal = Journal(journal_path)
    try:
        events = journal.events()
    finally:
        journal.close()
    state = OmsState.rebuild(events)
    created = {e.client_order_id: e for e in events if isinstance(e, OrderCreated) and not e.external}
    journal_fills = {e.fill.fill_id for e in events if isinstance(e, OrderFilled) and e.fill is not None}
    with fake.lock:
        venue_orders = list(fake.orders.values())
        venue_fills = {a["id"] for a in fake.activities}
        placed_at = dict(fake.placed_at)
        bodies = list(fake.bodies)
    by_cid = {o["client_order_id"]: o for o in venue_orders}
    out.sent = len(created)
    out.accepted = sum(1 for cid in created if cid in by_cid)
    per_leg = Counter(
        (created[o["client_order_id"]].signal_id, created[o["client_order_id"]].leg)
        for o in venue_orders
        if o["client_order_id"] in created
    )
    unknown = sum(1 for o in venue_orders if o["client_order_id"] not in created)
    out.duplicates = sum(n - 1 for n in per_leg.values()) + unknown
    posted = Counter(b["client_order_id"] for b in bodies)
    out.refused_resends = sum(n - 1 for n in posted.values())
    out.lost_fills = len(venue_fills - journal_fills) + len(journal_fills - venue_fills)
    here = {k: v for k, v in state.position_quantities().items() if v}
    there = venue_positions(fake)
    out.position_mismatches = sum(1 for s in set(here) | set(there) if here.get(s) != there.get(s))
    out.unsettled = sum(1 for o in state.orders.values() if not o.is_terminal)
    out.rejected = Counter(e.reason for e in events if isinstance(e, OrderRejected))
    out.states = [e.state for e in events if isinstance(e, RiskStateChanged)]
    for cid, event in created.items():
        if cid in placed_at and event.signal_id in sent_at:
            out.latencies.append(placed_at[cid] - sent_at[event.signal_id])


def fault_totals(outcome: Outcome) -> str:
    kinds: Counter[str] = Counter()
    for key, n in outcome.injected.items():
        kinds[key.split(" ", 1)[0]] += n
    return ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())) or "none"


def _ms(o: Outcome, values: list[float]) -> str:
    top = max(values, default=float("nan"))
    return (
        f"{o.percentile(0.5, values) * 1e3:>7.1f} {o.percentile(0.99, values) * 1e3:>7.1f} {top * 1e3:>7.1f}"
    )


def table(outcomes: list[Outcome]) -> str:
    """The figures of each rate, then each rate's latencies against the 0 % run's."""
    head = (
        f"{'faults':>6} {'sent':>5} {'accepted':>8} {'success':>8} {'dups':>4} {'lost fills':>10} "
        f"{'pos diff':>8} {'unsettled':>9} | signal->submit ms: {'p50':>5} {'p99':>7} {'max':>7} "
        f"| signal->answer ms: {'p50':>5} {'p99':>7} {'max':>7} | {'run s':>5} {'settle s':>8}"
    )
    rows = [head, "-" * len(head)]
    for o in outcomes:
        rows.append(
            f"{o.rate:>6.0%} {o.sent:>5} {o.accepted:>8} {o.success_rate:>8.2%} {o.duplicates:>4} "
            f"{o.lost_fills:>10} {o.position_mismatches:>8} {o.unsettled:>9} | {'':>17} {_ms(o, o.latencies)} "
            f"| {'':>17} {_ms(o, o.answers)} | {o.seconds:>5.1f} {o.settle_seconds:>8.1f}"
        )
    base = next((o for o in outcomes if o.rate == 0), None)
    if base is not None and base.latencies and base.answers:
        rows += ["", "against the 0 % run (same process):"]
        for o in outcomes:
            if o is base or not o.latencies or not o.answers:
                continue
            ratios = []
            for name, mine, ref in (
                ("submit", o.latencies, base.latencies),
                ("answer", o.answers, base.answers),
            ):
                ratios.append(
                    f"{name} p50 x{o.percentile(0.5, mine) / o.percentile(0.5, ref):.2f} "
                    f"p99 x{o.percentile(0.99, mine) / o.percentile(0.99, ref):.2f} "
                    f"max x{max(mine) / max(ref):.2f}"
                )
            rows.append(
                f"  {o.rate:>4.0%}: success {o.success_rate - base.success_rate:+.2%}; " + "; ".join(ratios)
            )
    rows += [
        "",
        "HTTP faults the fake injected (Toxiproxy draws its own per connection; they are not counted):",
    ]
    for o in outcomes:
        rows.append(
            f"  {o.rate:>4.0%}: {fault_totals(o)}; refused resends (422 duplicate id): {o.refused_resends}"
        )
    rows += [
        "",
        "what the pod saw: submits in flight (outcome unknown, settled by a query), sent again, rejections:",
    ]
    for o in outcomes:
        rejected = ", ".join(f"{k}: {n}" for k, n in sorted(o.rejected.items())) or "none"
        rows.append(f"  {o.rate:>4.0%}: in flight {o.in_flight}, sent again {o.resent}, rejected {rejected}")
    return "\n".join(rows)


def run(rate: float, orders: int, workers: int, seed: int, binary: Path, folder: Path) -> Outcome:
    """One fresh account, Toxiproxy and pod; the stream at ``rate``."""
    with venue(folder, binary, seed=seed) as v:
        return measure(v, rate, orders, workers, seed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--orders", type=int, default=2000, help="signals per rate (one order each)")
    p.add_argument(
        "--rates", default="0,0.01,0.05", help="fault rates, comma-separated (0 first: the reference)"
    )
    p.add_argument("--workers", type=int, default=4, help="concurrent signal clients (one instrument each)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    binary = toxiproxy_server.find_binary()
    if binary is None:
        print(toxiproxy_server.missing_reason(), file=sys.stderr)
        return 2
    rates = [float(r) for r in args.rates.split(",")]
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="broker-faults-") as tmp:
        for i, rate in enumerate(rates):
            outcome = run(rate, args.orders, args.workers, args.seed + i, binary, Path(tmp) / f"run{i}")
            for problem in outcome.problems:
                print(f"[{rate:.0%}] {problem}", file=sys.stderr)
            outcomes.append(outcome)
    print(
        f"broker faults: {args.orders} signals per rate, {args.workers} clients, pod housekeeping every "
        f"{TICK_SECONDS}s, load {os.getloadavg()[0]:.2f}"
    )
    print(table(outcomes))
    return 0 if all(not o.problems for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
