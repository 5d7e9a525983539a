"""A TrainingJob's status from its RayJob: every KubeRay deployment and job state, KubeRay's reasons, the
RayCluster's own state while it starts, and the results from the submitter's termination message."""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
from typing import Any

import kopf
import pytest

from kubequant.api.training import TrainingJobStatus
from kubequant.operator import kube, reconciler
from kubequant.operator.config import OperatorConfig
from kubequant.operator.handlers import training as handler
from kubequant.operator.status import training as status
from kubequant.operator.status.conditions import condition

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.UTC)
URI = "pvc://models/research/lgb"
RESULT = {
    "modelUri": "/var/lib/kubequant/artifacts",
    "bestMetric": 0.051,
    "bestParams": {"learning_rate": 0.05, "num_leaves": 64},
    "trials": 8,
    "metrics": {"ic": 0.04, "icir": 0.3, "rankIc": 0.05, "rankIcir": 0.35, "validIc": 0.051, "loss": 0.9},
    "dataQuality": {"missingRatio": {"close": 0.002}, "instruments": 40, "instrumentsMissing": 0},
}


def rayjob(deployment: str | None, job: str | None = None, **extra: Any) -> dict[str, Any]:
    st: dict[str, Any] = {
        "rayClusterName": "lgb-ray-abcde",
        "dashboardURL": "lgb-ray-abcde-head-svc.research.svc.cluster.local:8265",
        "jobId": "lgb-ray-xyz12",
        **extra,
    }
    if deployment is not None:
        st["jobDeploymentStatus"] = deployment
    if job is not None:
        st["jobStatus"] = job
    return {"metadata": {"name": "lgb-ray"}, "status": st}


def submitter(message: str, phase: str = "Succeeded", code: int = 0) -> dict[str, Any]:
    term = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": message}
    term["finishedAt"] = "2026-01-05T11:59:00Z"
    return {"status": {"phase": phase, "containerStatuses": [{"state": {"terminated": term}}]}}


def compute(rj: dict[str, Any] | None, pods: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    out = status.training_status(
        3, "lgb-ray", rj, pods or [], kw.get("uri", URI), kw.get("previous"), kw.get("now", NOW)
    )
    # Whatever is computed must be a valid status (the CRD schema comes from the same model).
    TrainingJobStatus.model_validate(out)
    return out


def conds(st: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


# Every JobDeploymentStatus of KubeRay v1.6 (rayjob_types.go), with the JobStatus it comes with.
DEPLOYMENTS = [
    ("", "", "Pending", "RayJobInitializing"),
    ("Initializing", "", "Pending", "RayJobInitializing"),
    ("Waiting", "", "Pending", "RayJobInitializing"),
    ("Running", "PENDING", "Running", "RayJobSubmitted"),
    ("Running", "RUNNING", "Running", "RayJobRunning"),
    ("Retrying", "FAILED", "Pending", "RayJobRetrying"),
    ("Suspending", "", "Suspended", "RayJobSuspending"),
    ("Suspended", "", "Suspended", "RayJobSuspended"),
    ("Complete", "SUCCEEDED", "Running", "CollectingResults"),  # the submitter has not ended yet
    ("Complete", "STOPPED", "Failed", "RayJobStopped"),
    ("Complete", "FAILED", "Failed", "AppFailed"),
    ("Failed", "FAILED", "Failed", "RayJobFailed"),
    ("ValidationFailed", "", "Failed", "ValidationFailed"),
]


@pytest.mark.parametrize(("deployment", "job", "phase", "reason"), DEPLOYMENTS)
def test_every_deployment_status_maps_to_a_phase(deployment: str, job: str, phase: str, reason: str) -> None:
    st = compute(rayjob(deployment, job, rayClusterStatus={"state": "ready"}))
    assert (st["phase"], conds(st)["Running"][1] if phase != "Succeeded" else "") == (phase, reason)
    assert conds(st)["Accepted"] == ("True", "RayJobCreated")
    terminal = phase in ("Succeeded", "Failed")
    assert ("completionTime" in st) == terminal
    assert conds(st)["Failed"][0] == ("True" if phase == "Failed" else "False")
    assert conds(st)["Running"][0] == ("True" if phase == "Running" else "False")


def test_every_kuberay_value_is_covered() -> None:
    """The tables name every JobDeploymentStatus and JobStatus of KubeRay v1.6, and the test above uses them."""
    assert set(status.DEPLOYMENT_PHASES) == {d for d, *_ in DEPLOYMENTS}
    assert set(status.JOB_STATUSES) >= {j for _, j, *_ in DEPLOYMENTS}
    assert set(status.JOB_STATUSES) == {"", "PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"}


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("SubmissionFailed", "submitterBackoffLimit"),
        ("DeadlineExceeded", "activeDeadlineSeconds"),
        ("PreRunningDeadlineExceeded", "preRunningDeadlineSeconds"),
        ("AppFailed", "failed in the Ray cluster"),
        ("JobDeploymentStatusTransitionGracePeriodExceeded", "could not finish"),
        ("ValidationFailed", "refused the RayJob"),
    ],
)
def test_kuberay_failure_reasons_are_carried_over(reason: str, words: str) -> None:
    st = compute(rayjob("Failed", "FAILED", reason=reason, message="details from KubeRay"))
    assert st["phase"] == "Failed"
    assert conds(st)["Failed"] == ("True", reason) and conds(st)["Succeeded"] == ("False", reason)
    assert words in st["message"] and "details from KubeRay" in st["message"]


