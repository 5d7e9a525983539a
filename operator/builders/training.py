"""A TrainingJob's children: the ConfigMap holding its resolved manifest and the KubeRay RayJob that runs it.

The RayJob (ray.io/v1, KubeRay v1.6) carries its RayCluster inline: a head group that runs the
driver (``kubequant workload train``, submitted as the Ray job's entrypoint) and one worker group
where the fits run. KubeRay makes the RayCluster and the submitter Job and owns them; the operator
owns the RayJob, so deleting the TrainingJob removes all of it (artifacts on their volume stay).

Choices, and why:

- Submission mode K8sJobMode, with kubequant's own submitter command (KubeRay keeps a command
  set in ``submitterPodTemplate``): the submitter is a pod, so its termination message can carry
  the results back to the operator without the workload ever writing to the API; HTTPMode has no
  pod, SidecarMode runs inside the head (no separate termination message, and no
  ``submitterPodTemplate``).
- ``shutdownAfterJobFinishes`` always (clusters left behind are the commonest KubeRay complaint,
  and KubeRay requires it for ``suspend``), with ``ttlSecondsAfterFinished`` from the spec.
- ``preRunningDeadlineSeconds`` defaults to 10 minutes so a run whose pods cannot be scheduled or
  pulled fails with a reason instead of sitting in ``Initializing``.
- The head starts with ``num-cpus: 0``: the driver runs there, the fits run on the workers.
- Pods follow the "restricted" Pod Security Standard with a read-only root filesystem; Ray itself
  needs writable ``/tmp`` (its session directory, sockets, spilled objects) and ``/dev/shm`` (the
  object store), both emptyDirs. KubeRay adds its own probes and ``ray start`` command to the Ray
  containers; neither needs a privilege.
"""

from __future__ import annotations

import hashlib
import shlex
from typing import Any

from kubequant.api.training import TrainingJob
from kubequant.operator.builders.common import (
    DATA_DIR,
    GPU_RESOURCE,
    child_name,
    container_security_context,
    data_volume,
    labels,
    manifest_config_map,
    object_meta,
    pod_placement,
    pod_security_context,
    resources_dict,
)
from kubequant.operator.config import OperatorConfig
from kubequant.version import RAY_VERSION

RAY_API_VERSION = "ray.io/v1"
COMPONENT = "training"
CONFIG_KEY = "training.yaml"
CONFIG_DIR = "/etc/kubequant"
CACHE_DIR = "/var/lib/kubequant/cache"
ARTIFACT_DIR = "/var/lib/kubequant/artifacts"
TERMINATION_LOG = "/dev/termination-log"
WORKER_GROUP = "workers"
GPU_POOL_LABEL = "kubequant.io/pool"
GPU_POOL = "gpu"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# KubeRay refuses RayJob names over 47 characters (its RayCluster adds "-xxxxx", its Services more)
# and names that are not DNS-1035 labels.
MAX_RAYJOB_NAME = 47
# The submitter imports Ray's job client and follows the job's logs: small, but not KubeRay's 200Mi.
SUBMITTER_RESOURCES = {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}


def rayjob_name_of(training_name: str) -> str:
    """The RayJob's deterministic name (also the submitter Job's: KubeRay names it after the RayJob)."""
    safe = training_name.replace(".", "-")
    if safe != training_name or not safe[:1].isalpha():
        # Not a DNS-1035 label as it is: a hash of the real name keeps apart the names the
        # replacement would merge ("a.b", "a-b", and a TrainingJob really called "tj-a-b").
        digest = hashlib.sha256(training_name.encode()).hexdigest()[:8]
        safe = f"tj-{safe[: MAX_RAYJOB_NAME - 16].rstrip('-')}-{digest}"
    return child_name(safe, "ray", MAX_RAYJOB_NAME)


def config_map_name_of(training_name: str) -> str:
    """The ConfigMap's deterministic name."""
    return child_name(training_name, "training-config")


def artifact_sub_path(tj: TrainingJob) -> str | None:
    """The run's folder in the artifact volume: <subPath>/<namespace>/<name>, or subPath on opt-out."""
    artifacts = tj.spec.output.artifacts
    if artifacts.volume is None:
        return None
    base = artifacts.volume.sub_path
    if not artifacts.per_run_folder:
        return base
    own = f"{tj.metadata.namespace or 'default'}/{tj.metadata.name}"
    return f"{base}/{own}" if base else own


def model_uri(tj: TrainingJob) -> str | None:
    """``pvc://<claim>/<run folder>`` where the model lands on a shared volume, or None (no volume)."""
    volume = tj.spec.output.artifacts.volume
    if volume is None:
        return None
    path = artifact_sub_path(tj)
    return f"pvc://{volume.claim_name}/{path}" if path else f"pvc://{volume.claim_name}"


