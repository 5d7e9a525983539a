"""The Alpaca price source against the market data API's documented latest trades, through alpaca-py's client.

The fake Alpaca (``alpaca_fake.py``) answers ``GET /v2/stocks/trades/latest?symbols=...`` with the
reference's example (``alpaca_responses/latest_trades.json``). Connectivity to Alpaca itself is
not tested (no network here).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("alpaca.data.historical.stock")

from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.trading.client import TradingClient
from alpaca_fake import KEY, SECRET, FakeAlpaca, payload, serve

from kubequant.api.live import LiveTradingSession
from kubequant.api.risk import RiskPolicySpec
from kubequant.workloads.trading.adapters.alpaca.broker import AlpacaBroker
from kubequant.workloads.trading.adapters.alpaca.market import AlpacaPrices, data_url
from kubequant.workloads.trading.adapters.factory import build_broker, build_price_source
from kubequant.workloads.trading.execution.journal import Journal
from kubequant.workloads.trading.execution.oms import OrderManager
from kubequant.workloads.trading.execution.recovery import recover
from kubequant.workloads.trading.model.domain import OrderIntent, Side
from kubequant.workloads.trading.model.orders import OrderStatus
from kubequant.workloads.trading.risk.engine import RiskEngine
from kubequant.workloads.trading.risk.trading_state import adopt_stopped

pytestmark = pytest.mark.unit
LATEST = ("GET", "/v2/stocks/trades/latest")


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def api() -> Iterator[FakeAlpaca]:
    with serve(FakeAlpaca()) as fake:
        fake.last_trades = {"AAPL": Decimal("172.78"), "MSFT": Decimal("410.10")}
        yield fake


def make_prices(url: str, key: str = KEY, **kw: Any) -> AlpacaPrices:
    client = StockHistoricalDataClient(api_key=key, secret_key=SECRET, raw_data=True, url_override=url)
    return AlpacaPrices(client, timeout=(1.0, 2.0), **kw)


def test_the_documented_latest_trades_answer_prices_its_symbols(api: FakeAlpaca) -> None:
    api.script[LATEST] = [(200, payload("latest_trades"))]  # the reference's example, verbatim
    prices = make_prices(api.url, symbols=["AAPL"])
    assert prices.last_price("AAPL") is None  # nothing is fetched on a read
    assert prices.newest_bar_time() is None  # nothing printed yet: no data age to report
    assert asyncio.run(prices.refresh()) == 1
    assert prices.last_price("AAPL") == Decimal("172.78")  # the JSON number, not its float expansion
    # The trade's own time ("t"), what kubequant_last_bar_timestamp_seconds reports for staleness.
    newest = prices.newest_bar_time()
    assert newest is not None and newest.isoformat().startswith("2022-08-17T09:50:43.361102")


def test_one_request_prices_every_watched_symbol_and_an_unknown_one_has_none(api: FakeAlpaca) -> None:
    prices = make_prices(api.url, symbols=["AAPL", "MSFT", "NOPE"])
    assert asyncio.run(prices.refresh()) == 2
    assert api.requests[LATEST] == 1
    assert prices.last_price("AAPL") == Decimal("172.78")
    assert prices.last_price("MSFT") == Decimal("410.10")
    assert prices.last_price("NOPE") is None  # Alpaca leaves it out of the answer


def test_a_symbol_asked_for_is_fetched_by_the_next_refresh(api: FakeAlpaca) -> None:
    api.last_trades["TSLA"] = Decimal("180.5")
    prices = make_prices(api.url, symbols=["AAPL"])
    assert prices.last_price("TSLA") is None
    assert "TSLA" in prices.watched
    asyncio.run(prices.refresh())
    assert prices.last_price("TSLA") == Decimal("180.5")


def test_prices_follow_the_market_and_expire_when_refreshes_fail(api: FakeAlpaca) -> None:
    clock = Clock()
    prices = make_prices(api.url, symbols=["AAPL"], refresh_seconds=5, max_age=60, monotonic=clock)
    asyncio.run(prices.refresh())
    api.last_trades["AAPL"] = Decimal("175.00")
    clock.t += 5
    assert prices.due
    asyncio.run(prices.refresh())
    assert prices.last_price("AAPL") == Decimal("175.00")

    api.script[LATEST] = [(500, {"code": 50010000, "message": "internal"})] * 2
    clock.t += 30
    assert asyncio.run(prices.refresh()) == 0  # the failure leaves the cache as it was
    assert prices.last_price("AAPL") == Decimal("175.00")
    clock.t += 31  # 61 s since the last good refresh
    assert asyncio.run(prices.refresh()) == 0
    assert prices.last_price("AAPL") is None  # stale: the risk engine must not check against it
    asyncio.run(prices.refresh())  # Alpaca answers again
    assert prices.last_price("AAPL") == Decimal("175.00")


def test_a_refused_key_or_an_unreachable_api_prices_nothing(api: FakeAlpaca) -> None:
    assert asyncio.run(make_prices(api.url, key="PKWRONG", symbols=["AAPL"]).refresh()) == 0
    assert api.requests[LATEST] == 0  # refused before the route (401)
    with socket_closed() as url:
        prices = make_prices(url, symbols=["AAPL"])
        assert asyncio.run(prices.refresh()) == 0
        assert prices.last_price("AAPL") is None


def test_a_refresh_runs_off_the_event_loop_and_only_one_at_a_time(api: FakeAlpaca) -> None:
    api.script[LATEST] = [0.6]  # the answer comes 0.6 s late
    prices = make_prices(api.url, symbols=["AAPL"], refresh_seconds=5)

    async def scenario() -> tuple[float, Decimal | None, Decimal | None]:
        prices.refresh_soon()
        prices.refresh_soon()  # one is running: no second request
        started = time.perf_counter()
        for _ in range(10):
            await asyncio.sleep(0.01)  # the loop keeps turning while the request waits
        turned = time.perf_counter() - started
        during = prices.last_price("AAPL")
        assert prices._task is not None
        await prices._task
        prices.refresh_soon()  # not due again for refresh_seconds
        return turned, during, prices.last_price("AAPL")

    turned, during, after = asyncio.run(scenario())
    assert turned < 0.4
    assert during is None and after == Decimal("172.78")
    assert api.requests[LATEST] == 1


def test_the_risk_engine_rejects_a_market_order_without_a_price_and_sends_one_with_it(
    api: FakeAlpaca, tmp_path: Path
) -> None:
    client = TradingClient(api_key=KEY, secret_key=SECRET, paper=True, raw_data=True, url_override=api.url)
    broker = AlpacaBroker(client, timeout=(1.0, 2.0))
    prices = make_prices(api.url, symbols=["AAPL"])
    adopt_stopped(
        tmp_path, "the fake account already holds AAPL"
    )  # an empty journal must not adopt it silently
    journal = Journal(tmp_path / "journal.sqlite")
    policy = RiskPolicySpec.model_validate({"limits": {"maxOrderNotional": 1000}})
    oms = OrderManager("s1", journal, broker, RiskEngine(policy), prices)

    async def life() -> list[Any]:
        await prices.refresh()
        await recover(oms)
        return [
            await oms.submit(OrderIntent("AAPL", Side.BUY, Decimal(3), "sig-1", "AAPL")),
            await oms.submit(OrderIntent("ZZZZ", Side.BUY, Decimal(3), "sig-1", "ZZZZ")),
            await oms.submit(OrderIntent("AAPL", Side.BUY, Decimal(6), "sig-2", "AAPL")),  # 6 x 172.78
        ]

    try:
        priced, unpriced, too_big = asyncio.run(life())
    finally:
        journal.close()
        broker.close()
        prices.close()
    assert priced.accepted and priced.order.status is OrderStatus.ACCEPTED
    assert unpriced.order.status is OrderStatus.REJECTED
    assert unpriced.reason.startswith("NO_PRICE") and "ZZZZ" in unpriced.reason
    assert too_big.order.status is OrderStatus.REJECTED and too_big.reason.startswith("ORDER_NOTIONAL")
    assert api.posts == 1 and api.bodies[0]["symbol"] == "AAPL"


def session(**broker: Any) -> LiveTradingSession:
    return LiveTradingSession.model_validate(
        {
            "apiVersion": "kubequant.io/v1alpha1",
            "kind": "LiveTradingSession",
            "metadata": {"name": "s"},
            "spec": {
                "account": "010203ABCD",
                "riskPolicyRef": {"name": "p"},
                "universe": {"instruments": ["AAPL", "MSFT"]},
                "broker": {"type": "alpaca", "credentialsSecretRef": {"name": "alpaca-keys"}} | broker,
            },
        }
    )


def test_the_factory_builds_prices_from_the_session(api: FakeAlpaca, tmp_path: Path) -> None:
    secrets = tmp_path / "secret"
    secrets.mkdir()
    (secrets / "api-key-id").write_text(KEY + "\n")
    (secrets / "api-secret-key").write_text(SECRET)
    lts = session(endpoint=api.url, marketDataEndpoint=api.url + "/v2/")
    broker = build_broker(lts, market=None, record_path=tmp_path / "x", secrets_dir=secrets)
    prices = build_price_source(lts, broker, secrets_dir=secrets)
    assert isinstance(prices, AlpacaPrices)
    assert prices.watched == ("AAPL", "MSFT")  # the session's universe
    assert asyncio.run(prices.refresh()) == 2 and prices.last_price("MSFT") == Decimal("410.10")
    prices.close()
    broker.close()  # type: ignore[attr-defined]


def test_the_data_endpoint_defaults_to_alpacas_and_drops_v2() -> None:
    assert data_url(None) is None  # alpaca-py's https://data.alpaca.markets
    assert data_url("http://127.0.0.1:9/v2/") == "http://127.0.0.1:9"
    client = StockHistoricalDataClient(api_key=KEY, secret_key=SECRET, raw_data=True)
    assert client._base_url == "https://data.alpaca.markets"


class socket_closed:
    """A loopback URL nothing listens on."""

    def __enter__(self) -> str:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        pass
