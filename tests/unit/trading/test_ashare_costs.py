"""Stamp duty on sells: one field (spec.exchange.stampDuty), charged alike by the Backtest and the paper broker."""

from __future__ import annotations

import asyncio
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import pytest

from kubequant.api.backtest import BacktestSpec, Exchange
from kubequant.workloads.backtest.qlib_config import exchange_kwargs
from kubequant.workloads.trading.adapters.base import SubmitRequest
from kubequant.workloads.trading.adapters.paper.broker import PaperBroker
from kubequant.workloads.trading.adapters.paper.market import QlibMarket, exchange_config
from kubequant.workloads.trading.model.domain import Side

pytestmark = pytest.mark.unit
SPEC = {
    "period": {"start": "2021-01-04", "end": "2021-03-31"},
    "signal": {"file": {"path": "s.pkl"}},
}


def backtest(**exchange: object) -> BacktestSpec:
    return BacktestSpec.model_validate(SPEC | {"exchange": exchange})


def test_stamp_duty_defaults_to_nothing_so_existing_costs_stay() -> None:
    assert Exchange().stamp_duty == 0.0
    assert exchange_kwargs(backtest())["close_cost"] == 0.0015
    kwargs = exchange_kwargs(backtest(closeCost=0.0005, stampDuty=0.0005))
    assert kwargs["close_cost"] == pytest.approx(0.001) and kwargs["open_cost"] == 0.0005
    # The paper market builds its exchange from the same function: the same close cost.
    paper = exchange_config(
        Exchange(close_cost=0.0005, stamp_duty=0.0005), ["SYN0001"], "2021-01-04", "2021-03-31"
    )
    assert paper["close_cost"] == kwargs["close_cost"]
    with pytest.raises(ValueError, match=r"stampDuty|stamp_duty"):
        Exchange.model_validate({"stampDuty": -0.1})


def test_the_paper_broker_charges_stamp_duty_on_sells_only(tmp_path: Path, market: QlibMarket) -> None:
    taxed = QlibMarket.load(
        Exchange(open_cost=0.0005, close_cost=0.0005, stamp_duty=0.0005, min_cost=0),
        "all",
        str(market.calendar[0].date()),
        str(market.calendar[-1].date()),
    )
    broker = PaperBroker(taxed, tmp_path / "b.sqlite", starting_cash=Decimal(10_000_000))
    asyncio.run(broker.submit(SubmitRequest("buy", "SYN0003", Side.BUY, Decimal(10_000))))
    broker.advance()
    asyncio.run(broker.submit(SubmitRequest("sell", "SYN0003", Side.SELL, Decimal(10_000))))
    broker.advance()
    buy, sell = broker.record_fills()

    def cents(x: Decimal) -> Decimal:
        return x.quantize(Decimal("0.01"), ROUND_HALF_EVEN)

    assert buy.fee == cents(buy.quantity * buy.price * Decimal("0.0005"))  # commission only
    assert sell.fee == cents(sell.quantity * sell.price * Decimal("0.0010"))  # commission + duty
    broker.close()
