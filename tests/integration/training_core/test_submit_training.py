"""The RayJob submitter against a real Ray head on loopback, as KubeRay's K8sJobMode runs it.

`kubequant workload submit-training` reads RAY_DASHBOARD_ADDRESS and RAY_JOB_SUBMISSION_ID, submits
`kubequant workload train` once under that id, follows it, and leaves the TrainingResult in its
termination log; a retried submitter follows the same job instead of starting a second run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_diagnostics import ray_node_report, without_coverage
from training_manifests import training_job, write_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
KUBEQUANT = str(BIN / "kubequant")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# The head of each address this module started, and its temp dir: a test whose submit fails says why.
HEADS: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}


def head_report(ray_head: str) -> str:
    """Whether the head at ``ray_head`` is still up, and the tails of its logs."""
    head, temp = HEADS[ray_head]
    state = "running" if head.poll() is None else f"exited {head.returncode}"
    return f"the Ray head is {state}:\n{ray_node_report(temp, temp / 'head.log')}"


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head bound to 127.0.0.1 with its dashboard (the job API) on; yields the dashboard's host:port."""
    # Short: Ray puts its sockets under <temp>/session_<date>_<time>_<µs>_<pid>/sockets/, and its dashboard
    # refuses a socket path over AF_UNIX's 107 bytes. Under pytest's basetemp (/tmp/pytest-of-root/
    # pytest-68/rayhead0) the longest, dash_TaskEventsHead, reached 108 once the pid had 6 digits, on a
    # machine whose pid_max allows that: the head's dashboard died and every submission was refused.
    temp = Path(tempfile.mkdtemp(prefix="kqrh-"))
    gcs, dash, client, agent_http, agent_grpc, metrics, runtime_env, node_mgr, obj_mgr = _free_ports(9)
    # The head, the submitter and the job's driver share this environment: Ray's token authentication
    # with a token of this test's own (as a secured cluster would have), and Ray's single-machine mode,
    # without which Ray replaces the loopback node address by the host's routable one.
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    cluster_env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
    }
    saved = {k: os.environ.get(k) for k in cluster_env}
    os.environ.update(cluster_env)
    # Ray caches the token (and its auth mode) per process at first use: an earlier test of this pytest
    # process (a local Ray with its own token) would otherwise make every request here a 401.
    _reset_ray_auth()
    env = without_coverage({**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    # --block: this process owns the head's processes and stops them when it is signalled.
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--node-manager-port={node_mgr}",
            f"--object-manager-port={obj_mgr}",
            "--num-cpus=2",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=open(temp / "head.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"127.0.0.1:{dash}"
    HEADS[address] = (head, temp)
    try:
        _wait_for_jobs_api(address, head, temp / "head.log")
        yield address
    finally:
        _stop(head)
        shutil.rmtree(temp, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reset_ray_auth()


def _reset_ray_auth() -> None:
    """Make this process's Ray read its auth settings and token again (Ray's own test helper)."""
    from ray._private.authentication_test_utils import reset_auth_token_state

    reset_auth_token_state()


def _wait_for_jobs_api(address: str, head: subprocess.Popen[bytes], log: Path, timeout: float = 240) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    while True:
        if head.poll() is not None:
            raise AssertionError(f"ray start exited {head.returncode}:\n{ray_node_report(log.parent, log)}")
        try:
            JobSubmissionClient(f"http://{address}").list_jobs()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def _stop(head: subprocess.Popen[bytes]) -> None:
    """Stop the head we started (its own process group), never any other Ray on the machine."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            return
        try:
            head.wait(timeout=wait)
            # Workers and daemons ray start spawned share its process group; make sure none is left.
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
        return


def _submit(
    ray_head: str, submission_id: str, term: Path, entrypoint: list[str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "RAY_DASHBOARD_ADDRESS": ray_head,
        "RAY_JOB_SUBMISSION_ID": submission_id,
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    return subprocess.run(
        [
            KUBEQUANT,
            "workload",
            "submit-training",
            "--termination-log",
            str(term),
            "--poll-seconds",
            "0.5",
            "--patience-seconds",
            "120",
            "--",
            *entrypoint,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _jobs_with_id(ray_head: str, submission_id: str) -> list[object]:
    from ray.job_submission import JobSubmissionClient

    return [
        j for j in JobSubmissionClient(f"http://{ray_head}").list_jobs() if j.submission_id == submission_id
    ]


def test_submitter_runs_the_training_once_and_leaves_the_result(
    ray_head: str, training_bundle: Path, tmp_path: Path
) -> None:
    manifest = write_manifest(training_job(training_bundle, name="submitted"), tmp_path / "tj.yaml")
    art = tmp_path / "artifacts"
    entrypoint = [KUBEQUANT, "workload", "train", "--config", str(manifest), "--artifact-dir", str(art)]
    term = tmp_path / "termination-log"

    first = _submit(ray_head, "tj-submitted-1", term, entrypoint, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-3000:] + head_report(ray_head)
    message = json.loads(term.read_text())
    assert message["modelUri"] == str(art.resolve())
    assert message["trials"] == 1 and set(message["metrics"]) >= {
        "ic",
        "icir",
        "rankIc",
        "rankIcir",
        "validIc",
        "loss",
    }
    assert len(term.read_bytes()) <= 4096
    assert (art / "model.json").is_file()
    assert "kubequant-result: " in first.stdout  # the job's logs are streamed through
    assert "followed an existing job" not in first.stderr
    model_written = (art / "model.json").stat().st_mtime_ns

    # A retried submitter pod (same submission id) follows the finished job: no second training.
    term.unlink()
    again = _submit(ray_head, "tj-submitted-1", term, entrypoint, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "followed an existing job" in again.stderr
    assert json.loads(term.read_text()) == message
    assert len(_jobs_with_id(ray_head, "tj-submitted-1")) == 1
    assert (art / "model.json").stat().st_mtime_ns == model_written


def test_a_failed_training_leaves_its_reason(ray_head: str, tmp_path: Path) -> None:
    backtest = Path(__file__).resolve().parents[3] / "examples" / "backtest.yaml"
    entrypoint = [
        KUBEQUANT,
        "workload",
        "train",
        "--config",
        str(backtest),
        "--artifact-dir",
        str(tmp_path / "a"),
    ]
    term = tmp_path / "termination-log"
    proc = _submit(ray_head, "tj-failing-1", term, entrypoint, tmp_path)
    assert proc.returncode == 1
    error = json.loads(term.read_text())["error"]
    assert "expected one TrainingJob, found 0" in error, error + "\n" + head_report(ray_head)
    assert not (tmp_path / "a").exists()
