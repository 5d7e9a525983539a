"""The Ray a training run uses: a private local Ray (``kubequant run``) or the cluster it was submitted to.

Locally, Ray is started in this process, sized to the machine, with every server bound to 127.0.0.1 and
no dashboard; it is stopped on exit. On a cluster (an address, ``RAY_ADDRESS`` as ``ray job submit`` sets
for the entrypoint, or a Ray already initialised in this process) the driver connects and leaves the
cluster running. Either way the driver's Ray must be kubequant's pinned release, on every node too.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kubequant.api.common import ClassReference
from kubequant.api.quantity import parse_quantity
from kubequant.api.training import TrainingJobSpec
from kubequant.errors import ConfigError, KubequantError
from kubequant.version import RAY_VERSION

log = logging.getLogger(__name__)

# How long the per-node version probe may wait for a worker process on each node.
VERSION_PROBE_TIMEOUT_S = 180.0
LOCAL_START_TRIES = 3
# Ray's "multi-node clusters allowed" switch (named for Windows/macOS, where it is off by default).
_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RayVersionError(KubequantError):
    """The driver's or a node's Ray is not the release kubequant pins."""


class RayConnectError(KubequantError):
    """The Ray cluster named by the address could not be reached."""


class TrainingWorkerError(KubequantError):
    """A Ray worker running part of the training failed or was lost."""

    def __init__(self, message: str) -> None:
        super().__init__(
            message,
            where="spec.ray.workers",
            fix="see the worker's log (ray logs) — an OOM kill needs more memory per worker",
        )


@dataclass(frozen=True)
class RaySession:
    """The Ray a run is using."""

    address: str  # the GCS address ("127.0.0.1:port" locally)
    local: bool  # started (and stopped) by this process
    cpus: float  # CPUs in the cluster
    gpus: float
    node_ids: tuple[str, ...] = field(default_factory=tuple)  # alive nodes at start
    largest_node_cpus: float = 0.0


def _target_address(address: str | None) -> str | None:
    if address:
        return address
    env = os.environ.get("RAY_ADDRESS", "").strip()
    return env or None


def _machine_cpus() -> int:
    """CPUs this process may use: its affinity mask, and the cgroup quota when one is set."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def check_driver_version(version: str = ray.__version__) -> None:
    """Refuse a driver whose Ray is not kubequant's pinned release."""
    if version != RAY_VERSION:
        raise RayVersionError(
            f"this driver runs Ray {version} but kubequant {RAY_VERSION!r} is pinned to Ray {RAY_VERSION}",
            where="ray.__version__",
            fix=f"install ray[default,train,tune]=={RAY_VERSION} (pip install -e . in the kubequant venv)",
        )


def check_node_versions(versions: dict[str, str], expected: str = RAY_VERSION) -> None:
    """Refuse a cluster any of whose nodes runs another Ray release than the driver."""
    wrong = {node: v for node, v in versions.items() if v != expected}
    if wrong:
        listed = ", ".join(f"node {node[:12]} has Ray {v}" for node, v in sorted(wrong.items()))
        raise RayVersionError(
            f"the Ray cluster's nodes differ from the driver's Ray {expected}: {listed}",
            where="spec.ray.rayVersion",
            fix=f"run the cluster on the kubequant image (Ray {expected}), or a driver with the cluster's Ray",
        )


@ray.remote(num_cpus=0, max_retries=0)
def _node_ray_version() -> str:
    return ray.__version__


def probe_node_versions() -> dict[str, str]:
    """Ray's version on every alive node, asked of a worker process pinned to that node."""
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    refs = {
        node: _node_ray_version.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        ).remote()
        for node in nodes
    }
    try:
        return dict(zip(refs, ray.get(list(refs.values()), timeout=VERSION_PROBE_TIMEOUT_S), strict=True))
    except ray.exceptions.GetTimeoutError as err:
        raise RayConnectError(
            f"no worker process started within {VERSION_PROBE_TIMEOUT_S:.0f}s on every Ray node",
            where="spec.ray",
            fix="check the Ray cluster's health (ray status) and that its nodes can start Python workers",
        ) from err


def _start_local() -> tuple[str | None, bool]:
    """Start the private local Ray; returns what to restore after it stops (see _restore_local)."""
    from ray._private import ray_constants

    saved = (os.environ.get(_CLUSTER_SWITCH), ray_constants.ENABLE_RAY_CLUSTER)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray resolves a loopback node IP to the host's routable address unless it believes multi-node clusters
    # are off (its switch for desktops). Off, the GCS, raylet, object manager and workers all bind
    # 127.0.0.1. The environment reaches Ray's child processes; the module constant this driver's Ray
    # already read at import is set to match.
    os.environ[_CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        for attempt in range(1, LOCAL_START_TRIES + 1):
            try:
                ray.init(
                    address="local",
                    num_cpus=_machine_cpus(),
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    log_to_driver=True,
                    logging_level=logging.WARNING,
                    configure_logging=False,
                )
                break
            except Exception as err:
                # Ray gives its raylet 30 s (fixed) to register; a busy machine can miss that once
                if "timed out during startup" not in str(err) or attempt == LOCAL_START_TRIES:
                    raise
                log.warning("the local Ray did not start in time (attempt %d); starting it again", attempt)
                ray.shutdown()
    except BaseException:
        _restore_local(saved)
        raise
    return saved


def _restore_local(saved: tuple[str | None, bool]) -> None:
    """Undo the single-host switch, so a later connection to a real cluster in this process resolves IPs."""
    from ray._private import ray_constants

    env, constant = saved
    if env is None:
        os.environ.pop(_CLUSTER_SWITCH, None)
    else:
        os.environ[_CLUSTER_SWITCH] = env
    ray_constants.ENABLE_RAY_CLUSTER = constant


def _connect(address: str) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address=address, logging_level=logging.WARNING, configure_logging=False)
    except (ConnectionError, RuntimeError) as err:
        text = str(err)
        if "version" in text.lower() and "mismatch" in text.lower():
            raise RayVersionError(
                f"the Ray cluster at {address} refused this driver's Ray {ray.__version__}: {text.splitlines()[0]}",
                where="spec.ray.rayVersion",
                fix=f"run the cluster on the kubequant image (Ray {RAY_VERSION})",
            ) from err
        raise RayConnectError(
            f"cannot connect to the Ray cluster at {address}: {text.splitlines()[0] if text else err!r}",
            where="RAY_ADDRESS",
            fix="check the address (host:port of the head's GCS) and that the cluster is up (ray status)",
        ) from err


