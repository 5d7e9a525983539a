"""hack/dev-cluster.sh on a loaded machine: a kwok controller that gave up is found dead and restarted.

kwok's controller exits after ~30 s of "connection refused" from a slow API server while kwokctl
still reports the cluster ready; `up` then waited for nodes nobody marked Ready. The script's
functions run here, sourced, against a fake kwokctl and kubectl and real short-lived processes in
place of the controller (a real second cluster is measured by hand, see the issue).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.unit, pytest.mark.skipif(not shutil.which("setsid"), reason="needs setsid")]

SCRIPT = Path(__file__).resolve().parents[2] / "hack" / "dev-cluster.sh"
NAME = "kq-fake"

# kwokctl as the binary runtime behaves: `start cluster` starts the components that are down (here:
# the controller, a real process) and writes its pid file; "down" is its ForkExecIsRunning: no pid
# file, or kill -0 fails (so a zombie counts as running).
FAKE_KWOKCTL = """#!/usr/bin/env bash
echo "kwokctl $*" >>"$CALLS"
if [[ "$1 $2" == "start cluster" ]]; then
  dir="$KWOK_WORKDIR/clusters/$4"
  mkdir -p "$dir/pids"
  [[ -f "$dir/pids/kwok-controller.pid" ]] && kill -0 "$(cat "$dir/pids/kwok-controller.pid")" && exit 0
  setsid sleep 60 >/dev/null 2>&1 </dev/null &
  echo $! >"$dir/pids/kwok-controller.pid"
  echo "$!" >>"$STARTED"
fi
"""
# kubectl: nodes are Ready once the controller has been running for one `wait`.
FAKE_KUBECTL = """#!/usr/bin/env bash
echo "kubectl $*" >>"$CALLS"
if [[ " $* " == *" wait "* ]]; then
  pid_file="$KWOK_WORKDIR/clusters/kq-fake/pids/kwok-controller.pid"
  if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    [[ -f "$STATE/seen" ]] && exit 0
    touch "$STATE/seen"
  fi
  exit 1
fi
exit 0
"""


@pytest.fixture
def sandbox(tmp_path: Path):  # type: ignore[no-untyped-def]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("kwokctl", FAKE_KWOKCTL), ("kubectl", FAKE_KUBECTL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    pid_dir = tmp_path / "cluster" / "kwok" / "clusters" / NAME / "pids"
    pid_dir.mkdir(parents=True)
    (pid_dir.parent / "logs").mkdir()
    (pid_dir.parent / "logs" / "kwok-controller.log").write_text(
        'E1202 "Failed to list nodes" err="connection refused"\n'
    )
    yield tmp_path, bin_dir, pid_dir
    started = tmp_path / "started"
    for pid in started.read_text().split() if started.exists() else []:
        subprocess.run(["kill", pid], stderr=subprocess.DEVNULL, check=False)


def run(tmp_path: Path, bin_dir: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Source the script with the fakes, then run ``body`` (bash)."""
    env = {
        **os.environ,
        "KUBEQUANT_DEV_CLUSTER_NAME": NAME,
        "KUBEQUANT_DEV_CLUSTER_DIR": str(tmp_path / "cluster"),
        "CALLS": str(tmp_path / "calls"),
        "STARTED": str(tmp_path / "started"),
        "STATE": str(tmp_path / "state"),
    }
    script = f'source "{SCRIPT}"\nBIN_DIR="{bin_dir}"\n{body}\n'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_a_dead_controller_is_restarted_and_its_last_words_shown(sandbox) -> None:  # type: ignore[no-untyped-def]
    tmp_path, bin_dir, pid_dir = sandbox
    (pid_dir / "kwok-controller.pid").write_text(str(dead_pid()))
    done = run(tmp_path, bin_dir, "ensure_kwok && kwok_alive && echo ALIVE")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ALIVE"
    assert calls(tmp_path) == [f"kwokctl start cluster --name {NAME}"]
    assert "not running (restart 1/5)" in done.stderr and "connection refused" in done.stderr


def test_a_controller_left_a_zombie_is_restarted_all_the_same(sandbox) -> None:  # type: ignore[no-untyped-def]
    """Its parent (kwokctl create) has not reaped it: kwokctl alone would think it still runs."""
    tmp_path, bin_dir, pid_dir = sandbox
    pid_file = pid_dir / "kwok-controller.pid"
    parent = subprocess.Popen(["bash", "-c", f"sleep 0 & echo $! >{pid_file}; exec sleep 20"])
    try:
        time.sleep(0.5)  # the child has exited; its parent (now `sleep 20`) never reaps it
        zombie = pid_file.read_text().strip()
        state = subprocess.run(["ps", "-o", "stat=", "-p", zombie], capture_output=True, text=True).stdout
        assert state.startswith("Z"), state
        done = run(tmp_path, bin_dir, "ensure_kwok && kwok_alive && echo ALIVE")
        assert done.stdout.strip() == "ALIVE", done.stderr
        assert pid_file.read_text().strip() != zombie
    finally:
        parent.kill()
        parent.wait()


