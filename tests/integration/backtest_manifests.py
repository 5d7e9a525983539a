"""Small Backtest manifests over a small sample bundle, shared by the backtest integration tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

SMALL_SAMPLE = SampleSpec(instruments=40, start="2020-01-01", end="2021-06-30", seed=7)
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
    "verbosity": -1,
}
EXCHANGE = {
    "openCost": 0.0005,
    "closeCost": 0.0015,
    "minCost": 5,
    "limitThreshold": 0.095,
    "dealPrice": "close",
}


def make_bundle(root: Path) -> Path:
    """Write the small sample bundle under ``root``."""
    path = root / "bundle"
    write_sample_bundle(path, SMALL_SAMPLE)
    return path


def model_backtest(bundle: Path, name: str = "small-model") -> dict[str, Any]:
    """A Backtest that trains LightGBM on Alpha158 and trades TopkDropout."""
    return {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "Backtest",
        "metadata": {"name": name},
        "spec": {
            "data": {"path": str(bundle)},
            "benchmark": "SYNIDX",
            "period": {"start": "2021-01-04", "end": "2021-06-28"},
            "account": 10_000_000,
            "signal": {
                "model": {
                    "handler": {"class": "Alpha158"},
                    "model": {"class": "LGBModel", "kwargs": copy.deepcopy(MODEL_KWARGS)},
                    "segments": copy.deepcopy(SEGMENTS),
                }
            },
            "strategy": {"topkDropout": {"topk": 8, "nDrop": 2}},
            "exchange": dict(EXCHANGE),
        },
    }


def file_backtest(bundle: Path, signal_file: Path, name: str = "small-file") -> dict[str, Any]:
    """A Backtest that trades scores from a file."""
    doc = model_backtest(bundle, name)
    doc["spec"]["signal"] = {"file": {"path": str(signal_file)}}
    return doc


def write_manifest(doc: dict[str, Any], path: Path) -> Path:
    """Dump one manifest to YAML."""
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
