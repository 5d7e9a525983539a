"""Operator speed on a real API server, three measurements in one run (issue 9):

    make dev-cluster && .venv/bin/python benchmarks/operator_latency.py [--rate 10 --seconds 60 --burst 200]

1. Steady load: Backtests applied at a steady ``--rate`` per second for ``--seconds``; latency from the
   start of each create call to the moment its Job appears in a watch. Goal: p99 under 1 s.
2. Burst: ``--burst`` Backtests created at once (8 client threads); the time from the first create to the
   last Job, as a ratio to the floor: a plain client creating the same children (a ConfigMap and a
   Job for each) with the same 8 threads against the same cluster, in the same run. Goal: ≤ 1.5×.
3. Memory: the operator's resident set (now and peak, /proc) holding the burst's Backtests plus
   ``--sessions`` LiveTradingSessions (each with its RiskPolicy and token Secret). Goal: under 250 MB.

Uses the cluster of KUBECONFIG (default .dev-cluster/kubeconfig), installs the CRDs, starts
``kubequant operator --standalone`` as a child process, and leaves nothing behind (one namespace per
phase, deleted at the end). Jobs are created suspended (``spec.suspend: true``, the floor's too), so the
simulated nodes' pod churn does not compete for the machine's cores: the operator's path up to the
Job is the same. ``--pods`` lets the Jobs run (kwok completes them; the operator then handles each
Job's completion too).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from operator_process import OperatorProcess  # noqa: E402

GROUP, VERSION = "kubequant.io", "v1alpha1"
THREADS = 8


def proc_status_mb(pid: int, field: str) -> float:
    """A memory figure of a process from /proc/<pid>/status (VmRSS: now, VmHWM: peak), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def backtest(name: str, suspend: bool) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Backtest",
        "metadata": {"name": name},
        "spec": {
            "period": {"start": "2022-01-04", "end": "2022-06-30"},
            "signal": {"file": {"path": "/data/scores.csv"}},
            "suspend": suspend,
        },
    }


def floor_children(name: str, suspend: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the floor client creates per object: a ConfigMap and a Job of the Backtest's size and shape."""
    cm = {
        "metadata": {"name": f"{name}-config"},
        "data": {"backtest.yaml": yaml.safe_dump(backtest(name, suspend))},
    }
    job = {
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "floor"}},
        "spec": {
            "suspend": suspend,
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "backtest",
                            "image": "kubequant:bench",
                            "command": [
                                "kubequant",
                                "workload",
                                "backtest",
                                "--config",
                                "/etc/kubequant/backtest.yaml",
                            ],
                            "volumeMounts": [
                                {"name": "config", "mountPath": "/etc/kubequant", "readOnly": True}
                            ],
                        }
                    ],
                    "volumes": [{"name": "config", "configMap": {"name": f"{name}-config"}}],
                }
            },
        },
    }
    return cm, job


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class JobWatch:
    """Records when each Job of a namespace first appears (keyed by the owning object's name)."""

    def __init__(self, batch: client.BatchV1Api, namespace: str, key_label: str | None) -> None:
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._batch, self._ns, self._label = batch, namespace, key_label
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(0.5)

    def _run(self) -> None:
        while not self._stop.is_set():
            stream = watch.Watch()
            for event in stream.stream(self._batch.list_namespaced_job, self._ns, timeout_seconds=30):
                if event["type"] == "ADDED":
                    meta = event["object"].metadata
                    key = (meta.labels or {}).get(self._label) if self._label else meta.name
                    if key:
                        self.seen.setdefault(key, time.perf_counter())
                if self._stop.is_set():
                    stream.stop()

    def wait(self, count: int, timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while len(self.seen) < count and time.perf_counter() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()


def steady(
    custom: client.CustomObjectsApi, batch: client.BatchV1Api, ns: str, args: argparse.Namespace
) -> None:
    total = int(args.rate * args.seconds)
    started: dict[str, float] = {}
    jobs = JobWatch(batch, ns, "kubequant.io/backtest")

    def create(name: str) -> None:
        started[name] = time.perf_counter()
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, "backtests", backtest(name, not args.pods))

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        futures = []
        for i in range(total):
            # A steady schedule: object i is offered at t0 + i / rate, whatever the previous ones took.
            delay = t0 + i / args.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(create, f"steady-{i:05d}"))
        for f in futures:
            f.result()
    offered = time.perf_counter() - t0
    jobs.wait(total, 60)
    jobs.stop()
    latencies = [jobs.seen[n] - started[n] for n in started if n in jobs.seen]
    print(
        f"[steady] {total} Backtests at {args.rate:g}/s over {offered:.1f} s; Jobs seen {len(latencies)}/{total}"
    )
    print(
        f"[steady] apply→Job p50 {statistics.median(latencies) * 1000:.0f} ms | "
        f"p90 {percentile(latencies, 0.9) * 1000:.0f} ms | p99 {percentile(latencies, 0.99) * 1000:.0f} ms | "
        f"max {max(latencies) * 1000:.0f} ms (goal p99 < 1000 ms)"
    )


