"""kopf handlers of the RiskPolicy kind: who uses it, live changes to its sessions, no deletion under them.

A policy change reaches a running session twice: the pod follows its RiskPolicy through the API
(within a second; workloads/trading/node/cluster.py), and the operator rewrites the session's ConfigMap,
the copy a restarted pod starts from. Deleting a policy that sessions use waits, as the
PVC-protection controller makes a PersistentVolumeClaim wait for its pods: every RiskPolicy carries
the operator's finalizer, released once no session references it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import kopf

from kubequant.api.risk import RiskPolicy
from kubequant.operator import kube, reconciler
from kubequant.operator.builders.events import status_digest
from kubequant.operator.config import OperatorConfig
from kubequant.operator.handlers import session as sessions
from kubequant.operator.metrics import observe_reconcile
from kubequant.operator.rbac import EVENTS, Access
from kubequant.operator.status.conditions import unchanged
from kubequant.operator.status.policy import policy_status
from kubequant.version import API_GROUP, API_VERSION

KIND, PLURAL = RiskPolicy.__crd__.kind, RiskPolicy.__crd__.plural
USERS_SECONDS = 2.0

RBAC: tuple[Access, ...] = (
    Access(API_GROUP, PLURAL, ("list", "watch"), "kopf watches RiskPolicies", source="kopf"),
    Access(
        API_GROUP,
        PLURAL,
        ("patch",),
        "kopf keeps progress annotations and the finalizer that holds a policy in use",
        source="kopf",
    ),
    Access(
        API_GROUP, f"{PLURAL}/status", ("patch",), "kopf writes the sessions using the policy", source="kopf"
    ),
    Access(API_GROUP, f"{PLURAL}/status", ("patch",), "a policy's daemon keeps the list of its sessions"),
    EVENTS,
)


def users(policy_users: Any, namespace: str, name: str) -> list[str]:
    """The sessions that reference the policy, from the index."""
    key = (namespace, name)
    try:
        return sorted(policy_users[key]) if policy_users is not None and key in policy_users else []
    except (KeyError, TypeError):
        return []


def _write(patch: kopf.Patch, body: Mapping[str, Any], new: dict[str, Any]) -> None:
    if not unchanged(body.get("status"), new):
        patch.status.update(new)


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL)
def policy_changed(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any, policy_users: Any = None, **kwargs: Any
) -> None:
    """Status (its sessions, observedGeneration), then each session's children converge on the new policy."""
    cfg: OperatorConfig = memo["config"]
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    with observe_reconcile(KIND):
        names = users(policy_users, ns, name)
        _write(
            patch,
            body,
            policy_status(body["metadata"].get("generation"), names, body.get("status"), reconciler.now()),
        )
        seen = sessions.indexes({**kwargs, "policy_users": policy_users})
        for session_name in names:
            session = kube.read_custom(sessions.PLURAL, ns, session_name)
            if session is not None and not session["metadata"].get("deletionTimestamp"):
                sessions.reconcile_in_background(session, cfg, logger, seen)


@kopf.daemon(API_GROUP, API_VERSION, PLURAL, cancellation_timeout=5.0)
async def follow_policy_users(body: kopf.Body, stopped: Any, policy_users: Any = None, **_: Any) -> None:
    """Sessions come and go: the status lists the current ones (from the index; written only on change).

    A daemon rather than a timer: kopf logs (and posts as an Event) every timer run.
    """
    while not stopped:
        snapshot = dict(body)
        meta = snapshot["metadata"]
        if not meta.get("deletionTimestamp"):
            names = users(policy_users, meta["namespace"], meta["name"])
            new = policy_status(meta.get("generation"), names, snapshot.get("status"), reconciler.now())
            if not unchanged(snapshot.get("status"), new):
                await asyncio.to_thread(
                    kube.patch_custom_status, PLURAL, meta["namespace"], meta["name"], new
                )
        await stopped.wait(USERS_SECONDS)


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL)
def policy_deleted(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, policy_users: Any = None, **_: Any
) -> None:
    """Deleting a policy in use waits (the finalizer stays) until no session references it."""
    cfg: OperatorConfig = memo["config"]
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    names = users(policy_users, ns, name)
    if not names:
        return
    new = policy_status(
        body["metadata"].get("generation"), names, body.get("status"), reconciler.now(), deleting=True
    )
    if not unchanged(body.get("status"), new):
        patch.status.update(new)
        reconciler.post_event(
            body,
            type="Warning",
            reason="DeletionBlocked",
            message=new["message"],
            key=status_digest(body.get("status")),
        )
    raise kopf.TemporaryError(new["message"], delay=cfg.retry_delay_seconds)
