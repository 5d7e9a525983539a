"""One reconcile skeleton for every kind: parse, ordered steps, one pure status function, one write.

A kind is a :class:`Kind`: its API model, its ordered steps (check a dependency, build and apply
children, observe them) and one pure function from what the steps saw to the status. The skeleton
does what every kind shares: parsing into the API model (an invalid spec fails for good), the
workload policy of a spec's pod, refusals (``Rejected``: permanent, with a reason) and waits
(``Waiting``: retried after ``KUBEQUANT_RETRY_DELAY_SECONDS``), create-or-adopt of children with
their uids recorded in status, the phase gauge, an Event per phase change and per condition transition, and writing status only
when it changed. KubeRay's reconcilers run ordered steps and compute status once the same way.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

from kubequant.api.resource import Resource
from kubequant.manifests import InvalidManifest, parse_resource
from kubequant.operator import kube
from kubequant.operator.builders.common import controller_reference, with_spec_hash
from kubequant.operator.builders.events import build_event, status_digest
from kubequant.operator.builders.policy import policy_violations
from kubequant.operator.config import OperatorConfig
from kubequant.operator.metrics import DATA_QUALITY, PHASES, RESULTS, observe_reconcile
from kubequant.operator.status.conditions import transition_events, unchanged

# Longest refusal written to status (status.message allows 4096 characters; a crafted spec can
# break hundreds of rules at once).
MAX_REJECTION = 3000
Logger = logging.Logger | logging.LoggerAdapter[Any]
log = logging.getLogger(__name__)


class Rejected(Exception):
    """The object will not run as it is: permanent until its spec changes."""

    def __init__(self, reason: str, message: str) -> None:
        if len(message) > MAX_REJECTION:  # status.message has a schema limit: a longer patch would fail
            message = message[: MAX_REJECTION - 1] + "…"
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


class Waiting(Exception):
    """A dependency is missing (a volume, a RiskPolicy, an account in use): retried later."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


@dataclass
class Context:
    """One reconcile of one object: what was read, and what the steps made and saw."""

    body: Mapping[str, Any]
    cfg: OperatorConfig
    now: dt.datetime
    resource: Any = None  # the parsed API model (the kind's Resource subclass)
    children: dict[str, dict[str, Any]] = field(default_factory=dict)  # applied children, by kind
    refs: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> uid
    seen: dict[str, Any] = field(default_factory=dict)  # observations (pods, indexes, ...)

    @property
    def previous(self) -> dict[str, Any]:
        """The status as read."""
        return dict(self.body.get("status") or {})

    @property
    def generation(self) -> int | None:
        return self.body["metadata"].get("generation")  # type: ignore[no-any-return]

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"].get("namespace") or "default")

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def recorded_uid(self, kind: str, name: str) -> str | None:
        """The uid the operator created the child ``kind``/``name`` with, from status."""
        return recorded_uid(self.previous, kind, name)


Step = Callable[[Context], None]
StatusFn = Callable[[Context], dict[str, Any]]
RefusalFn = Callable[[int | None, str, str, dict[str, Any] | None, dt.datetime], dict[str, Any]]


@dataclass(frozen=True)
class Kind:
    """What the skeleton needs to know about a kind."""

    model: type[Resource]
    steps: Sequence[Step]
    status: StatusFn  # pure: the status from the context the steps filled in
    rejected: RefusalFn  # the status of an object refused for good
    waiting: RefusalFn  # the status of an object waiting for a dependency
    phase_events: Mapping[str, tuple[str, str]]  # phase -> (Event type, reason)
    is_terminal: Callable[[str], bool] = lambda phase: False
    accepted_message: Callable[[Context], str] | None = None  # the first "Accepted" Event

    @property
    def name(self) -> str:
        return self.model.__crd__.kind

    @property
    def plural(self) -> str:
        return self.model.__crd__.plural


def now() -> dt.datetime:
    """The time a reconcile sees."""
    return dt.datetime.now(dt.UTC)


def recorded_uid(status: Mapping[str, Any] | None, kind: str, name: str) -> str | None:
    """The uid recorded in ``status.children`` for the child ``kind``/``name``."""
    for ref in (status or {}).get("children") or []:
        if ref.get("kind") == kind and ref.get("name") == name:
            return ref.get("uid")  # type: ignore[no-any-return]
    return None


def owned_child(
    child: Mapping[str, Any], owner_kind: str, child_name: Callable[[str], str]
) -> dict[str, Any] | None:
    """The controller reference of a child as the operator makes it (its deterministic name), or None."""
    owner = controller_reference(dict(child), owner_kind)
    if owner is None or child["metadata"]["name"] != child_name(owner["name"]):
        return None
    return owner


