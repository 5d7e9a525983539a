"""Operator latency: apply 200 Backtests at once, time apply → Job created, and until all are reconciled.

    make dev-cluster && .venv/bin/python benchmarks/operator_latency.py [--count 200]

Uses the cluster of KUBECONFIG (default: .dev-cluster/kubeconfig), installs the CRDs, starts
`kubequant operator` as a child process, creates the Backtests from a thread pool, watches Jobs,
and reads the operator's peak RSS (VmHWM) from /proc. Goals: p99 < 1 s, all < 30 s, RSS < 250 MB.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from operator_process import OperatorProcess  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size of a process, from /proc/<pid>/status (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def manifest(name: str, suspend: bool) -> dict[str, object]:
    return {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "Backtest",
        "metadata": {"name": name},
        "spec": {
            "period": {"start": "2022-01-04", "end": "2022-06-30"},
            "signal": {"file": {"path": "/data/scores.csv"}},
            "suspend": suspend,
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument(
        "--suspended",
        action="store_true",
        help="Create the Jobs suspended: no pods, so no kwok churn competing.",
    )
    args = parser.parse_args()
    kubeconfig = os.environ.get("KUBECONFIG") or str(REPO / ".dev-cluster" / "kubeconfig")
    config.load_kube_config(kubeconfig)
    kubectl = subprocess.run(
        [str(REPO / "hack" / "build-k8s.sh"), "--print-bin-dir"], capture_output=True, text=True, check=True
    )
    bin_dir = Path(kubectl.stdout.strip())
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
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})
    created: dict[str, float] = {}
    jobs: dict[str, float] = {}
    done = threading.Event()

    def watch_jobs() -> None:
        stream = watch.Watch()
        for event in stream.stream(batch.list_namespaced_job, ns, timeout_seconds=120):
            if event["type"] == "ADDED":
                owner = event["object"].metadata.labels.get("kubequant.io/backtest")
                jobs.setdefault(owner, time.perf_counter())
            if len(jobs) >= args.count or done.is_set():
                stream.stop()

    with tempfile.TemporaryDirectory() as tmp:
        operator = OperatorProcess(Path(kubeconfig), Path(tmp) / "operator.log")
        operator.start()
        try:
            watcher = threading.Thread(target=watch_jobs, daemon=True)
            watcher.start()
            time.sleep(1)
            names = [f"bt-{i:04d}" for i in range(args.count)]

            def create(name: str) -> None:
                custom.create_namespaced_custom_object(
                    "kubequant.io", "v1alpha1", ns, "backtests", manifest(name, args.suspended)
                )
                created[name] = time.perf_counter()

            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(create, names))
            applied = time.perf_counter() - start
            deadline = time.perf_counter() + 120
            while time.perf_counter() < deadline:
                items = custom.list_namespaced_custom_object("kubequant.io", "v1alpha1", ns, "backtests")[
                    "items"
                ]
                if sum(1 for b in items if (b.get("status") or {}).get("jobName")) == args.count:
                    break
                time.sleep(0.2)
            all_reconciled = time.perf_counter() - start
            done.set()
            watcher.join(10)
            rss = peak_rss_mb(operator.proc.pid) if operator.proc else float("nan")
            metrics = operator.metrics()
        finally:
            operator.stop()
            core.delete_namespace(ns)
    latencies = [jobs[n] - created[n] for n in created if n in jobs]
    print(f"backtests={args.count} created in {applied:.2f} s; jobs seen={len(latencies)}")
    print(
        f"apply→Job p50 {statistics.median(latencies) * 1000:.0f} ms | p99 {percentile(latencies, 0.99) * 1000:.0f} ms (goal < 1000 ms)"
    )
    print(f"all reconciled (status.jobName set) {all_reconciled:.2f} s after the first apply (goal < 30 s)")
    print(f"operator peak RSS {rss:.0f} MB (goal < 250 MB)")
    sums = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("kubequant_reconcile_duration_seconds_")
        and not line.startswith("kubequant_reconcile_duration_seconds_bucket")
    }
    count = sums.get('kubequant_reconcile_duration_seconds_count{kind="Backtest"}', 0)
    total = sums.get('kubequant_reconcile_duration_seconds_sum{kind="Backtest"}', 0)
    if count:
        print(
            f"operator handlers: {count:.0f} runs, mean {total / count * 1000:.0f} ms (creation + Job events)"
        )


if __name__ == "__main__":
    main()
