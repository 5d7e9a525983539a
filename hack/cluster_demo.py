"""`make cluster-demo`: the whole cluster path in one command, as a new user would walk it.

1. the dev cluster (``hack/dev-cluster.sh up``; reused when it is already up),
2. the CRDs (``kubectl apply --server-side -f crds/``),
3. the Helm chart's ServiceAccount and RBAC (``helm template``), and the operator as a process
   authenticated with that ServiceAccount's token — so it can do exactly what the chart allows,
4. a node served by the local kubelet helper (``hack/local_kubelet.py``): kwok's simulated nodes
   complete pods without running them, this one runs them as local processes,
5. ``examples/backtest.yaml``, placed on that node, executed for real by the operator's Job,
6. ``examples/live-paper.yaml`` (a RiskPolicy and a paper LiveTradingSession replaying bars at one
   a second): the operator's trading pod on that node, its journal claim bound to a volume the
   node serves from ``.dev-cluster/demo/journal/``, one signal sent to its signal API,
7. ``kubectl get bt,lts`` with their numbers (``--no-session``: the Backtest only).

The operator and the local node stop when the demo ends; the Backtest and the session stay in
namespace ``kubequant-demo`` with their last status (``kubectl get bt,lts -n kubequant-demo``). Run
it again to run both again (the demo's journal is reset). Logs: ``.dev-cluster/demo/``.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from local_kubelet import TOLERATION, LocalKubelet

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NODE = "kq-local-demo"
RELEASE = "kubequant-demo"
OPERATOR_NS = "kubequant-demo-system"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
GROUP, VERSION = "kubequant.io", "v1alpha1"

log = logging.getLogger("cluster-demo")


def say(text: str) -> None:
    print(f"[cluster-demo {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def bin_dir() -> Path:
    out = subprocess.run(
        [str(REPO / "hack" / "build-k8s.sh"), "--print-bin-dir"], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip())


def wait_established(*crds: str, timeout: float = 120) -> None:
    """Until the CRDs are Established: `kubectl wait` exits 1 at once, rather than waiting, on a CRD the
    API server has not given conditions yet (kubernetes/kubernetes#66439), as on a loaded machine."""
    deadline = time.monotonic() + timeout
    while (
        done := kubectl("wait", "--for=condition=Established", "--timeout=30s", *crds, check=False)
    ).returncode:
        if time.monotonic() > deadline:
            raise SystemExit(f"cluster-demo: CRDs not Established after {timeout:.0f}s:\n{done.stderr}")
        time.sleep(1)


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(bin_dir() / "kubectl"), "--kubeconfig", str(kubeconfig()), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise SystemExit(f"cluster-demo: kubectl {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def kubeconfig() -> Path:
    return Path(os.environ.get("KUBEQUANT_DEV_CLUSTER_DIR", REPO / ".dev-cluster")) / "kubeconfig"


def chart_rbac() -> list[dict[str, Any]]:
    """The chart's ServiceAccount and RBAC, as `helm template` renders them."""
    out = subprocess.run(
        [
            str(bin_dir() / "helm"),
            "template",
            RELEASE,
            str(REPO / "charts" / "kubequant"),
            "--namespace",
            OPERATOR_NS,
            "--show-only",
            "templates/serviceaccount.yaml",
            "--show-only",
            "templates/rbac.yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def service_account_kubeconfig(api: client.ApiClient, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (a bound token, 2 h)."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=7200)
    )
    token = client.CoreV1Api(api).create_namespaced_service_account_token(account, OPERATOR_NS, request)
    cfg = api.configuration
    ca = Path(cfg.ssl_ca_cert).read_bytes() if cfg.ssl_ca_cert else b""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "demo",
                "cluster": {"server": cfg.host, "certificate-authority-data": base64.b64encode(ca).decode()},
            }
        ],
        "users": [{"name": account, "user": {"token": token.status.token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "demo", "user": account}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


def start_operator(sa_kubeconfig: Path, namespace: str, log_path: Path) -> subprocess.Popen[bytes]:
    """`kubequant operator` serving the demo namespace, with the chart's RBAC.

    --standalone: one replica, no kopf peering objects needed (the chart would create them).
    The workload policy is the chart's default plus the local node's label and taint.
    """
    policy = {
        "allowedNodeSelectorKeys": ["kubequant.io/pool", "kubernetes.io/hostname"],
        "allowedTolerationKeys": ["nvidia.com/gpu", TOLERATION["key"]],
    }
    env = {
        **os.environ,
        "KUBECONFIG": str(sa_kubeconfig),
        "KUBEQUANT_WORKLOAD_POLICY": json.dumps(policy),
        "KUBEQUANT_RETRY_DELAY_SECONDS": "5",
    }
    command = [str(BIN / "kubequant"), "operator", "--standalone", "--namespace", namespace]
    command += ["--metrics-port", "0", "--health-port", "0"]
    return subprocess.Popen(command, env=env, stdout=log_path.open("ab"), stderr=subprocess.STDOUT)


def on_local_node(doc: dict[str, Any], kubelet: LocalKubelet) -> dict[str, Any]:
    """The manifest with its pod placed on the local node (the only one that runs pods for real)."""
    spec = doc.setdefault("spec", {})
    pod = spec.setdefault("pod", {})
    pod["nodeSelector"] = {**pod.get("nodeSelector", {}), **kubelet.node_selector}
    pod["tolerations"] = [*pod.get("tolerations", []), TOLERATION]
    return doc


def wait_finished(custom: client.CustomObjectsApi, namespace: str, name: str, timeout: float) -> str:
    """Poll the Backtest until Succeeded or Failed; says each new phase. Returns the last phase."""
    deadline, phase = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        bt = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "backtests", name)
        status = bt.get("status") or {}
        if status.get("phase") != phase:
            phase = status.get("phase")
            say(f"Backtest {name}: {phase}" + (f" ({status['message']})" if status.get("message") else ""))
        if phase in ("Succeeded", "Failed"):
            return phase
        time.sleep(2)
    return phase or "Pending"


def rerun(custom: client.CustomObjectsApi, namespace: str, name: str) -> None:
    """Delete a Backtest left by an earlier demo (its spec is immutable) and wait until it is gone."""
    try:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "backtests", name)
    except ApiException as err:
        if err.status == 404:
            return
        raise
    for _ in range(120):
        try:
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "backtests", name)
        except ApiException as err:
            if err.status == 404:
                return
        time.sleep(0.5)


