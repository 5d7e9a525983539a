"""kopf handlers of the Backtest kind and of the Jobs it owns."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import kopf

from kubequant.api.backtest import Backtest
from kubequant.manifests import InvalidManifest, parse_resource
from kubequant.operator import kube, status
from kubequant.operator.builders.backtest import build_backtest_config_map, build_backtest_job, job_name
from kubequant.operator.builders.common import kind_label
from kubequant.operator.config import OperatorConfig
from kubequant.operator.metrics import PHASES, observe_reconcile
from kubequant.version import API_GROUP, API_VERSION

KIND, PLURAL = "Backtest", "backtests"
LABEL = kind_label(KIND)
PHASE_EVENTS = {
    status.RUNNING: ("Normal", "Running"),
    status.SUCCEEDED: ("Normal", "Succeeded"),
    status.FAILED: ("Warning", "Failed"),
    status.SUSPENDED: ("Normal", "Suspended"),
}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse(body: kopf.Body) -> Backtest:
    doc = {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "metadata": dict(body["metadata"]),
        "spec": dict(body["spec"]),
    }
    try:
        resource = parse_resource(doc)
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


def _check_dependencies(bt: Backtest, cfg: OperatorConfig) -> tuple[str, str] | None:
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
    if cfg.check_image_pull_secrets:
        for ref in bt.spec.pod.image_pull_secrets or []:
            if not kube.secret_exists(ns, ref.name):
                return (
                    "ImagePullSecretNotFound",
                    f"Secret {ref.name} (spec.pod.imagePullSecrets) does not exist yet",
                )
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
        try:
            bt = _parse(body)
        except _InvalidSpec as err:
            new = status.rejected_status(generation, "InvalidSpec", str(err), previous, _now())
            patch.status.update(new)
            PHASES.set(KIND, key, status.FAILED)
            _announce(body, previous.get("phase"), new, logger)
            raise kopf.PermanentError(f"invalid spec: {err}") from err
        missing = _check_dependencies(bt, cfg)
        if missing is not None:
            reason, message = missing
            new = status.waiting_status(generation, reason, message, previous, _now())
            patch.status.update(new)
            PHASES.set(KIND, key, status.PENDING)
            if previous.get("conditions") != new["conditions"]:
                kopf.event(body, type="Warning", reason=reason, message=message)
            raise kopf.TemporaryError(message, delay=cfg.retry_delay_seconds)
        try:
            kube.create_or_adopt(build_backtest_config_map(bt))
            job = kube.create_or_adopt(build_backtest_job(bt, cfg))
        except kube.AdoptionConflict as err:
            new = status.rejected_status(generation, "NameConflict", str(err), previous, _now())
            patch.status.update(new)
            raise kopf.PermanentError(str(err)) from err
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
    bt = _parse(body)
    kube.patch_job_suspend(ns, job_name(bt), bool(new))
    logger.info("Backtest %s suspend=%s", bt_name, new)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL: kopf.PRESENT})
def backtest_job_changed(body: kopf.Body, type: str | None, logger: Any, **_: Any) -> None:
    """A Backtest's Job changed: recompute the owner's status from it and its pods."""
    owner = next((r for r in body["metadata"].get("ownerReferences") or [] if r.get("kind") == KIND), None)
    if owner is None or type == "DELETED":
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
