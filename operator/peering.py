"""Say, at WARNING, why a peered operator does nothing: kopf waits in silence for its peering objects.

With mandatory peering (every replica, unless ``--standalone``) kopf pauses all handlers until the
operator's peering object exists: a ClusterKopfPeering for an operator serving all namespaces, a
KopfPeering in each namespace it serves (``kopf/_core/reactor/orchestration.py``: the
"peering CRD is missing" toggle, and each peering's toggle that starts on and turns off only on an
event from the object). kopf logs nothing about it; a new user sees "Initial authentication has
finished" and then nothing while their objects wait. This module looks for the objects the way the
operator's RBAC allows (``list`` with a name selector), warns at start-up with the two ways out, and
repeats the warning until they appear.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubequant.operator.config import OperatorConfig

log = logging.getLogger(__name__)

GROUP, VERSION = "kopf.dev", "v1"
PEERING_CRDS = "charts/kubequant/crds/kopf-peerings.kopf.dev.yaml"


class Found(Enum):
    PRESENT = "present"
    MISSING = "missing"  # the kind is served, the object is not there
    NOT_SERVED = "not served"  # the kopf.dev CRD is not installed
    UNKNOWN = "unknown"  # forbidden or unreachable: say nothing rather than guess


@dataclass(frozen=True)
class PeeringObject:
    """One peering object kopf waits for."""

    kind: str
    plural: str
    name: str
    namespace: str | None = None

    def describe(self) -> str:
        where = f" in namespace {self.namespace}" if self.namespace else ""
        return f"{self.kind} {self.name}{where}"

    def manifest(self) -> str:
        meta = {"name": self.name} | ({"namespace": self.namespace} if self.namespace else {})
        return json.dumps({"apiVersion": f"{GROUP}/{VERSION}", "kind": self.kind, "metadata": meta})


Lookup = Callable[[PeeringObject], Found]


def awaited_objects(cfg: OperatorConfig) -> list[PeeringObject]:
    """The peering objects kopf needs before it handles anything (none when standalone)."""
    if cfg.standalone:
        return []
    if not cfg.namespaces:
        return [PeeringObject("ClusterKopfPeering", "clusterkopfpeerings", cfg.peering)]
    # A namespace pattern (kopf accepts globs) cannot be looked up by name: say nothing about it.
    literal = [ns for ns in cfg.namespaces if not any(c in ns for c in "*?[]!")]
    return [PeeringObject("KopfPeering", "kopfpeerings", cfg.peering, ns) for ns in literal]


def waiting_message(missing: list[tuple[PeeringObject, Found]]) -> str:
    """The warning: what kopf waits for, and the two ways out."""
    names = ", ".join(
        obj.describe() + (" (its CRD is not installed)" if found is Found.NOT_SERVED else "")
        for obj, found in missing
    )
    creates = " && ".join(f"echo '{obj.manifest()}' | kubectl apply -f -" for obj, _ in missing)
    crds = f"kubectl apply -f {PEERING_CRDS} && " if any(f is Found.NOT_SERVED for _, f in missing) else ""
    return (
        f"kopf peering is mandatory and waits for {names}: no object is handled until it exists. "
        f"Either install the chart's peering resources (helm install with peering.create=true, the "
        f"default; or by hand: {crds}{creates}), or run a single replica without peering: "
        "kubequant operator --standalone (KUBEQUANT_STANDALONE=true)"
    )


def check(objects: list[PeeringObject], lookup: Lookup) -> list[tuple[PeeringObject, Found]]:
    """The objects that are known to be missing (a lookup that cannot tell is left out)."""
    found = [(obj, lookup(obj)) for obj in objects]
    return [(obj, f) for obj, f in found if f in (Found.MISSING, Found.NOT_SERVED)]


def watch_until_present(
    objects: list[PeeringObject],
    lookup: Lookup,
    interval: float,
    *,
    warned: bool = False,
    sleep: Callable[[float], object] = time.sleep,
) -> None:
    """Warn every ``interval`` seconds while peering objects are missing; say so when they appear.

    ``warned``: the first warning is already out (at start-up), so wait an interval before the next.
    """
    while True:
        if warned:
            sleep(interval)
        missing = check(objects, lookup)
        if not missing:
            if warned:
                found = ", ".join(o.describe() for o in objects)
                log.info("kopf peering objects found (%s): kopf resumes handling", found)
            return
        log.warning(waiting_message(missing))
        warned = True


def kubernetes_lookup(api: client.CustomObjectsApi) -> Lookup:
    """Look a peering object up with ``list`` and a name selector (the chart's RBAC has no ``get``)."""

    def lookup(obj: PeeringObject) -> Found:
        selector = f"metadata.name={obj.name}"
        listed: object
        try:
            if obj.namespace:
                listed = api.list_namespaced_custom_object(
                    GROUP, VERSION, obj.namespace, obj.plural, field_selector=selector, _request_timeout=10
                )
            else:
                listed = api.list_cluster_custom_object(
                    GROUP, VERSION, obj.plural, field_selector=selector, _request_timeout=10
                )
        except ApiException as err:
            # 404 without an object name: the resource itself is not served (no CRD).
            return Found.NOT_SERVED if err.status == 404 else Found.UNKNOWN
        except Exception:  # unreachable, timeout: kopf will say so itself
            return Found.UNKNOWN
        items = listed.get("items") if isinstance(listed, dict) else None
        return Found.PRESENT if items else Found.MISSING

    return lookup


def start_warning_thread(cfg: OperatorConfig) -> threading.Thread | None:
    """Warn now, at start-up, if kopf will wait for peering objects; repeat it from a daemon thread."""
    objects = awaited_objects(cfg)
    if not objects:
        return None
    lookup = kubernetes_lookup(client.CustomObjectsApi())
    missing = check(objects, lookup)
    if not missing:
        return None
    log.warning(waiting_message(missing))
    thread = threading.Thread(
        target=watch_until_present,
        args=(objects, lookup, cfg.peering_warning_seconds),
        kwargs={"warned": True},
        name="peering-warning",
        daemon=True,
    )
    thread.start()
    return thread