# --------------------------------------------------------------------------- the paper session

SESSION_MANIFEST = REPO / "examples" / "live-paper.yaml"
SIGNAL_TARGETS = [{"instrument": f"SYN{i:04d}", "quantity": 2000} for i in range(1, 6)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def session_docs(kubelet: LocalKubelet, port: int) -> list[dict[str, Any]]:
    """examples/live-paper.yaml for the demo: the pod on the local node, the signal API on a free
    host port (local pods share the host's network), one bar a second so PnL moves while you look."""
    docs = [d for d in yaml.safe_load_all(SESSION_MANIFEST.read_text()) if d]
    for doc in docs:
        if doc["kind"] == "LiveTradingSession":
            on_local_node(doc, kubelet)
            doc["spec"]["strategy"]["signalApi"]["port"] = port
            doc["spec"]["replay"]["speed"] = 86400
    return docs


def token_secret(core: client.CoreV1Api, namespace: str, name: str) -> str:
    """The signal token Secret the example names (kept across demos), and its token."""
    try:
        secret = core.read_namespaced_secret(name, namespace)
        return base64.b64decode(secret.data["token"]).decode()
    except ApiException as err:
        if err.status != 404:
            raise
    token = secrets.token_hex(16)
    core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "stringData": {"token": token}})
    return token


