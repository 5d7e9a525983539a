"""The workload policy, operator side: each rule on spec.pod refuses what it must, names the field and
the fix, and lets through what the admin allowed (operator/builders/policy.py)."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import pytest

from kubequant.api import Backtest, LiveTradingSession, TrainingJob
from kubequant.manifests import parse_resource
from kubequant.operator.builders.policy import (
    PolicyViolation,
    WorkloadPolicy,
    image_allowed,
    image_repository,
    parse_quantity,
    policy_violations,
)
from kubequant.operator.config import OperatorConfig

pytestmark = pytest.mark.unit

BASE: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "Backtest",
    "metadata": {"name": "crafted", "namespace": "research", "uid": "u-1"},
    "spec": {
        "period": {"start": "2022-01-04", "end": "2022-06-30"},
        "signal": {"file": {"path": "/data/scores.csv"}},
    },
}
# The defaults the chart renders for its default values.
DEFAULT = OperatorConfig().workload_policy


def backtest(**pod: Any) -> Backtest:
    doc = copy.deepcopy(BASE)
    doc["spec"]["pod"] = pod
    bt = parse_resource(doc)
    assert isinstance(bt, Backtest)
    return bt


def violations(policy: WorkloadPolicy = DEFAULT, **pod: Any) -> list[PolicyViolation]:
    return policy_violations(backtest(**pod), policy)


def only(policy: WorkloadPolicy = DEFAULT, **pod: Any) -> PolicyViolation:
    found = violations(policy, **pod)
    assert len(found) == 1, [v.one_line() for v in found]
    return found[0]


def policy(**fields: Any) -> WorkloadPolicy:
    return WorkloadPolicy.model_validate(fields).resolved("ghcr.io/kubequant/kubequant:0.1.0", None)


# --------------------------------------------------------------------------- the defaults


def test_defaults_allow_the_workload_image_account_and_gpu_pool() -> None:
    assert DEFAULT.allowed_images == ["ghcr.io/kubequant/kubequant"]
    assert DEFAULT.allowed_service_accounts == ["default"]
    assert DEFAULT.allowed_priority_classes == []
    assert DEFAULT.allowed_image_pull_secrets == []
    assert DEFAULT.allowed_toleration_keys == ["nvidia.com/gpu"]
    assert DEFAULT.allowed_node_selector_keys == ["kubequant.io/pool"]
    assert violations() == []
    assert (
        violations(
            image="ghcr.io/kubequant/kubequant:0.2.0",
            serviceAccountName="default",
            nodeSelector={"kubequant.io/pool": "gpu"},
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            resources={
                "requests": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 4},
                "limits": {"nvidia.com/gpu": 4},
            },
        )
        == []
    )


def test_the_review_s_crafted_pod_is_refused_on_every_count() -> None:
    """The security review's spec: every field of it is named, once."""
    found = violations(
        image="evil.example.com/miner",
        serviceAccountName="ci-deployer",
        tolerations=[{"operator": "Exists"}],
        nodeSelector={"node-role.kubernetes.io/control-plane": ""},
        priorityClassName="system-node-critical",
        imagePullSecrets=[{"name": "other-team-registry"}],
        resources={"limits": {"nvidia.com/gpu": 8}},
    )
    assert [v.field for v in found] == [
        "spec.pod.image",
        "spec.pod.imagePullSecrets[0].name",
        "spec.pod.resources.limits.nvidia.com/gpu",
        "spec.pod.nodeSelector.node-role.kubernetes.io/control-plane",
        "spec.pod.tolerations[0].key",
        "spec.pod.serviceAccountName",
        "spec.pod.priorityClassName",
    ]
    assert all("workload policy" in v.message and v.fix for v in found)


