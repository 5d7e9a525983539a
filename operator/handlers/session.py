"""kopf handlers of the LiveTradingSession kind and of its trading pod: ordered steps and one status function.

The operator makes the pod and keeps its children converged; the pod follows its own session (the
kill switch) and RiskPolicy through the API and reports what it knows into status (see
workloads/trading/node/cluster.py); the operator turns the pod's state and that report into conditions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from kubequant.api.live import LiveTradingSession, SessionPhase
from kubequant.api.risk import RiskPolicy
from kubequant.manifests import InvalidManifest, parse_resource
from kubequant.operator import kube, reconciler
from kubequant.operator.builders.common import kind_label
from kubequant.operator.builders.session import (
    ACCOUNT_LABEL,
    account_key,
    build_session_children,
    pod_name,
    trading_name,
)
from kubequant.operator.config import OperatorConfig
from kubequant.operator.metrics import PHASES, observe_reconcile
from kubequant.operator.rbac import Access, owner_kind
from kubequant.operator.reconciler import Context, Kind, Rejected, Waiting
from kubequant.operator.status import session as status
from kubequant.operator.status.conditions import condition, unchanged
from kubequant.version import API_GROUP, API_VERSION

KIND, PLURAL = LiveTradingSession.__crd__.kind, LiveTradingSession.__crd__.plural
POLICIES = RiskPolicy.__crd__.plural
LABEL = kind_label(KIND)
FOLLOW_SECONDS = 0.5  # how soon the conditions follow the pod and the runtime's report
STALE_CHECK = 15.0

RBAC: tuple[Access, ...] = (
    *owner_kind(API_GROUP, PLURAL, "sessions (and indexes them)"),
    Access(
        API_GROUP,
        PLURAL,
        ("get",),
        "a pod event reads the session that owns the pod; a RiskPolicy change reads its sessions "
        "(and the pod's Role grants get on its own session, which only a holder may grant)",
    ),
    Access(
        API_GROUP, f"{PLURAL}/status", ("patch",), "pod events and RiskPolicy changes write sessions' status"
    ),
    Access(API_GROUP, POLICIES, ("get",), "resolve the session's RiskPolicy into the pod's ConfigMap"),
    Access(
        "apps",
        "statefulsets",
        ("create", "get", "patch"),
        "the trading pod's StatefulSet: create, adopt, converge",
    ),
    Access("", "configmaps", ("create", "get", "patch"), "the session's ConfigMap: create, adopt, converge"),
    Access("", "services", ("create", "get", "patch"), "the signal API's Service: create, adopt, converge"),
    Access("", "serviceaccounts", ("create", "get", "patch"), "the pod's own ServiceAccount"),
    Access(
        "networking.k8s.io",
        "networkpolicies",
        ("create", "get", "patch"),
        "the trading pod's NetworkPolicy: create, adopt, converge",
    ),
    Access(
        "rbac.authorization.k8s.io",
        "roles",
        ("create", "get", "patch"),
        "the pod's Role: its own session and RiskPolicy by name (the API server checks the operator "
        "holds every rule it grants)",
    ),
    Access(
        "rbac.authorization.k8s.io", "rolebindings", ("create", "get", "patch"), "binds that Role to the pod"
    ),
    Access("", "pods", ("list",), "the session's pod, and pods of other sessions on the same account"),
    Access(
        "",
        "pods",
        ("list", "watch"),
        "kopf watches trading pods (their state becomes conditions)",
        source="kopf",
    ),
)


# --------------------------------------------------------------------------- indexes


@kopf.index(API_GROUP, API_VERSION, PLURAL)
def session_accounts(namespace: str, name: str, spec: Any, meta: Any, **_: Any) -> Any:
    """Sessions by (namespace, broker account): who holds an account, without listing sessions."""
    account = (spec or {}).get("account")
    if not account:
        return None
    return {(namespace, account): (meta.get("creationTimestamp") or "", name)}


@kopf.index(API_GROUP, API_VERSION, PLURAL)
def policy_users(namespace: str, name: str, spec: Any, **_: Any) -> Any:
    """Sessions by (namespace, RiskPolicy name): which sessions a policy guards."""
    ref = ((spec or {}).get("riskPolicyRef") or {}).get("name")
    return {(namespace, ref): name} if ref else None


@kopf.index("", "v1", "pods", labels={LABEL: kopf.PRESENT})
def trading_pods(namespace: str, name: str, body: Any, labels: Any, **_: Any) -> Any:
    """Trading pods by (namespace, session label): their state, for status refreshes without a read."""
    return {
        (namespace, labels[LABEL]): {
            "metadata": dict(body["metadata"]),
            "status": dict(body.get("status") or {}),
        }
    }


def label_value(name: str) -> str:
    """The session's name as its children's label value (labels are at most 63 characters)."""
    return name[:63].rstrip("-.")


# --------------------------------------------------------------------------- steps


def require_signal_token(ctx: Context) -> None:
    """On a cluster the signal API is reachable by others: it needs its token Secret."""
    api = ctx.resource.spec.strategy.signal_api
    if api is not None and api.token_secret_ref is None:
        raise Rejected(
            "InvalidSpec",
            "spec.strategy.signalApi.tokenSecretRef: the signal API of a session on a cluster needs a bearer "
            "token — fix: create a Secret with the token and name it and its key here",
        )


def resolve_policy(ctx: Context) -> None:
    """The RiskPolicy the session references; Waiting (RiskPolicyNotFound) until it exists."""
    ref = ctx.resource.spec.risk_policy_ref.name
    body = kube.read_custom(POLICIES, ctx.namespace, ref)
    # A policy being deleted is still in force: its deletion waits (the finalizer) for its sessions.
    if body is None:
        raise Waiting(
            "RiskPolicyNotFound",
            f"RiskPolicy {ref} (spec.riskPolicyRef) does not exist; the session waits for it",
        )
    try:
        ctx.seen["policy"] = parse_resource(
            {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
        )
    except InvalidManifest as err:
        raise Waiting("RiskPolicyInvalid", f"RiskPolicy {ref}: {err}") from err


def _holders(index: Any, key: tuple[str, str]) -> list[tuple[str, str]]:
    try:
        return sorted(index[key]) if index is not None and key in index else []
    except (KeyError, TypeError):
        return []


def check_account(ctx: Context) -> None:
    """One session per broker account in the namespace: the oldest holds it; the others wait, naming it.

    Also waits while another session's pod still runs on the account (a deleted holder's pod stops
    within its grace period): the runtime's state-directory lock is per journal, so it cannot tell.
    """
    session: LiveTradingSession = ctx.resource
    account = session.spec.account
    holders = _holders(ctx.seen.get("session_accounts"), (ctx.namespace, account))
    mine = (str(ctx.body["metadata"].get("creationTimestamp") or ""), ctx.name)
    first = min([*holders, mine])
    if first[1] != ctx.name:
        raise Waiting(
            "AccountInUse",
            f"session {first[1]} holds broker account {account} (spec.account): one session per account; "
            f"this one starts when {first[1]} is deleted",
        )
    own = label_value(ctx.name)
    for pod in kube.list_pods(ctx.namespace, f"{ACCOUNT_LABEL}={account_key(account)}"):
        other = (pod["metadata"].get("labels") or {}).get(LABEL)
        if other != own:
            raise Waiting(
                "AccountInUse",
                f"pod {pod['metadata']['name']} of session {other} still runs on broker account {account}; "
                "this session starts once it is gone",
            )


def build(ctx: Context) -> list[dict[str, Any]]:
    """The pod's identity and rights, its ConfigMap, Service and NetworkPolicy, then the StatefulSet."""
    return build_session_children(ctx.resource, ctx.seen["policy"], ctx.cfg)


