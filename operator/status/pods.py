"""What a pod says about its container: how it ended, and the workload's own structured error."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic

from kubequant.redaction import redact

PayloadT = TypeVar("PayloadT", bound=pydantic.BaseModel)


@dataclass(frozen=True)
class Termination:
    """How a container ended (from the pod's status)."""

    exit_code: int
    reason: str
    message: str


def latest_termination(pods: list[dict[str, Any]]) -> Termination | None:
    """The terminated state of the most recently finished pod's first container (its last run, too)."""
    ended = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                term = state.get("terminated")
                if term:
                    ended.append((term.get("finishedAt") or "", term))
    if not ended:
        return None
    _, term = max(ended, key=lambda pair: pair[0])
    return Termination(int(term.get("exitCode", -1)), term.get("reason") or "", term.get("message") or "")


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

    Never the pod's output: anyone who can read the object's status or Events would see it, and an
    image that is not kubequant's can write anything into its termination message.
    """
    error = workload_error(termination)
    if error is not None:
        return error
    if termination is not None and (termination.exit_code or termination.reason):
        reason = f" ({termination.reason})" if termination.reason else ""
        return redact(f"{fallback}; the container exited with code {termination.exit_code}{reason}")
    return redact(fallback)


@dataclass(frozen=True)
class ContainerState:
    """What a long-running pod's first container is doing."""

    exists: bool
    ready: bool
    terminating: bool
    waiting_reason: str
    waiting_message: str
    running: bool
    restarts: int
    termination: Termination | None  # how it last ended (now, or before its restart)
    start_time: str | None
    running_since: str | None = None  # when the running container started (state.running.startedAt)


def container_state(pod: dict[str, Any] | None) -> ContainerState:
    """The state of ``pod``'s first container (a missing pod: exists False)."""
    if pod is None:
        return ContainerState(False, False, False, "", "", False, 0, None, None)
    status = pod.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    statuses = status.get("containerStatuses") or []
    cs = statuses[0] if statuses else {}
    state = cs.get("state") or {}
    waiting = state.get("waiting") or {}
    return ContainerState(
        exists=True,
        ready=ready,
        terminating=bool((pod.get("metadata") or {}).get("deletionTimestamp")),
        waiting_reason=waiting.get("reason") or "",
        waiting_message=waiting.get("message") or "",
        running="running" in state,
        restarts=int(cs.get("restartCount") or 0),
        termination=latest_termination([pod]),
        start_time=status.get("startTime"),
        running_since=(state.get("running") or {}).get("startedAt"),
    )


def parse_payload(message: str, model: type[PayloadT]) -> PayloadT | None:
    """The ``model`` a workload wrote to its termination message, or None if the message is not one
    (not JSON, not an object, a structured ``{"error": ...}``, or not valid for the model)."""
    try:
        data = json.loads(message)
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(data, dict) or "error" in data:
        return None
    try:
        return model.model_validate(data)
    except pydantic.ValidationError:
        return None
