"""The refresh schedule a venue's price cache shares: which symbols it watches, when a refresh is due,
and at most one refresh running in the background (started by the housekeeping tick, never awaited on
the signal path). Each venue's cache subclasses it with its own ``refresh`` and price lookups."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable


class WatchedPriceCache:
    """Watched symbols, refreshed every ``refresh_seconds``; prices older than ``max_age`` do not count."""

    def __init__(
        self,
        *,
        symbols: Iterable[str] = (),
        refresh_seconds: float = 5.0,
        max_age: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.refresh_seconds = refresh_seconds
        self.max_age = max_age
        self._now = monotonic
        self._watched: dict[str, None] = {}
        self._last_refresh: float | None = None
        self._task: asyncio.Task[int] | None = None
        self._error: str | None = None
        self.watch(*symbols)

    async def refresh(self) -> int:
        """Fetch the watched symbols' prices; the number priced (each venue's own)."""
        raise NotImplementedError

    def watch(self, *symbols: str) -> None:
        """Add symbols to those every refresh fetches."""
        for s in symbols:
            if s and s not in self._watched:
                self._watched[s] = None

    @property
    def watched(self) -> tuple[str, ...]:
        """The symbols every refresh fetches."""
        return tuple(self._watched)

    @property
    def due(self) -> bool:
        """Whether the cache is older than ``refresh_seconds`` (or was never filled)."""
        return self._last_refresh is None or self._now() - self._last_refresh >= self.refresh_seconds

    def refresh_soon(self) -> None:
        """Start a background refresh if one is due and none is running (the housekeeping tick's call)."""
        if (self._task is None or self._task.done()) and self.due and self._watched:
            self._task = asyncio.get_running_loop().create_task(self.refresh())
