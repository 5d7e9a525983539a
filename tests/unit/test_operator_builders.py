"""The Backtest's children are pure functions of the spec: names, ownership, placement, hardening."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from kubequant.api import Backtest
from kubequant.manifests import parse_resource
from kubequant.operator.builders.backtest import MANIFEST_ANNOTATION, build_backtest_job, job_name
from kubequant.operator.builders.common import child_name
from kubequant.operator.config import OperatorConfig

pytestmark = pytest.mark.unit

BASE: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "Backtest",
    "metadata": {"name": "lgb", "namespace": "research", "uid": "1234-uid", "generation": 1},
    "spec": {
        "period": {"start": "2022-01-04", "end": "2022-06-30"},
        "signal": {"file": {"path": "/data/scores.csv"}},
    },
}


def backtest(**spec: Any) -> Backtest:
    doc = copy.deepcopy(BASE)
    doc["spec"].update(spec)
    bt = parse_resource(doc)
    assert isinstance(bt, Backtest)
    return bt


def test_names_are_deterministic_and_short() -> None:
    assert job_name(backtest()) == "lgb-backtest"
    long = "a" * 70
    first, second = child_name(long, "backtest"), child_name(long, "backtest")
    assert first == second and len(first) <= 63 and first.endswith("-backtest")
    assert child_name("a" * 70, "backtest") != child_name("a" * 69 + "b", "backtest")


def test_children_are_owned_and_labelled() -> None:
    bt = backtest()
    for meta in (build_backtest_job(bt, OperatorConfig())["metadata"],):
        assert meta["namespace"] == "research"
        (owner,) = meta["ownerReferences"]
        assert owner == {
            "apiVersion": "kubequant.io/v1alpha1",
            "kind": "Backtest",
            "name": "lgb",
            "uid": "1234-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert meta["labels"]["kubequant.io/backtest"] == "lgb"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "kubequant-operator"


def manifest_of(job: dict[str, Any]) -> dict[str, Any]:
    """What the Job's pod reads at --config: its annotation, through the downward API volume."""
    template = job["spec"]["template"]
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == "config")
    (item,) = volume["downwardAPI"]["items"]
    assert item == {
        "path": "backtest.yaml",
        "fieldRef": {"fieldPath": f"metadata.annotations['{MANIFEST_ANNOTATION}']"},
    }
    return yaml.safe_load(template["metadata"]["annotations"][MANIFEST_ANNOTATION])  # type: ignore[no-any-return]


def test_the_pod_reads_the_resolved_manifest_from_its_annotation() -> None:
    doc = manifest_of(build_backtest_job(backtest(), OperatorConfig()))
    assert doc["metadata"] == {"name": "lgb", "namespace": "research"}
    # Defaults are filled in, so the pod runs exactly what the API server stored.
    assert doc["spec"]["exchange"]["openCost"] == 0.0005 and doc["spec"]["benchmark"] == "SYNIDX"
    assert "status" not in doc
    assert parse_resource(doc).spec == backtest().spec


