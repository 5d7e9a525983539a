"""Wall time of `kubequant run`'s backtest path against the same run written straight in qlib.

    .venv/bin/python benchmarks/backtest_overhead.py [--instruments 100] [--repeats 2]

Both paths train LightGBM on Alpha158 and backtest TopkDropout on the same sample bundle, in this
process, alternating so that warm-up and machine load hit both alike. Goal: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import qlib_reference

from kubequant.api import Backtest
from kubequant.workloads.backtest.runner import run_backtest
from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

SEGMENTS = {
    "train": ("2020-01-01", "2021-06-30"),
    "valid": ("2021-07-01", "2021-12-31"),
    "test": ("2022-01-04", "2022-12-29"),
}
MODEL = {
    "loss": "mse",
    "learning_rate": 0.05,
    "num_leaves": 64,
    "num_boost_round": 100,
    "early_stopping_rounds": 30,
    "num_threads": 2,
    "seed": 1,
    "deterministic": True,
    "verbosity": -1,
}
EXCHANGE = {
    "freq": "day",
    "limit_threshold": 0.095,
    "deal_price": "close",
    "open_cost": 0.0005,
    "close_cost": 0.0015,
    "min_cost": 5,
}


def manifest(bundle: Path) -> Backtest:
    """The kubequant Backtest equal to the reference run."""
    return Backtest.model_validate(
        {
            "apiVersion": "kubequant.io/v1alpha1",
            "kind": "Backtest",
            "metadata": {"name": "overhead"},
            "spec": {
                "data": {"path": str(bundle)},
                "period": {"start": SEGMENTS["test"][0], "end": SEGMENTS["test"][1]},
                "account": 100_000_000,
                "signal": {
                    "model": {
                        "model": {"class": "LGBModel", "kwargs": MODEL},
                        "segments": {k: {"start": a, "end": b} for k, (a, b) in SEGMENTS.items()},
                    }
                },
                "strategy": {"topkDropout": {"topk": 30, "nDrop": 3, "riskDegree": 0.95}},
                "exchange": {"openCost": 0.0005, "closeCost": 0.0015, "minCost": 5, "limitThreshold": 0.095},
            },
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instruments", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.chdir(root)
        bundle = root / "bundle"
        write_sample_bundle(
            bundle, SampleSpec(instruments=args.instruments, start="2020-01-01", end="2022-12-31")
        )
        bt = manifest(bundle)
        ours: list[float] = []
        theirs: list[float] = []
        for i in range(args.repeats):
            for which in ("kubequant", "qlib") if i % 2 == 0 else ("qlib", "kubequant"):
                start = time.perf_counter()
                with contextlib.redirect_stdout(sys.stderr):
                    if which == "kubequant":
                        run_backtest(bt, root / f"report-{i}")
                    else:
                        qlib_reference.init(bundle, root / f"mlruns-{i}")
                        qlib_reference.run(SEGMENTS, MODEL, SEGMENTS["test"], 30, 3, 100_000_000, EXCHANGE)
                elapsed = time.perf_counter() - start
                (ours if which == "kubequant" else theirs).append(elapsed)
                print(f"run {i + 1} {which:<10} {elapsed:8.2f} s", flush=True)
    k, q = statistics.median(ours), statistics.median(theirs)
    print(f"instruments={args.instruments} repeats={args.repeats}")
    print(f"kubequant median {k:.2f} s | plain qlib median {q:.2f} s | ratio {k / q:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
