"""The broker a LiveTradingSession names: the built-in paper broker, or a real venue's adapter."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubequant.api.live import BrokerType, LiveTradingSession
from kubequant.errors import ConfigError
from kubequant.workloads.trading.adapters.base import Broker

if TYPE_CHECKING:
    from kubequant.workloads.trading.adapters.paper.market import QlibMarket
    from kubequant.workloads.trading.execution.oms import PriceSource


def build_broker(
    session: LiveTradingSession,
    *,
    market: QlibMarket | None,
    record_path: Path,
    secrets_dir: Path | None,
) -> Broker:
    """The session's broker: a PaperBroker over ``market`` (its record at ``record_path``) or an AlpacaBroker.

    ``secrets_dir`` is where the ``spec.broker.credentialsSecretRef`` Secret is mounted (one file per
    key); without it, credentials come from the environment. alpaca-py is imported only for alpaca.
    """
    spec = session.spec
    if spec.broker.type == BrokerType.PAPER:
        from kubequant.workloads.trading.adapters.paper.broker import PaperBroker

        if market is None:
            raise ConfigError(
                "the paper broker needs the market's bars", where="spec.data", fix="set spec.data"
            )
        from kubequant.workloads.trading.risk.ashare import AShareRules

        # The venue enforces the same A-share rules as the OMS (region cn), as the live account would.
        return PaperBroker(
            market,
            record_path,
            starting_cash=Decimal(repr(spec.starting_cash)),
            ashare_rules=AShareRules.for_session(spec),
        )
    if spec.broker.type == BrokerType.ALPACA:
        _require_alpaca_py()
        from kubequant.workloads.trading.adapters.alpaca.broker import AlpacaBroker

        return AlpacaBroker.from_session(session, secrets_dir)
    if spec.broker.type == BrokerType.GATEWAY:
        from kubequant.workloads.trading.adapters.gateway.broker import GatewayBroker

        return GatewayBroker.from_session(session, secrets_dir)
    if spec.broker.type == BrokerType.XUEQIU:
        _require_easytrader()
        from kubequant.workloads.trading.adapters.xueqiu.broker import XueqiuBroker

        return XueqiuBroker.from_session(session, secrets_dir)
    raise ConfigError(f"no adapter for broker type {spec.broker.type}", where="spec.broker.type")


def build_price_source(
    session: LiveTradingSession, broker: Broker, *, secrets_dir: Path | None, **options: Any
) -> PriceSource:
    """Where the session's last prices come from: the paper broker's bars, or Alpaca's market data API.

    ``options`` go to AlpacaPrices (refresh_seconds, max_age, timeout).
    """
    if session.spec.broker.type == BrokerType.PAPER:
        return broker  # type: ignore[return-value]  # the PaperBroker prices its own bars
    if session.spec.broker.type == BrokerType.ALPACA:
        _require_alpaca_py()
        from kubequant.workloads.trading.adapters.alpaca.market import AlpacaPrices

        return AlpacaPrices.from_session(session, secrets_dir, **options)
    if session.spec.broker.type == BrokerType.GATEWAY:
        from kubequant.workloads.trading.adapters.gateway.broker import GatewayBroker, GatewayPrices

        assert isinstance(broker, GatewayBroker)
        return GatewayPrices(broker, symbols=session.spec.universe.instruments or ())
    if session.spec.broker.type == BrokerType.XUEQIU:
        from kubequant.workloads.trading.adapters.xueqiu.broker import XueqiuBroker
        from kubequant.workloads.trading.adapters.xueqiu.market import XueqiuPrices

        assert isinstance(broker, XueqiuBroker)
        return XueqiuPrices.for_broker(broker, **options)
    raise ConfigError(f"no price source for broker type {session.spec.broker.type}", where="spec.broker.type")


def _require_alpaca_py() -> None:
    try:
        import alpaca.trading.client  # noqa: F401  (the optional extra)
    except ImportError as err:
        raise ConfigError(
            f"broker type alpaca needs alpaca-py, which is not installed ({err})",
            where="spec.broker.type",
            fix="pip install 'kubequant[alpaca]'",
        ) from err


def _require_easytrader() -> None:
    try:
        import easytrader.xqtrader  # noqa: F401  (the optional extra)
    except ImportError as err:
        raise ConfigError(
            f"broker type xueqiu needs easytrader, which is not installed ({err})",
            where="spec.broker.type",
            fix="pip install 'kubequant[cn]'",
        ) from err
