"""kopf handlers of the TrainingJob kind, of the KubeRay RayJobs it owns and of their submitter pods.

The operator makes a ConfigMap and a RayJob; KubeRay makes the RayCluster and the submitter Job
from the RayJob. The TrainingJob's status follows the RayJob (its events) and the submitter pod
(its termination message carries the results; its events tell when it is there to read).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any, cast

import kopf

from kubequant.api.training import TrainingJob, TrainingPhase
from kubequant.operator import kube, reconciler
from kubequant.operator.builders.common import kind_label
from kubequant.operator.builders.training import (
    COMPONENT,
    build_training_children,
    model_uri,
    rayjob_name_of,
)
from kubequant.operator.config import OperatorConfig
from kubequant.operator.handlers import backtest as backtests
from kubequant.operator.metrics import PHASES, observe_reconcile
from kubequant.operator.rbac import Access, owner_kind
from kubequant.operator.reconciler import Context, Kind, Rejected, Waiting
from kubequant.operator.status import training as status
from kubequant.operator.status.conditions import condition, unchanged
from kubequant.version import API_GROUP, API_VERSION

KIND, PLURAL = TrainingJob.__crd__.kind, TrainingJob.__crd__.plural
LABEL = kind_label(KIND)
SUBMITTER = f"{COMPONENT}-submitter"
# The RayJob's deployment states after which the submitter's termination message is worth reading.
FINISHED = ("Complete", "Failed")
# A RayJob event and a submitter pod event of one TrainingJob arrive together (kopf runs them in
# parallel): one read-compute-write at a time per TrainingJob, so a transition is announced once.
_REFRESHING: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)

RBAC: tuple[Access, ...] = (
    *owner_kind(API_GROUP, PLURAL, "TrainingJobs"),
    Access(API_GROUP, PLURAL, ("get",), "a RayJob or submitter pod event reads the TrainingJob"),
    Access(API_GROUP, f"{PLURAL}/status", ("patch",), "a RayJob or submitter pod event writes the status"),
    Access("ray.io", "rayjobs", ("create", "get"), "create the RayJob, or read it back to adopt it"),
    Access("ray.io", "rayjobs", ("patch",), "pass spec.suspend on to the RayJob"),
    Access("ray.io", "rayjobs", ("list", "watch"), "kopf watches the TrainingJobs' RayJobs", source="kopf"),
    Access("", "configmaps", ("create", "get"), "create the ConfigMap, or read it back to adopt it"),
    Access("", "pods", ("list",), "the submitter's pods: their termination messages carry the results"),
    Access(
        "",
        "pods",
        ("list", "watch"),
        "kopf watches submitter pods (a finished one carries the results)",
        source="kopf",
    ),
    Access("", "persistentvolumeclaims", ("get",), "wait until the data and artifact volumes exist"),
    Access(
        API_GROUP,
        "backtests",
        ("get",),
        "a finished TrainingJob reads the Backtests waiting for its model (signal.modelRef)",
    ),
    Access(API_GROUP, "backtests/status", ("patch",), "and reconciles them at once: their status"),
)


# --------------------------------------------------------------------------- steps


def check_layout(ctx: Context) -> None:
    """Several Ray nodes need shared storage for the artifact and checkpoints: refuse them without a volume."""
    tj: TrainingJob = ctx.resource
    replicas = tj.spec.ray.workers.replicas
    if replicas > 1 and tj.spec.output.artifacts.volume is None:
        raise Rejected(
            "ArtifactVolumeRequired",
            f"spec.ray.workers.replicas is {replicas}: a multi-node Ray cluster needs shared storage for "
            "the model artifact and checkpoints; set spec.output.artifacts.volume to a ReadWriteMany "
            "PersistentVolumeClaim, or use one worker",
        )


def check_volumes(ctx: Context) -> None:
    """The data and artifact volumes the spec names must exist (Waiting until they do)."""
    tj: TrainingJob = ctx.resource
    volume = tj.spec.data.volume
    if volume is not None and not kube.pvc_exists(ctx.namespace, volume.claim_name):
        raise Waiting(
            "DataVolumeNotFound",
            f"PersistentVolumeClaim {volume.claim_name} (spec.data.volume) does not exist yet",
        )
    out = tj.spec.output.artifacts.volume
    if out is not None and not kube.pvc_exists(ctx.namespace, out.claim_name):
        raise Waiting(
            "ArtifactVolumeNotFound",
            f"PersistentVolumeClaim {out.claim_name} (spec.output.artifacts.volume) does not exist yet",
        )


def build(ctx: Context) -> list[dict[str, Any]]:
    """The ConfigMap, then the RayJob (pure builders)."""
    return build_training_children(ctx.resource, ctx.cfg)


_apply_children = reconciler.apply_children(build)


def apply_children(ctx: Context) -> None:
    """Create or adopt the children; without KubeRay's CRDs the API server answers 404 for RayJobs:
    wait for KubeRay to be installed rather than fail for good."""
    try:
        _apply_children(ctx)
    except Rejected as err:
        if err.reason == "RayJobRejected" and "(404 " in err.message:
            raise Waiting(
                "KubeRayNotInstalled",
                "the cluster does not serve ray.io/v1 RayJobs: install KubeRay's CRDs (server-side apply, "
                "see docs/kuberay.md) and its operator; the TrainingJob starts once they are there",
            ) from err
        raise


def observe_submitter(ctx: Context) -> None:
    """The submitter's pods, once the RayJob has finished (their termination messages carry the results)."""
    rayjob = ctx.children.get("RayJob")
    if rayjob is not None and _deployment(rayjob) in FINISHED:
        ctx.seen["pods"] = kube.job_pods(ctx.namespace, rayjob["metadata"]["name"])


