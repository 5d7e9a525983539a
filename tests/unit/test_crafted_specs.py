"""Crafted specs against the operator: each is refused with a reason in status, naming the field, and
never retried forever (kopf.PermanentError, nothing created), or, where waiting can help, retried
with a reason. The Kubernetes calls are replaced by recorders; no cluster.

The attacks come from the security review (issue 18): a pod the author could not create
themselves, any Python class, specs that crash or outgrow what the operator writes, and subPaths
that climb out of a volume or into another run's folder.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from kubernetes.client.rest import ApiException

from kubequant.operator import kube, reconciler
from kubequant.operator.builders import backtest as builders
from kubequant.operator.config import OperatorConfig
from kubequant.operator.handlers import backtest as handler

pytestmark = pytest.mark.unit

BAD_DIR = Path(__file__).resolve().parent / "bad_manifests"
SEGMENTS = {
    "train": {"start": "2020-01-01", "end": "2021-06-30"},
    "valid": {"start": "2021-07-01", "end": "2021-12-31"},
    "test": {"start": "2022-01-01", "end": "2022-12-29"},
}
BODY: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "Backtest",
    "metadata": {"name": "crafted", "namespace": "research", "uid": "u-1", "generation": 1},
    "spec": {"period": {"start": "2022-01-04", "end": "2022-06-30"}, "signal": {"file": {"path": "/s.csv"}}},
}
# The real create_or_adopt, for the tests that fake the API client underneath it.
_real_apply = kube.apply


class Recorder:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()

    def apply(obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        rec.created.append(obj)
        return obj

    monkeypatch.setattr(kube, "apply", apply)
    monkeypatch.setattr(kube, "job_pods", lambda ns, name, rv=None: [])
    monkeypatch.setattr(kube, "pvc_exists", lambda ns, name: True)
    monkeypatch.setattr(
        reconciler,
        "post_event",
        lambda body, *, type, reason, message="", **_: rec.events.append((type, reason, message)),
    )
    return rec


def reconcile(body: dict[str, Any], cfg: OperatorConfig | None = None) -> kopf.Patch:
    patch = kopf.Patch()
    handler.reconcile_backtest(
        body=kopf.Body(body),
        patch=patch,
        memo=kopf.Memo(config=cfg or OperatorConfig()),
        logger=logging.getLogger(),
    )
    return patch


def refused(body: dict[str, Any], cfg: OperatorConfig | None = None) -> tuple[str, str, kopf.PermanentError]:
    """Reconcile a crafted body that must fail for good: (reason, message) from its status."""
    patch = kopf.Patch()
    with pytest.raises(kopf.PermanentError) as raised:
        handler.reconcile_backtest(
            body=kopf.Body(body),
            patch=patch,
            memo=kopf.Memo(config=cfg or OperatorConfig()),
            logger=logging.getLogger(),
        )
    status = patch["status"]
    assert status["phase"] == "Failed"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Failed"]["status"] == "True" and conditions["Accepted"]["status"] == "False"
    reason = conditions["Failed"]["reason"]
    assert conditions["Accepted"]["reason"] == reason
    assert status["message"] == conditions["Failed"]["message"]
    return reason, status["message"], raised.value


def crafted(**spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(BODY)
    body["spec"].update(spec)
    return body


# --------------------------------------------------------------------------- 1. the pod


@pytest.mark.parametrize(
    ("pod", "field"),
    [
        ({"image": "evil.example.com/miner"}, "spec.pod.image"),
        ({"serviceAccountName": "ci-deployer"}, "spec.pod.serviceAccountName"),
        ({"tolerations": [{"operator": "Exists"}]}, "spec.pod.tolerations[0].key"),
        ({"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}, "spec.pod.nodeSelector."),
        ({"priorityClassName": "system-node-critical"}, "spec.pod.priorityClassName"),
        ({"imagePullSecrets": [{"name": "other-team"}]}, "spec.pod.imagePullSecrets[0].name"),
        ({"resources": {"limits": {"nvidia.com/gpu": 8}}}, "spec.pod.resources.limits.nvidia.com/gpu"),
        ({"resources": {"requests": {"memory": "1Ti"}}}, "spec.pod.resources.requests.memory"),
    ],
    ids=[
        "image",
        "service-account",
        "toleration",
        "node-selector",
        "priority",
        "pull-secret",
        "gpus",
        "memory",
    ],
)
def test_a_pod_outside_the_workload_policy_is_refused_for_good(
    calls: Recorder, pod: dict[str, Any], field: str
) -> None:
    reason, message, _ = refused(crafted(pod=pod))
    assert reason == "PolicyViolation"
    assert message.startswith(field) and "workload policy" in message and "fix:" in message
    assert calls.created == [], "nothing is created for a refused spec"
    assert ("Warning", "Failed") in [(t, r) for t, r, _ in calls.events]


def test_every_violation_is_reported_at_once(calls: Recorder) -> None:
    _, message, _ = refused(
        crafted(
            pod={
                "image": "evil.example.com/miner",
                "serviceAccountName": "ci-deployer",
                "priorityClassName": "x",
            }
        )
    )
    assert [part.split(":")[0] for part in message.split("; ") if part.startswith("spec.")] == [
        "spec.pod.image",
        "spec.pod.serviceAccountName",
        "spec.pod.priorityClassName",
    ]


def test_what_the_admin_allows_is_created(calls: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "KUBEQUANT_WORKLOAD_POLICY",
        json.dumps(
            {"allowedImages": ["registry.example.com/research/"], "allowedServiceAccounts": ["backtester"]}
        ),
    )
    reconcile(
        crafted(pod={"image": "registry.example.com/research/kq:1", "serviceAccountName": "backtester"}),
        OperatorConfig(),
    )
    job = calls.created[0]["spec"]["template"]["spec"]
    assert job["containers"][0]["image"] == "registry.example.com/research/kq:1"
    assert job["serviceAccountName"] == "backtester"


# --------------------------------------------------------------------------- 2. the classes


def test_a_class_from_a_module_outside_the_allow_list_is_refused_for_good(calls: Recorder) -> None:
    body = crafted(
        signal={
            "model": {
                "model": {"class": "Popen", "module": "subprocess", "kwargs": {"args": ["id"]}},
                "segments": SEGMENTS,
            }
        }
    )
    reason, message, _ = refused(body)
    assert reason == "InvalidSpec"
    assert message.startswith("spec.signal.model.model.module: module subprocess is not allowed")
    assert "workloadPolicy.allowedModules" in message
    assert calls.created == []


def test_the_cluster_s_module_prefixes_are_allowed_and_passed_to_the_pod(
    calls: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBEQUANT_WORKLOAD_POLICY", json.dumps({"allowedModules": ["acme.research"]}))
    body = crafted(strategy={"custom": {"class": "Momentum", "module": "acme.research.strategies"}})
    reconcile(body, OperatorConfig())
    args = calls.created[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--allow-module") + 1] == "acme.research"


# --------------------------------------------------------------------------- 5. retry loops


def test_kwargs_nested_hundreds_of_levels_deep_are_refused_not_retried(calls: Recorder) -> None:
    deep: Any = "x"
    for _ in range(300):
        deep = {"a": deep}
    body = crafted(signal={"model": {"model": {"class": "LGBModel", "kwargs": deep}, "segments": SEGMENTS}})
    reason, message, _ = refused(body)
    assert reason == "InvalidSpec" and message.startswith(
        "spec.signal.model.model.kwargs: kwargs are nested more than 32"
    )
    assert calls.created == []


def test_a_spec_kopf_could_not_record_is_refused(calls: Recorder) -> None:
    body = crafted(
        signal={
            "model": {
                "model": {"class": "LGBModel", "kwargs": {"notes": "量" * 20_000}},
                "segments": SEGMENTS,
            }
        }
    )
    reason, message, _ = refused(body)
    assert reason == "InvalidSpec" and message.startswith("spec: the spec, labels and annotations take")
    # Annotations count too: kopf copies them into its own.
    body = crafted()
    body["metadata"]["annotations"] = {"note": "x" * 90_000}
    assert refused(body)[1].startswith("spec: ")
    # The operator's own bookkeeping annotations and kubectl's copy do not.
    body["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": "x" * 90_000,
        "kubequant.io/last-handled-configuration": "y" * 90_000,
    }
    reconcile(body)
    assert [o["kind"] for o in calls.created] == ["Job"]


def test_a_cjk_spec_keeps_its_size_in_the_pod_s_manifest(calls: Recorder) -> None:
    text = "多因子量化研究" * 1400  # 9,800 characters: 29 KB in UTF-8, 59 KB as escaped JSON
    body = crafted(
        signal={"model": {"model": {"class": "LGBModel", "kwargs": {"notes": text}}, "segments": SEGMENTS}}
    )
    reconcile(body)
    data = calls.created[0]["spec"]["template"]["metadata"]["annotations"][builders.MANIFEST_ANNOTATION]
    assert text in data, "non-ASCII text is kept as it is, not escaped"
    assert len(data.encode()) < 1.1 * len(text.encode())
    assert yaml.safe_load(data)["spec"]["signal"]["model"]["model"]["kwargs"]["notes"] == text


def test_a_spec_with_hundreds_of_mistakes_still_fits_in_status(calls: Recorder) -> None:
    body = crafted(universe={"instruments": [f"bad code {i}" for i in range(500)]})
    reason, message, _ = refused(body)
    assert reason == "InvalidSpec" and message.startswith("spec.universe.instruments[0]")
    assert len(message) <= reconciler.MAX_REJECTION < 4096  # status.message's limit in the CRD


def test_a_builder_that_fails_fails_the_object_for_good(
    calls: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(bt: Any, cfg: Any) -> dict[str, Any]:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(handler, "build_backtest_job", explode)
    reason, message, _ = refused(crafted())
    assert reason == "InvalidSpec" and "RecursionError" in message
    assert calls.created == []


def _api_error(status: int, reason: str, message: str) -> ApiException:
    return ApiException(
        status=status,
        reason=reason,
        body=json.dumps({"kind": "Status", "reason": reason, "message": message}),
    )


class _FakeApi:
    """BatchV1Api and CoreV1Api, whose creates fail with a given error."""

    error: ApiException

    def __init__(self, *_: Any) -> None:
        pass

    def create_namespaced_job(self, ns: str, obj: dict[str, Any], **_: Any) -> Any:
        raise self.error

    create_namespaced_config_map = create_namespaced_job

    def read_namespaced_job(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("a refused create is not followed by a read")

    read_namespaced_config_map = read_namespaced_job


@pytest.mark.parametrize(
    ("status", "api_reason", "text"),
    [
        (
            422,
            "Invalid",
            'Job.batch "crafted-backtest" is invalid: spec.template.spec.volumes[0]: Invalid value',
        ),
        (400, "BadRequest", "the request is malformed"),
        (403, "Forbidden", 'admission webhook "policy.example.com" denied the request: no GPUs on Fridays'),
        (404, "NotFound", 'namespaces "research" not found'),
        (413, "RequestEntityTooLarge", "the request is too large"),
    ],
)
def test_a_4xx_on_create_is_a_permanent_failure_with_the_server_s_reason(
    calls: Recorder, monkeypatch: pytest.MonkeyPatch, status: int, api_reason: str, text: str
) -> None:
    monkeypatch.setattr(kube, "apply", _real_apply)
    _FakeApi.error = _api_error(status, api_reason, text)
    monkeypatch.setattr(kube.client, "BatchV1Api", _FakeApi)
    monkeypatch.setattr(kube.client, "CoreV1Api", _FakeApi)
    monkeypatch.setattr(kube, "api", lambda: None)
    reason, message, _ = refused(crafted())
    assert reason == "JobRejected"  # the one child
    assert f"({status} {api_reason})" in message and text in message


def test_a_full_quota_is_waited_for_not_a_failure(calls: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube, "apply", _real_apply)
    _FakeApi.error = _api_error(
        403, "Forbidden", 'jobs "x" is forbidden: exceeded quota: research, requested: count/jobs.batch=1'
    )
    monkeypatch.setattr(kube.client, "BatchV1Api", _FakeApi)
    monkeypatch.setattr(kube.client, "CoreV1Api", _FakeApi)
    monkeypatch.setattr(kube, "api", lambda: None)
    patch = kopf.Patch()
    with pytest.raises(kopf.TemporaryError) as raised:
        handler.reconcile_backtest(
            body=kopf.Body(crafted()),
            patch=patch,
            memo=kopf.Memo(config=OperatorConfig(retry_delay_seconds=9)),
            logger=logging.getLogger(),
        )
    assert raised.value.delay == 9
    assert patch["status"]["phase"] == "Pending"
    accepted = next(c for c in patch["status"]["conditions"] if c["type"] == "Accepted")
    assert accepted["reason"] == "QuotaExceeded" and "exceeded quota" in accepted["message"]


@pytest.mark.parametrize(
    ("status", "api_reason"), [(429, "TooManyRequests"), (500, "InternalError"), (503, "ServiceUnavailable")]
)
def test_throttling_and_server_errors_are_retried_in_about_a_second_not_refused(
    calls: Recorder, monkeypatch: pytest.MonkeyPatch, status: int, api_reason: str
) -> None:
    monkeypatch.setattr(kube, "apply", _real_apply)
    _FakeApi.error = _api_error(status, api_reason, "try again")
    monkeypatch.setattr(kube.client, "BatchV1Api", _FakeApi)
    monkeypatch.setattr(kube.client, "CoreV1Api", _FakeApi)
    monkeypatch.setattr(kube, "api", lambda: None)
    # Not a refusal (the Backtest does not fail), and not kopf's 60 s for an unexpected error either.
    with pytest.raises(kopf.TemporaryError) as err:
        reconcile(crafted())
    assert err.value.delay == kube.TRANSIENT_RETRY_SECONDS and str(status) in str(err.value)


def test_suspending_a_backtest_that_has_no_job_does_not_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    patched: list[tuple[str, str, bool]] = []

    def patch_job_suspend(ns: str, name: str, suspend: bool) -> bool:
        patched.append((ns, name, suspend))
        return False  # the Job was never created: the spec was refused

    monkeypatch.setattr(kube, "patch_job_suspend", patch_job_suspend)
    body = crafted(pod={"image": "evil.example.com/miner"})
    handler.suspend_backtest(body=kopf.Body(body), new=True, old=False, logger=logging.getLogger())
    assert patched == [("research", "crafted-backtest", True)]


# --------------------------------------------------------------------------- 6. subPaths


def test_a_climbing_sub_path_is_refused_before_the_api_server_sees_it(calls: Recorder) -> None:
    body = crafted(data={"volume": {"claimName": "market-data", "subPath": "cn/../../etc"}})
    reason, message, _ = refused(body)
    assert reason == "InvalidSpec" and message.startswith(
        "spec.data.volume.subPath: 'cn/../../etc' has the wrong form"
    )
    assert calls.created == []


def test_each_run_writes_into_its_own_folder(calls: Recorder) -> None:
    shared = {"artifacts": {"volume": {"claimName": "reports", "subPath": "team/latest"}}}
    reconcile(crafted(output=shared))
    other = crafted(output=shared)
    other["metadata"]["name"] = "victim"
    reconcile(other)
    folders = [
        next(
            m["subPath"]
            for m in o["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
            if m["name"] == "report"
        )
        for o in calls.created
        if o["kind"] == "Job"
    ]
    assert folders == ["team/latest/research/crafted", "team/latest/research/victim"]


def test_opting_out_writes_straight_into_the_sub_path(calls: Recorder) -> None:
    reconcile(
        crafted(
            output={
                "artifacts": {
                    "volume": {"claimName": "reports", "subPath": "shared/run-7"},
                    "perRunFolder": False,
                }
            }
        )
    )
    job = calls.created[0]["spec"]["template"]["spec"]
    mount = next(m for m in job["containers"][0]["volumeMounts"] if m["name"] == "report")
    assert mount["subPath"] == "shared/run-7"


# --------------------------------------------------------------------------- the bad manifests


def _marked(marker: str) -> list[Path]:
    """The Backtest bad manifests with this `server:` marker (only the Backtest has an operator yet)."""
    return sorted(
        p
        for p in BAD_DIR.glob("backtest-*.yaml")
        if p.read_text().splitlines()[0].endswith(f"| server: {marker}")
    )


@pytest.mark.parametrize("path", _marked("operator") + _marked("policy"), ids=lambda p: p.stem)
def test_what_the_crds_let_through_the_operator_refuses(calls: Recorder, path: Path) -> None:
    """Bad manifests the CRDs accept (`server: operator` or `policy`) still never become a Job."""
    doc = yaml.safe_load(path.read_text())
    field = path.read_text().splitlines()[0].removeprefix("# expect: ").split(" | ")[0]
    body = {**doc, "metadata": {**doc["metadata"], "namespace": "research", "uid": "u-1", "generation": 1}}
    reason, message, _ = refused(body)
    assert reason == "InvalidSpec" and message.startswith(f"{field}: ")
    assert calls.created == []