def floor(core: client.CoreV1Api, batch: client.BatchV1Api, ns: str, args: argparse.Namespace) -> float:
    jobs = JobWatch(batch, ns, None)

    def create(name: str) -> None:
        cm, job = floor_children(name, not args.pods)
        core.create_namespaced_config_map(ns, cm)
        batch.create_namespaced_job(ns, job)

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(create, [f"floor-{i:04d}" for i in range(args.burst)]))
    jobs.wait(args.burst, 120)
    jobs.stop()
    return max(jobs.seen.values()) - t0


def burst(
    custom: client.CustomObjectsApi, batch: client.BatchV1Api, ns: str, args: argparse.Namespace
) -> tuple[float, float]:
    """(seconds from the first create to the last Job, to the last create answered)."""
    jobs = JobWatch(batch, ns, "kubequant.io/backtest")
    names = [f"burst-{i:04d}" for i in range(args.burst)]
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(
            pool.map(
                lambda n: custom.create_namespaced_custom_object(
                    GROUP, VERSION, ns, "backtests", backtest(n, not args.pods)
                ),
                names,
            )
        )
    created = time.perf_counter() - t0
    jobs.wait(args.burst, 120)
    jobs.stop()
    if len(jobs.seen) < args.burst:
        print(f"[burst] only {len(jobs.seen)}/{args.burst} Jobs within 120 s")
    return max(jobs.seen.values()) - t0, created