def test_the_workload_service_account_is_the_default_allowed_one() -> None:
    cfg = OperatorConfig(workload_service_account="backtester", workload_image="registry.local:5000/kq:1")
    assert cfg.workload_policy.allowed_service_accounts == ["backtester"]
    assert cfg.workload_policy.allowed_images == ["registry.local:5000/kq"]


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    ("reference", "repository"),
    [
        ("python", "docker.io/library/python"),
        ("python:3.11", "docker.io/library/python"),
        ("acme/tools:1", "docker.io/acme/tools"),
        ("index.docker.io/library/python", "docker.io/library/python"),
        ("docker.io/python:3", "docker.io/library/python"),
        ("index.docker.io/python", "docker.io/library/python"),
        ("ghcr.io/kubequant/kubequant:0.1.0", "ghcr.io/kubequant/kubequant"),
        ("ghcr.io/kubequant/kubequant@sha256:" + "a" * 64, "ghcr.io/kubequant/kubequant"),
        ("ghcr.io/kubequant/kubequant:0.1.0@sha256:" + "a" * 64, "ghcr.io/kubequant/kubequant"),
        ("localhost:5000/kq", "localhost:5000/kq"),
        ("localhost/kq:dev", "localhost/kq"),
        ("registry.local:5000/team/kq:2", "registry.local:5000/team/kq"),
    ],
)
def test_image_repository_resolves_like_the_runtime(reference: str, repository: str) -> None:
    assert image_repository(reference) == repository


def test_an_image_entry_is_a_repository_or_a_prefix_of_whole_names() -> None:
    entries = ["ghcr.io/kubequant/kubequant", "ghcr.io/acme/", "docker.io/library/python"]
    assert image_allowed("ghcr.io/kubequant/kubequant:9", entries)
    assert not image_allowed("ghcr.io/kubequant/kubequant-evil:1", entries)
    assert not image_allowed("ghcr.io/kubequant/kubequant/sub:1", entries)
    assert image_allowed("ghcr.io/acme/anything/below:1", entries)
    assert not image_allowed("ghcr.io/acmeevil/x:1", entries)
    assert image_allowed("python:3.11", entries)
    assert not image_allowed("evil.example.com/python:3.11", entries)


def test_image_outside_the_allowed_repositories_is_refused() -> None:
    v = only(image="evil.example.com/miner:latest")
    assert v.field == "spec.pod.image"
    assert "evil.example.com/miner" in v.message and "(allowed: ghcr.io/kubequant/kubequant)" in v.message
    assert "workloadPolicy.allowedImages" in v.fix
    assert violations(policy(allowedImages=["evil.example.com/"]), image="evil.example.com/miner") == []


def test_image_entries_must_be_fully_qualified() -> None:
    for bad in ("python", "acme/tools", "ghcr.io", "ghcr.io/Acme/x", "https://ghcr.io/x", "ghcr.io//x"):
        with pytest.raises(ValueError):
            WorkloadPolicy.model_validate({"allowedImages": [bad]})
    WorkloadPolicy.model_validate(
        {"allowedImages": ["ghcr.io/", "localhost:5000/a/b", "docker.io/library/python"]}
    )


# --------------------------------------------------------------------------- identity and priority


def test_service_account_outside_the_list_is_refused() -> None:
    v = only(serviceAccountName="ci-deployer")
    assert v.field == "spec.pod.serviceAccountName" and "ci-deployer" in v.message
    assert "allowedServiceAccounts" in v.fix
    assert violations(policy(allowedServiceAccounts=["ci-deployer"]), serviceAccountName="ci-deployer") == []


def test_priority_class_is_refused_unless_listed() -> None:
    v = only(priorityClassName="system-node-critical")
    assert v.field == "spec.pod.priorityClassName" and "(allowed: none)" in v.message
    assert violations(policy(allowedPriorityClasses=["research-low"]), priorityClassName="research-low") == []


def test_pull_secret_is_refused_unless_listed() -> None:
    v = only(imagePullSecrets=[{"name": "regcred"}])
    assert v.field == "spec.pod.imagePullSecrets[0].name" and "(allowed: none)" in v.message
    found = violations(
        policy(allowedImagePullSecrets=["regcred"]),
        imagePullSecrets=[{"name": "regcred"}, {"name": "other-team"}],
    )
    assert [x.field for x in found] == ["spec.pod.imagePullSecrets[1].name"]


# --------------------------------------------------------------------------- placement


def test_toleration_without_key_tolerates_everything_and_is_always_refused() -> None:
    v = only(tolerations=[{"operator": "Exists"}])
    assert v.field == "spec.pod.tolerations[0].key" and "every taint" in v.message
    anything = policy(allowedTolerationKeys=["a", "b", "nvidia.com/gpu"])
    assert [x.field for x in violations(anything, tolerations=[{"operator": "Exists"}])] == [
        "spec.pod.tolerations[0].key"
    ]


