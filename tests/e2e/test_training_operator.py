"""TrainingJobs on a real API server with the real KubeRay operator: TrainingJob → RayJob → RayCluster.

The operator runs as a process with the Helm chart's ServiceAccount token; KubeRay's ray-operator
(built from the pinned module, started by hack/dev-cluster.sh) makes the RayCluster and its pods,
which land on kwok's simulated nodes. No Ray job runs there (no containers, no pod network), so
these tests stop where KubeRay would need a live dashboard.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubectl import kubectl
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_process import OperatorProcess, chart_operator

from kubequant.version import RAY_VERSION

pytestmark = pytest.mark.e2e

OPERATOR_NS = "kubequant-e2e-training"
RAY = ("ray.io", "v1")
SEGMENTS = {
    "train": {"start": "2020-01-01", "end": "2020-09-30"},
    "valid": {"start": "2020-10-01", "end": "2020-12-31"},
    "test": {"start": "2021-01-04", "end": "2021-06-28"},
}
TRAINING: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "lgb"},
    "spec": {
        "data": {"sample": {"instruments": 40, "start": "2020-01-01", "end": "2021-06-30", "seed": 7}},
        "dataset": {"segments": SEGMENTS},
        "ray": {"workers": {"replicas": 1}},
    },
}


def training(name: str, **spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(TRAINING)
    doc["metadata"]["name"] = name
    doc["spec"].update(spec)
    return doc


def apply(namespace: str, *docs: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(docs), check=True)


def shared_volume(core: client.CoreV1Api, namespace: str, claim: str) -> None:
    """A bound ReadWriteMany claim (a static hostPath volume: the dev cluster has no provisioner)."""
    pv_name = f"{namespace}-{claim}"[:63]
    core.create_persistent_volume(
        {
            "metadata": {"name": pv_name, "labels": {"kubequant.io/e2e": "true"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": "",
                "hostPath": {"path": f"/tmp/{pv_name}"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": claim},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": pv_name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )


@pytest.fixture(scope="module")
def operator(
    core: client.CoreV1Api, kube_config: client.Configuration, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    # KubeRay's CRDs and operator come with the dev cluster (hack/dev-cluster.sh up).
    workdir = tmp_path_factory.mktemp("operator")
    with chart_operator(
        core, kube_config, OPERATOR_NS, workdir, crds_established=("rayjobs.ray.io",)
    ) as proc:
        yield proc


def get(custom: client.CustomObjectsApi, group: tuple[str, str], plural: str, ns: str, name: str) -> Any:
    try:
        return custom.get_namespaced_custom_object(group[0], group[1], ns, plural, name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def tj_status(custom: client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any]:
    return (get(custom, ("kubequant.io", "v1alpha1"), "trainingjobs", ns, name) or {}).get("status") or {}


def reason_of(status: dict[str, Any], type_: str) -> str | None:
    return next((c["reason"] for c in status.get("conditions") or [] if c["type"] == type_), None)


def ray_pods(core: client.CoreV1Api, ns: str, cluster: str, node_type: str) -> list[client.V1Pod]:
    return list(
        core.list_namespaced_pod(
            ns, label_selector=f"ray.io/cluster={cluster},ray.io/node-type={node_type}"
        ).items
    )


def test_gpu_training_runs_on_a_kuberay_cluster_on_the_gpu_pool(
    operator: OperatorProcess,
    namespace: str,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    batch: client.BatchV1Api,
    pool_nodes: dict[str, set[str]],
    wait_until,  # type: ignore[no-untyped-def]
) -> None:
    shared_volume(core, namespace, "models")
    workers = {"replicas": 2, "gpusPerWorker": 1, "resources": {"requests": {"cpu": "1"}}}
    apply(
        namespace,
        training("gpu", ray={"workers": workers}, output={"artifacts": {"volume": {"claimName": "models"}}}),
    )
    try:
        rayjob = wait_until(lambda: get(custom, RAY, "rayjobs", namespace, "gpu-ray"), 60, "the RayJob")
        (owner,) = rayjob["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("TrainingJob", "gpu", True)
        assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == RAY_VERSION
        # KubeRay makes the RayCluster; its worker pods land on the GPU pool, its head does not.
        cluster = wait_until(
            lambda: (get(custom, RAY, "rayjobs", namespace, "gpu-ray").get("status") or {}).get(
                "rayClusterName"
            ),
            120,
            "KubeRay to create the RayCluster",
        )
        scheduled = wait_until(
            lambda: (
                pods
                if len(pods := ray_pods(core, namespace, cluster, "worker")) == 2
                and all(p.spec.node_name for p in pods)
                else None
            ),
            180,
            "both worker pods scheduled",
        )
        assert {p.spec.node_name for p in scheduled} <= pool_nodes["gpu"], [
            p.spec.node_name for p in scheduled
        ]
        for pod in scheduled:
            limits = pod.spec.containers[0].resources.limits
            assert limits["nvidia.com/gpu"] == "1" and pod.spec.automount_service_account_token is False
        (head,) = wait_until(
            lambda: [p for p in ray_pods(core, namespace, cluster, "head") if p.spec.node_name] or None,
            180,
            "the head pod scheduled",
        )
        assert head.spec.node_name in pool_nodes["cpu"]
        # The TrainingJob follows the RayJob: Running once KubeRay submitted the job (the cluster is
        # "ready" on kwok's nodes), with the cluster's name and dashboard address.
        st = wait_until(
            lambda: s if (s := tj_status(custom, namespace, "gpu")).get("phase") == "Running" else None,
            240,
            "the TrainingJob to be Running",
        )
        assert st["rayClusterName"] == cluster and st["rayJobName"] == "gpu-ray"
        assert "8265" in st.get("dashboardUrl", ""), st
        assert reason_of(st, "Accepted") == "RayJobCreated"
        wait = kubectl("wait", "-n", namespace, "tj/gpu", "--for=condition=Running", "--timeout=10s")
        assert wait.returncode == 0, wait.stderr
        # The submitter Job KubeRay made from our template: our command, no API token.
        submitter = batch.read_namespaced_job("gpu-ray", namespace)
        spec = submitter.spec.template.spec
        assert spec.containers[0].args[:2] == ["workload", "submit-training"]
        assert spec.automount_service_account_token is False
        # Deleting the TrainingJob removes the RayJob, and with it KubeRay's RayCluster.
        kubectl("delete", "-n", namespace, "tj/gpu", "--wait=true", "--timeout=60s", check=True)
        wait_until(
            lambda: get(custom, RAY, "rayjobs", namespace, "gpu-ray") is None or None, 120, "the RayJob gone"
        )
        wait_until(
            lambda: get(custom, RAY, "rayclusters", namespace, cluster) is None or None,
            120,
            "the RayCluster gone",
        )
        # The artifact volume stays.
        assert core.read_namespaced_persistent_volume_claim("models", namespace).metadata.name == "models"
    except BaseException:
        print(operator.tail(60))
        print(kubectl("get", "rayjobs,rayclusters,pods,jobs", "-n", namespace, "-o", "wide").stdout)
        raise


def test_cpu_training_never_touches_the_gpu_pool_and_a_backtest_waits_for_its_model(
    operator: OperatorProcess,
    namespace: str,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    batch: client.BatchV1Api,
    pool_nodes: dict[str, set[str]],
    wait_until,  # type: ignore[no-untyped-def]
) -> None:
    apply(namespace, training("cpu"))
    try:
        cluster = wait_until(
            lambda: ((get(custom, RAY, "rayjobs", namespace, "cpu-ray") or {}).get("status") or {}).get(
                "rayClusterName"
            ),
            120,
            "KubeRay to create the RayCluster",
        )
        pods = wait_until(
            lambda: [p for p in ray_pods(core, namespace, cluster, "worker") if p.spec.node_name] or None,
            180,
            "the worker pod scheduled",
        )
        for pod in pods:
            assert pod.spec.node_name not in pool_nodes["gpu"]
            assert "kubequant.io/pool" not in (pod.spec.node_selector or {})
        # No volume: the artifact is lost with the cluster, and the operator says so.
        events = wait_until(
            lambda: (
                {
                    e.reason
                    for e in core.list_namespaced_event(
                        namespace, field_selector="involvedObject.name=cpu"
                    ).items
                }
                & {"ArtifactsNotKept"}
            ),
            30,
            "the ArtifactsNotKept warning",
        )
        assert events == {"ArtifactsNotKept"}
        # A Backtest that trades this TrainingJob's model waits for it.
        backtest = {
            "apiVersion": "kubequant.io/v1alpha1",
            "kind": "Backtest",
            "metadata": {"name": "from-model"},
            "spec": {
                "period": {"start": "2021-01-04", "end": "2021-06-28"},
                "signal": {"modelRef": {"name": "cpu"}},
            },
        }
        apply(namespace, backtest)
        st = wait_until(
            lambda: (
                s
                if reason_of(
                    s := (
                        get(custom, ("kubequant.io", "v1alpha1"), "backtests", namespace, "from-model") or {}
                    ).get("status")
                    or {},
                    "Accepted",
                )
                == "ModelNotReady"
                else None
            ),
            60,
            "the Backtest to wait with ModelNotReady",
        )
        assert st["phase"] == "Pending" and "TrainingJob cpu" in st["message"], st
        assert not core.list_namespaced_pod(
            namespace, label_selector="kubequant.io/backtest=from-model"
        ).items
        # No Ray job can finish on kwok's nodes: write the success KubeRay and the submitter would have
        # led to (as the status subresource, with the admin's credentials), and the waiting Backtest
        # runs with the model's volume mounted read-only.
        shared_volume(core, namespace, "models")
        done = {
            "phase": "Succeeded",
            "completionTime": "2026-01-01T00:00:00Z",
            "modelUri": f"pvc://models/{namespace}/cpu",
            "conditions": [
                {
                    "type": "Succeeded",
                    "status": "True",
                    "reason": "TrainingSucceeded",
                    "message": "simulated",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        }
        custom.patch_namespaced_custom_object_status(
            "kubequant.io", "v1alpha1", namespace, "trainingjobs", "cpu", {"status": done}
        )
        selector = "kubequant.io/backtest=from-model"
        job = wait_until(
            lambda: next(iter(batch.list_namespaced_job(namespace, label_selector=selector).items), None),
            60,
            "the Backtest's Job once its model is there",
        )
        pod = job.spec.template.spec
        args = pod.containers[0].args
        assert args[args.index("--model-dir") + 1] == "/var/run/kubequant/model"
        (volume,) = [v for v in pod.volumes if v.name == "model"]
        assert (
            volume.persistent_volume_claim.claim_name == "models" and volume.persistent_volume_claim.read_only
        )
        (mount,) = [m for m in pod.containers[0].volume_mounts if m.name == "model"]
        assert mount.sub_path == f"{namespace}/cpu" and mount.read_only
    except BaseException:
        print(operator.tail(60))
        print(kubectl("get", "rayjobs,rayclusters,pods,jobs", "-n", namespace, "-o", "wide").stdout)
        raise


def test_a_multi_node_run_without_shared_storage_is_refused(
    operator: OperatorProcess,
    namespace: str,
    custom: client.CustomObjectsApi,
    wait_until,  # type: ignore[no-untyped-def]
) -> None:
    apply(namespace, training("no-volume", ray={"workers": {"replicas": 3}}))
    wait = kubectl(
        "wait", "-n", namespace, "tj/no-volume", "--for=condition=Failed", "--timeout=60s", timeout=90
    )
    assert wait.returncode == 0, wait.stderr
    st = tj_status(custom, namespace, "no-volume")
    assert (
        reason_of(st, "Accepted") == "ArtifactVolumeRequired"
        and "spec.output.artifacts.volume" in st["message"]
    )
    assert get(custom, RAY, "rayjobs", namespace, "no-volume-ray") is None
    assert json.dumps(st).count("ReadWriteMany") >= 1
    # Another Ray than the image's is refused by the API server itself (the CRD's CEL rule).
    doc = training("old-ray", ray={"rayVersion": "2.9.0", "workers": {"replicas": 1}})
    refused = kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(doc))
    assert refused.returncode != 0 and f"rayVersion must be {RAY_VERSION}" in refused.stderr, refused.stderr


def test_suspend_is_passed_on_and_kuberay_frees_the_cluster(
    operator: OperatorProcess,
    namespace: str,
    custom: client.CustomObjectsApi,
    wait_until,  # type: ignore[no-untyped-def]
) -> None:
    apply(namespace, training("pause"))
    try:
        cluster = wait_until(
            lambda: ((get(custom, RAY, "rayjobs", namespace, "pause-ray") or {}).get("status") or {}).get(
                "rayClusterName"
            ),
            120,
            "KubeRay to create the RayCluster",
        )
        kubectl(
            "patch",
            "-n",
            namespace,
            "tj/pause",
            "--type=merge",
            "-p",
            '{"spec":{"suspend":true}}',
            check=True,
        )
        wait_until(
            lambda: get(custom, RAY, "rayjobs", namespace, "pause-ray")["spec"].get("suspend") is True,
            30,
            "spec.suspend passed on to the RayJob",
        )
        st = wait_until(
            lambda: s if (s := tj_status(custom, namespace, "pause")).get("phase") == "Suspended" else None,
            120,
            "the TrainingJob to be Suspended",
        )
        assert reason_of(st, "Running") in ("RayJobSuspending", "RayJobSuspended")
        wait_until(
            lambda: get(custom, RAY, "rayclusters", namespace, cluster) is None or None,
            120,
            "KubeRay to delete the suspended run's RayCluster",
        )
        # Resumed: KubeRay starts a new cluster, and the TrainingJob leaves Suspended.
        kubectl(
            "patch",
            "-n",
            namespace,
            "tj/pause",
            "--type=merge",
            "-p",
            '{"spec":{"suspend":false}}',
            check=True,
        )
        wait_until(
            lambda: tj_status(custom, namespace, "pause").get("phase") in ("Pending", "Running"),
            120,
            "the TrainingJob to resume",
        )
    except BaseException:
        print(operator.tail(60))
        print(kubectl("get", "rayjobs,rayclusters,pods,jobs", "-n", namespace, "-o", "wide").stdout)
        raise
