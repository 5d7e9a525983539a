"""Status from a Job and its pods, in the Kubernetes API conventions."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from kubequant.operator.status import backtest as status
from kubequant.operator.status import conditions as core
from kubequant.operator.status import pods as pod_state

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)
RESULTS = {"annualizedReturn": 0.12, "sharpe": 1.5, "maxDrawdown": -0.08, "trades": 10}


def job(**status_: Any) -> dict[str, Any]:
    return {"metadata": {"name": "lgb-backtest"}, "spec": {"suspend": False}, "status": status_}


def pod(message: str, exit_code: int = 0, finished: str = "2026-01-02T03:09:00Z") -> dict[str, Any]:
    terminated = {"exitCode": exit_code, "message": message, "finishedAt": finished, "reason": "Completed"}
    return {"status": {"containerStatuses": [{"state": {"terminated": terminated}}]}}


def conditions(st: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


def test_first_visit_sets_every_condition() -> None:
    st = status.backtest_status(1, "lgb-backtest", job(), [], None, T0)
    assert st["phase"] == "Pending"
    assert conditions(st) == {
        "Accepted": ("True", "JobCreated"),
        "Running": ("False", "PodPending"),
        "Succeeded": ("Unknown", "PodPending"),
        "Failed": ("False", "PodPending"),
    }
    assert all(c["observedGeneration"] == 1 and c["message"] for c in st["conditions"])
    assert st["observedGeneration"] == 1 and st["jobName"] == "lgb-backtest"


def test_running() -> None:
    st = status.backtest_status(
        1, "lgb-backtest", job(active=1, startTime="2026-01-02T03:04:06Z"), [], None, T0
    )
    assert st["phase"] == "Running" and conditions(st)["Running"] == ("True", "PodRunning")
    assert st["startTime"] == "2026-01-02T03:04:06Z"


def test_success_carries_results() -> None:
    done = job(
        succeeded=1,
        completionTime="2026-01-02T03:09:01Z",
        conditions=[{"type": "Complete", "status": "True"}],
    )
    st = status.backtest_status(1, "lgb-backtest", done, [pod(json.dumps(RESULTS))], None, T1)
    assert st["phase"] == "Succeeded"
    assert st["results"] == RESULTS
    assert conditions(st)["Succeeded"] == ("True", "BacktestSucceeded")
    assert conditions(st)["Failed"][0] == "False"
    assert st["completionTime"] == "2026-01-02T03:09:01Z"


def test_completed_without_results_is_a_failure() -> None:
    done = job(conditions=[{"type": "Complete", "status": "True"}])
    st = status.backtest_status(1, "lgb-backtest", done, [pod("")], None, T1)
    assert st["phase"] == "Failed" and conditions(st)["Failed"] == ("True", "ResultsUnreadable")
    assert "results" not in st


def test_failure_names_the_workload_error() -> None:
    failed = job(
        conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "x"}]
    )
    err = {
        "error": "spec.period.end: 2022-12-30 is past the last usable day — fix: end on or before 2022-12-29"
    }
    st = status.backtest_status(1, "lgb-backtest", failed, [pod(json.dumps(err), exit_code=2)], None, T1)
    assert st["phase"] == "Failed"
    assert conditions(st)["Failed"] == ("True", "BackoffLimitExceeded")
    assert st["message"] == err["error"]


def test_deadline_exceeded() -> None:
    failed = job(
        conditions=[
            {
                "type": "Failed",
                "status": "True",
                "reason": "DeadlineExceeded",
                "message": "Job was active longer than specified deadline",
            }
        ]
    )
    st = status.backtest_status(1, "lgb-backtest", failed, [], None, T1)
    assert conditions(st)["Failed"] == ("True", "DeadlineExceeded")
    assert "deadline" in st["message"]


def test_suspended() -> None:
    suspended = {"metadata": {}, "spec": {"suspend": True}, "status": {}}
    assert status.backtest_status(1, "j", suspended, [], None, T0)["phase"] == "Suspended"


def test_transition_time_moves_only_on_change() -> None:
    first = status.backtest_status(1, "j", job(active=1), [], None, T0)
    again = status.backtest_status(1, "j", job(active=1), [], first, T1)
    assert again["conditions"] == first["conditions"]
    done = job(conditions=[{"type": "Complete", "status": "True"}])
    later = status.backtest_status(1, "j", done, [pod(json.dumps(RESULTS))], first, T1)
    by_type = {c["type"]: c for c in later["conditions"]}
    assert by_type["Accepted"]["lastTransitionTime"] == core.timestamp(T0)
    assert by_type["Running"]["lastTransitionTime"] == core.timestamp(T1)


def test_latest_pod_wins() -> None:
    pods = [
        pod('{"error": "old"}', 1, "2026-01-02T03:05:00Z"),
        pod(json.dumps(RESULTS), 0, "2026-01-02T03:08:00Z"),
    ]
    term = pod_state.latest_termination(pods)
    assert term is not None and term.exit_code == 0


def test_rejected_and_waiting() -> None:
    rej = status.rejected_status(2, "InvalidSpec", "spec.period.end: …", None, T0)
    assert rej["phase"] == "Failed" and conditions(rej)["Accepted"] == ("False", "InvalidSpec")
    wait = status.waiting_status(2, "DataVolumeNotFound", "PVC x does not exist yet", None, T0)
    assert wait["phase"] == "Pending" and conditions(wait)["Accepted"] == ("False", "DataVolumeNotFound")
    assert conditions(wait)["Failed"][0] == "False"


def test_conditions_validate_against_the_api() -> None:
    from kubequant.api.backtest import BacktestStatus

    done = job(conditions=[{"type": "Complete", "status": "True"}])
    st = status.backtest_status(1, "j", done, [pod(json.dumps(RESULTS))], None, T1)
    BacktestStatus.model_validate(st)


FAILED_JOB = {
    "conditions": [
        {
            "type": "Failed",
            "status": "True",
            "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit",
        }
    ]
}


def failed_status(message: str, exit_code: int = 1, reason: str = "Error") -> dict[str, Any]:
    p = pod(message, exit_code)
    p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = reason
    return status.backtest_status(1, "lgb-backtest", job(**FAILED_JOB), [p], None, T1)


def everything_shown(st: dict[str, Any]) -> str:
    """Every text of the status that `kubectl get -o yaml` and Events would show."""
    return json.dumps(st)


@pytest.mark.parametrize(
    "output",
    [
        # What FallbackToLogsOnError used to copy from the pod's log into status and Events.
        "Traceback (most recent call last):\nrequests.exceptions.HTTPError: 401 for https://u:hunter2@broker/v2",
        "connecting with AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        '{"results": "not an error object"}',
        "",
    ],
)
def test_anything_but_the_structured_error_is_never_shown(output: str) -> None:
    st = failed_status(output, exit_code=1)
    shown = everything_shown(st)
    for fragment in ("hunter2", "Traceback", "wJalrXUtn", "not an error object"):
        assert fragment not in shown
    # What Kubernetes itself says instead: the Job's condition and the container's exit.
    assert st["message"] == (
        "Job has reached the specified backoff limit; the container exited with code 1 (Error)"
    )


def test_the_structured_error_is_redacted_in_status_and_conditions() -> None:
    err = {
        "error": "DataError: cannot read s3://bucket/bars: token=ghp_abcdefghijklmnopqrstuvwxyz0123456789 refused"
    }
    st = failed_status(json.dumps(err))
    shown = everything_shown(st)
    assert "ghp_abcdefghijklmnopqrstuvwxyz0123456789" not in shown
    assert st["message"] == "DataError: cannot read s3://bucket/bars: token=[REDACTED] refused"
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["message"] == st["message"]


def test_the_structured_error_is_bounded() -> None:
    st = failed_status(json.dumps({"error": "ValueError: " + "x" * 3000}))
    assert len(st["message"]) <= 1024


def test_an_oom_kill_says_so() -> None:
    st = failed_status("", exit_code=137, reason="OOMKilled")
    assert st["message"].endswith("the container exited with code 137 (OOMKilled)")


def _cond(type_: str, status_: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status_, "reason": reason, "message": message}


def test_an_event_per_condition_that_changed_status_or_reason() -> None:
    before = [_cond("Trading", "True", "Active"), _cond("Degraded", "False", "AsExpected")]
    after = [_cond("Trading", "True", "ReduceOnly"), _cond("Degraded", "True", "BrokerDisconnected", "lost")]
    assert core.transition_events(before, after) == [
        ("Normal", "ReduceOnly", "Trading=True"),
        ("Warning", "BrokerDisconnected", "Degraded=True: lost"),
    ]
    # Only the message moved (a heartbeat's age): no Event.
    assert core.transition_events(after, [after[0], {**after[1], "message": "still lost"}]) == []


def test_first_status_is_news_only_when_it_is_trouble() -> None:
    first = [_cond("Accepted", "True", "StatefulSetCreated"), _cond("Halted", "False", "NotHalted")]
    assert core.transition_events(None, first) == []
    first += [_cond("Ready", "True", "PodReady"), _cond("Trading", "True", "Active")]
    refused = [
        _cond(t, "False", "RiskPolicyNotFound", "no policy x") for t in ("Accepted", "Ready", "Trading")
    ]
    # One refusal sets three conditions together: one Event names them all.
    assert core.transition_events(first, refused) == [
        ("Warning", "RiskPolicyNotFound", "Accepted=False, Ready=False, Trading=False: no policy x")
    ]


@pytest.mark.parametrize("kind", ["backtest", "training"])
def test_refused_and_waiting_runs_use_the_kinds_own_phase_names(kind: str) -> None:
    """The shared run statuses write "Failed" and "Pending": both must be phases of each kind's API."""
    import datetime as dt

    from kubequant.api.backtest import BacktestPhase
    from kubequant.api.training import TrainingPhase
    from kubequant.operator.status import backtest, training

    module, phases = {"backtest": (backtest, BacktestPhase), "training": (training, TrainingPhase)}[kind]
    now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    refused = module.rejected_status(3, "InvalidSpec", "bad", None, now)
    waiting = module.waiting_status(3, "DataVolumeNotFound", "later", None, now)
    assert phases(refused["phase"]) is phases.FAILED and phases(refused["phase"]).is_terminal
    assert phases(waiting["phase"]) is phases.PENDING and not phases(waiting["phase"]).is_terminal
    by_type = {c["type"]: c for c in refused["conditions"]}
    assert by_type["Accepted"]["status"] == "False" and by_type["Failed"]["status"] == "True"
    assert {c["type"]: c["status"] for c in waiting["conditions"]}["Succeeded"] == "Unknown"
