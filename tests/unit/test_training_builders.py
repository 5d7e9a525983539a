"""A TrainingJob's children (ConfigMap, KubeRay RayJob) are pure functions of the spec: GPU placement,
worker counts, the Kueue label, the restricted context, the entrypoint and the submitter."""

from __future__ import annotations

import copy
import re
import shlex
from typing import Any

import pytest
import yaml

from kubequant.api import TrainingJob
from kubequant.manifests import InvalidManifest, parse_resource
from kubequant.operator.builders.training import (
    ARTIFACT_DIR,
    MAX_RAYJOB_NAME,
    build_rayjob,
    build_training_children,
    build_training_config_map,
    config_map_name_of,
    model_uri,
    rayjob_name_of,
)
from kubequant.operator.config import OperatorConfig
from kubequant.version import RAY_VERSION

pytestmark = pytest.mark.unit

SEGMENTS = {
    "train": {"start": "2020-01-01", "end": "2020-12-31"},
    "valid": {"start": "2021-01-01", "end": "2021-06-30"},
    "test": {"start": "2021-07-01", "end": "2021-12-31"},
}
BASE: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "lgb", "namespace": "research", "uid": "u-1", "generation": 1},
    "spec": {"dataset": {"segments": SEGMENTS}},
}
CFG = OperatorConfig()
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def training(name: str = "lgb", **spec: Any) -> TrainingJob:
    doc = copy.deepcopy(BASE)
    doc["metadata"]["name"] = name
    doc["spec"].update(spec)
    tj = parse_resource(doc)
    assert isinstance(tj, TrainingJob)
    return tj


