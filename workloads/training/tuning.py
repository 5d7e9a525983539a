"""A Ray Tune search over the TrainingJob's ``tune.searchSpace``: trials of qlib models, ASHA, a trials table.

Every trial reads the dataset prepared once in the object store (Alpha158 is never recomputed), fits the
spec's model with the trial's params on top of ``spec.model.kwargs``, and is scored on the valid segment
(valid IC / rank IC as qlib's SignalRecord computes them, or the MSE loss). LightGBM models report the
metric while they boost, so ASHA stops bad trials at its rungs; other models report once, at the end.
The finished trial's model is checkpointed to the run's storage (kept); the best one is loaded from there,
or refit with the best params if its checkpoint cannot be read.
"""

from __future__ import annotations

import logging
import math
import pickle
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from ray import tune

from kubequant.api.common import ClassReference
from kubequant.api.training import TrainingJobSpec
from kubequant.errors import KubequantError
from kubequant.workloads.training.search_space import to_tune_space

log = logging.getLogger(__name__)

Progress = Callable[[str, str], None]
MODEL_FILE = "model.pkl"
# ASHA rungs are GRACE_ROUNDS * REDUCTION_FACTOR**k boosting rounds (10, 30, 90, 270, …): a trial in the
# bottom two thirds at a rung stops there. Metrics are reported every REPORT_EVERY rounds (rungs included).
GRACE_ROUNDS = 10
REDUCTION_FACTOR = 3
REPORT_EVERY = 5


class TuneFailedError(KubequantError):
    """Every trial of the search failed."""


@dataclass
class SearchOutcome:
    """The search's result: the best trial's params, metric and fitted model, and every trial."""

    best_params: dict[str, Any]
    best_metric: float
    trials: pd.DataFrame  # one row per trial (see TRIAL_COLUMNS), best first
    best_model: Any
    seconds: float = 0.0


# trial_id, status (TERMINATED | ERROR), stopped_early (by ASHA), metric (the final model's valid metric;
# NaN when stopped early or failed), last_metric (last reported), iterations (boosting rounds), seconds,
# error, then one column per searched param.
TRIAL_COLUMNS = (
    "trial_id",
    "status",
    "stopped_early",
    "metric",
    "last_metric",
    "iterations",
    "seconds",
    "error",
)


def _final_score(model: Any, dataset: Any, metric: str) -> float:
    from kubequant.workloads.training.evaluate import segment_label, valid_score

    pred = model.predict(dataset, segment="valid")
    label = segment_label(dataset, "valid", learn=metric == "valid_loss")
    return float(valid_score(pred, label, metric))


def _trial(
    config: dict[str, Any],
    spec_model: ClassReference,
    dataset_ref: list[ray.ObjectRef],
    metric: str,
) -> None:
    """One trial: fit with the sampled params, reporting the valid metric as LightGBM boosts."""
    from kubequant.workloads.training.fit import fit_model

    # wrapped in a list so Tune passes the reference through instead of resolving it at every trial start
    dataset = ray.get(dataset_ref[0])
    started = time.perf_counter()
    state = {"iteration": 0}

    def on_iteration(iteration: int, value: float) -> None:
        state["iteration"] = iteration
        if iteration % REPORT_EVERY == 0:
            tune.report({metric: _reportable(value), "iteration": iteration, "final": False})

    model = fit_model(spec_model, dict(config), dataset, on_iteration=on_iteration, metric=metric)
    score = _final_score(model, dataset, metric)
    booster = getattr(model, "model", None)
    rounds = getattr(booster, "current_iteration", None)
    iterations = int(rounds()) if callable(rounds) else state["iteration"]
    with tempfile.TemporaryDirectory(prefix="kubequant-trial-") as folder:
        with open(Path(folder) / MODEL_FILE, "wb") as fh:
            pickle.dump(model, fh)
        tune.report(
            {
                metric: _reportable(score),
                "iteration": max(iterations, state["iteration"]),
                "final": True,
                "fit_seconds": time.perf_counter() - started,
            },
            checkpoint=tune.Checkpoint.from_directory(folder),
        )


def _reportable(value: float) -> float:
    # Tune's schedulers compare floats; a NaN (no valid day with two names) must not win or crash a rung
    return float(value) if math.isfinite(value) else float("nan")


def asha_max_t(model_kwargs: dict[str, Any]) -> int:
    """ASHA's ``max_t``: one round past the model's last boosting round.

    ASHA stops every trial whose reported ``iteration`` reaches ``max_t``. At ``max_t = num_boost_round``
    the report of the last round stopped a trial that boosted all its rounds before its final report
    (the model, its metric, its checkpoint): it was counted as stopped early, its metric dropped, and a
    search whose trials all boosted to the end failed with "no trial finished".
    """
    max_rounds = int(model_kwargs.get("num_boost_round", 1000))  # LGBModel's default
    return max(max_rounds, GRACE_ROUNDS) + 1


def trial_resources(spec: TrainingJobSpec, cluster_cpus: float, cluster_gpus: float) -> dict[str, float]:
    """CPUs/GPUs of one trial: the cluster shared by the concurrent trials (at least one CPU each)."""
    assert spec.tune is not None
    concurrent = max(1, spec.tune.max_concurrent_trials)
    cpus = max(1.0, math.floor(cluster_cpus / concurrent))
    gpus = float(spec.ray.workers.gpus_per_worker)
    if gpus and cluster_gpus:
        gpus = min(gpus, cluster_gpus / concurrent)
    return {"cpu": cpus, "gpu": gpus}


