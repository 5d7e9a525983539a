"""Kill switch and RiskPolicy latency of a running trading pod on a cluster.

    make dev-cluster && flock /tmp/kq-e2e.lock .venv/bin/python benchmarks/session_control.py [--runs 5]

Uses the cluster of KUBECONFIG (default: .dev-cluster/kubeconfig): installs the CRDs and the chart's
RBAC, starts `kubequant operator` with the chart's ServiceAccount token and a LocalKubelet
(hack/local_kubelet.py) that really runs the trading pod, creates a paper session, then measures,
``--runs`` times each:

* kill switch: the API's answer to the patch of ``spec.halted: true`` → the pod's ``GET /v1/status``
  says HALTED (goal < 2 s), → the session's ``.status.tradingState`` is HALTED, → its Halted
  condition is True (what ``kubectl wait --for=condition=Halted`` sees); then the same back to ACTIVE;
* RiskPolicy: the patch of ``limits.maxOrderQuantity`` → the pod journaled it with the policy's
  generation (goal < 5 s), and → the session's ConfigMap holds it (the copy a restart starts from).

Prints the median and the worst of each, with the load average before and after. Polls every 10 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "e2e"), str(REPO / "hack")]

from kubectl import kubectl  # noqa: E402
from local_kubelet import LocalKubelet  # noqa: E402
from operator_process import (  # noqa: E402
    OperatorProcess,
    free_port,
    install_chart_rbac,
    service_account_kubeconfig,
)
from test_session_operator import (  # noqa: E402
    LOCAL_NODE,
    OPERATOR_NS,
    TOKEN,
    journal_events,
    pod_status,
    policy_doc,
    session_doc,
)

from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle  # noqa: E402

GROUP, VERSION = "kubequant.io", "v1alpha1"


def until(predicate: Any, timeout: float, what: str, interval: float = 0.01) -> float:
    """Seconds until ``predicate()`` is truthy (polled every ``interval``)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what} after {timeout} s")
        time.sleep(interval)
    return time.monotonic() - start


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name:<58} median {statistics.median(values) * 1000:7.0f} ms   worst {max(values) * 1000:7.0f} ms"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()
    os.environ.setdefault("KUBECONFIG", str(REPO / ".dev-cluster" / "kubeconfig"))
    cfg = client.Configuration()
    config.load_kube_config(client_configuration=cfg)
    api = client.ApiClient(cfg)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    work = Path(tempfile.mkdtemp(prefix="kq-session-bench-"))
    bundle = work / "bundle"
    write_sample_bundle(bundle, SampleSpec(instruments=8, start="2020-01-01", end="2021-12-31", seed=11))
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"), check=True)
    kubectl("create", "namespace", OPERATOR_NS)
    account = install_chart_rbac("kubequant", OPERATOR_NS)
    kubeconfig = service_account_kubeconfig(core, cfg, OPERATOR_NS, account, work / "kubeconfig")
    workload_policy = {
        "allowedNodeSelectorKeys": ["kubequant.io/pool", "kubernetes.io/hostname"],
        "allowedTolerationKeys": ["nvidia.com/gpu", "kubequant.io/local-runner"],
    }
    operator = OperatorProcess(
        kubeconfig,
        work / "operator.log",
        {"KUBEQUANT_RETRY_DELAY_SECONDS": "2", "KUBEQUANT_WORKLOAD_POLICY": json.dumps(workload_policy)},
    )
    ns = f"kq-bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})
    pv = f"kq-bench-{uuid.uuid4().hex[:10]}"
    claim = "journal-bench-trading-0"
    state = work / "journal"
    port = free_port()
    operator.start()
    try:
        with LocalKubelet(
            api,
            node_name=LOCAL_NODE,
            workdir=work / "kubelet",
            command_map={"kubequant": str(Path(sys.executable).parent / "kubequant")},
            path_map={claim: str(state)},
        ):
            until(
                lambda: any(
                    s.metadata.name == "default" for s in core.list_namespaced_service_account(ns).items
                ),
                30,
                "SA",
            )
            core.create_persistent_volume(
                {
                    "metadata": {"name": pv},
                    "spec": {
                        "capacity": {"storage": "1Gi"},
                        "accessModes": ["ReadWriteOnce"],
                        "hostPath": {"path": str(state)},
                        "claimRef": {"namespace": ns, "name": claim},
                    },
                }
            )
            core.create_namespaced_secret(
                ns, {"metadata": {"name": "signal-token"}, "stringData": {"token": TOKEN}}
            )
            docs = [policy_doc(maxOrderQuantity=5000), session_doc("bench", port, bundle)]
            kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump_all(docs), check=True)
            until(lambda: (pod_status(port) or {}).get("phase") == "Trading", 300, "Trading", 0.2)

            def session() -> dict[str, Any]:
                return custom.get_namespaced_custom_object(GROUP, VERSION, ns, "livetradingsessions", "bench")  # type: ignore[no-any-return]

            def halted_condition() -> str:
                conds = (session().get("status") or {}).get("conditions") or []
                return next((c["status"] for c in conds if c["type"] == "Halted"), "")

            load_before = os.getloadavg()
            halt_pod, halt_status, halt_cond, resume_pod = [], [], [], []
            for _ in range(a.runs):
                body = {"spec": {"halted": True}}
                start = time.monotonic()
                custom.patch_namespaced_custom_object(
                    GROUP, VERSION, ns, "livetradingsessions", "bench", body
                )
                sent = time.monotonic()
                halt_pod.append(
                    sent
                    - start
                    + until(
                        lambda: (pod_status(port) or {}).get("tradingState") == "HALTED", 10, "pod HALTED"
                    )
                )
                halt_status.append(
                    time.monotonic()
                    - start
                    + until(
                        lambda: (session().get("status") or {}).get("tradingState") == "HALTED", 10, "status"
                    )
                )
                halt_cond.append(
                    time.monotonic() - start + until(lambda: halted_condition() == "True", 10, "condition")
                )
                start = time.monotonic()
                custom.patch_namespaced_custom_object(
                    GROUP, VERSION, ns, "livetradingsessions", "bench", {"spec": {"halted": False}}
                )
                resume_pod.append(
                    time.monotonic()
                    - start
                    + until(lambda: (pod_status(port) or {}).get("tradingState") == "ACTIVE", 10, "ACTIVE")
                )
                until(lambda: halted_condition() == "False", 10, "condition cleared")
            policy_pod, policy_config = [], []
            cm = "bench-trading-config"
            for k in range(a.runs):
                quantity = 1000 + k
                start = time.monotonic()
                custom.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    ns,
                    "riskpolicies",
                    "limits",
                    {"spec": {"limits": {"maxOrderQuantity": quantity}}},
                )
                generation = custom.get_namespaced_custom_object(
                    GROUP, VERSION, ns, "riskpolicies", "limits"
                )["metadata"]["generation"]
                policy_pod.append(
                    time.monotonic()
                    - start
                    + until(
                        lambda generation=generation: any(
                            e.get("generation") == generation
                            for e in journal_events(state, "RiskPolicyApplied")
                        ),
                        10,
                        "journaled",
                    )
                )
                policy_config.append(
                    time.monotonic()
                    - start
                    + until(
                        lambda quantity=quantity: (
                            f"maxOrderQuantity: {quantity}"
                            in core.read_namespaced_config_map(cm, ns).data["policy.yaml"]
                        ),
                        30,
                        "ConfigMap",
                    )
                )
            load_after = os.getloadavg()
            print(
                f"runs: {a.runs} each; load average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} CPUs)"
            )
            print(summary("kill switch: patch → pod HALTED (goal < 2 s)", halt_pod))
            print(summary("kill switch: patch → .status.tradingState HALTED", halt_status))
            print(summary("kill switch: patch → condition Halted=True", halt_cond))
            print(summary("kill switch off: patch → pod ACTIVE", resume_pod))
            print(summary("RiskPolicy: patch → journaled by the pod (goal < 5 s)", policy_pod))
            print(summary("RiskPolicy: patch → the session's ConfigMap converged", policy_config))
            restarts = (
                core.read_namespaced_pod("bench-trading-0", ns).status.container_statuses[0].restart_count
            )
            print(f"pod restarts during the runs: {restarts} (the kill switch and the policy need none)")
    finally:
        operator.stop()
        core.delete_namespace(ns)
        try:
            core.delete_persistent_volume(pv)
        except client.ApiException:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
