"""Soak: a paper session replayed over a year of bars at speed, signals at a steady rate through faults.

    .venv/bin/python benchmarks/soak.py [--days 250] [--rate 20] [--fault-rate 0.01] [--bar-seconds 1] [--json]

What runs, and why this way. The replay deals historical bars on the paper broker only: the runtime
refuses ``spec.replay`` on an Alpaca session (``refuse_paper_only``), so an Alpaca-adapter session
cannot be replayed over a year of bars, and the broker-fault path of ``benchmarks/broker_faults.py``
is not the one soaked here. Instead the faults sit where a paper session meets the outside world:
in front of its signal API. The process is the trading pod's program
(``python -m kubequant.workloads.trading.node.runtime``), the one a LiveTradingSession's pod runs
7×24, on a paper session with ``spec.replay`` (``period`` = ``--days`` trading days of the sample
bundle, ``speed`` = one bar every ``--bar-seconds``): its own timers deal the bars, run the
housekeeping every 0.2 s (policy and kill switch files, fills, order statuses, account, data age
and quality, ``gc.freeze``) and serve the signal API, with the real OMS, risk engine and SQLite
journal. (``kubequant run --replay`` builds on the same ``TradingRuntime`` but runs housekeeping
once per bar inside the CLI process; the pod program is what must stay up for a year.)

One client sends signals at ``--rate`` per second (paced on a schedule; a late one is sent at once)
through a real Toxiproxy (``tests/unit/trading/toxiproxy_server.py``) whose toxics are the
Toxiproxy part of ``broker_faults.MIX`` (latency, slow answer, answer dropped, answer reset, request
swallowed, request reset), rescaled so that about ``--fault-rate`` of the connections meet one.
Signal ``k`` targets one more lot of instrument ``k mod N``, so every signal is one buy. A request
that fails (a reset, a closed connection, a timeout, a 5xx or a 429) is sent again with the same
id and payload, as a client must: the API answers a signal it already took with its orders and
``duplicate: true``, and places nothing twice.

Sampled once per simulated week (the bar the pod reports in ``kubequant_last_bar_timestamp_seconds``):
the pod's RSS (``/proc/PID/status``), open file descriptors (``/proc/PID/fd``), the journal's size
(``journal.sqlite`` + ``-wal``; and per journal event, since an event-sourced journal grows with
what it records), the signal latency p50/p99 inside the pod (signal received → order handed to
the venue: the week's increase of its ``kubequant_signal_to_submit_seconds`` histogram, interpolated
in the bucket as Prometheus' ``histogram_quantile`` does) and at the client (send → 2xx, through the
faults, retries included). At the end each series' linear trend after a warm-up (the first 10 % of
weeks) is given as growth in % of its fitted start over the run, against the goal "no growth trend
beyond 10 %" (not applied to the journal's raw size, nor to the client's weekly p99, which is the
week's one or two slowest signals: mostly one that met a fault), and the journal is compared with the venue's own record (``paper-broker.sqlite``): no crash (the pod exits 0 on
SIGTERM), every signal answered, one SignalReceived per signal, no lost order (every order the
journal submitted is at the venue, nothing at the venue the journal lacks), no duplicate (one
submission per client order id), fills and positions equal.

``--operator`` with a reachable cluster (``KUBECONFIG`` or ``.dev-cluster/kubeconfig``) also runs
``kubequant operator --standalone`` (as ``benchmarks/operator_latency.py`` does) and creates a
suspended Backtest every ``--backtest-seconds`` in a namespace of its own, counting those whose Job
appeared, and samples the operator's RSS per week too; without a cluster it says so and goes on.
``tests/integration/trading/test_soak_short.py`` runs a few simulated weeks of this with the same code.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import math
import os
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import broker_faults
from broker_faults import Pod

from kubequant.workloads.trading.execution.journal import Journal
from kubequant.workloads.trading.model.events import (
    OrderCreated,
    OrderRejected,
    OrderSubmitted,
    SignalReceived,
)
from kubequant.workloads.trading.model.state import OmsState

REPO = Path(__file__).resolve().parents[1]
_HELPERS = str(REPO / "tests" / "unit" / "trading")
if _HELPERS not in sys.path:
    sys.path.insert(0, _HELPERS)

import toxiproxy_server  # noqa: E402
from toxiproxy_server import Toxic, Toxiproxy  # noqa: E402

PROXY = "signal-api"
GOAL_GROWTH = 0.10  # no growth trend beyond 10 % after warm-up
WARMUP = 0.10  # the first 10 % of the weeks
LOT = 100  # the sample bundle is region cn: 100 shares a lot
TIMEZONE = "Asia/Shanghai"  # the session's spec.timezone: the zone of the bar timestamps the pod reports
ATTEMPTS = 30  # sends of one signal before the client gives up (each failure is a fault met)

SESSION = """\
apiVersion: kubequant.io/v1alpha1
kind: LiveTradingSession
metadata: {{name: soak}}
spec:
  account: paper-soak
  riskPolicyRef: {{name: soak}}
  data: {{path: {bundle}}}
  startingCash: 10000000000
  exchange: {{openCost: 0.0005, closeCost: 0.0015, minCost: 5}}
  timezone: {tz}
  replay: {{period: "{start}..{end}", speed: {speed}}}
  strategy: {{signalApi: {{}}}}