def speaks_for(
    owner: Mapping[str, Any] | None, child: Mapping[str, Any], owner_ref: Mapping[str, Any]
) -> bool:
    """Whether ``child`` may change ``owner``'s status: the owner is the one referenced (its uid) and
    the child is the one the operator created (the uid recorded in the owner's status)."""
    if owner is None or owner["metadata"].get("uid") != owner_ref.get("uid"):
        return False
    meta = child["metadata"]
    recorded = recorded_uid(owner.get("status"), child.get("kind") or "", meta["name"])
    return recorded is not None and recorded == meta.get("uid")


def parse(kind: Kind, body: Mapping[str, Any], cfg: OperatorConfig) -> Resource:
    """The object as its API model; an invalid spec is Rejected (InvalidSpec)."""
    doc = {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "metadata": dict(body["metadata"]),
        "spec": dict(body.get("spec") or {}),
    }
    try:
        resource = parse_resource(doc, cfg.allowed_modules())
    except InvalidManifest as err:
        raise Rejected("InvalidSpec", "; ".join(e.one_line() for e in err.errors)) from err
    assert isinstance(resource, kind.model)
    return resource


# --------------------------------------------------------------------------- shared steps


def check_workload_policy(ctx: Context) -> None:
    """The admin's workload policy over the spec's pod: a violation is Rejected (PolicyViolation)."""
    violations = policy_violations(ctx.resource, ctx.cfg.workload_policy)
    if violations:
        raise Rejected("PolicyViolation", "; ".join(v.one_line() for v in violations))


def apply_children(build: Callable[[Context], Sequence[dict[str, Any]]], *, converge: bool = False) -> Step:
    """A step that builds children (pure) and creates or adopts them, in order.

    ``converge``: long-lived children carry the hash of the built object and are patched when it
    changes. A builder that raises fails the object for good (the same spec would raise again);
    a child of another owner, or a replaced one, is a NameConflict; a 4xx on create is the
    server's reason (a full ResourceQuota is waited for).
    """

    def step(ctx: Context) -> None:
        try:
            built = [with_spec_hash(o) if converge else o for o in build(ctx)]
        except (Rejected, Waiting):
            raise
        except Exception as err:  # builders are pure: the same spec would fail the same way forever
            raise Rejected("InvalidSpec", f"cannot build the children: {type(err).__name__}: {err}") from err
        for obj in built:
            kind, name = obj["kind"], obj["metadata"]["name"]
            try:
                applied = kube.apply(obj, converge=converge, recorded_uid=ctx.recorded_uid(kind, name))
            except kube.AdoptionConflict as err:
                raise Rejected("NameConflict", str(err)) from err
            except kube.CreateRefused as err:
                if err.retriable:
                    raise Waiting(err.reason, str(err)) from err
                raise Rejected(err.reason, str(err)) from err
            ctx.children[kind] = applied
            uid = (applied.get("metadata") or {}).get("uid")
            if uid:
                ctx.refs[(kind, name)] = uid

    return step


# --------------------------------------------------------------------------- the runner


def post_event(body: Mapping[str, Any], *, type: str, reason: str, message: str, key: str) -> bool:
    """Post an Event about ``body`` once per ``key`` (builders.events: a repeat is refused by name).

    Whether it was posted now. An Event is auxiliary: a failure to post it is logged, never raised,
    so it cannot fail or retry the reconcile that announces (which may lose an Event, never repeat it).
    """
    # In a pod the hostname is the pod's name: which replica posted it.
    event = build_event(
        body, type=type, reason=reason, message=message, key=key, now=now(), instance=socket.gethostname()
    )
    try:
        return kube.create_event(event)
    except Exception as err:
        log.warning("posting the Event %s (%s) failed: %s", event["metadata"]["name"], reason, _brief(err))
        return False


def announce(
    kind: Kind, body: Any, previous: Mapping[str, Any], new: Mapping[str, Any], logger: Logger
) -> None:
    """An Event and a log line when the phase changes, and an Event per condition transition (a
    session Degraded while still Trading changes no phase).

    Each Event is keyed by the status it leaves: a reconcile retried because its status write was
    lost, or a status recomputed from a body that lags the write, announces nothing twice."""
    left = status_digest(previous)
    old_phase = previous.get("phase")
    phase = new.get("phase")
    if phase and phase != old_phase and phase in kind.phase_events:
        type_, reason = kind.phase_events[phase]
        post_event(
            body, type=type_, reason=reason, message=new.get("message", ""), key=f"phase {phase} {left}"
        )
        logger.info("phase %s → %s: %s", old_phase, phase, new.get("message", ""))
    if "conditions" in new:
        for type_, reason, message in transition_events(previous.get("conditions"), new["conditions"]):
            post_event(body, type=type_, reason=reason, message=message, key=f"conditions {message} {left}")


