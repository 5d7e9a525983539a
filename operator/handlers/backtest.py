"""kopf handlers of the Backtest kind and of the Jobs it owns."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import kopf

from kubequant.api.backtest import Backtest
from kubequant.manifests import InvalidManifest, parse_resource
from kubequant.operator import kube, status
from kubequant.operator.builders.backtest import (
    build_backtest_config_map,
    build_backtest_job,
    job_name_of,
)
from kubequant.operator.builders.common import controller_reference, kind_label
from kubequant.operator.builders.policy import policy_violations
from kubequant.operator.config import OperatorConfig
from kubequant.operator.metrics import PHASES, observe_reconcile
from kubequant.operator.rbac import Access
from kubequant.version import API_GROUP, API_VERSION

KIND, PLURAL = "Backtest", "backtests"
# Longest refusal written to status (status.message allows 4096 characters; a crafted spec can
# break hundreds of rules at once).
MAX_REJECTION = 3000
LABEL = kind_label(KIND)

# What these handlers call, and nothing more (tests/unit/test_rbac.py checks it against the recorded
# calls, kopf's registry and the chart). No Secrets: pull secrets go into the pod spec by name.
RBAC: tuple[Access, ...] = (
    Access(API_GROUP, PLURAL, ("list", "watch"), "kopf watches Backtests", source="kopf"),
    Access(API_GROUP, PLURAL, ("patch",), "kopf keeps progress and diff-base annotations", source="kopf"),
    Access(API_GROUP, f"{PLURAL}/status", ("patch",), "kopf writes the status a handler sets", source="kopf"),
    Access(API_GROUP, PLURAL, ("get",), "a Job event reads the Backtest that owns the Job"),
    Access(API_GROUP, f"{PLURAL}/status", ("patch",), "a Job event writes the owner's status"),
    Access(
        API_GROUP,
        f"{PLURAL}/finalizers",
        ("update",),
        "children set blockOwnerDeletion, which OwnerReferencesPermissionEnforcement allows only "
        "with update on the owner's finalizers",
        source="admission",
    ),
    Access("batch", "jobs", ("create", "get"), "create the Job, or read it back to adopt it"),
    Access("batch", "jobs", ("patch",), "pass spec.suspend on to the Job"),
    Access("batch", "jobs", ("list", "watch"), "kopf watches the Backtests' Jobs", source="kopf"),
    Access("", "configmaps", ("create", "get"), "create the ConfigMap, or read it back to adopt it"),
    Access("", "pods", ("list",), "the Job's pods: their termination messages carry the results"),
    Access("", "persistentvolumeclaims", ("get",), "wait until the data and artifact volumes exist"),
)
PHASE_EVENTS = {
    status.RUNNING: ("Normal", "Running"),
    status.SUCCEEDED: ("Normal", "Succeeded"),
    status.FAILED: ("Warning", "Failed"),
    status.SUSPENDED: ("Normal", "Suspended"),
}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse(body: kopf.Body, cfg: OperatorConfig) -> Backtest:
    doc = {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "metadata": dict(body["metadata"]),
        "spec": dict(body["spec"]),
    }
    try:
        resource = parse_resource(doc, cfg.allowed_modules())
    except InvalidManifest as err:
        raise _InvalidSpec(err) from err
    assert isinstance(resource, Backtest)
    return resource


class _InvalidSpec(Exception):
    def __init__(self, err: InvalidManifest) -> None:
        super().__init__("; ".join(e.one_line() for e in err.errors))


def _announce(
    body: Any, old_phase: str | None, new: dict[str, Any], logger: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    phase = new.get("phase")
    if phase and phase != old_phase and phase in PHASE_EVENTS:
        kind, reason = PHASE_EVENTS[phase]
        kopf.event(body, type=kind, reason=reason, message=new.get("message", ""))
        logger.info("phase %s → %s: %s", old_phase, phase, new.get("message", ""))


def _check_dependencies(bt: Backtest) -> tuple[str, str] | None:
    """A missing dependency as (reason, message), or None."""
    ns = bt.metadata.namespace or "default"
    volume = bt.spec.data.volume
    if volume is not None and not kube.pvc_exists(ns, volume.claim_name):
        return (
            "DataVolumeNotFound",
            f"PersistentVolumeClaim {volume.claim_name} (spec.data.volume) does not exist yet",
        )
    out = bt.spec.output.artifacts.volume
    if out is not None and not kube.pvc_exists(ns, out.claim_name):
        return (
            "ArtifactVolumeNotFound",
            f"PersistentVolumeClaim {out.claim_name} (spec.output.artifacts.volume) does not exist yet",
        )
    # Image pull secrets are not checked: that would need reading Secrets, and would tell a
    # Backtest's author whether a Secret name exists. The kubelet reports a failed pull on the pod.
    return None


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
def reconcile_backtest(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Create (or adopt) the ConfigMap and the Job, then reflect the Job's state into status."""
    cfg: OperatorConfig = memo["config"]
    generation = body["metadata"].get("generation")
    previous = dict(body.get("status") or {})
    key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
    with observe_reconcile(KIND):

        def reject(reason: str, message: str) -> kopf.PermanentError:
            """Failed for good, with the reason in status: retrying cannot change the outcome."""
            if len(message) > MAX_REJECTION:  # status.message has a schema limit: a longer patch would fail
                message = message[: MAX_REJECTION - 1] + "…"
            new = status.rejected_status(generation, reason, message, previous, _now())
            patch.status.update(new)
            PHASES.set(KIND, key, status.FAILED)
            _announce(body, previous.get("phase"), new, logger)
            return kopf.PermanentError(f"{reason}: {message}")

        try:
            bt = _parse(body, cfg)
        except _InvalidSpec as err:
            raise reject("InvalidSpec", str(err)) from err
        violations = policy_violations(bt, cfg.workload_policy)
        if violations:
            raise reject("PolicyViolation", "; ".join(v.one_line() for v in violations))
        missing = _check_dependencies(bt)
        if missing is not None:
            reason, message = missing
            new = status.waiting_status(generation, reason, message, previous, _now())
            patch.status.update(new)
            PHASES.set(KIND, key, status.PENDING)
            if previous.get("conditions") != new["conditions"]:
                kopf.event(body, type="Warning", reason=reason, message=message)
            raise kopf.TemporaryError(message, delay=cfg.retry_delay_seconds)
        try:
            children = [build_backtest_config_map(bt), build_backtest_job(bt, cfg)]
        except Exception as err:  # builders are pure: the same spec would fail the same way forever
            raise reject("InvalidSpec", f"cannot build the Job: {type(err).__name__}: {err}") from err
        try:
            kube.create_or_adopt(children[0])
            job = kube.create_or_adopt(children[1])
        except kube.AdoptionConflict as err:
            raise reject("NameConflict", str(err)) from err
        except kube.CreateRefused as err:
            if err.retriable:
                new = status.waiting_status(generation, err.reason, str(err), previous, _now())
                patch.status.update(new)
                PHASES.set(KIND, key, status.PENDING)
                if previous.get("conditions") != new["conditions"]:
                    kopf.event(body, type="Warning", reason=err.reason, message=str(err))
                raise kopf.TemporaryError(str(err), delay=cfg.retry_delay_seconds) from err
            raise reject(err.reason, str(err)) from err
        name = job["metadata"]["name"]
        new = status.backtest_status(
            generation,
            name,
            job,
            kube.job_pods(bt.metadata.namespace or "default", name, job["metadata"].get("resourceVersion")),
            previous,
            _now(),
        )
        patch.status.update(new)
        PHASES.set(KIND, key, new["phase"])
        if previous.get("phase") is None:
            kopf.event(body, type="Normal", reason="Accepted", message=f"created Job {name}")
        _announce(body, previous.get("phase"), new, logger)