---
apiVersion: kubequant.io/v1alpha1
kind: RiskPolicy
metadata: {{name: soak}}
spec:
  limits: {{maxOrderQuantity: 100000}}
"""


@dataclass(frozen=True)
class SoakConfig:
    """One soak run: how many bars, how fast, how many signals, how many faults."""

    days: int = 250
    rate: float = 20.0  # signals per second from the client
    fault_rate: float = 0.01  # share of the client's connections that meet a fault
    bar_seconds: float = 1.0  # wall seconds per trading day (spec.replay.speed = 86400 / this)
    seed: int = 1
    operator: bool = False
    backtest_seconds: float = 2.0

    def check(self, calendar_days: int) -> None:
        """Refuse a run that cannot be made, naming the option and the fix."""
        if self.days < 10:
            raise SystemExit("--days must be at least 10 (two simulated weeks): set --days 10 or more")
        if self.days > calendar_days:
            raise SystemExit(f"--days {self.days}: the bundle has {calendar_days} days: set --days ≤ that")
        if not 0 < self.rate <= 1000:
            raise SystemExit(f"--rate {self.rate}: set a rate in (0, 1000] signals per second")
        if not 0 <= self.fault_rate <= 0.5:
            raise SystemExit(f"--fault-rate {self.fault_rate}: set a share in [0, 0.5]")
        if self.bar_seconds < 0.05:
            raise SystemExit(f"--bar-seconds {self.bar_seconds}: set 0.05 or more")


@dataclass
class Week:
    """One simulated week's sample."""

    week: str  # ISO year-week of its bars
    bars: int  # bars dealt so far
    wall_s: float  # seconds since the stream started
    rss_mb: float
    fds: int
    sockets: int  # of the fds: sockets (the API's connections, the listener)
    journal_bytes: int  # journal.sqlite + journal.sqlite-wal
    wal_bytes: int
    events: int  # journal events so far
    signals: int  # signals answered in the week
    p50_ms: float  # the client's: send -> 2xx, through the faults, retries included
    p99_ms: float
    pod_p50_ms: float  # the pod's own: signal received -> order handed to the venue (its histogram)
    pod_p99_ms: float
    retried: int  # signals of the week sent more than once
    operator_rss_mb: float | None = None
    # The pod's CPU time (user + system) in the week per signal answered, ms: its bars' housekeeping
    # included, which is the same every week. Unlike a latency, the machine's other load barely moves it.
    pod_cpu_ms_per_signal: float = float("nan")

    @property
    def bytes_per_event(self) -> float:
        return self.journal_bytes / self.events if self.events else float("nan")


@dataclass
class Trend:
    """A series' linear trend after warm-up, as growth over the run in % of the fitted start."""

    name: str
    first: float
    last: float
    growth: float  # fraction
    why: str = ""  # why the 10 % goal does not apply to it; empty: it applies

    @property
    def judged(self) -> bool:
        return not self.why

    @property
    def ok(self) -> bool:
        return not self.judged or not math.isfinite(self.growth) or self.growth <= GOAL_GROWTH


@dataclass
class Ledger:
    """The journal against the venue's own record (the paper broker's file), after the pod stopped."""

    signals_sent: int = 0
    signals_answered: int = 0
    signals_journaled: int = 0
    signals_journaled_twice: int = 0
    signals_missing: int = 0  # answered 2xx but no SignalReceived in the journal
    orders: int = 0  # orders the journal made from signals
    submitted: int = 0  # of those, sent to the venue
    at_venue: int = 0  # of those, in the venue's record
    lost: int = 0  # submitted orders the venue lacks
    unknown_at_venue: int = 0  # venue orders the journal does not know
    duplicates: int = 0  # submissions beyond one per client order id
    fill_mismatches: int = 0  # orders whose filled quantity differs between journal and venue
    position_mismatches: int = 0
    fills: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # the journal's rejections by reason

    @property
    def clean(self) -> bool:
        return (
            self.signals_answered == self.signals_sent
            and self.signals_missing == 0
            and self.signals_journaled_twice == 0
            and self.lost == 0
            and self.unknown_at_venue == 0
            and self.duplicates == 0
            and self.fill_mismatches == 0
            and self.position_mismatches == 0
        )


