"""A Backtest's children: the ConfigMap holding its resolved manifest and the Job that runs it."""

from __future__ import annotations

from typing import Any

import yaml

from kubequant.api.backtest import Backtest
from kubequant.operator.builders.common import (
    child_name,
    container_security_context,
    object_meta,
    pod_placement,
    pod_security_context,
    resources_dict,
)
from kubequant.operator.config import OperatorConfig

COMPONENT = "backtest"
CONFIG_KEY = "backtest.yaml"
CONFIG_DIR = "/etc/kubequant"
DATA_DIR = "/var/lib/kubequant/data"
CACHE_DIR = "/var/lib/kubequant/cache"
REPORT_DIR = "/var/lib/kubequant/report"
TERMINATION_LOG = "/dev/termination-log"


def job_name(bt: Backtest) -> str:
    """The Job's deterministic name."""
    return child_name(bt.metadata.name, "backtest")


def config_map_name(bt: Backtest) -> str:
    """The ConfigMap's deterministic name."""
    return child_name(bt.metadata.name, "backtest-config")


def resolved_manifest(bt: Backtest) -> dict[str, Any]:
    """The Backtest as the pod reads it: defaults filled in, no status, no server metadata."""
    return {
        "apiVersion": bt.api_version,
        "kind": "Backtest",
        "metadata": {"name": bt.metadata.name, "namespace": bt.metadata.namespace},
        "spec": bt.spec.to_manifest(),
    }


def build_backtest_config_map(bt: Backtest) -> dict[str, Any]:
    """The ConfigMap with the resolved manifest the Job's pod runs."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(bt, config_map_name(bt), COMPONENT),
        "data": {CONFIG_KEY: yaml.safe_dump(resolved_manifest(bt), sort_keys=False)},
    }


def _volumes(bt: Backtest) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Volumes, their mounts, and the extra workload args they imply."""
    spec = bt.spec
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(bt)}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    args: list[str] = []
    if spec.data.volume is not None:
        volumes.append(
            {
                "name": "data",
                "persistentVolumeClaim": {"claimName": spec.data.volume.claim_name, "readOnly": True},
            }
        )
        mount: dict[str, Any] = {"name": "data", "mountPath": DATA_DIR, "readOnly": True}
        if spec.data.volume.sub_path:
            mount["subPath"] = spec.data.volume.sub_path
        mounts.append(mount)
        args += ["--data-path", DATA_DIR]
    artifacts = spec.output.artifacts
    if artifacts.volume is not None:
        volumes.append(
            {"name": "report", "persistentVolumeClaim": {"claimName": artifacts.volume.claim_name}}
        )
        report_mount: dict[str, Any] = {"name": "report", "mountPath": REPORT_DIR}
        # Each run writes into its own folder of the shared volume.
        report_mount["subPath"] = artifacts.volume.sub_path or f"{bt.metadata.namespace}/{bt.metadata.name}"
        mounts.append(report_mount)
    elif artifacts.path is None:
        volumes.append({"name": "report", "emptyDir": {}})
        mounts.append({"name": "report", "mountPath": REPORT_DIR})
    return volumes, mounts, args


def build_backtest_job(bt: Backtest, cfg: OperatorConfig) -> dict[str, Any]:
    """The Job that runs ``kubequant workload backtest`` on the resolved manifest."""
    spec = bt.spec
    volumes, mounts, extra_args = _volumes(bt)
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
            *extra_args,
        ],
        "env": [
            {"name": "KUBEQUANT_CACHE_DIR", "value": CACHE_DIR},
            {"name": "HOME", "value": "/tmp"},
            {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},
        ],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
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
        "template": {"metadata": {"labels": object_meta(bt, "", COMPONENT)["labels"]}, "spec": pod_spec},
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
