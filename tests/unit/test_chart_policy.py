"""The chart's workload policy (values.workloadPolicy): the operator's KUBEQUANT_WORKLOAD_POLICY and the
ValidatingAdmissionPolicy are rendered from the same lists, the defaults equal the operator's own,
and the values schema refuses entries the operator would refuse. Offline: `helm template`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_chart import (  # noqa: F401  (helm_home: the autouse fixture that keeps helm off $HOME)
    CHART,
    NAMESPACE,
    RELEASE,
    env_of,
    helm,
    helm_home,
    objects,
    one,
    render,
)

from kubequant.operator.builders.policy import WorkloadPolicy, image_repository
from kubequant.operator.config import OperatorConfig

pytestmark = pytest.mark.unit

CHART_ARGS = ("template", RELEASE, str(CHART), "--namespace", NAMESPACE)


def operator_policy(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return json.loads(env_of(container)["KUBEQUANT_WORKLOAD_POLICY"])  # type: ignore[no-any-return]


def variables(docs: list[dict[str, Any]]) -> dict[str, str]:
    vap = one(docs, "ValidatingAdmissionPolicy")
    return {v["name"]: v["expression"] for v in vap["spec"]["variables"]}


def cel_literal(expression: str) -> Any:
    """A variable rendered from values: a CEL list or map literal, which is also JSON."""
    return json.loads(expression)


def test_default_policy_is_the_operator_s_default() -> None:
    docs = render()
    rendered = operator_policy(docs)
    # The operator with the chart's env and with no policy at all enforce the same thing.
    from_env = WorkloadPolicy.model_validate(rendered).resolved("ignored", None)
    built_in = OperatorConfig(workload_image="ghcr.io/kubequant/kubequant:0.1.0").workload_policy
    assert from_env.model_dump() == {
        **built_in.model_dump(),
        "max_resources": {k: str(v) for k, v in built_in.max_resources.items()},
    }
    assert rendered["allowedImages"] == ["ghcr.io/kubequant/kubequant"]
    assert rendered["allowedServiceAccounts"] == ["default"]
    assert rendered["allowedPriorityClasses"] == [] and rendered["allowedImagePullSecrets"] == []
    assert rendered["allowedTolerationKeys"] == ["nvidia.com/gpu"]
    assert rendered["allowedNodeSelectorKeys"] == ["kubequant.io/pool"]
    assert rendered["maxResources"]["nvidia.com/gpu"] == "4"


def test_admission_policy_renders_the_same_lists() -> None:
    docs = render()
    rendered = operator_policy(docs)
    found = variables(docs)
    for key in (
        "allowedImages",
        "allowedServiceAccounts",
        "allowedPriorityClasses",
        "allowedTolerationKeys",
        "allowedNodeSelectorKeys",
        "allowedImagePullSecrets",
        "maxResources",
    ):
        assert cel_literal(found[key]) == rendered[key], key
    assert cel_literal(found["allowedModules"]) == ["qlib", "kubequant", "lightgbm"]


def test_admission_policy_matches_the_kinds_with_a_pod_and_is_bound() -> None:
    docs = render()
    vap = one(docs, "ValidatingAdmissionPolicy")
    assert vap["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert vap["metadata"]["name"] == "kubequant-system-kq-kubequant-workload-policy"
    assert vap["spec"]["failurePolicy"] == "Fail"
    (rule,) = vap["spec"]["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["kubequant.io"] and rule["operations"] == ["CREATE", "UPDATE"]
    assert sorted(rule["resources"]) == ["backtests", "livetradingsessions", "trainingjobs"]
    # Metadata patches (kopf's annotations) and a session's kill switch on objects admitted earlier
    # are never judged again: only a new object, or a change of what the policy looks at.
    (condition,) = vap["spec"]["matchConditions"]
    for field in ("pod", "signal", "strategy", "executor", "dataset", "model", "ray"):
        assert f"object.spec.{field} != oldObject.spec.{field}" in condition["expression"], field
    assert "halted" not in condition["expression"]
    validations = vap["spec"]["validations"]
    assert len(validations) == 11
    for v in validations:
        assert v["reason"] == "Forbidden"
        assert "workload policy" in v["messageExpression"] and "workloadPolicy" in v["messageExpression"]
    fields = " ".join(v["messageExpression"] for v in validations)
    for field in (
        "spec.pod.image",
        "spec.pod.imagePullSecrets",
        "spec.pod.resources.requests.",
        "spec.pod.resources.limits.",
        "spec.pod.nodeSelector.",
        "spec.pod.tolerations",
        "spec.pod.serviceAccountName",
        "spec.pod.priorityClassName",
        "spec.ray.headResources.",
        "spec.ray.workers.resources.",
        "spec.ray.workers.gpusPerWorker",
    ):
        assert field in fields or field in str(vap["spec"]["variables"]), field
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == vap["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert "matchResources" not in binding["spec"], "every namespace by default"


def test_admission_policy_can_be_turned_off() -> None:
    docs = render("workloadPolicy.admission.enabled=false")
    assert not objects(docs, "ValidatingAdmissionPolicy") and not objects(
        docs, "ValidatingAdmissionPolicyBinding"
    )
    assert operator_policy(docs)["allowedImages"] == ["ghcr.io/kubequant/kubequant"], (
        "the operator still checks"
    )


def test_admins_values_reach_both() -> None:
    docs = render(
        "workloadImage=registry.local:5000/research/kq:2",
        "workloadServiceAccountName=backtester",
        "workloadPolicy.allowedPriorityClasses={research-low}",
        "workloadPolicy.allowedModules={acme.research}",
        "workloadPolicy.maxResources.cpu=4",
        "workloadPolicy.admission.validationActions={Warn,Audit}",
        "workloadPolicy.admission.namespaceSelector.matchLabels.team=research",
    )
    rendered = operator_policy(docs)
    assert rendered["allowedImages"] == ["registry.local:5000/research/kq"]
    assert rendered["allowedServiceAccounts"] == ["backtester"]
    assert rendered["allowedPriorityClasses"] == ["research-low"]
    assert rendered["allowedModules"] == ["acme.research"]
    assert rendered["maxResources"]["cpu"] == "4"
    found = variables(docs)
    assert cel_literal(found["allowedModules"]) == ["qlib", "kubequant", "lightgbm", "acme.research"]
    assert cel_literal(found["maxResources"])["cpu"] == "4"
    binding = one(docs, "ValidatingAdmissionPolicyBinding")["spec"]
    assert binding["validationActions"] == ["Warn", "Audit"]
    assert binding["matchResources"] == {"namespaceSelector": {"matchLabels": {"team": "research"}}}
    # The operator's own config accepts what the chart renders.
    config = OperatorConfig.model_validate({"workload_policy": rendered})
    assert config.allowed_modules()[-1] == "acme.research"
    # The pods get the extra prefixes from the operator, not from the chart.
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--allow-module" not in container["args"]


def test_explicit_images_replace_the_default() -> None:
    docs = render("workloadPolicy.allowedImages={ghcr.io/acme/,docker.io/library/python}")
    assert operator_policy(docs)["allowedImages"] == ["ghcr.io/acme/", "docker.io/library/python"]


@pytest.mark.parametrize(
    "image",
    [
        "kq:dev",
        "acme/kq:1",
        "index.docker.io/acme/kq",
        "docker.io/kq:1",
        "index.docker.io/kq",
        "localhost:5000/kq:1",
        "ghcr.io/acme/kq@sha256:" + "a" * 64,
        "ghcr.io/acme/kq:1@sha256:" + "b" * 64,
    ],
)
def test_the_chart_resolves_image_repositories_as_the_operator_does(image: str) -> None:
    docs = render(f"workloadImage={image}", "workloadPolicy.admission.enabled=false")
    assert operator_policy(docs)["allowedImages"] == [image_repository(image)]


@pytest.mark.parametrize(
    ("setting", "path"),
    [
        ("workloadPolicy.allowedImages={python}", "allowedImages"),
        ("workloadPolicy.allowedImages={ghcr.io/Acme/x}", "allowedImages"),
        ("workloadPolicy.allowedModules={../evil}", "allowedModules"),
        ("workloadPolicy.allowedModules={qlib.}", "allowedModules"),
        ("workloadPolicy.maxResources.cpu=lots", "maxResources"),
        ("workloadPolicy.allowedTolerationKeys={bad key}", "allowedTolerationKeys"),
        ("workloadPolicy.admission.validationActions={Block}", "validationActions"),
        ("workloadPolicy.allowedPrioritys={x}", "workloadPolicy"),
    ],
)
def test_values_schema_refuses_bad_policy_entries(setting: str, path: str) -> None:
    result = helm(*CHART_ARGS, "--set", setting)
    assert result.returncode != 0, f"helm accepted {setting}"
    assert path in result.stderr, result.stderr
