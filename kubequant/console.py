"""What `kubequant run` shows while it works: kubequant's own lines, one progress display, nothing else.

qlib, LightGBM, Ray, Gym (imported by qlib's RL package) and friends print banners, warnings,
log lines and their own progress bars. By default all of that goes to a log file in the report
folder (``run.log``), so the terminal holds kubequant's progress and, last, the summary; with
``--verbose`` nothing is redirected and every stage is a timestamped line, as before.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

LOG_NAME = "run.log"
Progress = Callable[[str, str], None]

# Stages of the long-running kinds, in the order the workloads report them (workloads/backtest/runner.py,
# signal.py; workloads/training/train.py); a stage not listed only updates the display's description.
BACKTEST_STAGES: tuple[str, ...] = ("data", "features", "train", "predict", "signal", "backtest", "report")
NESTED_BACKTEST_STAGES: tuple[str, ...] = (*BACKTEST_STAGES[:-1], "compare", "report")
TRAINING_STAGES: tuple[str, ...] = ("ray", "features", "tune", "train", "evaluate", "artifacts")


# The terminal of the run in progress. Progress callbacks look it up when called instead of holding it:
# Ray Tune pickles its callbacks (and whatever they hold) with cloudpickle, which cannot pickle a
# stream opened for writing.
_terminal: TextIO | None = None


def _current_terminal() -> TextIO:
    return _terminal if _terminal is not None else sys.stderr


def _current_stderr() -> TextIO:
    """What a pickled log stream becomes where it is unpickled (a Ray worker): that process's stderr."""
    return sys.stderr


class _LogStream(io.TextIOBase):
    """A text stream into the run's log file that stays harmless once the run is over.

    Libraries keep the stream they found at set-up (qlib's logging handler, tqdm's bars); after the
    run those writes are dropped instead of failing on a closed file. Pickled (Ray pickles objects
    that hold sys.stdout/sys.stderr), it becomes the unpickling process's stderr.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: TextIO | None = path.open("w", encoding="utf-8", errors="replace")

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_current_stderr, ())

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def fileno(self) -> int:
        """The log file's descriptor: a subprocess handed sys.stderr (Ray's) writes into the log too."""
        if self._file is None:
            raise io.UnsupportedOperation("the run's log is closed")
        return self._file.fileno()

    def write(self, text: str) -> int:
        if self._file is not None:
            self._file.write(text)
        return len(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def finish(self) -> None:
        """Close the file; later writes are dropped."""
        if self._file is not None:
            self._file.close()
            self._file = None


class _OwnWarnings(logging.Filter):
    """kubequant's own warnings and errors still reach the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("kubequant") and record.levelno >= logging.WARNING


@dataclass
class StageLines:
    """One timestamped line per progress message (``--verbose``, and whenever stderr is not a terminal).

    Holds no stream (it writes to the run's terminal, looked up at each call), so it pickles.
    """

    start: float = field(default_factory=time.perf_counter)

    def __call__(self, stage: str, message: str) -> None:
        out = _current_terminal()
        out.write(f"[{time.perf_counter() - self.start:7.1f}s] {stage:<9} {message}\n")
        out.flush()


def _screen() -> tuple[int, int]:
    """The display's width and height: the terminal's (COLUMNS/LINES first), 100×24 where it reports
    none. tqdm asks the terminal itself when writing to sys.stderr, and a terminal that reports 0 rows
    (a new pty) makes it draw nothing at all."""
    size = shutil.get_terminal_size(fallback=(100, 24))
    return (size.columns if size.columns >= 40 else 100), (size.lines if size.lines >= 1 else 24)


