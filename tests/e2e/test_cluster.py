"""The local control plane behaves like a real cluster: pinned version, RBAC,
PodSecurity admission, controller-manager + scheduler, and the CPU/GPU node pools.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

# Fixtures of conftest.py: make_namespace(labels=...) -> name; wait_until(predicate, timeout, what).
NamespaceFactory = Callable[..., str]
WaitUntil = Callable[..., Any]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

IMAGE = "registry.k8s.io/pause:3.10"  # never pulled: kwok simulates the containers
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def pod_manifest(name: str, resources: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "main", "image": IMAGE, "resources": resources or {}}],
            **spec,
        },
    }


def read_pod(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod:
    return core.read_namespaced_pod(name, namespace)


# --------------------------------------------------------------------------- version


def test_server_reports_pinned_version(api_client: client.ApiClient, pinned_versions: dict[str, str]) -> None:
    pinned = pinned_versions["KUBERNETES_VERSION"]
    info = client.VersionApi(api_client).get_code()
    assert info.git_version == pinned, f"/version says {info.git_version}, hack/versions.env pins {pinned}"
    assert info.git_tree_state == "clean"
    assert f"v{info.major}.{info.minor}" == pinned.rsplit(".", 1)[0]


def test_node_pools(core: client.CoreV1Api, pool_nodes: dict[str, set[str]]) -> None:
    assert len(pool_nodes["cpu"]) == 2 and len(pool_nodes["gpu"]) == 2
    for node in core.list_node(label_selector="kubequant.io/pool=gpu").items:
        assert node.status.allocatable["nvidia.com/gpu"] == "4"
        assert node.metadata.labels["nvidia.com/gpu.present"] == "true"
        assert [(t.key, t.value, t.effect) for t in node.spec.taints or []] == [
            ("nvidia.com/gpu", "present", "NoSchedule")
        ]
    for node in core.list_node(label_selector="kubequant.io/pool=cpu").items:
        assert node.metadata.labels["node.kubernetes.io/instance-type"] == "sim-cpu-8"
        assert node.status.allocatable["cpu"] == "8"
        assert "nvidia.com/gpu" not in node.status.allocatable


# --------------------------------------------------------------------------- RBAC


def test_rbac_denies_serviceaccount_without_bindings(
    kube_config: client.Configuration,
    core: client.CoreV1Api,
    rbac: client.RbacAuthorizationV1Api,
    namespace: str,
    wait_until: WaitUntil,
) -> None:
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, {"spec": {"audiences": [], "expirationSeconds": 600}}
    ).status.token

    # Same server and CA, but authenticated only by the ServiceAccount's token.
    sa_config = client.Configuration(host=kube_config.host, ssl_ca_cert=kube_config.ssl_ca_cert)
    sa_config.api_key = {"BearerToken": token}
    sa_config.api_key_prefix = {"BearerToken": "Bearer"}
    with client.ApiClient(sa_config) as sa_api:
        review = client.AuthenticationV1Api(sa_api).create_self_subject_review({})
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:nobody"

        sa_core = client.CoreV1Api(sa_api)
        with pytest.raises(ApiException) as denied:
            sa_core.list_namespaced_pod(namespace)
        assert denied.value.status == 403, denied.value
        assert "forbidden" in str(denied.value.body).lower()

        # Positive control: the same request passes once a RoleBinding allows it.
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "nobody-reads-pods"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}],
            },
        )

        def allowed() -> bool:
            try:
                sa_core.list_namespaced_pod(namespace)
                return True
            except ApiException as exc:
                if exc.status != 403:
                    raise
                return False

        wait_until(allowed, 30, "the RoleBinding to take effect")
        # ...and only what it allows.
        with pytest.raises(ApiException) as still_denied:
            sa_core.list_namespaced_secret(namespace)
        assert still_denied.value.status == 403


# --------------------------------------------------------------------------- admission


def test_pod_security_admission_rejects_privileged_pod(
    core: client.CoreV1Api, make_namespace: NamespaceFactory
) -> None:
    namespace = make_namespace(
        labels={
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }
    )
    privileged = pod_manifest("privileged")
    privileged["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    with pytest.raises(ApiException) as rejected:
        core.create_namespaced_pod(namespace, privileged)
    assert rejected.value.status == 403, rejected.value
    message = json.loads(rejected.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert 'privileged (container "main" must not set securityContext.privileged=true)' in message

    # Positive control: a pod that meets the restricted profile is admitted.
    restricted = pod_manifest(
        "restricted",
        securityContext={
            "runAsNonRoot": True,
            "runAsUser": 65534,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    )
    restricted["spec"]["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    created = core.create_namespaced_pod(namespace, restricted, dry_run="All")
    assert created.metadata.name == "restricted"


# --------------------------------------------------------------------------- controllers + scheduler


def test_job_is_run_by_controller_manager_and_scheduler(
    core: client.CoreV1Api,
    batch: client.BatchV1Api,
    pool_nodes: dict[str, set[str]],
    namespace: str,
    wait_until: WaitUntil,
) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "hello"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"kubequant.io/pool": "cpu"},
                    "containers": [
                        {
                            "name": "main",
                            "image": IMAGE,
                            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
                        }
                    ],
                }
            },
        },
    }
    created = batch.create_namespaced_job(namespace, job)

    # The Job controller (kube-controller-manager) creates the pod...
    pods = wait_until(
        lambda: core.list_namespaced_pod(namespace, label_selector="job-name=hello").items,
        60,
        "the Job controller to create a pod",
    )
    assert len(pods) == 1
    owner = pods[0].metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid) == ("Job", "hello", created.metadata.uid)

    # ...the scheduler binds it to a CPU-pool node...
    pod = wait_until(
        lambda: (p := read_pod(core, namespace, pods[0].metadata.name)).spec.node_name and p,
        60,
        "the scheduler to bind the Job's pod",
    )
    assert pod.spec.node_name in pool_nodes["cpu"]
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod.metadata.name}")
    scheduled = [e for e in events.items if e.reason == "Scheduled"]
    assert scheduled and scheduled[0].reporting_component == "default-scheduler", events.items

    # ...kwok runs it to completion and the Job controller marks the Job Complete.
    def complete() -> client.V1Job | None:
        j = batch.read_namespaced_job_status("hello", namespace)
        done = any(c.type == "Complete" and c.status == "True" for c in j.status.conditions or [])
        return j if done else None

    finished = wait_until(complete, 120, "the Job to complete")
    assert finished.status.succeeded == 1
    assert not finished.status.failed


# --------------------------------------------------------------------------- GPU pool


def test_gpu_pod_with_toleration_lands_on_gpu_node(
    core: client.CoreV1Api, pool_nodes: dict[str, set[str]], namespace: str, wait_until: WaitUntil
) -> None:
    gpu = pod_manifest(
        "trainer",
        resources={"limits": {"nvidia.com/gpu": "1"}, "requests": {"cpu": "2", "memory": "4Gi"}},
        tolerations=[GPU_TOLERATION],
    )
    core.create_namespaced_pod(namespace, gpu)
    pod = wait_until(
        lambda: (p := read_pod(core, namespace, "trainer")).status.phase == "Running" and p,
        60,
        "the GPU pod to be scheduled and running",
    )
    assert pod.spec.node_name in pool_nodes["gpu"]


def test_pods_without_toleration_never_land_on_gpu_nodes(
    core: client.CoreV1Api, pool_nodes: dict[str, set[str]], namespace: str, wait_until: WaitUntil
) -> None:
    # A GPU request without the toleration cannot be placed anywhere: only the
    # (tainted) GPU nodes have nvidia.com/gpu.
    core.create_namespaced_pod(
        namespace, pod_manifest("gpu-no-toleration", resources={"limits": {"nvidia.com/gpu": "1"}})
    )
    # Plain pods spread over the cluster, but never onto a tainted GPU node.
    for i in range(6):
        core.create_namespaced_pod(
            namespace, pod_manifest(f"plain-{i}", resources={"requests": {"cpu": "100m", "memory": "64Mi"}})
        )

    def unschedulable() -> client.V1PodCondition | None:
        conditions = read_pod(core, namespace, "gpu-no-toleration").status.conditions or []
        return next((c for c in conditions if c.type == "PodScheduled" and c.status == "False"), None)

    condition = wait_until(unschedulable, 60, "the scheduler to give up on the GPU pod without toleration")
    assert condition.reason == "Unschedulable"
    assert "untolerated taint" in condition.message and "nvidia.com/gpu" in condition.message

    def all_plain_bound() -> list[client.V1Pod] | None:
        pods = [p for p in core.list_namespaced_pod(namespace).items if p.metadata.name.startswith("plain-")]
        return pods if len(pods) == 6 and all(p.spec.node_name for p in pods) else None

    placed = {p.metadata.name: p.spec.node_name for p in wait_until(all_plain_bound, 60, "the plain pods")}
    assert set(placed.values()) <= pool_nodes["cpu"], placed
    assert read_pod(core, namespace, "gpu-no-toleration").spec.node_name is None