def test_a_live_controller_is_left_alone(sandbox) -> None:  # type: ignore[no-untyped-def]
    tmp_path, bin_dir, pid_dir = sandbox
    live = subprocess.Popen(["sleep", "30"])
    try:
        (pid_dir / "kwok-controller.pid").write_text(str(live.pid))
        done = run(tmp_path, bin_dir, "ensure_kwok")
        assert done.returncode == 0, done.stderr
        assert calls(tmp_path) == []
    finally:
        live.kill()
        live.wait()


def test_a_controller_that_keeps_dying_is_given_up_on_naming_its_log(sandbox) -> None:  # type: ignore[no-untyped-def]
    tmp_path, bin_dir, pid_dir = sandbox
    (pid_dir / "kwok-controller.pid").write_text(str(dead_pid()))
    kill_it = 'kill "$(cat "$KWOK_WORKDIR/clusters/kq-fake/pids/kwok-controller.pid")"; sleep 0.2'
    body = f"for i in 1 2 3 4 5; do ensure_kwok || exit 9; {kill_it}; done; ensure_kwok && rc=0 || rc=$?; echo rc=$rc"
    done = run(tmp_path, bin_dir, body)
    assert done.stdout.strip() == "rc=1", done.stderr
    assert len(calls(tmp_path)) == 5
    assert "died 5 times; giving up" in done.stderr and "kwok-controller.log" in done.stderr


def test_nodes_are_waited_for_while_the_controller_is_revived(sandbox) -> None:  # type: ignore[no-untyped-def]
    tmp_path, bin_dir, pid_dir = sandbox
    (pid_dir / "kwok-controller.pid").write_text(str(dead_pid()))
    done = run(tmp_path, bin_dir, "wait_nodes_ready 30 && echo READY")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "READY"
    made = calls(tmp_path)
    assert made.count(f"kwokctl start cluster --name {NAME}") == 1
    assert sum("wait --for=condition=Ready nodes" in c for c in made) >= 2


def test_nodes_that_never_get_ready_time_out(sandbox) -> None:  # type: ignore[no-untyped-def]
    tmp_path, bin_dir, pid_dir = sandbox
    live = subprocess.Popen(["sleep", "30"])
    try:
        (pid_dir / "kwok-controller.pid").write_text(str(live.pid))
        (bin_dir / "kubectl").write_text('#!/usr/bin/env bash\necho "kubectl $*" >>"$CALLS"\nexit 1\n')
        done = run(tmp_path, bin_dir, "wait_nodes_ready 2 && rc=0 || rc=$?; echo rc=$rc")
        assert done.stdout.strip() == "rc=1"
        assert "timed out waiting for Ready nodes" in done.stderr
    finally:
        live.kill()
        live.wait()


def test_name_and_folder_are_overridable_for_a_second_cluster(sandbox) -> None:  # type: ignore[no-untyped-def]
    tmp_path, bin_dir, _ = sandbox
    done = run(tmp_path, bin_dir, 'echo "$CLUSTER_NAME|$STATE_DIR|$KWOK_WORKDIR|$KUBECONFIG_OUT"')
    assert done.stdout.strip().split("|") == [
        NAME,
        str(tmp_path / "cluster"),
        str(tmp_path / "cluster" / "kwok"),
        str(tmp_path / "cluster" / "kubeconfig"),
    ]


# --------------------------------------------------------------------------- KubeRay


def ray_operator(bin_dir: Path, text: str) -> None:
    path = bin_dir / "ray-operator"
    path.write_text(f'#!/usr/bin/env bash\necho "ray-operator $*" >>"$CALLS"\n{text}\n')
    path.chmod(0o755)


def stop_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "cluster" / "ray-operator.pid"
    if pid_file.exists():
        subprocess.run(["kill", pid_file.read_text().strip()], stderr=subprocess.DEVNULL, check=False)