def fresh_journal(core: client.CoreV1Api, namespace: str, claim: str, local: Path) -> None:
    """A PersistentVolume bound to the session's journal claim, served by the local node from
    ``local`` (a folder that outlives the pod, as a real volume does). A demo's journal is
    disposable: an earlier demo's claim, volume and folder are removed first."""
    pv = f"kq-demo-{namespace}-{claim}"[:63]
    steps: list[tuple[Any, Any]] = [
        (
            lambda: core.delete_namespaced_persistent_volume_claim(claim, namespace),
            lambda: core.read_namespaced_persistent_volume_claim(claim, namespace),
        ),
        (lambda: core.delete_persistent_volume(pv), lambda: core.read_persistent_volume(pv)),
    ]
    for delete, read in steps:  # the claim first: a bound volume waits for its claim to go
        try:
            delete()
            for _ in range(240):
                read()
                time.sleep(0.5)
        except ApiException as err:
            if err.status != 404:
                raise
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    core.create_persistent_volume(
        {
            "metadata": {"name": pv, "labels": {"app.kubernetes.io/part-of": "kubequant-demo"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(local)},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
    )


def session_name() -> str:
    docs = yaml.safe_load_all(SESSION_MANIFEST.read_text())
    return str(next(d for d in docs if d and d["kind"] == "LiveTradingSession")["metadata"]["name"])


def journal_claim(name: str) -> str:
    """The journal claim the session's StatefulSet makes (its volumeClaimTemplate, pod 0)."""
    return f"journal-{name}-trading-0"


def reset_session(api: client.ApiClient, namespace: str, name: str, local: Path) -> None:
    """Delete the session an earlier demo left, wait for its pod to go, and give the next one a
    fresh journal volume (a demo's journal is disposable)."""
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    steps: list[tuple[Any, Any]] = [
        (
            lambda: custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, "livetradingsessions", name
            ),
            lambda: custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "livetradingsessions", name
            ),
        ),
        (lambda: None, lambda: core.read_namespaced_pod(f"{name}-trading-0", namespace)),
    ]
    for delete, read in steps:
        try:
            delete()
            for _ in range(240):
                read()
                time.sleep(0.5)
        except ApiException as err:
            if err.status != 404:
                raise
    fresh_journal(core, namespace, journal_claim(name), local)


