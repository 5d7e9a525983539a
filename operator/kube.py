"""The few Kubernetes API calls the handlers make, through the official client."""

from __future__ import annotations

import functools
import logging
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kubequant.version import API_GROUP, API_VERSION

log = logging.getLogger(__name__)


def load_credentials() -> None:
    """In-cluster credentials in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    settings = client.Configuration.get_default_copy()
    settings.connection_pool_maxsize = 32  # as many as kopf's handler threads
    client.Configuration.set_default(settings)


@functools.cache
def api() -> client.ApiClient:
    """One shared client: its connection pool is thread-safe, and a new client per call means a new TLS handshake."""
    return client.ApiClient()


class AdoptionConflict(Exception):
    """An object with the child's name exists but belongs to someone else."""


def create_or_adopt(obj: dict[str, Any]) -> dict[str, Any]:
    """Create a child; if one with its name exists and is ours (same owner uid), use it."""
    kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
    create, read = _calls(kind)
    try:
        return api().sanitize_for_serialization(create(ns, obj))  # type: ignore[no-any-return]
    except ApiException as err:
        if err.status != 409:
            raise
    existing = api().sanitize_for_serialization(read(name, ns))
    want = obj["metadata"]["ownerReferences"][0]["uid"]
    owners = [ref.get("uid") for ref in existing["metadata"].get("ownerReferences") or []]
    if want not in owners:
        raise AdoptionConflict(f"{kind} {ns}/{name} exists and is not owned by this object")
    return existing  # type: ignore[no-any-return]


def _calls(kind: str) -> tuple[Any, Any]:
    if kind == "Job":
        batch = client.BatchV1Api(api())
        return (
            lambda ns, body: batch.create_namespaced_job(ns, body),
            lambda n, ns: batch.read_namespaced_job(n, ns),
        )
    if kind == "ConfigMap":
        core = client.CoreV1Api(api())
        return (
            lambda ns, body: core.create_namespaced_config_map(ns, body),
            lambda n, ns: core.read_namespaced_config_map(n, ns),
        )
    raise ValueError(f"no create/read for {kind}")


def read_job(namespace: str, name: str) -> dict[str, Any] | None:
    """The Job as a dict, or None if it does not exist."""
    try:
        job = client.BatchV1Api(api()).read_namespaced_job(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return api().sanitize_for_serialization(job)  # type: ignore[no-any-return]


def job_pods(namespace: str, job_name: str) -> list[dict[str, Any]]:
    """The pods of a Job."""
    pods = client.CoreV1Api(api()).list_namespaced_pod(
        namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}"
    )
    return [api().sanitize_for_serialization(p) for p in pods.items]


def patch_job_suspend(namespace: str, name: str, suspend: bool) -> None:
    """Suspend or resume a Job."""
    client.BatchV1Api(api()).patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}})


def pvc_exists(namespace: str, name: str) -> bool:
    """Whether a PersistentVolumeClaim exists."""
    try:
        client.CoreV1Api(api()).read_namespaced_persistent_volume_claim(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def secret_exists(namespace: str, name: str) -> bool:
    """Whether a Secret exists (needs `get` on secrets in that namespace)."""
    try:
        client.CoreV1Api(api()).read_namespaced_secret(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def read_custom(plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    """A kubequant custom resource, or None if it is gone."""
    try:
        obj = client.CustomObjectsApi(api()).get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, plural, name
        )
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return obj  # type: ignore[no-any-return]


def patch_custom_status(plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge-patch a custom resource's status subresource."""
    client.CustomObjectsApi(api()).patch_namespaced_custom_object_status(
        API_GROUP, API_VERSION, namespace, plural, name, {"status": status}
    )
