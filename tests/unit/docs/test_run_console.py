"""kubequant.console: a quiet run sends the libraries' prints, logs and warnings to run.log and shows only
kubequant's progress and warnings; --verbose redirects nothing. (The real `kubequant run` on the demo
manifest: tests/integration/docs/test_demo_output.py.)"""

from __future__ import annotations

import io
import logging
import sys
import warnings
from pathlib import Path

import pytest

from kubequant import console

pytestmark = pytest.mark.unit


class Terminal(io.StringIO):
    """A captured stream that says it is a terminal, as a user's stderr does."""

    def isatty(self) -> bool:
        return True


def _noise() -> None:
    print("a library prints to stdout")
    print("a library prints to stderr", file=sys.stderr)
    warnings.warn("a library's DeprecationWarning-ish note", UserWarning, stacklevel=1)
    logging.getLogger("qlib.backtest").warning("qlib's internal warning")
    logging.getLogger("kubequant.workloads.x").warning("kubequant's own warning")


def test_quiet_run_sends_library_output_to_the_log(tmp_path: Path) -> None:
    terminal = io.StringIO()
    log = tmp_path / "rep" / console.LOG_NAME
    with console.run_output(log, verbose=False, terminal=terminal) as out:
        out.progress("data", "locating the data bundle")
        _noise()
        out.progress("report", "writing the report")
    shown = terminal.getvalue()
    assert "data      locating the data bundle" in shown and "report" in shown
    assert "kubequant's own warning" in shown
    for line in ("prints to stdout", "prints to stderr", "DeprecationWarning-ish", "qlib's internal"):
        assert line not in shown, line
    text = log.read_text()
    for line in ("prints to stdout", "prints to stderr", "DeprecationWarning-ish", "qlib's internal warning"):
        assert line in text, line
    assert out.log_path == log


def test_logging_and_warnings_are_restored_after_the_run(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    stream_holder: list[logging.Handler] = []
    with console.run_output(tmp_path / console.LOG_NAME, verbose=False, terminal=io.StringIO()):
        # A library that sets up its handler during the run keeps the run's stream (qlib does).
        handler = logging.StreamHandler(sys.stderr)
        stream_holder.append(handler)
    assert (list(root.handlers), root.level) == before
    record = logging.LogRecord("qlib", logging.WARNING, __file__, 1, "after the run", None, None)
    stream_holder[0].emit(record)  # dropped, not an error on a closed file
    assert "after the run" not in (tmp_path / console.LOG_NAME).read_text()


def test_a_terminal_gets_one_stage_display(tmp_path: Path) -> None:
    terminal = Terminal()
    with console.run_output(tmp_path / console.LOG_NAME, verbose=False, terminal=terminal) as out:
        out.progress("data", "locating the data bundle")
        out.progress("train", "training LGBModel")
        out.progress("signal", "warning: the model was trained on another data bundle")
        _noise()
    shown = terminal.getvalue()
    assert "/7 stages" in shown  # tqdm's display over the Backtest's stages
    assert "train: training LGBModel" in shown
    assert "signal: warning: the model was trained on another data bundle\n" in shown  # kept as a line
    assert "qlib's internal" not in shown and "prints to stdout" not in shown


def test_verbose_redirects_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    terminal = io.StringIO()
    log = tmp_path / console.LOG_NAME
    with console.run_output(log, verbose=True, terminal=terminal) as out:
        out.progress("backtest", "backtesting")
        print("a library prints to stdout")
    assert "backtest  backtesting" in terminal.getvalue()
    assert "a library prints to stdout" in terminal.getvalue()  # stdout stays free for -o json
    assert "a library prints" not in capsys.readouterr().out
    assert out.log_path is None and not log.exists()


def test_what_a_run_hands_out_pickles(tmp_path: Path) -> None:
    """Ray Tune pickles its callbacks (our progress) and Ray pickles objects holding sys.stdout/sys.stderr:
    with cloudpickle, as Ray does, none of them may hold the log file or the terminal."""
    import cloudpickle

    for terminal in (io.StringIO(), Terminal()):
        with console.run_output(tmp_path / console.LOG_NAME, verbose=False, terminal=terminal) as out:
            progress = cloudpickle.loads(cloudpickle.dumps(out.progress))
            progress("train", "a copy of the progress callback still reports")
            assert cloudpickle.loads(cloudpickle.dumps(sys.stderr)) is sys.stderr
            assert cloudpickle.loads(cloudpickle.dumps(sys.stdout)) is sys.stderr
        assert "train     a copy of the progress callback still reports" in terminal.getvalue()


def test_the_display_draws_on_a_real_terminal_that_reports_no_size() -> None:
    """tqdm sizes a bar on sys.stderr from the terminal itself, and a pty that reports 0 rows (a fresh
    one, as in CI) made it draw nothing: the display passes its own size."""
    import os
    import pty
    import subprocess

    script = (
        "import pathlib, sys, tempfile\n"
        "from kubequant import console\n"
        "with console.run_output(pathlib.Path(tempfile.mkdtemp()) / 'run.log', verbose=False) as out:\n"
        "    out.progress('data', 'locating the data bundle')\n"
        "    print('a library prints')\n"
        "    out.progress('backtest', 'backtesting')\n"
    )
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script], stderr=slave, stdout=subprocess.PIPE, timeout=60
        )
        os.close(slave)
        screen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    text = screen.decode()
    assert "data: locating the data bundle" in text and "backtest: backtesting" in text
    assert "/7 stages" in text and "a library prints" not in text


def test_a_library_logger_set_up_before_the_run_logs_into_the_run_log_then_gets_its_handler_back(
    tmp_path: Path,
) -> None:
    """qlib.init, run earlier in the same process, leaves 'qlib' non-propagating with its own stderr
    handler: its warnings reached the terminal of a quiet run (seen in CI, after other tests ran qlib)."""
    earlier = io.StringIO()
    lib = logging.getLogger("somelib.initialised_before")
    handler = logging.StreamHandler(earlier)
    lib.handlers, lib.propagate = [handler], False
    try:
        terminal = io.StringIO()
        log = tmp_path / console.LOG_NAME
        with console.run_output(log, verbose=False, terminal=terminal):
            lib.warning("set up before the run")
        assert "set up before the run" in log.read_text()
        assert "set up before the run" not in terminal.getvalue() + earlier.getvalue()
        assert lib.handlers == [handler] and lib.propagate is False  # as it was
        lib.warning("after the run")
        assert "after the run" in earlier.getvalue()
    finally:
        lib.handlers, lib.propagate = [], True
