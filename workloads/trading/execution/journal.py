"""The durable order journal: append-only SQLite (WAL, synchronous=FULL) on the session's volume.

Writes are group-committed: events queued by ``append_async`` while a transaction is being written
and fsynced go together into the next one, written by one writer thread (sqlite3 releases the GIL
while it writes and fsyncs, so the event loop prepares the next signals meanwhile). One ordered
queue feeds every transaction, so the journal's order is the order in which events were queued,
and a synchronous ``append`` first writes everything queued before it. After a failed write the
journal refuses every later one: writing later events without the lost ones would corrupt the
replay.

SQLite's automatic checkpoint runs inside the commit that crosses 1,000 WAL pages: it copies the
pages into the database and fsyncs it, ms during which every event queued behind waits. Here
commits never checkpoint; a ``Checkpointer`` thread with a connection of its own does, every so
many commits (a passive checkpoint: writers go on appending to the WAL meanwhile). Durability is
the WAL's fsync at each commit either way.

A passive checkpoint beside a steady stream of commits never catches up with it, and SQLite starts
the WAL over only once one has: the WAL grew without end (48 MB for 3,000 signals), every commit
wrote past its end, and the fsync of a file that grows also commits the file system's journal
(with whatever else was written meanwhile): 4x the fsync's p99 on the benchmark's disk. So after
each pass of the checkpointer, the writer catches up between two of its transactions (the few
commits made during the pass: one fsync of the database), and its next commit starts the WAL over.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType

from prometheus_client import Histogram

from kubequant.errors import KubequantError
from kubequant.workloads.trading.model.events import Event, OrderEvent, decode, encode

JOURNAL_WRITE_SECONDS = Histogram(
    "kubequant_journal_write_seconds",
    "Time to write and fsync one journal transaction.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    kind TEXT NOT NULL,
    client_order_id TEXT,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_order ON events (client_order_id);
-- Append-only is enforced by the database, not by convention.
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END;
"""
Row = tuple[str, str, str | None, str]
# SQLite binds at most 32,766 parameters per statement; a group larger than this is written by
# several statements in one explicit transaction.
MAX_ROWS_PER_STATEMENT = 1000


@cache
def _insert(rows: int) -> str:
    return "INSERT INTO events (ts, kind, client_order_id, body) VALUES " + ",".join(["(?, ?, ?, ?)"] * rows)


# Commits between two checkpoints: a journal transaction adds a few pages to the WAL, so this keeps
# it near SQLite's default of 1,000 pages.
CHECKPOINT_EVERY = 256
# The WAL file keeps its largest size once checkpointed (SQLite reuses it from the start); past this it
# is truncated back when it starts over, so a burst does not leave the volume that much fuller for good.
WAL_SIZE_LIMIT_BYTES = 4 << 20


class JournalError(KubequantError):
    """The journal could not be written or read; the runtime must stop rather than act unjournaled."""


class Checkpointer:
    """Checkpoints a WAL database from a thread and connection of its own, so that no commit pays for one.

    The owner turns SQLite's automatic checkpoint off on its connection (``PRAGMA
    wal_autocheckpoint=0``) and calls ``committed`` after each commit. A checkpoint that fails
    (say, the database is busy) is simply tried again after the next ``every`` commits; it never
    affects what is committed. An owner that writes from one thread of its own calls ``catch_up``
    between its transactions, so that the WAL is wholly checkpointed and starts over.
    """

    def __init__(self, path: Path, every: int = CHECKPOINT_EVERY) -> None:
        self.path = Path(path)
        self.every = every
        self.checkpoints = 0  # passive checkpoints run
        self.caught_up = 0  # catch-ups after which the whole WAL was in the database
        self._commits = 0
        self._due = threading.Event()
        self._behind = threading.Event()  # a pass finished: what was committed meanwhile is left
        self._closed = False
        self._thread: threading.Thread | None = None

    def committed(self, commits: int = 1) -> None:
        """Count commits; every ``every`` of them, wake the checkpointing thread (it never blocks the caller)."""
        self._commits += commits
        if self._commits < self.every or self._closed:
            return
        self._commits = 0
        if self._thread is None or not self._thread.is_alive():  # not started, or lost to a fork
            self._thread = threading.Thread(
                target=self._run, name=f"checkpoint-{self.path.name}", daemon=True
            )
            self._thread.start()
        self._due.set()

    def catch_up(self, db: sqlite3.Connection) -> None:
        """After a pass, checkpoint the few frames committed during it, on the owner's connection between
        two of its transactions: the WAL is then wholly in the database and the next commit starts it over."""
        if not self._behind.is_set():
            return
        self._behind.clear()
        with contextlib.suppress(sqlite3.Error):
            _, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.caught_up += frames == copied

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while True:
                self._due.wait()
                self._due.clear()
                if self._closed:
                    return
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                    self._behind.set()
        finally:
            db.close()

    def close(self) -> None:
        """Stop the thread (the owner's last connection to close checkpoints what is left)."""
        self._closed = True
        self._due.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()


