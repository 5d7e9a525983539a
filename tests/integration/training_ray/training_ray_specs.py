"""The Ray training tests' TrainingJob spec: a small sample bundle (Alpha158), 2 workers."""

from __future__ import annotations

from typing import Any

from kubequant.api.training import TrainingJobSpec

# Small enough for two shared cores: 30 synthetic stocks over three years (~20k train rows).
SPEC: dict[str, Any] = {
    "data": {"sample": {"instruments": 30, "start": "2020-01-01", "end": "2022-12-31", "seed": 42}},
    "dataset": {
        "segments": {
            "train": {"start": "2020-01-01", "end": "2021-06-30"},
            "valid": {"start": "2021-07-01", "end": "2021-12-31"},
            "test": {"start": "2022-01-01", "end": "2022-12-20"},
        }
    },
    "model": {"class": "LGBModel", "kwargs": {"learning_rate": 0.05, "num_leaves": 31, "seed": 1}},
    "ray": {"workers": {"replicas": 2}},
}


def training_spec(**overrides: Any) -> TrainingJobSpec:
    """The tests' TrainingJobSpec, with top-level fields replaced."""
    return TrainingJobSpec.model_validate({**SPEC, **overrides})