def sessions(core: client.CoreV1Api, custom: client.CustomObjectsApi, ns: str, count: int) -> int:
    """Create ``count`` paper sessions (each with its RiskPolicy and token Secret); wait until each has a StatefulSet."""
    policy, session = list(yaml.safe_load_all((REPO / "examples" / "live-paper.yaml").read_text()))
    apps = client.AppsV1Api()
    for i in range(count):
        name = f"paper-{i:03d}"
        p = copy.deepcopy(policy)
        p["metadata"] = {"name": f"{name}-policy"}
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, "riskpolicies", p)
        core.create_namespaced_secret(
            ns, {"metadata": {"name": f"{name}-token"}, "stringData": {"token": uuid.uuid4().hex}}
        )
        s = copy.deepcopy(session)
        s["metadata"] = {"name": name}
        # One session per broker account and namespace (the operator makes the others wait: AccountInUse).
        s["spec"]["account"] = f"paper-account-{i:03d}"
        s["spec"]["riskPolicyRef"] = {"name": f"{name}-policy"}
        s["spec"]["strategy"]["signalApi"]["tokenSecretRef"] = {"name": f"{name}-token", "key": "token"}
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, "livetradingsessions", s)
    deadline = time.monotonic() + 120
    ready = 0
    while time.monotonic() < deadline:
        ready = len(apps.list_namespaced_stateful_set(ns).items)
        if ready >= count:
            break
        time.sleep(0.5)
    return ready


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=10.0, help="Steady phase: Backtests per second.")
    parser.add_argument("--seconds", type=float, default=60.0, help="Steady phase: how long.")
    parser.add_argument("--burst", type=int, default=200, help="Burst phase: Backtests at once.")
    parser.add_argument("--sessions", type=int, default=20, help="Memory phase: LiveTradingSessions.")
    parser.add_argument(
        "--pods", action="store_true", help="Create the Jobs unsuspended (kwok runs their pods)."
    )
    parser.add_argument(
        "--phases",
        default="steady,burst,memory",
        help="Which phases to run (comma-separated), in this order.",
    )
    args = parser.parse_args()
    kubeconfig = os.environ.get("KUBECONFIG") or str(REPO / ".dev-cluster" / "kubeconfig")
    config.load_kube_config(kubeconfig)
    bin_dir = Path(
        subprocess.run(
            [str(REPO / "hack" / "build-k8s.sh"), "--print-bin-dir"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    subprocess.run(
        [
            str(bin_dir / "kubectl"),
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
    core, custom, batch = client.CoreV1Api(), client.CustomObjectsApi(), client.BatchV1Api()
    tag = uuid.uuid4().hex[:6]
    phases = set(args.phases.split(","))
    namespaces = {phase: f"bench-{phase}-{tag}" for phase in ("steady", "floor", "burst")}
    for ns in namespaces.values():
        core.create_namespace({"metadata": {"name": ns}})
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        operator = OperatorProcess(Path(kubeconfig), Path(tmp) / "operator.log")
        operator.start()
        try:
            pid = operator.proc.pid if operator.proc else 0
            print(f"operator pid {pid}, RSS at start {proc_status_mb(pid, 'VmRSS'):.0f} MB", flush=True)
            if "steady" in phases:
                steady(custom, batch, namespaces["steady"], args)
                # Deleted, so that the burst runs against an operator holding only its own objects.
                core.delete_namespace(namespaces.pop("steady"))
                time.sleep(5)
            if "burst" in phases:
                floor_s = floor(core, batch, namespaces["floor"], args)
                burst_s, created_s = burst(custom, batch, namespaces["burst"], args)
                print(
                    f"[burst] {args.burst} Backtests: last Job {burst_s:.2f} s after the first create (the "
                    f"creates answered by {created_s:.2f} s); floor (a plain client creating a ConfigMap and a "
                    f"Job each, {THREADS} threads) {floor_s:.2f} s; ratio {burst_s / floor_s:.2f}× (goal ≤ 1.5×)"
                )
            if "memory" in phases:
                made = sessions(core, custom, namespaces["burst"], args.sessions)
                time.sleep(5)
                held = args.burst if "burst" in phases else 0
                print(
                    f"[memory] {held} Backtests + {made}/{args.sessions} sessions (StatefulSets made): operator "
                    f"RSS {proc_status_mb(pid, 'VmRSS'):.0f} MB, peak {proc_status_mb(pid, 'VmHWM'):.0f} MB "
                    "over the whole run (goal < 250 MB)"
                )
            metrics = operator.metrics()
        finally:
            operator.stop()
            for ns in namespaces.values():
                core.delete_namespace(ns)
    sums = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("kubequant_reconcile_duration_seconds_")
        and not line.startswith("kubequant_reconcile_duration_seconds_bucket")
    }
    count = sums.get('kubequant_reconcile_duration_seconds_count{kind="Backtest"}', 0)
    total = sums.get('kubequant_reconcile_duration_seconds_sum{kind="Backtest"}', 0)
    if count:
        print(f"operator Backtest handlers: {count:.0f} runs, mean {total / count * 1000:.0f} ms")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
