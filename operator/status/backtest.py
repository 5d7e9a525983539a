"""A Backtest's status from its Job and the Job's pods."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from kubequant.api.backtest import BacktestPhase
from kubequant.api.results import BacktestResults
from kubequant.operator.status.conditions import (
    run_conditions,
    run_rejected_status,
    run_waiting_status,
    set_condition,
    timestamp,
)
from kubequant.operator.status.pods import failure_message, latest_termination, parse_payload

SUCCEEDED, FAILED, RUNNING = (
    BacktestPhase.SUCCEEDED.value,
    BacktestPhase.FAILED.value,
    BacktestPhase.RUNNING.value,
)
PENDING, SUSPENDED = BacktestPhase.PENDING.value, BacktestPhase.SUSPENDED.value


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


def parse_results(message: str) -> BacktestResults | None:
    """The results object the workload wrote to its termination message, or None if it is not one."""
    return parse_payload(message, BacktestResults)


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
    conds = run_conditions(conds, phase, reason, message, generation, now)
    status.update({"phase": phase, "conditions": conds, "message": message})
    if state.start_time:
        status["startTime"] = state.start_time
    if BacktestPhase(phase).is_terminal:
        status["completionTime"] = state.completion_time or previous.get("completionTime") or timestamp(now)
    if results is not None:
        status["results"] = results.to_manifest()
    return status


# The phase names are the API's (tests/unit/test_operator_status.py checks them against BacktestPhase).
rejected_status = run_rejected_status
waiting_status = run_waiting_status
