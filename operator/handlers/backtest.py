"""kopf handlers of the Backtest kind and of the Jobs it owns: ordered steps and one status function."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from kubequant.api.backtest import Backtest, BacktestPhase
from kubequant.api.training import TrainingJob
from kubequant.operator import kube, reconciler
from kubequant.operator.builders.backtest import (
    build_backtest_job,
    job_name_of,
    model_volume_of,
)
from kubequant.operator.builders.common import kind_label
from kubequant.operator.config import OperatorConfig
from kubequant.operator.metrics import PHASES, observe_reconcile
from kubequant.operator.rbac import Access, owner_kind
from kubequant.operator.reconciler import Context, Kind, Rejected, Waiting
from kubequant.operator.status import backtest as status
from kubequant.operator.status.conditions import condition, unchanged
from kubequant.version import API_GROUP, API_VERSION

KIND, PLURAL = Backtest.__crd__.kind, Backtest.__crd__.plural
LABEL = kind_label(KIND)
TRAININGJOBS = TrainingJob.__crd__.plural

# What these handlers call, and nothing more (tests/unit/test_rbac.py checks it against the recorded
# calls, kopf's registry and the chart). No Secrets: pull secrets go into the pod spec by name.
RBAC: tuple[Access, ...] = (
    *owner_kind(API_GROUP, PLURAL, "Backtests"),
    Access(API_GROUP, PLURAL, ("get",), "a Job event reads the Backtest that owns the Job"),
    Access(API_GROUP, f"{PLURAL}/status", ("patch",), "a Job event writes the owner's status"),
    Access("batch", "jobs", ("create", "get"), "create the Job, or read it back to adopt it"),
    Access("batch", "jobs", ("patch",), "pass spec.suspend on to the Job"),
    Access("batch", "jobs", ("list", "watch"), "kopf watches the Backtests' Jobs", source="kopf"),
    Access("", "pods", ("list",), "the Job's pods: their termination messages carry the results"),
    Access("", "persistentvolumeclaims", ("get",), "wait until the data and artifact volumes exist"),
    Access(API_GROUP, TRAININGJOBS, ("get",), "signal.modelRef: the TrainingJob's phase and modelUri"),
)


# --------------------------------------------------------------------------- indexes


@kopf.index(API_GROUP, API_VERSION, PLURAL)
def backtests_by_model(namespace: str, name: str, spec: Any, **_: Any) -> Any:
    """Backtests by (namespace, TrainingJob of signal.modelRef): whom to start when a training finishes."""
    ref = (((spec or {}).get("signal") or {}).get("modelRef") or {}).get("name")
    return {(namespace, ref): name} if ref else None


# --------------------------------------------------------------------------- steps


def check_volumes(ctx: Context) -> None:
    """The data and artifact volumes the spec names must exist (Waiting until they do)."""
    bt: Backtest = ctx.resource
    volume = bt.spec.data.volume
    if volume is not None and not kube.pvc_exists(ctx.namespace, volume.claim_name):
        raise Waiting(
            "DataVolumeNotFound",
            f"PersistentVolumeClaim {volume.claim_name} (spec.data.volume) does not exist yet",
        )
    out = bt.spec.output.artifacts.volume
    if out is not None and not kube.pvc_exists(ctx.namespace, out.claim_name):
        raise Waiting(
            "ArtifactVolumeNotFound",
            f"PersistentVolumeClaim {out.claim_name} (spec.output.artifacts.volume) does not exist yet",
        )
    # Image pull secrets are not checked: that would need reading Secrets, and would tell a
    # Backtest's author whether a Secret name exists. The kubelet reports a failed pull on the pod.


def resolve_model(ctx: Context) -> None:
    """signal.modelRef: wait (ModelNotReady) until the TrainingJob succeeded, fail (ModelFailed) when it
    failed, and mount its artifact from the volume its status.modelUri names.

    The wait is a Waiting, retried every KUBEQUANT_RETRY_DELAY_SECONDS by kopf; when a TrainingJob
    finishes, the TrainingJob handlers reconcile its waiting Backtests at once (handlers/training.py).
    """
    bt: Backtest = ctx.resource
    ref = bt.spec.signal.model_ref
    if ref is None:
        return
    where = f"TrainingJob {ref.name} (spec.signal.modelRef)"
    tj = kube.read_custom(TRAININGJOBS, ctx.namespace, ref.name)
    if tj is None:
        raise Waiting("ModelNotReady", f"{where} does not exist yet; the backtest starts when it succeeds")
    st = tj.get("status") or {}
    phase = st.get("phase")
    if phase == "Failed":
        failed = condition(st, "Failed") or {}
        reason = failed.get("reason") or "Failed"
        raise Rejected(
            "ModelFailed",
            f"{where} failed ({reason}): {failed.get('message') or st.get('message') or 'no message'}; fix "
            "the training and create the Backtest again, or name another TrainingJob",
        )
    if phase != "Succeeded":
        raise Waiting(
            "ModelNotReady", f"{where} is {phase or 'not started yet'}; the backtest starts when it succeeds"
        )
    uri = st.get("modelUri")
    model = model_volume_of(uri)
    if model is None:
        raise Rejected(
            "ModelNotReachable",
            f"{where} succeeded but its model is at {uri or 'no recorded location'}, which a Backtest pod "
            "cannot mount; train with spec.output.artifacts.volume (a PersistentVolumeClaim) so the "
            "model is kept on a volume",
        )
    ctx.seen["model"] = model


def build(ctx: Context) -> list[dict[str, Any]]:
    """The Job, its pod carrying the resolved manifest (a pure builder)."""
    model = ctx.seen.get("model")
    job = (
        build_backtest_job(ctx.resource, ctx.cfg, model)
        if model
        else build_backtest_job(ctx.resource, ctx.cfg)
    )
    return [job]


def job_has_news(job: Mapping[str, Any] | None) -> bool:
    """Whether a Job's status says anything yet: a Job just created (empty status) has no pods and no
    outcome, and the Job controller's first status write (a pod made, or the Job suspended) brings a
    Job event of its own. Skipping it saves a pod list and a status read per new Backtest."""
    return bool(job and (job.get("status") or {}))


def observe_pods(ctx: Context) -> None:
    """The Job's pods, at least as recent as the Job (their termination messages carry the results)."""
    job = ctx.children.get("Job")
    if job is not None and job_has_news(job):
        meta = job["metadata"]
        ctx.seen["pods"] = kube.job_pods(ctx.namespace, meta["name"], meta.get("resourceVersion"))


