"""A Ray Train worker SIGKILLed mid-run: the group is retried and completes on all the data, or (no
retries left) the run fails naming the lost worker. Never a silent success on part of the data."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest
import ray

from kubequant.api.training import TrainingJobSpec
from kubequant.workloads.training.distributed import (
    LEDGER_PREFIX,
    DataParallelReport,
    fit_lightgbm_data_parallel,
)
from kubequant.workloads.training.ray_runtime import TrainingWorkerError

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Killer(threading.Thread):
    """Waits until both ranks of the run's first attempt started, then SIGKILLs rank 1's process."""

    def __init__(self, run_name: str) -> None:
        super().__init__(daemon=True)
        self.run_name = run_name
        self.killed: dict[str, Any] | None = None
        self.failure: str | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                ledger = ray.get_actor(LEDGER_PREFIX + self.run_name)
                starts = [e for e in ray.get(ledger.all.remote()) if e["event"] == "start"]
            except ValueError:  # the run has not created its ledger yet
                starts = []
            if len(starts) >= 2:
                victim = next(e for e in starts if e["rank"] == 1)
                os.kill(victim["pid"], signal.SIGKILL)
                self.killed = victim
                return
            time.sleep(0.2)
        self.failure = "the workers never started"


def test_killed_worker_is_retried_and_the_run_completes(
    spec: TrainingJobSpec, dataset_ref: Any, storage: str
) -> None:
    killer = Killer("retry-once")
    killer.start()
    reports: list[DataParallelReport] = []
    model = fit_lightgbm_data_parallel(
        spec.model,
        {},
        dataset_ref,
        2,
        1,
        0,
        max_failures=1,
        storage_path=storage,
        run_name="retry-once",
        report=reports,
    )
    killer.join(timeout=10)
    assert killer.killed is not None, killer.failure
    (report,) = reports
    assert report.attempts == 2  # the killed attempt, then the retry
    assert killer.killed["pid"] not in {w["pid"] for w in report.workers}
    assert sum(w["rows"] for w in report.workers) == report.train_rows  # the retry trained on every row
    assert model.model.num_trees() > 0


def test_killed_worker_without_retries_fails_naming_it(
    spec: TrainingJobSpec, dataset_ref: Any, storage: str
) -> None:
    killer = Killer("no-retry")
    killer.start()
    with pytest.raises(TrainingWorkerError) as err:
        fit_lightgbm_data_parallel(
            spec.model, {}, dataset_ref, 2, 1, 0, max_failures=0, storage_path=storage, run_name="no-retry"
        )
    killer.join(timeout=10)
    assert killer.killed is not None, killer.failure
    message = str(err.value)
    assert "failed after 0 retries" in message
    assert f"rank 1 (pid {killer.killed['pid']}" in message
    assert err.value.where == "spec.ray.workers"
