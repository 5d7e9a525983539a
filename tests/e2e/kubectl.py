"""Run the pinned kubectl (built by hack/build-k8s.sh) against the cluster under test."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def bin_dir() -> Path:
    """Folder of the control plane's binaries (kubectl, helm, …)."""
    out = subprocess.run(
        [str(REPO_ROOT / "hack" / "build-k8s.sh"), "--print-bin-dir"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def kubeconfig() -> str:
    """The kubeconfig of the cluster under test."""
    return os.environ.get("KUBECONFIG") or str(REPO_ROOT / ".dev-cluster" / "kubeconfig")


def helm_env(home: Path) -> dict[str, str]:
    """This process's environment for the pinned helm and kubectl: the cluster under test, and Helm's
    cache, config and data under ``home`` (a test's own folder), not the user's."""
    return {
        **os.environ,
        "KUBECONFIG": kubeconfig(),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


def kubectl(
    *args: str, stdin: str | None = None, check: bool = False, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``kubectl ARGS`` with the cluster's kubeconfig; returns the completed process."""
    proc = subprocess.run(
        [str(bin_dir() / "kubectl"), "--kubeconfig", kubeconfig(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def wait_established(
    run: Callable[..., subprocess.CompletedProcess[str]], *targets: str, timeout: float = 120
) -> None:
    """``kubectl wait --for=condition=Established TARGETS`` (``crd/NAME`` or ``-f FILE`` arguments) until
    it succeeds or ``timeout``: kubectl exits 1 at once, rather than waiting, on a CRD the API server has
    not yet given conditions (".status.conditions accessor error: <nil> is of the type <nil>",
    kubernetes/kubernetes#66439), which a loaded machine hits right after the apply. ``run``: a kubectl
    wrapper taking ``check=False``."""
    if not targets:
        return
    deadline = time.monotonic() + timeout
    while True:
        done = run("wait", "--for=condition=Established", "--timeout=30s", *targets, check=False)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"CRDs not Established after {timeout:.0f}s ({' '.join(targets)}):\n{done.stderr}"
            )
        time.sleep(1)
