"""`make cluster-demo`: the whole cluster path in one command, as a new user would walk it.

1. the dev cluster (``hack/dev-cluster.sh up``; reused when it is already up),
2. the CRDs (``kubectl apply --server-side -f crds/``),
3. the Helm chart's ServiceAccount and RBAC (``helm template``), and the operator as a process
   authenticated with that ServiceAccount's token — so it can do exactly what the chart allows,
4. a node served by the local kubelet helper (``hack/local_kubelet.py``): kwok's simulated nodes
   complete pods without running them, this one runs them as local processes,
5. ``examples/backtest.yaml``, placed on that node, executed for real by the operator's Job,
6. ``kubectl get bt`` with its numbers.

The operator and the local node stop when the demo ends; the Backtest stays in namespace
``kubequant-demo`` with its status (``kubectl get bt -n kubequant-demo``). Run it again to run the
Backtest again. Logs: ``.dev-cluster/demo/``.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import subprocess
import sys
import time
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


# --------------------------------------------------------------------------- HOOK: paper session
# HOOK(issue 9, the LiveTradingSession operator): once the operator runs trading pods, this step
# applies examples/live-paper.yaml (RiskPolicy + paper LiveTradingSession with a replay, its signal
# token Secret, the pod on the local node, the journal PVC mapped to a local folder through
# LocalKubelet(path_map=...)), waits for the session to reach Trading/Succeeded with equity and PnL
# in its status, and the final table becomes `kubectl get bt,lts`. Until then `--with-session`
# says so and the demo shows the Backtest only. Do not build the session operator here.
def run_paper_session(namespace: str, kubelet: LocalKubelet) -> bool:
    """The paper LiveTradingSession part of the demo; False while the session operator is missing."""
    say(
        "paper LiveTradingSession: not in this demo yet — it needs the session operator of issue 9 "
        "(hack/cluster_demo.py, HOOK(issue 9))"
    )
    return False


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--namespace", default="kubequant-demo")
    parser.add_argument("-f", "--manifest", type=Path, default=REPO / "examples" / "backtest.yaml")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the Backtest")
    parser.add_argument("--with-session", action="store_true", help="also a paper LiveTradingSession (HOOK)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s")
    workdir = kubeconfig().parent / "demo"

    say("1/6 dev cluster (hack/dev-cluster.sh up)")
    subprocess.run([str(REPO / "hack" / "dev-cluster.sh"), "up"], check=True)
    workdir.mkdir(parents=True, exist_ok=True)
    config.load_kube_config(str(kubeconfig()))
    api = client.ApiClient()
    custom = client.CustomObjectsApi(api)

    say("2/6 CRDs (kubectl apply --server-side -f crds/)")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    for crd in ("backtests", "trainingjobs", "livetradingsessions", "riskpolicies"):
        kubectl("wait", "--for=condition=Established", f"crd/{crd}.{GROUP}", "--timeout=60s")

    say(f"3/6 the chart's ServiceAccount and RBAC in {OPERATOR_NS}; namespace {args.namespace} (restricted)")
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

    say(f"4/6 local node {NODE} (hack/local_kubelet.py: runs its pods as local processes)")
    # The pods share the host's sample-data cache, so the market is generated once.
    cache = os.environ.get("KUBEQUANT_CACHE_DIR") or str(Path.home() / ".cache" / "kubequant")
    kubelet = LocalKubelet(
        api,
        node_name=NODE,
        workdir=workdir / "pods",
        command_map={"kubequant": str(BIN / "kubequant")},
        extra_env={"KUBEQUANT_CACHE_DIR": cache},
        max_pods=2,
    )
    kubelet.start()
    operator = None
    try:
        say(f"5/6 the operator (log: {workdir / 'operator.log'}), and {args.manifest.relative_to(REPO)}")
        operator = start_operator(sa_kubeconfig, args.namespace, workdir / "operator.log")
        doc = on_local_node(yaml.safe_load(args.manifest.read_text()), kubelet)
        name = doc["metadata"]["name"]
        rerun(custom, args.namespace, name)
        kubectl("apply", "-n", args.namespace, "-f", "-", stdin=yaml.safe_dump(doc))
        phase = wait_finished(custom, args.namespace, name, args.timeout)
        kinds = "bt"
        if args.with_session and run_paper_session(args.namespace, kubelet):
            kinds = "bt,lts"
        if phase != "Succeeded":
            for pod in client.CoreV1Api(api).list_namespaced_pod(args.namespace).items:
                if pod.spec.node_name == NODE:
                    say(
                        f"--- {pod.metadata.name} (last lines)\n"
                        + "\n".join(kubelet.logs(pod.metadata.name, args.namespace).splitlines()[-20:])
                    )
        say(f"6/6 kubectl get {kinds} -n {args.namespace}")
        print(kubectl("get", kinds, "-n", args.namespace, check=False).stdout, end="", flush=True)
        return 0 if phase == "Succeeded" else 1
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