def warn_lost_artifacts(ctx: Context) -> None:
    """A run without a volume writes its artifact into the Ray cluster (an emptyDir of the head, whatever
    output.artifacts.path says), which is deleted after it."""
    tj: TrainingJob = ctx.resource
    artifacts = tj.spec.output.artifacts
    if ctx.previous.get("phase") is None and artifacts.volume is None:
        reconciler.post_event(
            ctx.body,
            key="artifacts-not-kept",
            type="Warning",
            reason="ArtifactsNotKept",
            message="spec.output.artifacts sets no volume: the model artifact is written into the Ray "
            "cluster and deleted with it; set spec.output.artifacts.volume to keep it (a Backtest's "
            "signal.modelRef needs it)",
        )


def training_status(ctx: Context) -> dict[str, Any]:
    """The status from the RayJob and the submitter's pods (pure)."""
    rayjob = ctx.children.get("RayJob")
    return status.training_status(
        ctx.generation,
        rayjob_name_of(ctx.name),
        rayjob,
        ctx.seen.get("pods", []),
        model_uri(ctx.resource),
        ctx.previous,
        ctx.now,
    )


TRAINING = Kind(
    model=TrainingJob,
    steps=(
        reconciler.check_workload_policy,
        check_layout,
        check_volumes,
        apply_children,
        warn_lost_artifacts,
        observe_submitter,
    ),
    status=training_status,
    rejected=status.rejected_status,
    waiting=status.waiting_status,
    phase_events={
        status.RUNNING: ("Normal", "Running"),
        status.SUCCEEDED: ("Normal", "Succeeded"),
        status.FAILED: ("Warning", "Failed"),
        status.SUSPENDED: ("Normal", "Suspended"),
    },
    is_terminal=lambda phase: TrainingPhase(phase).is_terminal,
    accepted_message=lambda ctx: f"created RayJob {rayjob_name_of(ctx.name)}",
)


def _deployment(rayjob: dict[str, Any]) -> str:
    return str((rayjob.get("status") or {}).get("jobDeploymentStatus") or "")


