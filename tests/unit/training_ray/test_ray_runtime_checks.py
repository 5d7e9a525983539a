"""The pure parts of the Ray runtime: version checks, worker sizing, LightGBM's loopback network, the
data-parallel completeness check and trial sizing. (Ray itself runs in tests/integration/training_ray.)"""

from __future__ import annotations

import pytest

from kubequant.api.training import TrainingJobSpec
from kubequant.errors import KubequantError
from kubequant.version import RAY_VERSION
from kubequant.workloads.training.distributed import _check_complete, loopback_network
from kubequant.workloads.training.ray_runtime import (
    RaySession,
    RayVersionError,
    TrainingWorkerError,
    check_driver_version,
    check_node_versions,
    worker_resources,
)
from kubequant.workloads.training.tuning import trial_resources

pytestmark = pytest.mark.unit

SEGMENTS = {
    "train": {"start": "2020-01-01", "end": "2020-12-31"},
    "valid": {"start": "2021-01-01", "end": "2021-06-30"},
    "test": {"start": "2021-07-01", "end": "2021-12-31"},
}


def spec(**ray: object) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({"dataset": {"segments": SEGMENTS}, "ray": ray})


def session(local: bool, cpus: float, largest: float = 0.0) -> RaySession:
    return RaySession(address="127.0.0.1:1", local=local, cpus=cpus, gpus=0, largest_node_cpus=largest)


def test_driver_with_another_ray_is_refused_naming_both_versions() -> None:
    check_driver_version(RAY_VERSION)
    with pytest.raises(RayVersionError) as err:
        check_driver_version("2.40.0")
    assert "2.40.0" in str(err.value) and RAY_VERSION in str(err.value)
    assert f"ray[default,train,tune]=={RAY_VERSION}" in (err.value.fix or "")


def test_cluster_node_with_another_ray_is_refused_naming_the_node() -> None:
    check_node_versions({"a" * 56: RAY_VERSION, "b" * 56: RAY_VERSION})
    with pytest.raises(RayVersionError) as err:
        check_node_versions({"a" * 56: RAY_VERSION, "b" * 56: "2.41.0"})
    message = str(err.value)
    assert "node bbbbbbbbbbbb has Ray 2.41.0" in message and "aaaa" not in message
    assert err.value.where == "spec.ray.rayVersion"


def test_local_workers_share_the_machine_and_respect_a_cpu_request() -> None:
    assert worker_resources(spec(), session(True, 8)) == (8, 0)
    assert worker_resources(spec(), session(True, 8), workers=2) == (4, 0)
    assert worker_resources(spec(), session(True, 2), workers=4) == (1, 0)
    asked = spec(workers={"replicas": 2, "resources": {"requests": {"cpu": "1500m"}}})
    assert worker_resources(asked, session(True, 8), workers=2) == (1, 0)


def test_cluster_workers_get_their_pod_request_or_the_largest_node() -> None:
    asked = spec(workers={"replicas": 2, "resources": {"limits": {"cpu": "3"}}, "gpusPerWorker": 1})
    assert worker_resources(asked, session(False, 32, largest=16)) == (3, 1)
    assert worker_resources(spec(), session(False, 32, largest=16)) == (16, 0)


def test_an_all_loopback_machine_list_becomes_127_0_0_1_with_each_port() -> None:
    params = {"num_machines": 2, "local_listen_port": 5001, "machines": "127.0.0.2:5001,127.0.0.3:5002"}
    assert loopback_network(params)["machines"] == "127.0.0.1:5001,127.0.0.1:5002"
    assert loopback_network(params)["local_listen_port"] == 5001


@pytest.mark.parametrize(
    "machines", ["10.0.0.1:5001,10.0.0.2:5002", "127.0.0.2:5001,10.0.0.2:5002", "w0:1,w1:2", ""]
)
def test_a_real_network_is_left_alone(machines: str) -> None:
    params = {"machines": machines}
    assert loopback_network(params) == params


def _event(kind: str, rank: int, rows: int = 0, total: int = 10) -> dict[str, object]:
    return {
        "event": kind,
        "rank": rank,
        "node_id": f"n{rank}",
        "pid": 100 + rank,
        "rows": rows,
        "total_rows": total,
    }


def test_a_retried_run_is_complete_when_the_last_attempt_covers_every_row() -> None:
    events = [_event("start", 0), _event("start", 1), _event("start", 0), _event("start", 1)]
    events += [_event("done", 0, 5), _event("done", 1, 5)]
    report = _check_complete(events, 2)
    assert report.attempts == 2 and report.train_rows == 10 and report.node_ids == {"n0", "n1"}


def test_a_run_missing_a_rank_or_rows_is_never_a_success() -> None:
    with pytest.raises(TrainingWorkerError, match=r"ranks \[1\] never finished"):
        _check_complete([_event("start", 0), _event("start", 1), _event("done", 0, 10)], 2)
    with pytest.raises(TrainingWorkerError, match="data went missing"):
        _check_complete([_event("done", 0, 5), _event("done", 1, 4)], 2)
    assert issubclass(TrainingWorkerError, KubequantError)


def test_trials_share_the_cluster_by_the_concurrency() -> None:
    tuned = TrainingJobSpec.model_validate(
        {
            "dataset": {"segments": SEGMENTS},
            "tune": {
                "numSamples": 8,
                "maxConcurrentTrials": 3,
                "searchSpace": {"num_leaves": {"distribution": "randint", "low": 8, "high": 64}},
            },
        }
    )
    assert trial_resources(tuned, 8, 0) == {"cpu": 2, "gpu": 0}
    assert trial_resources(tuned, 2, 0) == {"cpu": 1, "gpu": 0}
