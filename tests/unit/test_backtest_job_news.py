"""A Job with nothing to report yet costs the operator no API call (issue 9, operator speed)."""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf
import pytest

from kubequant.api import Backtest
from kubequant.manifests import parse_resource
from kubequant.operator import kube, reconciler
from kubequant.operator.builders.backtest import build_backtest_job
from kubequant.operator.config import OperatorConfig
from kubequant.operator.handlers import backtest as handler

pytestmark = pytest.mark.unit

BACKTEST: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "Backtest",
    "metadata": {"name": "fresh", "namespace": "research", "uid": "u-bt", "generation": 1},
    "spec": {"period": {"start": "2022-01-04", "end": "2022-06-30"}, "signal": {"file": {"path": "/s.csv"}}},
}


def the_job(status: dict[str, Any] | None) -> dict[str, Any]:
    bt = parse_resource(copy.deepcopy(BACKTEST))
    assert isinstance(bt, Backtest)
    job = build_backtest_job(bt, OperatorConfig())
    job["metadata"]["uid"] = "u-job"
    if status is not None:
        job["status"] = status
    return job


@pytest.fixture
def api_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def read_custom(plural: str, ns: str, name: str) -> dict[str, Any]:
        calls.append(f"get {name}")
        return {
            **copy.deepcopy(BACKTEST),
            "status": {"children": [{"kind": "Job", "name": "fresh-backtest", "uid": "u-job"}]},
        }

    def job_pods(ns: str, name: str, rv: str | None = None) -> list[dict[str, Any]]:
        calls.append(f"list pods of {name}")
        return []

    monkeypatch.setattr(kube, "read_custom", read_custom)
    monkeypatch.setattr(kube, "job_pods", job_pods)
    monkeypatch.setattr(kube, "patch_custom_status", lambda *a: calls.append("patch status"))
    monkeypatch.setattr(reconciler, "post_event", lambda *a, **k: None)
    return calls


@pytest.mark.parametrize("status", [None, {}], ids=["no-status", "empty-status"])
def test_a_job_event_with_an_empty_status_makes_no_call(api_calls: list[str], status: Any) -> None:
    handler.backtest_job_changed(body=kopf.Body(the_job(status)), type="ADDED", logger=logging.getLogger())
    assert api_calls == []


def test_a_job_event_with_a_status_reads_the_owner_and_its_pods(api_calls: list[str]) -> None:
    job = the_job({"active": 1, "startTime": "2026-01-02T03:04:05Z"})
    handler.backtest_job_changed(body=kopf.Body(job), type="MODIFIED", logger=logging.getLogger())
    assert api_calls[:2] == ["get fresh", "list pods of fresh-backtest"]


def test_a_job_just_created_is_not_asked_for_pods(
    monkeypatch: pytest.MonkeyPatch, api_calls: list[str]
) -> None:
    """The create handler gets the Job back from the create call, status empty: no pod list."""
    monkeypatch.setattr(
        kube, "apply", lambda obj, **_: {**obj, "status": {}} if obj["kind"] == "Job" else obj
    )
    patch = kopf.Patch()
    handler.reconcile_backtest(
        body=kopf.Body(copy.deepcopy(BACKTEST)),
        patch=patch,
        memo=kopf.Memo(config=OperatorConfig()),
        logger=logging.getLogger(),
    )
    assert patch["status"]["phase"] == "Pending"
    assert api_calls == []


def test_an_adopted_job_with_a_status_is_asked_for_pods(
    monkeypatch: pytest.MonkeyPatch, api_calls: list[str]
) -> None:
    monkeypatch.setattr(
        kube, "apply", lambda obj, **_: {**obj, "status": {"active": 1}} if obj["kind"] == "Job" else obj
    )
    handler.reconcile_backtest(
        body=kopf.Body(copy.deepcopy(BACKTEST)),
        patch=kopf.Patch(),
        memo=kopf.Memo(config=OperatorConfig()),
        logger=logging.getLogger(),
    )
    assert api_calls == ["list pods of fresh-backtest"]
