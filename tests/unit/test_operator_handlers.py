"""The Backtest handler's error semantics, with the Kubernetes calls replaced by recorders (no cluster)."""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf
import pytest

from kubequant.operator import kube, reconciler
from kubequant.operator.config import OperatorConfig
from kubequant.operator.handlers import backtest as handler

pytestmark = pytest.mark.unit

BODY: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "Backtest",
    "metadata": {"name": "lgb", "namespace": "research", "uid": "u-1", "generation": 1},
    "spec": {"period": {"start": "2022-01-04", "end": "2022-06-30"}, "signal": {"file": {"path": "/s.csv"}}},
}


class Calls:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    rec = Calls()

    def apply(obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        rec.created.append(obj)
        return obj

    monkeypatch.setattr(kube, "apply", apply)
    monkeypatch.setattr(kube, "job_pods", lambda ns, name, rv=None: [])
    monkeypatch.setattr(kube, "pvc_exists", lambda ns, name: name == "present")
    monkeypatch.setattr(
        reconciler,
        "post_event",
        lambda body, *, type, reason, message="", **_: rec.events.append((type, reason)),
    )
    return rec


def run(body: dict[str, Any], cfg: OperatorConfig | None = None) -> kopf.Patch:
    patch = kopf.Patch()
    handler.reconcile_backtest(
        body=kopf.Body(body),
        patch=patch,
        memo=kopf.Memo(config=cfg or OperatorConfig()),
        logger=logging.getLogger(),
    )
    return patch


def test_creates_the_job_and_reports_pending(calls: Calls) -> None:
    patch = run(copy.deepcopy(BODY))
    assert [o["kind"] for o in calls.created] == ["Job"]
    assert patch["status"]["phase"] == "Pending" and patch["status"]["jobName"] == "lgb-backtest"
    assert ("Normal", "Accepted") in calls.events


def test_invalid_spec_is_permanent_with_a_reason(calls: Calls) -> None:
    body = copy.deepcopy(BODY)
    body["spec"]["strategy"] = {"topkDropout": {"topk": 2, "nDrop": 5}}
    with pytest.raises(kopf.PermanentError, match="nDrop"):
        run(body)
    assert calls.created == []
    status = run_status_of_failure(body)
    accepted = next(c for c in status["conditions"] if c["type"] == "Accepted")
    assert accepted["status"] == "False" and accepted["reason"] == "InvalidSpec"
    assert status["phase"] == "Failed"


def run_status_of_failure(body: dict[str, Any]) -> dict[str, Any]:
    patch = kopf.Patch()
    with pytest.raises(kopf.PermanentError):
        handler.reconcile_backtest(
            body=kopf.Body(body),
            patch=patch,
            memo=kopf.Memo(config=OperatorConfig()),
            logger=logging.getLogger(),
        )
    return dict(patch["status"])


def test_missing_volume_is_temporary_with_the_configured_delay(calls: Calls) -> None:
    body = copy.deepcopy(BODY)
    body["spec"]["data"] = {"volume": {"claimName": "absent"}}
    patch = kopf.Patch()
    with pytest.raises(kopf.TemporaryError) as err:
        handler.reconcile_backtest(
            body=kopf.Body(body),
            patch=patch,
            memo=kopf.Memo(config=OperatorConfig(retry_delay_seconds=7)),
            logger=logging.getLogger(),
        )
    assert err.value.delay == 7
    assert calls.created == []
    assert patch["status"]["phase"] == "Pending"
    assert ("Warning", "DataVolumeNotFound") in calls.events


def test_present_volume_proceeds(calls: Calls) -> None:
    body = copy.deepcopy(BODY)
    body["spec"]["data"] = {"volume": {"claimName": "present"}}
    run(body)
    assert [o["kind"] for o in calls.created] == ["Job"]


def test_a_foreign_object_with_the_childs_name_is_a_permanent_conflict(
    calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    def conflict(obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        raise kube.AdoptionConflict("Job research/lgb-backtest exists and is not owned by this object")

    monkeypatch.setattr(kube, "apply", conflict)
    with pytest.raises(kopf.PermanentError, match="not owned"):
        run(copy.deepcopy(BODY))


# --------------------------------------------------------------------------- signal.modelRef


def with_training(monkeypatch: pytest.MonkeyPatch, training: dict[str, Any] | None) -> dict[str, Any]:
    """A Backtest whose signal.modelRef names TrainingJob ``lgb-model``, which the API returns as ``training``."""
    monkeypatch.setattr(
        kube,
        "read_custom",
        lambda plural, ns, name: (
            training if (plural, ns, name) == ("trainingjobs", "research", "lgb-model") else None
        ),
    )
    body = copy.deepcopy(BODY)
    body["spec"]["signal"] = {"modelRef": {"name": "lgb-model"}}
    return body


def training_status(phase: str | None, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": "lgb-model"}, "status": {"phase": phase, **extra} if phase else {}}


@pytest.mark.parametrize("training", [None, training_status(None), training_status("Running")])
def test_model_ref_waits_until_the_training_succeeded(
    calls: Calls, monkeypatch: pytest.MonkeyPatch, training: dict[str, Any] | None
) -> None:
    body = with_training(monkeypatch, training)
    patch = kopf.Patch()
    with pytest.raises(kopf.TemporaryError) as err:
        handler.reconcile_backtest(
            body=kopf.Body(body),
            patch=patch,
            memo=kopf.Memo(config=OperatorConfig(retry_delay_seconds=5)),
            logger=logging.getLogger(),
        )
    assert err.value.delay == 5 and calls.created == []
    status = patch["status"]
    accepted = next(c for c in status["conditions"] if c["type"] == "Accepted")
    assert (status["phase"], accepted["reason"]) == ("Pending", "ModelNotReady")
    assert "lgb-model" in accepted["message"] and "spec.signal.modelRef" in accepted["message"]


def test_model_ref_fails_with_the_trainings_reason(calls: Calls, monkeypatch: pytest.MonkeyPatch) -> None:
    failed = {
        "type": "Failed",
        "status": "True",
        "reason": "PreRunningDeadlineExceeded",
        "message": "the Ray cluster did not start",
    }
    body = with_training(monkeypatch, training_status("Failed", conditions=[failed]))
    status = run_status_of_failure(body)
    accepted = next(c for c in status["conditions"] if c["type"] == "Accepted")
    assert (status["phase"], accepted["reason"]) == ("Failed", "ModelFailed")
    assert "PreRunningDeadlineExceeded" in accepted["message"] and "did not start" in accepted["message"]
    assert calls.created == []


def test_model_ref_mounts_the_artifact_read_only(calls: Calls, monkeypatch: pytest.MonkeyPatch) -> None:
    body = with_training(
        monkeypatch, training_status("Succeeded", modelUri="pvc://models/research/lgb-model")
    )
    run(body)
    job = next(o for o in calls.created if o["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[args.index("--model-dir") + 1] == "/var/run/kubequant/model"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "model")
    assert mount == {
        "name": "model",
        "mountPath": "/var/run/kubequant/model",
        "readOnly": True,
        "subPath": "research/lgb-model",
    }
    volume = next(v for v in pod["volumes"] if v["name"] == "model")
    assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}


@pytest.mark.parametrize(
    "uri", [None, "/var/lib/kubequant/artifacts", "s3://bucket/m", "pvc://models/a/../b"]
)
def test_model_ref_refuses_a_model_no_pod_can_mount(
    calls: Calls, monkeypatch: pytest.MonkeyPatch, uri: str | None
) -> None:
    extra = {"modelUri": uri} if uri else {}
    body = with_training(monkeypatch, training_status("Succeeded", **extra))
    status = run_status_of_failure(body)
    accepted = next(c for c in status["conditions"] if c["type"] == "Accepted")
    assert accepted["reason"] == "ModelNotReachable" and "spec.output.artifacts.volume" in accepted["message"]
    assert calls.created == []


def _throttled(retry_after: str | None) -> Exception:
    from kubernetes.client.rest import ApiException

    err = ApiException(status=429, reason="Too Many Requests")
    err.headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return err


@pytest.mark.parametrize(
    ("retry_after", "delay"), [("1", 1.0), ("7", 7.0), (None, 1.0), ("0", 1.0), ("3600", 30.0), ("soon", 1.0)]
)
def test_a_throttled_create_is_retried_after_its_retry_after_not_kopfs_minute(
    calls: Calls, monkeypatch: pytest.MonkeyPatch, retry_after: str | None, delay: float
) -> None:
    def throttled(obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        raise _throttled(retry_after)

    monkeypatch.setattr(kube, "apply", throttled)
    with pytest.raises(kopf.TemporaryError) as err:
        run(copy.deepcopy(BODY))
    assert err.value.delay == delay
    assert "429" in str(err.value)


def test_an_unanswered_call_is_retried_in_a_second(calls: Calls, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib3.exceptions
    from kubernetes.client.rest import ApiException

    for exc in (
        urllib3.exceptions.MaxRetryError(None, "/apis", reason="connection refused"),
        urllib3.exceptions.ProtocolError("connection reset"),
        ApiException(status=503, reason="Service Unavailable"),
    ):

        def failing(obj: dict[str, Any], exc: Exception = exc, **_: Any) -> dict[str, Any]:
            raise exc

        monkeypatch.setattr(kube, "apply", failing)
        with pytest.raises(kopf.TemporaryError) as err:
            run(copy.deepcopy(BODY))
        assert err.value.delay == kube.TRANSIENT_RETRY_SECONDS


def test_a_refusal_or_a_bug_is_not_made_a_short_retry(calls: Calls, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.client.rest import ApiException

    assert kube.transient_delay(ApiException(status=403, reason="Forbidden")) is None
    assert kube.transient_delay(ApiException(status=422, reason="Invalid")) is None

    def buggy(obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        raise KeyError("spec")

    monkeypatch.setattr(kube, "apply", buggy)
    with pytest.raises(KeyError):
        run(copy.deepcopy(BODY))