def test_kuberay_crds_are_applied_server_side(sandbox) -> None:  # type: ignore[no-untyped-def]
    """Client-side apply would store each CRD (rayjobs: ~1.3 MB) in an annotation limited to 256 KiB."""
    tmp_path, bin_dir, _ = sandbox
    crds = tmp_path / "crds"
    crds.mkdir()
    (crds / ".complete").touch()
    (bin_dir / "kubectl").write_text('#!/usr/bin/env bash\necho "kubectl $*" >>"$CALLS"\n')
    done = run(tmp_path, bin_dir, f'KUBERAY_CRD_DIR="{crds}"; install_kuberay_crds && echo OK')
    assert done.stdout.strip() == "OK", done.stderr
    (apply,) = [c for c in calls(tmp_path) if " apply " in c]
    assert "--server-side" in apply and "--force-conflicts" in apply and apply.endswith(f"-f {crds}")
    assert any("wait --for=condition=Established" in c and "crd/rayjobs.ray.io" in c for c in calls(tmp_path))
    # CRDs the build never finished are not half-installed.
    (crds / ".complete").unlink()
    done = run(
        tmp_path, bin_dir, f'KUBERAY_CRD_DIR="{crds}"; install_kuberay_crds && rc=0 || rc=$?; echo rc=$rc'
    )
    assert done.stdout.strip() == "rc=1" and "no KubeRay CRDs" in done.stderr


# kubectl 1.36 on a CRD the API server has not given conditions yet: exits 1 at once, not waiting.
NO_CONDITIONS_YET = """#!/usr/bin/env bash
echo "kubectl $*" >>"$CALLS"
if [[ " $* " == *" wait "* && ! -f "$STATE/waited" ]]; then
  touch "$STATE/waited"
  echo '.status.conditions accessor error: <nil> is of the type <nil>, expected []interface{}' >&2
  exit 1
fi
exit 0
"""


def test_kuberay_crds_without_conditions_yet_are_waited_for_not_a_failed_start(sandbox) -> None:  # type: ignore[no-untyped-def]
    """A fresh-clone run's `up` failed "KubeRay failed to start" on that error, on a loaded machine."""
    tmp_path, bin_dir, _ = sandbox
    crds = tmp_path / "crds"
    crds.mkdir()
    (crds / ".complete").touch()
    (bin_dir / "kubectl").write_text(NO_CONDITIONS_YET)
    done = run(tmp_path, bin_dir, f'KUBERAY_CRD_DIR="{crds}"; install_kuberay_crds && echo OK')
    assert done.stdout.strip() == "OK", done.stderr
    waits = [c for c in calls(tmp_path) if " wait " in c]
    assert len(waits) == 2 and all("crd/rayjobs.ray.io" in c for c in waits)


def test_ray_operator_is_started_against_the_cluster_and_restarted_when_dead(sandbox) -> None:  # type: ignore[no-untyped-def]
    tmp_path, bin_dir, _ = sandbox
    ray_operator(bin_dir, 'echo "KUBECONFIG=$KUBECONFIG"; exec sleep 60')
    try:
        done = run(tmp_path, bin_dir, "ensure_ray_operator && ray_operator_alive && echo ALIVE")
        assert done.stdout.strip() == "ALIVE", done.stderr
        first = (tmp_path / "cluster" / "ray-operator.pid").read_text().strip()
        (started,) = [c for c in calls(tmp_path) if c.startswith("ray-operator")]
        assert "--metrics-addr=0" in started and "--enable-leader-election=false" in started
        log = (tmp_path / "cluster" / "ray-operator.log").read_text()
        assert f"KUBECONFIG={tmp_path / 'cluster' / 'kubeconfig'}" in log
        # Left alone while it runs; restarted, saying so, once it died.
        done = run(tmp_path, bin_dir, "ensure_ray_operator")
        assert len([c for c in calls(tmp_path) if c.startswith("ray-operator")]) == 1
        subprocess.run(["kill", first], check=True)
        time.sleep(0.3)
        done = run(tmp_path, bin_dir, "ensure_ray_operator && ray_operator_alive && echo ALIVE")
        assert done.stdout.strip() == "ALIVE", done.stderr
        assert "not running (restart 1/3)" in done.stderr
        assert (tmp_path / "cluster" / "ray-operator.pid").read_text().strip() != first
        # down stops it.
        second = (tmp_path / "cluster" / "ray-operator.pid").read_text().strip()
        done = run(tmp_path, bin_dir, "stop_ray_operator; ray_operator_alive || echo STOPPED")
        assert done.stdout.strip() == "STOPPED", done.stderr
        state = subprocess.run(["ps", "-o", "stat=", "-p", second], capture_output=True, text=True).stdout
        assert not state.strip() or state.startswith("Z")
    finally:
        stop_started(tmp_path)


def test_a_ray_operator_that_exits_at_start_is_reported(sandbox) -> None:  # type: ignore[no-untyped-def]
    tmp_path, bin_dir, _ = sandbox
    ray_operator(bin_dir, 'echo "unable to start manager: no matches for kind RayJob" >&2; exit 1')
    done = run(tmp_path, bin_dir, "ensure_ray_operator && rc=0 || rc=$?; echo rc=$rc")
    assert done.stdout.strip() == "rc=1"
    assert "exited at start" in done.stderr and "no matches for kind RayJob" in done.stderr
