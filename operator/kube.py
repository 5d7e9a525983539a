"""The few Kubernetes API calls the handlers make, through the official client.

Each handler module declares the access these calls need (its ``RBAC``, kubequant.operator.rbac).
Nothing here reads a Secret.

Responses are read as plain JSON (``_preload_content=False``): turning them into the client's model
classes and back into dicts costs more CPU than the rest of a reconcile.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kubequant.operator.builders.common import converge_patch
from kubequant.version import API_GROUP, API_VERSION

log = logging.getLogger(__name__)
RAW = {"_preload_content": False}
RAY_GROUP, RAY_VERSION = "ray.io", "v1"


def load_credentials() -> None:
    """In-cluster credentials in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    settings = client.Configuration.get_default_copy()
    settings.connection_pool_maxsize = 32  # as many as kopf's handler threads
    client.Configuration.set_default(settings)
    warm_up()


def warm_up() -> None:
    """Import the client's API classes now, before the first event.

    The client imports them (and every model class each one names, ~1.6 s for CoreV1Api alone) on
    first use, under Python's import lock: left to the first reconcile, a burst of new objects has
    every handler thread waiting on that lock at once.
    """
    names = {k.api for k in KINDS.values() if isinstance(k, KindApi)} | {"CoreV1Api", "CustomObjectsApi"}
    for name in sorted(names):
        getattr(client, name)


@functools.cache
def api() -> client.ApiClient:
    """One shared client: its connection pool is thread-safe, and a new client per call means a new TLS handshake."""
    return client.ApiClient()


def _json(response: Any) -> dict[str, Any]:
    """The body of a raw response, read to the end: only then does its connection go back to the pool
    (an unread one stays checked out, and the next call opens a new connection: a TLS handshake)."""
    return json.loads(response.data)  # type: ignore[no-any-return]


def _absent(call: Any) -> dict[str, Any] | None:
    """The object a read returns, or None on 404."""
    try:
        return _json(call())
    except ApiException as err:
        if err.status == 404:
            return None
        raise


# How long to wait before retrying a call the API server throttled or could not answer. kopf waits 60 s
# after an arbitrary error; a 429 from API Priority and Fairness says when to come back (Retry-After,
# 1 s for the queues kube-apiserver sheds), and a restarting server answers again within seconds.
TRANSIENT_RETRY_SECONDS = 1.0
MAX_RETRY_AFTER_SECONDS = 30.0


def transient_delay(err: BaseException) -> float | None:
    """Seconds to wait before retrying after ``err``, or None when retrying the same call cannot help.

    Transient: 429 Too Many Requests (its Retry-After, within 1-30 s), 5xx, and no answer at all (the
    connection refused, reset or timed out). Anything else (a 4xx refusal, a bug) is not transient.
    """
    import urllib3.exceptions

    if isinstance(err, ApiException):
        code = int(err.status or 0)
        if code == 429:
            headers = err.headers or {}
            try:
                after = float(headers.get("Retry-After") or TRANSIENT_RETRY_SECONDS)
            except (TypeError, ValueError):  # an HTTP date or garbage: the short default
                after = TRANSIENT_RETRY_SECONDS
            return min(max(after, TRANSIENT_RETRY_SECONDS), MAX_RETRY_AFTER_SECONDS)
        if code >= 500 or code == 0:
            return TRANSIENT_RETRY_SECONDS
        return None
    if isinstance(err, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)):
        return TRANSIENT_RETRY_SECONDS
    return None


class AdoptionConflict(Exception):
    """An object with the child's name exists but belongs to someone else."""


class CreateRefused(Exception):
    """The API server refused to create a child: a 4xx other than 409 (exists) and 429 (throttled).

    The same object would be refused again (an invalid field, an admission policy's denial), so the
    owner fails for good with the server's reason, except over a ResourceQuota, which frees up as
    other runs end: ``retriable`` then, and ``reason`` QuotaExceeded.
    """

    def __init__(
        self,
        kind: str,
        namespace: str,
        name: str,
        code: int,
        api_reason: str,
        message: str,
        verb: str = "create",
    ) -> None:
        self.kind, self.code = kind, code
        self.retriable = code == 403 and "exceeded quota" in message
        self.reason = "QuotaExceeded" if self.retriable else f"{kind}Rejected"
        text = f"the API server refused to {verb} {kind} {namespace}/{name} ({code} {api_reason}): {message}"
        super().__init__(text[:2048])


