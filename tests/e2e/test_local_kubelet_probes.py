"""LocalKubelet's probes (hack/local_kubelet.py) behave as the kubelet's: thresholds, the startup gate,
readiness in the pod's Ready condition, a liveness failure that kills and restarts the container;
and a pod's Python process is measured when the test run measures coverage.

The first tests run the probe logic against real loopback servers and real processes (no cluster);
the others run pods on a LocalKubelet node of the dev cluster.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import coverage
import pytest
from kubernetes import client
from local_kubelet import (
    NODE_SELECTOR,
    TOLERATION,
    LocalKubelet,
    ProbeSpec,
    ProbeTarget,
    ProbeTracker,
    _Probing,
    _Unsupported,
    coverage_env,
    run_probe,
)
from operator_process import free_port

WaitUntil = Callable[..., Any]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

NODE = "local-runner-probes"
SELECTOR = {**NODE_SELECTOR, "kubernetes.io/hostname": NODE}
IMAGE = "kubequant/never-pulled:dev"


# --------------------------------------------------------------------------- probe logic, no cluster


class _Handler(http.server.BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, int]] = {}
    delay_s: ClassVar[float] = 0.0
    seen: ClassVar[list[dict[str, str]]] = []
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        type(self).paths.append(self.path)
        time.sleep(type(self).delay_s)
        code = type(self).answers.get(self.path, 404)
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"x" * 20_000 if code == 200 else b"no")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[int, type[_Handler]]]:
    handler = type(
        "Handler", (_Handler,), {"answers": {"/ok": 200, "/moved": 302, "/bad": 500}, "seen": [], "paths": []}
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def probe(kind: str = "liveness", **fields: Any) -> ProbeSpec:
    return ProbeSpec.parse(kind, fields, f"spec.containers[0].{kind}Probe")


def test_probe_spec_defaults_and_refusals() -> None:
    spec = probe(httpGet={"path": "/healthz", "port": "http"})
    assert (spec.handler, spec.period_s, spec.timeout_s, spec.failure_threshold, spec.success_threshold) == (
        "httpGet",
        10.0,
        1.0,
        3,
        1,
    )
    assert spec.initial_delay_s == 0.0 and spec.termination_grace_s is None
    assert probe(tcpSocket={"port": 80}, terminationGracePeriodSeconds=4).termination_grace_s == 4.0
    with pytest.raises(_Unsupported, match=r"livenessProbe\.grpc: gRPC probes .* use httpGet"):
        probe(grpc={"port": 9090})
    with pytest.raises(_Unsupported, match="set exactly one of"):
        probe(exec={"command": ["true"]}, tcpSocket={"port": 1})
    with pytest.raises(_Unsupported, match=r"livenessProbe\.periodSeconds: set a whole number of at least 1"):
        probe(exec={"command": ["true"]}, periodSeconds=0)
    with pytest.raises(_Unsupported, match=r"exec\.command: list the command"):
        probe(exec={"command": []})


def test_tracker_needs_thresholds_in_a_row() -> None:
    liveness = ProbeTracker(probe(exec={"command": ["true"]}, failureThreshold=3))
    assert liveness.result is True  # liveness starts as success
    assert [liveness.observe(ok) for ok in (False, False, True, False, False)] == [
        None,
        None,
        True,
        None,
        None,
    ]
    assert liveness.result is True  # never three failures in a row
    assert liveness.observe(False) is False and liveness.result is False

    readiness = ProbeTracker(probe("readiness", exec={"command": ["true"]}, successThreshold=2))
    assert readiness.result is False  # readiness starts as failure
    assert readiness.observe(True) is None and readiness.result is False
    assert readiness.observe(True) is True and readiness.result is True
    assert readiness.observe(False) is None  # failureThreshold 3 (the default)

    startup = ProbeTracker(probe("startup", exec={"command": ["true"]}))
    assert startup.result is None and startup.observe(True) is True


def test_http_probe_codes_timeouts_headers_and_ports(http_server: tuple[int, type[_Handler]]) -> None:
    port, handler = http_server
    target = ProbeTarget(ports={"http": port}, user_agent="kube-probe/1.36")

    def outcome(path: str, **extra: Any) -> tuple[bool | None, str]:
        result = run_probe(probe(httpGet={"path": path, "port": "http", **extra}), target)
        return result.ok, result.output

    ok, output = outcome("/ok", httpHeaders=[{"name": "X-Probe", "value": "yes"}])
    assert ok is True and len(output) == 10 * 1024  # the kubelet reads at most 10 KiB
    assert handler.seen[-1]["User-Agent"] == "kube-probe/1.36" and handler.seen[-1]["X-Probe"] == "yes"
    assert outcome("/moved")[0] is True  # 2xx and 3xx succeed
    assert outcome("/bad") == (False, "HTTP probe failed with statuscode: 500")
    assert outcome("/missing") == (False, "HTTP probe failed with statuscode: 404")
    handler.delay_s = 1.5
    ok, output = outcome("/ok")
    assert ok is False and "context deadline exceeded" in output and f":{port}/ok" in output
    handler.delay_s = 0.0
    closed = free_port()
    refused = run_probe(probe(httpGet={"path": "/ok", "port": closed}), target)
    assert refused.ok is False and refused.output.endswith(
        f"dial tcp 127.0.0.1:{closed}: connect: connection refused"
    )
    unknown = run_probe(probe(httpGet={"path": "/ok", "port": "metrics"}), target)
    assert unknown.ok is None and "couldn't find port: metrics" in unknown.output  # errored: not counted


def test_tcp_and_exec_probes(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        assert run_probe(probe(tcpSocket={"port": port}), ProbeTarget()).ok is True
    closed = run_probe(probe(tcpSocket={"port": port}), ProbeTarget())
    assert closed.ok is False and closed.output.startswith(f"dial tcp 127.0.0.1:{port}: connect:")

    target = ProbeTarget(env={"PATH": os.environ["PATH"], "WHO": "pod"}, cwd=tmp_path)
    script = "import os, sys; print(os.environ['WHO'], os.listdir('.')); sys.exit(0 if os.path.exists('up') else 1)"
    check = probe(exec={"command": [sys.executable, "-c", script]})
    down = run_probe(check, target)
    assert (down.ok, down.output.strip()) == (False, "pod []")  # the container's env and cwd
    (tmp_path / "up").touch()
    assert run_probe(check, target).ok is True
    slow = run_probe(
        probe(exec={"command": [sys.executable, "-c", "import time; time.sleep(30)"]}, timeoutSeconds=1),
        target,
    )
    assert slow.ok is False and "timed out" in slow.output
    missing = run_probe(probe(exec={"command": [str(tmp_path / "nope")]}), target)
    assert missing.ok is None


def test_probing_gates_on_startup_and_asks_for_a_kill_after_failures(
    http_server: tuple[int, type[_Handler]],
) -> None:
    port, handler = http_server
    target = ProbeTarget(ports={"http": port})
    handler.answers.update({"/healthz": 503, "/readyz": 200, "/started": 503})
    events: list[tuple[str, str]] = []
    probing = _Probing(
        {
            "startup": probe(
                "startup", httpGet={"path": "/started", "port": "http"}, periodSeconds=1, failureThreshold=30
            ),
            "liveness": probe(
                httpGet={"path": "/healthz", "port": "http"},
                periodSeconds=1,
                failureThreshold=2,
                terminationGracePeriodSeconds=7,
            ),
            "readiness": probe("readiness", httpGet={"path": "/readyz", "port": "http"}, periodSeconds=1),
        },
        target,
        lambda type_, message: events.append((type_, message)),
        "unit",
    )
    probing.start()
    try:
        time.sleep(2.5)
        # Not started: liveness (which would fail) and readiness are not probed yet.
        assert (probing.started, probing.ready, probing.kill) == (False, False, None)
        assert set(handler.paths) == {"/started"} and len(handler.paths) >= 2
        assert ("Warning", "Startup probe failed: HTTP probe failed with statuscode: 503") in events
        handler.answers["/started"] = 200
        deadline = time.monotonic() + 10
        while probing.kill is None and time.monotonic() < deadline:
            time.sleep(0.05)
        # Two liveness failures in a row after the start: a kill, with the probe's grace period.
        assert probing.started is True and probing.kill == ("liveness", 7.0)
        assert probing.ready is False  # a container being killed is not ready
        assert [m for _, m in events].count(
            "Liveness probe failed: HTTP probe failed with statuscode: 503"
        ) == 2
    finally:
        probing.close()


def test_coverage_env_passes_the_coverage_variables_with_absolute_paths() -> None:
    environ = {
        "COVERAGE_PROCESS_CONFIG": "eyJ9",
        "COVERAGE_PROCESS_START": "pyproject.toml",
        "COV_CORE_DATAFILE": ".coverage",
        "KUBEQUANT_COVERAGE_DIR": "build/coverage",
        "HOME": "/root",
        "AWS_SECRET_ACCESS_KEY": "no",
    }
    assert coverage_env(environ) == {
        "COVERAGE_PROCESS_CONFIG": "eyJ9",
        "COVERAGE_PROCESS_START": str(Path("pyproject.toml").resolve()),
        "COV_CORE_DATAFILE": str(Path(".coverage").resolve()),
        "KUBEQUANT_COVERAGE_DIR": str(Path("build/coverage").resolve()),
    }


# --------------------------------------------------------------------------- pods on a LocalKubelet

SERVER = """
import http.server, os, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/healthz" or os.path.exists(self.path.strip("/"))
        self.send_response(200 if ok else 503)
        self.end_headers()
        self.wfile.write(b"ok" if ok else b"not yet")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("pid", os.getpid(), flush=True)
