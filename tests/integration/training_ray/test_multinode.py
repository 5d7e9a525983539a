"""A real two-node Ray cluster on loopback: a data-parallel run submitted with `ray job submit` (as KubeRay's
submitter does) spans both nodes; the driver's version check probes every node."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from loopback_cluster import RAY, LoopbackCluster, cluster_env, measured_job_args
from training_ray_specs import SPEC

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackCluster]:
    temp_dir = Path(tempfile.mkdtemp(prefix="kqray-"))
    c = LoopbackCluster(
        temp_dir=temp_dir, log_dir=tmp_path_factory.mktemp("loopback-ray"), env=cluster_env(temp_dir)
    )
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not c.pids(), "a process of the loopback cluster outlived its stop"


def test_data_parallel_job_spans_both_nodes(cluster: LoopbackCluster, tmp_path: Path) -> None:
    entry = Path(__file__).with_name("dp_entry.py")
    job = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            f"--address={cluster.dashboard}",
            *measured_job_args(),
            "--",
            "python",
            str(entry),
            str(tmp_path / "storage"),
        ],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [line for line in job.stdout.splitlines() if line.startswith("dp-result: ")]
    assert job.returncode == 0 and lines, job.stdout[-4000:] + job.stderr[-2000:]
    out = json.loads(lines[-1].removeprefix("dp-result: "))
    assert out["local"] is False  # the driver joined the cluster, it did not start its own Ray
    assert len(out["cluster_nodes"]) == 2
    # one worker on each node: the run really crossed the (loopback) network
    assert sorted(out["worker_nodes"]) == out["cluster_nodes"]
    assert sum(out["rows"]) == out["train_rows"]
    assert out["ic"] is not None and out["ic"] > 0.0


def test_the_workload_entrypoint_trains_data_parallel_on_the_cluster(
    cluster: LoopbackCluster, tmp_path: Path
) -> None:
    """`kubequant workload train` submitted as the RayJob's entrypoint: the driver joins the cluster (through
    RAY_ADDRESS), trains over the two nodes and writes the artifact."""
    manifest = {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "mn"},
        "spec": SPEC,
    }
    config = tmp_path / "training.yaml"
    config.write_text(yaml.safe_dump(manifest))
    artifacts = tmp_path / "artifacts"
    kubequant = str(Path(RAY).with_name("kubequant"))
    entrypoint = [kubequant, "workload", "train", "--config", str(config), "--artifact-dir", str(artifacts)]
    job = subprocess.run(
        [RAY, "job", "submit", f"--address={cluster.dashboard}", *measured_job_args(), "--", *entrypoint],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [line for line in job.stdout.splitlines() if line.startswith("kubequant-result: ")]
    assert job.returncode == 0 and lines, job.stdout[-4000:] + job.stderr[-2000:]
    result = json.loads(lines[-1].removeprefix("kubequant-result: "))
    assert result["metrics"]["ic"] is not None
    manifest_out = json.loads((artifacts / "model.json").read_text())
    assert manifest_out["mode"] == "data-parallel"
    assert (artifacts / "model.pkl").stat().st_size > 0
