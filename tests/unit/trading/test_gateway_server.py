"""The gateway program (``kubequant gateway``) over loopback, with a fake easytrader client object.

The fake is the one allowed: there is no Windows desktop client here. ``FakeClient`` has the
methods and properties of easytrader's universal client (``buy``, ``sell``, ``market_buy``,
``market_sell``, ``cancel_entrust``, ``position``, ``balance``, ``today_entrusts``,
``today_trades``) and answers with the grids' Chinese column names as easytrader returns them.
Everything else is real: the aiohttp server, its SQLite file, TLS with certificates made here,
and the adapter's aiohttp client. Other gateway tests import ``FakeClient`` and ``served`` from here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kubequant.errors import BrokerError, ConfigError
from kubequant.workloads.trading.adapters.base import (
    BrokerRejected,
    BrokerTimeout,
    DuplicateOrder,
    SubmitRequest,
)
from kubequant.workloads.trading.adapters.gateway import rows
from kubequant.workloads.trading.adapters.gateway.broker import GatewayBroker, GatewayCredentials
from kubequant.workloads.trading.adapters.gateway.protocol import to_instrument, to_security
from kubequant.workloads.trading.adapters.gateway.server import (
    Auth,
    Gateway,
    Store,
    load_auth,
    make_app,
    server_tls,
    start,
)
from kubequant.workloads.trading.model.domain import Side
from kubequant.workloads.trading.model.orders import OrderStatus

pytestmark = pytest.mark.unit
TOKEN = "gateway-test-token-0123456789abcdef"
ACCOUNT = "3100123456"


class FakeClient:
    """easytrader's universal client as the gateway sees it: methods, properties, Chinese grids."""

    def __init__(self, cash: str = "100000", holdings: dict[str, tuple[int, str]] | None = None) -> None:
        self.lock = threading.Lock()
        self.cash = Decimal(cash)
        self.holdings: dict[str, list[Any]] = {
            code: [qty, qty, Decimal(price)] for code, (qty, price) in (holdings or {}).items()
        }
        self.entrusts: list[dict[str, Any]] = []
        self.trades: list[dict[str, Any]] = []
        self.placed = 0  # orders that reached the "brokerage"
        self.answer_delay = 0.0  # seconds between placing and answering (a slow desktop window)
        self.fail_after_place = False  # the automation breaks after the order went in
        self.down = False  # the client's window is gone: every call fails
        self.refuse: str | None = None  # the client's pop-up refuses the next order with this message
        self._next = 1000

    def _check(self) -> None:
        if self.down:
            raise RuntimeError("找不到窗口 (the client window is gone)")

    def _place(self, op: str, security: str, price: float, amount: int) -> dict[str, Any]:
        self._check()
        if self.refuse is not None:
            message, self.refuse = self.refuse, None
            return {"message": message}
        with self.lock:
            self._next += 1
            no = str(self._next)
            self.entrusts.append(
                {
                    "委托时间": "10:00:00",
                    "证券代码": security,
                    "证券名称": "",
                    "操作": op,
                    "备注": "已报",
                    "委托数量": amount,
                    "成交数量": 0,
                    "委托价格": price,
                    "成交均价": 0,
                    "合同编号": no,
                }
            )
            self.placed += 1
        if self.fail_after_place:
            raise RuntimeError("pywinauto: the confirmation dialog vanished")
        time.sleep(self.answer_delay)
        return {"entrust_no": no}

    def buy(self, security: str, price: float, amount: int, **kwargs: Any) -> dict[str, Any]:
        return self._place("买入", security, price, amount)

    def sell(self, security: str, price: float, amount: int, **kwargs: Any) -> dict[str, Any]:
        return self._place("卖出", security, price, amount)

    def market_buy(self, security: str, amount: int, ttype: Any = None, **kwargs: Any) -> dict[str, Any]:
        return self._place("买入", security, 0, amount)

    def market_sell(self, security: str, amount: int, ttype: Any = None, **kwargs: Any) -> dict[str, Any]:
        return self._place("卖出", security, 0, amount)

    def cancel_entrust(self, entrust_no: str) -> dict[str, Any]:
        self._check()
        with self.lock:
            for e in self.entrusts:
                if e["合同编号"] == entrust_no and e["备注"] in ("已报", "部成"):
                    e["备注"] = "部撤" if e["成交数量"] else "已撤"
                    return {"message": "撤单申报成功"}
        return {"message": "委托单状态错误不能撤单, 该委托单可能已经成交或者已撤"}

    def by_no(self, entrust_no: str) -> dict[str, Any]:
        return next(e for e in self.entrusts if e["合同编号"] == entrust_no)

    def fill(self, entrust_no: str, qty: int, price: str, at: str = "10:01:02") -> None:
        """The brokerage executes ``qty`` of an entrust (call with the lock held or from the test thread)."""
        e = self.by_no(entrust_no)
        e["成交数量"] += qty
        e["备注"] = "已成" if e["成交数量"] >= e["委托数量"] else "部成"
        e["成交均价"] = float(price)
        sign = 1 if e["操作"] == "买入" else -1
        code = e["证券代码"]
        held = self.holdings.setdefault(code, [0, 0, Decimal(price)])
        held[0] += sign * qty
        held[2] = Decimal(price)
        self.cash -= sign * qty * Decimal(price)
        self.trades.append(
            {
                "成交时间": at,
                "证券代码": code,
                "证券名称": "",
                "操作": e["操作"],
                "成交数量": qty,
                "成交均价": float(price),
                "成交金额": float(qty * Decimal(price)),
                "合同编号": entrust_no,
                "成交编号": f"T{len(self.trades) + 1:04d}",
            }
        )

    @property
    def balance(self) -> dict[str, Any]:
        self._check()
        value = sum(q * p for q, _, p in self.holdings.values())
        return {
            "资金余额": float(self.cash),
            "可用金额": float(self.cash),
            "股票市值": float(value),
            "总资产": float(self.cash + value),
        }

    @property
    def position(self) -> list[dict[str, Any]]:
        self._check()
        return [
            {
                "证券代码": code,
                "证券名称": "",
                "股票余额": q,
                "可用余额": s,
                "市价": float(p),
                "市值": float(q * p),
            }
            for code, (q, s, p) in self.holdings.items()
        ]

    @property
    def today_entrusts(self) -> list[dict[str, Any]]:
        self._check()
        with self.lock:
            return [dict(e) for e in self.entrusts]

    @property
    def today_trades(self) -> list[dict[str, Any]]:
        self._check()
        with self.lock:
            return [dict(t) for t in self.trades]


