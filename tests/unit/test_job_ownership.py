"""Only the Job the operator made speaks for a Backtest: a look-alike that anyone able to create Jobs
could make (the label, the owner's uid in an owner reference) neither writes status nor is adopted.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from kubernetes import client

from kubequant.api import Backtest
from kubequant.manifests import parse_resource
from kubequant.operator import kube, reconciler
from kubequant.operator.builders.backtest import build_backtest_job
from kubequant.operator.builders.common import controller_reference
from kubequant.operator.config import OperatorConfig
from kubequant.operator.handlers import backtest as handler

pytestmark = pytest.mark.unit

BACKTEST: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "Backtest",
    "metadata": {"name": "victim", "namespace": "research", "uid": "u-victim", "generation": 1},
    "spec": {"period": {"start": "2022-01-04", "end": "2022-06-30"}, "signal": {"file": {"path": "/s.csv"}}},
}
RESULTS = {"annualizedReturn": 9.99, "sharpe": 42.0, "maxDrawdown": 0.0, "trades": 1}


JOB_UID = "u-job-1"
# The Backtest as the operator left it: the uid of the Job it created recorded in status.
RECORDED = {
    **BACKTEST,
    "status": {"children": [{"kind": "Job", "name": "victim-backtest", "uid": JOB_UID}]},
}


def genuine_job() -> dict[str, Any]:
    """The operator's Job as the API server returns it (kind and uid set)."""
    bt = parse_resource(copy.deepcopy(BACKTEST))
    assert isinstance(bt, Backtest)
    job = build_backtest_job(bt, OperatorConfig())
    job["metadata"]["uid"] = JOB_UID
    return job


def completed(job: dict[str, Any]) -> dict[str, Any]:
    return {**job, "status": {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}}


def forged(name: str | None = None, **owner_changes: Any) -> dict[str, Any]:
    """A user's Job made to look like the operator's: same label and owner uid, results of its choosing."""
    job = copy.deepcopy(genuine_job())
    if name is not None:
        job["metadata"]["name"] = name
    ref = job["metadata"]["ownerReferences"][0]
    for key, value in owner_changes.items():
        if value is None:
            ref.pop(key, None)
        else:
            ref[key] = value
    return completed(job)


# --------------------------------------------------------------------------- controller_reference


def test_the_builders_own_reference_is_the_controller() -> None:
    ref = controller_reference(genuine_job(), "Backtest")
    assert ref is not None and (ref["name"], ref["uid"]) == ("victim", "u-victim")


@pytest.mark.parametrize(
    "changes",
    [
        {"controller": None},
        {"controller": False},
        {"blockOwnerDeletion": None},
        {"blockOwnerDeletion": False},
        {"kind": "TrainingJob"},
        {"apiVersion": "kubequant.io/v1"},
        {"apiVersion": "evil.example.com/v1alpha1"},
    ],
)
def test_a_reference_not_as_the_operator_writes_it_is_not_a_controller(changes: dict[str, Any]) -> None:
    assert controller_reference(forged(**changes), "Backtest") is None


def test_no_references_no_controller() -> None:
    assert controller_reference({"metadata": {}}, "Backtest") is None
    assert controller_reference({"metadata": {"ownerReferences": None}}, "Backtest") is None


# --------------------------------------------------------------------------- the Job-event handler


class Cluster:
    def __init__(self) -> None:
        self.reads: list[str] = []
        self.status_patches: list[dict[str, Any]] = []


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Cluster:
    rec = Cluster()

    def read_custom(plural: str, ns: str, name: str) -> dict[str, Any] | None:
        rec.reads.append(name)
        return copy.deepcopy(RECORDED) if name == "victim" else None

    def pods(ns: str, job_name: str, rv: str | None = None) -> list[dict[str, Any]]:
        term = {"exitCode": 0, "message": json.dumps(RESULTS), "finishedAt": "2026-01-02T03:09:00Z"}
        return [{"status": {"containerStatuses": [{"state": {"terminated": term}}]}}]

    monkeypatch.setattr(kube, "read_custom", read_custom)
    monkeypatch.setattr(kube, "job_pods", pods)
    monkeypatch.setattr(
        kube, "patch_custom_status", lambda plural, ns, name, st: rec.status_patches.append(st)
    )
    monkeypatch.setattr(reconciler, "post_event", lambda *a, **k: None)
    return rec