def test_toleration_of_another_taint_is_refused() -> None:
    v = only(
        tolerations=[
            {"key": "nvidia.com/gpu", "operator": "Exists"},
            {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"},
        ]
    )
    assert v.field == "spec.pod.tolerations[1].key" and "control-plane" in v.message
    assert "allowedTolerationKeys" in v.fix


def test_node_selector_key_outside_the_list_is_refused() -> None:
    v = only(nodeSelector={"kubequant.io/pool": "gpu", "kubernetes.io/hostname": "cp-0"})
    assert v.field == "spec.pod.nodeSelector.kubernetes.io/hostname"
    assert "allowedNodeSelectorKeys" in v.fix
    relaxed = policy(allowedNodeSelectorKeys=["kubequant.io/pool", "kubernetes.io/hostname"])
    assert violations(relaxed, nodeSelector={"kubernetes.io/hostname": "cp-0"}) == []


# --------------------------------------------------------------------------- resources


@pytest.mark.parametrize(
    ("part", "name", "quantity"),
    [
        ("limits", "nvidia.com/gpu", 8),
        ("limits", "nvidia.com/gpu", "5"),
        ("requests", "cpu", "16500m"),
        ("limits", "cpu", 17),
        ("requests", "memory", "65Gi"),
        ("limits", "memory", "70G"),
        ("requests", "ephemeral-storage", "1Ti"),
    ],
)
def test_resources_above_the_ceiling_are_refused(part: str, name: str, quantity: int | str) -> None:
    v = only(resources={part: {name: quantity}})
    assert v.field == f"spec.pod.resources.{part}.{name}"
    assert "ceiling" in v.message and "maxResources" in v.fix


@pytest.mark.parametrize("quantity", ["16", 16, "16000m", "64Gi"])
def test_resources_at_the_ceiling_pass(quantity: int | str) -> None:
    name = "memory" if quantity == "64Gi" else "cpu"
    assert violations(resources={"requests": {name: quantity}, "limits": {name: quantity}}) == []


def test_a_resource_without_a_ceiling_may_not_be_asked_for() -> None:
    v = only(resources={"limits": {"amd.com/gpu": 1}})
    assert v.field == "spec.pod.resources.limits.amd.com/gpu" and "not allowed" in v.message
    assert violations(policy(maxResources={"amd.com/gpu": 2}), resources={"limits": {"amd.com/gpu": 1}}) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        (2, Decimal(2)),
        ("4Gi", Decimal(4 * 2**30)),
        ("1e3", Decimal(1000)),
        ("1E", Decimal(10**18)),
        ("2k", Decimal(2000)),
        ("1.5", Decimal("1.5")),
        (".5Mi", Decimal(2**19)),
    ],
)
def test_parse_quantity(text: int | str, value: Decimal) -> None:
    assert parse_quantity(text) == value


def test_policy_quantities_are_checked_when_loaded() -> None:
    with pytest.raises(ValueError):
        WorkloadPolicy.model_validate({"maxResources": {"cpu": "lots"}})


# --------------------------------------------------------------------------- configuration


def test_policy_comes_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "KUBEQUANT_WORKLOAD_POLICY",
        json.dumps(
            {
                "allowedImages": ["registry.example.com/"],
                "allowedModules": ["acme.research"],
                "maxResources": {"cpu": "2"},
            }
        ),
    )
    cfg = OperatorConfig()
    assert cfg.workload_policy.allowed_images == ["registry.example.com/"]
    assert cfg.workload_policy.allowed_service_accounts == ["default"]
    assert cfg.workload_policy.max_resources == {"cpu": "2"}
    assert cfg.allowed_modules() == ("qlib", "kubequant", "lightgbm", "acme.research")


def test_a_bad_module_prefix_in_the_policy_stops_the_operator() -> None:
    for bad in ("../x", ".qlib", "acme..x", "acme/x", "x.py/"):
        with pytest.raises(ValueError, match="not a module prefix"):
            WorkloadPolicy.model_validate({"allowedModules": [bad]})


# --------------------------------------------------------------------------- every kind


