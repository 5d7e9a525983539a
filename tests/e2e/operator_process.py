"""The operator under test: a `kubequant operator` process using the Helm chart's ServiceAccount token.

Running it with the chart's own RBAC (not the admin credentials) makes a missing rule fail a test.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from kubectl import REPO_ROOT, bin_dir, kubectl, wait_established
from kubernetes import client

KUBEQUANT = str(Path(sys.executable).parent / "kubequant")


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render_chart_rbac(release: str, namespace: str, scope: str = "cluster") -> list[dict[str, Any]]:
    """The chart's ServiceAccount and RBAC objects, as `helm template` renders them."""
    out = subprocess.run(
        [
            str(bin_dir() / "helm"),
            "template",
            release,
            str(REPO_ROOT / "charts" / "kubequant"),
            "--namespace",
            namespace,
            "--set",
            f"rbac.scope={scope}",
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


def install_chart_rbac(release: str, namespace: str) -> str:
    """Apply the chart's ServiceAccount and RBAC; returns the ServiceAccount's name."""
    docs = render_chart_rbac(release, namespace)
    kubectl("apply", "--server-side", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(docs), check=True)
    return next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")


def service_account_kubeconfig(
    core: client.CoreV1Api, cfg: client.Configuration, namespace: str, account: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount (a bound token from the TokenRequest API)."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=7200)
    )
    token = core.create_namespaced_service_account_token(account, namespace, request).status.token
    ca = Path(cfg.ssl_ca_cert).read_bytes() if cfg.ssl_ca_cert else b""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "e2e",
                "cluster": {"server": cfg.host, "certificate-authority-data": base64.b64encode(ca).decode()},
            }
        ],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "e2e", "user": account}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


class OperatorProcess:
    """Start, kill and restart `kubequant operator`; read its health, metrics and log."""

    def __init__(
        self,
        kubeconfig: Path,
        log: Path,
        extra_env: dict[str, str] | None = None,
        peering: list[str] | None = None,
    ) -> None:
        """``peering``: operator flags for a peered replica (e.g. --peering NAME --priority N); none: standalone."""
        self.peering = peering
        self.kubeconfig = kubeconfig
        self.log = log
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), **(extra_env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until its health endpoint answers."""
        handle = self.log.open("ab")
        self.proc = subprocess.Popen(
            [
                KUBEQUANT,
                "operator",
                *(self.peering if self.peering is not None else ["--standalone"]),
                "--metrics-port",
                str(self.metrics_port),
                "--health-port",
                str(self.health_port),
            ],
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the operator exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
                ) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"the operator did not become healthy:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crash or an OOM kill."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        """The Prometheus text the operator exposes."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def tail(self, lines: int = 60) -> str:
        """The end of its log."""
        return (
            "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""
        )


# The chart's default workload policy, plus the local runner's node label and taint
# (hack/local_kubelet.py): what the tests that place pods on a local node give the operator.
LOCAL_RUNNER_POLICY = {
    "allowedNodeSelectorKeys": ["kubequant.io/pool", "kubernetes.io/hostname"],
    "allowedTolerationKeys": ["nvidia.com/gpu", "kubequant.io/local-runner"],
}


@contextlib.contextmanager
def chart_operator(
    core: client.CoreV1Api,
    kube_config: client.Configuration,
    namespace: str,
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    workload_policy: Mapping[str, Any] | None = None,
    crds_established: Iterable[str] = (),
    tail_lines: int = 40,
) -> Iterator[OperatorProcess]:
    """kubequant's CRDs applied, the chart's ServiceAccount and RBAC in ``namespace``, and the operator
    running as that ServiceAccount (retrying waits every 2 s) until the block ends; its log's tail is
    printed then. ``crds_established``: other CRDs (e.g. KubeRay's rayjobs.ray.io) to wait for first."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"), check=True)
    wait_established(kubectl, *(f"crd/{crd}" for crd in crds_established))
    kubectl("create", "namespace", namespace)
    account = install_chart_rbac("kubequant", namespace)
    kubeconfig = service_account_kubeconfig(core, kube_config, namespace, account, workdir / "kubeconfig")
    extra = {"KUBEQUANT_RETRY_DELAY_SECONDS": "2", **(env or {})}
    if workload_policy is not None:
        extra["KUBEQUANT_WORKLOAD_POLICY"] = json.dumps(workload_policy)
    proc = OperatorProcess(kubeconfig, workdir / "operator.log", extra)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"--- operator log (last lines) ---\n{proc.tail(tail_lines)}")
