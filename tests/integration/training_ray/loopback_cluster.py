"""A real two-node Ray cluster on loopback addresses, as `ray start` builds one in a KubeRay pod pair.

Ray 2.60 rewrites 127.0.0.1 (and ``localhost``) to the host's routable address when it starts a node of a
multi-node cluster, so the head listens on 127.0.0.2 and the worker node on 127.0.0.3: both still loopback
(the whole 127.0.0.0/8 is), nothing reachable from outside. Every process of the cluster is found through
the cluster's own temp dir and stopped by pid; ``ray stop`` would kill every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ray_diagnostics import measured_workers_runtime_env, ray_node_report, without_coverage

RAY = str(Path(sys.executable).with_name("ray"))
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class LoopbackCluster:
    temp_dir: Path  # short: Ray's socket paths under it must fit AF_UNIX's 107 bytes
    log_dir: Path
    env: dict[str, str]
    gcs_port: int = 0
    dashboard_port: int = 0
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_from: dict[str, int] = field(default_factory=dict)  # where each `ray start` log's last attempt begins

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://{HEAD_IP}:{self.dashboard_port}"

    def _start(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        path = self.log_dir / log
        self.log_from[log] = path.stat().st_size if path.exists() else 0  # this attempt's output only
        out = open(path, "ab")
        proc = subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", *args],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started.append(proc)
        return proc

    def start(self, head_cpus: int = 1, worker_cpus: int = 1, timeout: float = 240, tries: int = 3) -> None:
        # Ray gives a raylet 30 s (not configurable) to register; on a loaded machine a node may miss it,
        # so a node that fails to start is cleaned up and started again.
        for attempt in range(1, tries + 1):
            self.gcs_port = free_port(HEAD_IP)
            self.dashboard_port = free_port(HEAD_IP)
            self._start(
                "--head",
                f"--node-ip-address={HEAD_IP}",
                f"--port={self.gcs_port}",
                f"--num-cpus={head_cpus}",
                "--include-dashboard=true",
                f"--dashboard-host={HEAD_IP}",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port(HEAD_IP)}",
                f"--dashboard-agent-listen-port={free_port(HEAD_IP)}",
                f"--temp-dir={self.temp_dir}",
                log="head.log",
            )
            try:
                self.wait_for_nodes(1, timeout, "head.log")
                break
            except RuntimeError:
                self.stop()
                self.started.clear()
                if attempt == tries:
                    raise
        for attempt in range(1, tries + 1):
            worker = self._start(
                f"--address={self.address}",
                f"--node-ip-address={WORKER_IP}",
                f"--num-cpus={worker_cpus}",
                f"--dashboard-agent-listen-port={free_port(WORKER_IP)}",
                log="worker.log",
            )
            try:
                self.wait_for_nodes(2, timeout, "worker.log")
                return
            except RuntimeError:
                self.started.remove(worker)
                self._kill([pid for pid in self.pids(WORKER_IP.encode())])
                if attempt == tries:
                    raise

    def _check_alive(self) -> None:
        for proc in self.started:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"ray start exited {proc.returncode}:\n"
                    + ray_node_report(self.temp_dir, self.log_dir / "head.log", self.log_dir / "worker.log")
                )

    def wait_for_nodes(self, count: int, timeout: float, log: str) -> None:
        """Wait until the node whose `ray start` writes ``log`` has started, and the cluster has ``count``.

        `ray start` says "Ray runtime started" once its raylet registered; the log is read for that rather
        than polling `ray status`, a Python process that takes most of a core for two seconds each time:
        polled every 2 s on 2 cores it starved the very raylet it waited for.
        """
        deadline = time.monotonic() + timeout
        path = self.log_dir / log
        while True:
            self._check_alive()
            with path.open("rb") as f:
                f.seek(self.log_from.get(log, 0))
                if b"Ray runtime started" in f.read():
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"`ray start` did not start its node:\n{ray_node_report(self.temp_dir, path)}"
                )
            time.sleep(0.5)
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            status = subprocess.run(
                [RAY, "status", f"--address={self.address}"], env=self.env, capture_output=True, text=True
            )
            last = status.stdout + status.stderr
            if status.returncode == 0 and last.count("node_") >= count:
                return
            time.sleep(5)
        raise TimeoutError(
            f"the loopback Ray cluster did not reach {count} node(s): {last[-2000:]}\n"
            + ray_node_report(self.temp_dir, self.log_dir / "head.log", self.log_dir / "worker.log")
        )

    def pids(self, also: bytes = b"") -> list[int]:
        """Every process of this cluster (the `ray start` wrappers and whatever names its temp dir), or,
        with ``also``, those of its processes whose command line holds that too (one node's)."""
        mine = [p.pid for p in self.started if p.poll() is None] if not also else []
        marker = str(self.temp_dir).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline and also in cmdline:
                mine.append(int(entry.name))
        return sorted(set(mine) - {os.getpid()})

    @staticmethod
    def _kill(pids: list[int]) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.pids():
            time.sleep(0.5)
        self._kill(self.pids())
        for proc in self.started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def cluster_env(temp_dir: Path) -> dict[str, str]:
    """The cluster's and its clients' environment: a fresh auth token, no usage stats, the venv's PATH."""
    env = without_coverage({k: v for k, v in os.environ.items() if not k.startswith("RAY_")})
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def measured_job_args() -> list[str]:
    """``ray job submit`` arguments that measure the job (its entrypoint, the driver, and its workers) when
    this run measures coverage: the job's runtime_env gives them back the coverage variables that the
    cluster's own processes start without (``cluster_env``). The driver exits through Python, so its data
    is saved at exit; workers save theirs every second (``measured_workers_runtime_env``)."""
    measured = {k: v for k, v in os.environ.items() if k not in without_coverage(dict(os.environ))}
    runtime_env = measured_workers_runtime_env(measured)
    return ["--runtime-env-json", json.dumps(runtime_env)] if runtime_env else []