@dataclass
class Served:
    url: str
    gateway: Gateway
    client: FakeClient
    loop: asyncio.AbstractEventLoop


@contextmanager
def served(
    client: FakeClient,
    state: Path,
    auth: Auth | None = None,
    *,
    account: str = ACCOUNT,
    today: dt.date | None = None,
) -> Iterator[Served]:
    """The gateway program on 127.0.0.1 in a thread of its own (its own event loop), until the block ends."""
    auth = auth or Auth(token=TOKEN)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    gateway = Gateway(
        client, "universal", Store(state), account=account, today=(lambda: today) if today else None
    )
    runner, port = asyncio.run_coroutine_threadsafe(start(gateway, auth, "127.0.0.1", 0), loop).result(30)
    scheme = "https" if auth.ssl_context is not None else "http"
    try:
        yield Served(f"{scheme}://127.0.0.1:{port}", gateway, client, loop)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        gateway.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def adapter(url: str, token: str | None = TOKEN, timeout: float = 5.0, **kw: Any) -> GatewayBroker:
    return GatewayBroker(url, GatewayCredentials(token=token, **kw), timeout=timeout)


def call(broker: GatewayBroker, coro_fn: Any) -> Any:
    async def go() -> Any:
        try:
            return await coro_fn(broker)
        finally:
            broker.close()
            await asyncio.sleep(0)

    return asyncio.run(go())