def artifact_dir(tj: TrainingJob) -> str:
    """Where the driver writes the artifact in the pods: the volume's mount, or ``output.artifacts.path``
    (relative to ARTIFACT_DIR when relative: the root filesystem is read-only), on an emptyDir."""
    path = tj.spec.output.artifacts.path
    if tj.spec.output.artifacts.volume is not None or not path:
        return ARTIFACT_DIR
    return path if path.startswith("/") else f"{ARTIFACT_DIR}/{path}"


def build_training_config_map(tj: TrainingJob) -> dict[str, Any]:
    """The ConfigMap with the resolved manifest, mounted read-only on the head and the workers."""
    return manifest_config_map(tj, config_map_name_of(tj.metadata.name), COMPONENT, CONFIG_KEY)


def entrypoint_argv(tj: TrainingJob, cfg: OperatorConfig) -> list[str]:
    """The driver's command line: the same function `kubequant run -f training.yaml` calls."""
    spec = tj.spec
    argv = [
        cfg.workload_command,
        "workload",
        "train",
        "--config",
        f"{CONFIG_DIR}/{CONFIG_KEY}",
        "--artifact-dir",
        artifact_dir(tj),
    ]
    if spec.data.volume is not None:
        argv += ["--data-path", DATA_DIR]
    # The cluster's extra module prefixes: the driver checks the manifest and qlib's imports again.
    for prefix in cfg.workload_policy.allowed_modules:
        argv += ["--allow-module", prefix]
    return argv


def _ray_volumes(tj: TrainingJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and mounts of the head and the workers (the same on both, so any node sees the run)."""
    spec = tj.spec
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name_of(tj.metadata.name)}},
        {"name": "tmp", "emptyDir": {}},
        # Ray's object store lives in /dev/shm; the runtime's default 64 MiB would make Ray spill to disk.
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
        {"name": "cache", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    if (data := data_volume(spec.data)) is not None:
        volumes.append(data[0])
        mounts.append(data[1])
    artifacts = spec.output.artifacts
    if artifacts.volume is not None:
        volumes.append(
            {"name": "artifacts", "persistentVolumeClaim": {"claimName": artifacts.volume.claim_name}}
        )
        mounts.append({"name": "artifacts", "mountPath": ARTIFACT_DIR, "subPath": artifact_sub_path(tj)})
    else:
        # One worker only (the handler refuses more): the artifact is lost with the cluster.
        target = artifact_dir(tj)
        volumes.append({"name": "artifacts", "emptyDir": {}})
        mounts.append(
            {"name": "artifacts", "mountPath": ARTIFACT_DIR if target.startswith(ARTIFACT_DIR) else target}
        )
    return volumes, mounts


def _env() -> list[dict[str, str]]:
    return [
        {"name": "KUBEQUANT_CACHE_DIR", "value": CACHE_DIR},
        {"name": "HOME", "value": "/tmp"},
        {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},
    ]


def _container(
    name: str, tj: TrainingJob, cfg: OperatorConfig, resources: dict[str, Any], mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": tj.spec.pod.image or cfg.workload_image,
        "imagePullPolicy": tj.spec.pod.image_pull_policy or cfg.workload_image_pull_policy,
        "env": _env(),
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    if resources:
        container["resources"] = resources
    return container


def worker_resources(tj: TrainingJob) -> dict[str, Any]:
    """Each worker's resources, with ``gpusPerWorker`` as its nvidia.com/gpu limit (and request, if one is set)."""
    workers = tj.spec.ray.workers
    out = resources_dict(workers.resources)
    gpus = workers.gpus_per_worker
    if gpus > 0:
        out.setdefault("limits", {})[GPU_RESOURCE] = str(gpus)
        if GPU_RESOURCE in out.get("requests", {}):
            out["requests"][GPU_RESOURCE] = str(gpus)
    else:
        # No GPU asked for: none may slip in through resources either, or the pod would wait for the pool.
        for part in ("requests", "limits"):
            out.get(part, {}).pop(GPU_RESOURCE, None)
        out = {k: v for k, v in out.items() if v}
    return out


def _placement(tj: TrainingJob, cfg: OperatorConfig, gpu: bool) -> dict[str, Any]:
    """ServiceAccount, pull secrets, node selector, tolerations and priority of one pod of the run.

    The GPU pool's selector and toleration go on the workers when they ask for GPUs, and on no
    other pod: spec.pod.resources are the submitter's and must not pull anything onto the pool.
    """
    spec = pod_placement(tj.spec.pod.model_copy(update={"resources": None}), cfg)
    if gpu:
        spec["nodeSelector"] = {**spec.get("nodeSelector", {}), GPU_POOL_LABEL: GPU_POOL}
        tolerations = list(spec.get("tolerations", []))
        if not any(t.get("key") == GPU_RESOURCE for t in tolerations):
            tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
        spec["tolerations"] = tolerations
    return spec


def _pod_spec(
    tj: TrainingJob, cfg: OperatorConfig, container: dict[str, Any], volumes: list[dict[str, Any]], gpu: bool
) -> dict[str, Any]:
    return {
        # The workload gets no API access: results leave through the submitter's termination message.
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
        **_placement(tj, cfg, gpu),
    }


def _template(tj: TrainingJob, component: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"labels": labels(tj, component)}, "spec": spec}


