"""Data-parallel LightGBM over 2 Ray workers: same quality as one process on the same data."""

from __future__ import annotations

from typing import Any

import pytest

from kubequant.api.training import TrainingJobSpec
from kubequant.workloads.training.distributed import DataParallelReport, fit_lightgbm_data_parallel
from kubequant.workloads.training.evaluate import evaluate
from kubequant.workloads.training.fit import fit_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_workers_match_single_process_ic(
    spec: TrainingJobSpec, dataset: Any, dataset_ref: Any, storage: str
) -> None:
    single = evaluate(fit_model(spec.model, {}, dataset), dataset)
    reports: list[DataParallelReport] = []
    model = fit_lightgbm_data_parallel(
        spec.model, {}, dataset_ref, 2, 1, 0, storage_path=storage, report=reports
    )
    parallel = evaluate(model, dataset)

    (report,) = reports
    assert report.attempts == 1
    assert [w["rank"] for w in report.workers] == [0, 1]
    # each worker trained on its half of the train rows, and together on all of them
    rows = [w["rows"] for w in report.workers]
    assert sum(rows) == report.train_rows and abs(rows[0] - rows[1]) <= 1
    assert len({w["pid"] for w in report.workers}) == 2
    # rank 0's booster came back and predicts like a qlib LGBModel
    assert model.model.num_trees() > 0
    assert single.ic is not None and parallel.ic is not None
    assert abs(parallel.ic - single.ic) <= 0.005, (single, parallel)
    assert single.ic > 0.0  # the sample is learnable: a broken fit would not clear zero


def test_the_local_ray_is_private_to_the_machine(ray_local: Any) -> None:
    """Sized to the machine, every Ray server of the session listening on 127.0.0.1 only."""
    import psutil
    import ray

    from kubequant.workloads.training.ray_runtime import _machine_cpus

    assert ray_local.local and ray_local.address.startswith("127.0.0.1:")
    assert ray_local.cpus == _machine_cpus()
    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
    pids = {p.pid for p in psutil.Process().children(recursive=True)}
    listening = [
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]
    assert listening, "found no listening socket of the session's Ray processes"
    assert set(listening) <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