def raw(url: str, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
    req = urllib.request.Request(
        url + path, method=method, data=None if body is None else json.dumps(body).encode()
    )
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def order(cid: str = "kq-1", qty: str = "100", instrument: str = "SH600000", **kw: Any) -> SubmitRequest:
    return SubmitRequest(cid, instrument, kw.pop("side", Side.BUY), Decimal(qty), **kw)


@pytest.fixture
def client() -> FakeClient:
    return FakeClient(holdings={"600000": (1000, "10.50")})


# --- idempotency ----------------------------------------------------------------------------------
def test_a_retried_submit_returns_the_first_answer_and_places_once_even_after_a_gateway_restart(
    client: FakeClient, tmp_path: Path
) -> None:
    state = tmp_path / "gateway.sqlite"
    body = {
        "clientOrderId": "kq-a",
        "instrument": "SH600000",
        "side": "BUY",
        "quantity": "100",
        "limitPrice": "10.5",
    }
    with served(client, state) as gw:
        code, first = raw(gw.url, "POST", "/v1/orders", body)
        assert code == 201 and first["replayed"] is False
        assert first["order"]["entrustNo"] == "1001" and first["order"]["status"] == "accepted"
        code, again = raw(gw.url, "POST", "/v1/orders", body)
        assert code == 200 and again["replayed"] is True and again["order"]["entrustNo"] == "1001"
    assert client.placed == 1 and client.entrusts[0]["委托价格"] == 10.5
    with served(client, state) as gw:  # a new gateway process over the same file
        code, third = raw(gw.url, "POST", "/v1/orders", body)
        assert code == 200 and third["order"]["entrustNo"] == "1001"
    assert client.placed == 1


def test_a_different_order_under_a_used_id_is_a_duplicate_and_places_nothing(
    client: FakeClient, tmp_path: Path
) -> None:
    with served(client, tmp_path / "g.sqlite") as gw:
        call(adapter(gw.url), lambda b: b.submit(order("kq-a", "100")))
        with pytest.raises(DuplicateOrder, match="already BUY 100 SH600000"):
            call(adapter(gw.url), lambda b: b.submit(order("kq-a", "200")))
    assert client.placed == 1


def test_the_clients_refusal_is_rejected_and_a_retry_gets_the_same_refusal(
    client: FakeClient, tmp_path: Path
) -> None:
    client.refuse = "可用资金不足"
    with served(client, tmp_path / "g.sqlite") as gw:
        for _ in range(2):
            with pytest.raises(BrokerRejected, match="可用资金不足"):
                call(adapter(gw.url), lambda b: b.submit(order("kq-poor")))
        report = call(adapter(gw.url), lambda b: b.get_order("kq-poor"))
    assert report.status is OrderStatus.REJECTED and "可用资金不足" in report.reason
    assert client.placed == 0


def test_a_client_failure_mid_order_is_an_unknown_outcome_settled_from_the_days_entrusts(
    client: FakeClient, tmp_path: Path
) -> None:
    client.fail_after_place = True
    with served(client, tmp_path / "g.sqlite") as gw:
        with pytest.raises(BrokerTimeout, match="UNKNOWN_OUTCOME"):
            call(adapter(gw.url), lambda b: b.submit(order("kq-lost")))
        client.fail_after_place = False
        report = call(adapter(gw.url), lambda b: b.get_order("kq-lost"))
        assert report.broker_order_id == "1001" and report.status is OrderStatus.ACCEPTED
        # A retry of the submit answers with the order the query found: nothing is placed again.
        ack = call(adapter(gw.url), lambda b: b.submit(order("kq-lost")))
    assert ack.broker_order_id == "1001" and client.placed == 1


def test_a_submit_the_client_never_took_is_settled_as_never_placed(
    client: FakeClient, tmp_path: Path
) -> None:
    client.down = True
    with served(client, tmp_path / "g.sqlite") as gw:
        with pytest.raises(BrokerTimeout):
            call(adapter(gw.url), lambda b: b.submit(order("kq-down")))
        client.down = False
        report = call(adapter(gw.url), lambda b: b.get_order("kq-down"))
    assert report.status is OrderStatus.REJECTED and "never placed" in report.reason
    assert client.placed == 0


def test_an_entry_left_pending_by_a_killed_gateway_is_settled_at_the_next_start(
    client: FakeClient, tmp_path: Path
) -> None:
    state = tmp_path / "g.sqlite"
    store = Store(state)  # the gateway wrote the entry, asked the client, and died before the answer
    store.insert_pending("kq-k", "SH600000", "SELL", Decimal(200), Decimal("11"), dt.date.today().isoformat())
    store.close()
    client.sell("600000", 11.0, 200)
    client.buy("600000", 11.0, 200)  # another order, other side: not a match
    with served(client, state, today=dt.date.today()) as gw:
        settled = gw.gateway.store.order("kq-k")
        assert settled is not None and settled.entrust_no == "1001"
        report = call(adapter(gw.url), lambda b: b.get_order("kq-k"))
    assert (report.broker_order_id, report.side, report.quantity) == ("1001", Side.SELL, 200)


# --- queries --------------------------------------------------------------------------------------
def test_fills_are_numbered_once_and_read_after_a_cursor_across_restarts(
    client: FakeClient, tmp_path: Path
) -> None:
    state = tmp_path / "g.sqlite"
    with served(client, state) as gw:
        ack = call(adapter(gw.url), lambda b: b.submit(order("kq-f", "300")))
        client.fill(ack.broker_order_id, 100, "10.52")
        client.fill(ack.broker_order_id, 200, "10.55", at="10:05:00")
        fills = call(adapter(gw.url), lambda b: b.fills_since(None))
        assert [(f.fill.quantity, f.fill.price, f.fill.client_order_id) for f in fills] == [
            (100, Decimal("10.52"), "kq-f"),
            (200, Decimal("10.55"), "kq-f"),
        ]
        assert fills[0].fill.ts.tzinfo is not None and fills[1].fill.ts.hour == 10
        assert call(adapter(gw.url), lambda b: b.fills_since(fills[-1].cursor)) == []
        report = call(adapter(gw.url), lambda b: b.get_order("kq-f"))
        assert report.status is OrderStatus.FILLED and report.filled_quantity == 300
    with served(client, state) as gw:
        again = call(adapter(gw.url), lambda b: b.fills_since(None))
        assert [f.cursor for f in again] == [f.cursor for f in fills]  # the same numbers after a restart
        assert (
            call(adapter(gw.url), lambda b: b.fills_since(fills[0].cursor))[0].fill.fill_id
            == fills[1].fill.fill_id
        )


def test_open_orders_cancel_positions_balance_and_quotes(client: FakeClient, tmp_path: Path) -> None:
    with served(client, tmp_path / "g.sqlite") as gw:
        ack = call(adapter(gw.url), lambda b: b.submit(order("kq-o", "200", limit_price=Decimal("10.4"))))
        client.sell("000001", 12.0, 100)  # entered by hand in the client
        client.fill(ack.broker_order_id, 100, "10.40")
        orders = {o.broker_order_id: o for o in call(adapter(gw.url), lambda b: b.open_orders())}
        assert orders[ack.broker_order_id].status is OrderStatus.PARTIALLY_FILLED
        assert orders[ack.broker_order_id].client_order_id == "kq-o"
        manual = orders["1002"]
        assert (manual.client_order_id, manual.instrument, manual.side) == ("", "SZ000001", Side.SELL)
        call(adapter(gw.url), lambda b: b.cancel(ack.broker_order_id))
        report = call(adapter(gw.url), lambda b: b.get_order("kq-o"))
        assert report.status is OrderStatus.CANCELED and report.filled_quantity == 100
        with pytest.raises(BrokerRejected, match="canceled"):
            call(adapter(gw.url), lambda b: b.cancel(ack.broker_order_id))
        with pytest.raises(BrokerRejected, match="NOT_FOUND"):
            call(adapter(gw.url), lambda b: b.cancel("999999"))
        assert call(adapter(gw.url), lambda b: b.positions()) == {"SH600000": Decimal(1100)}
        account = call(adapter(gw.url), lambda b: b.account())
        assert account.cash == Decimal("98960.00") and account.equity == Decimal("98960.00") + 1100 * Decimal(
            "10.40"
        )
        quotes = call(adapter(gw.url), lambda b: b.quotes(["SH600000", "SZ000001"]))
        assert quotes == {"SH600000": Decimal("10.4")}  # the client shows prices of held names only
        assert call(adapter(gw.url), lambda b: b.get_order("kq-never")) is None


def test_a_day_order_the_client_no_longer_lists_has_expired(client: FakeClient, tmp_path: Path) -> None:
    state = tmp_path / "g.sqlite"
    yesterday = dt.date.today() - dt.timedelta(days=1)
    with served(client, state, today=yesterday) as gw:
        call(adapter(gw.url), lambda b: b.submit(order("kq-y")))
    client.entrusts.clear()  # a new day: the client lists only today's entrusts
    with served(client, state, today=dt.date.today()) as gw:
        report = call(adapter(gw.url), lambda b: b.get_order("kq-y"))
    assert report.status is OrderStatus.EXPIRED


def test_a_dead_client_window_is_disconnected_and_bad_requests_are_rejected(
    client: FakeClient, tmp_path: Path
) -> None:
    with served(client, tmp_path / "g.sqlite") as gw:
        client.down = True
        from kubequant.workloads.trading.adapters.base import BrokerDisconnected

        with pytest.raises(BrokerDisconnected, match="UNAVAILABLE"):
            call(adapter(gw.url), lambda b: b.positions())
        client.down = False
        with pytest.raises(BrokerRejected, match="whole number"):
            call(adapter(gw.url), lambda b: b.submit(order("kq-frac", "1.5")))
        with pytest.raises(BrokerRejected, match="not an A-share code"):
            call(adapter(gw.url), lambda b: b.submit(order("kq-us", "1", instrument="AAPL")))
        code, answer = raw(gw.url, "POST", "/v1/orders", {"instrument": "SH600000"})
        assert code == 400 and answer["error"]["code"] == "BAD_REQUEST"
    assert client.placed == 0


# --- authentication -------------------------------------------------------------------------------
def test_the_token_is_required_and_compared(client: FakeClient, tmp_path: Path) -> None:
    with served(client, tmp_path / "g.sqlite") as gw:
        assert raw(gw.url, "GET", "/v1/health")[0] == 200
        for token in (None, "wrong-token-0123456789"):
            code, answer = raw(gw.url, "GET", "/v1/positions", token=token)
            assert code == 401 and answer["error"]["code"] == "UNAUTHORIZED"
        with pytest.raises(ConfigError) as err:
            call(adapter(gw.url, token="wrong-token-0123456789"), lambda b: b.connect(ACCOUNT))
        assert err.value.where == "spec.broker.credentialsSecretRef"
        with pytest.raises(ConfigError) as err:
            call(adapter(gw.url), lambda b: b.connect("999"))
        assert err.value.where == "spec.account" and ACCOUNT in str(err.value)
        account = call(adapter(gw.url), lambda b: b.connect(ACCOUNT))
        assert account.cash == Decimal("100000.00")


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA, the gateway's certificate for 127.0.0.1, a pod certificate it signed, and a stranger's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    out: dict[str, Path] = {}

    def write(name: str, key: Any, cert: Any) -> None:
        out[f"{name}.key"] = folder / f"{name}.key"
        out[f"{name}.crt"] = folder / f"{name}.crt"
        out[f"{name}.key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        out[f"{name}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        name: str, issuer: Any, issuer_key: Any, *, ca: bool = False, server: bool = False
    ) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject if issuer is not None else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        cert = builder.sign(issuer_key if issuer_key is not None else key, hashes.SHA256())
        write(name, key, cert)
        return key, cert

    ca_key, ca_cert = issue("ca", None, None, ca=True)
    issue("gateway", ca_cert, ca_key, server=True)
    issue("pod", ca_cert, ca_key)
    other_key, other_cert = issue("other-ca", None, None, ca=True)
    issue("stranger", other_cert, other_key)
    return out


def test_mutual_tls_admits_the_pods_certificate_and_refuses_others(
    client: FakeClient, tmp_path: Path
) -> None:
    pytest.importorskip("cryptography")
    pki = make_pki(tmp_path)
    auth = Auth(ssl_context=server_tls(pki["gateway.crt"], pki["gateway.key"], pki["ca.crt"]))
    with served(client, tmp_path / "g.sqlite", auth) as gw:
        assert gw.url.startswith("https://")
        ok = adapter(gw.url, token=None, cert=pki["pod.crt"], key=pki["pod.key"], ca=pki["ca.crt"])
        assert call(ok, lambda b: b.connect(ACCOUNT)).cash == Decimal("100000.00")
        for cert, key in ((None, None), (pki["stranger.crt"], pki["stranger.key"])):
            refused = adapter(gw.url, token=None, cert=cert, key=key, ca=pki["ca.crt"])
            with pytest.raises(BrokerError) as err:
                call(refused, lambda b: b.positions())
            assert "gateway" in str(err.value)
        # The pod checks the gateway's certificate too: a CA that did not sign it is refused.
        wrong_ca = adapter(
            gw.url, token=None, cert=pki["pod.crt"], key=pki["pod.key"], ca=pki["other-ca.crt"]
        )
        from kubequant.workloads.trading.adapters.base import BrokerDisconnected

        with pytest.raises(BrokerDisconnected):
            call(wrong_ca, lambda b: b.positions())
    assert client.placed == 0


def test_the_gateway_refuses_to_serve_without_client_authentication(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_auth(None, None, None, None)
    assert "--token-file" in str(err.value.where)
    short = tmp_path / "token"
    short.write_text("abc")
    with pytest.raises(ConfigError, match="shorter than 16"):
        load_auth(short, None, None, None)
    gateway = Gateway(FakeClient(), "universal", Store(tmp_path / "g.sqlite"), account=ACCOUNT)
    try:
        with pytest.raises(ConfigError):
            make_app(gateway, Auth())
    finally:
        gateway.close()


# --- reading the clients' rows --------------------------------------------------------------------
def test_codes_map_between_the_client_and_the_sessions_instruments() -> None:
    assert [to_instrument(c) for c in ("600000", "000001", "300750", "688981", "430047", "600000.SH")] == [
        "SH600000",
        "SZ000001",
        "SZ300750",
        "SH688981",
        "BJ430047",
        "SH600000",
    ]
    assert to_security("SZ000001") == "000001" and to_security("600000") == "600000"
    with pytest.raises(ValueError):
        to_security("AAPL")


def test_miniqmt_rows_decode() -> None:
    entrust = rows.entrust(
        {
            "stock_code": "000001.SZ",
            "security": "000001",
            "order_id": 77,
            "order_type": 24,
            "order_volume": 300,
            "traded_volume": 100,
            "price": 12.3,
            "order_status": 55,
        }
    )
    assert entrust is not None
    assert (entrust.entrust_no, entrust.instrument, entrust.side, entrust.status) == (
        "77",
        "SZ000001",
        "SELL",
        "partially_filled",
    )
    assert rows.status_of({"order_status": 57}, Decimal(1), Decimal(0)) == "rejected"
    assert rows.status_of({"order_status": 53}, Decimal(3), Decimal(1)) == "canceled"
    trade = rows.trade(
        {
            "stock_code": "600000.SH",
            "traded_id": "T9",
            "traded_time": 1733102400,
            "traded_price": 10.1,
            "traded_volume": 100,
            "order_id": 77,
            "order_type": 23,
        },
        dt.date(2024, 12, 2),
    )
    assert (
        trade is not None and trade.side == "BUY" and trade.entrust_no == "77" and trade.ts.tzinfo is not None
    )
    holding = rows.holding(
        {
            "stock_code": "600000.SH",
            "security": "600000",
            "volume": 500,
            "can_use_volume": 300,
            "market_value": 5250.0,
        }
    )
    assert holding is not None and holding.price == Decimal("10.5") and holding.sellable == 300
    cash, equity, account = rows.balance([{"cash": 1000.5, "total_asset": 6250.5, "account_id": "88"}])
    assert (cash, equity, account) == (Decimal("1000.5"), Decimal("6250.5"), "88")


@pytest.mark.parametrize(
    ("note", "status"),
    [
        ("已报", "accepted"),
        ("未成交", "accepted"),
        ("部成", "partially_filled"),
        ("已成", "filled"),
        ("已撤", "canceled"),
        ("部撤", "canceled"),
        ("已报待撤", "pending_cancel"),
        ("废单", "rejected"),
    ],
)
def test_the_universal_clients_status_notes_map_onto_the_lifecycle(note: str, status: str) -> None:
    filled = Decimal(50) if note in ("部成", "部撤") else Decimal(0)
    assert rows.status_of({"备注": note}, Decimal(100), filled) == status
