"""The gateway adapter in the OMS, the capability table and the session's refusals, the factory and the CLI.

The gateway runs in-process on loopback with the fake easytrader client of test_gateway_server.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pydantic
import pytest
from test_gateway_server import ACCOUNT, TOKEN, FakeClient, adapter, order, served

from kubequant.api import broker_capabilities
from kubequant.api.broker_capabilities import CAPABILITIES, capabilities_of, limit_price_refusal, refusals
from kubequant.api.live import BrokerType, LiveTradingSession
from kubequant.api.risk import RiskPolicySpec
from kubequant.errors import ConfigError
from kubequant.workloads.trading.adapters.base import Broker, BrokerTimeout, RetryPolicy
from kubequant.workloads.trading.adapters.factory import build_broker, build_price_source
from kubequant.workloads.trading.adapters.gateway.broker import GatewayBroker, GatewayPrices, load_credentials
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
REPO = Path(__file__).parents[3]


def session(**broker: Any) -> LiveTradingSession:
    spec: dict[str, Any] = {"account": ACCOUNT, "riskPolicyRef": {"name": "p"}}
    spec["universe"] = {"instruments": ["SH600000", "SZ000001"]}
    spec["broker"] = {
        "type": "gateway",
        "credentialsSecretRef": {"name": "gw"},
        "endpoint": "https://10.0.0.5:8443",
    }
    spec["broker"].update(broker)
    spec["broker"] = {k: v for k, v in spec["broker"].items() if v is not None}
    return LiveTradingSession.model_validate(
        {
            "apiVersion": "kubequant.io/v1alpha1",
            "kind": "LiveTradingSession",
            "metadata": {"name": "s"},
            "spec": spec,
        }
    )


# --- the crash properties, in the OMS -------------------------------------------------------------
def test_a_submit_that_times_out_stays_in_flight_and_a_query_settles_it_without_a_second_order(
    tmp_path: Path,
) -> None:
    client = FakeClient(holdings={"600000": (1000, "10.50")})

    class Marks:
        def last_price(self, instrument: str) -> Decimal | None:
            return Decimal("10.50")

    adopt_stopped(
        tmp_path, "the account already holds SH600000"
    )  # an empty journal must not adopt it silently
    journal = Journal(tmp_path / "journal.sqlite")
    with served(client, tmp_path / "gateway.sqlite") as gw:
        broker = adapter(gw.url, timeout=0.5)
        assert isinstance(broker, Broker)
        oms = OrderManager("s1", journal, broker, RiskEngine(RiskPolicySpec()), Marks(), retry=FAST_RETRY)

        async def life() -> None:
            await recover(oms)
            assert oms.ready and oms.state.position_quantities() == {"SH600000": Decimal(1000)}
            client.answer_delay = 1.5  # placed at once, answered after the adapter gave up
            out = await oms.submit(OrderIntent("SH600000", Side.BUY, Decimal(100), "sig-1", "SH600000"))
            assert out.order.status is OrderStatus.SUBMITTED  # unknown outcome: in flight, not resent
            client.answer_delay = 0.0
            await asyncio.sleep(1.2)  # the client answers the gateway; the adapter has long given up
            await poll(oms)
            order_ = oms.state.orders[out.order.client_order_id]
            assert order_.status is OrderStatus.ACCEPTED and order_.broker_order_id == "1001"
            client.fill("1001", 40, "10.51")
            client.fill("1001", 60, "10.52")
            await poll(oms)
            assert order_.status is OrderStatus.FILLED and order_.filled_quantity == 100
            assert oms.state.position_quantities() == {"SH600000": Decimal(1100)}
            again = await oms.submit(OrderIntent("SH600000", Side.BUY, Decimal(100), "sig-1", "SH600000"))
            assert again.duplicate
            broker.close()

        try:
            asyncio.run(life())
        finally:
            journal.close()
    assert client.placed == 1 and not oms.anomalies


def test_a_raw_timeout_after_submit_is_broker_timeout_and_the_query_finds_the_order(tmp_path: Path) -> None:
    client = FakeClient()
    client.answer_delay = 1.0
    with served(client, tmp_path / "g.sqlite") as gw:

        async def go() -> Any:
            broker = adapter(gw.url, timeout=0.3)
            try:
                with pytest.raises(BrokerTimeout, match="no answer"):
                    await broker.submit(order("kq-slow"))
                await asyncio.sleep(0.9)
                return await broker.get_order("kq-slow")
            finally:
                broker.close()

        report = asyncio.run(go())
    assert report is not None and report.status is OrderStatus.ACCEPTED and client.placed == 1


def test_an_unreachable_gateway_is_disconnected(tmp_path: Path) -> None:
    with served(FakeClient(), tmp_path / "g.sqlite") as gw:
        url = gw.url  # nothing listens there once the block ends
    from kubequant.workloads.trading.adapters.base import BrokerDisconnected

    broker = adapter(url)

    async def go() -> None:
        try:
            with pytest.raises(BrokerDisconnected, match="cannot reach the gateway"):
                await broker.submit(order("kq-x"))
            assert not broker.is_connected()
        finally:
            broker.close()

    asyncio.run(go())


# --- the capability table -------------------------------------------------------------------------
def test_each_adapter_declares_its_row_of_the_table() -> None:
    from kubequant.workloads.trading.adapters.alpaca.broker import AlpacaBroker
    from kubequant.workloads.trading.adapters.paper.broker import PaperBroker

    classes: dict[str, Any] = {"paper": PaperBroker, "alpaca": AlpacaBroker, "gateway": GatewayBroker}
    try:
        from kubequant.workloads.trading.adapters.xueqiu.broker import XueqiuBroker

        classes["xueqiu"] = XueqiuBroker
    except ImportError:
        pass
    for name, cls in classes.items():
        assert cls.capabilities == capabilities_of(name), name
    assert set(CAPABILITIES) >= {t.value for t in BrokerType}, "every broker type needs a row"


def test_the_docs_page_shows_the_table_of_the_code() -> None:
    page = (REPO / "docs" / "brokers" / "capabilities.md").read_text()
    assert broker_capabilities.update_docs(page) == page, (
        "docs/brokers/capabilities.md drifted; run `python -m kubequant.api.broker_capabilities`"
    )
    assert "| Short selling | yes | yes |" in broker_capabilities.render_markdown()


def test_a_margin_account_on_a_venue_without_short_selling_is_refused_naming_the_field() -> None:
    with pytest.raises(pydantic.ValidationError) as err:
        session(accountType="margin")
    assert "broker.accountType" in str(err.value) and "set broker.accountType cash" in str(err.value)
    assert session(accountType="cash").spec.broker.account_type == "cash"


def test_a_venue_that_lists_nothing_needs_the_sessions_instruments() -> None:
    spec = session().spec
    assert refusals(
        spec.model_copy(update={"universe": spec.universe.model_copy(update={"instruments": None})})
    ) == [
        (
            "universe.instruments",
            "broker type gateway does not list what the account may trade; list the instruments in "
            "universe.instruments (e.g. [SH600519, SZ000001])",
        )
    ]
    with pytest.raises(pydantic.ValidationError, match=r"universe\.instruments"):
        LiveTradingSession.model_validate(
            {
                "apiVersion": "kubequant.io/v1alpha1",
                "kind": "LiveTradingSession",
                "metadata": {"name": "s"},
                "spec": {
                    "account": ACCOUNT,
                    "riskPolicyRef": {"name": "p"},
                    "broker": {
                        "type": "gateway",
                        "credentialsSecretRef": {"name": "g"},
                        "endpoint": "https://h:1",
                    },
                },
            }
        )


def test_a_gateway_without_its_url_is_refused_naming_the_field() -> None:
    with pytest.raises(pydantic.ValidationError) as err:
        session(endpoint=None)
    assert "broker.endpoint" in str(err.value) and "kubequant gateway" in str(err.value)


def test_a_scheduled_strategy_on_a_venue_without_market_orders_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = session().spec.model_copy(
        update={"strategy": session().spec.strategy.model_copy(update={"scheduled": object()})}
    )
    assert refusals(spec) == []
    limit_only = dataclasses.replace(CAPABILITIES["gateway"], market_orders=False)
    monkeypatch.setitem(CAPABILITIES, "gateway", limit_only)
    assert [f for f, _ in refusals(spec)] == ["strategy.scheduled"]
    assert "send limit prices through strategy.signalApi" in refusals(spec)[0][1]


def test_limit_prices_to_a_market_only_venue_have_a_message_naming_the_field() -> None:
    assert limit_price_refusal("gateway") is None
    message = limit_price_refusal("xueqiu")
    assert message is not None and message.startswith("limitPrices:") and "market orders only" in message


def test_the_crd_rules_follow_the_table() -> None:
    from kubequant.api.live import LiveTradingSessionSpec

    cels = [r.cel for r in LiveTradingSessionSpec.__rules__]
    short = [t for t, c in CAPABILITIES.items() if not c.short_selling]
    assert any(cel.endswith(f" in {short})") and "accountType == 'margin'" in cel for cel in cels)


# --- the factory and the credentials --------------------------------------------------------------
def test_the_factory_builds_the_gateway_adapter_and_its_prices(tmp_path: Path) -> None:
    client = FakeClient(holdings={"600000": (1000, "10.50")})
    secret = tmp_path / "gw"
    secret.mkdir()
    (secret / "token").write_text(TOKEN + "\n")
    with served(client, tmp_path / "g.sqlite") as gw:
        lts = session(endpoint=gw.url)
        broker = build_broker(lts, market=None, record_path=tmp_path / "unused", secrets_dir=secret)
        prices = build_price_source(lts, broker, secrets_dir=secret)
        assert isinstance(broker, GatewayBroker) and isinstance(prices, GatewayPrices)

        async def go() -> None:
            try:
                assert (await broker.connect(ACCOUNT)).equity == Decimal("110500.00")
                assert await broker.listed_instruments() == {"SH600000", "SZ000001"}
                assert prices.last_price("SH600000") is None  # nothing fetched yet: it is now watched
                assert await prices.refresh() == 1
                assert prices.last_price("SH600000") == Decimal("10.5")
            finally:
                prices.close()
                broker.close()

        asyncio.run(go())


def test_missing_credentials_name_the_secret_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_credentials(tmp_path, "gw")
    assert "Secret gw" in str(err.value.where) and "kubectl create secret generic gw" in err.value.one_line()
    (tmp_path / "tls.crt").write_text("x")
    with pytest.raises(ConfigError) as err:
        load_credentials(tmp_path, "gw")
    assert str(err.value.where).endswith("key tls.key")
    (tmp_path / "tls.key").write_text("x")
    (tmp_path / "token").write_text(TOKEN)
    creds = load_credentials(tmp_path, "gw")
    assert creds.token == TOKEN and creds.cert == tmp_path / "tls.crt" and TOKEN not in repr(creds)


def test_the_cli_refuses_to_serve_without_authentication_and_documents_itself(tmp_path: Path) -> None:
    exe = [sys.executable, "-m", "kubequant.cli"]
    done = subprocess.run([*exe, "gateway", "--help"], capture_output=True, text=True, timeout=120)
    assert (
        done.returncode == 0
        and "--client [universal|miniqmt]" in done.stdout
        and "--client-ca" in done.stdout
    )
    done = subprocess.run(
        [
            *exe,
            "gateway",
            "--client",
            "universal",
            "--account",
            ACCOUNT,
            "--state",
            str(tmp_path / "g.sqlite"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "--token-file" in done.stderr and "client authentication" in done.stderr
