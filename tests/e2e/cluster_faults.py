"""Faults of a local control plane for the operator's fault tests (issue 17), and how to measure them.

A separate cluster of ``hack/dev-cluster.sh`` (``KUBEQUANT_DEV_CLUSTER_NAME``/``_DIR``), never the shared
``.dev-cluster`` that the other e2e tests use: its components are killed, stopped and restarted here.
kwokctl (runtime ``binary``) runs each component as a local process and keeps its pid in
``<dir>/kwok/clusters/<name>/pids/<component>.pid``; ``kwokctl start cluster`` starts the components
that are not running, with the flags it saved at creation (same ports, same certificates).

The operator reaches the API server through a real Toxiproxy (``tests/unit/trading/toxiproxy_server.py``),
so that its connections, watches included, can be cut without touching the API server.

Used by ``tests/e2e/test_operator_cluster_faults.py`` (invariants) and ``benchmarks/operator_faults.py``
(the table of convergence times).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV_CLUSTER = REPO_ROOT / "hack" / "dev-cluster.sh"
_TOXIPROXY_HELPERS = str(REPO_ROOT / "tests" / "unit" / "trading")
if _TOXIPROXY_HELPERS not in sys.path:
    sys.path.insert(0, _TOXIPROXY_HELPERS)

GROUP, VERSION, PLURAL = "kubequant.io", "v1alpha1", "backtests"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller")
# The names of the APF objects that throttle the operator (cluster-scoped).
THROTTLE_LEVEL = "kubequant-e2e-operator-throttle"


class ClusterFaultError(RuntimeError):
    """A component could not be found, stopped or started."""


def bin_dir() -> Path:
    """Folder of the control plane's binaries (hack/build-k8s.sh --print-bin-dir)."""
    out = subprocess.run(
        [str(REPO_ROOT / "hack" / "build-k8s.sh"), "--print-bin-dir"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (R, S, T for stopped, Z, ...), or '' when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def rss_mb(pid: int) -> float:
    """The resident set of a process (VmRSS of /proc/PID/status), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ClusterFaultError(f"no VmRSS in /proc/{pid}/status")


@dataclass
class FaultCluster:
    """A separate kwok cluster of hack/dev-cluster.sh whose components can be killed, paused and restarted."""

    name: str
    state_dir: Path
    bins: Path = field(default_factory=bin_dir)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBEQUANT_DEV_CLUSTER_NAME": self.name,
            "KUBEQUANT_DEV_CLUSTER_DIR": str(self.state_dir),
            "KWOK_WORKDIR": str(self.state_dir / "kwok"),
            "KWOK_KUBECTL_BINARY": str(self.bins / "kubectl"),
            "PATH": f"{self.bins}:{os.environ.get('PATH', '')}",
        }

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def workdir(self) -> Path:
        return self.state_dir / "kwok" / "clusters" / self.name

    def up(self, timeout: float = 900) -> None:
        """``hack/dev-cluster.sh up`` for this cluster (a no-op when it is up)."""
        self._script("up", timeout)

    def down(self, timeout: float = 180) -> None:
        """``hack/dev-cluster.sh down``: every process of this cluster stopped, its folder removed."""
        self._script("down", timeout)

    def _script(self, command: str, timeout: float) -> None:
        done = subprocess.run(
            [str(DEV_CLUSTER), command], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise ClusterFaultError(
                f"hack/dev-cluster.sh {command} failed ({done.returncode}):\n{done.stderr}"
            )

    def client_config(self) -> client.Configuration:
        """The admin client configuration (kubeconfig of dev-cluster.sh)."""
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)  # type: ignore[no-untyped-call]
        return cfg

    def api_server_address(self) -> str:
        """host:port of the API server (from the kubeconfig)."""
        server = yaml.safe_load(self.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        return str(server).removeprefix("https://").rstrip("/")

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """The pinned kubectl against this cluster."""
        done = subprocess.run(
            [str(self.bins / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise ClusterFaultError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done

    def ready(self) -> bool:
        """Whether the API server answers /readyz (etcd included)."""
        return self.kubectl("--request-timeout=5s", "get", "--raw", "/readyz", check=False).returncode == 0

    def wait_ready(self, timeout: float = 300) -> float:
        """Wait until /readyz answers; the seconds it took."""
        start = time.monotonic()
        while not self.ready():
            if time.monotonic() - start > timeout:
                raise ClusterFaultError(f"the API server of {self.name} is not ready after {timeout:.0f}s")
            time.sleep(0.5)
        return time.monotonic() - start

    # ------------------------------------------------------------------- process control

    def pid_file(self, component: str) -> Path:
        if component not in COMPONENTS:
            raise ValueError(f"component {component!r} is not one of {', '.join(COMPONENTS)}")
        return self.workdir / "pids" / f"{component}.pid"

    def pid(self, component: str) -> int:
        """The pid of a running component (its kwokctl pid file, checked against /proc)."""
        path = self.pid_file(component)
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError) as err:
            raise ClusterFaultError(f"no pid file for {component} in {path.parent}: {err}") from err
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            cmdline = ""
        # kwokctl runs them through symlinks in its workdir, named after the component or the binary.
        names = {component, component.removesuffix("-controller")}
        if not process_alive(pid) or Path(cmdline).name not in names:
            raise ClusterFaultError(f"{component} (pid {pid} in {path}) is not running")
        return pid

    def pause(self, component: str) -> int:
        """SIGSTOP a component; its pid."""
        pid = self.pid(component)
        os.kill(pid, signal.SIGSTOP)
        _wait(lambda: process_state(pid) == "T", 10, f"{component} to stop")
        return pid

    def resume(self, component: str, pid: int) -> None:
        """SIGCONT a paused component."""
        os.kill(pid, signal.SIGCONT)
        _wait(lambda: process_state(pid) not in ("T", "t"), 10, f"{component} to continue")

    @contextmanager
    def paused(self, component: str) -> Iterator[int]:
        """A component stopped (SIGSTOP) for the block, continued (SIGCONT) after it, whatever happens."""
        pid = self.pause(component)
        try:
            yield pid
        finally:
            self.resume(component, pid)

    def kill(self, component: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Kill a component (default SIGKILL: a crash) and wait until it has exited."""
        pid = self.pid(component)
        os.kill(pid, sig)
        _wait(lambda: not process_alive(pid), 30, f"{component} (pid {pid}) to exit")

    def dead_components(self) -> list[str]:
        """The components whose process is not running."""
        dead = []
        for component in COMPONENTS:
            try:
                self.pid(component)
            except ClusterFaultError:
                dead.append(component)
        return dead

    def start(self, timeout: float = 300) -> list[str]:
        """Start every component that is not running (``kwokctl start cluster``), then wait for /readyz;
        the components it started.

        A pid file of a dead component is removed first: kwokctl counts a process as running while
        ``kill -0`` reaches it, which a zombie (exited, not yet reaped) still does.
        """
        started: list[str] = []
        # A component started while the API server is not ready yet may give up and exit (kwok's
        # controller does after ~30 s of refused connections): start what died, a few times.
        for _ in range(3):
            dead = self.dead_components()
            if not dead:
                break
            for component in dead:
                self.pid_file(component).unlink(missing_ok=True)
            started += [c for c in dead if c not in started]
            done = subprocess.run(
                [str(self.bins / "kwokctl"), "start", "cluster", "--name", self.name, "--timeout", "4m"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if done.returncode != 0:
                raise ClusterFaultError(f"kwokctl start cluster failed ({done.returncode}):\n{done.stderr}")
            self.wait_ready(timeout)
            time.sleep(1)
        self.wait_ready(timeout)
        still = self.dead_components()
        if still:
            raise ClusterFaultError(f"kwokctl start cluster left {', '.join(still)} not running")
        return started

    def restart(self, component: str, down_seconds: float = 0.0, timeout: float = 300) -> float:
        """SIGKILL a component, leave it down ``down_seconds``, start it again; seconds until /readyz."""
        self.kill(component)
        time.sleep(down_seconds)
        start = time.monotonic()
        self.start(timeout)
        return time.monotonic() - start

    def flowcontrol_rejections(self, level: str) -> int:
        """Requests the API server rejected (429) in priority level ``level``, from its /metrics."""
        text = self.kubectl("get", "--raw", "/metrics").stdout
        total = 0.0
        for line in text.splitlines():
            if line.startswith("apiserver_flowcontrol_rejected_requests_total{") and (
                f'priority_level="{level}"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    @contextmanager
    def throttled(self, namespace: str, account: str, shares: int = 1) -> Iterator[str]:
        """API Priority and Fairness squeezing one ServiceAccount: a priority level with ``shares``
        nominal concurrency shares, nothing lent or borrowed and a queue of one, and a FlowSchema that
        puts every request of ``namespace``/``account`` in it. Excess requests get 429. Yields the
        priority level's name; both objects are deleted after the block."""
        level = {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "PriorityLevelConfiguration",
            "metadata": {"name": THROTTLE_LEVEL},
            "spec": {
                "type": "Limited",
                "limited": {
                    "nominalConcurrencyShares": shares,
                    "lendablePercent": 0,
                    "borrowingLimitPercent": 0,
                    "limitResponse": {
                        "type": "Queue",
                        "queuing": {"queues": 1, "handSize": 1, "queueLengthLimit": 1},
                    },
                },
            },
        }
        schema = {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "FlowSchema",
            "metadata": {"name": THROTTLE_LEVEL},
            "spec": {
                "priorityLevelConfiguration": {"name": THROTTLE_LEVEL},
                # Before every suggested FlowSchema but exempt, probes and the leader elections.
                "matchingPrecedence": 300,
                "distinguisherMethod": {"type": "ByUser"},
                "rules": [
                    {
                        "subjects": [
                            {
                                "kind": "ServiceAccount",
                                "serviceAccount": {"name": account, "namespace": namespace},
                            }
                        ],
                        "resourceRules": [
                            {
                                "verbs": ["*"],
                                "apiGroups": ["*"],
                                "resources": ["*"],
                                "namespaces": ["*"],
                                "clusterScope": True,
                            }
                        ],
                        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                    }
                ],
            },
        }
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([level, schema]))
        try:
            yield THROTTLE_LEVEL
        finally:
            self.kubectl(
                "delete",
                "flowschema",
                THROTTLE_LEVEL,
                "--ignore-not-found",
                check=False,
            )
            self.kubectl(
                "delete",
                "prioritylevelconfiguration",
                THROTTLE_LEVEL,
                "--ignore-not-found",
                check=False,
            )


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ClusterFaultError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


# ----------------------------------------------------------------------- what the operator made


def backtest(name: str) -> dict[str, Any]:
    """A suspended Backtest: the operator makes its Job, no pod runs."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Backtest",
        "metadata": {"name": name},
        "spec": {
            "period": {"start": "2022-01-04", "end": "2022-06-30"},
            "signal": {"file": {"path": "/data/scores.csv"}},
            "suspend": True,
        },
    }


def create_backtests(api: client.ApiClient, namespace: str, names: list[str]) -> None:
    """Create the Backtests (admin credentials, straight to the API server)."""
    custom = client.CustomObjectsApi(api)
    for name in names:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, backtest(name))


@dataclass
class Audit:
    """What the cluster holds for a batch of Backtests: convergence, duplicates, Events."""

    pending: dict[str, str]  # Backtest -> why it has not converged
    children: dict[str, Counter[str]]  # Backtest -> kind -> children it controls
    events: dict[str, int]  # Backtest -> Events about it (their counts summed)
    reasons: dict[str, Counter[str]]  # Backtest -> Event reason -> count

    @property
    def converged(self) -> bool:
        return not self.pending

    def duplicates(self) -> dict[str, dict[str, int]]:
        """Backtests with more than one Job, or any ConfigMap (by controller reference: the manifest
        travels in the Job), and how many."""
        most = {"Job": 1, "ConfigMap": 0}
        return {
            name: {kind: n for kind, n in kinds.items() if n > most.get(kind, 1)}
            for name, kinds in self.children.items()
            if any(n > most.get(kind, 1) for kind, n in kinds.items())
        }

    def max_events(self) -> int:
        return max(self.events.values(), default=0)


def _controller_uid(meta: dict[str, Any]) -> str | None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref["uid"])
    return None


def _items(response: Any) -> list[dict[str, Any]]:
    """The items of a LIST answered as raw JSON (``_preload_content=False``)."""
    return list(json.loads(response.data)["items"])


def audit(api: client.ApiClient, namespace: str, names: list[str]) -> Audit:
    """Read the Backtests, their Jobs and Events (and ConfigMaps: a Backtest has none, one would be
    counted); converged means phase Suspended for the current generation, with the Job recorded in
    status.children being the live one."""
    custom, batch, core = client.CustomObjectsApi(api), client.BatchV1Api(api), client.CoreV1Api(api)
    raw: dict[str, Any] = {"_request_timeout": 10, "_preload_content": False}
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **raw)
    backtests = {bt["metadata"]["name"]: bt for bt in _items(listed)}
    by_owner: dict[str, dict[str, dict[str, str]]] = {}  # owner uid -> kind -> child name -> uid
    children: dict[str, Counter[str]] = {}
    for kind, objs in (
        ("Job", _items(batch.list_namespaced_job(namespace, **raw))),
        ("ConfigMap", _items(core.list_namespaced_config_map(namespace, **raw))),
    ):
        for obj in objs:
            meta = obj["metadata"]
            owner = _controller_uid(meta)
            if owner is not None:
                by_owner.setdefault(owner, {}).setdefault(kind, {})[meta["name"]] = meta["uid"]
    events: Counter[str] = Counter()
    reasons: dict[str, Counter[str]] = {}
    for ev in _items(
        core.list_namespaced_event(namespace, field_selector="involvedObject.kind=Backtest", **raw)
    ):
        name, count = ev["involvedObject"]["name"], ev.get("count") or 1
        events[name] += count
        reasons.setdefault(name, Counter())[ev.get("reason") or ""] += count
    pending: dict[str, str] = {}
    for name in names:
        bt = backtests.get(name)
        if bt is None:
            pending[name] = "not found"
            continue
        owned = by_owner.get(bt["metadata"]["uid"], {})
        children[name] = Counter({kind: len(objs) for kind, objs in owned.items()})
        st = bt.get("status") or {}
        if st.get("phase") != "Suspended" or st.get("observedGeneration") != bt["metadata"].get("generation"):
            pending[name] = f"phase {st.get('phase')!r}, observedGeneration {st.get('observedGeneration')!r}"
            continue
        recorded = {(c["kind"], c["name"]): c["uid"] for c in st.get("children") or []}
        for kind in ("Job",):
            live = owned.get(kind, {})
            if not live or any(recorded.get((kind, child)) != uid for child, uid in live.items()):
                pending[name] = f"{kind}: live {live}, recorded {recorded}"
                break
    return Audit(pending, children, dict(events), reasons)


def wait_converged(
    api: client.ApiClient, namespace: str, names: list[str], timeout: float, since: float | None = None
) -> tuple[float, Audit]:
    """Poll :func:`audit` until the batch converged; (seconds since ``since`` or the call, the audit).

    API errors while polling (the API server down, etcd stopped) count as not converged yet.
    """
    start = time.monotonic() if since is None else since
    last: Audit | None = None
    error = ""
    while True:
        try:
            last = audit(api, namespace, names)
            if last.converged:
                return time.monotonic() - start, last
        except (ApiException, HTTPError, OSError) as err:
            error = f"{type(err).__name__}: {err}"[:300]
        if time.monotonic() - start > timeout:
            pending = dict(list((last.pending if last else {}).items())[:5])
            raise ClusterFaultError(
                f"{namespace}: not converged after {timeout:.0f}s; pending (first 5): {pending}; "
                f"last error: {error or 'none'}"
            )
        time.sleep(0.5)


def first_job(api: client.ApiClient, namespace: str, timeout: float) -> None:
    """Wait until the operator has made at least one Job in ``namespace`` (the batch is being reconciled)."""
    batch = client.BatchV1Api(api)
    _wait(lambda: bool(batch.list_namespaced_job(namespace, limit=1).items), timeout, f"a Job in {namespace}")


@dataclass
class Measurement:
    """One fault over one batch of Backtests."""

    fault: str
    backtests: int
    converged_at_fault: int  # Backtests already converged when the fault struck
    fault_seconds: float  # how long the fault lasted (down, paused, cut, throttled)
    converge_seconds: float  # from the end of the fault to the whole batch converged
    total_seconds: float  # from the first create to the whole batch converged
    max_events: int  # most Events about one Backtest
    duplicates: dict[str, dict[str, int]]
    extra: dict[str, Any] = field(default_factory=dict)


def converged_count(api: client.ApiClient, namespace: str, names: list[str]) -> int:
    """How many of the batch have converged now (-1 when the API server does not answer)."""
    try:
        return len(names) - len(audit(api, namespace, names).pending)
    except (ApiException, HTTPError, OSError):
        return -1


# ----------------------------------------------------------------------- the operator behind a proxy


@dataclass
class Rig:
    """The cluster, its admin client, and the operator (the chart's RBAC) reaching it through Toxiproxy."""

    cluster: FaultCluster
    api: client.ApiClient
    proxy: Any  # toxiproxy_server.Toxiproxy
    proxy_name: str
    operator: Any  # operator_process.OperatorProcess
    namespace: str  # the operator's namespace
    account: str  # the operator's ServiceAccount
    before: Counter[str] = field(default_factory=Counter)  # reconcile outcomes when the batch began

    def namespace_for(self, stem: str) -> str:
        """A new namespace for one batch."""
        name = f"faults-{stem}-{uuid.uuid4().hex[:5]}"
        client.CoreV1Api(self.api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
        )
        return name

    def drop_namespace(self, name: str) -> None:
        try:
            client.CoreV1Api(self.api).delete_namespace(name, propagation_policy="Background")
        except (ApiException, HTTPError, OSError):
            pass  # a cluster left unhealthy by a failed fault: the module's teardown removes it all

    def rss_mb(self) -> float:
        return rss_mb(self.operator.proc.pid)

    def outcomes(self) -> Counter[str]:
        """The operator's Backtest reconciles by outcome (kubequant_reconciles_total), from its /metrics."""
        counts: Counter[str] = Counter()
        for line in self.operator.metrics().splitlines():
            if line.startswith("kubequant_reconciles_total{") and 'kind="Backtest"' in line:
                outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                counts[outcome] += int(float(line.rsplit(" ", 1)[1]))
        return counts


@contextmanager
def operator_rig(cluster: FaultCluster, workdir: Path) -> Iterator[Rig]:
    """kubequant's CRDs and the chart's RBAC on ``cluster``, a Toxiproxy in front of its API server, and
    ``kubequant operator --standalone`` running as the chart's ServiceAccount through the proxy."""
    import toxiproxy_server
    from operator_process import OperatorProcess, render_chart_rbac, service_account_kubeconfig

    binary = toxiproxy_server.find_binary()
    if binary is None:
        raise ClusterFaultError(toxiproxy_server.missing_reason())
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    from kubectl import wait_established

    wait_established(
        cluster.kubectl,
        *(
            f"crd/{crd}.{GROUP}"
            for crd in ("backtests", "trainingjobs", "livetradingsessions", "riskpolicies")
        ),
    )
    namespace = "kubequant-faults-system"
    cluster.kubectl("create", "namespace", namespace, check=False)
    docs = render_chart_rbac("kubequant", namespace)
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(docs))
    account = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
    cfg = cluster.client_config()
    api = client.ApiClient(cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    kubeconfig = service_account_kubeconfig(
        client.CoreV1Api(api), cfg, namespace, account, workdir / "operator-kubeconfig"
    )
    proxy = toxiproxy_server.Toxiproxy(binary, log_path=workdir / "toxiproxy.log")
    operator = None
    try:
        listen = proxy.proxy("apiserver", cluster.api_server_address()).removeprefix("http://")
        doc = yaml.safe_load(kubeconfig.read_text())
        doc["clusters"][0]["cluster"]["server"] = f"https://{listen}"
        kubeconfig.write_text(yaml.safe_dump(doc))
        operator = OperatorProcess(
            kubeconfig, workdir / "operator.log", {"KUBEQUANT_RETRY_DELAY_SECONDS": "2"}
        )
        operator.start()
        yield Rig(cluster, api, proxy, "apiserver", operator, namespace, account)
    finally:
        if operator is not None:
            operator.stop()
        proxy.stop()
        api.close()  # type: ignore[no-untyped-call]


# ----------------------------------------------------------------------- the faults


def _batch(rig: Rig, stem: str, n: int) -> tuple[str, list[str]]:
    ns = rig.namespace_for(stem)
    rig.before = rig.outcomes()
    return ns, [f"bt-{i:03d}" for i in range(n)]


def _measure(
    rig: Rig,
    fault: str,
    ns: str,
    names: list[str],
    created: float,
    at_fault: int,
    fault_seconds: float,
    recovered: float,
    timeout: float,
    **extra: Any,
) -> Measurement:
    seconds, result = wait_converged(rig.api, ns, names, timeout, since=recovered)
    # Events are posted by kopf after the status write: give the last ones a moment to land.
    time.sleep(2)
    result = audit(rig.api, ns, names)
    reconciles = dict(rig.outcomes() - rig.before)
    return Measurement(
        fault=fault,
        backtests=len(names),
        converged_at_fault=at_fault,
        fault_seconds=fault_seconds,
        converge_seconds=seconds,
        total_seconds=time.monotonic() - created - 2,
        max_events=result.max_events(),
        duplicates=result.duplicates(),
        extra={"events": result.events, "reasons": result.reasons, "reconciles": reconciles, **extra},
    )


def no_fault(rig: Rig, n: int = 20, timeout: float = 180) -> Measurement:
    """The reference: a batch reconciled with nothing wrong."""
    ns, names = _batch(rig, "none", n)
    try:
        created = time.monotonic()
        create_backtests(rig.api, ns, names)
        return _measure(rig, "none", ns, names, created, 0, 0.0, created, timeout)
    finally:
        rig.drop_namespace(ns)


def api_server_restart(rig: Rig, n: int = 20, down_seconds: float = 2.0, timeout: float = 300) -> Measurement:
    """SIGKILL the API server once the operator has made its first Job of the batch, start it again."""
    ns, names = _batch(rig, "apiserver", n)
    try:
        created = time.monotonic()
        create_backtests(rig.api, ns, names)
        first_job(rig.api, ns, 60)
        at_fault = converged_count(rig.api, ns, names)
        struck = time.monotonic()
        ready_after = rig.cluster.restart("kube-apiserver", down_seconds, timeout)
        recovered = time.monotonic()
        return _measure(
            rig,
            "kube-apiserver SIGKILL + restart",
            ns,
            names,
            created,
            at_fault,
            recovered - struck,
            recovered,
            timeout,
            ready_seconds=ready_after,
        )
    finally:
        rig.drop_namespace(ns)


def watch_cut(rig: Rig, n: int = 10, cut_seconds: float = 5.0, timeout: float = 180) -> Measurement:
    """Toxiproxy takes the operator's link down (open connections, watches included, are closed; new
    ones refused) while a batch is created, then brings it back: the operator must pick the batch up."""
    ns, names = _batch(rig, "watchcut", n)
    try:
        rig.proxy.set_enabled(rig.proxy_name, False)
        struck = time.monotonic()
        try:
            created = time.monotonic()
            create_backtests(rig.api, ns, names)
            time.sleep(max(0.0, cut_seconds - (time.monotonic() - struck)))
            at_fault = converged_count(rig.api, ns, names)
        finally:
            rig.proxy.set_enabled(rig.proxy_name, True)
        recovered = time.monotonic()
        return _measure(
            rig,
            "operator's connections cut",
            ns,
            names,
            created,
            at_fault,
            recovered - struck,
            recovered,
            timeout,
        )
    finally:
        rig.drop_namespace(ns)


def etcd_pause(rig: Rig, n: int = 20, pause_seconds: float = 30.0, timeout: float = 300) -> Measurement:
    """SIGSTOP etcd for ``pause_seconds`` once the operator has made its first Job of the batch, then
    SIGCONT; components that died meanwhile (leader elections lost) are started again."""
    ns, names = _batch(rig, "etcd", n)
    try:
        created = time.monotonic()
        create_backtests(rig.api, ns, names)
        first_job(rig.api, ns, 60)
        at_fault = converged_count(rig.api, ns, names)
        struck = time.monotonic()
        with rig.cluster.paused("etcd"):
            time.sleep(pause_seconds)
        recovered = time.monotonic()
        restarted = rig.cluster.start(timeout)
        return _measure(
            rig,
            f"etcd SIGSTOP {pause_seconds:.0f} s",
            ns,
            names,
            created,
            at_fault,
            recovered - struck,
            recovered,
            timeout,
            restarted=restarted,
        )
    finally:
        rig.drop_namespace(ns)


def apf_throttle(rig: Rig, n: int = 20, timeout: float = 400) -> Measurement:
    """API Priority and Fairness squeezes the operator's ServiceAccount (429s) while a batch is created;
    the throttle stays until the batch converged."""
    ns, names = _batch(rig, "apf", n)
    try:
        before = rig.cluster.flowcontrol_rejections(THROTTLE_LEVEL)
        with rig.cluster.throttled(rig.namespace, rig.account) as level:
            time.sleep(1)  # the API server's APF configuration controller picks the objects up
            created = time.monotonic()
            create_backtests(rig.api, ns, names)
            seconds, _ = wait_converged(rig.api, ns, names, timeout, since=created)
            rejected = rig.cluster.flowcontrol_rejections(level) - before
        return _measure(
            rig,
            "APF 429s (1 share, queue of 1)",
            ns,
            names,
            created,
            0,
            seconds,
            created,
            timeout,
            rejected=rejected,
        )
    finally:
        rig.drop_namespace(ns)


FAULTS: dict[str, Callable[..., Measurement]] = {
    "none": no_fault,
    "apiserver": api_server_restart,
    "watchcut": watch_cut,
    "etcd": etcd_pause,
    "apf": apf_throttle,
}