@dataclass
class SoakResult:
    """What one soak run measured."""

    config: SoakConfig
    period: str
    weeks: list[Week] = field(default_factory=list)
    trends: list[Trend] = field(default_factory=list)
    ledger: Ledger = field(default_factory=Ledger)
    exit_code: int | None = None
    attempts: int = 0  # sends, retries included
    failures: Counter[str] = field(default_factory=Counter)  # what the client met, by kind
    run_s: float = 0.0
    operator: str = "not asked (--operator)"
    # --operator: Backtests created beside the soak, those with their Job, those with a status phase.
    backtests: tuple[int, int, int] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.exit_code == 0 and self.ledger.clean and not self.problems and all(t.ok for t in self.trends)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "period": self.period,
            "weeks": [asdict(w) | {"bytes_per_event": w.bytes_per_event} for w in self.weeks],
            "trends": [asdict(t) | {"ok": t.ok, "judged": t.judged} for t in self.trends],
            # asdict would rebuild a Counter from its (key, count) pairs: the ledger's rejections go as a dict.
            "ledger": asdict(self.ledger)
            | {"rejected": dict(self.ledger.rejected), "clean": self.ledger.clean},
            "exit_code": self.exit_code,
            "attempts": self.attempts,
            "failures": dict(self.failures),
            "run_s": self.run_s,
            "operator": self.operator,
            "backtests": self.backtests,
            "problems": self.problems,
            "ok": self.ok,
            "load_average": os.getloadavg(),
        }


# --- the pieces -------------------------------------------------------------------------------------


def calendar(bundle: Path) -> list[str]:
    """The bundle's trading days (YYYY-MM-DD)."""
    return [
        line.strip() for line in (bundle / "calendars" / "day.txt").read_text().splitlines() if line.strip()
    ]


def instruments(bundle: Path) -> list[str]:
    """The bundle's instruments."""
    rows = (bundle / "instruments" / "all.txt").read_text().splitlines()
    return [row.split("\t")[0] for row in rows if row.strip()]


def period_days(bundle: Path, days: int) -> list[str]:
    """``days`` trading days of the bundle, ending at its last day (the most history before them)."""
    cal = calendar(bundle)
    return cal[-days:]


def fault_toxics(rate: float) -> list[Toxic]:
    """broker_faults' Toxiproxy toxics (its fake's 5xx and 429 have no place here), rescaled to sum to ``rate``."""
    base = broker_faults.toxics(1.0)
    total = sum(t.toxicity for t in base)
    return [Toxic(t.name, t.type, t.stream, rate * t.toxicity / total, t.attributes) for t in base]


