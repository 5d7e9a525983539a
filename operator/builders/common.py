"""Pieces every child object shares: deterministic names, labels, owner references, pod hardening."""

from __future__ import annotations

import hashlib
from typing import Any

from kubequant.api.common import PodOptions, ResourceRequirements, Toleration
from kubequant.api.resource import Resource
from kubequant.operator.config import OperatorConfig
from kubequant.version import API_GROUP, API_VERSION

GPU_RESOURCE = "nvidia.com/gpu"
# Kubernetes names of Jobs become label values (job-name), so they must fit in 63 characters.
MAX_NAME = 63
NONROOT_UID = 65532


def child_name(owner: str, suffix: str, limit: int = MAX_NAME) -> str:
    """``<owner>-<suffix>``, or a truncated owner plus a hash of it when that would be too long."""
    name = f"{owner}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(owner.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 2
    return f"{owner[:keep].rstrip('-.')}-{digest}-{suffix}"


def kind_label(kind: str) -> str:
    """The label that points a child at its owner, e.g. kubequant.io/backtest."""
    return f"{API_GROUP}/{kind.lower()}"


def labels(resource: Resource, component: str) -> dict[str, str]:
    """Recommended labels plus ``kubequant.io/<kind>: <name>``."""
    name = resource.metadata.name
    return {
        "app.kubernetes.io/name": "kubequant",
        "app.kubernetes.io/instance": name[:63].rstrip("-."),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "kubequant",
        "app.kubernetes.io/managed-by": "kubequant-operator",
        kind_label(resource.__crd__.kind): name[:63].rstrip("-."),
    }


def owner_reference(resource: Resource) -> dict[str, Any]:
    """A controller owner reference, so children are garbage-collected with their owner."""
    if not resource.metadata.uid:
        raise ValueError(
            f"{resource.__crd__.kind} {resource.metadata.name} has no uid (not read from the API server)"
        )
    return {
        "apiVersion": resource.api_version,
        "kind": resource.__crd__.kind,
        "name": resource.metadata.name,
        "uid": resource.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controller_reference(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The owner reference that makes a ``kind`` of kubequant.io the object's controller, or None.

    Anyone who can create Jobs can copy a Backtest's uid into an owner reference. Only a reference as
    owner_reference writes it counts: controller (an object has at most one), the API group's version
    and kind, and blockOwnerDeletion, which the OwnerReferencesPermissionEnforcement admission plugin
    lets only those allowed to update the owner's finalizers set.
    """
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if (
            ref.get("controller") is True
            and ref.get("blockOwnerDeletion") is True
            and ref.get("kind") == kind
            and ref.get("apiVersion") == f"{API_GROUP}/{API_VERSION}"
            and ref.get("name")
            and ref.get("uid")
        ):
            return dict(ref)
    return None


def object_meta(resource: Resource, name: str, component: str) -> dict[str, Any]:
    """metadata of a child object."""
    return {
        "name": name,
        "namespace": resource.metadata.namespace,
        "labels": labels(resource, component),
        "ownerReferences": [owner_reference(resource)],
    }


def pod_security_context() -> dict[str, Any]:
    """Pod-level settings of the "restricted" Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": NONROOT_UID,
        "runAsGroup": NONROOT_UID,
        "fsGroup": NONROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Container-level settings of the "restricted" Pod Security Standard."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def requests_gpu(resources: ResourceRequirements | None) -> bool:
    """Whether the container asks for a GPU."""
    if resources is None:
        return False
    return any(GPU_RESOURCE in (part or {}) for part in (resources.requests, resources.limits))


def resources_dict(resources: ResourceRequirements | None) -> dict[str, Any]:
    """core/v1 ResourceRequirements; a GPU request is mirrored into limits as Kubernetes requires."""
    if resources is None:
        return {}
    out: dict[str, Any] = {}
    if resources.requests:
        out["requests"] = {k: str(v) for k, v in resources.requests.items()}
    if resources.limits:
        out["limits"] = {k: str(v) for k, v in resources.limits.items()}
    gpu = (resources.requests or {}).get(GPU_RESOURCE)
    if gpu is not None and GPU_RESOURCE not in out.get("limits", {}):
        out.setdefault("limits", {})[GPU_RESOURCE] = str(gpu)
    return out


def tolerations(pod: PodOptions) -> list[dict[str, Any]]:
    """The spec's tolerations, plus the GPU pool's taint when the pod asks for a GPU."""
    items: list[Toleration] = list(pod.tolerations or [])
    out = [t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in items]
    if requests_gpu(pod.resources) and not any(t.get("key") == GPU_RESOURCE for t in out):
        out.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    return out


def pod_placement(pod: PodOptions, cfg: OperatorConfig) -> dict[str, Any]:
    """The pod spec fields that decide where and as whom the pod runs."""
    spec: dict[str, Any] = {}
    account = pod.service_account_name or cfg.workload_service_account
    if account:
        spec["serviceAccountName"] = account
    if pod.node_selector:
        spec["nodeSelector"] = dict(pod.node_selector)
    tols = tolerations(pod)
    if tols:
        spec["tolerations"] = tols
    if pod.priority_class_name:
        spec["priorityClassName"] = pod.priority_class_name
    if pod.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s.name} for s in pod.image_pull_secrets]
    return spec
