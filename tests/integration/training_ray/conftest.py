"""Fixtures of the Ray training tests: a small sample-bundle dataset (Alpha158), a local Ray per module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from ray_diagnostics import measured_workers_runtime_env, without_coverage
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
    """A private local Ray (127.0.0.1 only), stopped after the module.

    Ray's own processes (raylet, GCS, agents) start without the coverage measurement's variables
    (hack/ray_diagnostics.py, ``without_coverage``: measured, they made the raylet miss Ray's 30 s
    registration under `make test`); the worker processes that run kubequant's code for these tests
    (Tune trials, the data-parallel ranks) get them back through the job's runtime_env, so what they
    run is measured (``measured_workers_runtime_env``).
    """
    import ray

    from kubequant.workloads.training.ray_runtime import ray_session

    measured = {k: v for k, v in os.environ.items() if k not in without_coverage(dict(os.environ))}
    for key in measured:
        del os.environ[key]
    runtime_env = measured_workers_runtime_env(dict(measured))
    real_init = ray.init

    def init_measuring_workers(*args: Any, **kwargs: Any) -> Any:
        if runtime_env:
            kwargs.setdefault("runtime_env", runtime_env)
        return real_init(*args, **kwargs)

    try:
        with patch.object(ray, "init", init_measuring_workers), ray_session(spec, None) as session:
            os.environ.update(measured)  # Ray's processes are up: the rest of this process is measured
            measured = {}
            yield session
    finally:
        os.environ.update(measured)


@pytest.fixture(scope="module")
def dataset_ref(ray_local: Any, dataset: Any) -> Any:
    from kubequant.workloads.training.ray_runtime import put_dataset

    return put_dataset(dataset)


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return str(tmp_path / "ray-storage")
