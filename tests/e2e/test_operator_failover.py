"""HA: replicas with distinct kopf peering priorities; killing the active one hands over to the next."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import yaml
from kubectl import REPO_ROOT, kubectl
from kubernetes import client
from operator_process import OperatorProcess, install_chart_rbac, service_account_kubeconfig

pytestmark = pytest.mark.e2e

OPERATOR_NS = "kubequant-e2e-system"
LIFETIME = 10
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


def backtest(name: str) -> dict[str, object]:
    return {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "Backtest",
        "metadata": {"name": name},
        "spec": {
            "period": {"start": "2022-01-04", "end": "2022-06-30"},
            "signal": {"file": {"path": "/data/scores.csv"}},
            "suspend": True,
        },
    }


def test_killing_the_active_replica_fails_over(
    core: client.CoreV1Api,
    batch: client.BatchV1Api,
    kube_config: client.Configuration,
    make_namespace,  # type: ignore[no-untyped-def]
    wait_until,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(REPO_ROOT / "charts" / "kubequant" / "crds"),
        check=True,
    )
    kubectl("create", "namespace", OPERATOR_NS)
    account = install_chart_rbac("kubequant", OPERATOR_NS)
    peering = f"failover-{uuid.uuid4().hex[:6]}"
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(
            {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}}
        ),
        check=True,
    )
    kubeconfig = service_account_kubeconfig(core, kube_config, OPERATOR_NS, account, tmp_path / "kubeconfig")
    env = {"KUBEQUANT_PEERING_LIFETIME_SECONDS": str(LIFETIME)}
    active = OperatorProcess(
        kubeconfig, tmp_path / "active.log", env, ["--peering", peering, "--priority", "200"]
    )
    standby = OperatorProcess(
        kubeconfig, tmp_path / "standby.log", env, ["--peering", peering, "--priority", "100"]
    )
    ns = make_namespace(RESTRICTED)
    try:
        active.start()
        standby.start()
        kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(backtest("before")), check=True)
        wait_until(
            lambda: batch.list_namespaced_job(ns).items, 60, "the active replica to create the first Job"
        )
        # Both replicas announce themselves in the peering object; the lower priority one stays paused.
        peers = wait_until(
            lambda: (lambda st: st if len(st) == 2 else None)(
                client.CustomObjectsApi(core.api_client)
                .get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", peering)
                .get("status")
                or {}
            ),
            30,
            "both replicas in the peering object",
        )
        assert sorted(p["priority"] for p in peers.values()) == [100, 200]
        active.kill()
        killed = time.monotonic()
        kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(backtest("after")), check=True)
        wait_until(
            lambda: any(j.metadata.name == "after-backtest" for j in batch.list_namespaced_job(ns).items),
            LIFETIME * 6,
            "the standby replica to take over",
        )
        failover = time.monotonic() - killed
        print(
            f"failover after SIGKILL of the active replica: {failover:.1f} s (peering lifetime {LIFETIME} s)"
        )
        assert failover < LIFETIME * 3
        assert sorted(j.metadata.name for j in batch.list_namespaced_job(ns).items) == [
            "after-backtest",
            "before-backtest",
        ]
    finally:
        active.stop()
        standby.stop()
        kubectl("delete", "clusterkopfpeering", peering, "--ignore-not-found")