def backtest_status(ctx: Context) -> dict[str, Any]:
    """The status from the Job and its pods (pure)."""
    job = ctx.children.get("Job")
    name = job["metadata"]["name"] if job else job_name_of(ctx.name)
    return status.backtest_status(ctx.generation, name, job, ctx.seen.get("pods", []), ctx.previous, ctx.now)


BACKTEST = Kind(
    model=Backtest,
    steps=(
        reconciler.check_workload_policy,
        check_volumes,
        resolve_model,
        reconciler.apply_children(build),
        observe_pods,
    ),
    status=backtest_status,
    rejected=status.rejected_status,
    waiting=status.waiting_status,
    phase_events={
        status.RUNNING: ("Normal", "Running"),
        status.SUCCEEDED: ("Normal", "Succeeded"),
        status.FAILED: ("Warning", "Failed"),
        status.SUSPENDED: ("Normal", "Suspended"),
    },
    is_terminal=lambda phase: BacktestPhase(phase).is_terminal,
    accepted_message=lambda ctx: f"created Job {job_name_of(ctx.name)}",
)


# --------------------------------------------------------------------------- handlers


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
def reconcile_backtest(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Create (or adopt) the Job, then reflect its state into status."""
    cfg: OperatorConfig = memo["config"]
    reconciler.reconcile(BACKTEST, body, cfg, logger, patch.status.update)


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

    Only the Job the operator made counts: the Backtest's controller reference, the deterministic
    name, and the uid recorded in the Backtest's status when the operator created it. A look-alike
    that anyone able to create Jobs could make (the label, the owner's uid; or the operator's Job
    deleted and recreated under its name) is ignored, so it cannot write results onto a Backtest.
    """
    owner = reconciler.owned_child(body, KIND, job_name_of)
    if owner is None or type == "DELETED" or not job_has_news(body):
        return
    ns, name, job = body["metadata"]["namespace"], owner["name"], {**dict(body), "kind": "Job"}
    with observe_reconcile(KIND):
        current = kube.read_custom(PLURAL, ns, name)
        if current is None or not reconciler.speaks_for(current, job, owner):
            return
        previous = current.get("status") or {}
        if (
            previous.get("phase")
            and BacktestPhase(previous["phase"]).is_terminal
            and previous.get("completionTime")
        ):
            return  # finished runs keep their outcome, even when a TTL removes the Job
        job_name_ = job["metadata"]["name"]
        now = reconciler.now()
        pods = kube.job_pods(ns, job_name_, job["metadata"].get("resourceVersion"))
        new = status.backtest_status(
            current["metadata"].get("generation"), job_name_, job, pods, previous, now
        )
        if unchanged(previous, new):
            return
        kube.patch_custom_status(PLURAL, ns, name, new)
        PHASES.set(KIND, f"{ns}/{name}", new["phase"])
        # The creation handler announces the first phase; a Job event racing it must not announce it twice.
        if previous.get("phase") is not None:
            reconciler.announce(BACKTEST, current, previous, new, logger)


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL, optional=True)
def forget_backtest(body: kopf.Body, **_: Any) -> None:
    """Drop a deleted Backtest from the phase gauge (children go with ownerReferences; no finalizer)."""
    reconciler.forget(BACKTEST, body)
