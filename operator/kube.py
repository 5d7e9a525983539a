"""The few Kubernetes API calls the handlers make, through the official client.

Responses are read as plain JSON (``_preload_content=False``): turning them into the client's model
classes and back into dicts costs more CPU than the rest of a reconcile.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kubequant.version import API_GROUP, API_VERSION

log = logging.getLogger(__name__)
RAW = {"_preload_content": False}


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


def _json(response: Any) -> dict[str, Any]:
    return json.loads(response.data)  # type: ignore[no-any-return]


def _absent(call: Any) -> dict[str, Any] | None:
    """The object a read returns, or None on 404."""
    try:
        return _json(call())
    except ApiException as err:
        if err.status == 404:
            return None
        raise


class AdoptionConflict(Exception):
    """An object with the child's name exists but belongs to someone else."""


def create_or_adopt(obj: dict[str, Any]) -> dict[str, Any]:
    """Create a child; if one with its name exists and is ours (same owner uid), use it."""
    kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
    if kind == "Job":
        batch = client.BatchV1Api(api())
        create, read = batch.create_namespaced_job, batch.read_namespaced_job
    elif kind == "ConfigMap":
        core = client.CoreV1Api(api())
        create, read = core.create_namespaced_config_map, core.read_namespaced_config_map
    else:
        raise ValueError(f"no create/read for {kind}")
    try:
        return _json(create(ns, obj, **RAW))
    except ApiException as err:
        if err.status != 409:
            raise
    existing = _json(read(name, ns, **RAW))
    want = obj["metadata"]["ownerReferences"][0]["uid"]
    owners = [ref.get("uid") for ref in existing["metadata"].get("ownerReferences") or []]
    if want not in owners:
        raise AdoptionConflict(f"{kind} {ns}/{name} exists and is not owned by this object")
    return existing


def read_job(namespace: str, name: str) -> dict[str, Any] | None:
    """The Job as a dict, or None if it does not exist."""
    return _absent(lambda: client.BatchV1Api(api()).read_namespaced_job(name, namespace, **RAW))


def job_pods(namespace: str, job_name: str, not_older_than: str | None = None) -> list[dict[str, Any]]:
    """The pods of a Job, at least as recent as the Job revision ``not_older_than``.

    A plain (consistent) LIST waits for the API server's watch cache to catch up with etcd, about
    0.1 s each here; pods and Jobs share etcd's revision counter, so "not older than the Job we
    are reacting to" is served from the cache at once and still sees the pod the Job saw.
    """
    extra: dict[str, Any] = {}
    if not_older_than:
        extra = {"resource_version": not_older_than, "resource_version_match": "NotOlderThan"}
    pods = client.CoreV1Api(api()).list_namespaced_pod(
        namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}", **extra, **RAW
    )
    return _json(pods)["items"]  # type: ignore[no-any-return]


def patch_job_suspend(namespace: str, name: str, suspend: bool) -> None:
    """Suspend or resume a Job."""
    client.BatchV1Api(api()).patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}}, **RAW)


def pvc_exists(namespace: str, name: str) -> bool:
    """Whether a PersistentVolumeClaim exists."""
    core = client.CoreV1Api(api())
    return _absent(lambda: core.read_namespaced_persistent_volume_claim(name, namespace, **RAW)) is not None


def secret_exists(namespace: str, name: str) -> bool:
    """Whether a Secret exists (needs `get` on secrets in that namespace)."""
    core = client.CoreV1Api(api())
    return _absent(lambda: core.read_namespaced_secret(name, namespace, **RAW)) is not None


def read_custom(plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    """A kubequant custom resource, or None if it is gone."""
    custom = client.CustomObjectsApi(api())
    return _absent(
        lambda: custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, plural, name, **RAW)
    )


def patch_custom_status(plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge-patch a custom resource's status subresource."""
    client.CustomObjectsApi(api()).patch_namespaced_custom_object_status(
        API_GROUP, API_VERSION, namespace, plural, name, {"status": status}, **RAW
    )