def _create_refused(
    kind: str, namespace: str, name: str, err: ApiException, verb: str = "create"
) -> CreateRefused | None:
    """The refusal an error on create means, or None when retrying may help (409, 429, 5xx, no answer)."""
    code = int(err.status or 0)
    if not 400 <= code < 500 or code in (409, 429):
        return None
    try:
        body = json.loads(err.body or "{}")
    except (TypeError, ValueError):
        body = {}
    body = body if isinstance(body, dict) else {}
    message = str(body.get("message") or err.reason or "no message")
    return CreateRefused(
        kind, namespace, name, code, str(body.get("reason") or err.reason or ""), message, verb
    )


@dataclass(frozen=True)
class KindApi:
    """How to create, read and patch one kind of child, through the official client."""

    api: str  # the client's API class, e.g. AppsV1Api
    suffix: str  # its method names: create_namespaced_<suffix>, read_..., patch_...

    def call(self, verb: str) -> Callable[..., Any]:
        return getattr(getattr(client, self.api)(api()), f"{verb}_namespaced_{self.suffix}")  # type: ignore[no-any-return]


@dataclass(frozen=True)
class CustomKindApi:
    """The same calls for a custom resource of another operator (KubeRay's RayJob), through CustomObjectsApi."""

    group: str
    version: str
    plural: str

    def call(self, verb: str) -> Callable[..., Any]:
        custom = client.CustomObjectsApi(api())
        g, v, p = self.group, self.version, self.plural
        if verb == "create":
            return lambda ns, body, **kw: custom.create_namespaced_custom_object(g, v, ns, p, body, **kw)
        if verb == "read":
            return lambda name, ns, **kw: custom.get_namespaced_custom_object(g, v, ns, p, name, **kw)
        if verb == "patch":
            # A list is a JSON patch (converge_patch); the client's default is a merge patch.
            return lambda name, ns, body, **kw: custom.patch_namespaced_custom_object(
                g,
                v,
                ns,
                p,
                name,
                body,
                _content_type="application/json-patch+json" if isinstance(body, list) else None,
                **kw,
            )
        raise ValueError(f"no {verb} for {p}.{g}")


# Every kind of child the operator makes. Which verbs each handler may use is its RBAC declaration.
KINDS: dict[str, KindApi | CustomKindApi] = {
    "ConfigMap": KindApi("CoreV1Api", "config_map"),
    "Job": KindApi("BatchV1Api", "job"),
    "Service": KindApi("CoreV1Api", "service"),
    "ServiceAccount": KindApi("CoreV1Api", "service_account"),
    "StatefulSet": KindApi("AppsV1Api", "stateful_set"),
    "NetworkPolicy": KindApi("NetworkingV1Api", "network_policy"),
    "Role": KindApi("RbacAuthorizationV1Api", "role"),
    "RoleBinding": KindApi("RbacAuthorizationV1Api", "role_binding"),
    # KubeRay's: a TrainingJob's RayJob. KubeRay makes and owns the RayCluster and copies its status
    # into the RayJob's (status.rayClusterStatus), so the operator never reads RayClusters itself.
    "RayJob": CustomKindApi(RAY_GROUP, RAY_VERSION, "rayjobs"),
}


def _kind_api(kind: str) -> KindApi | CustomKindApi:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"no create/read/patch for {kind}") from None