class _ProgressCallback(tune.Callback):
    def __init__(self, progress: Progress, metric: str) -> None:
        self.progress = progress
        self.metric = metric

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        how = "finished" if result.get("final") else "stopped early (ASHA)"
        value = result.get(self.metric)
        shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "n/a"
        self.progress(
            "trial", f"{trial.trial_id} {how} at round {result.get('iteration', 0)}: {self.metric}={shown}"
        )

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.progress("trial", f"{trial.trial_id} failed: {trial.error_file or 'see the trial log'!s}")


def run_search(
    spec: TrainingJobSpec,
    dataset_ref: ray.ObjectRef,
    *,
    progress: Progress | None = None,
    storage_path: str | None = None,
    resources: dict[str, float] | None = None,
    asha: bool = True,
) -> SearchOutcome:
    """Run ``spec.tune``'s search; see the module doc. Failed trials are recorded, all failed is an error.

    ``asha=False`` runs every trial to its end (benchmarks compare it with a plain loop).
    """
    if spec.tune is None:
        raise ValueError("run_search needs spec.tune")
    cfg = spec.tune
    metric, mode = cfg.metric, str(cfg.mode)
    space = to_tune_space(cfg.search_space)
    if resources is None:
        total = ray.cluster_resources()
        resources = trial_resources(spec, float(total.get("CPU", 1.0)), float(total.get("GPU", 0.0)))
    trainable = tune.with_resources(
        tune.with_parameters(_trial, spec_model=spec.model, dataset_ref=[dataset_ref], metric=metric),
        resources,
    )
    scheduler = tune.schedulers.ASHAScheduler(
        time_attr="iteration",
        max_t=asha_max_t(spec.model.kwargs),
        grace_period=GRACE_ROUNDS,
        reduction_factor=REDUCTION_FACTOR,
    )
    name = f"kubequant-tune-{uuid.uuid4().hex[:8]}"
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            num_samples=cfg.num_samples,
            max_concurrent_trials=cfg.max_concurrent_trials,
            scheduler=scheduler if asha else None,
            # a finished trial's worker process takes the next trial: no process start-up per trial
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path or tempfile.mkdtemp(prefix="kubequant-ray-tune-"),
            failure_config=tune.FailureConfig(max_failures=0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[_ProgressCallback(progress, metric)] if progress else None,
            verbose=0,
        ),
    )
    started = time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - started
    trials = trials_table(grid, list(space), metric, mode)
    finished = trials[trials["status"].eq("TERMINATED") & ~trials["stopped_early"] & trials["metric"].notna()]
    if finished.empty:
        errors = [e for e in trials["error"].dropna().tolist() if e]
        raise TuneFailedError(
            f"no trial of {len(trials)} finished with a {metric}"
            + (f"; first error: {errors[0]}" if errors else ""),
            where="spec.tune",
            fix="check the searchSpace ranges against the model's parameters (see the trials table)",
        )
    best_id = str(finished.iloc[0]["trial_id"])
    best_row = finished.iloc[0]
    best_params = {k: _plain(best_row[k]) for k in space}
    best_model = _best_model(grid, best_id)
    if best_model is None:
        from kubequant.workloads.training.ray_runtime import remote_fit

        log.warning("the best trial's checkpoint could not be read; refitting its params")
        best_model = remote_fit(
            spec.model, best_params, dataset_ref, resources["cpu"], resources.get("gpu", 0.0)
        )
    return SearchOutcome(
        best_params=best_params,
        best_metric=float(best_row["metric"]),
        trials=trials,
        best_model=best_model,
        seconds=seconds,
    )


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones (the params go to JSON and to the model's kwargs)."""
    return value.item() if hasattr(value, "item") else value


def trials_table(grid: Any, params: list[str], metric: str, mode: str) -> pd.DataFrame:
    """One row per trial, best finished trial first (see TRIAL_COLUMNS)."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        config = result.config or {}
        done = bool(metrics.get("final"))
        last = metrics.get(metric)
        error = result.error
        rows.append(
            {
                "trial_id": metrics.get("trial_id") or _trial_id(result),
                "status": "ERROR" if error else "TERMINATED",
                "stopped_early": bool(not error and not done),
                "metric": float(last) if done and last is not None and not error else math.nan,
                "last_metric": float(last) if last is not None else math.nan,
                "iterations": int(metrics.get("iteration", 0) or 0),
                "seconds": float(metrics.get("time_total_s", 0.0) or 0.0),
                "error": _one_line(error) if error else None,
                **{p: config.get(p) for p in params},
            }
        )
    table = pd.DataFrame(rows, columns=[*TRIAL_COLUMNS, *params])
    ascending = mode == "min"
    table = table.sort_values(
        ["metric", "last_metric"], ascending=ascending, na_position="last", kind="stable"
    )
    return table.reset_index(drop=True)


def _trial_id(result: Any) -> str:
    path = str(getattr(result, "path", "") or "")
    return Path(path).name or "unknown"


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    cause = next((line for line in reversed(text) if line.strip()), type(error).__name__)
    return cause[:500]


def _best_model(grid: Any, trial_id: str) -> Any | None:
    for result in grid:
        if (result.metrics or {}).get("trial_id") != trial_id or result.checkpoint is None:
            continue
        try:
            with result.checkpoint.as_directory() as folder:
                with open(Path(folder) / MODEL_FILE, "rb") as fh:
                    return pickle.load(fh)
        except (OSError, pickle.UnpicklingError) as err:
            log.warning("cannot read trial %s's checkpoint: %s", trial_id, err)
            return None
    return None