def pods(rayjob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pod specs of the run by role: head, worker, submitter."""
    cluster = rayjob["spec"]["rayClusterSpec"]
    (workers,) = cluster["workerGroupSpecs"]
    return {
        "head": cluster["headGroupSpec"]["template"]["spec"],
        "worker": workers["template"]["spec"],
        "submitter": rayjob["spec"]["submitterPodTemplate"]["spec"],
    }


def test_rayjob_names_are_what_kuberay_accepts() -> None:
    """KubeRay refuses RayJob names over 47 characters and names that are not DNS-1035 labels."""
    assert rayjob_name_of("lgb") == "lgb-ray"
    for name in ("a" * 253, "v1.2-model", "2024-lgb", "x" * 40 + ".y"):
        got = rayjob_name_of(name)
        assert len(got) <= MAX_RAYJOB_NAME and DNS_1035.match(got), (name, got)
        assert got == rayjob_name_of(name)
    # Names that the sanitising would merge stay apart.
    assert len({rayjob_name_of("a.b"), rayjob_name_of("a-b"), rayjob_name_of("tj-a-b")}) == 3
    assert rayjob_name_of("a" * 60) != rayjob_name_of("a" * 59 + "b")


def test_children_are_owned_labelled_and_in_order() -> None:
    tj = training()
    cm, rayjob = build_training_children(tj, CFG)
    assert (cm["kind"], rayjob["kind"], rayjob["apiVersion"]) == ("ConfigMap", "RayJob", "ray.io/v1")
    for obj in (cm, rayjob):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner["kind"] == "TrainingJob" and owner["uid"] == "u-1" and owner["controller"] is True
        assert obj["metadata"]["labels"]["kubequant.io/trainingjob"] == "lgb"
    assert cm["metadata"]["name"] == config_map_name_of("lgb") == "lgb-training-config"
    # Every pod of the run points back at the TrainingJob, with its role as the component.
    components = {
        role: rayjob["spec"][key]["metadata"]["labels"]["app.kubernetes.io/component"]
        for role, key in (("submitter", "submitterPodTemplate"),)
    }
    cluster = rayjob["spec"]["rayClusterSpec"]
    components["head"] = cluster["headGroupSpec"]["template"]["metadata"]["labels"][
        "app.kubernetes.io/component"
    ]
    assert components == {"submitter": "training-submitter", "head": "ray-head"}


def test_config_map_holds_the_resolved_manifest() -> None:
    doc = yaml.safe_load(build_training_config_map(training())["data"]["training.yaml"])
    assert doc["kind"] == "TrainingJob" and doc["metadata"] == {"name": "lgb", "namespace": "research"}
    # Defaults are filled in, so the driver reads exactly what the operator validated.
    assert doc["spec"]["model"]["class"] == "LGBModel" and doc["spec"]["ray"]["rayVersion"] == RAY_VERSION


def test_ray_version_is_the_images_and_no_other() -> None:
    rayjob = build_rayjob(training(), CFG)
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == RAY_VERSION
    with pytest.raises(InvalidManifest, match=rf"rayVersion must be {re.escape(RAY_VERSION)}"):
        training(ray={"rayVersion": "2.9.0"})


def test_cpu_workers_never_touch_the_gpu_pool() -> None:
    rayjob = build_rayjob(
        training(ray={"workers": {"replicas": 3, "resources": {"requests": {"cpu": "2"}}}}), CFG
    )
    (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (3, 3, 3)
    for role, spec in pods(rayjob).items():
        assert "kubequant.io/pool" not in (spec.get("nodeSelector") or {}), role
        assert not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations") or []), role
        for container in spec["containers"]:
            for part in (container.get("resources") or {}).values():
                assert "nvidia.com/gpu" not in part, role
    assert pods(rayjob)["worker"]["containers"][0]["resources"] == {"requests": {"cpu": "2"}}


def test_gpu_workers_land_on_the_gpu_pool_and_only_they() -> None:
    tj = training(
        ray={"workers": {"replicas": 2, "gpusPerWorker": 2}},
        output={"artifacts": {"volume": {"claimName": "models"}}},
        pod={"nodeSelector": {"zone": "a"}, "tolerations": [{"key": "team", "operator": "Exists"}]},
    )
    by_role = pods(build_rayjob(tj, CFG))
    worker = by_role["worker"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert worker["nodeSelector"] == {"zone": "a", "kubequant.io/pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker["tolerations"]
    assert {"key": "team", "operator": "Exists"} in worker["tolerations"]
    for role in ("head", "submitter"):
        spec = by_role[role]
        assert spec["nodeSelector"] == {"zone": "a"}, role
        assert [t["key"] for t in spec["tolerations"]] == ["team"], role


def test_gpu_request_follows_gpus_per_worker() -> None:
    """A GPU count in resources cannot contradict gpusPerWorker (nor sneak in without it)."""
    with_gpu = training(
        ray={
            "workers": {
                "replicas": 1,
                "gpusPerWorker": 1,
                "resources": {"requests": {"nvidia.com/gpu": "4", "cpu": "1"}},
            }
        }
    )
    res = pods(build_rayjob(with_gpu, CFG))["worker"]["containers"][0]["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "1"
    without = training(ray={"workers": {"replicas": 1, "resources": {"limits": {"nvidia.com/gpu": "1"}}}})
    worker = pods(build_rayjob(without, CFG))["worker"]
    assert "resources" not in worker["containers"][0]
    assert "kubequant.io/pool" not in (worker.get("nodeSelector") or {})


def test_every_pod_is_restricted_without_api_access() -> None:
    for role, spec in pods(build_rayjob(training(), CFG)).items():
        assert spec["automountServiceAccountToken"] is False, role
        assert spec["securityContext"]["runAsNonRoot"] is True, role
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, role
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}, role
            assert sc["readOnlyRootFilesystem"] is True, role
            # What Ray needs writable instead of the root filesystem.
            paths = {m["mountPath"] for m in c["volumeMounts"]}
            assert "/tmp" in paths, role
            if role != "submitter":
                assert "/dev/shm" in paths and c["env"][1] == {"name": "HOME", "value": "/tmp"}, role


def test_entrypoint_and_submitter_run_the_workload() -> None:
    tj = training(
        data={"volume": {"claimName": "market"}}, output={"artifacts": {"volume": {"claimName": "m"}}}
    )
    cfg = OperatorConfig(workload_policy={"allowedModules": ["team_models"]})
    rayjob = build_rayjob(tj, cfg)
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:5] == ["kubequant", "workload", "train", "--config", "/etc/kubequant/training.yaml"]
    assert argv[argv.index("--artifact-dir") + 1] == ARTIFACT_DIR
    assert argv[argv.index("--data-path") + 1] == "/var/lib/kubequant/data"
    assert argv[argv.index("--allow-module") + 1] == "team_models"
    (submitter,) = rayjob["spec"]["submitterPodTemplate"]["spec"]["containers"]
    assert submitter["command"] == ["kubequant"]
    assert submitter["args"][:4] == [
        "workload",
        "submit-training",
        "--termination-log",
        "/dev/termination-log",
    ]
    assert submitter["args"][submitter["args"].index("--") + 1 :] == argv
    assert submitter["terminationMessagePolicy"] == "File"
    assert rayjob["spec"]["submissionMode"] == "K8sJobMode"
    # The manifest, data and artifacts are on the head (the driver) and the workers (the fits).
    for role in ("head", "worker"):
        spec = pods(rayjob)[role]
        mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["config"]["readOnly"] is True and mounts["data"]["readOnly"] is True
        assert mounts["artifacts"]["subPath"] == "research/lgb"
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in spec["volumes"]}
        assert (claims["data"], claims["artifacts"]) == ("market", "m")


def test_artifacts_location_and_model_uri() -> None:
    on_volume = training(output={"artifacts": {"volume": {"claimName": "models", "subPath": "team"}}})
    assert model_uri(on_volume) == "pvc://models/team/research/lgb"
    shared = training(
        output={"artifacts": {"volume": {"claimName": "models", "subPath": "x"}, "perRunFolder": False}}
    )
    assert model_uri(shared) == "pvc://models/x"
    lost = training()
    assert model_uri(lost) is None
    head = pods(build_rayjob(lost, CFG))["head"]
    assert {"name": "artifacts", "emptyDir": {}} in head["volumes"]
    # A path is a folder in the pods; the root filesystem is read-only, so it is on that emptyDir too.
    for path, where in (("models/lgb", f"{ARTIFACT_DIR}/models/lgb"), ("/scratch/lgb", "/scratch/lgb")):
        rayjob = build_rayjob(training(output={"artifacts": {"path": path}}), CFG)
        argv = shlex.split(rayjob["spec"]["entrypoint"])
        assert argv[argv.index("--artifact-dir") + 1] == where
        mounts = {m["name"]: m["mountPath"] for m in pods(rayjob)["head"]["containers"][0]["volumeMounts"]}
        assert where.startswith(mounts["artifacts"])


def test_run_limits_cleanup_and_kueue() -> None:
    tj = training(
        job={
            "activeDeadlineSeconds": 3600,
            "backoffLimit": 1,
            "ttlSecondsAfterFinished": 120,
            "preRunningDeadlineSeconds": 300,
            "submitterBackoffLimit": 3,
        }
    )
    spec = build_rayjob(tj, CFG)["spec"]
    assert spec["activeDeadlineSeconds"] == 3600 and spec["backoffLimit"] == 1
    assert spec["ttlSecondsAfterFinished"] == 120 and spec["preRunningDeadlineSeconds"] == 300
    assert spec["submitterConfig"] == {"backoffLimit": 3}
    assert spec["shutdownAfterJobFinishes"] is True and spec["suspend"] is False
    # Defaults: a bounded wait for the cluster, clean-up at once, no Kueue label.
    default = build_rayjob(training(), CFG)
    assert (
        default["spec"]["preRunningDeadlineSeconds"] == 600
        and default["spec"]["ttlSecondsAfterFinished"] == 0
    )
    assert "activeDeadlineSeconds" not in default["spec"]
    assert "kueue.x-k8s.io/queue-name" not in default["metadata"]["labels"]
    # suspend passes through (KubeRay needs shutdownAfterJobFinishes with it, which is always set).
    assert build_rayjob(training(suspend=True), CFG)["spec"]["suspend"] is True
    queued = build_rayjob(training(job={"queueName": "research"}), CFG)
    assert queued["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "research"
    assert queued["spec"]["suspend"] is True  # Kueue starts it when it admits it


def test_pod_options_reach_every_pod() -> None:
    tj = training(
        pod={
            "image": "registry.example/kq:1@sha256:" + "a" * 64,
            "imagePullPolicy": "IfNotPresent",
            "serviceAccountName": "trainer",
            "priorityClassName": "research",
            "imagePullSecrets": [{"name": "regcred"}],
            "resources": {"requests": {"cpu": "250m"}},
        }
    )
    cfg = CFG
    by_role = pods(build_rayjob(tj, cfg))
    for role, spec in by_role.items():
        assert spec["serviceAccountName"] == "trainer" and spec["priorityClassName"] == "research", role
        assert spec["imagePullSecrets"] == [{"name": "regcred"}], role
        assert spec["containers"][0]["image"].startswith("registry.example/kq:1@sha256:"), role
        assert spec["containers"][0]["imagePullPolicy"] == "IfNotPresent", role
    # spec.pod.resources are the submitter's.
    assert by_role["submitter"]["containers"][0]["resources"] == {"requests": {"cpu": "250m"}}
    assert "resources" not in by_role["head"]["containers"][0]


def test_builders_are_pure() -> None:
    tj = training(ray={"workers": {"replicas": 2}}, output={"artifacts": {"volume": {"claimName": "m"}}})
    assert build_training_children(tj, CFG) == build_training_children(tj, CFG)
    rayjob = build_rayjob(tj, CFG)
    cluster = rayjob["spec"]["rayClusterSpec"]
    # Head and worker templates are equal where they should be, but never the same objects.
    head_mounts = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    worker_mounts = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert head_mounts == worker_mounts and head_mounts is not worker_mounts