def send_signal(port: int, token: str) -> dict[str, Any]:
    """One target portfolio to the session's signal API, as a strategy would send it."""
    body = json.dumps({"id": f"demo-{int(time.time())}", "targets": SIGNAL_TARGETS}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/signals", data=body, method="POST")
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")  # type: ignore[no-any-return]


def session_status(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    lts = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "livetradingsessions", name)
    return lts.get("status") or {}  # type: ignore[no-any-return]


def wait_session(
    custom: client.CustomObjectsApi, namespace: str, name: str, timeout: float, done: Any
) -> dict[str, Any] | None:
    """Poll the session until ``done(status)``; says each new phase/condition. The status, or None."""
    deadline, said = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        st = session_status(custom, namespace, name)
        now = (st.get("phase"), st.get("tradingState"), st.get("message"))
        if now != said:
            said = now
            state = " ".join(str(part) for part in now[:2] if part) or "no status yet"
            say(f"LiveTradingSession {name}: {state}" + (f" ({now[2]})" if now[2] else ""))
        if done(st):
            return st
        time.sleep(2)
    return None


def run_paper_session(api: client.ApiClient, namespace: str, kubelet: LocalKubelet, timeout: float) -> bool:
    """examples/live-paper.yaml run for real by the operator: the trading pod on the local node, its
    journal on a volume, a replay at one bar a second; one signal trades, the status shows PnL."""
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    port = free_port()
    docs = session_docs(kubelet, port)
    lts = next(d for d in docs if d["kind"] == "LiveTradingSession")
    name = lts["metadata"]["name"]
    token = token_secret(core, namespace, lts["spec"]["strategy"]["signalApi"]["tokenSecretRef"]["name"])
    kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(docs))

    def trading(st: dict[str, Any]) -> bool:
        return st.get("phase") == "Trading" or st.get("phase") == "Failed"

    st = wait_session(custom, namespace, name, min(timeout, 600), trading)
    if st is None or st.get("phase") != "Trading":
        try:
            say(f"--- {name}-trading-0 (last lines)\n" + kubelet.logs(f"{name}-trading-0", namespace)[-3000:])
        except KeyError:
            say(f"pod {name}-trading-0 never ran on {NODE}")
        return False
    answer = send_signal(port, token)
    accepted = sum(1 for o in answer.get("orders") or [] if o.get("accepted"))
    say(f"signal API: {accepted} of {len(SIGNAL_TARGETS)} orders accepted by the risk engine")

    def priced(st: dict[str, Any]) -> bool:
        return st.get("pnl") is not None and (st.get("positions") or 0) > 0 and st.get("phase") == "Trading"

    if wait_session(custom, namespace, name, 120, priced) is None:
        return False
    time.sleep(12)  # a dozen bars, so PnL is the market's and not only the costs of the fills
    return True


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--namespace", default="kubequant-demo")
    parser.add_argument("-f", "--manifest", type=Path, default=REPO / "examples" / "backtest.yaml")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the Backtest")
    parser.add_argument(
        "--no-session", action="store_true", help="the Backtest only, without the paper LiveTradingSession"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s")
    workdir = kubeconfig().parent / "demo"

    say("1/7 dev cluster (hack/dev-cluster.sh up)")
    subprocess.run([str(REPO / "hack" / "dev-cluster.sh"), "up"], check=True)
    workdir.mkdir(parents=True, exist_ok=True)
    config.load_kube_config(str(kubeconfig()))
    api = client.ApiClient()
    custom = client.CustomObjectsApi(api)

    say("2/7 CRDs (kubectl apply --server-side -f crds/)")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    wait_established(
        *(
            f"crd/{crd}.{GROUP}"
            for crd in ("backtests", "trainingjobs", "livetradingsessions", "riskpolicies")
        )
    )

    say(f"3/7 the chart's ServiceAccount and RBAC in {OPERATOR_NS}; namespace {args.namespace} (restricted)")
    namespaces = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": args.namespace, "labels": RESTRICTED}},
    ]
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(namespaces))
    rbac = chart_rbac()
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-n",
        OPERATOR_NS,
        "-f",
        "-",
        stdin=yaml.safe_dump_all(rbac),
    )
    account = next(d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount")
    sa_kubeconfig = service_account_kubeconfig(api, account, workdir / "operator-kubeconfig")

    say(f"4/7 local node {NODE} (hack/local_kubelet.py: runs its pods as local processes)")
    # The pods share the host's sample-data cache, so the market is generated once.
    cache = os.environ.get("KUBEQUANT_CACHE_DIR") or str(Path.home() / ".cache" / "kubequant")
    session = session_name()
    journal = workdir / "journal" / session
    kubelet = LocalKubelet(
        api,
        node_name=NODE,
        workdir=workdir / "pods",
        command_map={"kubequant": str(BIN / "kubequant")},
        extra_env={"KUBEQUANT_CACHE_DIR": cache},
        # The journal claim maps to a folder from the start: a pod an earlier demo left on this
        # node resumes on its own journal until reset_session removes it.
        path_map={journal_claim(session): str(journal)},
        max_pods=2,
        restart_backoff_s=1.0,
    )
    kubelet.start()
    operator = None
    try:
        say(f"5/7 the operator (log: {workdir / 'operator.log'}), and {args.manifest.relative_to(REPO)}")
        operator = start_operator(sa_kubeconfig, args.namespace, workdir / "operator.log")
        if not args.no_session:
            reset_session(api, args.namespace, session, journal)
        doc = on_local_node(yaml.safe_load(args.manifest.read_text()), kubelet)
        name = doc["metadata"]["name"]
        rerun(custom, args.namespace, name)
        kubectl("apply", "-n", args.namespace, "-f", "-", stdin=yaml.safe_dump(doc))
        phase = wait_finished(custom, args.namespace, name, args.timeout)
        kinds, traded = "bt", True
        if not args.no_session:
            say("6/7 examples/live-paper.yaml: a paper LiveTradingSession with a replay, on the local node")
            traded = run_paper_session(api, args.namespace, kubelet, args.timeout)
            kinds = "bt,lts"
        if phase != "Succeeded":
            for pod in client.CoreV1Api(api).list_namespaced_pod(args.namespace).items:
                if pod.spec.node_name == NODE:
                    say(
                        f"--- {pod.metadata.name} (last lines)\n"
                        + "\n".join(kubelet.logs(pod.metadata.name, args.namespace).splitlines()[-20:])
                    )
        say(f"7/7 kubectl get {kinds} -n {args.namespace}")
        print(kubectl("get", kinds, "-n", args.namespace, check=False).stdout, end="", flush=True)
        return 0 if phase == "Succeeded" and traded else 1
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(30)
            except subprocess.TimeoutExpired:
                operator.kill()
        kubelet.stop()


if __name__ == "__main__":
    sys.exit(main())
