"""A Backtest's child: the Job that runs it, its pod reading the resolved manifest from its own annotation.

The manifest travels in the pod template (``kubequant.io/manifest``, mounted through the downward API
at the path a ConfigMap had before) rather than in a ConfigMap of its own: one object and one API write
fewer per Backtest, and a Backtest never changes after creation, so nothing has to be kept in step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kubequant.api.backtest import Backtest
from kubequant.operator.builders.common import (
    DATA_DIR,
    child_name,
    container_security_context,
    data_volume,
    manifest_annotation,
    object_meta,
    pod_placement,
    pod_security_context,
    resources_dict,
)
from kubequant.operator.config import OperatorConfig

COMPONENT = "backtest"
CONFIG_KEY = "backtest.yaml"
CONFIG_DIR = "/etc/kubequant"
CACHE_DIR = "/var/lib/kubequant/cache"
REPORT_DIR = "/var/lib/kubequant/report"
TERMINATION_LOG = "/dev/termination-log"
MODEL_DIR = "/var/run/kubequant/model"  # a signal.modelRef's artifact, read-only
# pvc://<claim>/<folder>: a TrainingJob's status.modelUri when its artifact is on a shared volume.
_PVC_URI = re.compile(r"^pvc://(?P<claim>[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)(/(?P<path>[^/][^\x00]*))?$")


@dataclass(frozen=True)
class ModelVolume:
    """Where a TrainingJob's model artifact is: a folder of a PersistentVolumeClaim."""

    claim_name: str
    sub_path: str | None


def model_volume_of(uri: str | None) -> ModelVolume | None:
    """The claim and folder of a ``pvc://<claim>/<folder>`` model URI; None for anything else (a path in a
    deleted Ray cluster, another scheme, a folder with '..')."""
    match = _PVC_URI.match(uri or "")
    if match is None:
        return None
    path = (match.group("path") or "").rstrip("/") or None
    if path is not None and any(part in ("", ".", "..") for part in path.split("/")):
        return None
    return ModelVolume(match.group("claim"), path)


def job_name(bt: Backtest) -> str:
    """The Job's deterministic name."""
    return job_name_of(bt.metadata.name)


def job_name_of(backtest_name: str) -> str:
    """The deterministic name of the Job of the Backtest called ``backtest_name``."""
    return child_name(backtest_name, "backtest")


MANIFEST_ANNOTATION = "kubequant.io/manifest"


def report_sub_path(bt: Backtest) -> str | None:
    """The report's folder in the artifact volume: <subPath>/<namespace>/<name>, or subPath as it is on opt-out.

    Object names are unique per namespace and the API refuses '..' in subPath, so no run can
    write into another run's folder unless both opt out of per-run folders.
    """
    artifacts = bt.spec.output.artifacts
    if artifacts.volume is None:
        return None
    base = artifacts.volume.sub_path
    if not artifacts.per_run_folder:
        return base
    own = f"{bt.metadata.namespace or 'default'}/{bt.metadata.name}"
    return f"{base}/{own}" if base else own


def _volumes(
    bt: Backtest, model: ModelVolume | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Volumes, their mounts, and the extra workload args they imply."""
    spec = bt.spec
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "downwardAPI": {
                "items": [
                    {
                        "path": CONFIG_KEY,
                        "fieldRef": {"fieldPath": f"metadata.annotations['{MANIFEST_ANNOTATION}']"},
                    }
                ]
            },
        },
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    args: list[str] = []
    if (data := data_volume(spec.data)) is not None:
        volumes.append(data[0])
        mounts.append(data[1])
        args += ["--data-path", DATA_DIR]
    artifacts = spec.output.artifacts
    if artifacts.volume is not None:
        volumes.append(
            {"name": "report", "persistentVolumeClaim": {"claimName": artifacts.volume.claim_name}}
        )
        report_mount = {"name": "report", "mountPath": REPORT_DIR, "subPath": report_sub_path(bt)}
        mounts.append(report_mount)
    elif artifacts.path is None:
        volumes.append({"name": "report", "emptyDir": {}})
        mounts.append({"name": "report", "mountPath": REPORT_DIR})
    if model is not None:
        volumes.append(
            {"name": "model", "persistentVolumeClaim": {"claimName": model.claim_name, "readOnly": True}}
        )
        mount: dict[str, Any] = {"name": "model", "mountPath": MODEL_DIR, "readOnly": True}
        if model.sub_path:
            mount["subPath"] = model.sub_path
        mounts.append(mount)
        args += ["--model-dir", MODEL_DIR]
    return volumes, mounts, args


def build_backtest_job(bt: Backtest, cfg: OperatorConfig, model: ModelVolume | None = None) -> dict[str, Any]:
    """The Job that runs ``kubequant workload backtest`` on the resolved manifest; ``model``: the
    artifact of the TrainingJob that ``signal.modelRef`` names, mounted read-only."""
    spec = bt.spec
    volumes, mounts, extra_args = _volumes(bt, model)
    report_dir = spec.output.artifacts.path or REPORT_DIR
    container: dict[str, Any] = {
        "name": COMPONENT,
        "image": spec.pod.image or cfg.workload_image,
        "imagePullPolicy": spec.pod.image_pull_policy or cfg.workload_image_pull_policy,
        "command": [cfg.workload_command],
        "args": [
            "workload",
            "backtest",
            "--config",
            f"{CONFIG_DIR}/{CONFIG_KEY}",
            "--report-dir",
            report_dir,
            # Passed explicitly so the results land where the kubelet reads the termination message.
            "--termination-log",
            TERMINATION_LOG,
            # The cluster's extra module prefixes: the pod checks the manifest and qlib's imports again.
            *(arg for prefix in cfg.workload_policy.allowed_modules for arg in ("--allow-module", prefix)),
            *extra_args,
        ],
        "env": [
            {"name": "KUBEQUANT_CACHE_DIR", "value": CACHE_DIR},
            {"name": "HOME", "value": "/tmp"},
            {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},
        ],
        "terminationMessagePath": TERMINATION_LOG,
        # Only what the workload writes there (its results or its structured error): never its
        # logs, which anyone who can read the Backtest's status or Events would see.
        "terminationMessagePolicy": "File",
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    resources = resources_dict(spec.pod.resources)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
        **pod_placement(spec.pod, cfg),
    }
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.job.backoff_limit,
        "suspend": spec.suspend,
        "template": {
            "metadata": {
                "labels": object_meta(bt, "", COMPONENT)["labels"],
                "annotations": {MANIFEST_ANNOTATION: manifest_annotation(bt)},
            },
            "spec": pod_spec,
        },
    }
    if spec.job.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.job.active_deadline_seconds
    if spec.job.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.job.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": object_meta(bt, job_name(bt), COMPONENT),
        "spec": job_spec,
    }
