"""Runs a TrainingJob: the one function behind `kubequant run -f training.yaml` and the RayJob's entrypoint."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kubequant.api.modules import DEFAULT_ALLOWED_MODULES
from kubequant.api.results import DataQuality
from kubequant.api.training import TrainingJob, TrainingJobSpec, TrainingResult
from kubequant.errors import KubequantError
from kubequant.workloads.data.bundle import resolve_bundle
from kubequant.workloads.training import artifacts
from kubequant.workloads.training.dataset import (
    bundle_fingerprint,
    handler_config,
    load_dataset,
    segments_config,
)
from kubequant.workloads.training.evaluate import evaluate_all
from kubequant.workloads.training.fit import model_config

log = logging.getLogger(__name__)

Progress = Callable[[str, str], None]
# The artifact folder's subfolder for Ray Train/Tune run state on a cluster (shared storage).
RAY_STATE = "ray"


def _quiet(stage: str, message: str) -> None:
    log.info("%s: %s", stage, message)


@dataclass
class TrainingOutcome:
    """What a finished training leaves: the result (status/termination message) and the artifact folder."""

    result: TrainingResult
    artifact_dir: Path
    trials: pd.DataFrame | None = None
    timings: dict[str, float] = field(default_factory=dict)


def training_mode(spec: TrainingJobSpec) -> str:
    """tune, data-parallel (LightGBM over >1 worker) or single (one fit as a Ray task)."""
    if spec.tune is not None:
        return "tune"
    if spec.ray.workers.replicas > 1 and spec.model.class_name == "LGBModel":
        return "data-parallel"
    return "single"


def run_training(
    tj: TrainingJob,
    artifact_dir: Path,
    *,
    data_path: Path | None = None,
    allowed_modules: Sequence[str] = DEFAULT_ALLOWED_MODULES,
    progress: Progress | None = None,
    ray_address: str | None = None,
) -> TrainingOutcome:
    """Load the dataset, fit (tune / data-parallel / one Ray task), evaluate, write the artifact folder."""
    from kubequant.workloads.backtest.import_guard import guarded_imports
    from kubequant.workloads.training import ray_runtime

    say = progress or _quiet
    spec = tj.spec
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    mode = training_mode(spec)
    bundle = resolve_bundle(spec.data, data_path)
    say("ray", "connecting to the Ray cluster" if ray_address else "starting Ray")
    with contextlib.ExitStack() as stack:
        session = _open_ray(stack, spec, ray_address, say)
        stack.enter_context(guarded_imports(allowed_modules))
        lap("ray")
        say("features", f"computing {spec.dataset.handler.class_name} features")
        dataset = load_dataset(spec, bundle, allowed_modules)
        data_quality = measure_data_quality(spec, bundle)
        lap("features")
        dataset_ref = ray_runtime.put_dataset(dataset)
        # Ray Train/Tune keep run state under a storage path every node must reach: on a cluster, the
        # artifact volume (mounted on the head and every worker); locally, Ray's default temp folder.
        storage = None if session.local else str(Path(artifact_dir).resolve() / RAY_STATE)
        trials: pd.DataFrame | None = None
        best_params: dict[str, Any] | None = None
        best_metric: float | None = None
        if mode == "tune":
            from kubequant.workloads.training import tuning

            assert spec.tune is not None
            say("tune", f"{spec.tune.num_samples} trials, {spec.tune.max_concurrent_trials} at once")
            search = tuning.run_search(spec, dataset_ref, progress=say, storage_path=storage)
            model, trials = search.best_model, search.trials
            best_params, best_metric = dict(search.best_params), search.best_metric
        elif mode == "data-parallel":
            from kubequant.workloads.training import distributed

            say("train", f"data-parallel LightGBM over {spec.ray.workers.replicas} Ray workers")
            replicas = spec.ray.workers.replicas
            cpus, gpus = ray_runtime.worker_resources(spec, session, workers=replicas)
            model = distributed.fit_lightgbm_data_parallel(
                spec.model,
                {},
                dataset_ref,
                replicas,
                cpus,
                gpus,
                storage_path=storage,
            )
        else:
            say("train", f"training {spec.model.class_name} on a Ray worker")
            cpus, gpus = ray_runtime.worker_resources(spec, session)
            model = ray_runtime.remote_fit(spec.model, {}, dataset_ref, cpus, gpus)
        lap("train")
        say("evaluate", "scoring the valid and test segments")
        metrics, extra = evaluate_all(model, dataset)
        if best_metric is None:
            best_metric = metrics.valid_ic
        lap("evaluate")
        result = TrainingResult(
            model_uri=str(Path(artifact_dir).resolve()),
            best_metric=best_metric if best_metric is None or math.isfinite(best_metric) else None,
            best_params=best_params,
            trials=_completed(trials) if trials is not None else 1,
            metrics=metrics,
            data_quality=data_quality,
        )
        say("artifacts", f"writing the model to {artifact_dir}")
        config = model_config(spec.model, best_params or {})
        artifacts.write_artifacts(
            Path(artifact_dir),
            model=model,
            dataset=dataset,
            handler_config=handler_config(spec),
            segments=segments_config(spec),
            metrics={**metrics.to_manifest(), **{_camel(k): v for k, v in extra.items()}},
            trials=trials,
            manifest={
                "trainingJob": {"name": tj.metadata.name, "namespace": tj.metadata.namespace or "default"},
                "mode": mode,
                "model": {
                    "class": config["class"],
                    "module": config["module_path"],
                    "params": config["kwargs"],
                },
                "handler": spec.dataset.handler.class_name,
                "universe": spec.universe.resolved_market(),
                "segments": segments_config(spec),
                "data": {
                    "path": str(bundle),
                    "fingerprint": bundle_fingerprint(bundle),
                    "region": spec.data.region,
                },
                "ray": {
                    "workers": spec.ray.workers.replicas,
                    "gpusPerWorker": spec.ray.workers.gpus_per_worker,
                },
                "result": result.to_manifest(),
                "timings": timings,
            },
        )
        lap("artifacts")
    return TrainingOutcome(result=result, artifact_dir=Path(artifact_dir), trials=trials, timings=timings)


# Ray's own message when its raylet does not register within its fixed 30 s (ray/_private/node.py).
_RAY_START_TIMEOUT = "timed out during startup"


def _open_ray(stack: contextlib.ExitStack, spec: TrainingJobSpec, address: str | None, say: Progress) -> Any:
    """Enter ray_session; a local Ray that does not start within Ray's fixed 30 s (a busy machine) is
    tried once more, then reported as a clear error instead of Ray's bare Exception."""
    from kubequant.workloads.training import ray_runtime

    for attempt in (1, 2):
        try:
            return stack.enter_context(ray_runtime.ray_session(spec, address))
        except Exception as err:
            if _RAY_START_TIMEOUT not in str(err):
                raise
            import ray

            ray.shutdown()
            if attempt == 2:
                load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
                raise KubequantError(
                    f"Ray did not start within its 30 s limit, twice (load average {load:.1f})",
                    where="ray",
                    fix="retry when the machine is less busy, or run on a Ray cluster (RAY_ADDRESS)",
                ) from err
            say("ray", "Ray did not start in time (the machine is busy); trying once more")
    raise AssertionError("unreachable")


def measure_data_quality(spec: TrainingJobSpec, bundle: Path) -> DataQuality:
    """What the run read, measured on the bundle (qlib initialised): the handler's fields for the universe's
    members from the train segment's start to the test segment's end."""
    from kubequant.workloads.data import quality

    start, end = spec.dataset.segments.train.start, spec.dataset.segments.test.end
    fields = quality.handler_fields(spec.dataset.handler.class_name)
    measured = quality.measure_universe(bundle, spec.universe.resolved_market(), start, end, fields)
    return DataQuality.model_validate(measured.to_results())


def _completed(trials: pd.DataFrame) -> int:
    if "status" not in trials.columns:
        return len(trials)
    return int((trials["status"].astype(str).str.upper() == "TERMINATED").sum())


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