server.serve_forever()
"""


@pytest.fixture(scope="module")
def kubelet(api_client: client.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKubelet]:
    with LocalKubelet(
        api_client,
        NODE,
        workdir=tmp_path_factory.mktemp("probes-kubelet"),
        command_map={"python3": sys.executable},
        restart_backoff_s=1.0,
    ) as runner:
        yield runner


def server_pod(name: str, port: int, restart_policy: str = "Always", **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 2,
            "nodeSelector": dict(SELECTOR),
            "tolerations": [dict(TOLERATION)],
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "command": ["python3", "-c", SERVER],
                    "args": [str(port)],
                    "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
                    **container,
                }
            ],
        },
    }


def http_probe(path: str, **timing: Any) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": 1, "timeoutSeconds": 1, **timing}


def ready(pod: client.V1Pod) -> tuple[bool, bool]:
    """(the pod's Ready condition, containerStatuses[0].ready)."""
    condition = next((c for c in pod.status.conditions or [] if c.type == "Ready"), None)
    statuses = pod.status.container_statuses or []
    return (condition is not None and condition.status == "True", bool(statuses and statuses[0].ready))


def events(core: client.CoreV1Api, namespace: str, pod: str) -> list[tuple[str, str, int]]:
    items = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod}").items
    return [(e.reason, e.message, e.count or 1) for e in items]