def test_job_runs_the_workload_entrypoint() -> None:
    job = build_backtest_job(backtest(), OperatorConfig(workload_image="registry.local/kq:1"))
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.local/kq:1"
    assert container["command"] == ["kubequant"]
    assert container["args"][:4] == ["workload", "backtest", "--config", "/etc/kubequant/backtest.yaml"]
    assert "--termination-log" in container["args"]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert pod["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["suspend"] is False
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/kubequant"]["readOnly"] is True and "/tmp" in mounts


def test_job_meets_restricted_pod_security() -> None:
    pod = build_backtest_job(backtest(), OperatorConfig())["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True


def test_job_knobs_and_placement() -> None:
    bt = backtest(
        job={"activeDeadlineSeconds": 600, "backoffLimit": 2, "ttlSecondsAfterFinished": 3600},
        suspend=True,
        pod={
            "image": "custom:2",
            "serviceAccountName": "backtester",
            "nodeSelector": {"kubequant.io/pool": "cpu"},
            "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
            "imagePullSecrets": [{"name": "regcred"}],
        },
    )
    job = build_backtest_job(bt, OperatorConfig())
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["activeDeadlineSeconds"], spec["backoffLimit"], spec["ttlSecondsAfterFinished"]) == (
        600,
        2,
        3600,
    )
    assert spec["suspend"] is True
    assert pod["serviceAccountName"] == "backtester"
    assert pod["nodeSelector"] == {"kubequant.io/pool": "cpu"}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["containers"][0]["image"] == "custom:2"
    assert pod["containers"][0]["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"memory": "8Gi"},
    }
    assert "tolerations" not in pod


def test_gpu_request_tolerates_the_gpu_pool() -> None:
    bt = backtest(pod={"resources": {"requests": {"nvidia.com/gpu": 1}}})
    pod = build_backtest_job(bt, OperatorConfig())["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    # Kubernetes needs extended resources in limits too.
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_data_and_artifact_volumes() -> None:
    bt = backtest(
        data={"volume": {"claimName": "market-data", "subPath": "cn"}},
        output={"artifacts": {"volume": {"claimName": "reports"}}},
    )
    pod = build_backtest_job(bt, OperatorConfig())["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "market-data", "readOnly": True}
    assert volumes["report"]["persistentVolumeClaim"] == {"claimName": "reports"}
    container = pod["containers"][0]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["data"]["subPath"] == "cn" and mounts["data"]["readOnly"] is True
    assert mounts["report"]["subPath"] == "research/lgb"
    assert container["args"][-2:] == ["--data-path", "/var/lib/kubequant/data"]


def test_builders_are_pure() -> None:
    bt, cfg = backtest(), OperatorConfig()
    assert build_backtest_job(bt, cfg) == build_backtest_job(bt, cfg)


def trained(kwargs: dict[str, Any]) -> Backtest:
    """A Backtest whose model has these kwargs (free-form: what a user can put anywhere)."""
    segments = {
        "train": {"start": "2020-01-01", "end": "2021-06-30"},
        "valid": {"start": "2021-07-01", "end": "2021-12-31"},
        "test": {"start": "2022-01-01", "end": "2022-06-30"},
    }
    return backtest(
        signal={"model": {"model": {"class": "LGBModel", "kwargs": kwargs}, "segments": segments}}
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"learning_rate": 1e-05, "l2": 2.5e20, "label": "是否", "flag": "yes", "none": "null", "num": "1.0"},
        {"deep": [[[[[{"x": [1.5, -0.0, 1e-300, "on", "~", "'q'", '"d"', "a: b", "# c", "\t\n"]}]]]]]},
    ],
)
def test_the_manifest_annotation_reads_back_exactly(kwargs: dict[str, Any]) -> None:
    """Flow-style YAML: floats in exponent form, YAML 1.1 words (yes, null, on, ~), quotes, non-ASCII
    text and deep nesting all come back as the spec the API server stored."""
    bt = trained(kwargs)
    job = build_backtest_job(bt, OperatorConfig())
    text = job["spec"]["template"]["metadata"]["annotations"][MANIFEST_ANNOTATION]
    assert "\n" not in text  # one line
    assert ("是否" in text) == ("是否" in str(kwargs))  # non-ASCII text as it is, not escaped
    assert parse_resource(manifest_of(job)).spec == bt.spec


def test_the_manifest_annotation_stays_near_the_size_of_the_spec() -> None:
    """The largest spec the API takes (80 KiB as JSON), deeply nested: the annotation stays far from
    the 256 KiB all annotations of the pod share (block-style YAML indented each level)."""
    leaf: Any = ["x" * 60] * 350
    for _ in range(30):
        leaf = {"k": leaf}
    bt = trained({"a": leaf, "b": leaf, "c": leaf})
    size = len(json.dumps(bt.spec.to_manifest()))
    text = build_backtest_job(bt, OperatorConfig())["spec"]["template"]["metadata"]["annotations"][
        MANIFEST_ANNOTATION
    ]
    assert len(text.encode()) < 1.2 * size + 4096 < 256 * 1024


def test_an_object_without_uid_cannot_own_children() -> None:
    doc = copy.deepcopy(BASE)
    del doc["metadata"]["uid"]
    with pytest.raises(ValueError, match="no uid"):
        build_backtest_job(Backtest.model_validate(doc), OperatorConfig())


def test_the_termination_message_is_only_what_the_workload_writes() -> None:
    """Never the pod's log (FallbackToLogsOnError): status and Events are readable with `view`."""
    (container,) = build_backtest_job(backtest(), OperatorConfig())["spec"]["template"]["spec"]["containers"]
    assert container["terminationMessagePolicy"] == "File"
    assert container["terminationMessagePath"] == "/dev/termination-log"
    args = container["args"]
    assert args[args.index("--termination-log") + 1] == container["terminationMessagePath"]


def test_the_workload_image_is_pulled_always_by_default() -> None:
    (container,) = build_backtest_job(backtest(), OperatorConfig())["spec"]["template"]["spec"]["containers"]
    assert container["imagePullPolicy"] == "Always"


# --------------------------------------------------------------------------- signal.modelRef


@pytest.mark.parametrize(
    ("uri", "claim", "sub_path"),
    [
        ("pvc://models/research/lgb", "models", "research/lgb"),
        ("pvc://models", "models", None),
        ("pvc://models/team/", "models", "team"),
        ("pvc://models/a/../b", None, None),
        ("pvc://Models/x", None, None),
        ("/var/lib/kubequant/artifacts", None, None),
        ("s3://bucket/model", None, None),
        (None, None, None),
    ],
)
def test_model_uri_to_volume(uri: str | None, claim: str | None, sub_path: str | None) -> None:
    from kubequant.operator.builders.backtest import model_volume_of

    got = model_volume_of(uri)
    assert ((got.claim_name, got.sub_path) if got else (None, None)) == (claim, sub_path)


def test_no_model_ref_no_model_mount() -> None:
    job = build_backtest_job(backtest(), OperatorConfig())
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "--model-dir" not in container["args"]
    assert all(m["name"] != "model" for m in container["volumeMounts"])