def _describe() -> tuple[float, float, tuple[str, ...], float]:
    total = ray.cluster_resources()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    largest = max((n.get("Resources", {}).get("CPU", 0.0) for n in alive), default=0.0)
    return (
        float(total.get("CPU", 0.0)),
        float(total.get("GPU", 0.0)),
        tuple(n["NodeID"] for n in alive),
        float(largest),
    )


@contextmanager
def ray_session(spec: TrainingJobSpec, address: str | None = None) -> Iterator[RaySession]:
    """Open the Ray the run uses (see the module doc), check its version, and clean up on exit."""
    check_driver_version()
    target = _target_address(address)
    started = connected = False
    saved: tuple[str | None, bool] | None = None
    if ray.is_initialized():
        log.info("reusing the Ray this process already joined")
    elif target is None:
        saved = _start_local()
        started = True
    else:
        _connect(target)
        connected = True
    try:
        if not started:
            check_node_versions(probe_node_versions())
        cpus, gpus, nodes, largest = _describe()
        want_gpus = spec.ray.workers.gpus_per_worker
        if want_gpus and gpus < want_gpus:
            raise ConfigError(
                f"spec.ray.workers asks for {want_gpus} GPU(s) per worker but the Ray cluster has {gpus:g}",
                where="spec.ray.workers.gpusPerWorker",
                fix="set gpusPerWorker: 0, or run on a cluster with a GPU pool",
            )
        session = RaySession(
            address=ray.get_runtime_context().gcs_address,
            local=started,
            cpus=cpus,
            gpus=gpus,
            node_ids=nodes,
            largest_node_cpus=largest,
        )
        log.info(
            "Ray %s: %s, %g CPUs, %g GPUs, %d node(s)",
            ray.__version__,
            session.address,
            cpus,
            gpus,
            len(nodes),
        )
        yield session
    finally:
        if started or connected:
            ray.shutdown()  # stops the local Ray; from a cluster it only disconnects this driver
        if saved is not None:
            _restore_local(saved)


def worker_resources(spec: TrainingJobSpec, session: RaySession, *, workers: int = 1) -> tuple[float, float]:
    """CPUs and GPUs of one training worker: the worker pod's CPU request or limit when set, else the
    machine shared by ``workers`` (locally) or the largest node (on a cluster)."""
    gpus = float(spec.ray.workers.gpus_per_worker)
    res = spec.ray.workers.resources
    cpu = None
    for source in (res.requests if res else None, res.limits if res else None):
        if source and "cpu" in source:
            cpu = float(parse_quantity(source["cpu"], "spec.ray.workers.resources.cpu"))
            break
    if session.local:
        cpus = max(1.0, math.floor(session.cpus / max(1, workers)))
        if cpu is not None:
            cpus = min(cpus, max(1.0, math.floor(cpu)))
        return cpus, gpus
    if cpu is None:
        cpu = session.largest_node_cpus or 1.0
    # A request like 1500m still gets a whole CPU slot: Ray schedules fractional CPUs, LightGBM threads do not.
    return max(1.0, math.floor(cpu)), gpus


def put_dataset(dataset: Any) -> ray.ObjectRef:
    """Put the prepared qlib dataset in the object store once; trials and workers read it from there.

    qlib handlers drop their loaded frames (underscore attributes) when pickled unless told to dump
    everything; a dataset without its frames would make every reader recompute Alpha158.
    """
    config = getattr(dataset, "config", None)
    if callable(config):
        config(dump_all=True, recursive=True)
    return ray.put(dataset)


@ray.remote(max_retries=1)
def _fit_task(spec_model: ClassReference, overrides: dict[str, Any], dataset: Any) -> Any:
    from kubequant.workloads.training.fit import fit_model

    return fit_model(spec_model, overrides, dataset)


def remote_fit(
    spec_model: ClassReference,
    overrides: dict[str, Any],
    dataset_ref: ray.ObjectRef,
    num_cpus: float,
    num_gpus: float = 0.0,
) -> Any:
    """Fit the model as one Ray task sized to one worker (on a cluster it lands on a worker node).

    Ray sets OMP_NUM_THREADS to the task's CPUs, so LightGBM uses exactly the CPUs it was given. A task
    whose worker process dies is retried once, then the error names the lost worker.
    """
    ref = _fit_task.options(num_cpus=num_cpus, num_gpus=num_gpus).remote(spec_model, overrides, dataset_ref)
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = err.cause if isinstance(err.cause, BaseException) else err
        if isinstance(cause, KubequantError):
            raise cause from err
        raise TrainingWorkerError(f"the model fit failed on its Ray worker: {cause!r}") from err
    except (
        ray.exceptions.WorkerCrashedError,
        ray.exceptions.NodeDiedError,
        ray.exceptions.OwnerDiedError,
    ) as err:
        raise TrainingWorkerError(f"the Ray worker fitting the model was lost (retried once): {err}") from err
