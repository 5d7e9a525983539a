"""The Alpaca adapter against Alpaca's documented responses, through alpaca-py's real TradingClient.

A small HTTP server on 127.0.0.1 plays the Trading API (``alpaca_fake.py``): it answers with the
reference's example objects (``alpaca_responses/``, see its README) and keeps orders, fills and
positions the way the API describes them, so the adapter is exercised over real HTTP, real
timeouts and real paging.
Connectivity to Alpaca itself is not tested (no network here).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("alpaca.trading.client")

from alpaca.trading.client import TradingClient
from alpaca_fake import KEY, SECRET, FakeAlpaca, payload, serve

from kubequant.api.live import BrokerType, LiveTradingSession, SessionMode
from kubequant.api.risk import RiskPolicySpec
from kubequant.errors import ConfigError
from kubequant.workloads.trading.adapters.alpaca import broker as alpaca_module
from kubequant.workloads.trading.adapters.alpaca.broker import (
    AlpacaBroker,
    BrokerRateLimited,
    load_credentials,
    order_status,
    resolve_endpoint,
)
from kubequant.workloads.trading.adapters.base import (
    Broker,
    BrokerDisconnected,
    BrokerRejected,
    BrokerTimeout,
    DuplicateOrder,
    RetryPolicy,
    SubmitRequest,
    with_retry,
)
from kubequant.workloads.trading.adapters.factory import build_broker
from kubequant.workloads.trading.execution.journal import Journal
from kubequant.workloads.trading.execution.oms import OrderManager
from kubequant.workloads.trading.execution.reconcile import poll
from kubequant.workloads.trading.execution.recovery import recover
from kubequant.workloads.trading.model.domain import OrderIntent, Side
from kubequant.workloads.trading.model.orders import OrderStatus
from kubequant.workloads.trading.risk.engine import RiskEngine
from kubequant.workloads.trading.risk.trading_state import adopt_stopped

pytestmark = pytest.mark.unit
FAST_RETRY = RetryPolicy(attempts=3, first_delay=0.0, max_delay=0.0)
READ_TIMEOUT = 0.4


@pytest.fixture
def api() -> Iterator[FakeAlpaca]:
    with serve(FakeAlpaca()) as fake:
        yield fake


def make_broker(url: str, key: str = KEY) -> AlpacaBroker:
    client = TradingClient(api_key=key, secret_key=SECRET, paper=True, raw_data=True, url_override=url)
    return AlpacaBroker(client, timeout=(1.0, READ_TIMEOUT))


@pytest.fixture
def broker(api: FakeAlpaca) -> Iterator[AlpacaBroker]:
    b = make_broker(api.url)
    yield b
    b.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def request(cid: str = "kq-000000000000000000000001", qty: str = "3", **kw: Any) -> SubmitRequest:
    return SubmitRequest(cid, kw.pop("instrument", "AAPL"), kw.pop("side", Side.BUY), Decimal(qty), **kw)


# --- submit ------------------------------------------------------------------------------------------
def test_submit_sends_the_client_order_id_as_a_day_order(api: FakeAlpaca, broker: AlpacaBroker) -> None:
    assert isinstance(broker, Broker)
    ack = run(broker.submit(request("kq-a", "3")))
    run(broker.submit(request("kq-b", "2", side=Side.SELL, limit_price=Decimal("150.2500"))))
    market, limit = api.bodies
    assert market == {
        "symbol": "AAPL",
        "qty": 3.0,
        "side": "buy",
        "type": "market",
        "time_in_force": "day",
        "client_order_id": "kq-a",
    }
    assert limit["type"] == "limit" and limit["side"] == "sell" and limit["limit_price"] == 150.25
    assert ack.client_order_id == "kq-a" and ack.broker_order_id == api.by_client_id("kq-a")["id"]  # type: ignore[index]

    report = run(broker.get_order("kq-b"))
    assert report.broker_order_id == api.by_client_id("kq-b")["id"]  # type: ignore[index]
    assert (report.instrument, report.side, report.status) == ("AAPL", Side.SELL, OrderStatus.ACCEPTED)
    assert (report.quantity, report.filled_quantity, report.limit_price) == (2, 0, Decimal("150.25"))
    assert run(broker.get_order("kq-never-sent")) is None


def test_a_submit_that_times_out_is_resolved_by_a_query_and_never_resent(
    api: FakeAlpaca, broker: AlpacaBroker
) -> None:
    api.script["POST", "/v2/orders"] = [READ_TIMEOUT + 1.6]  # placed at once, answered too late
    started = time.perf_counter()
    with pytest.raises(BrokerTimeout):
        run(with_retry(lambda: broker.submit(request("kq-slow")), FAST_RETRY, (BrokerDisconnected,)))
    assert time.perf_counter() - started < READ_TIMEOUT + 1.0  # gave up at the timeout, not the answer
    report = run(broker.get_order("kq-slow"))
    assert report is not None and report.status is OrderStatus.ACCEPTED
    assert api.posts == 1


def test_the_oms_keeps_a_timed_out_submit_in_flight_until_the_query_settles_it(
    api: FakeAlpaca, broker: AlpacaBroker, tmp_path: Path
) -> None:
    class Marks:
        def last_price(self, instrument: str) -> Decimal | None:
            return Decimal("120")

    adopt_stopped(
        tmp_path, "the fake account already holds AAPL"
    )  # an empty journal must not adopt it silently
    journal = Journal(tmp_path / "journal.sqlite")
    oms = OrderManager("s1", journal, broker, RiskEngine(RiskPolicySpec()), Marks(), retry=FAST_RETRY)

    async def life() -> None:
        await recover(oms)
        assert oms.ready and oms.state.position_quantities() == {"AAPL": Decimal(5)}
        api.script["POST", "/v2/orders"] = [READ_TIMEOUT + 1.6]
        out = await oms.submit(OrderIntent("AAPL", Side.BUY, Decimal(3), "sig-1", "AAPL"))
        assert out.order.status is OrderStatus.SUBMITTED  # unknown outcome: in flight, not resent
        await poll(oms)
        order = oms.state.orders[out.order.client_order_id]
        remote = api.by_client_id(order.client_order_id)
        assert order.status is OrderStatus.ACCEPTED and order.broker_order_id == remote["id"]  # type: ignore[index]
        api.fill(remote, "1", "120.50")  # type: ignore[arg-type]
        api.fill(remote, "2", "120.75")  # type: ignore[arg-type]
        await poll(oms)
        assert order.status is OrderStatus.FILLED and order.filled_quantity == 3
        assert oms.state.position_quantities() == {"AAPL": Decimal(8)}
        # The signal arrives again: the OMS answers from its journal, Alpaca sees nothing new.
        again = await oms.submit(OrderIntent("AAPL", Side.BUY, Decimal(3), "sig-1", "AAPL"))
        assert again.duplicate

    try:
        run(life())
    finally:
        journal.close()
    assert api.posts == 1 and not oms.anomalies


def test_a_duplicate_client_order_id_is_duplicate_order_and_places_nothing(
    api: FakeAlpaca, broker: AlpacaBroker
) -> None:
    run(broker.submit(request("kq-dup")))
    with pytest.raises(DuplicateOrder, match="client_order_id must be unique"):
        run(broker.submit(request("kq-dup")))
    assert api.posts == 2 and len(api.orders) == 1


def test_insufficient_buying_power_is_a_rejection_with_alpacas_message(
    api: FakeAlpaca, broker: AlpacaBroker
) -> None:
    api.script["POST", "/v2/orders"] = [(403, payload("error_insufficient_buying_power"))]
    with pytest.raises(BrokerRejected, match="insufficient buying power") as caught:
        run(broker.submit(request("kq-big", "1000000")))
    assert not isinstance(caught.value, DuplicateOrder | BrokerTimeout)
    assert "403" in str(caught.value) and "40310000" in str(caught.value)


def test_an_invalid_order_is_rejected_here_or_by_alpaca(api: FakeAlpaca, broker: AlpacaBroker) -> None:
    with pytest.raises(BrokerRejected, match="must be positive"):
        run(broker.submit(request("kq-neg", "-1")))
    assert api.posts == 0
    # A 422 other than the duplicate id (the text is illustrative; the status is the documented one).
    api.script["POST", "/v2/orders"] = [(422, {"code": 40010001, "message": "qty must be > 0"})]
    with pytest.raises(BrokerRejected, match="qty must be > 0") as caught:
        run(broker.submit(request("kq-odd", "0.5")))
    assert not isinstance(caught.value, DuplicateOrder)


def test_server_errors_on_reads_are_retried_until_they_succeed(api: FakeAlpaca, broker: AlpacaBroker) -> None:
    api.script["GET", "/v2/positions"] = [(503, {"code": 50010000, "message": "unavailable"}), (500, {})]
    assert run(with_retry(broker.positions, FAST_RETRY)) == {"AAPL": Decimal(5)}
    assert api.requests["GET", "/v2/positions"] == 3


def test_a_server_error_on_submit_is_a_timeout_and_is_not_resent(
    api: FakeAlpaca, broker: AlpacaBroker
) -> None:
    api.script["POST", "/v2/orders"] = [(504, {"code": 50410000, "message": "gateway timeout"})]
    # The OMS's own retry of submits: only what proves the request never arrived is sent again.
    with pytest.raises(BrokerTimeout, match="504"):
        run(with_retry(lambda: broker.submit(request("kq-5xx")), FAST_RETRY, (BrokerDisconnected,)))
    assert api.posts == 1


def test_a_rate_limited_submit_is_safe_to_send_again(api: FakeAlpaca, broker: AlpacaBroker) -> None:
    api.script["POST", "/v2/orders"] = [(429, {"code": 42910000, "message": "rate limit exceeded"})]
    ack = run(with_retry(lambda: broker.submit(request("kq-429")), FAST_RETRY, (BrokerDisconnected,)))
    assert issubclass(BrokerRateLimited, BrokerDisconnected)
    assert api.posts == 2 and len(api.orders) == 1 and ack.broker_order_id in api.orders


def test_a_rate_limited_submit_waits_for_retry_after(api: FakeAlpaca, broker: AlpacaBroker) -> None:
    """A limiter that refuses until Retry-After has passed: backing off 20-160 ms used up every attempt
    in 0.3 s and rejected the order (found by the Toxiproxy fault test); waiting as asked places it."""
    api.retry_after = 1
    api.script["POST", "/v2/orders"] = ["429"]
    started = time.perf_counter()
    ack = run(with_retry(lambda: broker.submit(request("kq-ra")), FAST_RETRY, (BrokerDisconnected,)))
    assert time.perf_counter() - started >= 1.0
    assert api.posts == 2 and ack.broker_order_id in api.orders


def test_a_retry_after_beyond_the_cap_is_not_waited_for(api: FakeAlpaca, broker: AlpacaBroker) -> None:
    api.retry_after = 60
    api.script["POST", "/v2/orders"] = ["429"]
    started = time.perf_counter()
    with pytest.raises(BrokerRateLimited) as raised:
        run(with_retry(lambda: broker.submit(request("kq-ra60")), FAST_RETRY, (BrokerDisconnected,)))
    assert raised.value.retry_after == 60 and time.perf_counter() - started < 5.0
    assert api.posts == 1 and not api.orders


def test_retry_after_reads_seconds_an_http_date_or_alpacas_reset_time() -> None:
    now = 1_800_000_000.0
    assert alpaca_module.retry_after_seconds({"Retry-After": "2"}, now) == 2.0
    assert alpaca_module.retry_after_seconds(
        {"Retry-After": "Fri, 15 Jan 2027 08:00:03 GMT"}, 1_800_000_000.0
    ) == (pytest.approx(dt.datetime(2027, 1, 15, 8, 0, 3, tzinfo=dt.UTC).timestamp() - now))
    assert alpaca_module.retry_after_seconds({"X-RateLimit-Reset": str(now + 7)}, now) == 7.0
    assert alpaca_module.retry_after_seconds({"Retry-After": "soon"}, now) is None
    assert alpaca_module.retry_after_seconds({}, now) is None


def test_an_unreachable_broker_is_disconnected_and_nothing_was_sent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    broker = make_broker(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(BrokerDisconnected, match="cannot reach Alpaca"):
            run(broker.submit(request("kq-down")))
        assert not broker.is_connected()
        assert run(broker.check_connection()) is False
    finally:
        broker.close()


def test_a_disconnected_broker_probes_in_the_background_and_comes_back(
    api: FakeAlpaca, broker: AlpacaBroker
) -> None:
    async def probe() -> bool:
        assert broker.is_connected() is False  # nothing said so yet; this starts a get_clock probe
        for _ in range(100):
            if broker.is_connected():
                return True
            await asyncio.sleep(0.01)
        return False

    assert run(probe())
    assert api.requests["GET", "/v2/clock"] == 1


# --- cancel, orders ----------------------------------------------------------------------------------
def test_cancel_by_broker_order_id_and_a_filled_order_cannot_be_canceled(
    api: FakeAlpaca, broker: AlpacaBroker
) -> None:
    ack = run(broker.submit(request("kq-c")))
    run(broker.cancel(ack.broker_order_id))
    assert run(broker.get_order("kq-c")).status is OrderStatus.PENDING_CANCEL
    done = api.add_order("kq-done", "MSFT", "1", "buy", status="filled", filled_qty="1")
    with pytest.raises(BrokerRejected, match="not cancelable"):
        run(broker.cancel(done["id"]))
    with pytest.raises(BrokerRejected, match="order not found"):
        run(broker.cancel(str(uuid.uuid4())))


def test_open_orders_are_read_page_by_page_with_their_statuses(
    api: FakeAlpaca, broker: AlpacaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(alpaca_module, "ORDERS_PAGE", 2)
    api.add_order("kq-new", "AAPL", "1", "buy", status="new")
    part = api.add_order("kq-part", "MSFT", "10", "sell", status="partially_filled", filled_qty="4")
    api.add_order("kq-pc", "AAPL", "2", "buy", status="pending_cancel")
    api.add_order("kq-filled", "AAPL", "2", "buy", status="filled", filled_qty="2")
    api.add_order("web-order", "SPY", "1.5", "buy", status="held", type="limit", limit_price="400.1")
    reports = {r.client_order_id: r for r in run(broker.open_orders())}
    assert list(reports) == ["kq-new", "kq-part", "kq-pc", "web-order"]
    assert reports["kq-part"].status is OrderStatus.PARTIALLY_FILLED
    assert (reports["kq-part"].broker_order_id, reports["kq-part"].filled_quantity) == (part["id"], 4)
    assert reports["kq-pc"].status is OrderStatus.PENDING_CANCEL
    assert reports["web-order"].quantity == Decimal("1.5") and reports["web-order"].limit_price == Decimal(
        "400.1"
    )
    # Pages overlap by the boundary order (`after` is exclusive and steps back): 2, 2, 2, then 1 ends it.
    assert api.requests["GET", "/v2/orders"] == 4


@pytest.mark.parametrize(
    ("status", "filled", "expected"),
    [
        ("new", "0", OrderStatus.ACCEPTED),
        ("pending_new", "0", OrderStatus.ACCEPTED),
        ("accepted", "0", OrderStatus.ACCEPTED),
        ("partially_filled", "4", OrderStatus.PARTIALLY_FILLED),
        ("done_for_day", "4", OrderStatus.PARTIALLY_FILLED),
        ("calculated", "10", OrderStatus.FILLED),
        ("filled", "10", OrderStatus.FILLED),
        ("pending_cancel", "0", OrderStatus.PENDING_CANCEL),
        ("canceled", "4", OrderStatus.CANCELED),
        ("replaced", "0", OrderStatus.CANCELED),
        ("expired", "0", OrderStatus.EXPIRED),
        ("rejected", "0", OrderStatus.REJECTED),
        ("some_new_status", "0", OrderStatus.ACCEPTED),  # unknown: it may still fill
    ],
)
def test_order_statuses_map_onto_the_oms_lifecycle(status: str, filled: str, expected: OrderStatus) -> None:
    assert order_status(status, Decimal(filled), Decimal(10)) is expected


# --- fills, positions, account -----------------------------------------------------------------------
def test_fills_are_read_after_the_cursor_page_by_page_with_client_order_ids(
    api: FakeAlpaca, broker: AlpacaBroker
) -> None:
    ours = run(broker.submit(request("kq-f", "150")))
    theirs = api.add_order("placed-on-the-web", "MSFT", "5", "sell")
    for _ in range(148):
        api.fill(api.orders[ours.broker_order_id], "1", "101.25")
    api.fill(theirs, "5", "300.5")
    api.fill(api.orders[ours.broker_order_id], "2", "101.5")

    fills = run(broker.fills_since(None))
    assert len(fills) == 150 and api.requests["GET", "/v2/account/activities/FILL"] == 2
    assert [f.cursor for f in fills] == [a["id"] for a in api.activities]
    first, web, last = fills[0].fill, fills[148].fill, fills[-1].fill
    assert (first.client_order_id, first.broker_order_id, first.instrument) == (
        "kq-f",
        ours.broker_order_id,
        "AAPL",
    )
    assert (first.side, first.quantity, first.price, first.fee) == (Side.BUY, 1, Decimal("101.25"), 0)
    assert first.ts == dt.datetime.fromisoformat(api.activities[0]["transaction_time"])
    # An order placed elsewhere is named by Alpaca's order id only; the adapter asks for its client id.
    assert (web.client_order_id, web.side, web.quantity, web.price) == (
        "placed-on-the-web",
        Side.SELL,
        5,
        Decimal("300.5"),
    )
    assert api.requests["GET", "/v2/orders/{id}"] == 1
    assert (
        last.quantity == 2 and sum(f.fill.quantity for f in fills if f.fill.client_order_id == "kq-f") == 150
    )

    assert [f.fill for f in run(broker.fills_since(fills[119].cursor))] == [f.fill for f in fills[120:]]
    assert run(broker.fills_since(fills[-1].cursor)) == []


def test_the_documented_fill_activity_decodes() -> None:
    broker = AlpacaBroker(TradingClient(KEY, SECRET, raw_data=True, url_override="http://127.0.0.1:9"))
    try:
        fill = broker._fill(payload("activity_fill")).fill
    finally:
        broker.close()
    assert (fill.instrument, fill.side, fill.quantity, fill.price) == ("LPCN", Side.BUY, 1, Decimal("1.63"))
    assert fill.fill_id == "20190524113406977::8efc7b9a-8b2b-4000-9955-d36e7db0df74"
    assert fill.ts == dt.datetime(2019, 5, 24, 15, 34, 6, 977000, tzinfo=dt.UTC)


def test_positions_and_account_decode_the_documented_objects(api: FakeAlpaca, broker: AlpacaBroker) -> None:
    short = payload("position") | {"symbol": "TSLA", "qty": "-3", "qty_available": "-3", "side": "short"}
    flat = payload("position") | {"symbol": "MSFT", "qty": "0", "qty_available": "0"}
    api.positions = [payload("position"), short, flat]
    assert run(broker.positions()) == {"AAPL": Decimal(5), "TSLA": Decimal(-3)}
    account = run(broker.account())
    assert (account.cash, account.equity) == (Decimal("-23140.20"), Decimal("103820.56"))
    assert account.ts.tzinfo is not None


def test_connect_checks_the_key_and_the_account(api: FakeAlpaca, broker: AlpacaBroker) -> None:
    assert run(broker.connect("010203ABCD")).equity == Decimal("103820.56")
    with pytest.raises(ConfigError, match="not someone-else"):
        run(broker.connect("someone-else"))
    wrong = make_broker(api.url, key="PKWRONG")
    try:
        with pytest.raises(ConfigError, match=r"401.*unauthorized"):
            run(wrong.connect())
    finally:
        wrong.close()


# --- configuration -----------------------------------------------------------------------------------
def session(mode: str = "paper", endpoint: str | None = None) -> LiveTradingSession:
    broker: dict[str, Any] = {"type": "alpaca", "credentialsSecretRef": {"name": "alpaca-keys"}}
    if endpoint:
        broker["endpoint"] = endpoint
    return LiveTradingSession.model_validate(
        {
            "apiVersion": "kubequant.io/v1alpha1",
            "kind": "LiveTradingSession",
            "metadata": {"name": "s"},
            "spec": {"mode": mode, "account": "010203ABCD", "riskPolicyRef": {"name": "p"}, "broker": broker},
        }
    )


def write_secret(folder: Path, **keys: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, value in keys.items():
        (folder / key).write_text(value + "\n")
    return folder


def test_a_missing_credential_names_the_secret_key_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_credentials(tmp_path / "empty", "alpaca-keys", env={})
    message = str(caught.value)
    assert "'api-key-id'" in message and "Secret alpaca-keys" in message
    assert "kubectl create secret generic alpaca-keys" in message and "ALPACA_API_KEY_ID" in message
    half = write_secret(tmp_path / "half", **{"api-key-id": KEY})
    with pytest.raises(ConfigError, match="'api-secret-key'"):
        load_credentials(half, "alpaca-keys", env={})


def test_credentials_come_from_the_mounted_secret_before_the_environment(tmp_path: Path) -> None:
    mounted = write_secret(tmp_path / "s", **{"api-key-id": KEY, "api-secret-key": SECRET})
    creds = load_credentials(mounted, "alpaca-keys", env={"ALPACA_API_KEY_ID": "other"})
    assert (creds.key_id, creds.secret_key) == (KEY, SECRET) and SECRET not in repr(creds)
    env = {"ALPACA_API_KEY_ID": "K", "ALPACA_API_SECRET_KEY": "S"}
    assert load_credentials(None, None, env=env).secret_key == "S"


def test_the_endpoint_follows_the_mode_and_never_crosses_paper_and_live() -> None:
    assert resolve_endpoint(SessionMode.PAPER, None) == (True, None)
    assert resolve_endpoint(SessionMode.LIVE, None) == (False, None)
    assert resolve_endpoint(SessionMode.PAPER, "http://proxy:8080/v2/") == (True, "http://proxy:8080")
    with pytest.raises(ConfigError, match=r"live \(real money\)"):
        resolve_endpoint(SessionMode.PAPER, "https://api.alpaca.markets")
    with pytest.raises(ConfigError, match="paper API"):
        resolve_endpoint(SessionMode.LIVE, "https://paper-api.alpaca.markets")


@pytest.mark.parametrize(
    ("mode", "url"), [("paper", "https://paper-api.alpaca.markets"), ("live", "https://api.alpaca.markets")]
)
def test_a_session_from_its_manifest_reaches_the_api_of_its_mode(mode: str, url: str, tmp_path: Path) -> None:
    # The manifest keeps mode as a plain string: the paper/live choice must not depend on enum identity.
    secrets = write_secret(tmp_path / "secret", **{"api-key-id": KEY, "api-secret-key": SECRET})
    built = AlpacaBroker.from_session(session(mode), secrets)
    assert built.client._base_url == url
    with pytest.raises(ConfigError, match=r"spec\.broker\.endpoint"):
        other = "https://api.alpaca.markets" if mode == "paper" else "https://paper-api.alpaca.markets"
        AlpacaBroker.from_session(session(mode, other), secrets)
    built.close()


def test_the_factory_builds_an_alpaca_broker_from_the_session(api: FakeAlpaca, tmp_path: Path) -> None:
    secrets = write_secret(tmp_path / "secret", **{"api-key-id": KEY, "api-secret-key": SECRET})
    built = build_broker(
        session(endpoint=api.url),
        market=None,
        record_path=tmp_path / "unused.sqlite",
        secrets_dir=secrets,
    )
    try:
        assert isinstance(built, AlpacaBroker)
        assert run(built.positions()) == {"AAPL": Decimal(5)}
    finally:
        built.close()
    with pytest.raises(ConfigError, match="api-key-id"):
        build_broker(session(), market=None, record_path=tmp_path / "x", secrets_dir=tmp_path / "none")


def test_the_factory_says_how_to_install_alpaca_py(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "alpaca.trading.client", None)  # as if alpaca-py were not installed
    with pytest.raises(ConfigError, match=r"pip install 'kubequant\[alpaca\]'"):
        build_broker(session(), market=None, record_path=tmp_path / "x", secrets_dir=None)


def test_the_factory_builds_the_paper_broker(tmp_path: Path, market: Callable[..., Any]) -> None:
    paper = session().model_copy(deep=True)
    paper.spec.broker.type = BrokerType.PAPER
    built = build_broker(paper, market=market, record_path=tmp_path / "paper.sqlite", secrets_dir=None)  # type: ignore[arg-type]
    from kubequant.workloads.trading.adapters.paper.broker import PaperBroker

    assert isinstance(built, PaperBroker)
    built.close()