def rss_mb(pid: int) -> float:
    """A process's resident set (VmRSS), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far, user + system (its threads included), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> tuple[int, int]:
    """A process's open file descriptors: all of them, and the sockets among them."""
    total = sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        total += 1
        with contextlib.suppress(OSError):  # closed since it was listed
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return total, sockets


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def journal_events(path: Path) -> int:
    """Events in the journal so far, read beside the writer (WAL readers do not block it)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return 0
    try:
        return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        db.close()


def percentile_ms(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def trend(name: str, values: list[float], why: str = "") -> Trend:
    """Theil–Sen line through the values after the warm-up; growth = (fit at end - fit at start) / fit at start.

    The median of the pairwise slopes, not least squares: a week's p99 is its one or two slowest signals,
    and a single slow week would otherwise tilt the whole line (one such week read as +42 % growth).
    """
    from scipy.stats import theilslopes

    points = [(i, v) for i, v in enumerate(values) if math.isfinite(v)]
    skip = max(1, math.ceil(len(points) * WARMUP)) if len(points) > 3 else 0
    points = points[skip:]
    if len(points) < 2:
        return Trend(name, float("nan"), float("nan"), float("nan"), why)
    xs, ys = [x for x, _ in points], [y for _, y in points]
    slope, intercept = (float(v) for v in theilslopes(ys, xs)[:2])
    start = intercept + slope * xs[0]
    end = intercept + slope * xs[-1]
    growth = (end - start) / abs(start) if start else float("inf") if end > start else 0.0
    return Trend(name, points[0][1], points[-1][1], growth, why)


def trends(weeks: list[Week]) -> list[Trend]:
    """Each series' trend; the journal's raw size grows with its events by design, so its size per event is judged."""
    out = [
        trend("RSS MB", [w.rss_mb for w in weeks]),
        trend("open fds", [float(w.fds) for w in weeks]),
        trend("journal bytes", [float(w.journal_bytes) for w in weeks], "grows with its events by design"),
        trend("journal bytes/event", [w.bytes_per_event for w in weeks]),
        trend("WAL bytes", [float(w.wal_bytes) for w in weeks]),
        trend("pod p50 ms", [w.pod_p50_ms for w in weeks]),
        trend("pod p99 ms", [w.pod_p99_ms for w in weeks]),
        trend("client p50 ms", [w.p50_ms for w in weeks]),
        trend("client p99 ms", [w.p99_ms for w in weeks], "a week's 1-2 slowest signals: mostly a fault met"),
        trend("pod CPU ms/signal", [w.pod_cpu_ms_per_signal for w in weeks]),
    ]
    if any(w.operator_rss_mb is not None for w in weeks):
        out.append(trend("operator RSS MB", [w.operator_rss_mb or float("nan") for w in weeks]))
    return out


class Client:
    """One signal client on a schedule: signal k due at k / rate; each sent again until it gets a 2xx."""

    def __init__(self, url: str, token: str, names: list[str], rate: float) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port, self.token = host, int(port), token
        self.names, self.rate = names, rate
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.records: list[tuple[float, float, int]] = []  # (answered at, latency s, attempts)
        self.answered: dict[str, int] = {}  # signal id -> final status
        self.sent = 0
        self.attempts = 0
        self.failures: Counter[str] = Counter()
        self.problems: list[str] = []
        self.thread = threading.Thread(target=self._run, name="soak client", daemon=True)

    def body(self, k: int) -> dict[str, Any]:
        name = self.names[k % len(self.names)]
        lots = k // len(self.names) + 1
        return {"id": f"soak-{k:07d}", "targets": [{"instrument": name, "quantity": lots * LOT}]}

    def post(self, raw: bytes) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            headers = {
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Connection": "close",  # one request per connection: Toxiproxy draws its faults per connection
            }
            conn.request("POST", "/v1/signals", raw, headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def send(self, k: int) -> None:
        body = self.body(k)
        raw = json.dumps(body).encode()
        started = time.monotonic()
        for attempt in range(1, ATTEMPTS + 1):
            with self.lock:
                self.attempts += 1
            try:
                status, answer = self.post(raw)
            except (OSError, http.client.HTTPException) as err:
                with self.lock:
                    self.failures[type(err).__name__] += 1
                time.sleep(0.02)
                continue
            if status >= 500 or status == 429:
                with self.lock:
                    self.failures[f"HTTP {status}"] += 1
                time.sleep(0.05)
                continue
            done = time.monotonic()
            with self.lock:
                self.answered[body["id"]] = status
                self.records.append((done, done - started, attempt))
                if status not in (200, 202):
                    self.problems.append(f"signal {body['id']}: {status} {answer[:300]!r}")
            return
        with self.lock:
            self.problems.append(f"signal {body['id']}: no answer after {ATTEMPTS} sends")

    def _run(self) -> None:
        t0 = time.monotonic()
        k = 0
        while not self.stop.is_set():
            due = t0 + k / self.rate
            wait = due - time.monotonic()
            if wait > 0 and self.stop.wait(wait):
                break
            self.send(k)
            k += 1
            with self.lock:
                self.sent = k

    def since(self, cut: int) -> tuple[list[tuple[float, float, int]], int]:
        with self.lock:
            return self.records[cut:], len(self.records)


def scrape(pod: Pod) -> str:
    """The pod's /metrics, straight from its port (not through the proxy)."""
    conn = http.client.HTTPConnection("127.0.0.1", pod.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def bar_gauge(text: str) -> float | None:
    """The pod's newest bar: kubequant_last_bar_timestamp_seconds."""
    for line in text.splitlines():
        if line.startswith("kubequant_last_bar_timestamp_seconds "):
            return float(line.split()[1])
    return None


SUBMIT_BUCKET = "kubequant_signal_to_submit_seconds_bucket{le="


def submit_buckets(text: str) -> list[tuple[float, float]]:
    """kubequant_signal_to_submit_seconds' cumulative buckets: (upper bound s, count), ascending."""
    out = []
    for line in text.splitlines():
        if line.startswith(SUBMIT_BUCKET):
            bound, count = line[len(SUBMIT_BUCKET) :].split("}")
            out.append((float(bound.strip('"')), float(count)))
    return sorted(out)


def bucket_quantile(q: float, now: list[tuple[float, float]], before: list[tuple[float, float]]) -> float:
    """The q-quantile (ms) of what the histogram observed between two scrapes, interpolated in its bucket
    (as Prometheus' histogram_quantile); NaN when it observed nothing."""
    was = dict(before)
    cumulative = [(le, n - was.get(le, 0.0)) for le, n in now]
    if not cumulative or cumulative[-1][1] <= 0:
        return float("nan")
    rank = q * cumulative[-1][1]
    low, below = 0.0, 0.0
    for le, n in cumulative:
        if n >= rank:
            if math.isinf(le):
                return low * 1000  # past the last finite bound: that bound is all that is known
            return (low + (le - low) * ((rank - below) / (n - below) if n > below else 0.0)) * 1000
        low, below = le, n
    return low * 1000


def bar_day(gauge: float) -> str:
    """The trading day of a bar timestamp (the bundle's bar time in the session's zone, spec.timezone)."""
    return dt.datetime.fromtimestamp(gauge, ZoneInfo(TIMEZONE)).date().isoformat()


def iso_week(day: str) -> str:
    year, week, _ = dt.date.fromisoformat(day).isocalendar()
    return f"{year}-W{week:02d}"


class Operator:
    """``--operator``: the operator reconciling a stream of suspended Backtests beside the soak, if a cluster answers."""

    def __init__(self, folder: Path, every: float) -> None:
        self.folder, self.every = folder, every
        self.process: Any = None
        self.created = 0
        self.namespace = ""
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.core: Any = None

    def start(self) -> str:
        """Start it; a line saying what runs, or why it was skipped."""
        kubeconfig = os.environ.get("KUBECONFIG") or str(REPO / ".dev-cluster" / "kubeconfig")
        if not Path(kubeconfig).is_file():
            return (
                f"skipped: no cluster ({kubeconfig} does not exist; run `make dev-cluster` or set KUBECONFIG)"
            )
        try:
            import subprocess
            import uuid

            import operator_latency  # puts tests/e2e (OperatorProcess) on the path
            from kubernetes import client, config

            config.load_kube_config(kubeconfig)  # type: ignore[no-untyped-call]
            client.VersionApi().get_code(_request_timeout=5)
            bin_dir = subprocess.run(
                [str(REPO / "hack" / "build-k8s.sh"), "--print-bin-dir"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            subprocess.run(
                [
                    f"{bin_dir}/kubectl",
                    "--kubeconfig",
                    kubeconfig,
                    "apply",
                    "--server-side",
                    "-f",
                    str(REPO / "crds"),
                ],
                check=True,
                capture_output=True,
            )
            self.core = client.CoreV1Api()
            self.namespace = f"soak-{uuid.uuid4().hex[:6]}"
            self.core.create_namespace({"metadata": {"name": self.namespace}})
            self.process = operator_latency.OperatorProcess(Path(kubeconfig), self.folder / "operator.log")
            self.process.start()
        except Exception as err:  # a cluster that does not answer, or an operator that does not start
            self.close()
            return f"skipped: the cluster of {kubeconfig} did not answer or the operator did not start: {err}"
        # The Jobs are counted once, at the end (``settle``): listing them all while the soak runs cost
        # the API server and this process more with every Backtest, and lengthened the pod's tail.
        self.thread = threading.Thread(target=self._stream, args=(client.CustomObjectsApi(),), daemon=True)
        self.thread.start()
        return f"operator pid {self.process.proc.pid} reconciling a Backtest every {self.every}s in {self.namespace}"

    def _stream(self, custom: Any) -> None:
        import operator_latency

        k = 0
        while not self.stop.wait(self.every):
            name = f"soak-bt-{k:05d}"
            with contextlib.suppress(Exception):
                custom.create_namespaced_custom_object(
                    "kubequant.io",
                    "v1alpha1",
                    self.namespace,
                    "backtests",
                    operator_latency.backtest(name, True),
                )
                self.created += 1
            k += 1

    def settle(self, timeout: float = 60.0) -> tuple[int, int, int]:
        """Stop creating, then wait until every Backtest created has its Job and a status phase:
        (created, with a Job, with a phase) when they agree or ``timeout`` passes."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)
        jobs = phased = -1
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                from kubernetes import client

                jobs = len(client.BatchV1Api().list_namespaced_job(self.namespace).items)
                items = client.CustomObjectsApi().list_namespaced_custom_object(
                    "kubequant.io", "v1alpha1", self.namespace, "backtests"
                )["items"]
                phased = sum(1 for o in items if (o.get("status") or {}).get("phase"))
            if (jobs == phased == self.created) or time.monotonic() > deadline:
                return self.created, jobs, phased
            time.sleep(1.0)

    def rss(self) -> float | None:
        if self.process is None or self.process.proc is None:
            return None
        return rss_mb(self.process.proc.pid)

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)
        if self.process is not None:
            with contextlib.suppress(Exception):
                self.process.stop()
        if self.core is not None and self.namespace:
            with contextlib.suppress(Exception):
                self.core.delete_namespace(self.namespace)


# --- the run ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def pod_for(folder: Path, bundle: Path, days: list[str], bar_seconds: float) -> Iterator[Pod]:
    """The pod program on a paper session replaying ``days``, one bar every ``bar_seconds``, ready."""
    folder.mkdir(parents=True, exist_ok=True)
    session = folder / "session.yaml"
    speed = 86400 / bar_seconds
    session.write_text(SESSION.format(bundle=bundle, start=days[0], end=days[-1], speed=speed, tz=TIMEZONE))
    token_file = folder / "token"
    token_file.write_text(broker_faults.TOKEN)
    secrets = folder / "no-secrets"  # the paper broker has none
    secrets.mkdir(exist_ok=True)
    pod = Pod(session, folder / "volume", secrets, token_file)
    try:
        pod.wait_ready()
        yield pod
    finally:
        pod.kill()


def run(cfg: SoakConfig, bundle: Path, folder: Path, binary: Path | None, progress: Any = None) -> SoakResult:
    """One soak: the pod, the proxy, the client and the sampler; then the journal against the venue."""
    folder.mkdir(parents=True, exist_ok=True)
    days = period_days(bundle, cfg.days)
    names = instruments(bundle)
    result = SoakResult(cfg, f"{days[0]}..{days[-1]}")
    say = progress or (lambda line: None)
    operator = Operator(folder, cfg.backtest_seconds) if cfg.operator else None
    with contextlib.ExitStack() as stack:
        if operator is not None:  # up before the pod's bars start to run
            result.operator = operator.start()
            stack.callback(operator.close)
            say(f"operator: {result.operator}")
        proxy = None
        if cfg.fault_rate > 0:
            if binary is None:
                raise SystemExit(toxiproxy_server.missing_reason())
            proxy = stack.enter_context(Toxiproxy(binary, seed=cfg.seed, log_path=folder / "toxiproxy.log"))
        pod = stack.enter_context(pod_for(folder / "pod", bundle, days, cfg.bar_seconds))
        pid = pod.proc.pid
        url = f"http://127.0.0.1:{pod.port}"
        if proxy is not None:
            url = proxy.proxy(PROXY, f"127.0.0.1:{pod.port}")
            for toxic in fault_toxics(cfg.fault_rate):
                proxy.add(PROXY, toxic)
        client = Client(url, broker_faults.TOKEN, names, cfg.rate)
        started = time.monotonic()
        client.thread.start()
        journal = folder / "pod" / "volume" / "journal.sqlite"
        wal = journal.with_name(journal.name + "-wal")
        last_gauge: float | None = None
        text = ""  # the latest scrape of the pod's /metrics
        buckets: list[tuple[float, float]] = []  # the submit histogram at the last week's close
        bars, cut = 0, 0
        cpu_before = [cpu_seconds(pid)]  # the pod's CPU time at the last week's close
        week = ""
        limit = started + cfg.days * cfg.bar_seconds * 3 + 120  # a pod far slower than its bars is a failure

        def sample(name: str) -> None:
            nonlocal cut, buckets
            now = submit_buckets(text)
            pod_p50, pod_p99 = bucket_quantile(0.5, now, buckets), bucket_quantile(0.99, now, buckets)
            buckets = now
            records, cut = client.since(cut)
            latencies = [r[1] for r in records]
            now_cpu = cpu_seconds(pid)
            cpu, cpu_before[0] = now_cpu - cpu_before[0], now_cpu
            fds, sockets = open_fds(pid)
            w = Week(
                week=name,
                bars=bars,
                wall_s=round(time.monotonic() - started, 2),
                rss_mb=round(rss_mb(pid), 1),
                fds=fds,
                sockets=sockets,
                journal_bytes=file_size(journal) + file_size(wal),
                wal_bytes=file_size(wal),
                events=journal_events(journal),
                signals=len(records),
                p50_ms=round(percentile_ms(latencies, 0.5), 2),
                p99_ms=round(percentile_ms(latencies, 0.99), 2),
                pod_p50_ms=round(pod_p50, 2),
                pod_p99_ms=round(pod_p99, 2),
                retried=sum(1 for r in records if r[2] > 1),
                operator_rss_mb=None if operator is None else operator.rss(),
                pod_cpu_ms_per_signal=round(cpu * 1000 / len(records), 3) if records else float("nan"),
            )
            result.weeks.append(w)
            say(
                f"{w.week}: bar {w.bars:>4}  RSS {w.rss_mb:7.1f} MB  fds {w.fds:>3} ({w.sockets} sockets)  journal "
                f"{w.journal_bytes / 1e6:7.2f} MB ({w.events} events)  signals {w.signals:>4}  "
                f"p50 {w.p50_ms:6.2f} ms  p99 {w.p99_ms:7.2f} ms  retried {w.retried}  "
                f"pod p50 {w.pod_p50_ms:.2f} ms  p99 {w.pod_p99_ms:.2f} ms  CPU {w.pod_cpu_ms_per_signal:.2f} ms/signal"
            )

        try:
            while True:
                if pod.proc.poll() is not None:
                    result.problems.append(
                        f"the pod died (exit {pod.proc.returncode}):\n{pod.output()[-4000:]}"
                    )
                    break
                if time.monotonic() > limit:
                    result.problems.append(f"the replay did not end in time: {bars} of {cfg.days} bars")
                    break
                text = scrape(pod)
                gauge = bar_gauge(text)
                if gauge and gauge != last_gauge:  # 0: no bar dealt yet
                    last_gauge = gauge
                    day = bar_day(gauge)
                    bars = days.index(day) + 1 if day in days else bars
                    if week and iso_week(day) != week:
                        sample(week)
                    week = iso_week(day)
                if bars >= len(days):
                    sample(week)
                    break
                time.sleep(min(0.05, cfg.bar_seconds / 5))
        finally:
            client.stop.set()
            client.thread.join(120)
        result.run_s = round(time.monotonic() - started, 1)
        if proxy is not None:
            proxy.clear(PROXY)
        result.attempts, result.failures = client.attempts, client.failures
        result.problems += client.problems
        result.ledger.signals_sent = client.sent
        result.ledger.signals_answered = len(client.answered)
        answered = set(client.answered)
        time.sleep(1.0)  # a last housekeeping pass journals what the venue did meanwhile
        if pod.proc.poll() is None:
            result.exit_code = pod.terminate()
        else:
            result.exit_code = pod.proc.returncode
        if result.exit_code != 0:
            result.problems.append(f"the pod exited {result.exit_code}:\n{pod.output()[-4000:]}")
        compare(result.ledger, journal, folder / "pod" / "volume" / "paper-broker.sqlite", answered)
        if operator is not None and operator.process is not None:
            result.backtests = created, jobs, phased = operator.settle()
            if not created or not jobs == phased == created:
                result.problems.append(
                    f"the operator reconciled {jobs} Jobs and {phased} statuses of {created} Backtests created"
                )
    result.trends = trends(result.weeks)
    return result


def compare(ledger: Ledger, journal_path: Path, venue_path: Path, answered: set[str]) -> None:
    """Fill ``ledger``: the journal (the pod stopped) against the paper venue's record."""
    journal = Journal(journal_path)
    try:
        events = journal.events()
    finally:
        journal.close()
    state = OmsState.rebuild(events)
    received = Counter(e.signal_id for e in events if isinstance(e, SignalReceived))
    ledger.signals_journaled = len(received)
    ledger.signals_journaled_twice = sum(1 for n in received.values() if n > 1)
    ledger.signals_missing = len(answered - set(received))
    created = {e.client_order_id for e in events if isinstance(e, OrderCreated) and not e.external}
    submitted = {e.client_order_id for e in events if isinstance(e, OrderSubmitted)} & created
    ledger.orders, ledger.submitted = len(created), len(submitted)
    ledger.rejected = Counter(e.reason for e in events if isinstance(e, OrderRejected))
    venue = sqlite3.connect(f"file:{venue_path}?mode=ro", uri=True)
    try:
        filled = {cid: Decimal(f) for cid, f in venue.execute("SELECT client_order_id, filled FROM orders")}
        submissions = dict(venue.execute("SELECT client_order_id, COUNT(*) FROM submissions GROUP BY 1"))
        positions = {i: Decimal(q) for i, q in venue.execute("SELECT instrument, quantity FROM positions")}
        ledger.fills = int(venue.execute("SELECT COUNT(*) FROM fills").fetchone()[0])
    finally:
        venue.close()
    ledger.at_venue = len(submitted & set(filled))
    ledger.lost = len(submitted - set(filled))
    ledger.unknown_at_venue = len(set(filled) - created)
    ledger.duplicates = sum(int(n) - 1 for n in submissions.values() if int(n) > 1)
    ledger.fill_mismatches = sum(
        1 for cid, qty in filled.items() if cid in state.orders and state.orders[cid].filled_quantity != qty
    )
    here = {k: v for k, v in state.position_quantities().items() if v}
    there = {k: v for k, v in positions.items() if v}
    ledger.position_mismatches = sum(1 for s in set(here) | set(there) if here.get(s) != there.get(s))


def report(result: SoakResult) -> str:
    """The run as text: the weeks, the trends against the goal, the ledger."""
    cfg, led = result.config, result.ledger
    lines = [
        f"soak: {cfg.days} trading days {result.period}, a bar every {cfg.bar_seconds}s, {cfg.rate:g} signals/s, "
        f"faults {cfg.fault_rate:.0%} of connections; {result.run_s}s; load {os.getloadavg()[0]:.2f}",
        f"{'week':<9} {'bars':>4} {'RSS MB':>7} {'fds':>4} {'socks':>5} {'journal MB':>10} {'events':>7} {'B/event':>7} "
        f"{'signals':>7} {'p50 ms':>7} {'p99 ms':>8} {'retried':>7} | pod {'p50 ms':>6} {'p99 ms':>7} {'CPU ms/sig':>10}",
    ]
    for w in result.weeks:
        lines.append(
            f"{w.week:<9} {w.bars:>4} {w.rss_mb:>7.1f} {w.fds:>4} {w.sockets:>5} {w.journal_bytes / 1e6:>10.2f} {w.events:>7} "
            f"{w.bytes_per_event:>7.0f} {w.signals:>7} {w.p50_ms:>7.2f} {w.p99_ms:>8.2f} {w.retried:>7} | "
            f"{w.pod_p50_ms:>10.2f} {w.pod_p99_ms:>7.2f} {w.pod_cpu_ms_per_signal:>10.2f}"
            + (f"  operator {w.operator_rss_mb:.0f} MB" if w.operator_rss_mb is not None else "")
        )
    lines += [
        "",
        f"trend after warm-up (first {WARMUP:.0%} of weeks), growth over the run (goal ≤ {GOAL_GROWTH:.0%}):",
    ]
    for t in result.trends:
        verdict = ("ok" if t.ok else "GROWS") if t.judged else f"not judged: {t.why}"
        lines.append(f"  {t.name:<20} {t.first:>12.2f} -> {t.last:>12.2f}  {t.growth:+8.1%}  {verdict}")
    lines += [
        "",
        f"signals: sent {led.signals_sent}, answered {led.signals_answered}, journaled {led.signals_journaled} "
        f"(twice: {led.signals_journaled_twice}, answered but missing: {led.signals_missing}); "
        f"sends {result.attempts} ({result.attempts - led.signals_sent} again after a fault: "
        f"{', '.join(f'{k} {n}' for k, n in sorted(result.failures.items())) or 'none'})",
        f"orders: {led.orders} made, {led.submitted} submitted, {led.at_venue} at the venue; lost {led.lost}, "
        f"unknown at venue {led.unknown_at_venue}, duplicates {led.duplicates}, fill mismatches "
        f"{led.fill_mismatches}, position mismatches {led.position_mismatches}; venue fills {led.fills}; "
        f"rejections {', '.join(f'{k} {n}' for k, n in sorted(led.rejected.items())) or 'none'}",
        f"pod exit code {result.exit_code}; operator: {result.operator}",
        *(
            [
                f"backtests: {result.backtests[0]} created beside the soak, {result.backtests[1]} with their Job, "
                f"{result.backtests[2]} with a status phase"
            ]
            if result.backtests
            else []
        ),
        f"verdict: {'PASS' if result.ok else 'FAIL'}",
    ]
    return "\n".join(lines)


def sample_bundle(folder: Path) -> Path:
    """The trading tests' sample bundle (8 synthetic stocks, 2019-2023: about 1,250 trading days)."""
    from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

    out = folder / "bundle"
    write_sample_bundle(out, SampleSpec(instruments=8, start="2019-01-01", end="2023-12-31", seed=11))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    p.add_argument("--days", type=int, default=250, help="trading days replayed (default 250, about a year)")
    p.add_argument("--rate", type=float, default=20.0, help="signals per second from the client (default 20)")
    p.add_argument(
        "--fault-rate", type=float, default=0.01, help="share of connections with a fault (default 0.01)"
    )
    p.add_argument("--bar-seconds", type=float, default=1.0, help="wall seconds per trading day (default 1)")
    p.add_argument("--seed", type=int, default=1, help="Toxiproxy's seed")
    p.add_argument(
        "--bundle", type=Path, help="a qlib bundle (default: the sample bundle, written to a temp folder)"
    )
    p.add_argument(
        "--operator", action="store_true", help="also reconcile a stream of Backtests (needs a cluster)"
    )
    p.add_argument(
        "--backtest-seconds", type=float, default=2.0, help="with --operator: one Backtest this often"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    args = p.parse_args(argv)
    cfg = SoakConfig(
        days=args.days,
        rate=args.rate,
        fault_rate=args.fault_rate,
        bar_seconds=args.bar_seconds,
        seed=args.seed,
        operator=args.operator,
        backtest_seconds=args.backtest_seconds,
    )
    binary = toxiproxy_server.find_binary() if cfg.fault_rate > 0 else None
    if cfg.fault_rate > 0 and binary is None:
        print(toxiproxy_server.missing_reason(), file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        bundle = args.bundle or sample_bundle(Path(tmp))
        cfg.check(len(calendar(bundle)))
        say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
        result = run(cfg, bundle, Path(tmp) / "run", binary, say)
    for problem in result.problems:
        print(problem, file=sys.stderr)
    if args.json:
        print(report(result), file=sys.stderr)  # the table too, beside the JSON on stdout
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(report(result))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
