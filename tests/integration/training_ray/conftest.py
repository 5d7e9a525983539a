"""Fixtures of the Ray training tests: a small sample-bundle dataset (Alpha158), a local Ray per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from training_ray_specs import training_spec

from kubequant.api.training import TrainingJobSpec


@pytest.fixture(scope="session")
def spec() -> TrainingJobSpec:
    return training_spec()


@pytest.fixture(scope="session")
def dataset(spec: TrainingJobSpec) -> Any:
    """Alpha158 over the sample, computed once in the test process."""
    from kubequant.workloads.training.dataset import load_dataset

    return load_dataset(spec)


@pytest.fixture(scope="module")
def ray_local(spec: TrainingJobSpec) -> Iterator[Any]:
    """A private local Ray (127.0.0.1 only), stopped after the module."""
    from kubequant.workloads.training.ray_runtime import ray_session

    with ray_session(spec, None) as session:
        yield session


@pytest.fixture(scope="module")
def dataset_ref(ray_local: Any, dataset: Any) -> Any:
    from kubequant.workloads.training.ray_runtime import put_dataset

    return put_dataset(dataset)


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return str(tmp_path / "ray-storage")
