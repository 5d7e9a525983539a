"""A TrainingJob's status from its KubeRay RayJob (with the RayCluster's status KubeRay copies into it)
and the submitter pod's termination message (the results).

Every KubeRay v1.6 ``JobDeploymentStatus`` and ``JobStatus`` value maps to a phase here
(``ray-operator/apis/ray/v1/rayjob_types.go``); KubeRay's failure reasons (SubmissionFailed,
DeadlineExceeded, PreRunningDeadlineExceeded, AppFailed, ValidationFailed, ...) become the
conditions' reasons. While the run is not yet running, the RayCluster's own state and conditions
(head pod not ready, pods provisioning, replica failure) are the reason, so a run stuck in
``Initializing`` says why.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from kubequant.api.training import TrainingPhase, TrainingResult
from kubequant.operator.status.conditions import (
    run_conditions,
    run_rejected_status,
    run_waiting_status,
    set_condition,
    timestamp,
)
from kubequant.operator.status.pods import Termination, failure_message, latest_termination, parse_payload
from kubequant.redaction import redact

PENDING, RUNNING, SUCCEEDED, FAILED, SUSPENDED = (
    TrainingPhase.PENDING.value,
    TrainingPhase.RUNNING.value,
    TrainingPhase.SUCCEEDED.value,
    TrainingPhase.FAILED.value,
    TrainingPhase.SUSPENDED.value,
)

# KubeRay's JobDeploymentStatus values (the RayJob's lifecycle in Kubernetes).
DEPLOYMENT_PHASES: dict[str, str] = {
    "": PENDING,  # New: KubeRay has not seen it yet
    "Initializing": PENDING,
    "Waiting": PENDING,  # InteractiveMode: never used by kubequant, mapped for completeness
    "Running": RUNNING,
    "Retrying": PENDING,  # a failed attempt, a new cluster on the way (backoffLimit)
    "Suspending": SUSPENDED,
    "Suspended": SUSPENDED,
    "Complete": RUNNING,  # the Ray job's outcome decides (JobStatus), then the results
    "Failed": FAILED,
    "ValidationFailed": FAILED,
}
# KubeRay's JobStatus values (the Ray job's own state, from the dashboard).
JOB_STATUSES = ("", "PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED")
# Why KubeRay failed a RayJob, in words a user can act on.
FAILURE_HINTS: dict[str, str] = {
    "SubmissionFailed": "the submitter pod failed (after spec.job.submitterBackoffLimit retries)",
    "DeadlineExceeded": "the run exceeded spec.job.activeDeadlineSeconds",
    "PreRunningDeadlineExceeded": "the Ray cluster did not start the training within "
    "spec.job.preRunningDeadlineSeconds (pods unschedulable, image not pulled, or Ray not starting)",
    "AppFailed": "the training failed in the Ray cluster",
    "JobDeploymentStatusTransitionGracePeriodExceeded": "the Ray job finished but KubeRay could not "
    "finish the RayJob in time",
    "ValidationFailed": "KubeRay refused the RayJob",
}


@dataclass(frozen=True)
class RayJobState:
    """What a RayJob says about the run: phase, reason (CamelCase) and message."""

    phase: str
    reason: str
    message: str
    start_time: str | None = None
    completion_time: str | None = None


def cluster_wait_reason(cluster: dict[str, Any] | None) -> tuple[str, str] | None:
    """Why the RayCluster is not running yet, from its status (state, reason, conditions); None when it is ready."""
    cluster = cluster or {}
    state, reason = cluster.get("state") or "", cluster.get("reason") or ""
    if state == "ready":
        return None
    conds = {c.get("type"): c for c in cluster.get("conditions") or []}
    failure = conds.get("ReplicaFailure")
    if state == "failed" or (failure and failure.get("status") == "True"):
        text = (failure or {}).get("message") or reason or "the Ray cluster failed"
        return "RayClusterReplicaFailure", redact(text)
    head = conds.get("HeadPodReady")
    if head and head.get("status") != "True":
        return head.get("reason") or "HeadPodNotReady", redact(
            head.get("message") or "waiting for the Ray head pod to be ready"
        )
    provisioned = conds.get("RayClusterProvisioned")
    if provisioned and provisioned.get("status") != "True":
        return provisioned.get("reason") or "RayClusterPodsProvisioning", redact(
            provisioned.get("message") or "waiting for the Ray pods to be scheduled and started"
        )
    if reason:
        return "RayClusterNotReady", redact(reason)
    return "RayClusterNotReady", "waiting for the Ray cluster to be ready"


def rayjob_state(rayjob: dict[str, Any] | None) -> RayJobState:
    """The phase of a KubeRay RayJob from its deployment and job statuses."""
    if rayjob is None:
        return RayJobState(PENDING, "RayJobNotCreated", "the RayJob does not exist yet")
    status = rayjob.get("status") or {}
    deployment = status.get("jobDeploymentStatus") or ""
    job_status = status.get("jobStatus") or ""
    start, end = status.get("startTime"), status.get("endTime")
    kuberay_reason = status.get("reason") or ""
    kuberay_message = redact(status.get("message") or "")
    if deployment not in DEPLOYMENT_PHASES:
        return RayJobState(PENDING, "UnknownDeploymentStatus", f"KubeRay reports {deployment!r}", start)
    if deployment in ("Failed", "ValidationFailed"):
        reason = kuberay_reason or (
            "ValidationFailed" if deployment == "ValidationFailed" else "RayJobFailed"
        )
        hint = FAILURE_HINTS.get(reason, "the RayJob failed")
        message = f"{hint}: {kuberay_message}" if kuberay_message else hint
        return RayJobState(FAILED, reason, message, start, end)
    if deployment == "Complete":
        if job_status == "SUCCEEDED":
            return RayJobState(SUCCEEDED, "RayJobSucceeded", "the Ray job succeeded", start, end)
        if job_status == "STOPPED":
            return RayJobState(
                FAILED, "RayJobStopped", "the Ray job was stopped before it finished", start, end
            )
        reason = kuberay_reason or "AppFailed"
        hint = FAILURE_HINTS.get(reason, "the Ray job failed")
        return RayJobState(
            FAILED, reason, f"{hint}: {kuberay_message}" if kuberay_message else hint, start, end
        )
    if deployment in ("Suspending", "Suspended"):
        return RayJobState(
            SUSPENDED, f"RayJob{deployment}", "the run is suspended (spec.suspend, or its Kueue queue)", start
        )
    if deployment == "Running":
        if job_status == "RUNNING":
            return RayJobState(RUNNING, "RayJobRunning", "the training runs on the Ray cluster", start)
        return RayJobState(
            RUNNING,
            "RayJobSubmitted",
            f"the Ray job is submitted ({job_status or 'not yet reported'})",
            start,
        )
    if deployment == "Retrying":
        why = f" ({kuberay_reason}: {kuberay_message})" if kuberay_reason else ""
        return RayJobState(
            PENDING, "RayJobRetrying", f"a failed attempt is retried on a new Ray cluster{why}", start
        )
    # New, Initializing, Waiting: the Ray cluster is on its way; say what it waits for.
    waiting = cluster_wait_reason(status.get("rayClusterStatus"))
    if deployment == "" or waiting is None:
        return RayJobState(PENDING, "RayJobInitializing", "KubeRay is creating the Ray cluster", start)
    return RayJobState(PENDING, waiting[0], waiting[1], start)


def parse_result(message: str) -> TrainingResult | None:
    """The TrainingResult the submitter wrote to its termination message, or None if it is not one."""
    return parse_payload(message, TrainingResult)


def submitter_termination(pods: list[dict[str, Any]]) -> Termination | None:
    """How the submitter last ended, or None while one of its pods still runs (a retry after a failed
    attempt must not be read as that attempt's outcome)."""
    if any((p.get("status") or {}).get("phase") in ("Pending", "Running", None) for p in pods):
        return None
    return latest_termination(pods)


def training_status(
    generation: int | None,
    rayjob_name: str,
    rayjob: dict[str, Any] | None,
    submitter_pods: list[dict[str, Any]],
    model_uri: str | None,
    previous: dict[str, Any] | None,
    now: dt.datetime,
) -> dict[str, Any]:
    """The TrainingJob's status for the observed RayJob and submitter pods (pure).

    ``model_uri``: where the artifact lands on a shared volume (pvc://...), or None; then the
    submitter's own model_uri is carried (a path inside the lost cluster).
    """
    previous = previous or {}
    state = rayjob_state(rayjob)
    termination = submitter_termination(submitter_pods)
    rstatus = (rayjob or {}).get("status") or {}
    conds = set_condition(
        previous.get("conditions"),
        "Accepted",
        "True",
        "RayJobCreated",
        f"RayJob {rayjob_name} runs the training",
        generation,
        now,
    )
    phase, reason, message, result = state.phase, state.reason, state.message, None
    if state.phase == SUCCEEDED:
        result = parse_result(termination.message) if termination else None
        if result is not None:
            reason, message = "TrainingSucceeded", "the training finished; results are in .status"
        elif termination is None:
            # KubeRay marks the RayJob Complete from the Ray job's status; the submitter exits just after.
            phase, reason, message = (
                RUNNING,
                "CollectingResults",
                "the Ray job succeeded; waiting for its results",
            )
        else:
            phase, reason = FAILED, "ResultsUnreadable"
            message = "the Ray job succeeded but the submitter left no results in its termination message"
    elif state.phase == FAILED and reason in ("AppFailed", "SubmissionFailed") and termination:
        # The workload's own structured error says more than KubeRay's account of it.
        message = failure_message(termination, state.message)
    conds = run_conditions(conds, phase, reason, message, generation, now)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "conditions": conds,
        "message": message,
        "rayJobName": rayjob_name,
        # KubeRay names the submitter Job after the RayJob.
        "jobName": rayjob_name,
    }
    for key, field in (
        ("rayClusterName", "rayClusterName"),
        ("dashboardURL", "dashboardUrl"),
        ("jobId", "rayJobId"),
    ):
        if rstatus.get(key):
            status[field] = rstatus[key]
    if state.start_time:
        status["startTime"] = state.start_time
    if TrainingPhase(phase).is_terminal:
        status["completionTime"] = state.completion_time or previous.get("completionTime") or timestamp(now)
    if result is not None:
        values = result.to_manifest()
        for key in ("bestMetric", "bestParams", "trials", "metrics", "dataQuality"):
            if key in values:
                status[key] = values[key]
        uri = model_uri or values.get("modelUri")
        if uri:
            status["modelUri"] = uri
    return status


# The phase names are the API's (tests/unit/test_operator_status.py checks them against TrainingJobPhase).
rejected_status = run_rejected_status
waiting_status = run_waiting_status
