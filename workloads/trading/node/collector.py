"""When the trading pod's garbage collector runs: what survived each tick is frozen, everything is
collected now and then, outside trading hours when the session has any.

Frozen objects are skipped by the collector's full collections, which otherwise walk every order of
the session and hold the event loop longer as it grows (~5-20 ms at 20k orders; ~100 ms with qlib's
and pandas' ~200k start-up objects). But a reference cycle that was alive when frozen and dies later
(a finished task, a settled future with its traceback, an order book row replaced) is never
collected while frozen: over a year of ticks that is memory that only grows (``benchmarks/soak.py``).
So every ``quiet_every_s`` outside the trading window, or every ``every_s`` at the latest when the
window never closes, the heap is unfrozen, collected in full and frozen again.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# A full collection (unfreeze + collect + freeze) holds the event loop ~100 ms with qlib loaded.
QUIET_EVERY_SECONDS = 3600.0  # outside the trading window: once an hour at most
EVERY_SECONDS = 6 * 3600.0  # a window that never closes (a 24h venue): once every six hours


class SurvivorFreezer:
    """Freeze the survivors of each tick; collect everything now and then (see the module's docstring)."""

    def __init__(
        self,
        quiet_every_s: float = QUIET_EVERY_SECONDS,
        every_s: float = EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.quiet_every_s, self.every_s, self.clock = quiet_every_s, every_s, clock
        self.last_full = clock()
        self.full_collections = 0

    def due(self, in_window: bool) -> bool:
        """Whether this tick collects everything."""
        since = self.clock() - self.last_full
        return since >= self.every_s or (not in_window and since >= self.quiet_every_s)

    def tick(self, in_window: bool) -> int | None:
        """Freeze what survived until now; when due, first collect everything. The objects collected, or None."""
        collected = None
        if self.due(in_window):
            started = time.perf_counter()
            gc.unfreeze()
            collected = gc.collect()
            self.last_full = self.clock()
            self.full_collections += 1
            log.debug(
                "full collection: %d objects in %.1f ms", collected, 1e3 * (time.perf_counter() - started)
            )
        gc.freeze()
        return collected