def build_submitter_template(tj: TrainingJob, cfg: OperatorConfig) -> dict[str, Any]:
    """The submitter pod: ``kubequant workload submit-training`` submits the entrypoint to the Ray cluster
    (KubeRay sets RAY_DASHBOARD_ADDRESS and RAY_JOB_SUBMISSION_ID), follows it, and leaves the
    TrainingResult JSON (or ``{"error": ...}``) in its termination message."""
    container = {
        "name": "submitter",
        "image": tj.spec.pod.image or cfg.workload_image,
        "imagePullPolicy": tj.spec.pod.image_pull_policy or cfg.workload_image_pull_policy,
        "command": [cfg.workload_command],
        "args": [
            "workload",
            "submit-training",
            "--termination-log",
            TERMINATION_LOG,
            "--",
            *entrypoint_argv(tj, cfg),
        ],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "terminationMessagePath": TERMINATION_LOG,
        # Only what the submitter writes there (the results or its structured error), never its logs.
        "terminationMessagePolicy": "File",
        "securityContext": container_security_context(),
        "resources": resources_dict(tj.spec.pod.resources) or SUBMITTER_RESOURCES,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    spec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
        **_placement(tj, cfg, gpu=False),
    }
    return _template(tj, f"{COMPONENT}-submitter", spec)


def build_ray_cluster_spec(tj: TrainingJob, cfg: OperatorConfig) -> dict[str, Any]:
    """The inline RayCluster: a head that runs the driver, one fixed-size worker group."""
    ray = tj.spec.ray
    head_volumes, head_mounts = _ray_volumes(tj)
    worker_volumes, worker_mounts = _ray_volumes(tj)  # equal, not shared: KubeRay edits each template
    head = _container("ray-head", tj, cfg, resources_dict(ray.head_resources), head_mounts)
    worker = _container("ray-worker", tj, cfg, worker_resources(tj), worker_mounts)
    gpu = ray.workers.gpus_per_worker > 0
    replicas = ray.workers.replicas
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": False,
        "headGroupSpec": {
            # The driver runs here; no task or actor is scheduled on the head.
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": _template(tj, "ray-head", _pod_spec(tj, cfg, head, head_volumes, gpu=False)),
        },
        "workerGroupSpecs": [
            {
                "groupName": WORKER_GROUP,
                "replicas": replicas,
                "minReplicas": replicas,
                "maxReplicas": replicas,
                "rayStartParams": {},
                "template": _template(tj, "ray-worker", _pod_spec(tj, cfg, worker, worker_volumes, gpu=gpu)),
            }
        ],
    }


def build_rayjob(tj: TrainingJob, cfg: OperatorConfig) -> dict[str, Any]:
    """The KubeRay RayJob that runs ``kubequant workload train`` on a RayCluster of its own."""
    spec, job = tj.spec, tj.spec.job
    meta = object_meta(tj, rayjob_name_of(tj.metadata.name), COMPONENT)
    if job.queue_name:
        meta["labels"][QUEUE_LABEL] = job.queue_name
    rayjob_spec: dict[str, Any] = {
        "entrypoint": shlex.join(entrypoint_argv(tj, cfg)),
        "submissionMode": "K8sJobMode",
        "submitterPodTemplate": build_submitter_template(tj, cfg),
        "submitterConfig": {"backoffLimit": job.submitter_backoff_limit},
        "rayClusterSpec": build_ray_cluster_spec(tj, cfg),
        "backoffLimit": job.backoff_limit,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": job.ttl_seconds_after_finished or 0,
        # Kueue admits a queued RayJob by resuming it; until then it must not start.
        "suspend": bool(spec.suspend or job.queue_name),
    }
    if job.active_deadline_seconds is not None:
        rayjob_spec["activeDeadlineSeconds"] = job.active_deadline_seconds
    if job.pre_running_deadline_seconds is not None:
        rayjob_spec["preRunningDeadlineSeconds"] = job.pre_running_deadline_seconds
    return {"apiVersion": RAY_API_VERSION, "kind": "RayJob", "metadata": meta, "spec": rayjob_spec}


def build_training_children(tj: TrainingJob, cfg: OperatorConfig) -> list[dict[str, Any]]:
    """The ConfigMap, then the RayJob (pure)."""
    return [build_training_config_map(tj), build_rayjob(tj, cfg)]