@dataclass
class StageBar:
    """One tqdm display over a run's stages: the bar moves when a later stage starts."""

    stages: Sequence[str]
    stream: TextIO
    _bar: Any = field(init=False, default=None)
    _done: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        from tqdm import tqdm  # imported here: most commands never show a bar

        self._bar = tqdm(
            total=len(self.stages),
            file=self.stream,
            bar_format="{desc:<48.48} {bar:20} {n_fmt}/{total_fmt} stages [{elapsed}]",
            leave=False,
            ncols=_screen()[0],
            nrows=_screen()[1],
        )

    def __call__(self, stage: str, message: str) -> None:
        if message.startswith("warning"):
            self._bar.write(f"{stage}: {message}", file=self.stream)
        if stage in self.stages:
            self._done = max(self._done, self.stages.index(stage))
            self._bar.n = self._done
        self._bar.set_description_str(f"{stage}: {message}", refresh=False)
        self._bar.refresh()

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        # A copy of the display in another process (a pickled Ray Tune callback) prints plain lines.
        return (StageLines, ())

    def close(self) -> None:
        """Fill the bar and take it off the screen (the summary follows)."""
        self._bar.n = len(self.stages)
        self._bar.close()


@contextlib.contextmanager
def _library_logging(log_stream: io.TextIOBase, terminal: TextIO) -> Iterator[None]:
    """Root logging (and Python warnings) into the log; kubequant's own WARNING+ also to the terminal."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    to_log = logging.StreamHandler(log_stream)
    to_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_terminal = logging.StreamHandler(terminal)
    to_terminal.addFilter(_OwnWarnings())
    to_terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.handlers = [to_log, to_terminal]
    root.setLevel(min(saved[1] or logging.INFO, logging.INFO))
    # A library set up before the run (qlib, once qlib.init has run in this process) logs through
    # handlers of its own that do not propagate, bound to the stderr of that time: for the run, its
    # records go to the root's handlers instead, and its own come back after.
    detached = [
        (logger, list(logger.handlers))
        for logger in list(logging.root.manager.loggerDict.values())
        if isinstance(logger, logging.Logger) and not logger.propagate and logger.handlers
    ]
    for logger, _ in detached:
        logger.handlers, logger.propagate = [], True
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            # Every library warning is recorded in the log, once per place, whatever filters were set.
            warnings.simplefilter("default")
            yield
    finally:
        logging.captureWarnings(False)
        root.handlers, root.level = saved[0], saved[1]
        for logger, handlers in detached:
            logger.handlers, logger.propagate = handlers, False


@dataclass
class RunOutput:
    """What a quiet run hands the workload (``progress``) and the CLI (``log_path``, ``terminal``)."""

    progress: Progress
    log_path: Path | None
    terminal: TextIO


@contextlib.contextmanager
def run_output(
    log_path: Path,
    verbose: bool,
    stages: Sequence[str] = BACKTEST_STAGES,
    terminal: TextIO | None = None,
    bar: bool = True,
) -> Iterator[RunOutput]:
    """Route the libraries' output for the duration of one run.

    Quiet (the default): sys.stdout/sys.stderr, root logging and warnings go to ``log_path``; the
    terminal gets a tqdm display of ``stages`` (plain stage lines when it is not a terminal, or with
    ``bar=False``) and kubequant's own warnings. Imports that print banners (Gym's, through qlib's RL
    package) happen inside, so they land in the log. Verbose: nothing is redirected; stages are
    timestamped lines. stdout stays free for the CLI's results (-o json) either way.
    """
    global _terminal
    term = terminal if terminal is not None else sys.stderr
    saved, _terminal = _terminal, term
    try:
        if verbose:
            with contextlib.redirect_stdout(term):
                yield RunOutput(StageLines(), None, term)
            return
        stream = _LogStream(log_path)
        display: StageBar | None = StageBar(stages, term) if bar and term.isatty() else None
        progress: Progress = display if display is not None else StageLines()
        try:
            with (
                contextlib.redirect_stdout(stream),
                contextlib.redirect_stderr(stream),
                _library_logging(stream, term),
            ):
                _import_noisy_modules()
                yield RunOutput(progress, log_path, term)
        finally:
            if display is not None:
                display.close()
            stream.finish()
    finally:
        _terminal = saved


def _import_noisy_modules() -> None:
    """Import what prints at import time while the output goes to the log (Gym's deprecation banner)."""
    with contextlib.suppress(Exception):
        import gym  # noqa: F401


def log_note(log_path: Path) -> str:
    """The one line that says where the libraries' output went."""
    return f"libraries' output (qlib, LightGBM, warnings): {log_path}  (--verbose shows it here)"