def test_the_workloads_own_error_explains_an_app_failure() -> None:
    pods = [submitter(json.dumps({"error": "spec.model: LGBModel failed: no data in train"}), "Failed", 1)]
    st = compute(rayjob("Failed", "FAILED", reason="AppFailed", message="Job entrypoint failed"), pods)
    assert st["message"] == "spec.model: LGBModel failed: no data in train"
    # A deadline is the deadline, whatever the submitter said on its way out.
    st = compute(rayjob("Failed", "RUNNING", reason="DeadlineExceeded", message="deadline"), pods)
    assert "activeDeadlineSeconds" in st["message"]


@pytest.mark.parametrize(
    ("cluster", "reason", "words"),
    [
        (
            {
                "conditions": [
                    {"type": "HeadPodReady", "status": "False", "reason": "HeadPodNotFound", "message": ""},
                ]
            },
            "HeadPodNotFound",
            "head pod",
        ),
        (
            {
                "conditions": [
                    {"type": "HeadPodReady", "status": "True", "reason": "HeadPodRunningAndReady"},
                    {
                        "type": "RayClusterProvisioned",
                        "status": "False",
                        "reason": "RayClusterPodsProvisioning",
                        "message": "",
                    },
                ]
            },
            "RayClusterPodsProvisioning",
            "scheduled",
        ),
        (
            {
                "conditions": [
                    {
                        "type": "ReplicaFailure",
                        "status": "True",
                        "reason": "FailedCreateWorkerPod",
                        "message": 'pods "w" is forbidden: exceeded quota',
                    }
                ]
            },
            "RayClusterReplicaFailure",
            "exceeded quota",
        ),
        ({"state": "failed", "reason": "head pod crashed"}, "RayClusterReplicaFailure", "head pod crashed"),
        ({"reason": "something else"}, "RayClusterNotReady", "something else"),
    ],
)
def test_a_starting_cluster_says_what_it_waits_for(cluster: dict[str, Any], reason: str, words: str) -> None:
    """KubeRay's commonest complaint: a RayJob stuck in Initializing with no feedback."""
    st = compute(rayjob("Initializing", rayClusterStatus=cluster))
    assert st["phase"] == "Pending" and conds(st)["Running"] == ("False", reason)
    assert words in st["message"]


