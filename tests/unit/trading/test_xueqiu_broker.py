"""The Xueqiu adapter through easytrader's real XueQiuTrader, against a fake Xueqiu on 127.0.0.1.

The fake (``xueqiu_fake.py``) answers the routes easytrader calls with the payloads its code reads
and keeps the portfolio as Xueqiu keeps a cube (volumes, cash value, net value, rebalance history).
easytrader's URLs are pointed at it through its per-instance config, so every call here is
easytrader's own HTTP over real sockets, real timeouts and real error answers.
Xueqiu itself is not reached (no network, no Xueqiu account here).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("easytrader.xqtrader")

from xueqiu_fake import CODE, COOKIES, FakeXueqiu, serve

from kubequant.api.broker_capabilities import capabilities_of
from kubequant.api.live import LiveTradingSession
from kubequant.api.risk import RiskPolicySpec
from kubequant.errors import ConfigError
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
from kubequant.workloads.trading.adapters.factory import build_broker, build_price_source
from kubequant.workloads.trading.adapters.xueqiu import parsing
from kubequant.workloads.trading.adapters.xueqiu.broker import XueqiuBroker
from kubequant.workloads.trading.adapters.xueqiu.client import XueqiuClient
from kubequant.workloads.trading.adapters.xueqiu.config import (
    XueqiuCookies,
    base_url,
    check_portfolio_code,
    cookie_reloader,
    load_cookies,
)
from kubequant.workloads.trading.adapters.xueqiu.market import XueqiuPrices
from kubequant.workloads.trading.execution.journal import Journal
from kubequant.workloads.trading.execution.oms import OrderManager
from kubequant.workloads.trading.execution.reconcile import poll
from kubequant.workloads.trading.execution.recovery import recover
from kubequant.workloads.trading.model.domain import OrderIntent, Side
from kubequant.workloads.trading.model.orders import OrderStatus
from kubequant.workloads.trading.risk.engine import RiskEngine

pytestmark = pytest.mark.unit
FAST_RETRY = RetryPolicy(attempts=3, first_delay=0.0, max_delay=0.0)
READ_TIMEOUT = 0.4
MILLION = Decimal(1_000_000)


@pytest.fixture
def api() -> Iterator[FakeXueqiu]:
    with serve(FakeXueqiu()) as fake:
        yield fake


def make_broker(url: str, cookies: str = COOKIES, secrets: Path | None = None) -> XueqiuBroker:
    client = XueqiuClient(
        XueqiuCookies(cookies),
        CODE,
        multiple=MILLION,
        base=url,
        timeout=(1.0, READ_TIMEOUT),
        reload_cookies=cookie_reloader(secrets, "xueqiu", env={}) if secrets else None,
    )
    return XueqiuBroker(client, secret_name="xueqiu", universe=("SH600519", "SZ000001", "SH601318"))


@pytest.fixture
def broker(api: FakeXueqiu) -> Iterator[XueqiuBroker]:
    b = make_broker(api.url)
    yield b
    b.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def buy(cid: str, instrument: str = "SH600519", qty: str = "100", **kw: Any) -> SubmitRequest:
    return SubmitRequest(cid, instrument, kw.pop("side", Side.BUY), Decimal(qty), **kw)


class Marks:
    def __init__(self, api: FakeXueqiu) -> None:
        self.api = api

    def last_price(self, instrument: str) -> Decimal | None:
        return Decimal(self.api.price(instrument))


# --- submit: quantity -> weight ----------------------------------------------------------------------
def test_a_buy_becomes_a_rebalance_to_the_weight_of_the_shares(api: FakeXueqiu, broker: XueqiuBroker) -> None:
    assert isinstance(broker, Broker)
    ack = run(broker.submit(buy("kq-a", "SH600519", "100")))  # 100 × 1500 of 1,000,000 = 15 %
    (form,) = api.forms
    ours = [h for h in form["holdings"] if h.get("proactive")]
    assert [(h["stock_id"], h["weight"]) for h in ours] == [(api.stocks["SH600519"]["stock_id"], 15.0)]
    assert form["comment"] == "kq:kq-a:buy:100:SH600519" and form["cube_symbol"] == CODE
    rb = api.rebalances[0]
    assert ack.broker_order_id == f"{rb['id']}/SH600519"
    report = run(broker.get_order("kq-a"))
    assert (report.status, report.quantity, report.filled_quantity) == (OrderStatus.FILLED, 100, 100)
    assert run(broker.positions()) == {"SH600519": Decimal(100)}
    account = run(broker.account())
    assert (account.cash, account.equity) == (Decimal("850000.00"), Decimal("1000000.00"))
    assert run(broker.get_order("kq-never-sent")) is None


def test_the_weight_is_rounded_towards_fewer_shares_and_the_rest_is_canceled(
    api: FakeXueqiu, broker: XueqiuBroker
) -> None:
    # 1000 × 12.34 = 1.234 % → 1.23 %: 0.0123 × 1,000,000 / 12.34 = 996.76 shares (Xueqiu's 8-decimal volume).
    run(broker.submit(buy("kq-r", "SZ000001", "1000")))
    assert [h["weight"] for h in api.forms[0]["holdings"] if h.get("proactive")] == [1.23]
    report = run(broker.get_order("kq-r"))
    assert report.status is OrderStatus.CANCELED and report.filled_quantity == Decimal("996.76")
    assert "996.76 of 1000" in report.reason
    (fill,) = run(broker.fills_since(None))
    assert (fill.fill.client_order_id, fill.fill.quantity, fill.fill.price) == (
        "kq-r",
        Decimal("996.76"),
        Decimal("12.34"),
    )
    # The sell rounds the other way (up), so it never sells more than asked.
    run(broker.submit(buy("kq-s", "SZ000001", "500", side=Side.SELL)))
    sold = run(broker.get_order("kq-s"))
    assert sold.side is Side.SELL and 0 < sold.filled_quantity <= 500
    assert run(broker.positions())["SZ000001"] == Decimal("996.76") - sold.filled_quantity


def test_fills_add_up_to_the_positions_exactly(api: FakeXueqiu, broker: XueqiuBroker) -> None:
    for i, (symbol, qty) in enumerate([("SH600519", "40"), ("SZ000001", "3000"), ("SH601318", "777")]):
        run(broker.submit(buy(f"kq-{i}", symbol, qty)))
    api.set_price("SH600519", "1620")  # prices move between rebalances: volumes, not weights, are shares
    run(broker.submit(buy("kq-3", "SH600519", "20", side=Side.SELL)))
    fills = run(broker.fills_since(None))
    total: dict[str, Decimal] = {}
    for f in fills:
        total[f.fill.instrument] = total.get(f.fill.instrument, Decimal(0)) + f.fill.signed_quantity
    assert total == run(broker.positions())
    assert [f.cursor for f in fills] == sorted((f.cursor for f in fills), key=int)
    assert run(broker.fills_since(fills[1].cursor)) == fills[2:]
    assert run(broker.fills_since(fills[-1].cursor)) == []


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (buy("kq-l", limit_price=Decimal("1400")), "limit orders"),
        (buy("kq-short", side=Side.SELL), "cannot sell short"),
        (buy("kq-tiny", "SZ000001", "1"), "smallest step of 0.01 %"),
        (buy("kq-unknown", "SH688999"), "does not know SH688999"),
        (buy("kq-cash", "SH600519", "700"), "not enough cash"),
        (buy("kq-zero", qty="0"), "must be positive"),
    ],
)
def test_orders_xueqiu_cannot_take_are_rejected_before_a_rebalance(
    api: FakeXueqiu, broker: XueqiuBroker, request_: SubmitRequest, match: str
) -> None:
    with pytest.raises(BrokerRejected, match=match) as caught:
        run(broker.submit(request_))
    assert not isinstance(caught.value, DuplicateOrder)
    assert api.posts == 0 and api.rebalances == []


def test_a_suspended_stock_is_refused_by_easytrader_and_xueqiu_sees_no_rebalance(
    api: FakeXueqiu, broker: XueqiuBroker
) -> None:
    api.stocks["SH601318"]["flag"] = 2  # 停牌
    with pytest.raises(BrokerRejected, match="flag 2"):
        run(broker.submit(buy("kq-halt", "SH601318", "100")))
    assert api.posts == 0


# --- idempotency --------------------------------------------------------------------------------------
def test_a_rebalance_that_times_out_is_found_by_its_marker_and_never_placed_twice(
    api: FakeXueqiu, broker: XueqiuBroker
) -> None:
    api.script["POST", "/cubes/rebalancing/create.json"] = [READ_TIMEOUT + 1.2]  # applied, answered late
    started = time.perf_counter()
    with pytest.raises(BrokerTimeout):
        run(with_retry(lambda: broker.submit(buy("kq-slow")), FAST_RETRY, (BrokerDisconnected,)))
    assert time.perf_counter() - started < READ_TIMEOUT + 1.0  # easytrader swallowed it; the adapter did not
    report = run(broker.get_order("kq-slow"))
    assert report is not None and report.status is OrderStatus.FILLED
    # Sending it again is answered from the history: Xueqiu sees no second rebalance.
    with pytest.raises(DuplicateOrder):
        run(broker.submit(buy("kq-slow")))
    assert api.posts == 1 and len(api.rebalances) == 1


def test_a_server_error_on_a_rebalance_is_a_timeout_and_not_resent(
    api: FakeXueqiu, broker: XueqiuBroker
) -> None:
    api.script["POST", "/cubes/rebalancing/create.json"] = [(502, "<html>502 Bad Gateway</html>")]
    with pytest.raises(BrokerTimeout, match="502"):
        run(with_retry(lambda: broker.submit(buy("kq-5xx")), FAST_RETRY, (BrokerDisconnected,)))
    assert api.posts == 1 and run(broker.get_order("kq-5xx")) is None


def test_server_errors_on_reads_are_retried_until_they_succeed(api: FakeXueqiu, broker: XueqiuBroker) -> None:
    run(broker.submit(buy("kq-p")))
    api.script["GET", "/cubes/rebalancing/current.json"] = [(503, {}), (500, "oops")]
    assert run(with_retry(broker.positions, FAST_RETRY)) == {"SH600519": Decimal(100)}
    assert api.requests["GET", "/cubes/rebalancing/current.json"] >= 3


def test_the_oms_keeps_a_timed_out_rebalance_in_flight_until_the_history_settles_it(
    api: FakeXueqiu, broker: XueqiuBroker, tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    oms = OrderManager("s1", journal, broker, RiskEngine(RiskPolicySpec()), Marks(api), retry=FAST_RETRY)

    async def life() -> None:
        await recover(oms)
        assert oms.ready
        api.script["POST", "/cubes/rebalancing/create.json"] = [READ_TIMEOUT + 1.2]
        out = await oms.submit(OrderIntent("SH600519", Side.BUY, Decimal(100), "sig-1", "SH600519"))
        assert out.order.status is OrderStatus.SUBMITTED  # unknown outcome: in flight, not resent
        await poll(oms)
        order = oms.state.orders[out.order.client_order_id]
        assert order.status is OrderStatus.FILLED and order.filled_quantity == 100
        assert order.broker_order_id == f"{api.rebalances[0]['id']}/SH600519"
        assert oms.state.position_quantities() == {"SH600519": Decimal(100)}
        again = await oms.submit(OrderIntent("SH600519", Side.BUY, Decimal(100), "sig-1", "SH600519"))
        assert again.duplicate

    try:
        run(life())
    finally:
        journal.close()
    assert api.posts == 1 and not oms.anomalies


def test_the_oms_closes_a_rounded_rebalance_as_canceled_for_the_rest(
    api: FakeXueqiu, broker: XueqiuBroker, tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    oms = OrderManager("s1", journal, broker, RiskEngine(RiskPolicySpec()), Marks(api), retry=FAST_RETRY)

    async def life() -> None:
        await recover(oms)
        out = await oms.submit(OrderIntent("SZ000001", Side.BUY, Decimal(1000), "sig-r", "SZ000001"))
        await poll(oms)
        order = oms.state.orders[out.order.client_order_id]
        assert order.status is OrderStatus.CANCELED and order.filled_quantity == Decimal("996.76")
        assert "rounded" in order.reason
        assert oms.state.position_quantities() == {"SZ000001": Decimal("996.76")} == await broker.positions()

    try:
        run(life())
    finally:
        journal.close()
    assert api.posts == 1 and not oms.anomalies


# --- restarts -----------------------------------------------------------------------------------------
def test_a_rebalance_executed_while_the_session_was_down_is_reconciled_on_restart(
    api: FakeXueqiu, tmp_path: Path
) -> None:
    api.market_open = False  # after hours: the rebalance stays pending until the open

    async def first() -> str:
        broker = make_broker(api.url)
        journal = Journal(tmp_path / "journal.sqlite")
        oms = OrderManager("s1", journal, broker, RiskEngine(RiskPolicySpec()), Marks(api), retry=FAST_RETRY)
        try:
            await recover(oms)
            out = await oms.submit(OrderIntent("SH601318", Side.BUY, Decimal(500), "sig-1", "SH601318"))
            assert out.order.status is OrderStatus.ACCEPTED
            assert [o.client_order_id for o in await broker.open_orders()] == [out.order.client_order_id]
            return str(out.order.client_order_id)
        finally:
            journal.close()
            broker.close()

    cid = run(first())
    api.execute_pending()  # the market opens while no session runs

    async def second() -> OrderManager:
        broker = make_broker(api.url)
        journal = Journal(tmp_path / "journal.sqlite")
        oms = OrderManager("s1", journal, broker, RiskEngine(RiskPolicySpec()), Marks(api), retry=FAST_RETRY)
        try:
            report = await recover(oms)
            assert report.fills_applied == 1 and report.position_mismatches == 0
            return oms
        finally:
            journal.close()
            broker.close()

    oms = run(second())
    assert oms.ready and not oms.anomalies
    assert oms.state.orders[cid].status is OrderStatus.FILLED
    assert oms.state.position_quantities() == {"SH601318": Decimal(500)}
    assert api.posts == 1


def test_a_position_the_history_cannot_explain_fails_closed_on_restart(
    api: FakeXueqiu, broker: XueqiuBroker, tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    oms = OrderManager("s1", journal, broker, RiskEngine(RiskPolicySpec()), Marks(api), retry=FAST_RETRY)

    async def life() -> None:
        await recover(oms)
        await oms.submit(OrderIntent("SH600519", Side.BUY, Decimal(100), "sig-1", "SH600519"))
        await poll(oms)
        # Xueqiu's holdings change with no rebalance in the history (what a lost or edited history looks like).
        api.volumes["SH601318"] = Decimal("0.00025")
        api.cash_value -= Decimal("0.01")
        report = await recover(oms)
        assert report.position_mismatches == 1

    try:
        run(life())
    finally:
        journal.close()
    assert not oms.ready
    assert any("SH601318 journal 0 broker 250" in a for a in oms.anomalies)


def test_a_rebalance_made_on_the_website_is_adopted_with_its_fills(
    api: FakeXueqiu, broker: XueqiuBroker, tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    oms = OrderManager("s1", journal, broker, RiskEngine(RiskPolicySpec()), Marks(api), retry=FAST_RETRY)

    async def life() -> None:
        await recover(oms)
        await oms.submit(OrderIntent("SH600519", Side.BUY, Decimal(100), "sig-1", "SH600519"))
        rb = api.rebalance_on_the_website("SH601318", "2")  # the owner adds 2 % by hand
        await poll(oms)
        external = f"xq-{rb['id']}-SH601318"
        assert oms.state.orders[external].external
        assert oms.state.orders[external].status is OrderStatus.FILLED
        assert oms.state.position_quantities() == await broker.positions()

    try:
        run(life())
    finally:
        journal.close()
    assert not oms.anomalies


# --- failures: session expiry, failed rebalances, disconnection ---------------------------------------
def test_an_expired_cookie_at_start_is_a_config_error_naming_the_secret_and_the_fix(
    api: FakeXueqiu, broker: XueqiuBroker
) -> None:
    api.expire()
    with pytest.raises(ConfigError) as caught:
        run(broker.connect(CODE))
    message = str(caught.value)
    assert "400016" in message and "cookies" in message and "kubectl create secret generic xueqiu" in message
    assert COOKIES not in message


def test_an_expired_cookie_while_trading_disconnects_until_the_secret_is_refreshed(
    api: FakeXueqiu, tmp_path: Path
) -> None:
    secrets = tmp_path / "secret"
    secrets.mkdir()
    (secrets / "cookies").write_text(COOKIES + "\n")
    broker = make_broker(api.url, secrets=secrets)
    try:
        run(broker.connect(CODE))
        api.expire()
        with pytest.raises(BrokerDisconnected, match="refresh the Secret"):
            run(broker.submit(buy("kq-exp")))
        assert not broker._connected and api.posts == 0
        # The operator logs in again and updates the Secret; the mounted file changes in place.
        (secrets / "cookies").write_text(f"xq_a_token={api.token}; u=8000001\n")
        with pytest.raises(BrokerDisconnected):
            run(broker.positions())  # this call still used the old cookie, and read the new one
        assert run(broker.positions()) == {}
        assert run(broker.check_connection()) is True
        assert api.cookies_seen[-1] == api.token
    finally:
        broker.close()


def test_a_rate_limited_rebalance_is_safe_to_send_again(api: FakeXueqiu, broker: XueqiuBroker) -> None:
    # 403 is Xueqiu's anti-crawler answer, 429 a rate limit: refused unprocessed.
    api.script["POST", "/cubes/rebalancing/create.json"] = [(403, {"error_description": "访问过于频繁"})]
    ack = run(with_retry(lambda: broker.submit(buy("kq-403")), FAST_RETRY, (BrokerDisconnected,)))
    assert api.posts == 2 and len(api.rebalances) == 1
    assert ack.broker_order_id == f"{api.rebalances[0]['id']}/SH600519"


def test_a_broken_secret_while_expired_keeps_the_session_disconnected(
    api: FakeXueqiu, tmp_path: Path
) -> None:
    secrets = tmp_path / "secret"
    secrets.mkdir()
    (secrets / "cookies").write_text(COOKIES)
    broker = make_broker(api.url, secrets=secrets)
    try:
        api.expire()
        (secrets / "cookies").write_text("not a cookie header")
        with pytest.raises(BrokerDisconnected, match="400016"):
            run(broker.positions())
        (secrets / "cookies").unlink()
        with pytest.raises(BrokerDisconnected):
            run(broker.positions())
        assert not broker._connected
    finally:
        broker.close()


def test_a_refused_rebalance_is_a_rejection_with_xueqius_message(
    api: FakeXueqiu, broker: XueqiuBroker
) -> None:
    api.script["POST", "/cubes/rebalancing/create.json"] = [
        (400, {"error_code": "20109", "error_description": "调仓失败，请稍后重试"})
    ]
    with pytest.raises(BrokerRejected, match=r"20109.*调仓失败") as caught:
        run(broker.submit(buy("kq-no")))
    assert not isinstance(caught.value, DuplicateOrder)


def test_a_rebalance_xueqiu_marks_failed_is_reported_rejected(api: FakeXueqiu, broker: XueqiuBroker) -> None:
    api.fail_next = "股票停牌，调仓失败"
    run(broker.submit(buy("kq-failed")))
    report = run(broker.get_order("kq-failed"))
    assert report.status is OrderStatus.REJECTED and "股票停牌" in report.reason
    assert run(broker.positions()) == {} and run(broker.fills_since(None)) == []


def test_an_unreachable_xueqiu_is_disconnected_and_nothing_was_sent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    broker = make_broker(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(BrokerDisconnected, match="cannot reach Xueqiu"):
            run(broker.submit(buy("kq-down")))
        assert not broker.is_connected()
    finally:
        broker.close()


def test_cancel_is_refused(broker: XueqiuBroker) -> None:
    with pytest.raises(BrokerRejected, match="cannot be canceled"):
        run(broker.cancel("90000001/SH600519"))


# --- account, instruments, prices ---------------------------------------------------------------------
def test_connect_checks_the_portfolio_and_listed_instruments_are_the_known_universe(
    api: FakeXueqiu, broker: XueqiuBroker
) -> None:
    assert run(broker.connect(CODE)).equity == MILLION
    with pytest.raises(ConfigError, match=r"spec\.account"):
        run(broker.connect("ZH9999999"))
    broker.universe = ("SH600519", "SH688999")
    assert run(broker.listed_instruments()) == frozenset({"SH600519"})
    broker.universe = ()
    with pytest.raises(ConfigError, match=r"spec\.universe\.instruments"):
        run(broker.listed_instruments())


def test_prices_are_xueqius_current_price_refreshed_off_the_loop(
    api: FakeXueqiu, broker: XueqiuBroker
) -> None:
    now = [100.0]
    prices = XueqiuPrices.for_broker(broker, max_age=30.0, monotonic=lambda: now[0])
    assert prices.last_price("SH600519") is None
    assert run(prices.refresh()) == 3
    assert prices.last_price("SH600519") == Decimal("1500.0") and prices.price_age("SH600519") == 0
    now[0] += 31
    assert prices.last_price("SH600519") is None  # stale
    prices.watch("SH688999")
    assert run(prices.refresh()) == 3  # an unknown code has no price


def test_capabilities_match_the_adapter() -> None:
    caps = capabilities_of("xueqiu")
    assert XueqiuBroker.capabilities == caps
    assert caps.market_orders and not caps.limit_orders and not caps.cancel and not caps.short_selling


# --- configuration ------------------------------------------------------------------------------------
def session(url: str | None = None, mode: str = "paper", account: str = CODE) -> LiveTradingSession:
    broker: dict[str, Any] = {"type": "xueqiu", "credentialsSecretRef": {"name": "xueqiu"}}
    if url:
        broker["endpoint"] = url
    return LiveTradingSession.model_validate(
        {
            "apiVersion": "kubequant.io/v1alpha1",
            "kind": "LiveTradingSession",
            "metadata": {"name": "s"},
            "spec": {
                "mode": mode,
                "account": account,
                "riskPolicyRef": {"name": "p"},
                "broker": broker,
                "startingCash": 1_000_000,
                "universe": {"instruments": ["SH600519", "SZ000001"]},
            },
        }
    )


def test_the_cookie_comes_from_the_secret_and_a_missing_one_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_cookies(tmp_path / "empty", "xueqiu", env={})
    assert "'cookies'" in str(caught.value) and "kubectl create secret generic xueqiu" in str(caught.value)
    (tmp_path / "cookies").write_text(COOKIES)
    loaded = load_cookies(tmp_path, "xueqiu", env={"XUEQIU_COOKIES": "xq_a_token=other"})
    assert loaded.value == COOKIES and COOKIES not in repr(loaded)
    assert load_cookies(None, None, env={"XUEQIU_COOKIES": "xq_a_token=x"}).value == "xq_a_token=x"
    (tmp_path / "cookies").write_text("just-a-token")
    with pytest.raises(ConfigError, match="not a Cookie header"):
        load_cookies(tmp_path, "xueqiu", env={})


def test_the_portfolio_code_and_endpoint_are_checked() -> None:
    assert check_portfolio_code("ZH1234567") == "ZH1234567"
    with pytest.raises(ConfigError, match=r"spec\.account"):
        check_portfolio_code("SP1000001")
    assert (
        base_url(None) == "https://xueqiu.com" and base_url("http://127.0.0.1:80/") == "http://127.0.0.1:80"
    )
    with pytest.raises(ConfigError, match=r"spec\.broker\.endpoint"):
        base_url("http://proxy/xueqiu")


def test_a_live_xueqiu_session_is_refused() -> None:
    with pytest.raises(Exception, match="mode paper"):
        session(mode="live")


def test_the_factory_builds_the_adapter_and_its_prices(api: FakeXueqiu, tmp_path: Path) -> None:
    (tmp_path / "cookies").write_text(COOKIES)
    built = build_broker(session(api.url), market=None, record_path=tmp_path / "unused", secrets_dir=tmp_path)
    try:
        assert isinstance(built, XueqiuBroker)
        assert built.multiple == MILLION and built.client.trader.config["rebalance_url"].startswith(api.url)
        assert built.client.session.verify is True  # easytrader's verify=False is not kept
        assert run(built.connect(CODE)).equity == MILLION
        prices = build_price_source(session(api.url), built, secrets_dir=tmp_path)
        assert isinstance(prices, XueqiuPrices) and prices.watched == ("SH600519", "SZ000001")
    finally:
        built.close()
    with pytest.raises(ConfigError, match="cookies"):
        build_broker(session(), market=None, record_path=tmp_path / "x", secrets_dir=tmp_path / "none")


def test_the_factory_says_how_to_install_easytrader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "easytrader.xqtrader", None)
    with pytest.raises(ConfigError, match=r"pip install 'kubequant\[cn\]'"):
        build_broker(session(), market=None, record_path=tmp_path / "x", secrets_dir=None)


def test_the_marker_round_trips_and_ignores_other_comments() -> None:
    marker = parsing.Marker("kq-0123456789abcdef01234567", Side.SELL, Decimal("1.5"), "SH600519")
    assert parsing.read_marker(f"调仓 {marker.text()}") == marker
    assert parsing.read_marker("看好白酒") is None and parsing.read_marker(None) is None
    assert parsing.read_external_id("xq-90000001-SH600519") == ("90000001", "SH600519")