class Written(asyncio.Future[int]):
    """The outcome of queued events: the last sequence number once on disk, or JournalError.

    It cannot be cancelled: queued events are written whatever becomes of a waiter, and the future
    is shared (the OMS's ``settled`` waits on the newest one), so a cancelled waiter must not cancel
    it for the others. A task cancelled while it waits is cancelled once the write is done. (The
    alternative, ``asyncio.shield``, costs a future, two callbacks and one more turn of the event
    loop per wait, on the path from the journal to the broker call.)
    """

    def cancel(self, msg: object = None) -> bool:
        """Refuse: see the class."""
        return False


@dataclass(slots=True)
class _Queued:
    """Events waiting for a transaction, and the future that learns their last sequence number."""

    rows: list[Row]
    future: asyncio.Future[int]
    loop: asyncio.AbstractEventLoop


def _rows(events: tuple[Event, ...]) -> list[Row]:
    if not events:
        raise ValueError("nothing to append")
    return [
        (e.ts.isoformat(), e.kind, e.client_order_id if isinstance(e, OrderEvent) else None, encode(e))
        for e in events
    ]


def _settle(done: list[tuple[asyncio.Future[int], int | BaseException]]) -> None:
    for future, outcome in done:
        if future.done():  # settled once only (it refuses cancellation, so nothing else settles it)
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class Journal:
    """Append-only event log; ``append`` returns, and ``append_async``'s future resolves, only once on disk."""

    def __init__(
        self, path: Path, *, synchronous: str = "FULL", wal_size_limit: int = WAL_SIZE_LIMIT_BYTES
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Autocommit mode: transactions are explicit BEGIN IMMEDIATE ... COMMIT below.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"cannot switch {self.path} to WAL mode (got {mode})")
            # FULL makes every COMMIT fsync the WAL: an acknowledged event survives power loss.
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA wal_autocheckpoint=0")  # the Checkpointer's thread does it
            self._db.execute(f"PRAGMA journal_size_limit={int(wal_size_limit)}")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as err:
            raise JournalError(f"cannot open the journal {self.path}: {err}", fix="check the volume") from err
        # One transaction at a time on the connection; taking the queue and writing it happen under
        # this lock, so transactions reach the disk in the order their events were queued.
        self._db_lock = threading.Lock()
        self._queue: list[_Queued] = []
        self._wake = threading.Condition()  # guards _queue, _closed, _writer
        self._writer: threading.Thread | None = None
        self._closed = False
        self._broken: JournalError | None = None
        self.checkpointer = Checkpointer(self.path)
        self.transactions = 0  # committed transactions (each one fsync)
        self.written = 0  # events committed

    # --- writing ---------------------------------------------------------------------------
    def append(self, *events: Event) -> int:
        """Write everything queued so far, then ``events``, in one durable transaction; the last sequence number."""
        rows = _rows(events)
        with self._db_lock:
            return self._flush(rows)

    def append_async(self, *events: Event) -> Written:
        """Queue ``events`` for the next group transaction; the future gets the last sequence number once on disk.

        Call it from the event loop; the future fails with JournalError if the write does.
        """
        rows = _rows(events)
        loop = asyncio.get_running_loop()
        future = Written(loop=loop)
        with self._wake:
            if self._closed:
                raise JournalError(f"the journal {self.path} is closed")
            self._refuse_if_broken()
            self._queue.append(_Queued(rows, future, loop))
            if self._writer is None or not self._writer.is_alive():  # not started, or lost to a fork
                self._writer = threading.Thread(target=self._write_queued, name="journal-writer", daemon=True)
                self._writer.start()
            self._wake.notify()
        return future

    def _write_queued(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if not self._queue:
                    return
            with self._db_lock:
                try:
                    self._flush([])
                except BaseException:  # already handed to the waiters; the writer keeps serving them
                    pass

    def _flush(self, own: list[Row]) -> int:
        """Write the queue and ``own`` in one transaction (holding ``_db_lock``); settle the queued futures."""
        with self._wake:
            batch, self._queue = self._queue, []
        rows = [row for queued in batch for row in queued.rows] + own
        if not rows:
            return 0
        try:
            last = self._write(rows)
        except BaseException as err:
            failure = (
                err if isinstance(err, JournalError) else JournalError(f"journal writer failed: {err!r}")
            )
            self._broken = self._broken or failure
            self._hand_back(batch, [failure] * len(batch))
            raise
        # Rows of one transaction get consecutive sequence numbers (AUTOINCREMENT under the write lock).
        ends, end = [], last - len(own)
        for queued in reversed(batch):
            ends.append(end)
            end -= len(queued.rows)
        self._hand_back(batch, ends[::-1])
        self.checkpointer.catch_up(self._db)  # once its waiters have their answer
        return last

    def _refuse_if_broken(self) -> None:
        if self._broken is not None:
            raise JournalError(
                f"the journal {self.path} refuses writes after a failed one ({self._broken.message})",
                fix=self._broken.fix or "restart the runtime: it rebuilds its state from the journal",
            )

    def _write(self, rows: list[Row]) -> int:
        self._refuse_if_broken()
        start = time.perf_counter()
        try:
            if len(rows) <= MAX_ROWS_PER_STATEMENT:
                # One statement is one atomic transaction in autocommit mode: one call into SQLite,
                # so the writer thread gives up and takes back the GIL once, not once per row.
                last = self._db.execute(_insert(len(rows)), [v for row in rows for v in row]).lastrowid
            else:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for i in range(0, len(rows), MAX_ROWS_PER_STATEMENT):
                        chunk = rows[i : i + MAX_ROWS_PER_STATEMENT]
                        last = self._db.execute(
                            _insert(len(chunk)), [v for row in chunk for v in row]
                        ).lastrowid
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as err:
            full = getattr(err, "sqlite_errorname", "") == "SQLITE_FULL"
            self._broken = JournalError(
                f"cannot write the journal {self.path}: {err}",
                fix="free space on the journal's volume or grow it, then restart the runtime: it recovers "
                "from the journal"
                if full
                else "check the journal's volume, then restart the runtime: it recovers from the journal",
            )
            raise self._broken from err
        JOURNAL_WRITE_SECONDS.observe(time.perf_counter() - start)
        self.checkpointer.committed()
        self.transactions += 1
        self.written += len(rows)
        return int(last or 0)

    @staticmethod
    def _hand_back(batch: list[_Queued], outcomes: Sequence[int | BaseException]) -> None:
        # One wake-up per event loop, not one per future: the batch usually shares one loop.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[int], int | BaseException]]] = {}
        for queued, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(queued.loop, []).append((queued.future, outcome))
        for loop, done in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, done)
            except RuntimeError:
                pass  # the loop is closed: nobody waits any more

    # --- reading ---------------------------------------------------------------------------
    def replay(self, after: int = 0) -> Iterator[tuple[int, Event]]:
        """Every event after sequence number ``after``, in the order written."""
        try:
            with self._db_lock:
                rows = self._db.execute(
                    "SELECT seq, kind, body FROM events WHERE seq > ? ORDER BY seq", (after,)
                ).fetchall()
        except sqlite3.Error as err:
            raise JournalError(f"cannot read the journal {self.path}: {err}") from err
        for seq, kind, body in rows:
            yield seq, decode(kind, body)

    def events(self) -> list[Event]:
        """All events, in order."""
        return [e for _, e in self.replay()]

    def count(self) -> int:
        """Number of events written."""
        with self._db_lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def close(self) -> None:
        """Write what is queued, stop the writer and close the database."""
        with self._wake:
            self._closed = True
            writer = self._writer
            self._wake.notify_all()
        if writer is not None and writer is not threading.current_thread():
            writer.join()
        self.checkpointer.close()
        with self._db_lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