def test_success_carries_the_results_and_the_shared_model_uri() -> None:
    pods = [submitter(json.dumps(RESULT))]
    st = compute(
        rayjob("Complete", "SUCCEEDED", startTime="2026-01-05T11:00:00Z", endTime="2026-01-05T11:58:00Z"),
        pods,
    )
    assert st["phase"] == "Succeeded" and conds(st)["Succeeded"] == ("True", "TrainingSucceeded")
    assert conds(st)["Running"] == ("False", "Finished")
    assert (st["bestMetric"], st["bestParams"], st["trials"]) == (0.051, RESULT["bestParams"], 8)
    assert st["metrics"]["rankIc"] == 0.05
    assert st["dataQuality"] == RESULT["dataQuality"]
    # The operator knows where the volume is; the workload only knew its mount path.
    assert st["modelUri"] == URI
    assert (st["startTime"], st["completionTime"]) == ("2026-01-05T11:00:00Z", "2026-01-05T11:58:00Z")
    assert (st["rayJobName"], st["jobName"], st["rayClusterName"]) == ("lgb-ray", "lgb-ray", "lgb-ray-abcde")
    assert st["dashboardUrl"].endswith(":8265") and st["rayJobId"] == "lgb-ray-xyz12"
    # Without a volume the workload's own location is all there is (a Backtest refuses it as unreachable).
    assert compute(rayjob("Complete", "SUCCEEDED"), pods, uri=None)["modelUri"] == RESULT["modelUri"]


def test_success_without_results_fails_and_a_running_retry_is_waited_for() -> None:
    st = compute(rayjob("Complete", "SUCCEEDED"), [submitter("killed")])
    assert st["phase"] == "Failed" and conds(st)["Failed"] == ("True", "ResultsUnreadable")
    # A first submitter failed, its retry still runs: not that attempt's outcome.
    retry = {"status": {"phase": "Running", "containerStatuses": [{"state": {"running": {}}}]}}
    st = compute(rayjob("Complete", "SUCCEEDED"), [submitter("", "Failed", 1), retry])
    assert st["phase"] == "Running" and conds(st)["Running"] == ("True", "CollectingResults")


def test_a_missing_rayjob_is_pending_and_unknown_states_are_not_guessed() -> None:
    st = compute(None)
    assert st["phase"] == "Pending" and conds(st)["Running"] == ("False", "RayJobNotCreated")
    st = compute(rayjob("SomethingNew"))
    assert st["phase"] == "Pending" and conds(st)["Running"][1] == "UnknownDeploymentStatus"


def test_transition_times_move_only_on_change() -> None:
    first = compute(rayjob("Running", "RUNNING"))
    later = NOW + dt.timedelta(minutes=5)
    again = compute(rayjob("Running", "RUNNING"), previous=first, now=later)
    assert condition(again, "Running") == condition(first, "Running")
    done = compute(
        rayjob("Complete", "SUCCEEDED"), [submitter(json.dumps(RESULT))], previous=again, now=later
    )
    assert condition(done, "Running")["lastTransitionTime"] == "2026-01-05T12:05:00Z"
    assert condition(done, "Accepted")["lastTransitionTime"] == "2026-01-05T12:00:00Z"


def test_refused_and_waiting_runs() -> None:
    refused = status.rejected_status(1, "ArtifactVolumeRequired", "set a volume", None, NOW)
    assert refused["phase"] == "Failed" and conds(refused)["Accepted"] == ("False", "ArtifactVolumeRequired")
    assert conds(refused)["Failed"] == ("True", "ArtifactVolumeRequired")
    waiting = status.waiting_status(1, "ArtifactVolumeNotFound", "no claim", None, NOW)
    assert waiting["phase"] == "Pending" and conds(waiting)["Succeeded"] == (
        "Unknown",
        "ArtifactVolumeNotFound",
    )


# --------------------------------------------------------------------------- the handler's steps


TRAINING_BODY: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "lgb", "namespace": "research", "uid": "u-1", "generation": 1},
    "spec": {
        "dataset": {
            "segments": {
                "train": {"start": "2020-01-01", "end": "2020-12-31"},
                "valid": {"start": "2021-01-01", "end": "2021-06-30"},
                "test": {"start": "2021-07-01", "end": "2021-12-31"},
            }
        }
    },
}