def observe_pod(ctx: Context) -> None:
    """The trading pod, if the StatefulSet made it."""
    pods = kube.list_pods(ctx.namespace, f"{LABEL}={label_value(ctx.name)}")
    sts = ctx.children.get("StatefulSet")
    ctx.seen["pod"] = next((p for p in pods if sts is not None and _made_by(p, sts)), None)


def _made_by(pod: Mapping[str, Any], sts: Mapping[str, Any]) -> bool:
    meta = sts.get("metadata") or {}
    return any(
        ref.get("controller") is True
        and ref.get("kind") == "StatefulSet"
        and ref.get("uid") == meta.get("uid")
        for ref in (pod.get("metadata") or {}).get("ownerReferences") or []
    )


def secrets_of(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(spec field, Secret name) of the Secrets the pod mounts (named in status, never read)."""
    out = []
    creds = ((spec.get("broker") or {}).get("credentialsSecretRef") or {}).get("name")
    if creds:
        out.append(("spec.broker.credentialsSecretRef", creds))
    token = (((spec.get("strategy") or {}).get("signalApi") or {}).get("tokenSecretRef") or {}).get("name")
    if token:
        out.append(("spec.strategy.signalApi.tokenSecretRef", token))
    return out


def status_of(body: Mapping[str, Any], pod: dict[str, Any] | None, now: Any) -> dict[str, Any]:
    """The operator's part of the status from the session as read and its pod (pure)."""
    spec = body.get("spec") or {}
    name = body["metadata"]["name"]
    return status.session_status(
        body["metadata"].get("generation"),
        bool(spec.get("halted")),
        trading_name(name),
        pod_name(name),
        pod,
        body.get("status") or {},
        now,
        secrets_of(spec),
    )


def session_status(ctx: Context) -> dict[str, Any]:
    return status_of(ctx.body, ctx.seen.get("pod"), ctx.now)


SESSION = Kind(
    model=LiveTradingSession,
    steps=(
        reconciler.check_workload_policy,
        require_signal_token,
        resolve_policy,
        check_account,
        reconciler.apply_children(build, converge=True),
        observe_pod,
    ),
    status=session_status,
    rejected=status.rejected_status,
    waiting=status.waiting_status,
    phase_events={
        SessionPhase.TRADING.value: ("Normal", "Trading"),
        SessionPhase.HALTED.value: ("Warning", "Halted"),
        SessionPhase.FAILED.value: ("Warning", "Failed"),
        SessionPhase.RECONCILING.value: ("Normal", "Reconciling"),
    },
    is_terminal=lambda phase: SessionPhase(phase).is_terminal,
    accepted_message=lambda ctx: f"created StatefulSet {trading_name(ctx.name)}",
)


def indexes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The kopf indexes a session's reconcile reads."""
    return {k: kwargs.get(k) for k in ("session_accounts", "policy_users", "trading_pods")}


def reconcile_in_background(
    body: Mapping[str, Any], cfg: OperatorConfig, logger: Any, seen: Mapping[str, Any]
) -> None:
    """Reconcile a session outside its own handlers (a RiskPolicy changed): errors are logged, the
    session's own retries carry on."""
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        reconciler.reconcile(SESSION, body, cfg, logger, reconciler.write_status(SESSION, ns, name), seen)
    except (kopf.PermanentError, kopf.TemporaryError) as err:
        logger.info("session %s/%s: %s", ns, name, err)


# --------------------------------------------------------------------------- handlers


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL)
def reconcile_session(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any, **kwargs: Any
) -> None:
    """Create or converge the trading pod and its children (a changed spec patches them: the image,
    resources, policy, ``halted``), then reflect the pod into status."""
    cfg: OperatorConfig = memo["config"]
    reconciler.reconcile(SESSION, body, cfg, logger, patch.status.update, indexes(kwargs))