def test_readiness_drives_the_ready_condition(
    kubelet: LocalKubelet, core: client.CoreV1Api, namespace: str, wait_until: WaitUntil
) -> None:
    port = free_port()
    core.create_namespaced_pod(
        namespace, server_pod("gated", port, readinessProbe=http_probe("/readyz", failureThreshold=1))
    )
    pod = wait_until(
        lambda: (lambda p: p if p.status.phase == "Running" and p.status.container_statuses else None)(
            core.read_namespaced_pod("gated", namespace)
        ),
        60,
        "the pod Running",
    )
    time.sleep(2.5)  # a few readiness periods answered 503
    pod = core.read_namespaced_pod("gated", namespace)
    assert ready(pod) == (False, False) and pod.status.container_statuses[0].started is True
    workdir = kubelet.pod_dir("gated", namespace) / "workdir"
    (workdir / "readyz").touch()
    wait_until(lambda: ready(core.read_namespaced_pod("gated", namespace)) == (True, True), 15, "Ready")
    (workdir / "readyz").unlink()
    wait_until(lambda: ready(core.read_namespaced_pod("gated", namespace)) == (False, False), 15, "not Ready")
    pod = core.read_namespaced_pod("gated", namespace)
    assert pod.status.phase == "Running" and pod.status.container_statuses[0].restart_count == 0
    failed = {m: n for r, m, n in events(core, namespace, "gated") if r == "Unhealthy"}
    # Probed before the server listened, then answered 503: repeats count up on one Event.
    assert set(failed) <= {
        "Readiness probe failed: HTTP probe failed with statuscode: 503",
        f'Readiness probe failed: Get "http://127.0.0.1:{port}/readyz": dial tcp 127.0.0.1:{port}: '
        "connect: connection refused",
    }, failed
    assert failed["Readiness probe failed: HTTP probe failed with statuscode: 503"] >= 3


