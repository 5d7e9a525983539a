"""The operator on a real API server: Backtests become Jobs, Jobs become results, failures become reasons.

The operator runs as a process with the Helm chart's ServiceAccount token; pods that must really
work run on a LocalKubelet node (hack/local_kubelet.py), the rest on kwok's simulated nodes.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubectl import REPO_ROOT, kubectl
from kubernetes import client
from local_kubelet import LocalKubelet
from operator_process import LOCAL_RUNNER_POLICY, OperatorProcess, chart_operator

pytestmark = pytest.mark.e2e

OPERATOR_NS = "kubequant-e2e-system"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
LOCAL_NODE = "kq-local-operator-e2e"
LOCAL_POD = {
    "nodeSelector": {"kubequant.io/pool": "local", "kubernetes.io/hostname": LOCAL_NODE},
    "tolerations": [{"key": "kubequant.io/local-runner", "operator": "Exists", "effect": "NoSchedule"}],
}
SMALL = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "Backtest",
    "metadata": {"name": "small"},
    "spec": {
        "data": {"sample": {"instruments": 40, "start": "2020-01-01", "end": "2021-06-30", "seed": 7}},
        "period": {"start": "2021-01-04", "end": "2021-06-28"},
        "account": 10_000_000,
        "signal": {
            "model": {
                "model": {
                    "class": "LGBModel",
                    "kwargs": {
                        "num_leaves": 16,
                        "num_boost_round": 30,
                        "early_stopping_rounds": 10,
                        "num_threads": 1,
                        "seed": 7,
                    },
                },
                "segments": {
                    "train": {"start": "2020-01-01", "end": "2020-09-30"},
                    "valid": {"start": "2020-10-01", "end": "2020-12-31"},
                    "test": {"start": "2021-01-04", "end": "2021-06-28"},
                },
            }
        },
        "strategy": {"topkDropout": {"topk": 8, "nDrop": 2}},
    },
}


def backtest(name: str, pod: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(SMALL)
    doc["metadata"]["name"] = name
    doc["spec"].update(spec)
    if pod is not None:
        doc["spec"]["pod"] = pod
    return doc


def apply(namespace: str, *docs: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(docs), check=True)


def get_bt(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object("kubequant.io", "v1alpha1", namespace, "backtests", name)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def operator(
    core: client.CoreV1Api, kube_config: client.Configuration, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("operator")
    with chart_operator(core, kube_config, OPERATOR_NS, workdir, workload_policy=LOCAL_RUNNER_POLICY) as proc:
        yield proc


@pytest.fixture(scope="module")
def kubelet(api_client: client.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKubelet]:
    with LocalKubelet(
        api_client,
        node_name=LOCAL_NODE,
        workdir=tmp_path_factory.mktemp("kubelet"),
        command_map={"kubequant": str(Path(sys.executable).parent / "kubequant")},
    ) as runner:
        yield runner


@pytest.fixture
def restricted_ns(make_namespace) -> str:  # type: ignore[no-untyped-def]
    return make_namespace(RESTRICTED)  # type: ignore[no-any-return]


def wait_condition(namespace: str, name: str, condition: str, timeout: int = 300) -> None:
    proc = kubectl(
        "wait",
        "-n",
        namespace,
        f"bt/{name}",
        f"--for=condition={condition}",
        f"--timeout={timeout}s",
        timeout=timeout + 30,
    )
    assert proc.returncode == 0, proc.stderr


def test_backtest_succeeds_with_real_results(
    operator: OperatorProcess,
    kubelet: LocalKubelet,
    restricted_ns: str,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
) -> None:
    apply(restricted_ns, backtest("small", pod=LOCAL_POD))
    try:
        wait_condition(restricted_ns, "small", "Succeeded")
    except AssertionError:
        for pod in core.list_namespaced_pod(restricted_ns).items:
            print(kubelet.logs(pod.metadata.name, restricted_ns))
        print(operator.tail())
        raise
    bt = get_bt(custom, restricted_ns, "small")
    st = bt["status"]
    assert st["phase"] == "Succeeded" and st["observedGeneration"] == 1 and st["jobName"] == "small-backtest"
    results = st["results"]
    for key in ("annualizedReturn", "sharpe", "maxDrawdown", "informationRatio", "ic", "rankIc", "turnover"):
        assert isinstance(results[key], (int, float)), key
    assert results["trades"] > 0 and results["days"] > 100
    assert {c["type"] for c in st["conditions"]} == {"Accepted", "Running", "Succeeded", "Failed"}
    # kopf's bookkeeping travels with the status (one write per reconcile), none of it in annotations:
    # the API server kept status.kopf (the CRD preserves its fields).
    assert "last-handled-configuration" in st["kopf"], st.get("kopf")
    assert not [k for k in bt["metadata"].get("annotations") or {} if k.startswith("kubequant.io/")]
    # Printer columns show the numbers.
    row = kubectl("get", "bt", "small", "-n", restricted_ns, check=True).stdout.splitlines()[1].split()
    assert row[1] == "Succeeded" and float(row[2]) == pytest.approx(results["annualizedReturn"], abs=1e-3)
    assert float(row[3]) == pytest.approx(results["sharpe"], abs=1e-3)
    events = {
        e.reason
        for e in core.list_namespaced_event(restricted_ns, field_selector="involvedObject.name=small").items
    }
    assert {"Accepted", "Succeeded"} <= events, events


def test_failing_backtest_ends_failed_with_the_reason(
    operator: OperatorProcess, kubelet: LocalKubelet, restricted_ns: str, custom: client.CustomObjectsApi
) -> None:
    # The sample's last trading day: qlib needs the next day, so the workload refuses it (exit 2).
    doc = backtest("late", pod=LOCAL_POD, period={"start": "2021-01-04", "end": "2021-06-30"})
    doc["spec"]["signal"]["model"]["segments"]["test"]["end"] = "2021-06-30"
    apply(restricted_ns, doc)
    wait_condition(restricted_ns, "late", "Failed")
    st = get_bt(custom, restricted_ns, "late")["status"]
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "BackoffLimitExceeded"
    assert "spec.period.end" in st["message"] and "fix:" in st["message"], st["message"]
    assert st["phase"] == "Failed" and "results" not in st


def test_gpu_backtest_is_scheduled_on_the_gpu_pool(
    operator: OperatorProcess,
    restricted_ns: str,
    core: client.CoreV1Api,
    pool_nodes: dict[str, set[str]],
    wait_until,
) -> None:  # type: ignore[no-untyped-def]
    apply(restricted_ns, backtest("gpu", pod={"resources": {"requests": {"nvidia.com/gpu": 1, "cpu": "1"}}}))
    pod = wait_until(
        lambda: next((p for p in core.list_namespaced_pod(restricted_ns).items if p.spec.node_name), None),
        60,
        "a scheduled pod",
    )
    assert pod.spec.node_name in pool_nodes["gpu"]
    assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"


def test_cpu_backtest_never_lands_on_the_gpu_pool(
    operator: OperatorProcess,
    restricted_ns: str,
    core: client.CoreV1Api,
    pool_nodes: dict[str, set[str]],
    wait_until,
) -> None:  # type: ignore[no-untyped-def]
    apply(
        restricted_ns,
        *(backtest(f"cpu-{i}", pod={"resources": {"requests": {"cpu": "1"}}}) for i in range(4)),
    )
    pods = wait_until(
        lambda: (lambda ps: ps if len(ps) == 4 else None)(
            [p for p in core.list_namespaced_pod(restricted_ns).items if p.spec.node_name]
        ),
        60,
        "4 scheduled pods",
    )
    assert {p.spec.node_name for p in pods} <= pool_nodes["cpu"]


def test_operator_restart_creates_no_duplicates(
    operator: OperatorProcess,
    restricted_ns: str,
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    wait_until,
) -> None:  # type: ignore[no-untyped-def]
    names = [f"restart-{i}" for i in range(6)]
    apply(restricted_ns, *(backtest(n, suspend=True) for n in names))
    time.sleep(0.3)  # mid-reconcile: some Jobs exist, some do not
    operator.kill()
    operator.start()
    wait_until(
        lambda: all(get_bt(custom, restricted_ns, n).get("status", {}).get("jobName") for n in names),
        90,
        "every Backtest reconciled",
    )
    jobs = batch.list_namespaced_job(restricted_ns, label_selector="kubequant.io/backtest").items
    assert sorted(j.metadata.name for j in jobs) == sorted(f"{n}-backtest" for n in names)
    # The manifest travels in the Job's pod template: a Backtest has no ConfigMap.
    assert not core.list_namespaced_config_map(restricted_ns, label_selector="kubequant.io/backtest").items
    assert all(get_bt(custom, restricted_ns, n)["status"]["phase"] == "Suspended" for n in names)


def test_deleting_a_backtest_removes_its_children(
    operator: OperatorProcess,
    restricted_ns: str,
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    wait_until,
) -> None:  # type: ignore[no-untyped-def]
    apply(restricted_ns, backtest("doomed", suspend=True))
    wait_until(lambda: batch.list_namespaced_job(restricted_ns).items, 60, "the Job")
    bt = get_bt(custom, restricted_ns, "doomed")
    assert not bt["metadata"].get("finalizers")  # ownerReferences do the cleanup, no finalizer needed
    kubectl("delete", "-n", restricted_ns, "bt/doomed", "--wait=true", check=True)
    wait_until(
        lambda: not batch.list_namespaced_job(restricted_ns).items, 60, "the Job to be garbage-collected"
    )


def test_missing_data_volume_waits_then_runs(
    operator: OperatorProcess,
    restricted_ns: str,
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    wait_until,
) -> None:  # type: ignore[no-untyped-def]
    apply(restricted_ns, backtest("needs-data", suspend=True, data={"volume": {"claimName": "market-data"}}))

    def waiting() -> bool:
        st = get_bt(custom, restricted_ns, "needs-data").get("status") or {}
        accepted = next((c for c in st.get("conditions") or [] if c["type"] == "Accepted"), {})
        return accepted.get("reason") == "DataVolumeNotFound" and accepted.get("status") == "False"

    wait_until(waiting, 60, "Accepted=False DataVolumeNotFound")
    assert not batch.list_namespaced_job(restricted_ns).items
    core.create_namespaced_persistent_volume_claim(
        restricted_ns,
        {
            "metadata": {"name": "market-data"},
            "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    wait_until(lambda: batch.list_namespaced_job(restricted_ns).items, 60, "the Job once the volume exists")
    job = batch.list_namespaced_job(restricted_ns).items[0]
    claims = [
        v.persistent_volume_claim.claim_name
        for v in job.spec.template.spec.volumes
        if v.persistent_volume_claim
    ]
    assert claims == ["market-data"]


def test_metrics_count_reconciles_and_phases(
    operator: OperatorProcess, restricted_ns: str, wait_until
) -> None:  # type: ignore[no-untyped-def]
    apply(restricted_ns, backtest("metered", suspend=True))
    text = wait_until(
        lambda: (lambda t: t if 'kubequant_objects{kind="Backtest",phase="Suspended"}' in t else None)(
            operator.metrics()
        ),
        60,
        "metrics",
    )
    assert 'kubequant_reconciles_total{kind="Backtest",outcome="success"}' in text
    assert "kubequant_reconcile_duration_seconds_bucket" in text


def test_pods_are_admitted_in_a_restricted_namespace(
    operator: OperatorProcess, restricted_ns: str, core: client.CoreV1Api, wait_until
) -> None:  # type: ignore[no-untyped-def]
    apply(restricted_ns, backtest("hardened"))
    wait_until(lambda: core.list_namespaced_pod(restricted_ns).items, 60, "the pod to be created")
    events = core.list_namespaced_event(restricted_ns).items
    assert not [e for e in events if e.reason == "FailedCreate"], [
        e.message for e in events if e.reason == "FailedCreate"
    ]


@pytest.mark.parametrize(
    "levels",
    [None, [{"frequency": "1min", "strategy": {"twap": {}}}]],
    ids=["day-30min-1min-qlib", "day-1min-compiled"],
)
def test_nested_example_runs_through_the_operator(
    operator: OperatorProcess,
    kubelet: LocalKubelet,
    restricted_ns: str,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    levels: list[dict[str, Any]] | None,
) -> None:
    doc = yaml.safe_load((REPO_ROOT / "examples" / "backtest-nested.yaml").read_text())
    doc["spec"]["pod"] = LOCAL_POD
    if levels is not None:  # a single day → 1min TWAP level: the compiled engine
        doc["spec"]["executor"]["levels"] = levels
        doc["metadata"]["name"] += "-compiled"
    apply(restricted_ns, doc)
    name = doc["metadata"]["name"]
    try:
        wait_condition(restricted_ns, name, "Succeeded", timeout=600)
    except AssertionError:
        for pod in core.list_namespaced_pod(restricted_ns).items:
            print(kubelet.logs(pod.metadata.name, restricted_ns)[-5000:])
        raise
    results = get_bt(custom, restricted_ns, name)["status"]["results"]
    expected = ["day", "30min", "1min"] if levels is None else ["day", "1min"]
    assert [lv["frequency"] for lv in results["execution"]["levels"]] == expected
    assert all(lv["orders"] > 0 for lv in results["execution"]["levels"])
    assert results["execution"]["impactBps"] > 0  # every fill carries its market impact
    assert results["singleLevel"]["trades"] > 0


def test_a_look_alike_job_does_not_change_the_backtests_status(
    operator: OperatorProcess,
    namespace: str,
    batch: client.BatchV1Api,
    custom: client.CustomObjectsApi,
    wait_until,
) -> None:  # type: ignore[no-untyped-def]
    """Anyone who can create Jobs can copy a Backtest's label and uid; such a Job writes nothing."""
    apply(namespace, backtest("victim", suspend=True))
    wait_until(
        lambda: (get_bt(custom, namespace, "victim").get("status") or {}).get("phase") == "Suspended",
        60,
        "the Backtest to be Suspended",
    )
    bt = get_bt(custom, namespace, "victim")
    before = bt["status"]
    owner = {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "Backtest",
        "name": "victim",
        "uid": bt["metadata"]["uid"],
    }
    forgeries = {
        # A controller reference, but not the operator's deterministic name.
        "victim-results": {**owner, "controller": True, "blockOwnerDeletion": True},
        # A plain owner reference on a name the operator would not use either.
        "victim-backtest-x": owner,
    }
    for name, ref in forgeries.items():
        batch.create_namespaced_job(
            namespace,
            {
                "metadata": {
                    "name": name,
                    "labels": {"kubequant.io/backtest": "victim"},
                    "ownerReferences": [ref],
                },
                "spec": {
                    "backoffLimit": 0,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {"name": "forged", "image": "example.invalid/forged", "command": ["true"]}
                            ],
                        }
                    },
                },
            },
        )

    def finished(name: str) -> bool:
        conditions = batch.read_namespaced_job(name, namespace).status.conditions or []
        return any(c.type in ("Complete", "Failed") and c.status == "True" for c in conditions)

    # kwok runs the forged pods to completion: without the ownership check, either Job would have
    # turned the Backtest Succeeded or Failed and named itself in status.jobName.
    wait_until(lambda: all(finished(n) for n in forgeries), 90, "the look-alike Jobs to finish")
    time.sleep(3)
    after = get_bt(custom, namespace, "victim")["status"]
    assert after == before
    # The operator still follows its own Job: resuming it moves the Backtest on.
    kubectl(
        "patch", "-n", namespace, "bt/victim", "--type=merge", "-p", '{"spec":{"suspend":false}}', check=True
    )
    wait_until(
        lambda: get_bt(custom, namespace, "victim")["status"]["phase"] != "Suspended",
        90,
        "the real Job to run",
    )
    assert get_bt(custom, namespace, "victim")["status"]["jobName"] == "victim-backtest"


