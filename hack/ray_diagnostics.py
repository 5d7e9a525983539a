"""Why a Ray node the tests started is gone: the tails of its logs and the machine's room, in one text.

A test that starts Ray (``ray start`` on loopback) and sees it exit or stop answering puts this in its
failure message, so a CI log says what happened (a log directory on the CI machine is gone with it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Ray's own logs under <temp-dir>/session_latest/logs that say why a head or a node stopped.
RAY_LOGS = (
    "gcs_server.out",
    "gcs_server.err",
    "raylet.out",
    "raylet.err",
    "dashboard.log",
    "dashboard.err",
    "dashboard_agent.log",
    "monitor.log",
)


def tail(path: Path, lines: int = 15, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of ``path`` (reading at most its last ``max_bytes``), or why not."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - max_bytes))
            text = f.read().decode(errors="replace")
    except OSError as err:
        return f"({err.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def first_matching(path: Path, needles: tuple[str, ...], count: int = 5, max_bytes: int = 1 << 20) -> str:
    """The first ``count`` lines of ``path`` (its first ``max_bytes``) holding one of ``needles``, each
    with a newline after it; empty when none does."""
    try:
        with path.open("rb") as f:
            text = f.read(max_bytes).decode(errors="replace")
    except OSError:
        return ""
    found = [line for line in text.splitlines() if any(n in line for n in needles)][:count]
    return "".join(f"{line[:500]}\n" for line in found) + ("[...]\n" if found else "")


def machine_room(path: Path) -> str:
    """Free disk under ``path``, free memory and the load: what a node needs to start and stay up."""
    parts = []
    for where in (path, Path("/dev/shm")):
        try:
            usage = shutil.disk_usage(where)
            parts.append(f"{where}: {usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f}")
        except OSError:
            pass
    try:
        meminfo = dict(
            line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line
        )
        parts.append(f"memory available: {meminfo.get('MemAvailable', '?').strip()}")
    except OSError:
        pass
    try:
        parts.append("load: " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    except OSError:
        pass
    return "; ".join(parts)


def ray_node_report(temp_dir: Path, *extra_logs: Path, lines: int = 15) -> str:
    """The tails of ``extra_logs`` (e.g. ``ray start``'s own output) and of Ray's logs under ``temp_dir``."""
    logs_dir = Path(temp_dir) / "session_latest" / "logs"
    out = [f"--- machine: {machine_room(Path(temp_dir))}"]
    for log in (*extra_logs, *(logs_dir / name for name in RAY_LOGS)):
        if log.exists():
            # A crash's reason comes before its stack trace, which alone fills the tail.
            reasons = first_matching(log, ("Check failed", "FATAL", "Error", "error:", "Exception"))
            out.append(f"--- {log.name}:\n{reasons}{tail(log, lines)}")
    if not logs_dir.exists():
        out.append(f"--- no Ray session logs under {logs_dir}")
    return "\n".join(out)


# What a test run measuring coverage puts in the environment for its Python subprocesses (coverage.py's
# `patch = subprocess`, pytest-cov before 7).
COVERAGE_ENV_PREFIXES = ("COVERAGE_", "COV_CORE_")


def without_coverage(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the coverage measurement's variables, for the Ray nodes a test starts.

    Measured, every Python process of a node (the dashboard, its agent, the runtime-env agent) starts
    slowly enough under a loaded `make test` that the raylet misses Ray's fixed 30 s to register and
    `ray start` exits 1 ("The current node timed out during startup"): reproduced with `--cov`, never
    without. The code those tests drive (the submitter, the training entrypoint's CLI) is measured by
    the tests that run it directly.
    """
    return {k: v for k, v in env.items() if not k.startswith(COVERAGE_ENV_PREFIXES)}


# How often a measured Ray worker writes its coverage data (see measured_workers_runtime_env).
COVERAGE_SAVE_INTERVAL_S = 1.0


def measured_workers_runtime_env(measured: dict[str, str]) -> dict[str, object] | None:
    """The runtime_env that measures the Ray worker processes of a job, or None when nothing is measured.

    ``measured`` is what ``without_coverage`` took away from Ray's own processes. Workers get it back
    (and this folder on their path, for the hook): they run the kubequant code under test (Tune trials,
    data-parallel ranks). Ray ends its workers from C++ (``_Exit``) or with SIGKILL, never through
    Python's exit, so coverage.py's save at exit never runs there: the hook saves every second instead,
    and what a worker ran in its last second is not counted.
    """
    if not measured:
        return None
    path = os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "env_vars": {**measured, "PYTHONPATH": path},
        "worker_process_setup_hook": "ray_diagnostics.save_coverage_periodically",
    }


def save_coverage_periodically() -> None:
    """Ray's worker_process_setup_hook: a measured worker writes its coverage data every second."""
    import threading
    import time

    import coverage

    cov = coverage.Coverage.current()
    if cov is None:
        return

    def save_forever() -> None:
        while True:
            time.sleep(COVERAGE_SAVE_INTERVAL_S)
            try:
                cov.save()
            except Exception:  # a failed save loses a measurement, never the test
                pass

    threading.Thread(target=save_forever, name="coverage-saver", daemon=True).start()
