"""Data-parallel LightGBM across Ray workers (Ray Train's LightGBMTrainer, Train V2 API).

Why Ray Train rather than LightGBM's socket mode on hand-made actors: Ray Train owns the worker group
(placement across nodes, LightGBM's machine list and ports through ``get_network_params``), notices a
dead worker and restarts the whole group (``FailureConfig``), and hands rank 0's return value back,
so no checkpoint storage is needed for the model. What it costs is measured in benchmarks/training.py.

Each worker reads the dataset prepared once in the object store, keeps every ``world_size``-th train row
(interleaved, so each shard spans the whole period and LightGBM's bin boundaries, found from the shards,
match single-process ones closely), and the whole valid segment: every worker then computes the same
valid metric from the same model, so early stopping ends every worker at the same round.
"""

from __future__ import annotations

import ipaddress
import logging
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray

from kubequant.api.common import ClassReference
from kubequant.errors import ConfigError
from kubequant.workloads.training.ray_runtime import TrainingWorkerError

log = logging.getLogger(__name__)

LEDGER_PREFIX = "kubequant-dp-ledger-"


@ray.remote(num_cpus=0)
class WorkerLedger:
    """Where each training worker says where it ran and what it trained on (per attempt).

    The driver checks it after the run: the final attempt must have every rank, and the shards must add
    up to the whole train segment, so a run can never succeed on part of the data.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, event: dict[str, Any]) -> None:
        self.events.append({**event, "at": time.time()})

    def all(self) -> list[dict[str, Any]]:
        return list(self.events)


@dataclass
class DataParallelReport:
    """What a data-parallel fit did: attempts (1 + retries), and per-rank node, pid and shard rows."""

    attempts: int
    workers: list[dict[str, Any]] = field(default_factory=list)  # the final attempt's ranks
    train_rows: int = 0
    seconds: float = 0.0

    @property
    def node_ids(self) -> set[str]:
        return {w["node_id"] for w in self.workers}


def _train_fn(config: dict[str, Any]) -> dict[str, Any]:
    """One Ray Train worker: its shard of train, the whole valid segment, LightGBM in data-parallel mode."""
    import os

    import lightgbm as lgb
    import numpy as np
    import ray.train
    from qlib.data.dataset.handler import DataHandlerLP
    from ray.train.lightgbm import get_network_params

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    ledger = config["ledger"]
    node_id = ray.get_runtime_context().get_node_id()
    ray.get(
        ledger.record.remote(
            {"event": "start", "rank": rank, "world": world, "node_id": node_id, "pid": os.getpid()}
        )
    )

    dataset = ray.get(config["dataset_ref"])
    frames = {}
    for key in ("train", "valid"):
        frame = dataset.prepare(key, col_set=["feature", "label"], data_key=DataHandlerLP.DK_L)
        if frame.empty:
            raise ValueError(f"the {key} segment has no rows")
        frames[key] = frame
    train = frames["train"].iloc[rank::world]
    valid = frames["valid"]

    def to_lgb(frame: Any, reference: Any = None, params: Any = None) -> Any:
        label = np.squeeze(frame["label"].to_numpy())
        return lgb.Dataset(frame["feature"].to_numpy(), label=label, reference=reference, params=params)

    # Bin boundaries from the whole train segment, as a single process finds them (this worker has it all
    # in memory anyway), built before LightGBM's network starts so no worker splits the work by feature.
    # With identical bins, summing the shards' histograms gives the single-process histograms.
    bins = to_lgb(
        frames["train"], params={**config["params"], "num_threads": config["num_threads"]}
    ).construct()
    dtrain = to_lgb(train, reference=bins)
    dvalid = to_lgb(valid, reference=bins)
    params = {
        **config["params"],
        **loopback_network(get_network_params()),
        "tree_learner": config["params"].get("tree_learner", "data"),
        "pre_partition": True,
        "num_threads": config["num_threads"],
    }
    booster = lgb.train(
        params,
        dtrain,
        num_boost_round=config["num_boost_round"],
        valid_sets=[dtrain, dvalid],
        valid_names=["train", "valid"],
        callbacks=[lgb.early_stopping(config["early_stopping_rounds"], verbose=False)],
    )
    ray.get(
        ledger.record.remote(
            {
                "event": "done",
                "rank": rank,
                "world": world,
                "node_id": node_id,
                "pid": os.getpid(),
                "rows": len(train),
                "total_rows": len(frames["train"]),
                "best_iteration": booster.best_iteration,
            }
        )
    )
    # rank 0's value is the run's return value; the model string keeps only the best iteration's trees
    return {"model": booster.model_to_string(), "best_iteration": booster.best_iteration}


def loopback_network(params: dict[str, Any]) -> dict[str, Any]:
    """LightGBM's network params with a single-host cluster's loopback aliases as 127.0.0.1.

    LightGBM finds its own entry in ``machines`` among the addresses of the host's interfaces; a Ray node
    on a loopback alias (127.0.0.2, as a loopback test cluster uses) is not one of them. When every
    machine is on loopback they are all this host, so 127.0.0.1 with each worker's own port is exact.
    """
    machines = str(params.get("machines") or "")
    if not machines:
        return params
    entries = [m.rsplit(":", 1) for m in machines.split(",")]
    try:
        loopback = all(ipaddress.ip_address(host.strip("[]")).is_loopback for host, _port in entries)
    except ValueError:  # a hostname: leave it to LightGBM
        return params
    if not loopback:
        return params
    return {**params, "machines": ",".join(f"127.0.0.1:{port}" for _host, port in entries)}


def _lgb_model(spec_model: ClassReference, overrides: dict[str, Any]) -> Any:
    from kubequant.workloads.training.fit import build_model, is_lightgbm

    model = build_model(spec_model, overrides)
    if not is_lightgbm(model):
        raise ConfigError(
            f"data-parallel training is for LightGBM; {spec_model.class_name} trains on one worker",
            where="spec.model.class",
            fix="use LGBModel, or set spec.ray.workers.replicas: 1",
        )
    return model


def fit_lightgbm_data_parallel(
    spec_model: ClassReference,
    overrides: dict[str, Any],
    dataset_ref: ray.ObjectRef,
    num_workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float = 0.0,
    *,
    max_failures: int = 1,
    storage_path: str | None = None,
    run_name: str | None = None,
    report: list[DataParallelReport] | None = None,
) -> Any:
    """Train the spec's LGBModel data-parallel over ``num_workers`` Ray workers; returns the LGBModel.

    The returned model's ``.model`` is the trained Booster, so ``predict`` and evaluation work unchanged.
    A lost worker restarts the group up to ``max_failures`` times; past that the error names the worker.
    ``report``, when given, receives a DataParallelReport (attempts, nodes and shard rows per rank).
    """
    import lightgbm as lgb
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.lightgbm import LightGBMTrainer

    if num_workers < 1:
        raise ConfigError(
            f"need at least one worker, got {num_workers}",
            where="spec.ray.workers.replicas",
            fix="set replicas >= 1",
        )
    model = _lgb_model(spec_model, overrides)
    name = run_name or f"kubequant-dp-{uuid.uuid4().hex[:8]}"
    ledger = WorkerLedger.options(name=LEDGER_PREFIX + name).remote()  # type: ignore[attr-defined]
    threads = max(1, int(cpus_per_worker))
    trainer = LightGBMTrainer(
        _train_fn,
        train_loop_config={
            "dataset_ref": dataset_ref,
            "ledger": ledger,
            "params": dict(model.params),
            "num_boost_round": int(model.num_boost_round),
            "early_stopping_rounds": int(model.early_stopping_rounds),
            "num_threads": threads,
        },
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=gpus_per_worker > 0,
            resources_per_worker={
                "CPU": float(cpus_per_worker),
                **({"GPU": gpus_per_worker} if gpus_per_worker else {}),
            },
            # one worker per node where the cluster allows it: workers are pods of the worker group
            placement_strategy="SPREAD",
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path or tempfile.mkdtemp(prefix="kubequant-ray-train-"),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    started = time.perf_counter()
    try:
        result = trainer.fit()
        events = ray.get(ledger.all.remote())
    except Exception as err:  # TrainingFailedError and its worker-group causes
        events = _events_or_empty(ledger)
        raise TrainingWorkerError(_failure_message(err, events, num_workers, max_failures)) from err
    finally:
        ray.kill(ledger)
    outcome = _check_complete(events, num_workers)
    outcome.seconds = time.perf_counter() - started
    if report is not None:
        report.append(outcome)
    value = result.return_value
    if not value or "model" not in value:
        raise TrainingWorkerError("the data-parallel run finished without rank 0's model")
    model.model = lgb.Booster(model_str=value["model"])
    log.info(
        "data-parallel LightGBM: %d workers on %d node(s), %d attempt(s), best iteration %s, %.1fs",
        num_workers,
        len(outcome.node_ids),
        outcome.attempts,
        value.get("best_iteration"),
        outcome.seconds,
    )
    return model


def _events_or_empty(ledger: Any) -> list[dict[str, Any]]:
    try:
        return ray.get(ledger.all.remote(), timeout=10)
    except Exception:
        return []


def _check_complete(events: list[dict[str, Any]], num_workers: int) -> DataParallelReport:
    """The final attempt's ranks, each done, with shards that add up to the whole train segment."""
    starts = [e for e in events if e["event"] == "start"]
    attempts = max(1, -(-len(starts) // num_workers))  # ceil: each attempt starts every rank once
    done: dict[int, dict[str, Any]] = {}
    for event in events:
        if event["event"] == "done":
            done[event["rank"]] = event  # a later attempt's record replaces an earlier one
    missing = sorted(set(range(num_workers)) - set(done))
    if missing:
        raise TrainingWorkerError(f"data-parallel run reported success but ranks {missing} never finished")
    total = {e["total_rows"] for e in done.values()}
    rows = sum(e["rows"] for e in done.values())
    if len(total) != 1 or rows != next(iter(total)):
        raise TrainingWorkerError(
            f"the workers' train shards hold {rows} rows, the train segment {sorted(total)}: data went missing"
        )
    return DataParallelReport(
        attempts=attempts, workers=[done[r] for r in range(num_workers)], train_rows=rows
    )


def _failure_message(
    err: BaseException, events: list[dict[str, Any]], num_workers: int, max_failures: int
) -> str:
    started = {e["rank"]: e for e in events if e["event"] == "start"}
    finished = {e["rank"] for e in events if e["event"] == "done"}
    lost = [
        f"rank {r} (pid {e['pid']} on node {e['node_id'][:12]})"
        for r, e in sorted(started.items())
        if r not in finished
    ]
    cause = str(err).strip().splitlines()
    reason = cause[0] if cause else type(err).__name__
    where = f"; unfinished: {', '.join(lost)}" if lost else ""
    return (
        f"data-parallel LightGBM over {num_workers} workers failed after {max_failures} retr"
        f"{'y' if max_failures == 1 else 'ies'}: {reason}{where}"
    )