@pytest.fixture
def handler_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {"created": [], "events": []}

    def apply(obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        seen["created"].append(obj)
        return {**obj, "metadata": {**obj["metadata"], "uid": f"uid-{obj['kind']}"}}

    monkeypatch.setattr(kube, "apply", apply)
    monkeypatch.setattr(kube, "job_pods", lambda ns, name, rv=None: [])
    monkeypatch.setattr(kube, "pvc_exists", lambda ns, name: name == "models")
    monkeypatch.setattr(
        reconciler,
        "post_event",
        lambda body, *, type, reason, message="", **_: seen["events"].append((type, reason)),
    )
    return seen


def reconcile(body: dict[str, Any]) -> tuple[dict[str, Any], Exception | None]:
    patch = kopf.Patch()
    try:
        handler.reconcile_training(
            body=kopf.Body(copy.deepcopy(body)),
            patch=patch,
            memo=kopf.Memo(config=OperatorConfig(retry_delay_seconds=3)),
            logger=logging.getLogger(),
        )
    except (kopf.PermanentError, kopf.TemporaryError) as err:
        return dict(patch["status"]), err
    return dict(patch["status"]), None


def with_spec(**spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(TRAINING_BODY)
    body["spec"].update(spec)
    return body


def test_a_run_creates_its_config_map_and_rayjob_and_is_pending(handler_calls: dict[str, list[Any]]) -> None:
    st, err = reconcile(with_spec(ray={"workers": {"replicas": 1}}))
    assert err is None and [o["kind"] for o in handler_calls["created"]] == ["ConfigMap", "RayJob"]
    assert st["phase"] == "Pending" and st["rayJobName"] == "lgb-ray"
    assert {c["kind"] for c in st["children"]} == {"ConfigMap", "RayJob"}
    # No volume: the artifact would be lost with the cluster, and the user is told.
    assert ("Warning", "ArtifactsNotKept") in handler_calls["events"]
    assert ("Normal", "Accepted") in handler_calls["events"]


def test_a_multi_node_run_without_a_volume_is_refused(handler_calls: dict[str, list[Any]]) -> None:
    st, err = reconcile(with_spec(ray={"workers": {"replicas": 2}}))
    assert isinstance(err, kopf.PermanentError) and handler_calls["created"] == []
    assert conds(st)["Accepted"] == ("False", "ArtifactVolumeRequired") and st["phase"] == "Failed"
    assert "spec.output.artifacts.volume" in st["message"]
    # With a shared volume the same run goes ahead, and says nothing about lost artifacts.
    st, err = reconcile(
        with_spec(ray={"workers": {"replicas": 2}}, output={"artifacts": {"volume": {"claimName": "models"}}})
    )
    assert err is None and st["phase"] == "Pending"
    assert ("Warning", "ArtifactsNotKept") not in handler_calls["events"]


def test_a_missing_volume_is_waited_for(handler_calls: dict[str, list[Any]]) -> None:
    st, err = reconcile(with_spec(output={"artifacts": {"volume": {"claimName": "absent"}}}))
    assert isinstance(err, kopf.TemporaryError) and err.delay == 3
    assert conds(st)["Accepted"] == ("False", "ArtifactVolumeNotFound") and handler_calls["created"] == []


def test_a_cluster_without_kuberay_is_waited_for(
    handler_calls: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def apply(obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        if obj["kind"] == "RayJob":
            raise kube.CreateRefused(
                "RayJob",
                "research",
                "lgb-ray",
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        return obj

    monkeypatch.setattr(kube, "apply", apply)
    st, err = reconcile(with_spec(ray={"workers": {"replicas": 1}}))
    assert isinstance(err, kopf.TemporaryError)
    assert conds(st)["Accepted"] == ("False", "KubeRayNotInstalled") and "docs/kuberay.md" in st["message"]
