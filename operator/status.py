"""Child state → a custom resource's status, in the Kubernetes API conventions. Pure: time is passed in."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import pydantic

from kubequant.api.results import BacktestResults
from kubequant.redaction import redact

SUCCEEDED, FAILED, RUNNING, PENDING, SUSPENDED = "Succeeded", "Failed", "Running", "Pending", "Suspended"


def timestamp(moment: dt.datetime) -> str:
    """RFC 3339 in UTC with second precision, as the API server writes times."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Conditions with one set; lastTransitionTime moves only when the status changes."""
    out = [dict(c) for c in conditions or [] if c.get("type") != type_]
    previous = next((c for c in conditions or [] if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != status
    condition = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": timestamp(now) if changed else previous["lastTransitionTime"],  # type: ignore[index]
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    out.append(condition)
    order = {"Accepted": 0, "Running": 1, "Succeeded": 2, "Failed": 3, "Ready": 4}
    return sorted(out, key=lambda c: (order.get(c["type"], 9), c["type"]))


@dataclass(frozen=True)
class JobState:
    """What a Job says about its run."""

    phase: str
    reason: str
    message: str
    start_time: str | None = None
    completion_time: str | None = None


def job_state(job: dict[str, Any] | None) -> JobState:
    """Phase of a batch/v1 Job from its conditions and counters."""
    if job is None:
        return JobState(PENDING, "JobNotCreated", "the Job does not exist yet")
    status = job.get("status") or {}
    start = status.get("startTime")
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return JobState(
                SUCCEEDED, "JobComplete", "the Job completed", start, status.get("completionTime")
            )
        if cond.get("type") == "Failed":
            reason = cond.get("reason") or "JobFailed"
            message = cond.get("message") or "the Job failed"
            return JobState(FAILED, reason, message, start, cond.get("lastTransitionTime"))
        if cond.get("type") == "Suspended":
            return JobState(SUSPENDED, "JobSuspended", "the Job is suspended (spec.suspend)", start)
    if (job.get("spec") or {}).get("suspend"):
        return JobState(SUSPENDED, "JobSuspended", "the Job is suspended (spec.suspend)", start)
    if status.get("active") or status.get("ready"):
        return JobState(RUNNING, "PodRunning", "the backtest pod is running", start)
    return JobState(PENDING, "PodPending", "waiting for the Job's pod to start", start)


@dataclass(frozen=True)
class Termination:
    """How the backtest container ended (from the pod's status)."""

    exit_code: int
    reason: str
    message: str


def latest_termination(pods: list[dict[str, Any]]) -> Termination | None:
    """The terminated state of the most recently finished pod's first container."""
    ended = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if term:
                ended.append((term.get("finishedAt") or "", term))
    if not ended:
        return None
    _, term = max(ended, key=lambda pair: pair[0])
    return Termination(int(term.get("exitCode", -1)), term.get("reason") or "", term.get("message") or "")


def parse_results(message: str) -> BacktestResults | None:
    """The results object the workload wrote to its termination message, or None if it is not one."""
    try:
        data = json.loads(message)
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(data, dict) or "error" in data:
        return None
    try:
        return BacktestResults.model_validate(data)
    except pydantic.ValidationError:
        return None


def workload_error(termination: Termination | None) -> str | None:
    """The workload's own structured error (``{"error": "..."}`` in its termination message), redacted."""
    if termination is None:
        return None
    try:
        data = json.loads(termination.message)
    except (json.JSONDecodeError, TypeError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, str) or not error.strip():
        return None
    return redact(error)


def failure_message(termination: Termination | None, fallback: str) -> str:
    """One line explaining a failure: the workload's structured error if it left one, else Kubernetes' account.

    Never the pod's output: anyone who can read the Backtest's status or Events would see it, and an
    image that is not kubequant's can write anything into its termination message.
    """
    error = workload_error(termination)
    if error is not None:
        return error
    if termination is not None and (termination.exit_code or termination.reason):
        reason = f" ({termination.reason})" if termination.reason else ""
        return redact(f"{fallback}; the container exited with code {termination.exit_code}{reason}")
    return redact(fallback)


def backtest_status(
    generation: int | None,
    job_name: str,
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    previous: dict[str, Any] | None,
    now: dt.datetime,
) -> dict[str, Any]:
    """The Backtest's status for the observed Job and pods."""
    previous = previous or {}
    state = job_state(job)
    termination = latest_termination(pods)
    conds = previous.get("conditions")
    conds = set_condition(
        conds, "Accepted", "True", "JobCreated", f"Job {job_name} runs the backtest", generation, now
    )
    status: dict[str, Any] = {"observedGeneration": generation, "jobName": job_name}
    phase, results = state.phase, None
    if phase == SUCCEEDED:
        results = parse_results(termination.message) if termination else None
        if results is None:
            phase, reason = FAILED, "ResultsUnreadable"
            message = "the Job completed but its pod left no results in its termination message"
        else:
            reason, message = "BacktestSucceeded", "the backtest finished; results are in .status.results"
    elif phase == FAILED:
        reason, message = state.reason, failure_message(termination, state.message)
    else:
        reason, message = state.reason, state.message
    running = "True" if phase == RUNNING else "False"
    conds = set_condition(
        conds, "Running", running, reason if phase != SUCCEEDED else "Finished", message, generation, now
    )
    if phase == SUCCEEDED:
        conds = set_condition(conds, "Succeeded", "True", reason, message, generation, now)
        conds = set_condition(conds, "Failed", "False", reason, message, generation, now)
    elif phase == FAILED:
        conds = set_condition(conds, "Succeeded", "False", reason, message, generation, now)
        conds = set_condition(conds, "Failed", "True", reason, message, generation, now)
    else:
        conds = set_condition(conds, "Succeeded", "Unknown", reason, message, generation, now)
        conds = set_condition(conds, "Failed", "False", reason, message, generation, now)
    status.update({"phase": phase, "conditions": conds, "message": message})
    if state.start_time:
        status["startTime"] = state.start_time
    if phase in (SUCCEEDED, FAILED):
        status["completionTime"] = state.completion_time or previous.get("completionTime") or timestamp(now)
    if results is not None:
        status["results"] = results.to_manifest()
    return status


def _not_accepted(
    generation: int | None,
    reason: str,
    message: str,
    previous: dict[str, Any] | None,
    now: dt.datetime,
    failed: bool,
) -> dict[str, Any]:
    conds = (previous or {}).get("conditions")
    conds = set_condition(conds, "Accepted", "False", reason, message, generation, now)
    conds = set_condition(conds, "Running", "False", reason, message, generation, now)
    conds = set_condition(
        conds, "Succeeded", "False" if failed else "Unknown", reason, message, generation, now
    )
    conds = set_condition(conds, "Failed", "True" if failed else "False", reason, message, generation, now)
    return {
        "observedGeneration": generation,
        "phase": FAILED if failed else PENDING,
        "conditions": conds,
        "message": message,
    }


def rejected_status(
    generation: int | None, reason: str, message: str, previous: dict[str, Any] | None, now: dt.datetime
) -> dict[str, Any]:
    """Status of an object the operator will not run (invalid spec): Accepted False and Failed True."""
    return _not_accepted(generation, reason, message, previous, now, failed=True)


def waiting_status(
    generation: int | None, reason: str, message: str, previous: dict[str, Any] | None, now: dt.datetime
) -> dict[str, Any]:
    """Status of an object waiting for a dependency (a data volume): Accepted False, will retry."""
    return _not_accepted(generation, reason, message, previous, now, failed=False)
