"""The paper broker fills at the bar's price with the Backtest's cost rules, and keeps its own record."""

from __future__ import annotations

import asyncio
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import numpy as np
import pytest

from kubequant.api.backtest import BacktestSpec, Exchange
from kubequant.workloads.backtest.impact_exchange import ImpactExchange
from kubequant.workloads.backtest.qlib_config import exchange_kwargs
from kubequant.workloads.data.qlib_format import read_feature
from kubequant.workloads.trading.adapters.base import BrokerDisconnected, DuplicateOrder, SubmitRequest
from kubequant.workloads.trading.adapters.paper.broker import PaperBroker
from kubequant.workloads.trading.adapters.paper.market import QlibMarket
from kubequant.workloads.trading.model.domain import Side
from kubequant.workloads.trading.model.orders import OrderStatus

pytestmark = pytest.mark.unit
CASH = Decimal(1_000_000)


def raw(bundle: Path, inst: str, field: str, bar: int) -> float:
    """A field of the bundle's bin files, read without qlib."""
    start, values = read_feature(bundle / "features" / inst.lower() / f"{field}.day.bin")
    return float(values[bar - start])


def cents(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.01"), ROUND_HALF_EVEN)


def trade(broker: PaperBroker, *orders: tuple[str, str, Side, int]) -> dict[str, OrderStatus]:
    for cid, inst, side, qty in orders:
        asyncio.run(broker.submit(SubmitRequest(cid, inst, side, Decimal(qty))))
    broker.advance()
    return {cid: asyncio.run(broker.get_order(cid)).status for cid, *_ in orders}  # type: ignore[union-attr]


def test_fills_at_the_close_with_the_backtest_costs(tmp_path: Path, market: QlibMarket, bundle: Path) -> None:
    broker = PaperBroker(market, tmp_path / "b.sqlite", starting_cash=CASH, start_bar=1)
    statuses = trade(broker, ("small", "SYN0001", Side.BUY, 300), ("big", "SYN0003", Side.BUY, 10_000))
    assert statuses == {"small": OrderStatus.FILLED, "big": OrderStatus.FILLED}
    small, big = broker.record_fills()
    close1, close3 = raw(bundle, "SYN0001", "close", 1), raw(bundle, "SYN0003", "close", 1)
    assert small.price == Decimal(repr(close1)).quantize(Decimal("0.0001"))
    # Exchange defaults of the API: open cost 0.05%, minimum 5 per trade.
    assert small.fee == Decimal("5.00")  # 300 x ~11.7 x 0.05% is below the minimum
    assert big.fee == cents(Decimal(repr(close3)) * 10_000 * Decimal("0.0005"))
    assert broker.record_positions() == {"SYN0001": 300, "SYN0003": 10_000}
    acct = asyncio.run(broker.account())
    assert acct.cash == CASH - sum(f.quantity * f.price + f.fee for f in (small, big))

    # A sell pays the close cost, and is clipped to what is held (qlib's rule); lots round down.
    statuses = trade(broker, ("sell", "SYN0003", Side.SELL, 12_000), ("odd", "SYN0005", Side.BUY, 250))
    sell, odd = broker.record_fills()[2:]
    assert sell.quantity == 10_000 and statuses["sell"] is OrderStatus.EXPIRED  # the rest of a day order
    assert sell.fee == cents(Decimal(repr(raw(bundle, "SYN0003", "close", 2))) * 10_000 * Decimal("0.0015"))
    assert odd.quantity == 200 and statuses["odd"] is OrderStatus.EXPIRED
    assert broker.record_positions() == {"SYN0001": 300, "SYN0005": 200}


def test_shares_and_prices_are_unadjusted_where_the_bundle_has_a_factor(
    tmp_path: Path, market: QlibMarket, bundle: Path
) -> None:
    start, factor = read_feature(bundle / "features" / "syn0004" / "factor.day.bin")
    bar = start + int(np.flatnonzero(factor == 1.5)[0]) + 1
    broker = PaperBroker(market, tmp_path / "b.sqlite", starting_cash=CASH, start_bar=bar)
    trade(broker, ("a", "SYN0004", Side.BUY, 300))
    (fill,) = broker.record_fills()
    assert fill.quantity == 300  # 200 adjusted units x factor 1.5
    adjusted_close = raw(bundle, "SYN0004", "close", bar)
    assert fill.price == Decimal(repr(adjusted_close / 1.5)).quantize(Decimal("0.0001"))


def test_untradable_bars_fill_nothing(tmp_path: Path, market: QlibMarket, bundle: Path) -> None:
    start, close = read_feature(bundle / "features" / "syn0002" / "close.day.bin")
    suspended = start + int(np.flatnonzero(np.isnan(close))[0])
    broker = PaperBroker(market, tmp_path / "b.sqlite", starting_cash=CASH, start_bar=suspended)
    assert trade(broker, ("s", "SYN0002", Side.BUY, 100)) == {"s": OrderStatus.EXPIRED}
    assert broker.record_fills() == []


def test_the_exchange_is_the_backtest_exchange_including_impact(bundle: Path) -> None:
    import qlib

    qlib.init(provider_uri=str(bundle), region="cn", kernels=1)
    spec = Exchange(impact={"slippage_bps": 50.0})
    market = QlibMarket.load(spec, "all", "2021-01-01", "2021-03-31")
    backtest = BacktestSpec.model_validate(
        {
            "period": {"start": "2021-01-04", "end": "2021-03-31"},
            "signal": {"file": {"path": "x"}},
            "exchange": spec,
        }
    )
    assert type(market.exchange) is ImpactExchange
    assert exchange_kwargs(backtest)["exchange"]["class"] == "ImpactExchange"
    deal = market.deal("SYN0001", Side.BUY, Decimal(300), None, CASH, Decimal(0), 1)
    close = raw(bundle, "SYN0001", "close", 1)
    assert deal is not None and deal.price == Decimal(repr(close * 1.005)).quantize(Decimal("0.0001"))
    sell = market.deal("SYN0001", Side.SELL, Decimal(300), None, CASH, Decimal(300), 1)
    assert sell is not None and sell.price == Decimal(repr(close * 0.995)).quantize(Decimal("0.0001"))


def test_duplicates_are_refused_and_recorded_and_faults_are_injectable(
    tmp_path: Path, market: QlibMarket
) -> None:
    broker = PaperBroker(market, tmp_path / "b.sqlite", starting_cash=CASH)
    req = SubmitRequest("c1", "SYN0001", Side.BUY, Decimal(100))
    asyncio.run(broker.submit(req))
    with pytest.raises(DuplicateOrder):
        asyncio.run(broker.submit(req))
    assert broker.record_submissions() == {"c1": 2} and len(asyncio.run(broker.open_orders())) == 1
    broker.faults.connected = False
    assert not broker.is_connected()
    with pytest.raises(BrokerDisconnected):
        asyncio.run(broker.positions())


def test_a_suspended_holding_keeps_its_last_close(tmp_path: Path, market: QlibMarket, bundle: Path) -> None:
    """Equity values a position with no bar (suspension) at its last close, not at zero."""
    found = None
    for inst in sorted(p.name.upper() for p in (bundle / "features").iterdir()):
        start, closes = read_feature(bundle / "features" / inst.lower() / "close.day.bin")
        for i in range(1, len(closes)):
            if np.isnan(closes[i]) and not np.isnan(closes[i - 1]) and start + i + 1 < len(market.calendar):
                found = (inst, start + i)
                break
        if found:
            break
    assert found, "the sample bundle has suspensions"
    inst, suspended_bar = found
    broker = PaperBroker(market, tmp_path / "b.sqlite", starting_cash=CASH, start_bar=suspended_bar + 1)
    broker.set_position(inst, Decimal(1000))
    assert market.close(inst, suspended_bar) is None
    before = market.close(inst, suspended_bar - 1)
    assert broker.last_price(inst) == before
    acct = asyncio.run(broker.account())
    assert acct.equity == CASH + 1000 * before  # type: ignore[operator]
