"""examples/gitops read as Argo CD reads it: sync waves put the CRDs before the operator before the
resources, every Application points at something in this repository and stays inside its project,
and research/ holds valid kubequant objects in the order they depend on each other.
(tests/e2e/test_gitops_examples.py has the API server validate them against Argo CD's CRDs.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubequant.manifests import parse_resource

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
GITOPS = REPO / "examples" / "gitops"
REPO_URL = "https://github.com/kubequant/kubequant.git"
WAVE = "argocd.argoproj.io/sync-wave"


def documents(folder: Path, recursive: bool = True) -> list[dict[str, Any]]:
    files = sorted(folder.rglob("*.yaml") if recursive else folder.glob("*.yaml"))
    return [doc for path in files for doc in yaml.safe_load_all(path.read_text()) if doc]


def wave(obj: dict[str, Any]) -> int:
    """Argo CD's sync wave of an object: its annotation, 0 without one."""
    return int(((obj.get("metadata") or {}).get("annotations") or {}).get(WAVE, "0"))


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


APPS = by_kind(documents(GITOPS / "apps"), "Application")
ROOT = by_kind(documents(GITOPS, recursive=False), "Application")["kubequant"]
PROJECT = by_kind(documents(GITOPS, recursive=False), "AppProject")["kubequant"]
RESEARCH = documents(GITOPS / "research")


def app_with_path(path: str) -> dict[str, Any]:
    found = [a for a in APPS.values() if a["spec"]["source"]["path"] == path]
    assert len(found) == 1, f"one Application for {path}, found {len(found)}"
    return found[0]


CRDS = app_with_path("charts/kubequant/crds")
OPERATOR = app_with_path("charts/kubequant")
MONITORING = app_with_path("manifests/monitoring")
OBJECTS = app_with_path("examples/gitops/research")


def test_crds_then_operator_then_the_resources() -> None:
    assert wave(CRDS) < wave(OPERATOR) < wave(OBJECTS)
    assert wave(CRDS) < wave(MONITORING) < wave(OBJECTS)
    # The root syncs apps/ and nothing else; apps/ holds every Application.
    assert ROOT["spec"]["source"]["path"] == "examples/gitops/apps"
    assert set(APPS) == {
        CRDS["metadata"]["name"],
        OPERATOR["metadata"]["name"],
        MONITORING["metadata"]["name"],
        OBJECTS["metadata"]["name"],
    }


def test_the_crds_application_owns_every_kubequant_crd_and_applies_them_server_side() -> None:
    folder = REPO / CRDS["spec"]["source"]["path"]
    kinds = {
        crd["spec"]["names"]["kind"]
        for crd in documents(folder)
        if crd["kind"] == "CustomResourceDefinition" and crd["spec"]["group"] == "kubequant.io"
    }
    assert kinds == {"Backtest", "TrainingJob", "LiveTradingSession", "RiskPolicy"}
    policy = CRDS["spec"]["syncPolicy"]
    assert "ServerSideApply=true" in policy["syncOptions"]
    assert policy["automated"]["prune"] is False  # a pruned CRD deletes every object of its kind
    assert "finalizers" not in CRDS["metadata"]  # deleting the Application leaves the CRDs
    # The operator's chart leaves its crds/ to that Application.
    assert OPERATOR["spec"]["source"]["helm"]["skipCrds"] is True


@pytest.mark.parametrize("name", [*sorted(APPS), "kubequant"])
def test_every_application_points_into_this_repository_and_its_project(name: str) -> None:
    app = APPS.get(name) or ROOT
    source, dest = app["spec"]["source"], app["spec"]["destination"]
    assert app["metadata"]["namespace"] == "argocd"
    assert app["spec"]["project"] == PROJECT["metadata"]["name"]
    assert source["repoURL"] in PROJECT["spec"]["sourceRepos"] and source["repoURL"] == REPO_URL
    assert (REPO / source["path"]).is_dir(), source["path"]
    if "helm" in source:
        chart = yaml.safe_load((REPO / source["path"] / "Chart.yaml").read_text())
        assert chart["apiVersion"] == "v2"
    allowed = {(d["server"], d["namespace"]) for d in PROJECT["spec"]["destinations"]}
    if "namespace" in dest:
        assert (dest["server"], dest["namespace"]) in allowed


