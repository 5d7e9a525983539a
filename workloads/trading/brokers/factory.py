"""The broker a LiveTradingSession names: the built-in paper broker, or a real venue's adapter."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from kubequant.api.live import BrokerType, LiveTradingSession
from kubequant.errors import ConfigError
from kubequant.workloads.trading.brokers.base import Broker

if TYPE_CHECKING:
    from kubequant.workloads.trading.brokers.qlib_market import QlibMarket


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
        from kubequant.workloads.trading.brokers.paper import PaperBroker

        if market is None:
            raise ConfigError(
                "the paper broker needs the market's bars", where="spec.data", fix="set spec.data"
            )
        return PaperBroker(market, record_path, starting_cash=Decimal(repr(spec.starting_cash)))
    if spec.broker.type == BrokerType.ALPACA:
        try:
            import alpaca.trading.client  # noqa: F401  (the optional extra)
        except ImportError as err:
            raise ConfigError(
                f"broker type alpaca needs alpaca-py, which is not installed ({err})",
                where="spec.broker.type",
                fix="pip install 'kubequant[alpaca]'",
            ) from err
        from kubequant.workloads.trading.brokers.alpaca import AlpacaBroker

        return AlpacaBroker.from_session(session, secrets_dir)
    raise ConfigError(f"no adapter for broker type {spec.broker.type}", where="spec.broker.type")