def test_a_stopped_process_fails_liveness_and_is_killed_and_restarted(
    kubelet: LocalKubelet, core: client.CoreV1Api, namespace: str, wait_until: WaitUntil
) -> None:
    port = free_port()
    pod = server_pod(
        "stopped",
        port,
        livenessProbe=http_probe("/healthz", failureThreshold=2),
        readinessProbe=http_probe("/healthz", failureThreshold=1),
    )
    core.create_namespaced_pod(namespace, pod)
    wait_until(lambda: ready(core.read_namespaced_pod("stopped", namespace)) == (True, True), 60, "Ready")
    run = kubelet._find_run("stopped", namespace)
    assert run.proc is not None
    first_pid = run.proc.pid
    stopped_at = time.monotonic()
    os.kill(first_pid, signal.SIGSTOP)

    def restarted() -> client.V1ContainerStatus | None:
        (status,) = core.read_namespaced_pod("stopped", namespace).status.container_statuses
        return status if status.restart_count == 1 and status.state.running is not None else None

    status = wait_until(restarted, 60, "the restart after the liveness failure")
    took = time.monotonic() - stopped_at
    # 2 failures (1 s period, 1 s timeout), then 2 s of grace for a SIGTERM the stopped process never handles.
    assert took < 20, took
    terminated = status.last_state.terminated
    assert (terminated.exit_code, terminated.reason) == (137, "Error")  # SIGKILL after the grace period
    with pytest.raises(ProcessLookupError):
        os.kill(first_pid, 0)
    wait_until(
        lambda: ready(core.read_namespaced_pod("stopped", namespace)) == (True, True), 30, "Ready again"
    )
    reasons = events(core, namespace, "stopped")
    assert ("Killing", "Container main failed liveness probe, will be restarted", 1) in reasons
    unhealthy = {m for r, m, _ in reasons if r == "Unhealthy"}
    assert any(
        m.startswith("Liveness probe failed: Get ") and "context deadline exceeded" in m for m in unhealthy
    )
    assert kubelet.logs("stopped", namespace).count("pid ") == 2


