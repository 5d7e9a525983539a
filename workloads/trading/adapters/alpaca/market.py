"""Last prices of an Alpaca session: the market data API's latest trades, cached and refreshed off the loop.

The OMS reads ``last_price`` synchronously on every signal (the risk engine's fat-finger and price
band checks, the signal API's weight → quantity plan), so it never waits for HTTP: it reads a
cache that the housekeeping tick refreshes on a worker thread (``asyncio.to_thread``). A symbol
the cache lacks — never fetched, unknown to Alpaca, or not refreshed for ``max_age`` seconds — has
no price, and the risk engine rejects a market order for it (``NO_PRICE``); asking puts the symbol
on the watch list, so the next refresh fetches it.

alpaca-py's ``StockHistoricalDataClient`` calls ``GET /v2/stocks/trades/latest?symbols=...`` on
``https://data.alpaca.markets`` (paper and live keys alike), or ``spec.broker.marketDataEndpoint``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import requests
from alpaca.common.enums import BaseURL
from alpaca.common.exceptions import APIError
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.data.requests import StockLatestTradeRequest

from kubequant.api.live import LiveTradingSession
from kubequant.workloads.trading.adapters.alpaca.broker import AlpacaCredentials, load_credentials, take_over
from kubequant.workloads.trading.adapters.price_cache import WatchedPriceCache
from kubequant.workloads.trading.model.domain import utcnow

log = logging.getLogger(__name__)

DATA_TIMEOUT = (3.05, 5.0)  # (connect, read) seconds; a refresh holds a worker thread, never the loop
SYMBOLS_PER_REQUEST = 100  # keeps the query string short; the latest endpoints take a comma-separated list


@dataclass(frozen=True, slots=True)
class _Quote:
    price: Decimal
    fetched: float  # monotonic time of the refresh that brought it
    traded: dt.datetime | None = None  # when the trade printed (Alpaca's "t"), if it said


def data_url(endpoint: str | None) -> str | None:
    """alpaca-py's ``url_override`` for ``spec.broker.marketDataEndpoint`` (a trailing /v2 dropped: the SDK adds it)."""
    return None if endpoint is None else endpoint.rstrip("/").removesuffix("/v2")


