"""Fixtures of the trading tests: a tiny qlib market, and a factory of OMS + paper broker + journal."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from kubequant.api.backtest import Exchange
from kubequant.api.risk import RiskPolicySpec
from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle
from kubequant.workloads.trading.adapters.base import BrokerOrder, RetryPolicy
from kubequant.workloads.trading.adapters.paper.broker import PaperBroker
from kubequant.workloads.trading.adapters.paper.market import QlibMarket
from kubequant.workloads.trading.execution.journal import Journal
from kubequant.workloads.trading.execution.oms import OrderManager
from kubequant.workloads.trading.risk.engine import RiskEngine

SAMPLE = SampleSpec(instruments=6, start="2021-01-01", end="2021-03-31", seed=3)
FAST_RETRY = RetryPolicy(attempts=3, first_delay=0.0, max_delay=0.0)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic stocks for one quarter."""
    out = tmp_path_factory.mktemp("trading") / "bundle"
    write_sample_bundle(out, SAMPLE)
    return out


@pytest.fixture(scope="session")
def market(bundle: Path) -> QlibMarket:
    """The bundle's bars in qlib's Exchange with the default costs."""
    import qlib

    qlib.init(provider_uri=str(bundle), region="cn", kernels=1, logging_level=logging.WARNING)
    # The Exchange keeps the bars in memory: later qlib.init calls by other tests do not affect it.
    return QlibMarket.load(Exchange(), "all", SAMPLE.start, SAMPLE.end)


class SpyBroker(PaperBroker):
    """The paper broker, counting the targeted queries the OMS makes."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.get_order_calls: list[str] = []
        self.repeat_fills = False

    async def get_order(self, client_order_id: str) -> BrokerOrder | None:
        self.get_order_calls.append(client_order_id)
        return await super().get_order(client_order_id)

    async def fills_since(self, cursor: str | None):  # type: ignore[no-untyped-def]
        # A venue that re-sends fills it already reported (at-least-once delivery).
        return await super().fills_since(None if self.repeat_fills else cursor)


@dataclass
class Session:
    """One life of a session: the journal, the broker and the OMS over files that outlive it."""

    journal: Journal
    broker: SpyBroker
    oms: OrderManager

    def close(self) -> None:
        self.journal.close()
        self.broker.close()


SessionFactory = Callable[..., Session]


@pytest.fixture
def open_session(tmp_path: Path, market: QlibMarket) -> Iterator[SessionFactory]:
    """Open (or re-open, as after a crash) the session stored under ``tmp_path``."""
    opened: list[Session] = []

    def factory(policy: RiskPolicySpec | None = None, kill_switch: bool = False) -> Session:
        journal = Journal(tmp_path / "journal.sqlite")
        broker = SpyBroker(market, tmp_path / "broker.sqlite", starting_cash=Decimal(1_000_000))
        risk = RiskEngine(policy or RiskPolicySpec(), kill_switch=kill_switch)
        oms = OrderManager("s1", journal, broker, risk, broker, retry=FAST_RETRY)
        session = Session(journal, broker, oms)
        opened.append(session)
        return session

    yield factory
    for s in opened:
        try:
            s.close()
        except Exception:
            pass