def test_namespaces_exist_before_the_operator_needs_them() -> None:
    namespaces = by_kind(documents(GITOPS / "apps"), "Namespace")
    values = OPERATOR["spec"]["source"]["helm"]["valuesObject"]
    needed = {OPERATOR["spec"]["destination"]["namespace"], *values["watchNamespaces"]}
    assert needed <= set(namespaces)
    assert all(wave(namespaces[n]) < wave(OPERATOR) for n in needed)
    assert OBJECTS["spec"]["destination"]["namespace"] in values["watchNamespaces"]
    # Every namespace an Application deploys into exists or is created by it.
    for app in APPS.values():
        ns = app["spec"]["destination"].get("namespace")
        creates = "CreateNamespace=true" in (app["spec"].get("syncPolicy") or {}).get("syncOptions", [])
        assert ns is None or ns in namespaces or creates, app["metadata"]["name"]


def test_the_project_allows_the_cluster_scoped_kinds_the_applications_create() -> None:
    allowed = {(k["group"], k["kind"]) for k in PROJECT["spec"]["clusterResourceWhitelist"]}
    assert ("apiextensions.k8s.io", "CustomResourceDefinition") in allowed
    assert ("", "Namespace") in allowed
    # The operator chart's cluster-scoped objects (templates/rbac.yaml, admission-policy.yaml, peering.yaml).
    templates = "".join(p.read_text() for p in (REPO / "charts/kubequant/templates").glob("*.yaml"))
    for group, kind in (
        ("rbac.authorization.k8s.io", "ClusterRole"),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding"),
        ("kopf.dev", "ClusterKopfPeering"),
    ):
        assert f"kind: {kind}\n" in templates and (group, kind) in allowed


def test_research_objects_are_valid_and_ordered_by_what_they_wait_for() -> None:
    kubequant = [d for d in RESEARCH if d["apiVersion"].startswith("kubequant.io/")]
    for doc in kubequant:
        parse_resource(doc)  # the API models' validation, as `kubequant validate` does
    policies = by_kind(RESEARCH, "RiskPolicy")
    trainings = by_kind(RESEARCH, "TrainingJob")
    claims = by_kind(RESEARCH, "PersistentVolumeClaim")
    sessions = by_kind(RESEARCH, "LiveTradingSession")
    backtests = by_kind(RESEARCH, "Backtest")
    assert policies and trainings and sessions and backtests
    for session in sessions.values():
        policy = policies[session["spec"]["riskPolicyRef"]["name"]]
        assert wave(policy) < wave(session)
    for backtest in backtests.values():
        model = backtest["spec"]["signal"].get("modelRef")
        if model:
            assert wave(trainings[model["name"]]) < wave(backtest)
    for training in trainings.values():
        claim = training["spec"]["output"]["artifacts"]["volume"]["claimName"]
        assert wave(claims[claim]) <= wave(training)
    for doc in RESEARCH:
        assert "namespace" not in doc["metadata"]  # the Application's destination decides


def test_self_heal_never_undoes_the_kill_switch() -> None:
    # `kubectl patch lts ... halted: true` must hold: Argo CD ignores spec.halted of sessions in its
    # diff and, with RespectIgnoreDifferences, leaves the live value on every (self-heal) sync.
    spec = OBJECTS["spec"]
    ignored = [
        d
        for d in spec["ignoreDifferences"]
        if (d["group"], d["kind"]) == ("kubequant.io", "LiveTradingSession")
    ]
    assert ignored and "/spec/halted" in ignored[0]["jsonPointers"]
    assert "RespectIgnoreDifferences=true" in spec["syncPolicy"]["syncOptions"]
    assert all("halted" not in s["spec"] for s in by_kind(RESEARCH, "LiveTradingSession").values())
    # Deleting the Application does not delete (stop) the sessions it synced.
    assert "finalizers" not in OBJECTS["metadata"]
