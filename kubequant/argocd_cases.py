"""Argo CD health test cases: kubequant objects in each state the operator reports, and the health
Argo CD must show for each.

The objects' status comes from the operator's own pure status functions (``operator/status``: a
Job, a KubeRay RayJob or a trading pod in each state, and the runtime's report); a few hand-written
cases cover what the operator does not produce today (no status yet, a status older than the spec,
a phase from a later API). ``kubequant.gitops`` writes them as Argo CD's ``health_test.yaml`` and
``testdata/``, so a changed condition type, reason or message in the operator changes the files.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kubequant.api.live import TradingState
from kubequant.api.resource import API_GROUP_VERSION
from kubequant.operator.builders.session import pod_name, trading_name
from kubequant.operator.status import backtest as backtest_status
from kubequant.operator.status import policy as policy_status
from kubequant.operator.status import session as session_status
from kubequant.operator.status import training as training_status
from kubequant.version import API_GROUP

# One moment for every generated status, so the files are the same on every run.
NOW = dt.datetime(2026, 1, 5, 1, 30, tzinfo=dt.UTC)
NAMESPACE = "research"


@dataclass(frozen=True)
class HealthCase:
    """One object and the health Argo CD must show for it."""

    name: str
    obj: dict[str, Any]
    status: str
    message: str


def _obj(
    kind: str, name: str, spec: dict[str, Any], status: dict[str, Any] | None, generation: int = 1
) -> dict[str, Any]:
    meta = {"name": name, "namespace": NAMESPACE, "generation": generation}
    obj: dict[str, Any] = {"apiVersion": API_GROUP_VERSION, "kind": kind, "metadata": meta, "spec": spec}
    if status is not None:
        obj["status"] = status
    return obj


def _stamp(seconds_ago: float = 0) -> str:
    return (NOW - dt.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _terminated(exit_code: int, message: str) -> dict[str, Any]:
    reason = "Completed" if exit_code == 0 else "Error"
    return {
        "terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": _stamp(5), "message": message}
    }


def _pod(
    state: dict[str, Any], *, ready: bool = False, phase: str = "Running", last: dict[str, Any] | None = None
) -> dict[str, Any]:
    container = {"name": "main", "state": state, "lastState": last or {}, "restartCount": 1 if last else 0}
    return {
        "metadata": {"name": "pod"},
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [container],
        },
    }


Row = tuple[str, dict[str, Any] | None, str, str]  # case name, status, health status, health message


def rows_to_cases(kind: str, name: str, spec: dict[str, Any], rows: Sequence[Row]) -> list[HealthCase]:
    """One case per (name, status, health, message) row, the object named ``name`` with ``spec``."""
    return [
        HealthCase(case, _obj(kind, name, spec, status), health, message)
        for case, status, health, message in rows
    ]


def run_edge_cases(
    kind: str, name: str, spec: dict[str, Any], running: dict[str, Any], noun: str
) -> list[HealthCase]:
    """Hand-written cases every run kind shares: no status yet, a status of an older spec, a phase from the future."""
    return [
        HealthCase(
            "progressing_no_status",
            _obj(kind, name, spec, None),
            "Progressing",
            f"Waiting for the kubequant operator to take the {noun}",
        ),
        HealthCase(
            "progressing_stale_generation",
            _obj(kind, name, spec, running, generation=2),
            "Progressing",
            "Waiting for the kubequant operator to observe generation 2",
        ),
        HealthCase(
            "unknown_phase",
            _obj(kind, name, spec, {"observedGeneration": 1, "phase": "Cancelled"}),
            "Unknown",
            "Unknown phase Cancelled (this health check knows Pending, Running, Succeeded, Failed, Suspended)",
        ),
    ]


BACKTEST_SPEC: dict[str, Any] = {
    "data": {"sample": {}},
    "universe": {"market": "all"},
    "benchmark": "SYNIDX",
    "period": {"start": "2022-01-04", "end": "2022-12-29"},
    "signal": {"modelRef": {"name": "lgb-alpha158"}},
    "strategy": {"topkDropout": {"topk": 30, "nDrop": 3}},
}
BACKTEST_RESULTS = {"annualizedReturn": 0.298, "sharpe": 1.84, "maxDrawdown": -0.154, "days": 245}


def backtest_cases() -> list[HealthCase]:
    """Backtests in every state the operator reports (operator/status/backtest.py)."""
    job = "lgb-topk-backtest"

    def status(job_obj: dict[str, Any] | None, pods: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        return backtest_status.backtest_status(1, job, job_obj, list(pods), None, NOW)

    complete = {
        "status": {"conditions": [{"type": "Complete", "status": "True"}], "completionTime": _stamp()}
    }
    failed_job = {
        "status": {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                    "lastTransitionTime": _stamp(),
                }
            ]
        }
    }
    error = json.dumps({"error": "spec.period.end: 2023-06-30 is after the data's last day 2022-12-30"})
    rows: list[Row] = [
        ("progressing_job_not_created", status(None), "Progressing", "the Job does not exist yet"),
        (
            "progressing_pod_pending",
            status({"status": {}}),
            "Progressing",
            "waiting for the Job's pod to start",
        ),
        (
            "progressing_running",
            status({"status": {"active": 1}}),
            "Progressing",
            "the backtest pod is running",
        ),
        (
            "healthy_succeeded",
            status(complete, [_pod(_terminated(0, json.dumps(BACKTEST_RESULTS)), phase="Succeeded")]),
            "Healthy",
            "the backtest finished; results are in .status.results",
        ),
        (
            "degraded_failed",
            status(failed_job, [_pod(_terminated(2, error), phase="Failed")]),
            "Degraded",
            "BackoffLimitExceeded: spec.period.end: 2023-06-30 is after the data's last day 2022-12-30",
        ),
        (
            "degraded_results_unreadable",
            status(complete, [_pod(_terminated(0, ""), phase="Succeeded")]),
            "Degraded",
            "ResultsUnreadable: the Job completed but its pod left no results in its termination message",
        ),
        (
            "suspended",
            status({"spec": {"suspend": True}, "status": {}}),
            "Suspended",
            "the Job is suspended (spec.suspend)",
        ),
        (
            "progressing_waiting_for_model",
            backtest_status.waiting_status(
                1,
                "ModelNotReady",
                "TrainingJob lgb-alpha158 is Running; the backtest starts when it succeeds",
                None,
                NOW,
            ),
            "Progressing",
            "TrainingJob lgb-alpha158 is Running; the backtest starts when it succeeds",
        ),
        (
            "degraded_rejected",
            backtest_status.rejected_status(
                1, "PolicyViolation", "spec.image: registry.example/kq:dev is not an allowed image", None, NOW
            ),
            "Degraded",
            "PolicyViolation: spec.image: registry.example/kq:dev is not an allowed image",
        ),
    ]
    return rows_to_cases("Backtest", "lgb-topk", BACKTEST_SPEC, rows) + run_edge_cases(
        "Backtest", "lgb-topk", BACKTEST_SPEC, status({"status": {"active": 1}}), "backtest"
    )


TRAINING_SPEC: dict[str, Any] = {
    "data": {"sample": {"instruments": 100}},
    "universe": {"market": "all"},
    "dataset": {
        "handler": {"class": "Alpha158"},
        "segments": {
            "train": {"start": "2020-01-01", "end": "2021-06-30"},
            "valid": {"start": "2021-07-01", "end": "2021-12-31"},
            "test": {"start": "2022-01-01", "end": "2022-12-29"},
        },
    },
    "model": {"class": "LGBModel", "kwargs": {"num_boost_round": 200}},
}
TRAINING_RESULT = {"modelUri": "pvc://models/lgb-alpha158/model.json", "trials": 1, "metrics": {"ic": 0.041}}


def training_cases() -> list[HealthCase]:
    """TrainingJobs in every state the operator reports from KubeRay (operator/status/training.py)."""
    rayjob = "lgb-alpha158-ray"

    def status(
        deployment: str, job_status: str = "", pods: Sequence[dict[str, Any]] = (), **extra: Any
    ) -> dict[str, Any]:
        obj = {"status": {"jobDeploymentStatus": deployment, "jobStatus": job_status, **extra}}
        return training_status.training_status(1, rayjob, obj, list(pods), None, None, NOW)

    head_not_ready = {
        "state": "",
        "conditions": [
            {
                "type": "HeadPodReady",
                "status": "False",
                "reason": "HeadPodNotFound",
                "message": "no head pod yet",
            }
        ],
    }
    submitter_done = _pod(_terminated(0, json.dumps(TRAINING_RESULT)), phase="Succeeded")
    rows: list[Row] = [
        (
            "progressing_head_pod_not_ready",
            status("Initializing", rayClusterStatus=head_not_ready),
            "Progressing",
            "no head pod yet",
        ),
        (
            "progressing_running",
            status("Running", "RUNNING"),
            "Progressing",
            "the training runs on the Ray cluster",
        ),
        (
            "progressing_collecting_results",
            status("Complete", "SUCCEEDED", [_pod({"running": {}})]),
            "Progressing",
            "the Ray job succeeded; waiting for its results",
        ),
        (
            "healthy_succeeded",
            status("Complete", "SUCCEEDED", [submitter_done]),
            "Healthy",
            "the training finished; results are in .status",
        ),
        (
            "degraded_deadline_exceeded",
            status("Failed", "RUNNING", reason="DeadlineExceeded", message="the RayJob ran for 3600 s"),
            "Degraded",
            "DeadlineExceeded: the run exceeded spec.job.activeDeadlineSeconds: the RayJob ran for 3600 s",
        ),
        (
            "progressing_retrying",
            status("Retrying"),
            "Progressing",
            "a failed attempt is retried on a new Ray cluster",
        ),
        (
            "suspended",
            status("Suspended"),
            "Suspended",
            "the run is suspended (spec.suspend, or its Kueue queue)",
        ),
        (
            "progressing_waiting_for_kuberay",
            training_status.waiting_status(
                1, "KubeRayNotInstalled", "the cluster does not serve ray.io/v1 RayJobs", None, NOW
            ),
            "Progressing",
            "the cluster does not serve ray.io/v1 RayJobs",
        ),
        (
            "degraded_rejected",
            training_status.rejected_status(
                1,
                "ArtifactVolumeRequired",
                "spec.ray.workers.replicas is 4: set spec.output.artifacts.volume",
                None,
                NOW,
            ),
            "Degraded",
            "ArtifactVolumeRequired: spec.ray.workers.replicas is 4: set spec.output.artifacts.volume",
        ),
    ]
    return rows_to_cases("TrainingJob", "lgb-alpha158", TRAINING_SPEC, rows) + run_edge_cases(
        "TrainingJob", "lgb-alpha158", TRAINING_SPEC, status("Running", "RUNNING"), "training job"
    )


SESSION = "paper-momentum"
SESSION_SPEC: dict[str, Any] = {
    "mode": "paper",
    "account": "paper-a",
    "broker": {"type": "paper"},
    "riskPolicyRef": {"name": "paper-default"},
    "strategy": {
        "signalApi": {"port": 8080, "tokenSecretRef": {"name": "paper-momentum-signal-token", "key": "token"}}
    },
    "data": {"sample": {}},
}
SECRETS = (("spec.strategy.signalApi.tokenSecretRef", "paper-momentum-signal-token"),)


def _report(
    state: TradingState, halt_reason: str = "", connected: bool = True, heartbeat_ago: float = 10
) -> dict[str, Any]:
    """What the trading runtime writes into the status (workloads/trading/node/cluster.py)."""
    report: dict[str, Any] = {
        "tradingState": state.value,
        "brokerConnected": connected,
        "equity": 10004113.39,
        "pnl": 4113.39,
        "drawdown": 0.0002,
        "ordersToday": 12,
        "lastHeartbeatTime": _stamp(heartbeat_ago),
    }
    if halt_reason:
        report["haltReason"] = halt_reason
    return report


def _session(
    report: dict[str, Any] | None, pod: dict[str, Any] | None, halted: bool = False
) -> dict[str, Any]:
    """The whole status: the runtime's report and the operator's part computed from it and the pod."""
    previous = dict(report or {})
    own = session_status.session_status(
        1, halted, trading_name(SESSION), pod_name(SESSION), pod, previous, NOW, SECRETS
    )
    return {**previous, **own}


def session_cases() -> list[HealthCase]:
    """Sessions in every state the operator reports (operator/status/session.py)."""
    ready = _pod({"running": {"startedAt": _stamp(60)}}, ready=True)
    active = _report(TradingState.ACTIVE)
    recovery = json.dumps({"error": "recovery: order 17 is open in the journal but unknown to the broker"})
    crash = _pod({"waiting": {"reason": "CrashLoopBackOff"}}, last=_terminated(1, ""))
    pod = pod_name(SESSION)
    rows: list[Row] = [
        ("healthy_trading", _session(active, ready), "Healthy", "Trading"),
        (
            "healthy_reduce_only",
            _session(
                _report(TradingState.REDUCING, "daily loss reached 80% of breakers.maxDailyLoss"), ready
            ),
            "Healthy",
            "Trading reduce-only: daily loss reached 80% of breakers.maxDailyLoss",
        ),
        (
            "degraded_halted_by_breaker",
            _session(_report(TradingState.HALTED, "drawdown 0.26 breached breakers.maxDrawdown 0.25"), ready),
            "Degraded",
            "Halted: drawdown 0.26 breached breakers.maxDrawdown 0.25",
        ),
        (
            "degraded_halted_by_kill_switch",
            _session(
                _report(TradingState.HALTED, "kill switch: spec.halted set by argocd-controller"), ready, True
            ),
            "Degraded",
            "Halted (KillSwitch): kill switch: spec.halted set by argocd-controller",
        ),
        (
            "progressing_kill_switch_pending",
            _session(active, ready, halted=True),
            "Progressing",
            "spec.halted is set; the runtime has not confirmed it",
        ),
        (
            "degraded_recovery_failed",
            _session(None, _pod(_terminated(3, recovery), phase="Failed")),
            "Degraded",
            "RecoveryFailed: recovery: order 17 is open in the journal but unknown to the broker",
        ),
        (
            "degraded_crash_loop",
            _session(None, crash),
            "Degraded",
            "CrashLoopBackOff: the trading runtime keeps failing (CrashLoopBackOff); the container exited "
            "with code 1 (Error)",
        ),
        (
            "degraded_broker_disconnected",
            _session(_report(TradingState.ACTIVE, connected=False), ready),
            "Degraded",
            "BrokerDisconnected: the runtime has lost its broker connection",
        ),
        (
            "degraded_runtime_silent",
            _session(_report(TradingState.ACTIVE, heartbeat_ago=600), ready),
            "Degraded",
            "RuntimeSilent: the runtime has not reported for 600 s (it reports at least every minute)",
        ),
        (
            "progressing_pod_not_created",
            _session(None, None),
            "Progressing",
            f"waiting for the StatefulSet to create pod {pod}",
        ),
        (
            "progressing_secret_missing",
            _session(None, _pod({"waiting": {"reason": "ContainerCreating"}}, phase="Pending")),
            "Progressing",
            "the trading pod is waiting (ContainerCreating); it mounts the Secrets paper-momentum-signal-token "
            "(spec.strategy.signalApi.tokenSecretRef): a missing Secret or key keeps it here",
        ),
        (
            "progressing_recovering",
            _session(None, _pod({"running": {}})),
            "Progressing",
            "the runtime is starting: journal replay and reconciliation with the broker before it trades",
        ),
        (
            "progressing_waiting_for_policy",
            session_status.waiting_status(
                1,
                "RiskPolicyNotFound",
                "RiskPolicy paper-default (spec.riskPolicyRef) does not exist; the session waits for it",
                None,
                NOW,
            ),
            "Progressing",
            "RiskPolicyNotFound: RiskPolicy paper-default (spec.riskPolicyRef) does not exist; the session "
            "waits for it",
        ),
        (
            "progressing_waiting_after_broker_loss",
            session_status.waiting_status(
                1,
                "RiskPolicyInvalid",
                "RiskPolicy paper-default: spec.limits.maxConcentration: must be at most 1",
                _session(_report(TradingState.ACTIVE, connected=False), ready),
                NOW,
            ),
            "Progressing",
            "RiskPolicyInvalid: RiskPolicy paper-default: spec.limits.maxConcentration: must be at most 1",
        ),
        (
            "degraded_rejected",
            session_status.rejected_status(
                1,
                "InvalidSpec",
                "spec.strategy.signalApi.tokenSecretRef: the signal API needs a token",
                None,
                NOW,
            ),
            "Degraded",
            "InvalidSpec: spec.strategy.signalApi.tokenSecretRef: the signal API needs a token",
        ),
    ]
    cases = rows_to_cases("LiveTradingSession", SESSION, SESSION_SPEC, rows)
    trading = _session(active, ready)
    cases += [
        HealthCase(
            "progressing_no_status",
            _obj("LiveTradingSession", SESSION, SESSION_SPEC, None),
            "Progressing",
            "Waiting for the kubequant operator to take the session",
        ),
        HealthCase(
            "progressing_stale_generation",
            _obj("LiveTradingSession", SESSION, {**SESSION_SPEC, "halted": True}, trading, generation=2),
            "Progressing",
            "Waiting for the kubequant operator to observe generation 2",
        ),
        HealthCase(
            "suspended_stopped",
            _obj("LiveTradingSession", SESSION, SESSION_SPEC, {"observedGeneration": 1, "phase": "Stopped"}),
            "Suspended",
            "the session is stopped",
        ),
        HealthCase(
            "unknown_phase",
            _obj("LiveTradingSession", SESSION, SESSION_SPEC, {"observedGeneration": 1, "phase": "Paused"}),
            "Unknown",
            "Unknown phase Paused (this health check knows Pending, Reconciling, Trading, Halted, Failed, Stopped)",
        ),
    ]
    return cases


POLICY_SPEC: dict[str, Any] = {
    "timezone": "Asia/Shanghai",
    "limits": {"maxOrderNotional": 2000000, "maxConcentration": 0.15},
    "breakers": {"maxDrawdown": 0.25, "action": "halt"},
}


def policy_cases() -> list[HealthCase]:
    """RiskPolicies as the operator reports them (operator/status/policy.py)."""
    used = policy_status.policy_status(1, [SESSION], None, NOW)
    deleting = _obj(
        "RiskPolicy", "paper-default", POLICY_SPEC, policy_status.policy_status(1, [SESSION], used, NOW, True)
    )
    # The operator's finalizer (kopf's persistence setting in operator/main.py) holds the deletion.
    deleting["metadata"].update(deletionTimestamp=_stamp(), finalizers=[f"{API_GROUP}/finalizer"])
    return [
        HealthCase(
            "healthy_in_use",
            _obj("RiskPolicy", "paper-default", POLICY_SPEC, used),
            "Healthy",
            f"used by 1 session(s): {SESSION}",
        ),
        HealthCase(
            "healthy_unused",
            _obj("RiskPolicy", "paper-default", POLICY_SPEC, policy_status.policy_status(1, [], None, NOW)),
            "Healthy",
            "no session uses this policy",
        ),
        HealthCase(
            "progressing_deletion_blocked",
            deleting,
            "Progressing",
            f"deletion waits until no session uses it; used by 1 session(s): {SESSION}",
        ),
        HealthCase(
            "progressing_no_status",
            _obj("RiskPolicy", "paper-default", POLICY_SPEC, None),
            "Progressing",
            "Waiting for the kubequant operator to take the policy",
        ),
        HealthCase(
            "progressing_stale_generation",
            _obj(
                "RiskPolicy",
                "paper-default",
                {**POLICY_SPEC, "breakers": {"maxDrawdown": 0.2, "action": "halt"}},
                used,
                2,
            ),
            "Progressing",
            "Waiting for the kubequant operator to observe generation 2",
        ),
    ]


CASES: dict[str, Callable[[], list[HealthCase]]] = {
    "Backtest": backtest_cases,
    "TrainingJob": training_cases,
    "LiveTradingSession": session_cases,
    "RiskPolicy": policy_cases,
}