# --------------------------------------------------------------------------- handlers


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
def reconcile_training(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Create (or adopt) the ConfigMap and the RayJob, then reflect the RayJob's state into status."""
    cfg: OperatorConfig = memo["config"]
    reconciler.reconcile(TRAINING, body, cfg, logger, patch.status.update)


@kopf.on.update(API_GROUP, API_VERSION, PLURAL, field="spec.suspend")
def suspend_training(body: kopf.Body, new: Any, old: Any, logger: Any, **_: Any) -> None:
    """spec.suspend is the one mutable field: pass it on to the RayJob (KubeRay deletes or recreates the cluster).

    With spec.job.queueName, Kueue resumes the RayJob when it admits it: a suspension is passed on,
    a resumption is left to Kueue.
    """
    name, ns = body["metadata"]["name"], body["metadata"]["namespace"]
    queued = bool(((body.get("spec") or {}).get("job") or {}).get("queueName"))
    if queued and not new:
        logger.info("TrainingJob %s resumed: Kueue resumes its RayJob when it admits it", name)
        return
    # No parse: an invalid or refused spec has no RayJob, and a toggle must not retry forever over it.
    if kube.patch_rayjob_suspend(ns, rayjob_name_of(name), bool(new)):
        logger.info("TrainingJob %s suspend=%s", name, new)
    else:
        logger.info("TrainingJob %s suspend=%s: it has no RayJob (its spec was refused)", name, new)


def refresh(
    ns: str,
    name: str,
    rayjob: dict[str, Any],
    owner: dict[str, Any],
    cfg: OperatorConfig,
    logger: Any,
    waiting: Any = None,
) -> None:
    """Recompute a TrainingJob's status from its RayJob (and the submitter's pods once it finished).

    Only the RayJob the operator made counts: the TrainingJob's controller reference, the
    deterministic name and the uid recorded in the TrainingJob's status (reconciler.speaks_for).
    """
    with _REFRESHING[f"{ns}/{name}"], observe_reconcile(KIND):
        current = kube.read_custom(PLURAL, ns, name)
        if current is None or not reconciler.speaks_for(current, rayjob, owner):
            return
        previous = current.get("status") or {}
        if (
            previous.get("phase")
            and TrainingPhase(previous["phase"]).is_terminal
            and previous.get("completionTime")
        ):
            return  # finished runs keep their outcome, even when the cluster and the RayJob go
        rayjob_name = rayjob["metadata"]["name"]
        pods = kube.job_pods(ns, rayjob_name) if _deployment(rayjob) in FINISHED else []
        try:
            tj = reconciler.parse(TRAINING, current, cfg)
        except Rejected:
            return  # an invalid spec has no RayJob of its own; its refusal stays in status
        new = status.training_status(
            current["metadata"].get("generation"),
            rayjob_name,
            rayjob,
            pods,
            model_uri(cast(TrainingJob, tj)),
            previous,
            reconciler.now(),
        )
        if unchanged(previous, new):
            return
        kube.patch_custom_status(PLURAL, ns, name, new)
        PHASES.set(KIND, f"{ns}/{name}", new["phase"])
        # The creation handler announces the first phase; an event racing it must not announce it twice.
        if previous.get("phase") is not None:
            reconciler.announce(TRAINING, current, previous, new, logger)
    if TrainingPhase(new["phase"]).is_terminal:
        start_waiting_backtests(ns, name, cfg, logger, waiting)


def start_waiting_backtests(ns: str, name: str, cfg: OperatorConfig, logger: Any, index: Any) -> None:
    """Reconcile at once the Backtests whose signal.modelRef waits for this TrainingJob (ModelNotReady),
    rather than at their next retry: they start (Succeeded) or fail with ModelFailed (Failed).

    kopf's own retry of each Backtest stays armed and finds the work done (children adopted).
    """
    try:
        names = sorted(index[(ns, name)]) if index is not None and (ns, name) in index else []
    except (KeyError, TypeError):
        names = []
    for bt_name in names:
        body = kube.read_custom(backtests.PLURAL, ns, bt_name)
        accepted = condition((body or {}).get("status"), "Accepted") or {}
        if body is None or accepted.get("reason") != "ModelNotReady":
            continue
        write = reconciler.write_status(backtests.BACKTEST, ns, bt_name)
        try:
            reconciler.reconcile(backtests.BACKTEST, body, cfg, logger, write)
        except (kopf.PermanentError, kopf.TemporaryError) as err:
            logger.info("Backtest %s waiting for TrainingJob %s: %s", bt_name, name, err)


@kopf.on.event("ray.io", "v1", "rayjobs", labels={LABEL: kopf.PRESENT})
def rayjob_changed(
    body: kopf.Body, type: str | None, memo: kopf.Memo, logger: Any, backtests_by_model: Any = None, **_: Any
) -> None:
    """A TrainingJob's RayJob changed (KubeRay's deployment and job status): recompute the owner's status."""
    owner = reconciler.owned_child(body, KIND, rayjob_name_of)
    if owner is None or type == "DELETED":
        return
    rayjob = {**dict(body), "kind": "RayJob"}
    ns = body["metadata"]["namespace"]
    refresh(ns, owner["name"], rayjob, owner, memo["config"], logger, backtests_by_model)


@kopf.on.event("", "v1", "pods", labels={LABEL: kopf.PRESENT, "app.kubernetes.io/component": SUBMITTER})
def submitter_pod_changed(
    body: kopf.Body, type: str | None, memo: kopf.Memo, logger: Any, backtests_by_model: Any = None, **_: Any
) -> None:
    """A submitter pod finished: its termination message has the results (the RayJob may be Complete already)."""
    if type == "DELETED" or (body.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
        return
    ns = body["metadata"]["namespace"]
    # KubeRay names the submitter Job after the RayJob; the pod's labels are only a hint, checked below.
    job = (body["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name")
    rayjob = kube.read_rayjob(ns, job) if job else None
    owner = reconciler.owned_child(rayjob, KIND, rayjob_name_of) if rayjob else None
    if rayjob is None or owner is None:
        return
    refresh(
        ns, owner["name"], {**rayjob, "kind": "RayJob"}, owner, memo["config"], logger, backtests_by_model
    )


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL, optional=True)
def forget_training(body: kopf.Body, **_: Any) -> None:
    """Drop a deleted TrainingJob from the phase gauge (children go with ownerReferences; no finalizer)."""
    reconciler.forget(TRAINING, body)
    _REFRESHING.pop(f"{body['metadata'].get('namespace')}/{body['metadata']['name']}", None)