def test_startup_gates_liveness_and_never_restarts_a_pod_with_restart_policy_never(
    kubelet: LocalKubelet, core: client.CoreV1Api, namespace: str, wait_until: WaitUntil
) -> None:
    port = free_port()
    exec_probe = lambda name: {"exec": {"command": ["test", "-f", name]}, "periodSeconds": 1}  # noqa: E731
    pod = server_pod(
        "slow-start",
        port,
        restart_policy="Never",
        startupProbe={**exec_probe("started"), "failureThreshold": 60},
        livenessProbe={**exec_probe("alive"), "failureThreshold": 1},
    )
    core.create_namespaced_pod(namespace, pod)
    wait_until(
        lambda: core.read_namespaced_pod("slow-start", namespace).status.phase == "Running", 60, "Running"
    )
    time.sleep(3)
    # The liveness probe would fail at once ("alive" is missing), but the container has not started.
    pod_now = core.read_namespaced_pod("slow-start", namespace)
    (status,) = pod_now.status.container_statuses
    assert (status.started, status.ready, status.restart_count, pod_now.status.phase) == (
        False,
        False,
        0,
        "Running",
    )
    (kubelet.pod_dir("slow-start", namespace) / "workdir" / "started").touch()
    # Started: liveness runs, fails once (failureThreshold 1), and the container is killed for good.
    done = wait_until(
        lambda: (lambda p: p if p.status.phase in ("Failed", "Succeeded") else None)(
            core.read_namespaced_pod("slow-start", namespace)
        ),
        30,
        "the pod to end",
    )
    (status,) = done.status.container_statuses
    assert done.status.phase == "Failed" and status.restart_count == 0
    assert status.state.terminated.exit_code == 128 + signal.SIGTERM  # it handled the SIGTERM in time
    reasons = events(core, namespace, "slow-start")
    assert ("Killing", "Container main failed liveness probe", 1) in reasons
    assert any(m.startswith("Liveness probe failed") for r, m, _ in reasons if r == "Unhealthy")


def test_a_grpc_probe_fails_the_pod_as_unsupported(
    kubelet: LocalKubelet, core: client.CoreV1Api, namespace: str, wait_until: WaitUntil
) -> None:
    core.create_namespaced_pod(
        namespace, server_pod("grpc", free_port(), livenessProbe={"grpc": {"port": 9090}})
    )
    pod = wait_until(
        lambda: (lambda p: p if p.status.phase == "Failed" else None)(
            core.read_namespaced_pod("grpc", namespace)
        ),
        60,
        "the pod failed",
    )
    assert pod.status.reason == "UnsupportedByLocalKubelet"
    assert "spec.containers[0].livenessProbe.grpc" in pod.status.message


MEASURED = """
import sys
def measured(n):
    return sum(range(n))
print("measured", measured(10), flush=True)
"""


def test_a_pod_process_is_measured_when_coverage_is_on(
    kubelet: LocalKubelet,
    core: client.CoreV1Api,
    namespace: str,
    wait_until: WaitUntil,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "measured_pod.py").write_text(MEASURED)
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / ".coveragerc").write_text(
        f"[run]\nsource = {source}\nparallel = true\ndata_file = {data}/.coverage\n"
    )
    # The way a coverage run asks subprocesses to measure themselves; the run's own request, if any,
    # is set aside for this pod (COVERAGE_PROCESS_CONFIG wins over COVERAGE_PROCESS_START).
    monkeypatch.delenv("COVERAGE_PROCESS_CONFIG", raising=False)
    monkeypatch.delenv("COVERAGE_FILE", raising=False)
    monkeypatch.setenv("COVERAGE_PROCESS_START", str(tmp_path / ".coveragerc"))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "measured"},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": dict(SELECTOR),
            "tolerations": [dict(TOLERATION)],
            "containers": [
                {"name": "main", "image": IMAGE, "command": ["python3", str(source / "measured_pod.py")]}
            ],
        },
    }
    core.create_namespaced_pod(namespace, pod)
    done = wait_until(
        lambda: (lambda p: p if p.status.phase in ("Succeeded", "Failed") else None)(
            core.read_namespaced_pod("measured", namespace)
        ),
        60,
        "the pod to finish",
    )
    assert done.status.phase == "Succeeded", kubelet.logs("measured", namespace)
    files = sorted(data.glob(".coverage.*"))
    assert len(files) == 1, files
    measured = coverage.CoverageData(basename=str(files[0]))
    measured.read()
    lines = measured.lines(str(source / "measured_pod.py"))
    assert lines is not None and {3, 4, 5} <= set(lines)  # the function ran, in the pod
