"""The RayJob's submitter: submit the training entrypoint once, follow it, leave its result for the operator.

KubeRay (K8sJobMode) runs a submitter Kubernetes Job next to the RayCluster and sets, in its container,
RAY_DASHBOARD_ADDRESS (host:port of the head's dashboard) and RAY_JOB_SUBMISSION_ID (the RayJob's job id;
KubeRay's ray-operator/controllers/ray/utils/constant.go). kubequant runs its own submitter command there
instead of `ray job submit`, for two reasons: a retried submitter pod must never start a second training
(it follows the job already submitted under that id), and the TrainingResult must reach the operator without
giving the workload write access to the API: the submitter writes it to its termination message.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubequant.errors import ConfigError

log = logging.getLogger(__name__)

RESULT_PREFIX = "kubequant-result: "
ERROR_PREFIX = "kubequant-error: "
# Kubernetes keeps at most 4096 bytes of a container's termination message.
TERMINATION_LIMIT = 4096
ENV_DASHBOARD = "RAY_DASHBOARD_ADDRESS"
ENV_SUBMISSION_ID = "RAY_JOB_SUBMISSION_ID"


@dataclass
class SubmitOutcome:
    """How the followed Ray job ended, and what the termination message says."""

    status: str
    message: str
    exit_code: int
    created: bool


# What a result too large for the termination message loses, in turn: (key, sub-key) pairs.
_DROPPED_FIRST = (
    ("bestParams", None),
    ("dataQuality", "missingInstruments"),
    ("dataQuality", None),
    ("metrics", None),
)


def termination_payload(result: dict[str, Any], limit: int = TERMINATION_LIMIT) -> str:
    """The TrainingResult as compact JSON of at most ``limit`` bytes: bestParams goes first, then the data
    quality's named instruments, the data quality, then metrics (model.json always has everything)."""
    body = dict(result)
    for step in (None, *_DROPPED_FIRST):
        if step is not None:
            key, inner = step
            if inner is None:
                body.pop(key, None)
            elif isinstance(body.get(key), dict):
                body[key] = {k: v for k, v in body[key].items() if k != inner}
        text = json.dumps(body, separators=(",", ":"), sort_keys=True)
        if len(text.encode()) <= limit:
            return text
    return error_payload("the training result does not fit in a termination message; see model.json", limit)


def error_payload(reason: str, limit: int = TERMINATION_LIMIT) -> str:
    """``{"error": reason}``, redacted, within ``limit`` bytes."""
    from kubequant.redaction import redact

    return json.dumps({"error": redact(reason, limit=min(2048, limit - 16))}, separators=(",", ":"))


def parse_logs(logs: str) -> tuple[dict[str, Any] | None, str | None]:
    """The last ``kubequant-result:`` line's TrainingResult (camelCase) and the last ``kubequant-error:`` reason."""
    from kubequant.api.training import TrainingResult

    result: dict[str, Any] | None = None
    error: str | None = None
    for line in logs.splitlines():
        if line.startswith(RESULT_PREFIX):
            try:
                result = TrainingResult.model_validate(json.loads(line[len(RESULT_PREFIX) :])).to_manifest()
            except ValueError as err:
                error = f"the training printed an unreadable result ({type(err).__name__})"
                result = None
        elif line.startswith(ERROR_PREFIX):
            error = line[len(ERROR_PREFIX) :].strip()
    return result, error


def dashboard_url(address: str) -> str:
    """KubeRay's RAY_DASHBOARD_ADDRESS is host:port; the job client wants a URL."""
    return address if "://" in address else f"http://{address}"


def submission_env(env: dict[str, str] | None = None) -> tuple[str, str]:
    """RAY_DASHBOARD_ADDRESS and RAY_JOB_SUBMISSION_ID, or a clear error naming the missing one."""
    env = dict(os.environ if env is None else env)
    missing = [name for name in (ENV_DASHBOARD, ENV_SUBMISSION_ID) if not env.get(name, "").strip()]
    if missing:
        raise ConfigError(
            f"{' and '.join(missing)} not set",
            where="environment",
            fix="run this as a RayJob's submitter (KubeRay sets both), or export them",
        )
    return env[ENV_DASHBOARD].strip(), env[ENV_SUBMISSION_ID].strip()


# Answers of a dashboard that is up but not ready yet (its job agent has not registered), or of a
# proxy in front of it: worth retrying, unlike a refused or malformed request.
_TRANSIENT_TEXT = (
    "no available agent",
    "try again later",
    "status code 502",
    "status code 503",
    "status code 504",
)


def _transient(err: BaseException) -> bool:
    import requests

    if isinstance(err, ConnectionError | TimeoutError | requests.exceptions.RequestException):
        return True
    return isinstance(err, RuntimeError) and any(t in str(err).lower() for t in _TRANSIENT_TEXT)