@kopf.on.update(API_GROUP, API_VERSION, PLURAL, field="spec.suspend")
def suspend_backtest(body: kopf.Body, new: Any, old: Any, logger: Any, **_: Any) -> None:
    """spec.suspend is the one mutable field: pass it on to the Job."""
    bt_name = body["metadata"]["name"]
    ns = body["metadata"]["namespace"]
    # No parse: an invalid or refused spec has no Job, and a toggle must not retry forever over it.
    if kube.patch_job_suspend(ns, job_name_of(bt_name), bool(new)):
        logger.info("Backtest %s suspend=%s", bt_name, new)
    else:
        logger.info("Backtest %s suspend=%s: it has no Job (its spec was refused)", bt_name, new)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL: kopf.PRESENT})
def backtest_job_changed(body: kopf.Body, type: str | None, logger: Any, **_: Any) -> None:
    """A Backtest's Job changed: recompute the owner's status from it and its pods.

    Only the Job the operator made counts: the Backtest's controller reference and the deterministic
    name. A look-alike that anyone able to create Jobs could make (the label, the owner's uid) is
    ignored, so it cannot write results onto someone else's Backtest.
    """
    owner = controller_reference(body, KIND)
    if owner is None or type == "DELETED" or body["metadata"]["name"] != job_name_of(owner["name"]):
        return
    ns, name, job = body["metadata"]["namespace"], owner["name"], dict(body)
    with observe_reconcile(KIND):
        current = kube.read_custom(PLURAL, ns, name)
        if current is None or current["metadata"].get("uid") != owner.get("uid"):
            return
        previous = current.get("status") or {}
        if previous.get("phase") in (status.SUCCEEDED, status.FAILED) and previous.get("completionTime"):
            return  # finished runs keep their outcome, even when a TTL removes the Job
        job_name_ = job["metadata"]["name"]
        new = status.backtest_status(
            current["metadata"].get("generation"),
            job_name_,
            job,
            kube.job_pods(ns, job_name_, job["metadata"].get("resourceVersion")),
            previous,
            _now(),
        )
        if {k: previous.get(k) for k in new} == new:
            return
        kube.patch_custom_status(PLURAL, ns, name, new)
        PHASES.set(KIND, f"{ns}/{name}", new["phase"])
        # The creation handler announces the first phase; a Job event racing it must not announce it twice.
        if previous.get("phase") is not None:
            _announce(current, previous.get("phase"), new, logger)


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL, optional=True)
def forget_backtest(body: kopf.Body, **_: Any) -> None:
    """Drop a deleted Backtest from the phase gauge (children go with ownerReferences; no finalizer)."""
    PHASES.forget(KIND, f"{body['metadata']['namespace']}/{body['metadata']['name']}")