def test_the_check_finds_the_pod_options_of_every_kind() -> None:
    """TrainingJob and LiveTradingSession reuse the same check on their own spec.pod."""
    segments = {
        "train": {"start": "2020-01-01", "end": "2021-06-30"},
        "valid": {"start": "2021-07-01", "end": "2021-12-31"},
        "test": {"start": "2022-01-01", "end": "2022-12-29"},
    }
    training = parse_resource(
        {
            "apiVersion": "kubequant.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "t"},
            "spec": {
                "dataset": {"segments": segments},
                "pod": {"priorityClassName": "system-cluster-critical"},
            },
        }
    )
    session = parse_resource(
        {
            "apiVersion": "kubequant.io/v1alpha1",
            "kind": "LiveTradingSession",
            "metadata": {"name": "s"},
            "spec": {
                "account": "a",
                "riskPolicyRef": {"name": "p"},
                "pod": {"image": "evil.example.com/x:1"},
            },
        }
    )
    assert isinstance(training, TrainingJob) and isinstance(session, LiveTradingSession)
    assert [v.field for v in policy_violations(training, DEFAULT)] == ["spec.pod.priorityClassName"]
    assert [v.field for v in policy_violations(session, DEFAULT)] == ["spec.pod.image"]


def test_one_line_reads_like_every_kubequant_error() -> None:
    v = only(serviceAccountName="ci-deployer")
    assert v.one_line().startswith("spec.pod.serviceAccountName: ServiceAccount ci-deployer is not allowed")
    assert " — fix: " in v.one_line()


def training_job(ray: dict[str, Any], pod: dict[str, Any] | None = None) -> TrainingJob:
    segments = {
        "train": {"start": "2020-01-01", "end": "2021-06-30"},
        "valid": {"start": "2021-07-01", "end": "2021-12-31"},
        "test": {"start": "2022-01-01", "end": "2022-12-29"},
    }
    spec: dict[str, Any] = {"dataset": {"segments": segments}, "ray": ray}
    if pod is not None:
        spec["pod"] = pod
    job = parse_resource(
        {
            "apiVersion": "kubequant.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "t"},
            "spec": spec,
        }
    )
    assert isinstance(job, TrainingJob)
    return job


def test_a_trainingjobs_ray_pods_are_held_to_the_same_ceilings() -> None:
    """The Ray head's and workers' resources and each worker's GPUs bypassed spec.pod's check."""
    huge = {"requests": {"cpu": "500"}, "limits": {"cpu": "500", "example.com/fpga": "1"}}
    job = training_job({"headResources": huge, "workers": {"resources": huge, "gpusPerWorker": 16}})
    found = {v.field: v for v in policy_violations(job, DEFAULT)}
    assert set(found) == {
        "spec.ray.headResources.requests.cpu",
        "spec.ray.headResources.limits.cpu",
        "spec.ray.headResources.limits.example.com/fpga",
        "spec.ray.workers.resources.requests.cpu",
        "spec.ray.workers.resources.limits.cpu",
        "spec.ray.workers.resources.limits.example.com/fpga",
        "spec.ray.workers.gpusPerWorker",
    }
    assert "above the workload policy's ceiling" in found["spec.ray.workers.resources.limits.cpu"].message
    assert "not allowed" in found["spec.ray.headResources.limits.example.com/fpga"].message
    assert "16 GPUs per pod" in found["spec.ray.workers.gpusPerWorker"].message
    # Within the ceilings, nothing; spec.pod's resources are still reported once, at spec.pod.
    fine = {"requests": {"cpu": "2"}, "limits": {"cpu": "2"}}
    job = training_job({"headResources": fine, "workers": {"resources": fine, "gpusPerWorker": 1}})
    assert policy_violations(job, DEFAULT) == []
    job = training_job({}, pod={"resources": {"limits": {"cpu": "500"}}})
    assert [v.field for v in policy_violations(job, DEFAULT)] == ["spec.pod.resources.limits.cpu"]
    # A policy without GPUs refuses any.
    no_gpus = policy(maxResources={"cpu": "8", "memory": "32Gi"})
    job = training_job({"workers": {"gpusPerWorker": 1}})
    assert [v.field for v in policy_violations(job, no_gpus)] == ["spec.ray.workers.gpusPerWorker"]