def _failed_for_good(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    """The Failed condition of a Backtest the operator refused, checked to stay as it is (no retry)."""
    wait_condition(namespace, name, "Failed", timeout=60)
    first = next(c for c in get_bt(custom, namespace, name)["status"]["conditions"] if c["type"] == "Failed")
    time.sleep(3)  # longer than the fixture's retry delay: a retried reconcile would have rewritten status
    st = get_bt(custom, namespace, name)["status"]
    again = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert again == first and st["phase"] == "Failed"
    return first


def test_a_pod_the_workload_policy_refuses_fails_for_good(
    operator: OperatorProcess,
    restricted_ns: str,
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
) -> None:
    apply(restricted_ns, backtest("miner", pod={"image": "evil.example.com/miner:latest"}))
    failed = _failed_for_good(custom, restricted_ns, "miner")
    assert failed["reason"] == "PolicyViolation"
    message = failed["message"]
    assert message.startswith("spec.pod.image: image evil.example.com/miner:latest") and "fix:" in message
    assert not batch.list_namespaced_job(restricted_ns).items
    assert not core.list_namespaced_config_map(restricted_ns, label_selector="kubequant.io/backtest").items
    assert "failed permanently" in operator.tail(200)


def test_a_child_the_api_server_refuses_fails_for_good_with_its_reason(
    operator: OperatorProcess, restricted_ns: str, batch: client.BatchV1Api, custom: client.CustomObjectsApi
) -> None:
    """A 4xx on create would be the same on every retry: the Backtest fails with the server's reason.

    The refusal comes from an admission policy of the cluster (nothing the CRDs could know: what they
    can check, such as a negative cpu request, is refused when the Backtest is applied)."""
    name = f"e2e-no-jobs-{restricted_ns}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["batch"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["jobs"],
                    }
                ]
            },
            "validations": [{"expression": "false", "message": "no Jobs in this namespace today"}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": restricted_ns}}
            },
        },
    }
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([policy, binding]), check=True)
    try:
        # A valid Job (admission runs after validation), sent until the API server enforces the policy.
        template = {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}
        probe = json.dumps(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": "probe"},
                "spec": {"template": template},
            }
        )
        deadline = time.monotonic() + 30
        while (
            "no Jobs in this namespace"
            not in kubectl("create", "--dry-run=server", "-n", restricted_ns, "-f", "-", stdin=probe).stderr
        ):
            assert time.monotonic() < deadline, "the admission policy is not enforced"
            time.sleep(0.5)
        apply(restricted_ns, backtest("refused", suspend=True))
        failed = _failed_for_good(custom, restricted_ns, "refused")
        assert failed["reason"] == "JobRejected", failed
        assert "(422 Invalid)" in failed["message"] and "no Jobs in this namespace today" in failed["message"]
        assert not batch.list_namespaced_job(restricted_ns).items
    finally:
        kubectl(
            "delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name, "--ignore-not-found"
        )