def apply(obj: dict[str, Any], *, converge: bool = False, recorded_uid: str | None = None) -> dict[str, Any]:
    """Create a child, or adopt the one of its name if it is ours; with ``converge``, patch it to the built object.

    Ours means our controller reference and, once recorded in the owner's status, the uid the
    operator created it with: a look-alike (a child deleted and recreated by someone else) is an
    AdoptionConflict. A converged child is patched only when the hash of the built object in its
    annotation differs (so an unchanged child costs no write), by a JSON patch that first tests its uid.
    """
    kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
    kapi = _kind_api(kind)
    # A child the operator already made is most likely still there: read it first (one call, not two).
    existing = _absent(lambda: kapi.call("read")(name, ns, **RAW)) if recorded_uid is not None else None
    if existing is None:
        try:
            return _json(kapi.call("create")(ns, obj, **RAW))
        except ApiException as err:
            if err.status != 409:
                refused = _create_refused(kind, ns, name, err)
                if refused is not None:
                    raise refused from err
                raise
        existing = _json(kapi.call("read")(name, ns, **RAW))
    want = obj["metadata"]["ownerReferences"][0]
    # Someone else's object that merely names the owner (any user can copy a uid) is not adopted.
    ours = [
        ref
        for ref in existing["metadata"].get("ownerReferences") or []
        if ref.get("controller") is True
        and all(ref.get(key) == want[key] for key in ("apiVersion", "kind", "name", "uid"))
    ]
    if not ours:
        raise AdoptionConflict(f"{kind} {ns}/{name} exists and is not controlled by this object")
    uid = existing["metadata"].get("uid")
    if recorded_uid is not None and uid != recorded_uid:
        raise AdoptionConflict(
            f"{kind} {ns}/{name} is not the one the operator created (uid {uid}, created as {recorded_uid}): "
            "it was deleted and replaced by someone else"
        )
    if converge:
        ops = converge_patch(existing, obj)
        if ops:
            log.info("%s %s/%s differs from its spec: patching", kind, ns, name)
            try:
                return _json(kapi.call("patch")(name, ns, ops, **RAW))
            except ApiException as err:
                # e.g. a StatefulSet's volumeClaimTemplates (spec.journal) cannot change: the same patch
                # would be refused again, until the spec changes back.
                refused = _create_refused(kind, ns, name, err, "update")
                if refused is not None:
                    raise refused from err
                raise
    return existing


def create_or_adopt(obj: dict[str, Any]) -> dict[str, Any]:
    """Create a child; if one with its name exists and is ours (our controller reference), use it."""
    return apply(obj)


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


def list_pods(namespace: str, label_selector: str) -> list[dict[str, Any]]:
    """The pods of a namespace that match a label selector."""
    pods = client.CoreV1Api(api()).list_namespaced_pod(namespace, label_selector=label_selector, **RAW)
    return _json(pods)["items"]  # type: ignore[no-any-return]


def patch_job_suspend(namespace: str, name: str, suspend: bool) -> bool:
    """Suspend or resume a Job; False when there is no such Job."""
    batch = client.BatchV1Api(api())
    return (
        _absent(lambda: batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}}, **RAW))
        is not None
    )


def pvc_exists(namespace: str, name: str) -> bool:
    """Whether a PersistentVolumeClaim exists."""
    core = client.CoreV1Api(api())
    return _absent(lambda: core.read_namespaced_persistent_volume_claim(name, namespace, **RAW)) is not None


# An Event is auxiliary: a handler waits this long for one, not for a hung API server.
EVENT_TIMEOUT_SECONDS = 10.0


def create_event(event: dict[str, Any]) -> bool:
    """Create a core/v1 Event under its own name; False when one of that name exists (posted before)."""
    core = client.CoreV1Api(api())
    try:
        _json(
            core.create_namespaced_event(
                event["metadata"]["namespace"], event, _request_timeout=EVENT_TIMEOUT_SECONDS, **RAW
            )
        )
    except ApiException as err:
        if err.status == 409:
            return False
        raise
    return True


def read_custom(plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    """A kubequant custom resource, or None if it is gone."""
    custom = client.CustomObjectsApi(api())
    return _absent(
        lambda: custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, plural, name, **RAW)
    )


def patch_custom_status(plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge-patch a custom resource's status subresource."""
    _json(
        client.CustomObjectsApi(api()).patch_namespaced_custom_object_status(
            API_GROUP, API_VERSION, namespace, plural, name, {"status": status}, **RAW
        )
    )


def read_rayjob(namespace: str, name: str) -> dict[str, Any] | None:
    """A KubeRay RayJob, or None if it is gone."""
    return _absent(lambda: KINDS["RayJob"].call("read")(name, namespace, **RAW))


def patch_rayjob_suspend(namespace: str, name: str, suspend: bool) -> bool:
    """Suspend or resume a RayJob (KubeRay deletes or recreates its cluster); False when there is none."""
    return (
        _absent(lambda: KINDS["RayJob"].call("patch")(name, namespace, {"spec": {"suspend": suspend}}, **RAW))
        is not None
    )
