"""The durable order journal: append-only SQLite (WAL, synchronous=FULL) on the session's volume."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from prometheus_client import Histogram

from kubequant.errors import KubequantError
from kubequant.workloads.trading.events import Event, OrderEvent, decode, encode

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


class JournalError(KubequantError):
    """The journal could not be written or read; the runtime must stop rather than act unjournaled."""


class Journal:
    """Append-only event log; ``append`` returns only after the transaction is on disk."""

    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
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
            self._db.executescript(SCHEMA)
        except sqlite3.Error as err:
            raise JournalError(f"cannot open the journal {self.path}: {err}", fix="check the volume") from err

    def append(self, *events: Event) -> int:
        """Write ``events`` in one durable transaction; returns the last sequence number."""
        if not events:
            raise ValueError("nothing to append")
        rows = [
            (e.ts.isoformat(), e.kind, e.client_order_id if isinstance(e, OrderEvent) else None, encode(e))
            for e in events
        ]
        start = time.perf_counter()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO events (ts, kind, client_order_id, body) VALUES (?, ?, ?, ?)", rows
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            raise JournalError(
                f"cannot write the journal {self.path}: {err}", fix="check the volume"
            ) from err
        JOURNAL_WRITE_SECONDS.observe(time.perf_counter() - start)
        last = self._db.execute("SELECT last_insert_rowid()").fetchone()[0]
        return int(last)

    def replay(self, after: int = 0) -> Iterator[tuple[int, Event]]:
        """Every event after sequence number ``after``, in the order written."""
        try:
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
        return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
