"""Small TrainingJob and modelRef Backtest manifests over a small sample bundle (training integration tests)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from kubequant.workloads.data.sample import SampleSpec

SAMPLE = SampleSpec(instruments=30, start="2020-01-01", end="2021-06-30", seed=7)
SEGMENTS = {
    "train": {"start": "2020-01-01", "end": "2020-09-30"},
    "valid": {"start": "2020-10-01", "end": "2020-12-31"},
    "test": {"start": "2021-01-04", "end": "2021-06-28"},
}
MODEL_KWARGS = {
    "loss": "mse",
    "learning_rate": 0.1,
    "num_leaves": 16,
    "num_boost_round": 30,
    "early_stopping_rounds": 10,
    "num_threads": 1,
    "seed": 7,
    "deterministic": True,
}


def training_job(bundle: Path, name: str = "small-lgb") -> dict[str, Any]:
    """A TrainingJob: Alpha158 + LightGBM on the small bundle, one fit (no tune)."""
    return {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "data": {"path": str(bundle)},
            "dataset": {"handler": {"class": "Alpha158"}, "segments": copy.deepcopy(SEGMENTS)},
            "model": {"class": "LGBModel", "kwargs": dict(MODEL_KWARGS)},
            "ray": {"workers": {"replicas": 1}},
        },
    }


def model_ref_backtest(bundle: Path, model: str, name: str = "small-from-model") -> dict[str, Any]:
    """A Backtest over the test segment that trades the scores of TrainingJob ``model``."""
    return {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "Backtest",
        "metadata": {"name": name},
        "spec": {
            "data": {"path": str(bundle)},
            "benchmark": "SYNIDX",
            "period": {"start": SEGMENTS["test"]["start"], "end": SEGMENTS["test"]["end"]},
            "account": 10_000_000,
            "signal": {"modelRef": {"name": model}},
            "strategy": {"topkDropout": {"topk": 5, "nDrop": 1}},
            "exchange": {"openCost": 0.0005, "closeCost": 0.0015, "minCost": 5, "dealPrice": "close"},
        },
    }


def write_manifest(doc: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