def _with_children(ctx: Context, new: dict[str, Any]) -> dict[str, Any]:
    if not ctx.refs:
        return new
    merged = {(r["kind"], r["name"]): r["uid"] for r in ctx.previous.get("children") or []}
    merged.update(ctx.refs)
    children = [{"kind": k, "name": n, "uid": u} for (k, n), u in sorted(merged.items())]
    return {**new, "children": children}


def reconcile(
    kind: Kind,
    body: Mapping[str, Any],
    cfg: OperatorConfig,
    logger: Logger,
    write: Callable[[dict[str, Any]], None],
    seen: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Run ``kind``'s steps on ``body`` and write its status when it changed; the status written, or None.

    A refusal writes the refused status and raises kopf.PermanentError; a wait writes the waiting
    status and raises kopf.TemporaryError with the configured delay. ``seen``: what the handler
    already knows (kopf's indexes).
    """
    ctx = Context(body=body, cfg=cfg, now=now(), seen=dict(seen or {}))
    previous = ctx.previous
    old_phase = previous.get("phase")
    if old_phase and kind.is_terminal(old_phase) and previous.get("observedGeneration") == ctx.generation:
        # Finished or refused for good: nothing changes it until the spec does. A restarted
        # operator still serves its phase and results.
        PHASES.set(kind.name, ctx.key, old_phase)
        RESULTS.observe(kind.name, ctx.namespace, ctx.name, previous)
        DATA_QUALITY.observe(kind.name, ctx.namespace, ctx.name, previous)
        return None
    with observe_reconcile(kind.name):
        try:
            ctx.resource = parse(kind, body, cfg)
            for step in kind.steps:
                step(ctx)
            new = _with_children(ctx, kind.status(ctx))
        except Rejected as err:
            new = _with_children(
                ctx, kind.rejected(ctx.generation, err.reason, err.message, previous, ctx.now)
            )
            _finish(kind, ctx, new, write, logger)
            raise kopf.PermanentError(str(err)) from err
        except Waiting as err:
            new = _with_children(
                ctx, kind.waiting(ctx.generation, err.reason, err.message, previous, ctx.now)
            )
            _finish(kind, ctx, new, write, logger)  # Accepted False with the reason is an Event there
            raise kopf.TemporaryError(str(err), delay=cfg.retry_delay_seconds) from err
        except Exception as err:
            # Throttled (API Priority and Fairness), a restarting API server, a cut connection: retried
            # in about a second rather than after kopf's 60 s for an unexpected error.
            if (delay := kube.transient_delay(err)) is None:
                raise
            logger.warning("the API server did not serve a call (%s); retrying in %.0f s", _brief(err), delay)
            raise kopf.TemporaryError(_brief(err), delay=delay) from err
        _finish(kind, ctx, new, write, logger)
        if old_phase is None and kind.accepted_message is not None:
            # Once per object: a retry whose first status write was lost posts it under the same name.
            post_event(
                body, type="Normal", reason="Accepted", message=kind.accepted_message(ctx), key="accepted"
            )
        return new


def _brief(err: BaseException) -> str:
    """An API error in one line: its status and reason, without the response headers the client prints."""
    status = getattr(err, "status", None)
    if status:
        return f"{status} {getattr(err, 'reason', '') or ''}".strip()
    return f"{type(err).__name__}: {err}"[:300]


def _finish(
    kind: Kind, ctx: Context, new: dict[str, Any], write: Callable[[dict[str, Any]], None], logger: Logger
) -> bool:
    """Write ``new`` if it changes anything, keep the gauge, announce a phase change; whether it changed."""
    PHASES.set(kind.name, ctx.key, new.get("phase") or "Unknown")
    RESULTS.observe(kind.name, ctx.namespace, ctx.name, {**ctx.previous, **new})
    DATA_QUALITY.observe(kind.name, ctx.namespace, ctx.name, {**ctx.previous, **new})
    if unchanged(ctx.previous, new):
        return False
    write(new)
    announce(kind, ctx.body, ctx.previous, new, logger)
    return True


def write_status(kind: Kind, namespace: str, name: str) -> Callable[[dict[str, Any]], None]:
    """A writer for handlers outside kopf's change handlers: a merge patch of the status subresource."""
    return lambda new: kube.patch_custom_status(kind.plural, namespace, name, new)


def forget(kind: Kind, body: Mapping[str, Any]) -> None:
    """Drop a deleted object from the phase and results gauges."""
    namespace, name = str(body["metadata"].get("namespace")), str(body["metadata"]["name"])
    PHASES.forget(kind.name, f"{namespace}/{name}")
    RESULTS.forget(kind.name, namespace, name)
    DATA_QUALITY.forget(kind.name, namespace, name)