def refresh(body: Mapping[str, Any], pod: dict[str, Any] | None, logger: Any) -> None:
    """Recompute the status of an accepted session from its pod and the runtime's report; write if changed."""
    previous = body.get("status") or {}
    accepted = condition(previous, "Accepted")
    if accepted is None or accepted.get("status") != "True":
        return  # waiting or refused: the reconcile owns the status until it runs the pod
    new = status_of(body, pod, reconciler.now())
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    PHASES.set(KIND, f"{ns}/{name}", new["phase"])
    if unchanged(previous, new):
        return
    kube.patch_custom_status(PLURAL, ns, name, new)
    reconciler.announce(SESSION, body, previous, new, logger)


def _indexed_pod(body: Mapping[str, Any], trading_pods: Any) -> dict[str, Any] | None:
    """The session's pod from the index, if the StatefulSet recorded in status made it."""
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    uid = reconciler.recorded_uid(body.get("status"), "StatefulSet", trading_name(name))
    key = (ns, label_value(name))
    pods: Iterable[dict[str, Any]] = (
        trading_pods[key] if trading_pods is not None and key in trading_pods else ()
    )
    for pod in pods:
        if uid and _made_by(pod, {"metadata": {"uid": uid}}):
            return dict(pod)
    return None


@kopf.daemon(API_GROUP, API_VERSION, PLURAL, cancellation_timeout=5.0)
async def follow_session(
    body: kopf.Body, stopped: Any, logger: Any, trading_pods: Any = None, **_: Any
) -> None:
    """Keep the session's conditions on its pod and on what the runtime reports, within a second.

    One task per session, reading kopf's live body and the pods' index (no API reads); it writes
    only when the status changes. A daemon rather than event handlers: kopf logs (and posts as an
    Event) every handler run, which would double the API writes of each runtime report.
    """
    seen: tuple[Any, ...] | None = None
    checked = 0.0
    while not stopped:
        snapshot = dict(body)
        if not snapshot["metadata"].get("deletionTimestamp"):
            pod = _indexed_pod(snapshot, trading_pods)
            key = (
                snapshot["metadata"].get("resourceVersion"),
                (pod or {}).get("metadata", {}).get("resourceVersion"),
            )
            now = time.monotonic()
            # Unchanged inputs are recomputed every STALE_CHECK seconds: a silent runtime turns Degraded.
            if key != seen or now - checked >= STALE_CHECK:
                seen, checked = key, now
                try:
                    with observe_reconcile(KIND):
                        await asyncio.to_thread(refresh, snapshot, pod, logger)
                except Exception as err:  # the API hiccups: the next round tries again
                    logger.warning("refreshing the status failed: %s", err)
                    seen = None
        await stopped.wait(FOLLOW_SECONDS)


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL, optional=True)
def forget_session(body: kopf.Body, **_: Any) -> None:
    """Drop a deleted session from the phase gauge (children go with ownerReferences; the journal's
    volume stays unless spec.journal.deleteWithSession)."""
    reconciler.forget(SESSION, body)