def retrying(call: Callable[[], Any], what: str, patience_s: float, *, pause_s: float = 2.0) -> Any:
    """``call()``, retried while it fails transiently (dashboard starting, agent not registered) for
    up to ``patience_s``; any other failure, or the last transient one, is raised."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return call()
        except Exception as err:
            if not _transient(err) or time.monotonic() + pause_s > deadline:
                raise
            log.warning(
                "%s: %s; retrying", what, str(err).splitlines()[0] if str(err) else type(err).__name__
            )
            time.sleep(pause_s)


def _job_exists(client: Any, submission_id: str) -> bool:
    try:
        client.get_job_info(submission_id)
    except RuntimeError as err:
        if "404" in str(err) or "does not exist" in str(err):
            return False
        raise
    return True


def submit_once(
    client: Any, submission_id: str, entrypoint: Sequence[str], patience_s: float = 300.0
) -> bool:
    """Submit the entrypoint under ``submission_id`` unless a job with that id exists; True if this call created it.

    A dashboard that is not ready yet is waited for (up to ``patience_s``); a job that appears
    meanwhile (another submitter won the race) is followed, never submitted twice.
    """
    deadline = time.monotonic() + patience_s

    def attempt() -> bool:
        if _job_exists(client, submission_id):
            log.info("Ray job %s already exists; following it", submission_id)
            return False
        try:
            client.submit_job(entrypoint=shlex.join(entrypoint), submission_id=submission_id)
        except RuntimeError as err:
            if _transient(err):
                raise
            # Another submitter (a retried pod) won the race: follow its job rather than fail.
            if _job_exists(client, submission_id):
                log.info("Ray job %s was submitted concurrently; following it (%s)", submission_id, err)
                return False
            raise
        return True

    return bool(
        retrying(attempt, f"submitting Ray job {submission_id}", max(0.0, deadline - time.monotonic()))
    )


def follow(
    client: Any,
    submission_id: str,
    write: Callable[[str], None],
    *,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
    patience_s: float = 300.0,
) -> tuple[str, str, str]:
    """Stream the job's logs through ``write`` until it ends; returns (status, Ray's message, all logs)."""
    from ray.job_submission import JobStatus

    printed = 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        # A dashboard restart (the head pod restarted by KubeRay) is waited out, not taken as a failure.
        info = retrying(lambda: client.get_job_info(submission_id), "reading the job's status", patience_s)
        logs = retrying(lambda: client.get_job_logs(submission_id), "reading the job's logs", patience_s)
        if len(logs) > printed:
            write(logs[printed:])
            printed = len(logs)
        if JobStatus(info.status).is_terminal():
            # The last lines may land after the status turned terminal.
            logs = retrying(lambda: client.get_job_logs(submission_id), "reading the job's logs", patience_s)
            if len(logs) > printed:
                write(logs[printed:])
            return str(JobStatus(info.status).value), info.message or "", logs
        if deadline is not None and time.monotonic() > deadline:
            return "TIMEOUT", f"still {JobStatus(info.status).value} after {timeout_s:.0f}s", logs
        time.sleep(poll_s)


def submit_and_follow(
    entrypoint: Sequence[str],
    termination_log: Path,
    write: Callable[[str], None],
    *,
    env: dict[str, str] | None = None,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
    patience_s: float = 300.0,
) -> SubmitOutcome:
    """The submitter: submit once, follow to the end, write the termination message; exit 0 only on success."""
    from ray.job_submission import JobSubmissionClient

    def leave(payload: str) -> None:
        if termination_log.parent.exists():
            termination_log.write_text(payload)

    try:
        address, submission_id = submission_env(env)
        if not entrypoint:
            raise ConfigError("no entrypoint given", where="argv", fix="pass it after --")
        client = retrying(
            lambda: JobSubmissionClient(dashboard_url(address)), f"connecting to {address}", patience_s
        )
        created = submit_once(client, submission_id, entrypoint, patience_s)
        status, message, logs = follow(
            client, submission_id, write, poll_s=poll_s, timeout_s=timeout_s, patience_s=patience_s
        )
    except Exception as err:
        from kubequant.errors import KubequantError

        text = err.one_line() if isinstance(err, KubequantError) else f"{type(err).__name__}: {err}"
        leave(error_payload(f"submitter: {text}"))
        raise
    result, error = parse_logs(logs)
    if status == "SUCCEEDED" and result is not None:
        payload = termination_payload(result)
        leave(payload)
        return SubmitOutcome(status, payload, 0, created)
    if status == "SUCCEEDED":
        reason = error or "the Ray job succeeded but printed no kubequant-result line"
    else:
        reason = (
            error
            or f"Ray job {submission_id} {status}: {message.strip().splitlines()[-1] if message.strip() else ''}"
        )
    payload = error_payload(reason)
    leave(payload)
    return SubmitOutcome(status, payload, 1, created)
