"""Pieces every child object shares: deterministic names, labels, owner references, pod hardening."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import yaml

from kubequant.api.common import DataSource, PodOptions, ResourceRequirements, Toleration
from kubequant.api.quantity import overcommit_allowed
from kubequant.api.resource import Resource
from kubequant.operator.config import OperatorConfig
from kubequant.version import API_GROUP, API_VERSION

GPU_RESOURCE = "nvidia.com/gpu"
# The hash of the object as built, on every child the operator keeps converged (KubeRay keeps one too).
SPEC_HASH_ANNOTATION = f"{API_GROUP}/spec-hash"
# What the operator owns in a long-lived child, by kind: patched to the built object when its hash changes.
MANAGED_FIELDS: dict[str, tuple[str, ...]] = {
    "ConfigMap": ("data",),
    "Service": ("spec",),
    "ServiceAccount": ("automountServiceAccountToken",),
    "StatefulSet": ("spec",),
    "NetworkPolicy": ("spec",),
    "Role": ("rules",),
    "RoleBinding": ("subjects",),
}
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


def resolved_manifest(resource: Resource) -> dict[str, Any]:
    """The object as its pod reads it: defaults filled in, no status, no server metadata."""
    return {
        "apiVersion": resource.api_version,
        "kind": type(resource).__crd__.kind,
        "metadata": {"name": resource.metadata.name, "namespace": resource.metadata.namespace},
        "spec": resource.spec.to_manifest(),  # type: ignore[attr-defined]
    }


def manifest_config_map(resource: Resource, name: str, component: str, key: str) -> dict[str, Any]:
    """A ConfigMap holding the resolved manifest under ``key``, for the pods to mount read-only."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(resource, name, component),
        # allow_unicode: non-ASCII text stays as it is (escaped, a CJK spec would more than double).
        "data": {key: yaml.safe_dump(resolved_manifest(resource), sort_keys=False, allow_unicode=True)},
    }


def manifest_annotation(resource: Resource) -> str:
    """The resolved manifest as one line of flow-style YAML, for a pod-template annotation its pod reads
    through the downward API. Flow style stays about the size of the JSON whatever the nesting (block
    style indents every level), well inside the 256 KiB all annotations share: the spec, labels and
    annotations are at most 80 KiB as JSON (``MAX_OBJECT_BYTES``)."""
    return yaml.safe_dump(
        resolved_manifest(resource),
        default_flow_style=True,
        sort_keys=False,
        allow_unicode=True,
        width=1 << 30,
    ).rstrip("\n")


DATA_DIR = "/var/lib/kubequant/data"  # where a data volume is mounted in every workload pod


def data_volume(data: DataSource) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The read-only volume and mount of ``spec.data.volume`` (at DATA_DIR), or None without one."""
    if data.volume is None:
        return None
    volume = {
        "name": "data",
        "persistentVolumeClaim": {"claimName": data.volume.claim_name, "readOnly": True},
    }
    mount: dict[str, Any] = {"name": "data", "mountPath": DATA_DIR, "readOnly": True}
    if data.volume.sub_path:
        mount["subPath"] = data.volume.sub_path
    return volume, mount


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
    """core/v1 ResourceRequirements; a request of what cannot be overcommitted (nvidia.com/gpu,
    hugepages) is mirrored into limits, as Kubernetes requires (the API checks they agree when both are set)."""
    if resources is None:
        return {}
    out: dict[str, Any] = {}
    if resources.requests:
        out["requests"] = {k: str(v) for k, v in resources.requests.items()}
    if resources.limits:
        out["limits"] = {k: str(v) for k, v in resources.limits.items()}
    for name, quantity in (resources.requests or {}).items():
        if not overcommit_allowed(name) and name not in out.get("limits", {}):
            out.setdefault("limits", {})[name] = str(quantity)
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


def spec_hash(obj: dict[str, Any]) -> str:
    """A short hash of a built object (its hash annotation left out)."""
    meta = dict(obj.get("metadata") or {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != SPEC_HASH_ANNOTATION}
    meta["annotations"] = annotations or None
    text = json.dumps({**obj, "metadata": meta}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def with_spec_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """The object with the hash of itself in its annotation."""
    meta = dict(obj["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), SPEC_HASH_ANNOTATION: spec_hash(obj)}
    return {**obj, "metadata": meta}


def _pointer(*parts: str) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def converge_patch(existing: dict[str, Any], desired: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The JSON patch that makes ``existing`` what was built (``desired``, hash annotated), or None when
    its hash annotation already matches.

    It first tests the uid, so it patches only the object whose ownership was checked; then replaces
    the fields the operator owns (``MANAGED_FIELDS``: the whole spec of a StatefulSet, so a removed
    field goes too) and the labels, and sets the hash. Fields the API server fills in (a Service's
    clusterIP, defaults) are filled in again; other annotations are kept.
    """
    want = ((desired.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    meta = existing.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if want is None or annotations.get(SPEC_HASH_ANNOTATION) == want:
        return None
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/uid", "value": meta.get("uid")}]
    for field in MANAGED_FIELDS.get(desired["kind"], ()):
        if field in desired:
            ops.append(
                {
                    "op": "add" if field not in existing else "replace",
                    "path": _pointer(field),
                    "value": desired[field],
                }
            )
        elif field in existing:
            ops.append({"op": "remove", "path": _pointer(field)})
    ops.append({"op": "add", "path": "/metadata/labels", "value": desired["metadata"].get("labels") or {}})
    if annotations:
        ops.append(
            {"op": "add", "path": _pointer("metadata", "annotations", SPEC_HASH_ANNOTATION), "value": want}
        )
    else:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {SPEC_HASH_ANNOTATION: want}})
    return ops