class AlpacaPrices(WatchedPriceCache):
    """A PriceSource over Alpaca's latest trades: ``last_price`` reads a cache, ``refresh`` fills it in a thread."""

    def __init__(
        self,
        client: StockHistoricalDataClient,
        *,
        symbols: Iterable[str] = (),
        refresh_seconds: float = 5.0,
        max_age: float = 60.0,
        timeout: float | tuple[float, float] = DATA_TIMEOUT,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        take_over(client, timeout)
        self.client = client
        self._wall = wall
        self._prices: dict[str, _Quote] = {}
        super().__init__(
            symbols=symbols, refresh_seconds=refresh_seconds, max_age=max_age, monotonic=monotonic
        )

    @classmethod
    def create(
        cls, credentials: AlpacaCredentials, *, url_override: str | None = None, **kwargs: Any
    ) -> AlpacaPrices:
        """Prices from a new StockHistoricalDataClient (Alpaca's data API, or ``url_override``)."""
        client = StockHistoricalDataClient(
            api_key=credentials.key_id,
            secret_key=credentials.secret_key,
            raw_data=True,
            url_override=url_override,
        )
        return cls(client, **kwargs)

    @classmethod
    def from_session(
        cls,
        session: LiveTradingSession,
        secrets_dir: Path | None,
        *,
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> AlpacaPrices:
        """The session's prices: its credentials Secret, ``spec.broker.marketDataEndpoint``, its universe watched."""
        spec = session.spec
        ref = spec.broker.credentials_secret_ref
        credentials = load_credentials(secrets_dir, ref.name if ref else None, env)
        url = data_url(spec.broker.market_data_endpoint)
        log.info("Alpaca market data at %s", url or BaseURL.DATA.value)
        kwargs.setdefault("symbols", spec.universe.instruments or ())
        return cls.create(credentials, url_override=url, **kwargs)

    # --- the PriceSource protocol -------------------------------------------------------------
    def last_price(self, instrument: str) -> Decimal | None:
        """The latest trade price from the cache (no I/O); None if there is none or it is older than ``max_age``."""
        quote = self._prices.get(instrument)
        if quote is None:
            self.watch(instrument)  # fetched by the next refresh
            return None
        if self._now() - quote.fetched > self.max_age:
            return None  # refreshes have been failing: a stale price must not pass the price checks
        return quote.price

    def price_age(self, instrument: str) -> float | None:
        """Seconds since the last price's trade printed (since it was fetched, if Alpaca gave no time)."""
        quote = self._prices.get(instrument)
        if quote is None:
            return None
        fetched_age = self._now() - quote.fetched
        if quote.traded is None:
            return fetched_age
        return max(fetched_age, (self._wall() - quote.traded).total_seconds())

    def newest_bar_time(self) -> dt.datetime | None:
        """When the newest trade among the cached prices printed (None before one did)."""
        return max((q.traded for q in self._prices.values() if q.traded is not None), default=None)

    # --- the cache ----------------------------------------------------------------------------
    async def refresh(self) -> int:
        """Fetch the latest trades of the watched symbols on a worker thread; the number of symbols priced.

        A failure is logged and leaves the cache as it was: its prices expire after ``max_age``.
        """
        symbols = list(self._watched)
        if not symbols:
            return 0
        started = self._now()
        try:
            prices = await asyncio.to_thread(self._fetch, symbols)
        except (APIError, requests.exceptions.RequestException, ValueError, TypeError, KeyError) as err:
            message = f"{type(err).__name__}: {err}"
            if message != self._error:  # once per kind of failure, not every tick
                log.warning("Alpaca market data refresh failed (%d symbols): %s", len(symbols), message)
            self._error = message
            self._last_refresh = started  # try again after refresh_seconds, not in a tight loop
            return 0
        if self._error is not None:
            log.info("Alpaca market data is back")
            self._error = None
        for symbol, (price, traded) in prices.items():
            self._prices[symbol] = _Quote(price, started, traded)
        self._last_refresh = started
        missing = [s for s in symbols if s not in prices]
        if missing:
            log.debug("no latest trade at Alpaca for %s", ", ".join(missing[:20]))
        return len(prices)

    def _fetch(self, symbols: list[str]) -> dict[str, tuple[Decimal, dt.datetime | None]]:
        """GET /v2/stocks/trades/latest for ``symbols``: price and trade time (blocking: runs on a worker thread)."""
        out: dict[str, tuple[Decimal, dt.datetime | None]] = {}
        for i in range(0, len(symbols), SYMBOLS_PER_REQUEST):
            chunk = symbols[i : i + SYMBOLS_PER_REQUEST]
            trades = self.client.get_stock_latest_trade(StockLatestTradeRequest(symbol_or_symbols=chunk))
            for symbol, trade in dict(trades).items():  # symbols Alpaca has no trade for are absent
                raw = trade if isinstance(trade, Mapping) else {}
                price = _price(raw.get("p"))
                if price is not None:
                    out[str(symbol).strip()] = (price, _time(raw.get("t")))
        return out

    def close(self) -> None:
        """Stop a running refresh and close the HTTP connections."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self.client._session.close()


def _price(value: object) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        price = Decimal(str(value))  # JSON's 172.78 → '172.78', not the float's binary expansion
    except InvalidOperation:
        return None
    return price if price.is_finite() and price > 0 else None


def _time(value: object) -> dt.datetime | None:
    """An RFC 3339 trade time (Alpaca's "t", nanoseconds and "Z" included) as an aware datetime."""
    if not isinstance(value, str):
        return None
    text = value.strip().replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # fromisoformat takes at most microseconds: cut the fraction to 6 digits
        digits = "".join(c for c in rest if c.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    try:
        ts = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=dt.UTC)