def job_event(job: dict[str, Any]) -> None:
    handler.backtest_job_changed(body=kopf.Body(job), type="MODIFIED", logger=logging.getLogger())


@pytest.mark.parametrize(
    "job",
    [
        # Another name, even with a controller reference: the operator's Job has a deterministic one.
        forged(name="victim-results"),
        # The right name but only a plain owner reference (what a user can always write).
        forged(controller=False),
        forged(controller=None, blockOwnerDeletion=None),
        # A reference of another kind or API version that happens to carry the uid.
        forged(kind="TrainingJob"),
        forged(apiVersion="kubequant.io/v1beta1"),
    ],
    ids=["other-name", "not-controller", "plain-owner", "other-kind", "other-version"],
)
def test_a_look_alike_job_does_not_touch_the_backtest(cluster: Cluster, job: dict[str, Any]) -> None:
    job_event(job)
    assert cluster.status_patches == []
    assert cluster.reads == []  # not even read: nothing about it is trusted


def test_a_look_alike_with_another_owner_uid_is_ignored(cluster: Cluster) -> None:
    job_event(forged(uid="u-someone-else"))
    assert cluster.status_patches == []


def test_a_replaced_job_with_the_operators_name_and_reference_is_ignored(cluster: Cluster) -> None:
    """Where owner references are not enforced, a user who deleted the Job can recreate one exactly
    like it; its uid is not the one recorded when the operator created the Job."""
    job = completed(genuine_job())
    job["metadata"]["uid"] = "u-recreated"
    job_event(job)
    assert cluster.status_patches == []


def test_the_operators_own_job_writes_the_results(cluster: Cluster) -> None:
    job_event(completed(genuine_job()))
    (st,) = cluster.status_patches
    assert st["phase"] == "Succeeded" and st["jobName"] == "victim-backtest"
    assert st["results"]["sharpe"] == 42.0


# --------------------------------------------------------------------------- adoption


class FakeResponse:
    def __init__(self, status: int, payload: Any) -> None:
        self.status, self.reason = status, "x"
        self.data = json.dumps(payload).encode()
        self.headers: dict[str, str] = {}
        self.response = self

    def read(self) -> bytes:
        return self.data

    def getheaders(self) -> dict[str, str]:
        return self.headers


@pytest.fixture
def existing(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The object the API server already has under the child's name (every create answers 409)."""
    state: dict[str, Any] = {}

    def call_api(_client: Any, method: str, url: str, *args: Any, **kwargs: Any) -> FakeResponse:
        if method == "POST":
            return FakeResponse(409, {"reason": "AlreadyExists"})
        return FakeResponse(200, state["object"])

    kube.api.cache_clear()
    monkeypatch.setattr(client.ApiClient, "call_api", call_api)
    yield state
    kube.api.cache_clear()


def test_a_pre_created_look_alike_is_not_adopted(existing: dict[str, Any]) -> None:
    """A user who creates the Job's name first, with a plain owner reference, gets a NameConflict."""
    existing["object"] = forged(controller=False)
    with pytest.raises(kube.AdoptionConflict, match="not controlled by this object"):
        kube.create_or_adopt(genuine_job())


def test_the_operators_own_child_is_adopted_after_a_restart(existing: dict[str, Any]) -> None:
    existing["object"] = completed(genuine_job())
    assert kube.create_or_adopt(genuine_job())["metadata"]["name"] == "victim-backtest"


def test_a_replaced_child_is_not_adopted(existing: dict[str, Any]) -> None:
    """Its controller reference is right, but its uid is not the one the operator recorded."""
    existing["object"] = {
        **completed(genuine_job()),
        "metadata": {**genuine_job()["metadata"], "uid": "u-new"},
    }
    with pytest.raises(kube.AdoptionConflict, match="deleted and replaced"):
        kube.apply(genuine_job(), recorded_uid=JOB_UID)
    assert kube.apply(genuine_job(), recorded_uid="u-new")["metadata"]["uid"] == "u-new"
