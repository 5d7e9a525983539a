"""LocalKubelet: a development helper that stands in for a kubelet, for e2e tests that must
prove that a pod really did its work and for ``make cluster-demo`` (hack/cluster_demo.py).
It lives in hack/ (on pytest's pythonpath, see pyproject.toml) so that neither imports the other.

The dev cluster's worker nodes are simulated by kwok: a pod bound to one of them is
reported Running (and Succeeded, for Job pods) but nothing ever executes. A
``LocalKubelet`` registers one more Node, which kwok does not manage, and does for the
pods bound to it what a kubelet does, with a local subprocess in place of a container:

* Node: labels ``kubequant.io/pool=local``, ``kubernetes.io/hostname=<name>``,
  ``type=local-runner``; taint ``kubequant.io/local-runner=true:NoSchedule`` (only pods
  that tolerate it land there: see ``TOLERATION`` and ``NODE_SELECTOR``); allocatable
  cpu 4, memory 16Gi, pods 20. It is kept Ready the way a kubelet keeps it Ready: the
  node lifecycle controller of kube-controller-manager (1.36:
  ``pkg/controller/nodelifecycle``, ``tryUpdateNodeHealth``) counts a node as alive
  while either the Ready condition's ``lastHeartbeatTime`` or the ``renewTime`` of its
  Lease in ``kube-node-lease`` keeps moving; the Lease is renewed every 10 s and the
  node status every 30 s, from a background thread. Without them, after
  ``--node-monitor-grace-period`` the node would turn NotReady and get tainted
  ``node.kubernetes.io/unreachable``.
* Pods (watched with the field selector ``spec.nodeName=<name>``): each new pod gets a
  thread (at most ``max_pods`` run at once; the others wait, Pending). It reports the
  pod Pending/ContainerCreating with ``startTime``, materializes the container's
  volume mounts under ``<workdir>/<pod-uid>/<mountPath>`` (ConfigMap, Secret,
  downwardAPI and projected volumes written as files, the service-account token of
  a projected volume obtained by TokenRequest; emptyDir as an empty directory;
  hostPath and persistentVolumeClaim volumes mapped to a local directory through
  ``path_map``, else an empty directory and a Warning event), resolves the
  environment (``value`` with ``$(VAR)`` expansion, ``valueFrom`` fieldRef /
  resourceFieldRef / configMapKeyRef / secretKeyRef, ``envFrom``), runs
  ``command + args`` as a subprocess in its own process group and reports the pod
  Running (podIP 127.0.0.1; Initialized, and Ready/ContainersReady as the probes say),
  then terminated: phase Succeeded or Failed, ``containerStatuses[0].state.terminated``
  with exitCode, reason (Completed/Error), startedAt/finishedAt and the termination
  message. The Job controller then completes or fails the Job by itself.
* Paths: a process sees host paths, not the container's filesystem, so every
  occurrence of a mount path in command, args, env values and workingDir is
  rewritten to its materialized path (``--config /etc/kubequant/backtest.yaml``
  becomes ``--config <workdir>/<uid>/etc/kubequant/backtest.yaml``), and so are the
  container's ``terminationMessagePath`` and the literal ``/dev/termination-log``
  (both map to ``<workdir>/<uid>/<path>``, created empty before each start). Paths
  compiled into the program are NOT rewritten: a workload that writes its
  termination message must be told the path in its args (kubequant's workloads take
  ``--termination-log``, and the operator passes ``--termination-log
  /dev/termination-log`` explicitly for this reason). The message is the file's
  first 4096 bytes, or with ``terminationMessagePolicy: FallbackToLogsOnError`` the
  last 80 lines / 2048 bytes of output when the file is empty and the exit code is
  not 0, as in the kubelet.
* Probes, with the kubelet's semantics (``pkg/kubelet/prober``): startup, liveness and
  readiness probes of kind httpGet, tcpSocket or exec, each in its own thread, with
  initialDelaySeconds (from the container's start), periodSeconds, timeoutSeconds,
  successThreshold and failureThreshold. A startup probe gates the other two and sets
  ``containerStatuses[0].started``; the Ready and ContainersReady conditions and
  ``containerStatuses[0].ready`` follow readiness (a container without a readiness probe is
  ready once started). A liveness (or startup) probe that reaches its failureThreshold kills
  the container (SIGTERM, SIGKILL after the probe's terminationGracePeriodSeconds, else the
  pod's), which is then restarted unless restartPolicy is Never (restartCount, lastState);
  each failed probe records a Warning Event ``Unhealthy`` ("Liveness probe failed: HTTP probe
  failed with statuscode: 500"; repeats count up) and the kill a Normal Event ``Killing``
  ("Container trading failed liveness probe, will be restarted"). Probes reach the process on
  the host: pods share the host's network, so a container listens on its own containerPort
  on 127.0.0.1 (named probe ports are resolved through the container's ``ports``), and an
  exec probe runs on the host with the container's environment and working directory.
* Coverage: the variables a test run that measures coverage sets for its subprocesses
  (``COVERAGE_PROCESS_CONFIG``, ``COVERAGE_PROCESS_START``, ``COVERAGE_*``, ``COV_CORE_*``,
  ``KUBEQUANT_COVERAGE_DIR``; see ``coverage_env``) reach every pod's process, so a pod
  running the host's Python is measured like any other subprocess.
* ``command_map`` maps an executable name (``command[0]`` or its basename, e.g.
  ``"kubequant"`` or ``"python3"``) to a local path; a container without
  ``command`` is looked up by its ``image``. Other names are looked up on ``PATH``;
  one not found fails the container with reason StartError, exit code 128.
* Lifecycle: ``activeDeadlineSeconds`` (counted from ``status.startTime``) kills the
  process group (SIGTERM, SIGKILL after ``terminationGracePeriodSeconds``) and
  reports phase Failed, reason DeadlineExceeded. A pod deleted while it runs is
  killed the same way (within its deletion grace period), reported terminated and
  then removed with grace period 0, as a kubelet does; terminal pods being deleted
  are removed at once. ``restartPolicy`` OnFailure/Always restarts the container in
  place (restartCount, lastState, CrashLoopBackOff with a back-off that starts at
  ``restart_backoff_s`` and doubles up to 300 s). Output (stdout and stderr) goes to
  ``<workdir>/<uid>/log.txt``; ``logs(pod_name)`` returns it. Leaving the context
  kills what still runs (reported Failed, reason Terminated, like a kubelet's
  graceful node shutdown), stops the threads and deletes the Node and its Lease.

What it is not (it is a stand-in for tests, not a runtime):

* no images: the image is never pulled; the host's programs and Python environment
  run instead, and a container without ``command`` fails unless ``command_map`` maps
  its image (image entrypoints are unknown);
* no isolation: no Linux namespaces, cgroups, users or securityContext; processes run
  as the test's user with the host's filesystem, network and PIDs; readOnly mounts are
  not enforced (files get their mode, that is all); paths the program has compiled in
  (e.g. ``/var/run/secrets/...`` in ``load_incluster_config``) are not redirected;
* no resource requests/limits enforcement (the scheduler still accounts for them
  against the node's allocatable), no eviction, no node pressure detection;
* no gRPC probes (a pod with one is failed as unsupported); HTTP probes do not follow
  redirects (a 3xx is a success); the first restart after a probe kill waits
  ``restart_backoff_s`` like any other (the kubelet restarts the first time at once);
* no lifecycle hooks, no ``fileKeyRef`` env, no Services' env vars except
  ``KUBERNETES_SERVICE_*`` (which point at the real API server), no token rotation;
* no init containers, sidecars or ephemeral containers, exactly one container per pod,
  only the volume types listed above: any other pod is failed at once with reason
  UnsupportedByLocalKubelet (a real kubelet has no such reason);
* restarts (OnFailure/Always) are in place with a simplified back-off; there is no
  garbage collection of dead containers, and ``logs()`` shows every attempt;
* pods bound to the node before it started are treated as new if they are not
  terminal (their processes, if any, belonged to another LocalKubelet and are gone);
* several LocalKubelets may serve pool ``local`` on one cluster (one per node name, a
  second one with a live Lease on the same name is refused): pods that must run on a
  given one select ``kubernetes.io/hostname`` too (see the ``node_selector`` property).

Usage::

    with LocalKubelet(api_client, workdir=tmp_path, command_map={"kubequant": venv_bin}) as lk:
        ...  # a Job whose pod template has tolerations [TOLERATION], nodeSelector lk.node_selector
        print(lk.logs(pod_name))
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.client
import json
import logging
import math
import os
import platform
import posixpath
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

POOL_LABEL = "kubequant.io/pool"
POOL = "local"
TAINT_KEY = "kubequant.io/local-runner"
#: What a pod spec needs to land on a LocalKubelet node.
TOLERATION: dict[str, str] = {"key": TAINT_KEY, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
NODE_SELECTOR: dict[str, str] = {POOL_LABEL: POOL}
INSTANCE_ANNOTATION = "kubequant.io/local-kubelet-instance"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"

NODE_LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_S = 40
LEASE_RENEW_S = 10.0
NODE_STATUS_EVERY = 3  # node status every 3 lease renewals (30 s)
CAPACITY = {"cpu": "4", "memory": "16Gi", "pods": "20", "ephemeral-storage": "100Gi"}
POD_IP = "127.0.0.1"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
# The kubelet's limits (pkg/kubelet/container: MaxContainerTerminationMessage*).
MAX_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
MAX_BACKOFF_S = 300.0
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
SHUTDOWN_MESSAGE = "Pod was terminated in response to imminent node shutdown (LocalKubelet stopped)."
UNKNOWN_MESSAGE = "The container could not be located when the pod was terminated"
SMP = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"
COMPONENT = "local-kubelet"


class _Waiting(Exception):
    """Something the container needs is not there yet (ConfigMap, Secret, ServiceAccount): retry."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _Unsupported(Exception):
    """The pod asks for something LocalKubelet does not do: the pod is failed."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ts(t: dt.datetime | None = None) -> str:
    """metav1.Time (RFC 3339, seconds)."""
    return (t or _now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_ts(t: dt.datetime | None = None) -> str:
    """metav1.MicroTime (RFC 3339, microseconds), e.g. a Lease's renewTime."""
    return (t or _now()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a client method and return the response as plain JSON (the API's field names)."""
    resp = call(*args, _preload_content=False, **kwargs)
    try:
        return json.loads(resp.data)
    finally:
        resp.release_conn()


def _get_or_none(call: Callable[..., Any], *args: Any) -> dict[str, Any] | None:
    try:
        return _raw(call, *args)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


# --------------------------------------------------------------------------- small pure helpers

_QUANTITY = re.compile(
    r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]([+-]?\d+))?(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
)
_SUFFIX: dict[str | None, Fraction] = {
    None: Fraction(1),
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    **{s: Fraction(2 ** (10 * (i + 1))) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}


def parse_quantity(text: str) -> Fraction:
    """A Kubernetes resource.Quantity ("500m", "1.5Gi", "2e3") as an exact number."""
    m = _QUANTITY.match(str(text).strip())
    if not m:
        raise ValueError(f"not a quantity: {text!r}")
    number, exponent, suffix = m.groups()
    value = Fraction(number) * _SUFFIX[suffix]
    return value * Fraction(10) ** int(exponent) if exponent else value


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion (third_party/forked/golang/expansion): $(NAME) is
    replaced when NAME is defined and left as it is otherwise; $$ is an escaped $."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env[name] if name in env else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(ch)
        i += 1
    return "".join(out)


class PathRewriter:
    """Rewrites container paths (mount points and files) to host paths, in one pass.

    A prefix only matches at a path boundary: not preceded by a path character (so the
    host path it produces, which ends with the container path, is never rewritten
    again) and followed by '/', the end, or a character that is not a path character."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self.mapping = {
            posixpath.normpath(k): v for k, v in mapping.items() if k and posixpath.normpath(k) != "/"
        }
        keys = sorted(self.mapping, key=len, reverse=True)
        self._pattern = (
            re.compile(r"(?<![\w./-])(" + "|".join(map(re.escape, keys)) + r")(?![\w.-])") if keys else None
        )

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self.mapping[m.group(1)], text)


def container_command(container: Mapping[str, Any]) -> str:
    """The executable a container names (command[0]), '' if it has none."""
    return (container.get("command") or [""])[0]


def _valid_env_name(name: str) -> bool:
    return bool(name) and "=" not in name and name.isprintable()


# What a test run that measures coverage puts in the environment for its Python subprocesses:
# coverage.py's `[run] patch = subprocess` sets COVERAGE_PROCESS_CONFIG (its configuration, data
# file made absolute), COVERAGE_PROCESS_START names a configuration file (the older way), and
# pytest-cov before 7 used COV_CORE_*; KUBEQUANT_COVERAGE_DIR is where hack/run-tests.sh collects.
COVERAGE_ENV_PREFIXES = ("COVERAGE_", "COV_CORE_")
COVERAGE_ENV_PATHS = frozenset(
    {
        "COVERAGE_PROCESS_START",
        "COVERAGE_RCFILE",
        "COVERAGE_FILE",
        "COV_CORE_CONFIG",
        "COV_CORE_DATAFILE",
        "KUBEQUANT_COVERAGE_DIR",
    }
)


def coverage_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The coverage variables of ``environ`` a pod's Python process needs to be measured too; the
    paths among them made absolute, since a pod runs in its own working directory."""
    out: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith(COVERAGE_ENV_PREFIXES) or key == "KUBEQUANT_COVERAGE_DIR":
            out[key] = os.path.abspath(value) if key in COVERAGE_ENV_PATHS and value else value
    return out


def _arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


# --------------------------------------------------------------------------- probes

#: The probes of a container, in the order the kubelet gates them: startup first; liveness and
#: readiness only once the container has started.
PROBE_FIELDS = {"startup": "startupProbe", "liveness": "livenessProbe", "readiness": "readinessProbe"}
# The API server's defaults (pkg/apis/core/v1/defaults.go, SetDefaults_Probe), for fields it left out.
PROBE_DEFAULTS = {
    "initialDelaySeconds": 0,
    "periodSeconds": 10,
    "timeoutSeconds": 1,
    "successThreshold": 1,
    "failureThreshold": 3,
}
# The kubelet reads at most 10 KiB of a probe's answer (pkg/probe/http, maxRespBodyLength).
PROBE_OUTPUT_BYTES = 10 * 1024
PROBE_HANDLERS = ("httpGet", "tcpSocket", "exec", "grpc")


@dataclass(frozen=True)
class ProbeSpec:
    """One probe of a container, with the API server's defaults filled in."""

    kind: str  # "startup", "liveness" or "readiness"
    handler: str  # "httpGet", "tcpSocket" or "exec"
    action: Mapping[str, Any]
    initial_delay_s: float
    period_s: float
    timeout_s: float
    success_threshold: int
    failure_threshold: int
    termination_grace_s: float | None  # probe-level terminationGracePeriodSeconds, if set
    command: tuple[str, ...] = ()  # exec: the argv to run on the host

    @classmethod
    def parse(cls, kind: str, probe: Mapping[str, Any], where: str) -> ProbeSpec:
        """Read a probe of the pod spec; a probe LocalKubelet cannot run raises _Unsupported."""
        handlers = [h for h in PROBE_HANDLERS if probe.get(h) is not None]
        if len(handlers) != 1:
            raise _Unsupported(
                f"{where}: set exactly one of httpGet, tcpSocket, exec or grpc (it has {handlers or 'none'})"
            )
        (handler,) = handlers
        if handler == "grpc":
            raise _Unsupported(
                f"{where}.grpc: gRPC probes are not supported by LocalKubelet; use httpGet, tcpSocket or exec"
            )
        values = {
            **PROBE_DEFAULTS,
            **{k: v for k, v in probe.items() if k in PROBE_DEFAULTS and v is not None},
        }
        for key, value in values.items():
            least = 0 if key == "initialDelaySeconds" else 1
            if not isinstance(value, int) or value < least:
                raise _Unsupported(f"{where}.{key}: set a whole number of at least {least} (got {value!r})")
        command: tuple[str, ...] = ()
        if handler == "exec":
            command = tuple(str(part) for part in probe["exec"].get("command") or [])
            if not command:
                raise _Unsupported(f"{where}.exec.command: list the command to run (it is empty)")
        grace = probe.get("terminationGracePeriodSeconds")
        return cls(
            kind=kind,
            handler=handler,
            action=dict(probe[handler]),
            initial_delay_s=float(values["initialDelaySeconds"]),
            period_s=float(values["periodSeconds"]),
            timeout_s=float(values["timeoutSeconds"]),
            success_threshold=int(values["successThreshold"]),
            failure_threshold=int(values["failureThreshold"]),
            termination_grace_s=float(grace) if grace is not None else None,
            command=command,
        )


@dataclass(frozen=True)
class ProbeTarget:
    """Where a container's probes go: its pod IP, its named ports, and for exec its env and cwd."""

    host: str = POD_IP
    ports: Mapping[str, int] = field(default_factory=dict)
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    user_agent: str = "kube-probe/local"


@dataclass(frozen=True)
class ProbeOutcome:
    """What one probe found: ok True (success), False (failure) or None (the probe errored: the
    kubelet discards such a result and only records an event)."""

    ok: bool | None
    output: str


class ProbeTracker:
    """The result the kubelet's prober worker reports for one probe of one container run
    (pkg/kubelet/prober/worker.go, doProbe): it changes only after ``failureThreshold`` failures
    or ``successThreshold`` successes in a row. Liveness starts as success, readiness as failure,
    startup as unknown (None). After a liveness or startup failure the worker is on hold: the
    container is killed and the next run gets new trackers."""

    INITIAL: Mapping[str, bool | None] = {"liveness": True, "readiness": False, "startup": None}

    def __init__(self, spec: ProbeSpec) -> None:
        self.spec = spec
        self.result: bool | None = self.INITIAL[spec.kind]
        self._last: bool | None = None
        self._run = 0

    def observe(self, ok: bool) -> bool | None:
        """Count one probe result; return the reported result when a threshold is met, else None."""
        if ok == self._last:
            self._run += 1
        else:
            self._last, self._run = ok, 1
        if self._run < (self.spec.success_threshold if ok else self.spec.failure_threshold):
            return None
        self.result = ok
        if not ok and self.spec.kind in ("liveness", "startup"):
            self._run = 0
        return ok


def _probe_port(action: Mapping[str, Any], target: ProbeTarget) -> int:
    """The probe's port: a number, or the name of one of the container's ports."""
    port = action.get("port")
    if isinstance(port, str) and not port.isdigit():
        if port not in target.ports:
            raise LookupError(f"couldn't find port: {port} in the container's ports {sorted(target.ports)}")
        port = target.ports[port]
    number = int(port) if port is not None else 0
    if not 0 < number < 65536:
        raise LookupError(f"invalid port number: {port!r}")
    return number


def _probe_http(spec: ProbeSpec, target: ProbeTarget) -> ProbeOutcome:
    action = spec.action
    host = action.get("host") or target.host
    port = _probe_port(action, target)
    scheme = str(action.get("scheme") or "HTTP").lower()
    path = str(action.get("path") or "/")
    path = path if path.startswith("/") else f"/{path}"
    bracketed = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{bracketed}:{port}{path}"
    headers = {"User-Agent": target.user_agent, "Accept": "*/*"}
    for header in action.get("httpHeaders") or []:
        headers[header["name"]] = header.get("value", "")
    conn: http.client.HTTPConnection
    if scheme == "https":  # the kubelet does not verify a probe's certificate
        conn = http.client.HTTPSConnection(
            host, port, timeout=spec.timeout_s, context=ssl._create_unverified_context()
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=spec.timeout_s)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read(PROBE_OUTPUT_BYTES)
    except TimeoutError:
        return ProbeOutcome(
            False, f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)'
        )
    except (OSError, http.client.HTTPException) as exc:
        reason = (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).lower()
        if isinstance(exc, ConnectionRefusedError):  # nothing listens (yet)
            reason = f"dial tcp {host}:{port}: connect: {reason}"
        return ProbeOutcome(False, f'Get "{url}": {reason}')
    finally:
        conn.close()
    text = body.decode("utf-8", errors="replace")
    # Redirects are not followed: a 3xx is a success, as the kubelet reports a redirect elsewhere.
    if 200 <= resp.status < 400:
        return ProbeOutcome(True, text)
    return ProbeOutcome(False, f"HTTP probe failed with statuscode: {resp.status}")


def _probe_tcp(spec: ProbeSpec, target: ProbeTarget) -> ProbeOutcome:
    host = spec.action.get("host") or target.host
    port = _probe_port(spec.action, target)
    try:
        with socket.create_connection((host, port), timeout=spec.timeout_s):
            return ProbeOutcome(True, "")
    except TimeoutError:
        return ProbeOutcome(False, f"dial tcp {host}:{port}: i/o timeout")
    except OSError as exc:
        return ProbeOutcome(False, f"dial tcp {host}:{port}: connect: {exc.strerror or exc}")


def _probe_exec(spec: ProbeSpec, target: ProbeTarget) -> ProbeOutcome:
    try:
        proc = subprocess.Popen(
            list(spec.command),
            env=dict(target.env) if target.env is not None else None,
            cwd=target.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return ProbeOutcome(None, f'exec: "{spec.command[0]}": {exc.strerror or exc}')
    try:
        out, _ = proc.communicate(timeout=spec.timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return ProbeOutcome(False, f"command {list(spec.command)!r} timed out")
    text = out[:PROBE_OUTPUT_BYTES].decode("utf-8", errors="replace")
    return ProbeOutcome(proc.returncode == 0, text)


def run_probe(spec: ProbeSpec, target: ProbeTarget) -> ProbeOutcome:
    """Run one probe once, as the kubelet's prober does (pkg/kubelet/prober/prober.go, runProbe)."""
    try:
        if spec.handler == "httpGet":
            return _probe_http(spec, target)
        if spec.handler == "tcpSocket":
            return _probe_tcp(spec, target)
        return _probe_exec(spec, target)
    except LookupError as exc:
        return ProbeOutcome(None, str(exc))


class _Probing:
    """The probes of one container run, each in its own thread as in the kubelet; the pod's thread
    reads ``started``, ``ready`` and ``kill`` and reports them (``version`` moves on each change)."""

    def __init__(
        self,
        specs: Mapping[str, ProbeSpec],
        target: ProbeTarget,
        record: Callable[[str, str], None],
        name: str,
    ) -> None:
        self.specs = dict(specs)
        self.target = target
        self.trackers = {kind: ProbeTracker(spec) for kind, spec in self.specs.items()}
        self._record = record  # (event type, message) of an Unhealthy event
        self._name = name
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self.started_event = threading.Event()
        if "startup" not in self.specs:
            self.started_event.set()
        self.version = 0
        self.kill: tuple[str, float | None] | None = None  # (probe kind, its grace period) once failed
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for kind in self.specs:
            thread = threading.Thread(
                target=self._loop, args=(kind,), name=f"local-kubelet-probe-{self._name}-{kind}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=max((s.timeout_s for s in self.specs.values()), default=1.0) + 5)

    @property
    def started(self) -> bool:
        return self.started_event.is_set()

    @property
    def ready(self) -> bool:
        if not self.started or self.kill is not None:
            return False
        readiness = self.trackers.get("readiness")
        return readiness is None or readiness.result is True

    def _loop(self, kind: str) -> None:
        spec = self.specs[kind]
        # initialDelaySeconds counts from the container's start, whatever gates the probe.
        if self.stop.wait(spec.initial_delay_s):
            return
        if kind != "startup":
            while not self.started_event.wait(0.1):  # liveness and readiness wait for the startup probe
                if self.stop.is_set():
                    return
        next_at = time.monotonic()
        while not self.stop.wait(max(0.0, next_at - time.monotonic())):
            outcome = run_probe(spec, self.target)
            if self.stop.is_set():
                return
            now = time.monotonic()
            next_at += spec.period_s
            if next_at < now:  # a probe that overran its period skips the ticks it missed (Go's ticker)
                next_at = now + spec.period_s - (now - next_at) % spec.period_s
            if not self._observe(kind, outcome):
                return

    def _observe(self, kind: str, outcome: ProbeOutcome) -> bool:
        """Count one outcome; False when this probe stops (startup done, or the container is to be killed)."""
        title = kind.capitalize()
        if outcome.ok is None:
            self._record("Warning", f"{title} probe errored and resulted in unknown state: {outcome.output}")
            return True
        if outcome.ok is False:
            self._record("Warning", f"{title} probe failed: {outcome.output.strip()}")
        with self._lock:
            tracker = self.trackers[kind]
            before = tracker.result
            result = tracker.observe(outcome.ok)
            if result is None:
                return True
            if kind == "startup":
                if result:
                    self.started_event.set()
                    self.version += 1
                    return False
                self.kill = (kind, self.specs[kind].termination_grace_s)
                self.version += 1
                return False
            if kind == "liveness" and not result:
                self.kill = (kind, self.specs[kind].termination_grace_s)
                self.version += 1
                return False
            if result != before:
                self.version += 1
            return True


# --------------------------------------------------------------------------- per-pod state


@dataclass
class _Prepared:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    termination_file: Path
    fallback_to_logs: bool
    probes: dict[str, ProbeSpec] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)


@dataclass
class _Exit:
    exit_code: int
    reason: str
    message: str
    started_at: str
    finished_at: str
    container_id: str
    # None (exited by itself), "deleted", "deadline", "stopping", or the probe that failed: "liveness", "startup"
    cause: str | None


@dataclass
class _PodRun:
    namespace: str
    name: str
    uid: str
    dir: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    delete_requested: threading.Event = field(default_factory=threading.Event)
    gone: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    delete_grace_s: float | None = None
    finalized: bool = False
    proc: subprocess.Popen[bytes] | None = None
    thread: threading.Thread | None = None
    conditions: dict[str, tuple[str, str]] = field(
        default_factory=dict
    )  # type -> (status, lastTransitionTime)
    events_sent: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> (Event name, count)
    events_lock: threading.Lock = field(default_factory=threading.Lock)


# --------------------------------------------------------------------------- the kubelet


class LocalKubelet:
    """A kubelet stand-in that runs the pods bound to node ``node_name`` as local subprocesses.

    Use it as a context manager (or call ``start()``/``stop()``). Arguments after
    ``node_name`` are keyword-only:

    workdir: where pod directories go (``<workdir>/<pod-uid>/``).
    path_map: local directories for hostPath/persistentVolumeClaim volumes, looked up
        by the container's mountPath, then by the claim name or the hostPath path.
    command_map: executable name (or image, for containers without ``command``) ->
        local path.
    max_pods: how many pods run at once.
    extra_env: host environment added under the pod's own env (e.g. PYTHONPATH).
    restart_backoff_s: first back-off before restarting a container (OnFailure/Always).
    ready_timeout_s: how long ``start()`` waits for the node to be Ready and untainted.
    """

    TOLERATION = TOLERATION
    NODE_SELECTOR = NODE_SELECTOR

    def __init__(
        self,
        api_client: client.ApiClient,
        node_name: str = "local-runner",
        *,
        workdir: Path,
        path_map: Mapping[str, str] | None = None,
        command_map: Mapping[str, str] | None = None,
        max_pods: int = 4,
        extra_env: Mapping[str, str] | None = None,
        restart_backoff_s: float = 10.0,
        ready_timeout_s: float = 60.0,
    ) -> None:
        self.api_client = api_client
        self.node_name = node_name
        self.workdir = Path(workdir).resolve()
        self.path_map = {k: str(v) for k, v in (path_map or {}).items()}
        self.command_map = {k: str(v) for k, v in (command_map or {}).items()}
        self.extra_env = dict(extra_env or {})
        self.restart_backoff_s = restart_backoff_s
        self.ready_timeout_s = ready_timeout_s
        self.core = client.CoreV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self._instance = f"{platform.node()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self._slots = threading.BoundedSemaphore(max_pods)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._runs: dict[str, _PodRun] = {}
        self._threads: list[threading.Thread] = []
        self._watch: watch.Watch | None = None
        self._node_uid: str | None = None
        self._ready_since = _ts()
        self._kubelet_version = "local"
        self._user_agent = "kube-probe/local"
        self._started = False
        host = urlparse(api_client.configuration.host)
        self._api_host, self._api_port = host.hostname or "127.0.0.1", str(host.port or 443)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalKubelet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Register the node, start heartbeats, wait until it is schedulable, start watching pods."""
        if self._started:
            return
        self._started = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            with contextlib.suppress(Exception):
                self._kubelet_version = client.VersionApi(self.api_client).get_code().git_version
            # The kubelet's probes say "kube-probe/<major>.<minor>".
            release = re.match(r"v?(\d+)\.(\d+)", self._kubelet_version)
            if release:
                self._user_agent = f"kube-probe/{release.group(1)}.{release.group(2)}"
            self._register_node()
            self._renew_lease()
            self._spawn(self._heartbeat_loop, "heartbeat")
            self._wait_schedulable()
            self._spawn(self._watch_loop, "pod-watch")
        except BaseException:
            self.stop()
            raise
        log.info("LocalKubelet: node %s ready, pods run under %s", self.node_name, self.workdir)

    def stop(self) -> None:
        """Kill what still runs, stop the threads, delete the Node and its Lease."""
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            if run.thread is not None:
                run.thread.join(timeout=30)
        for thread in self._threads:
            thread.join(timeout=15)
        for delete in (
            lambda: self.core.delete_node(self.node_name),
            lambda: self.coordination.delete_namespaced_lease(self.node_name, NODE_LEASE_NAMESPACE),
        ):
            try:
                delete()
            except ApiException as exc:
                if exc.status != 404:
                    log.warning("LocalKubelet: cleanup failed: %s", exc)
            except Exception as exc:  # the API server may be gone already
                log.warning("LocalKubelet: cleanup failed: %s", exc)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=f"local-kubelet-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    @property
    def node_selector(self) -> dict[str, str]:
        """NODE_SELECTOR pinned to this instance's node (several LocalKubelets may share a cluster)."""
        return {**NODE_SELECTOR, "kubernetes.io/hostname": self.node_name}

    # ------------------------------------------------------------------ diagnostics

    def _find_run(self, pod_name: str, namespace: str | None) -> _PodRun:
        with self._lock:
            runs = [
                r
                for r in self._runs.values()
                if r.name == pod_name and (namespace is None or r.namespace == namespace)
            ]
            known = sorted(f"{r.namespace}/{r.name}" for r in self._runs.values())
        if not runs:
            raise KeyError(f"LocalKubelet ran no pod {pod_name!r} (known: {known})")
        return runs[-1]

    def pod_dir(self, pod_name: str, namespace: str | None = None) -> Path:
        """The directory of a pod this kubelet has seen: ``<workdir>/<uid>``."""
        return self._find_run(pod_name, namespace).dir

    def logs(self, pod_name: str, namespace: str | None = None) -> str:
        """Everything the pod's container wrote to stdout/stderr (all restarts); '' if it never ran."""
        path = self.pod_dir(pod_name, namespace) / "log.txt"
        return path.read_text(errors="replace") if path.exists() else ""

    # ------------------------------------------------------------------ node + lease

    def _node_status(self) -> dict[str, Any]:
        now = _ts()

        def cond(type_: str, status: str, reason: str, message: str) -> dict[str, str]:
            return {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self._ready_since,
            }

        return {
            "capacity": CAPACITY,
            "allocatable": CAPACITY,
            "conditions": [
                cond(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "no memory pressure (not measured)",
                ),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure (not measured)"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure (not measured)"),
                cond("Ready", "True", "KubeletReady", "LocalKubelet (test helper) is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": POD_IP},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": f"LocalKubelet on {platform.system()}",
                "containerRuntimeVersion": "local-subprocess://1",
                "kubeletVersion": self._kubelet_version,
                "operatingSystem": "linux",
                "architecture": _arch(),
            },
        }

    def _register_node(self) -> None:
        metadata = {
            "name": self.node_name,
            "labels": {
                POOL_LABEL: POOL,
                "kubernetes.io/hostname": self.node_name,
                "type": "local-runner",
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": _arch(),
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", INSTANCE_ANNOTATION: self._instance},
        }
        spec = {"taints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}]}
        try:
            node = _raw(
                self.core.create_node,
                {"apiVersion": "v1", "kind": "Node", "metadata": metadata, "spec": spec},
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
            node = self._take_over_node(metadata, spec)
        self._node_uid = node["metadata"]["uid"]
        self.core.patch_node_status(self.node_name, {"status": self._node_status()}, _content_type=SMP)

    def _take_over_node(self, metadata: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        """A node of that name exists: refuse a kwok node or a live LocalKubelet's, else adopt it."""
        existing = _raw(self.core.read_node, self.node_name)
        annotations = existing["metadata"].get("annotations") or {}
        if KWOK_ANNOTATION in annotations:
            raise RuntimeError(
                f"node {self.node_name!r} exists and is managed by kwok; pick another node_name"
            )
        lease = _get_or_none(self.coordination.read_namespaced_lease, self.node_name, NODE_LEASE_NAMESPACE)
        renewed = (lease or {}).get("spec", {}).get("renewTime")
        if renewed and (_now() - _parse_ts(renewed)).total_seconds() < LEASE_DURATION_S:
            raise RuntimeError(
                f"node {self.node_name!r} exists and its Lease was renewed {renewed} "
                f"(by {annotations.get(INSTANCE_ANNOTATION, 'another kubelet')}): "
                "is another LocalKubelet running?"
            )
        log.warning("LocalKubelet: adopting stale node %s", self.node_name)
        return _raw(
            self.core.patch_node, self.node_name, {"metadata": metadata, "spec": spec}, _content_type=SMP
        )

    def _renew_lease(self) -> None:
        now = _micro_ts()
        try:
            self.coordination.patch_namespaced_lease(
                self.node_name,
                NODE_LEASE_NAMESPACE,
                {"spec": {"holderIdentity": self.node_name, "renewTime": now}},
                _content_type=MERGE_PATCH,
            )
            return
        except ApiException as exc:
            if exc.status != 404:
                raise
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.node_name,
                "namespace": NODE_LEASE_NAMESPACE,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self._node_uid}
                ],
            },
            "spec": {
                "holderIdentity": self.node_name,
                "leaseDurationSeconds": LEASE_DURATION_S,
                "renewTime": now,
            },
        }
        self.coordination.create_namespaced_lease(NODE_LEASE_NAMESPACE, body)

    def _heartbeat_loop(self) -> None:
        tick = 0
        while not self._stopping.wait(LEASE_RENEW_S):
            tick += 1
            try:
                self._renew_lease()
                if tick % NODE_STATUS_EVERY == 0:
                    self.core.patch_node_status(
                        self.node_name, {"status": self._node_status()}, _content_type=SMP
                    )
            except Exception as exc:
                log.warning("LocalKubelet: heartbeat failed: %s", exc)

    def _wait_schedulable(self) -> None:
        """Until the node is Ready and the node lifecycle controller has lifted the
        node.kubernetes.io/not-ready taint that admission puts on every new node."""
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            node = _raw(self.core.read_node, self.node_name)
            ready = any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in node.get("status", {}).get("conditions", [])
            )
            blocking = [
                t["key"]
                for t in node.get("spec", {}).get("taints", [])
                if t["key"].startswith("node.kubernetes.io/")
            ]
            if ready and not blocking:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"node {self.node_name} not schedulable after {self.ready_timeout_s:.0f}s "
                    f"(ready={ready}, taints={blocking}); is kube-controller-manager running?"
                )
            time.sleep(0.25)

    # ------------------------------------------------------------------ pod watch

    def _watch_loop(self) -> None:
        selector = f"spec.nodeName={self.node_name}"
        rv: str | None = None
        while not self._stopping.is_set():
            try:
                if rv is None:
                    listing = _raw(self.core.list_pod_for_all_namespaces, field_selector=selector)
                    present = set()
                    for pod in listing.get("items", []):
                        present.add(pod["metadata"]["uid"])
                        self._on_pod(pod)
                    with self._lock:
                        vanished = [r for uid, r in self._runs.items() if uid not in present]
                    for run in vanished:
                        self._on_pod_gone(run)
                    rv = listing["metadata"]["resourceVersion"]
                self._watch = watch.Watch()
                for event in self._watch.stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=rv,
                    allow_watch_bookmarks=True,
                    timeout_seconds=30,
                    deserialize=False,
                ):
                    if self._stopping.is_set():
                        break
                    obj = event.get("object") or {}
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._on_pod(obj)
                    elif event["type"] == "DELETED":
                        with self._lock:
                            gone = self._runs.get(obj["metadata"]["uid"])
                        if gone is not None:
                            self._on_pod_gone(gone)
            except ApiException as exc:
                if exc.status == 410:  # too old a resourceVersion: list again
                    rv = None
                    continue
                if not self._stopping.is_set():
                    log.warning("LocalKubelet: pod watch failed: %s", exc)
                    self._stopping.wait(1)
            except Exception as exc:
                if not self._stopping.is_set():
                    log.warning("LocalKubelet: pod watch failed: %s: %s", type(exc).__name__, exc)
                    self._stopping.wait(1)

    def _on_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            run = self._runs.get(uid)
            if run is None:
                run = _PodRun(meta["namespace"], meta["name"], uid, self.workdir / uid)
                self._runs[uid] = run
                phase = pod.get("status", {}).get("phase")
                if phase in ("Succeeded", "Failed") or self._stopping.is_set():
                    run.done.set()
                else:
                    run.thread = threading.Thread(
                        target=self._pod_thread,
                        args=(run, pod),
                        name=f"local-kubelet-pod-{meta['name']}",
                        daemon=True,
                    )
                    run.thread.start()
        if meta.get("deletionTimestamp"):
            grace = meta.get("deletionGracePeriodSeconds")
            with run.lock:
                run.delete_grace_s = float(grace) if grace is not None else None
                run.delete_requested.set()
                finalize = run.done.is_set()
            if finalize:
                self._finalize(run)

    def _on_pod_gone(self, run: _PodRun) -> None:
        with run.lock:
            run.gone.set()
            run.delete_requested.set()
            if run.delete_grace_s is None:
                run.delete_grace_s = 2.0

    def _finalize(self, run: _PodRun) -> None:
        """What a kubelet does last for a deleted pod: delete it for good (grace period 0)."""
        with run.lock:
            if run.finalized or run.gone.is_set():
                return
            run.finalized = True
        try:
            # The grace period goes in the body: with a body, the API server ignores the query.
            self.core.delete_namespaced_pod(
                run.name,
                run.namespace,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=run.uid)
                ),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("LocalKubelet: deleting pod %s/%s failed: %s", run.namespace, run.name, exc)

    # ------------------------------------------------------------------ one pod

    def _pod_thread(self, run: _PodRun, pod: dict[str, Any]) -> None:
        try:
            while not self._slots.acquire(timeout=0.5):
                if run.delete_requested.is_set() or self._stopping.is_set():
                    return
            try:
                if not run.delete_requested.is_set():  # deleted before it had a slot: never start it
                    self._run_pod(run, pod)
            finally:
                self._slots.release()
        except Exception as exc:
            log.exception("LocalKubelet: pod %s/%s", run.namespace, run.name)
            if run.proc is not None:  # never leave a process behind
                self._kill(run.proc, 0)
            with contextlib.suppress(Exception):
                self._patch_status(
                    run,
                    {
                        "phase": "Failed",
                        "reason": "LocalKubeletError",
                        "message": f"{type(exc).__name__}: {exc}",
                    },
                )
        finally:
            with run.lock:
                run.done.set()
                finalize = run.delete_requested.is_set()
            if finalize:
                self._finalize(run)

    def _run_pod(self, run: _PodRun, pod: dict[str, Any]) -> None:
        spec, status = pod["spec"], pod.get("status", {})
        start_time = status.get("startTime") or _ts()
        deadline_s = spec.get("activeDeadlineSeconds")
        deadline = _parse_ts(start_time).timestamp() + deadline_s if deadline_s else None
        grace = float(spec.get("terminationGracePeriodSeconds", 30))
        base = {
            "startTime": start_time,
            "hostIP": POD_IP,
            "hostIPs": [{"ip": POD_IP}],
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
        }
        if pod["metadata"].get("generation") is not None:
            base["observedGeneration"] = pod["metadata"]["generation"]
        containers = spec.get("containers", [])
        problem = self._unsupported(spec)
        container = containers[0] if containers else {"name": "main"}
        if problem:
            self._fail_unsupported(run, container, base, problem)
            return
        restart_policy = spec.get("restartPolicy", "Always")
        run.dir.mkdir(parents=True, exist_ok=True)
        self._patch_status(
            run,
            {
                **base,
                "phase": "Pending",
                "conditions": self._conditions(run, initialized=True, ready=False, sandbox=True),
                "containerStatuses": [
                    self._container_status(
                        container, {"waiting": {"reason": "ContainerCreating"}}, ready=False
                    )
                ],
            },
        )
        prepared: _Prepared | None = None
        last_wait: tuple[str, str] | None = None
        while prepared is None:
            try:
                prepared = self._prepare(run, pod, container)
            except _Unsupported as exc:
                self._fail_unsupported(run, container, base, str(exc))
                return
            except _Waiting as wait:
                if (wait.reason, wait.message) != last_wait:
                    last_wait = (wait.reason, wait.message)
                    self._event(run, "Warning", "Failed", f"Error: {wait.message}")
                    self._patch_status(
                        run,
                        {
                            "containerStatuses": [
                                self._container_status(
                                    container,
                                    {"waiting": {"reason": wait.reason, "message": wait.message}},
                                    ready=False,
                                )
                            ]
                        },
                    )
                cause = self._sleep(run, 2.0, deadline)
                if cause:
                    self._report_terminal(
                        run, container, base, cause, exit_=None, restart_count=0, last_state=None
                    )
                    return

        restart_count, last_state, backoff = 0, None, self.restart_backoff_s
        while True:
            began = time.monotonic()
            exit_ = self._run_container(
                run, container, prepared, base, deadline, grace, restart_count, last_state, restart_policy
            )
            if exit_.cause in PROBE_FIELDS:  # killed for a failed liveness or startup probe
                restart = restart_policy != "Never"
            else:
                restart = exit_.cause is None and (
                    restart_policy == "Always" or (restart_policy == "OnFailure" and exit_.exit_code != 0)
                )
            if not restart:
                self._report_terminal(run, container, base, exit_.cause, exit_, restart_count, last_state)
                return
            if time.monotonic() - began > 2 * MAX_BACKOFF_S:
                backoff = self.restart_backoff_s
            terminated = self._terminated_state(exit_)
            restart_count += 1
            last_state = terminated
            self._patch_status(
                run,
                {
                    "phase": "Running",
                    "conditions": self._conditions(run, initialized=True, ready=False, sandbox=True),
                    "containerStatuses": [
                        self._container_status(
                            container,
                            {
                                "waiting": {
                                    "reason": "CrashLoopBackOff",
                                    "message": f"back-off {backoff:g}s restarting failed container="
                                    f"{container['name']} pod={run.name}_{run.namespace}({run.uid})",
                                }
                            },
                            ready=False,
                            restart_count=restart_count,
                            last_state=last_state,
                        )
                    ],
                },
            )
            cause = self._sleep(run, backoff, deadline)
            if cause:
                self._report_terminal(run, container, base, cause, exit_, restart_count, None)
                return
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _unsupported(self, spec: dict[str, Any]) -> str | None:
        if spec.get("initContainers"):
            return "init containers (and sidecars) are not supported by LocalKubelet"
        if spec.get("ephemeralContainers"):
            return "ephemeral containers are not supported by LocalKubelet"
        count = len(spec.get("containers", []))
        if count != 1:
            return f"LocalKubelet runs exactly one container per pod; this pod has {count}"
        return None

    def _fail_unsupported(
        self, run: _PodRun, container: dict[str, Any], base: dict[str, Any], problem: str
    ) -> None:
        self._event(run, "Warning", "UnsupportedByLocalKubelet", problem)
        self._patch_status(
            run,
            {
                **base,
                "phase": "Failed",
                "reason": "UnsupportedByLocalKubelet",
                "message": problem,
                "conditions": self._conditions(
                    run, initialized=True, ready=False, sandbox=False, completed=True
                ),
                "containerStatuses": [
                    self._container_status(
                        container,
                        {
                            "terminated": {
                                "exitCode": 128,
                                "reason": "StartError",
                                "message": problem,
                                "startedAt": _ts(),
                                "finishedAt": _ts(),
                            }
                        },
                        ready=False,
                    )
                ],
            },
        )

    def _sleep(self, run: _PodRun, seconds: float, deadline: float | None) -> str | None:
        """Wait; return why the pod must end instead ("deleted", "deadline", "stopping"), if it must."""
        end = time.monotonic() + seconds
        while True:
            if run.delete_requested.is_set():
                return "deleted"
            if deadline is not None and time.time() >= deadline:
                return "deadline"
            if self._stopping.is_set():
                return "stopping"
            left = end - time.monotonic()
            if left <= 0:
                return None
            run.delete_requested.wait(min(left, 0.2))

    # ------------------------------------------------------------------ running a container

    def _run_container(
        self,
        run: _PodRun,
        container: dict[str, Any],
        prepared: _Prepared,
        base: dict[str, Any],
        deadline: float | None,
        grace: float,
        restart_count: int,
        last_state: dict[str, Any] | None,
        restart_policy: str = "Always",
    ) -> _Exit:
        prepared.termination_file.parent.mkdir(parents=True, exist_ok=True)
        prepared.termination_file.write_bytes(b"")
        prepared.cwd.mkdir(parents=True, exist_ok=True)
        with open(run.dir / "log.txt", "ab") as log_file:
            offset = log_file.tell()
            started_at = _ts()
            try:
                proc = subprocess.Popen(
                    prepared.argv,
                    cwd=prepared.cwd,
                    env=prepared.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                if isinstance(exc, FileNotFoundError) and "/" not in container_command(container):
                    reason = "executable file not found in $PATH (nor in LocalKubelet's command_map)"
                else:
                    reason = exc.strerror or str(exc)
                message = f'failed to start container process: exec: "{prepared.argv[0]}": {reason}'
                self._event(run, "Warning", "Failed", f"Error: {message}")
                return _Exit(128, "StartError", message, started_at, _ts(), "", None)
        run.proc = proc
        container_id = f"local://{run.uid}/{proc.pid}"
        probing = _Probing(
            prepared.probes,
            ProbeTarget(
                ports=prepared.ports, env=prepared.env, cwd=prepared.cwd, user_agent=self._user_agent
            ),
            lambda type_, message: self._event(run, type_, "Unhealthy", message, repeat=True),
            f"{run.name}-{restart_count}",
        )

        def report_running() -> None:
            ready = probing.ready
            self._patch_status(
                run,
                {
                    **base,
                    "phase": "Running",
                    "conditions": self._conditions(run, initialized=True, ready=ready, sandbox=True),
                    "containerStatuses": [
                        self._container_status(
                            container,
                            {"running": {"startedAt": started_at}},
                            ready=ready,
                            started=probing.started,
                            restart_count=restart_count,
                            last_state=last_state,
                            container_id=container_id,
                        )
                    ],
                },
            )

        self._event(run, "Normal", "Started", f"Started container {container['name']} (pid {proc.pid})")
        report_running()
        seen = probing.version
        probing.start()
        cause: str | None = None
        try:
            while True:
                try:
                    returncode = proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if run.delete_requested.is_set():
                    cause = "deleted"
                    kill_grace = run.delete_grace_s if run.delete_grace_s is not None else grace
                    message = f"Stopping container {container['name']} ({cause})"
                elif deadline is not None and time.time() >= deadline:
                    cause, kill_grace = "deadline", grace
                    message = f"Stopping container {container['name']} ({cause})"
                elif self._stopping.is_set():
                    cause, kill_grace = "stopping", min(grace, 5.0)
                    message = f"Stopping container {container['name']} ({cause})"
                elif probing.kill is not None:
                    # As the kubelet's computePodActions: the probe's own grace period, else the pod's.
                    cause, probe_grace = probing.kill
                    kill_grace = probe_grace if probe_grace is not None else grace
                    message = f"Container {container['name']} failed {cause} probe" + (
                        ", will be restarted" if restart_policy != "Never" else ""
                    )
                else:
                    if probing.version != seen:
                        seen = probing.version
                        report_running()
                    continue
                probing.stop.set()
                self._event(run, "Normal", "Killing", message, repeat=cause in PROBE_FIELDS)
                if cause in PROBE_FIELDS:
                    report_running()  # not ready while it stops
                returncode = self._kill(proc, kill_grace, run)
                break
        finally:
            probing.close()
        # Like a container's PID 1 exiting: whatever it left behind goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        run.proc = None
        exit_code = returncode if returncode >= 0 else 128 - returncode
        message = self._termination_message(prepared, exit_code, run.dir / "log.txt", offset)
        return _Exit(
            exit_code,
            "Completed" if exit_code == 0 else "Error",
            message,
            started_at,
            _ts(),
            container_id,
            cause,
        )

    def _kill(self, proc: subprocess.Popen[bytes], grace: float, run: _PodRun | None = None) -> int:
        """SIGTERM the process group, SIGKILL after ``grace`` seconds; with ``run``, a deletion with a
        shorter grace period or ``stop()`` (5 s) cuts the wait short. A stopped (SIGSTOP) process
        handles its SIGTERM only once continued: until then only the SIGKILL ends it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + max(grace, 0.0)
        while True:
            now = time.monotonic()
            if run is not None:
                if self._stopping.is_set():
                    deadline = min(deadline, now + 5.0)
                if run.delete_requested.is_set() and run.delete_grace_s is not None:
                    deadline = min(deadline, now + run.delete_grace_s)
            try:
                return proc.wait(timeout=max(0.0, min(0.2, deadline - now)))
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()

    @staticmethod
    def _termination_message(prepared: _Prepared, exit_code: int, log_path: Path, offset: int) -> str:
        try:
            with open(prepared.termination_file, "rb") as fh:
                data = fh.read(MAX_MESSAGE_BYTES)
        except OSError:
            data = b""
        if not data and exit_code != 0 and prepared.fallback_to_logs:
            with open(log_path, "rb") as fh:
                fh.seek(offset)
                lines = fh.read().splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
            data = b"".join(lines)[-FALLBACK_LOG_BYTES:]
        return data.decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ status

    def _patch_status(self, run: _PodRun, status: dict[str, Any]) -> bool:
        """Patch pods/status; a few tries, then a warning (a lost update must not orphan a process)."""
        for attempt in range(3):
            try:
                self.core.patch_namespaced_pod_status(
                    run.name, run.namespace, {"status": status}, _content_type=SMP
                )
                return True
            except ApiException as exc:
                if exc.status == 404:
                    return False
                if attempt == 2:
                    log.warning("LocalKubelet: status of %s/%s not updated: %s", run.namespace, run.name, exc)
            except Exception as exc:  # connection errors
                if attempt == 2:
                    log.warning("LocalKubelet: status of %s/%s not updated: %s", run.namespace, run.name, exc)
            time.sleep(0.5)
        return False

    def _conditions(
        self,
        run: _PodRun,
        *,
        initialized: bool,
        ready: bool,
        sandbox: bool,
        completed: bool = False,
        disruption: str | None = None,
    ) -> list[dict[str, Any]]:
        wanted: list[tuple[str, bool, str | None, str | None]] = [
            ("PodReadyToStartContainers", sandbox, None, None),
            ("Initialized", initialized, None, None),
            (
                "Ready",
                ready,
                None if ready else ("PodCompleted" if completed else "ContainersNotReady"),
                None,
            ),
            (
                "ContainersReady",
                ready,
                None if ready else ("PodCompleted" if completed else "ContainersNotReady"),
                None,
            ),
        ]
        if disruption:
            wanted.append(("DisruptionTarget", True, "TerminationByKubelet", disruption))
        out = []
        for type_, ok, reason, message in wanted:
            status = "True" if ok else "False"
            previous = run.conditions.get(type_)
            transition = previous[1] if previous and previous[0] == status else _ts()
            run.conditions[type_] = (status, transition)
            cond: dict[str, Any] = {
                "type": type_,
                "status": status,
                "lastProbeTime": None,
                "lastTransitionTime": transition,
            }
            if reason:
                cond["reason"] = reason
            if message:
                cond["message"] = message
            out.append(cond)
        return out

    @staticmethod
    def _container_status(
        container: dict[str, Any],
        state: dict[str, Any],
        *,
        ready: bool,
        started: bool | None = None,
        restart_count: int = 0,
        last_state: dict[str, Any] | None = None,
        container_id: str = "",
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "ready": ready,
            "started": ("running" in state) if started is None else started and "running" in state,
            "restartCount": restart_count,
            "state": state,
            "lastState": last_state or {},
        }
        if container_id:
            out["containerID"] = container_id
        return out

    @staticmethod
    def _terminated_state(exit_: _Exit) -> dict[str, Any]:
        terminated: dict[str, Any] = {
            "exitCode": exit_.exit_code,
            "reason": exit_.reason,
            "startedAt": exit_.started_at,
            "finishedAt": exit_.finished_at,
        }
        if exit_.message:
            terminated["message"] = exit_.message
        if exit_.container_id:
            terminated["containerID"] = exit_.container_id
        return {"terminated": terminated}

    def _report_terminal(
        self,
        run: _PodRun,
        container: dict[str, Any],
        base: dict[str, Any],
        cause: str | None,
        exit_: _Exit | None,
        restart_count: int,
        last_state: dict[str, Any] | None,
    ) -> None:
        if exit_ is None:  # never started
            state = {
                "terminated": {
                    "exitCode": 137,
                    "reason": "ContainerStatusUnknown",
                    "message": UNKNOWN_MESSAGE,
                    "startedAt": None,
                    "finishedAt": _ts(),
                }
            }
            succeeded = False
        else:
            state = self._terminated_state(exit_)
            succeeded = exit_.exit_code == 0
        status: dict[str, Any] = {
            **base,
            "phase": "Succeeded" if succeeded and cause != "deadline" else "Failed",
            "conditions": self._conditions(
                run,
                initialized=True,
                ready=False,
                sandbox=False,
                completed=True,
                disruption=SHUTDOWN_MESSAGE if cause == "stopping" else None,
            ),
            "containerStatuses": [
                self._container_status(
                    container,
                    state,
                    ready=False,
                    restart_count=restart_count,
                    last_state=last_state,
                    container_id=exit_.container_id if exit_ else "",
                )
            ],
        }
        if cause == "deadline":
            status.update(phase="Failed", reason="DeadlineExceeded", message=DEADLINE_MESSAGE)
            self._event(run, "Normal", "DeadlineExceeded", DEADLINE_MESSAGE)
        elif cause == "stopping":
            status.update(phase="Failed", reason="Terminated", message=SHUTDOWN_MESSAGE)
        if not run.gone.is_set():
            self._patch_status(run, status)

    def _event(self, run: _PodRun, type_: str, reason: str, message: str, repeat: bool = False) -> None:
        """A core/v1 Event on the pod, as a kubelet records (best effort). Once per reason+message;
        with ``repeat`` a recurrence increments the Event's count, as the kubelet's recorder does."""
        key = f"{reason}:{message}"
        with run.events_lock:
            if run.gone.is_set() or (key in run.events_sent and not repeat):
                return
            name, count = run.events_sent.get(key, (f"{run.name}.{time.time_ns():x}", 0))
            run.events_sent[key] = (name, count + 1)
        now = _ts()
        if count:
            try:
                self.core.patch_namespaced_event(
                    name, run.namespace, {"count": count + 1, "lastTimestamp": now}, _content_type=MERGE_PATCH
                )
                return
            except Exception as exc:  # gone (TTL) or not created: record it anew
                log.debug("LocalKubelet: event %s not updated: %s", name, exc)
        body = {
            "metadata": {"name": name, "namespace": run.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": run.name,
                "namespace": run.namespace,
                "uid": run.uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": COMPONENT, "host": self.node_name},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.node_name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": count + 1,
        }
        try:
            self.core.create_namespaced_event(run.namespace, body)
        except Exception as exc:
            log.debug("LocalKubelet: event not recorded: %s", exc)

    # ------------------------------------------------------------------ preparing a container

    def _prepare(self, run: _PodRun, pod: dict[str, Any], container: dict[str, Any]) -> _Prepared:
        """Env, volumes, paths and argv of the container; raises _Waiting or _Unsupported."""
        objects: dict[tuple[str, str], dict[str, Any] | None] = {}
        env_wait: _Waiting | None = None
        try:
            own_env = self._container_env(run, pod, container, objects)
        except _Waiting as wait:
            env_wait, own_env = wait, {}

        prefixes: dict[str, str] = {}
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        materialized: dict[str, Path] = {}
        mounts = sorted(
            container.get("volumeMounts", []), key=lambda m: len(posixpath.normpath(m["mountPath"]))
        )
        for mount in mounts:
            name = mount["name"]
            if name not in volumes:
                raise _Unsupported(f"volumeMount {name!r} names no volume of the pod")
            if name not in materialized:
                materialized[name] = self._materialize_volume(run, pod, volumes[name], mount, objects)
            target = materialized[name]
            sub = mount.get("subPath") or expand_vars(mount.get("subPathExpr", ""), own_env)
            if sub:
                target = target / sub.lstrip("/")
                if not target.exists():
                    target.mkdir(parents=True, exist_ok=True)
            mount_path = posixpath.normpath(mount["mountPath"])
            point = run.dir / mount_path.lstrip("/")
            point.parent.mkdir(parents=True, exist_ok=True)
            if point.is_symlink():
                point.unlink()
            elif point.is_dir():
                shutil.rmtree(point)
            elif point.exists():
                point.unlink()
            point.symlink_to(target)
            prefixes[mount_path] = str(point)
        if env_wait is not None:
            raise env_wait

        message_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_LOG
        termination_file = run.dir / posixpath.normpath(message_path).lstrip("/")
        prefixes.setdefault(posixpath.normpath(message_path), str(termination_file))
        prefixes.setdefault(DEFAULT_TERMINATION_LOG, str(run.dir / DEFAULT_TERMINATION_LOG.lstrip("/")))
        rewrite = PathRewriter(prefixes)

        env = self._base_env(run, pod)
        env.update(own_env)
        command = [expand_vars(s, env) for s in container.get("command") or []]
        args = [expand_vars(s, env) for s in container.get("args") or []]
        if not command:
            image = container.get("image", "")
            mapped = self.command_map.get(image) or self.command_map.get(image.rsplit(":", 1)[0])
            if not mapped:
                raise _Unsupported(
                    f"container {container['name']!r} has no command and LocalKubelet cannot run the "
                    f"entrypoint of image {image!r} (map the image in command_map)"
                )
            command = [mapped]
        argv = [self._executable(command[0], rewrite, env)] + [rewrite(s) for s in command[1:] + args]
        env = {k: rewrite(v) for k, v in env.items()}
        working_dir = container.get("workingDir")
        if working_dir:
            rewritten = rewrite(posixpath.normpath(working_dir))
            cwd = (
                Path(rewritten)
                if rewritten != posixpath.normpath(working_dir)
                else run.dir / working_dir.lstrip("/")
            )
        else:
            cwd = run.dir / "workdir"
        (run.dir / "home").mkdir(exist_ok=True)
        (run.dir / "tmp").mkdir(exist_ok=True)
        return _Prepared(
            argv=argv,
            env=env,
            cwd=cwd,
            termination_file=termination_file,
            fallback_to_logs=container.get("terminationMessagePolicy") == "FallbackToLogsOnError",
            probes=self._probes(container, rewrite, env),
            ports={p["name"]: int(p["containerPort"]) for p in container.get("ports") or [] if p.get("name")},
        )

    def _probes(
        self, container: dict[str, Any], rewrite: PathRewriter, env: Mapping[str, str]
    ) -> dict[str, ProbeSpec]:
        """The container's probes; an exec probe's command is resolved like the container's own."""
        out: dict[str, ProbeSpec] = {}
        for kind, key in PROBE_FIELDS.items():
            if not container.get(key):
                continue
            spec = ProbeSpec.parse(kind, container[key], f"spec.containers[0].{key}")
            if spec.command:
                head, *rest = spec.command
                spec = replace(spec, command=(self._executable(head, rewrite, env), *map(rewrite, rest)))
            out[kind] = spec
        return out

    def _executable(self, name: str, rewrite: PathRewriter, env: Mapping[str, str]) -> str:
        mapped = self.command_map.get(name) or self.command_map.get(posixpath.basename(name))
        if mapped:
            return mapped
        rewritten = rewrite(name)
        if "/" in rewritten:
            return rewritten
        return shutil.which(rewritten, path=env.get("PATH")) or rewritten

    def _base_env(self, run: _PodRun, pod: dict[str, Any]) -> dict[str, str]:
        """What the image and the kubelet would provide, as far as a host process can use it."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOSTNAME": pod["metadata"]["name"],
            "HOME": str(run.dir / "home"),
            "TMPDIR": str(run.dir / "tmp"),
        }
        for key in ("LANG", "LC_ALL", "TZ"):
            if key in os.environ:
                env[key] = os.environ[key]
        env.update(coverage_env(os.environ))
        env.update(self._service_env())
        env.update(self.extra_env)
        return env

    def _service_env(self) -> dict[str, str]:
        host, port = self._api_host, self._api_port
        return {
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://{host}:{port}",
            f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
            f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
            f"KUBERNETES_PORT_{port}_TCP_PORT": port,
            f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
        }

    # -- objects

    def _object(
        self, kind: str, namespace: str, name: str, cache: dict[tuple[str, str], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        key = (kind, name)
        if key not in cache:
            read = (
                self.core.read_namespaced_config_map
                if kind == "ConfigMap"
                else self.core.read_namespaced_secret
            )
            cache[key] = _get_or_none(read, name, namespace)
        return cache[key]

    def _object_data(self, kind: str, obj: dict[str, Any]) -> dict[str, bytes]:
        if kind == "Secret":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    # -- env

    def _container_env(
        self,
        run: _PodRun,
        pod: dict[str, Any],
        container: dict[str, Any],
        objects: dict[tuple[str, str], dict[str, Any] | None],
    ) -> dict[str, str]:
        namespace = run.namespace
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            prefix = source.get("prefix", "")
            for kind, ref_key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                ref = source.get(ref_key)
                if not ref:
                    continue
                obj = self._object(kind, namespace, ref["name"], objects)
                if obj is None:
                    if ref.get("optional"):
                        continue
                    raise _Waiting("CreateContainerConfigError", f'{kind.lower()} "{ref["name"]}" not found')
                if kind == "Secret":
                    items = {
                        k: v.decode("utf-8", errors="replace")
                        for k, v in self._object_data(kind, obj).items()
                    }
                else:
                    items = dict(obj.get("data") or {})
                for key, item in items.items():
                    if _valid_env_name(prefix + key):
                        env[prefix + key] = item
        expansion = {**self._service_env(), **env}
        for var in container.get("env", []):
            name = var["name"]
            if "valueFrom" in var:
                found = self._value_from(pod, container, var["valueFrom"], objects)
                if found is None:  # optional and missing
                    continue
                value = found
            else:
                value = expand_vars(var.get("value", ""), expansion)
            env[name] = value
            expansion[name] = value
        return env

    def _value_from(
        self,
        pod: dict[str, Any],
        container: dict[str, Any],
        source: dict[str, Any],
        objects: dict[tuple[str, str], dict[str, Any] | None],
    ) -> str | None:
        namespace = pod["metadata"]["namespace"]
        if "fieldRef" in source:
            return self._field(pod, source["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in source:
            return self._resource_field(pod, container, source["resourceFieldRef"])
        for kind, ref_key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            ref = source.get(ref_key)
            if not ref:
                continue
            obj = self._object(kind, namespace, ref["name"], objects)
            if obj is None:
                if ref.get("optional"):
                    return None
                raise _Waiting("CreateContainerConfigError", f'{kind.lower()} "{ref["name"]}" not found')
            data = self._object_data(kind, obj)
            if ref["key"] not in data:
                if ref.get("optional"):
                    return None
                raise _Waiting(
                    "CreateContainerConfigError",
                    f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}",
                )
            return data[ref["key"]].decode("utf-8", errors="replace")
        raise _Unsupported(f"env valueFrom {sorted(source)} is not supported by LocalKubelet")

    @staticmethod
    def _field(pod: dict[str, Any], path: str) -> str:
        meta, spec = pod["metadata"], pod["spec"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.hostIP": POD_IP,
            "status.hostIPs": POD_IP,
            "status.podIP": POD_IP,
            "status.podIPs": POD_IP,
        }
        if path in simple:
            return simple[path]
        m = re.fullmatch(r"metadata\.(labels|annotations)(?:\['(.+)'\])?", path)
        if m:
            values = meta.get(m.group(1)) or {}
            if m.group(2) is not None:
                return values.get(m.group(2), "")
            return "\n".join(f"{k}={json.dumps(v)}" for k, v in sorted(values.items()))
        raise _Unsupported(f"fieldRef {path!r} is not supported by LocalKubelet")

    @staticmethod
    def _resource_field(pod: dict[str, Any], container: dict[str, Any], ref: dict[str, Any]) -> str:
        if ref.get("containerName"):
            container = next(c for c in pod["spec"]["containers"] if c["name"] == ref["containerName"])
        kind, _, resource = ref["resource"].partition(".")
        resources = container.get("resources") or {}
        raw = (resources.get(kind) or {}).get(resource)
        if raw is None and kind == "limits":  # the kubelet defaults limits to node allocatable
            raw = CAPACITY.get(resource)
        value = parse_quantity(raw) if raw is not None else Fraction(0)
        divisor = parse_quantity(ref.get("divisor") or "1")
        if divisor == 0:
            raise _Unsupported(f"resourceFieldRef {ref['resource']} has divisor 0")
        if resource == "cpu":  # ceil(milli / milli), as the kubelet does
            return str(math.ceil(math.ceil(value * 1000) / math.ceil(divisor * 1000)))
        return str(math.ceil(value / divisor))

    # -- volumes

    def _materialize_volume(
        self,
        run: _PodRun,
        pod: dict[str, Any],
        volume: dict[str, Any],
        mount: dict[str, Any],
        objects: dict[tuple[str, str], dict[str, Any] | None],
    ) -> Path:
        name = volume["name"]
        where = run.dir / ".volumes" / name
        if "emptyDir" in volume:
            where.mkdir(parents=True, exist_ok=True)
            return where
        if "persistentVolumeClaim" in volume or "hostPath" in volume:
            mount_path = posixpath.normpath(mount["mountPath"])
            if "persistentVolumeClaim" in volume:
                key, what = volume["persistentVolumeClaim"]["claimName"], "persistentVolumeClaim"
            else:
                key, what = volume["hostPath"]["path"], "hostPath"
            mapped = self.path_map.get(mount_path) or self.path_map.get(key)
            if mapped:
                Path(mapped).mkdir(parents=True, exist_ok=True)
                return Path(mapped)
            self._event(
                run,
                "Warning",
                "LocalKubeletUnmappedVolume",
                f"{what} volume {name!r} ({key}) is not in path_map: mounted as an empty directory",
            )
            log.warning(
                "LocalKubelet: %s/%s: %s volume %s (%s) unmapped", run.namespace, run.name, what, name, key
            )
            where.mkdir(parents=True, exist_ok=True)
            return where
        files: dict[str, tuple[bytes, int]] = {}
        if "configMap" in volume or "secret" in volume:
            self._object_files(run, volume, files, objects)
        elif "downwardAPI" in volume:
            self._downward_files(
                pod, volume["downwardAPI"], files, volume["downwardAPI"].get("defaultMode", 0o644)
            )
        elif "projected" in volume:
            projected = volume["projected"]
            mode = projected.get("defaultMode", 0o644)
            for source in projected.get("sources", []):
                if "configMap" in source or "secret" in source:
                    self._object_files(run, {**source, "_defaultMode": mode}, files, objects)
                elif "downwardAPI" in source:
                    self._downward_files(pod, source["downwardAPI"], files, mode)
                elif "serviceAccountToken" in source:
                    token = self._service_account_token(pod, source["serviceAccountToken"])
                    files[source["serviceAccountToken"]["path"]] = (token.encode(), mode)
                else:
                    raise _Unsupported(
                        f"projected volume source {sorted(source)} is not supported by LocalKubelet"
                    )
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise _Unsupported(f"volume {name!r} of type {kinds} is not supported by LocalKubelet")
        # Write into a fresh directory and swap it in, so a re-run never sees half a volume.
        fresh = where.with_name(f".{name}.{uuid.uuid4().hex[:6]}")
        for rel, (content, mode) in files.items():
            path = fresh / rel.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(mode)
        fresh.mkdir(parents=True, exist_ok=True)
        if where.exists():
            shutil.rmtree(where)
        fresh.rename(where)
        return where

    def _object_files(
        self,
        run: _PodRun,
        source: dict[str, Any],
        files: dict[str, tuple[bytes, int]],
        objects: dict[tuple[str, str], dict[str, Any] | None],
    ) -> None:
        kind = "ConfigMap" if "configMap" in source else "Secret"
        ref = source["configMap"] if kind == "ConfigMap" else source["secret"]
        obj_name = ref.get("name") or ref.get("secretName")
        mode = ref.get("defaultMode", source.get("_defaultMode", 0o644))
        obj = self._object(kind, run.namespace, obj_name, objects)
        if obj is None:
            if ref.get("optional"):
                return
            raise _Waiting(
                "ContainerCreating",
                f'MountVolume.SetUp failed for volume "{source.get("name", obj_name)}" : '
                f'{kind.lower()} "{obj_name}" not found',
            )
        data = self._object_data(kind, obj)
        items = ref.get("items")
        if not items:
            for key, content in data.items():
                files[key] = (content, mode)
            return
        for item in items:
            if item["key"] not in data:
                if ref.get("optional"):
                    continue
                raise _Waiting(
                    "ContainerCreating",
                    f"MountVolume.SetUp failed: configuration error: key {item['key']!r} not found "
                    f"in {kind} {run.namespace}/{obj_name}",
                )
            files[item["path"]] = (data[item["key"]], item.get("mode", mode))

    def _downward_files(
        self, pod: dict[str, Any], source: dict[str, Any], files: dict[str, tuple[bytes, int]], mode: int
    ) -> None:
        for item in source.get("items", []):
            if "fieldRef" in item:
                value = self._field(pod, item["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in item:
                value = self._resource_field(pod, pod["spec"]["containers"][0], item["resourceFieldRef"])
            else:
                raise _Unsupported(f"downwardAPI item {item!r} is not supported by LocalKubelet")
            files[item["path"]] = (value.encode(), item.get("mode", mode))

    def _service_account_token(self, pod: dict[str, Any], projection: dict[str, Any]) -> str:
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        spec: dict[str, Any] = {
            "expirationSeconds": int(projection.get("expirationSeconds", 3600)),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
        }
        if projection.get("audience"):
            spec["audiences"] = [projection["audience"]]
        try:
            response = _raw(
                self.core.create_namespaced_service_account_token,
                account,
                meta["namespace"],
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
            )
        except ApiException as exc:
            if exc.status == 404:
                raise _Waiting(
                    "ContainerCreating", f'serviceaccount "{account}" not found (TokenRequest for the pod)'
                ) from exc
            raise
        return response["status"]["token"]
