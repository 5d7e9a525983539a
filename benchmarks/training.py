"""What Ray costs a TrainingJob, as ratios measured in one run.

    .venv/bin/python benchmarks/training.py [--rows 250000] [--rounds 200] [--trials 100] [--skip-fit|--skip-tune]

(a) fit: the TrainingJob path (the prepared qlib dataset put in the object store once, LGBModel fitted by
    ``remote_fit`` as a Ray task with every CPU) against plain ``lightgbm.train`` in this process on the
    same arrays, with the same params, valid set and early stopping. Alpha158 over ~250k train rows x 158
    features, 200 rounds. Goal: ratio <= 1.3. Also data-parallel LightGBM over 2 workers (Ray Train).
(b) tune: 100 small LightGBM models (the users' "train 100 models in parallel") through ``run_search`` at
    the machine's concurrency against a sequential loop doing the same fits in this process. Goal:
    speed-up >= 0.8 x cores.
Ray's fixed costs are printed: start-up, the object-store put, per-trial scheduling.

The Alpha158 datasets are cached (pickled) under ~/.cache/kubequant/bench so that runs time training only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

from kubequant.api.training import TrainingJobSpec

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kubequant" / "bench"


def big_spec(rounds: int) -> TrainingJobSpec:
    # 300 synthetic stocks; train 2019-01..2022-04 is ~830 trading days, ~250k rows
    return TrainingJobSpec.model_validate(
        {
            "data": {"sample": {"instruments": 300, "start": "2019-01-01", "end": "2023-06-30", "seed": 42}},
            "dataset": {
                "segments": {
                    "train": {"start": "2019-01-01", "end": "2022-04-30"},
                    "valid": {"start": "2022-05-01", "end": "2022-10-31"},
                    "test": {"start": "2022-11-01", "end": "2023-06-20"},
                }
            },
            "model": {
                "class": "LGBModel",
                "kwargs": {
                    "learning_rate": 0.05,
                    "num_leaves": 63,
                    "num_boost_round": rounds,
                    "early_stopping_rounds": rounds,  # every run boosts all rounds
                    "seed": 1,
                },
            },
            "ray": {"workers": {"replicas": 1}},
        }
    )


def small_spec(trials: int, concurrency: int) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {
            "data": {"sample": {"instruments": 30, "start": "2020-01-01", "end": "2022-12-31", "seed": 42}},
            "dataset": {
                "segments": {
                    "train": {"start": "2020-01-01", "end": "2021-06-30"},
                    "valid": {"start": "2021-07-01", "end": "2021-12-31"},
                    "test": {"start": "2022-01-01", "end": "2022-12-20"},
                }
            },
            "model": {
                "class": "LGBModel",
                "kwargs": {"num_boost_round": 20, "early_stopping_rounds": 20, "seed": 1},
            },
            "tune": {
                "numSamples": trials,
                "maxConcurrentTrials": concurrency,
                "searchSpace": {
                    "learning_rate": {"distribution": "loguniform", "low": 0.01, "high": 0.3},
                    "num_leaves": {"distribution": "randint", "low": 8, "high": 64},
                },
            },
        }
    )


def _digest(spec: TrainingJobSpec) -> str:
    return hashlib.sha256(spec.model_dump_json(include={"data", "dataset", "universe"}).encode()).hexdigest()[
        :12
    ]


def cached_dataset(spec: TrainingJobSpec, tag: str) -> Any:
    from kubequant.workloads.data.bundle import resolve_bundle
    from kubequant.workloads.training.dataset import init_qlib_for, load_dataset

    CACHE.mkdir(parents=True, exist_ok=True)
    key = CACHE / f"training-{tag}-{_digest(spec)}.pkl"
    if key.exists():
        init_qlib_for(resolve_bundle(spec.data), spec.data.region)
        with open(key, "rb") as fh:
            return pickle.load(fh)
    started = time.perf_counter()
    dataset = load_dataset(spec)
    dataset.config(dump_all=True, recursive=True)
    with open(key, "wb") as fh:
        pickle.dump(dataset, fh)
    print(f"  (computed and cached {tag} Alpha158 in {time.perf_counter() - started:.0f}s: {key})")
    return dataset


def plain_lightgbm(dataset: Any, params: dict[str, Any], rounds: int, threads: int) -> tuple[float, Any]:
    import lightgbm as lgb
    import numpy as np
    from qlib.data.dataset.handler import DataHandlerLP

    frames = {
        k: dataset.prepare(k, col_set=["feature", "label"], data_key=DataHandlerLP.DK_L)
        for k in ("train", "valid")
    }
    started = time.perf_counter()
    sets = [
        lgb.Dataset(f["feature"].to_numpy(), label=np.squeeze(f["label"].to_numpy())) for f in frames.values()
    ]
    booster = lgb.train(
        {**params, "num_threads": threads},
        sets[0],
        num_boost_round=rounds,
        valid_sets=sets,
        valid_names=["train", "valid"],
        callbacks=[lgb.early_stopping(rounds, verbose=False)],
    )
    return time.perf_counter() - started, booster


def bench_fit(rows_goal: int, rounds: int, cpus: int, extra: bool = True) -> dict[str, float]:
    import ray
    from qlib.data.dataset.handler import DataHandlerLP

    from kubequant.workloads.training.distributed import DataParallelReport, fit_lightgbm_data_parallel
    from kubequant.workloads.training.fit import build_model
    from kubequant.workloads.training.ray_runtime import put_dataset, ray_session, remote_fit

    spec = big_spec(rounds)
    dataset = cached_dataset(spec, "fit")
    train = dataset.prepare("train", col_set="feature", data_key=DataHandlerLP.DK_L)
    print(
        f"  dataset: {len(train)} train rows x {train.shape[1]} features (goal ~{rows_goal}), {rounds} rounds"
    )
    params = build_model(spec.model, {}).params
    out: dict[str, float] = {"rows": float(len(train)), "features": float(train.shape[1])}
    out["plain_s"], booster = plain_lightgbm(dataset, params, rounds, cpus)
    out["rounds_plain"] = float(booster.current_iteration())
    started = time.perf_counter()
    with ray_session(spec, None) as session:
        out["ray_start_s"] = time.perf_counter() - started
        t = time.perf_counter()
        ref = put_dataset(dataset)
        ray.wait([ref])
        out["put_s"] = time.perf_counter() - t
        t = time.perf_counter()
        model = remote_fit(spec.model, {}, ref, session.cpus, 0)
        out["remote_fit_s"] = time.perf_counter() - t
        out["trees_returned"] = float(model.model.current_iteration())  # best iteration only
        print(
            f"  plain {out['plain_s']:.1f}s, Ray start {out['ray_start_s']:.1f}s, put {out['put_s']:.2f}s, "
            f"remote_fit {out['remote_fit_s']:.1f}s ({out['trees_returned']:.0f} trees kept)",
            flush=True,
        )
        if extra:
            # a second fit shows the steady state: the worker process and the object are warm
            t = time.perf_counter()
            remote_fit(spec.model, {}, ref, session.cpus, 0)
            out["remote_fit_warm_s"] = time.perf_counter() - t
            out["ratio_fit_warm"] = out["remote_fit_warm_s"] / out["plain_s"]
            reports: list[DataParallelReport] = []
            t = time.perf_counter()
            fit_lightgbm_data_parallel(
                spec.model, {}, ref, 2, max(1, int(session.cpus) // 2), 0, report=reports
            )
            out["dp2_s"] = time.perf_counter() - t
            out["ratio_dp2"] = out["dp2_s"] / out["plain_s"]
    out["ratio_fit"] = (out["put_s"] + out["remote_fit_s"]) / out["plain_s"]
    out["ratio_with_start"] = (out["ray_start_s"] + out["put_s"] + out["remote_fit_s"]) / out["plain_s"]
    return out


def bench_tune(trials: int, cpus: int) -> dict[str, float]:
    from kubequant.workloads.training.fit import fit_model
    from kubequant.workloads.training.ray_runtime import put_dataset, ray_session
    from kubequant.workloads.training.tuning import _final_score, run_search

    spec = small_spec(trials, cpus)
    dataset = cached_dataset(spec, "tune")
    assert spec.tune is not None
    out: dict[str, float] = {"trials": float(trials), "concurrency": float(cpus)}
    started = time.perf_counter()
    with ray_session(spec, None):
        out["ray_start_s"] = time.perf_counter() - started
        t = time.perf_counter()
        ref = put_dataset(dataset)
        out["put_s"] = time.perf_counter() - t
        t = time.perf_counter()
        search = run_search(spec, ref, resources={"cpu": 1.0, "gpu": 0.0}, asha=False)
        out["tune_s"] = time.perf_counter() - t
    table = search.trials
    params = list(spec.tune.search_space)
    configs = [
        {p: (row[p].item() if hasattr(row[p], "item") else row[p]) for p in params}
        for _, row in table.iterrows()
    ]
    # the same fits, one after the other, in this process, one thread each (as each trial had one CPU)
    t = time.perf_counter()
    for config in configs:
        model = fit_model(spec.model, {**config, "num_threads": 1}, dataset, on_iteration=lambda i, v: None)
        _final_score(model, dataset, spec.tune.metric)
    out["sequential_s"] = time.perf_counter() - t
    out["speedup"] = out["sequential_s"] / out["tune_s"]
    out["speedup_per_core"] = out["speedup"] / cpus
    busy = float(table["seconds"].sum())
    out["trial_busy_s"] = busy
    # wall time not explained by the trials' own run time at full concurrency: scheduling, actor start-up
    out["tune_overhead_s"] = out["tune_s"] - busy / cpus
    out["per_trial_overhead_s"] = out["tune_overhead_s"] / trials
    out["failed_trials"] = float((table["status"] != "TERMINATED").sum())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--skip-fit", action="store_true")
    parser.add_argument("--skip-tune", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="(a) without the warm refit and the data-parallel run"
    )
    args = parser.parse_args()
    from kubequant.workloads.training.ray_runtime import _machine_cpus

    cpus = _machine_cpus()
    print(f"training benchmark: {cpus} CPUs, load average {os.getloadavg()}")
    results: dict[str, Any] = {"cpus": cpus, "loadavg_start": os.getloadavg()}
    if not args.skip_fit:
        fit = bench_fit(args.rows, args.rounds, cpus, extra=not args.quick)
        results["fit"] = fit
        print(
            f"(a) fit {fit['rows']:.0f}x{fit['features']:.0f}, {args.rounds} rounds: plain lightgbm.train "
            f"{fit['plain_s']:.1f}s | remote_fit {fit['remote_fit_s']:.1f}s + put {fit['put_s']:.2f}s "
            f"-> ratio {fit['ratio_fit']:.2f} (goal <= 1.3; with Ray start-up {fit['ray_start_s']:.1f}s: "
            f"{fit['ratio_with_start']:.2f})"
        )
        if "dp2_s" in fit:
            print(
                f"    warm remote_fit {fit['remote_fit_warm_s']:.1f}s -> {fit['ratio_fit_warm']:.2f} | data-parallel "
                f"2 workers x {max(1, cpus // 2)} CPU {fit['dp2_s']:.1f}s -> {fit['ratio_dp2']:.2f}x plain"
            )
    if not args.skip_tune:
        tune = bench_tune(args.trials, cpus)
        results["tune"] = tune
        print(
            f"(b) tune {args.trials} small models at concurrency {cpus}: Ray Tune {tune['tune_s']:.1f}s vs "
            f"sequential {tune['sequential_s']:.1f}s -> speed-up {tune['speedup']:.2f} = "
            f"{tune['speedup_per_core']:.2f} x cores (goal >= 0.8) | fixed costs: Ray start-up "
            f"{tune['ray_start_s']:.1f}s, put {tune['put_s']:.2f}s, scheduling {tune['tune_overhead_s']:.1f}s "
            f"({tune['per_trial_overhead_s']:.2f}s/trial); failed trials {tune['failed_trials']:.0f}"
        )
    results["loadavg_end"] = os.getloadavg()
    print("result: " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
