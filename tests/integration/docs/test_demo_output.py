"""`make demo`'s first impression: the real `kubequant run -f examples/backtest.yaml` on a terminal shows
kubequant's progress display and the summary table, and nothing from qlib, LightGBM, Gym or warnings;
those are in run.log in the report folder."""

from __future__ import annotations

import os
import pty
import re
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[3]
KUBEQUANT = str(Path(sys.executable).parent / "kubequant")

# What the libraries print when nobody stops them (seen in `make demo` before this change).
THIRD_PARTY = re.compile(
    r"Gym has been unmaintained|Warning|warnings\.warn|\[LightGBM\]|qlib\.|\bit/s\b|s/it\b|backtest loop"
    r"|mlflow|Traceback",
    re.IGNORECASE,
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _drain(fd: int, into: bytearray) -> None:
    """Read a pty's master side until the child's side is closed (EIO on Linux)."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        into.extend(chunk)


def _visible_lines(raw: bytes) -> list[str]:
    """What stays on the screen: each carriage-return-separated redraw, escape codes removed."""
    text = ANSI.sub("", raw.decode("utf-8", "replace"))
    return [part.strip() for line in text.split("\n") for part in line.split("\r") if part.strip()]


def test_demo_on_a_terminal_shows_only_kubequant(tmp_path: Path) -> None:
    report = tmp_path / "rep"
    master, slave = pty.openpty()
    screen = bytearray()
    reader = threading.Thread(target=_drain, args=(master, screen), daemon=True)
    reader.start()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    proc = subprocess.run(
        [KUBEQUANT, "run", "-f", str(REPO_ROOT / "examples/backtest.yaml"), "--report-dir", str(report)],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
        timeout=900,
    )
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    stderr_lines = _visible_lines(bytes(screen))
    stdout = proc.stdout.decode()
    assert proc.returncode == 0, "\n".join(stderr_lines[-40:])

    log = report / "run.log"
    note = f"libraries' output (qlib, LightGBM, warnings): {log}  (--verbose shows it here)"
    assert stderr_lines[-1] == note  # kubequant's one line about the log, after the progress display
    noisy = [line for line in stderr_lines if line != note and THIRD_PARTY.search(line)]
    assert not noisy, noisy[:10]
    assert any("stages" in line and "backtest:" in line for line in stderr_lines), stderr_lines[:20]

    # The summary is the last thing printed, on stdout.
    table = stdout.splitlines()
    assert table[0] == "Backtest lgb-alpha158-topk", stdout[:500]
    assert table[-1].split() == ["Report", str(report)]
    assert any(line.split()[:2] == ["Sharpe", "(net)"] for line in table)
    assert not [line for line in table if THIRD_PARTY.search(line)]

    # ... and what the libraries said is in the log.
    logged = log.read_text()
    assert "Gym has been unmaintained" in logged
    assert re.search(r"qlib|LightGBM|Warning", logged), logged[:2000]
    # The README's and the docs' picture is this chart, as `make demo` writes it (copied from a real run).
    assert _png_size(REPO_ROOT / "docs/img/demo-report.png") == _png_size(report / "chart.png")


def test_verbose_shows_what_the_default_puts_in_the_log(tmp_path: Path) -> None:
    """The same small Backtest twice (a scores file on a 40-stock bundle): quiet by default, --verbose
    shows qlib's output on stderr and writes no run.log."""
    import yaml

    from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

    bundle = tmp_path / "bundle"
    write_sample_bundle(bundle, SampleSpec(instruments=40, start="2020-01-01", end="2021-06-30", seed=7))
    days = [
        d for d in (bundle / "calendars/day.txt").read_text().split() if "2021-01-04" <= d <= "2021-06-28"
    ]
    codes = [line.split("\t")[0] for line in (bundle / "instruments/all.txt").read_text().splitlines()]
    scores = tmp_path / "scores.csv"
    scores.write_text(
        "datetime,instrument,score\n"
        + "".join(
            f"{d},{c},{(i * 7919 + j) % 101}\n" for i, d in enumerate(days) for j, c in enumerate(codes)
        )
    )
    manifest = tmp_path / "bt.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubequant.io/v1alpha1",
                "kind": "Backtest",
                "metadata": {"name": "small-file"},
                "spec": {
                    "data": {"path": str(bundle)},
                    "period": {"start": "2021-01-04", "end": "2021-06-28"},
                    "signal": {"file": {"path": str(scores)}},
                    "strategy": {"topkDropout": {"topk": 8, "nDrop": 2}},
                },
            }
        )
    )
    runs = {}
    for mode in ("quiet", "verbose"):
        report = tmp_path / mode
        args = [KUBEQUANT, "run", "-f", str(manifest), "--report-dir", str(report)]
        proc = subprocess.run(
            [*args, *(["--verbose"] if mode == "verbose" else [])],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.startswith("Backtest small-file\n")
        runs[mode] = (proc.stderr, report)
    quiet, quiet_report = runs["quiet"]
    verbose, verbose_report = runs["verbose"]
    # qlib's own backtest progress bar and log lines: on the terminal only with --verbose.
    assert "backtest loop" in verbose and "backtest loop" not in quiet
    assert "qlib." in verbose and "qlib." not in quiet
    assert "backtest loop" in (quiet_report / "run.log").read_text()
    assert not (verbose_report / "run.log").exists()
    stage = re.compile(r"^\[\s*\d+\.\ds\] \w+\s")
    # Quiet and not a terminal: kubequant's stage lines and its one line about the log, nothing else.
    assert all(stage.match(line) or line.startswith("libraries' output") for line in quiet.splitlines()), (
        quiet
    )
