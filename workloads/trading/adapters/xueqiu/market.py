"""Last prices of a Xueqiu session: each watched stock's ``current`` from Xueqiu's stock search, cached.

The price a rebalance executes at is Xueqiu's own current price, so the session's risk checks and
weight → quantity plans read the same number, from the search easytrader uses before a rebalance.
``last_price`` reads a cache (no I/O); the housekeeping tick refreshes it on a worker thread, one
search per watched stock (Xueqiu's search takes one code). A stock the cache lacks, or whose price
is older than ``max_age``, has no price, and the risk engine refuses a market order for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from kubequant.errors import BrokerError
from kubequant.workloads.trading.adapters.price_cache import WatchedPriceCache
from kubequant.workloads.trading.adapters.xueqiu import parsing
from kubequant.workloads.trading.adapters.xueqiu.client import XueqiuClient, broker_error

if TYPE_CHECKING:
    from kubequant.workloads.trading.adapters.xueqiu.broker import XueqiuBroker

log = logging.getLogger(__name__)


class XueqiuPrices(WatchedPriceCache):
    """A PriceSource over Xueqiu's stock search: ``last_price`` reads a cache, ``refresh`` fills it in a thread."""

    def __init__(
        self,
        client: XueqiuClient,
        *,
        symbols: Iterable[str] = (),
        refresh_seconds: float = 5.0,
        max_age: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self._prices: dict[str, tuple[Decimal, float]] = {}
        super().__init__(
            symbols=symbols, refresh_seconds=refresh_seconds, max_age=max_age, monotonic=monotonic
        )

    @classmethod
    def for_broker(cls, broker: XueqiuBroker, **options: Any) -> XueqiuPrices:
        """Prices through the broker's client, the session's universe watched."""
        options.setdefault("symbols", broker.universe)
        return cls(broker.client, **options)

    def last_price(self, instrument: str) -> Decimal | None:
        """Xueqiu's current price from the cache; None if there is none or it is older than ``max_age``."""
        cached = self._prices.get(instrument)
        if cached is None:
            self.watch(instrument)
            return None
        price, fetched = cached
        return None if self._now() - fetched > self.max_age else price

    def price_age(self, instrument: str) -> float | None:
        """Seconds since the price was fetched."""
        cached = self._prices.get(instrument)
        return None if cached is None else self._now() - cached[1]

    async def refresh(self) -> int:
        """Search each watched symbol on a worker thread; the number priced. A failure keeps the old cache."""
        symbols = list(self._watched)
        if not symbols:
            return 0
        started = self._now()
        try:
            prices = await asyncio.to_thread(self._fetch, symbols)
        except Exception as err:
            message = str(err if isinstance(err, BrokerError) else broker_error(err, "prices", submit=False))
            if message != self._error:
                log.warning("Xueqiu price refresh failed (%d symbols): %s", len(symbols), message)
            self._error = message
            self._last_refresh = started
            return 0
        self._error = None
        for symbol, price in prices.items():
            self._prices[symbol] = (price, started)
        self._last_refresh = started
        return len(prices)

    def _fetch(self, symbols: list[str]) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for symbol in symbols:
            stock = self.client.search(symbol)
            if stock is None:
                continue
            price = parsing.dec(stock.get("current"))
            if price > 0:
                out[symbol] = price
        return out

    def close(self) -> None:
        """Stop a running refresh (the broker closes the shared client)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
