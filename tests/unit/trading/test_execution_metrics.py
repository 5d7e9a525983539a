"""The execution-quality and book metrics follow the orders and the account (issue 11: fills per order,
shortfall, gross exposure, largest concentration)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY

from kubequant.workloads.trading.execution.reconcile import poll
from kubequant.workloads.trading.execution.recovery import recover
from kubequant.workloads.trading.model.domain import OrderIntent, Side
from kubequant.workloads.trading.model.orders import OrderStatus
from kubequant.workloads.trading.node import metrics

pytestmark = pytest.mark.unit


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


BUCKETS = metrics.FILL_SHORTFALL_BPS._upper_bounds


def bucket(value: float) -> tuple[float, float]:
    """Cumulative counts of the smallest bucket holding ``value`` and of the one below it."""
    i = next(i for i, b in enumerate(BUCKETS) if value <= b)
    at = sample("kubequant_fill_shortfall_bps_bucket", le=str(BUCKETS[i]))
    below = sample("kubequant_fill_shortfall_bps_bucket", le=str(BUCKETS[i - 1])) if i else 0.0
    return at, below


_seen: dict[float, tuple[float, float]] = {}


def observed_in_bucket_of(value: float) -> float:
    """Observations in ``value``'s bucket since ``_seen[value]`` was taken (since the start without it)."""
    at, below = bucket(value)
    at0, below0 = _seen.get(value, (0.0, 0.0))
    return (at - at0) - (below - below0)


def test_a_fill_is_observed_against_the_orders_reference_price_and_the_book_against_equity(
    open_session,
) -> None:  # type: ignore[no-untyped-def]
    s = open_session()
    asyncio.run(recover(s.oms))
    fills_before = sample("kubequant_fill_shortfall_bps_count")
    orders_before = sample("kubequant_fills_per_order_count")
    out = asyncio.run(s.oms.submit(OrderIntent("SYN0001", Side.BUY, Decimal(300), "sig-m", "leg")))
    assert out.accepted
    reference = out.order.reference_price
    assert reference is not None and reference > 0
    s.broker.advance()
    asyncio.run(poll(s.oms))
    order = s.oms.state.orders[out.order.client_order_id]
    assert order.status is OrderStatus.FILLED and len(order.fills) == 1
    fill = next(iter(order.fills.values()))
    assert sample("kubequant_fill_shortfall_bps_count") == fills_before + 1
    want = float((fill.price - reference) / reference) * 10_000  # a buy above the reference is a cost
    assert observed_in_bucket_of(want) >= 1
    assert sample("kubequant_fills_per_order_count") == orders_before + 1
    # The book: 300 shares at the last close over the account's equity.
    equity = s.oms.state.account.equity  # type: ignore[union-attr]
    value = float(300 * s.broker.last_price("SYN0001"))  # type: ignore[operator]
    assert sample("kubequant_gross_exposure_ratio") == pytest.approx(value / float(equity))
    assert sample("kubequant_largest_concentration_ratio") == pytest.approx(value / float(equity))
    assert sample("kubequant_book_unpriced_positions") == 0


def test_a_sell_below_its_reference_is_a_cost_and_no_reference_observes_nothing() -> None:
    # (The histogram has negative buckets, so the client exports no _sum: buckets and count only.)
    count = sample("kubequant_fill_shortfall_bps_count")
    _seen[80.0], _seen[-80.0] = bucket(80.0), bucket(-80.0)
    metrics.record_fill(-1, Decimal("9.92"), Decimal("10"))  # sold 0.8 % below: +80 bps of cost
    metrics.record_fill(1, Decimal("10"), None)
    assert observed_in_bucket_of(80.0) == 1 and observed_in_bucket_of(-80.0) == 0
    assert sample("kubequant_fill_shortfall_bps_count") - count == 1


def test_the_book_counts_what_it_cannot_price_and_values_shorts_by_their_size() -> None:
    prices = {"A": Decimal(10), "B": Decimal(5)}
    metrics.record_book({"A": Decimal(100), "B": Decimal(-300), "C": Decimal(7)}, prices.get, Decimal(10_000))
    assert sample("kubequant_gross_exposure_ratio") == pytest.approx((1000 + 1500) / 10_000)
    assert sample("kubequant_largest_concentration_ratio") == pytest.approx(1500 / 10_000)
    assert sample("kubequant_book_unpriced_positions") == 1


SESSION = """\
apiVersion: kubequant.io/v1alpha1
kind: LiveTradingSession
metadata: {{name: data-age}}
spec:
  account: paper-age
  riskPolicyRef: {{name: data-age}}
  data: {{path: {bundle}}}
  startingCash: 1000000
  replay: {{period: "2021-01-04..2021-03-31"}}
---
apiVersion: kubequant.io/v1alpha1
kind: RiskPolicy
metadata: {{name: data-age}}
spec:
  tradingWindows: [{{weekdays: [Sat], start: "00:00", end: "00:01"}}]
"""


def test_each_tick_reports_the_newest_bars_time_and_whether_the_window_is_open(bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import datetime as dt
    from zoneinfo import ZoneInfo

    from kubequant.workloads.trading.node.runtime import RuntimeConfig, TradingRuntime, prepare, read_session

    path = tmp_path / "session.yaml"
    path.write_text(SESSION.format(bundle=bundle))
    session, _ = read_session(path)
    cfg = RuntimeConfig(session=session, policy_path=path, state_dir=tmp_path / "state")
    runtime = TradingRuntime(cfg, prepare(cfg))

    async def main() -> None:
        await runtime.start()
        runtime.broker.advance()  # type: ignore[attr-defined]
        runtime.broker.advance()  # type: ignore[attr-defined]
        await runtime.tick()

    try:
        asyncio.run(main())
        broker = runtime.broker
        bar = broker.market.bar_time(broker.bar - 1).to_pydatetime()  # type: ignore[attr-defined]
        want = bar.replace(tzinfo=ZoneInfo(session.spec.timezone)).timestamp()
        assert sample("kubequant_last_bar_timestamp_seconds") == want
        assert dt.datetime.fromtimestamp(want, dt.UTC).date() <= dt.date(2021, 1, 8)
        # The policy's only window is a minute on Saturdays: closed now (unless it is that minute).
        assert sample("kubequant_trading_window_open") == float(
            runtime.risk.in_trading_window(runtime.oms.clock.now())
        )
    finally:
        runtime.close()
