"""ImpactExchange on a small bundle: a known order fills at exactly the formula's price and cost,
a zero model is qlib's Exchange, and a Backtest with impact earns less and pays more."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from backtest_manifests import file_backtest
from qlib_session import use_bundle

from kubequant.api import Backtest
from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

pytestmark = [pytest.mark.integration]

SAMPLE = SampleSpec(instruments=20, start="2020-01-01", end="2020-12-31")
PERIOD = ("2020-07-01", "2020-12-30")
COSTS = {
    "freq": "day",
    "deal_price": "close",
    "open_cost": 0.0005,
    "close_cost": 0.0015,
    "min_cost": 5.0,
    "limit_threshold": 0.095,
}
IMPACT = {"permanent": 0.2, "temporary": 0.8, "beta": 0.6, "slippage_bps": 5.0, "max_participation": 0.05}
WINDOW = 20


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("impact") / "bundle"
    write_sample_bundle(path, SAMPLE)
    return path


@pytest.fixture
def qlib_on(bundle: Path) -> Path:
    use_bundle(bundle)
    return bundle


def _bar(day: pd.Timestamp) -> tuple[pd.Timestamp, pd.Timestamp]:
    return day, day + pd.Timedelta(days=1) - pd.Timedelta(seconds=1)


def _fields(code: str, day: pd.Timestamp) -> dict[str, float]:
    from qlib.data import D

    row = D.features([code], ["$close", "$volume", "$factor"], day, day).iloc[0]
    return {k.lstrip("$"): float(v) for k, v in row.items()}


def _sigma(code: str, day: pd.Timestamp) -> float:
    """σ by hand: sample std of the 20 close-to-close returns of the 21 trading days before ``day``."""
    from qlib.data import D

    days = [d for d in D.calendar(start_time=SAMPLE.start, end_time=day) if d < day][-(WINDOW + 1) :]
    closes = D.features([code], ["$close"], days[0], days[-1])["$close"].droplevel("instrument")
    closes = closes.reindex(pd.DatetimeIndex(days)).to_numpy(dtype=np.float64)
    assert np.isfinite(closes).all(), "pick a day with a full window of closes"
    returns = closes[1:] / closes[:-1] - 1.0
    return float(np.std(returns, ddof=1))


def _tradable_day(exchange: Any, code: str, after: str) -> pd.Timestamp:
    from qlib.data import D

    for day in D.calendar(start_time=after, end_time=PERIOD[1]):
        start, end = _bar(day)
        if exchange.is_stock_tradable(code, start, end):
            days = [d for d in D.calendar(start_time=SAMPLE.start, end_time=day) if d < day][-(WINDOW + 1) :]
            closes = D.features([code], ["$close"], days[0], days[-1])["$close"]
            if len(closes) == WINDOW + 1 and closes.notna().all():
                return pd.Timestamp(day)
    raise AssertionError(f"{code} has no tradable day with full history")


def _impact_exchange(**impact: Any) -> Any:
    from kubequant.workloads.backtest.impact_exchange import ImpactExchange

    return ImpactExchange(
        impact={**impact, "volatility_window": WINDOW}, start_time=PERIOD[0], end_time=PERIOD[1], **COSTS
    )


def test_known_buy_is_capped_and_fills_at_the_formula(qlib_on: Path) -> None:
    from qlib.backtest.decision import Order

    exchange = _impact_exchange(**IMPACT)
    code = "SYN0003"
    day = _tradable_day(exchange, code, "2020-09-01")
    bar = _fields(code, day)
    sigma = _sigma(code, day)
    # Ask for 10% of the day's volume; the cap allows 5%, rounded down to whole lots of 100 shares.
    start, end = _bar(day)
    order = Order(code, amount=0.10 * bar["volume"], direction=Order.BUY, start_time=start, end_time=end)
    trade_val, trade_cost, trade_price = exchange.deal_order(order)

    q = (0.05 * bar["volume"] * bar["factor"] + 0.1) // 100 * 100 / bar["factor"]
    p = q / bar["volume"]
    f = 5.0 / 1e4 + 0.8 * sigma * p**0.6 + 0.2 * p
    fill = bar["close"] * (1 + f)
    assert order.deal_amount == pytest.approx(q, rel=1e-12)
    assert 0.049 < p <= 0.05
    assert exchange.get_sigma(code, start, end) == pytest.approx(sigma, rel=1e-9)
    assert trade_price == pytest.approx(fill, rel=1e-12)
    assert trade_val == pytest.approx(q * fill, rel=1e-12)
    assert trade_cost == pytest.approx(max(q * fill * 0.0005, 5.0), rel=1e-12)
    # The impact in currency is |fill − P|·q = P·f·q.
    assert (trade_price - bar["close"]) * order.deal_amount == pytest.approx(bar["close"] * f * q, rel=1e-9)


def test_known_sell_from_a_position_fills_below_the_close(qlib_on: Path) -> None:
    from qlib.backtest.decision import Order
    from qlib.backtest.position import Position

    exchange = _impact_exchange(**IMPACT)
    code = "SYN0007"
    day = _tradable_day(exchange, code, "2020-10-08")
    bar = _fields(code, day)
    sigma = _sigma(code, day)
    held = 20_000 / bar["factor"]  # 20,000 real shares, well under the cap
    position = Position(cash=1_000_000.0, position_dict={code: {"amount": held, "price": bar["close"]}})
    start, end = _bar(day)
    order = Order(code, amount=held, direction=Order.SELL, start_time=start, end_time=end)
    trade_val, trade_cost, trade_price = exchange.deal_order(order, position=position)

    p = held / bar["volume"]
    fill = bar["close"] * (1 - (5.0 / 1e4 + 0.8 * sigma * p**0.6 + 0.2 * p))
    assert order.deal_amount == pytest.approx(held, rel=1e-12)  # selling everything: no rounding
    assert trade_price == pytest.approx(fill, rel=1e-12)
    assert trade_val == pytest.approx(held * fill, rel=1e-12)
    assert trade_cost == pytest.approx(max(held * fill * 0.0015, 5.0), rel=1e-12)
    assert position.get_cash() == pytest.approx(1_000_000.0 + held * fill - trade_cost, rel=1e-12)
    assert not position.check_stock(code)


def test_zero_model_deals_exactly_like_qlibs_exchange(qlib_on: Path) -> None:
    from qlib.backtest.decision import Order
    from qlib.backtest.exchange import Exchange
    from qlib.backtest.position import Position
    from qlib.data import D

    plain = Exchange(start_time=PERIOD[0], end_time=PERIOD[1], **COSTS)
    zero = _impact_exchange()
    days = D.calendar(start_time="2020-08-03", end_time="2020-08-14")
    codes = [f"SYN{i:04d}" for i in range(1, 21)]
    compared = 0
    for day in days:
        start, end = _bar(pd.Timestamp(day))
        for i, code in enumerate(codes):
            for direction, amount in ((Order.BUY, 10_000.0 + 137 * i), (Order.SELL, 5_000.0 + 61 * i)):
                results = []
                for exchange in (plain, zero):
                    # A small account so some buys are cut by cash, and some sells leave a remainder.
                    position = Position(
                        cash=90_000.0, position_dict={code: {"amount": 7_000.0, "price": 10.0}}
                    )
                    order = Order(code, amount=amount, direction=direction, start_time=start, end_time=end)
                    out = exchange.deal_order(order, position=position)
                    results.append((out, order.deal_amount, position.get_cash()))
                # (0, 0, nan) for an untradable bar: compare with NaN equal to itself.
                np.testing.assert_array_equal(
                    np.array([*results[0][0], *results[0][1:]], dtype=float),
                    np.array([*results[1][0], *results[1][1:]], dtype=float),
                    err_msg=f"{code} {day} {direction}",
                )
                compared += results[0][1] > 0
    assert compared > 200


def _run(bundle: Path, signal: Path, report: Path, impact: dict[str, Any] | None) -> Any:
    from kubequant.workloads.backtest.runner import run_backtest

    doc = file_backtest(bundle, signal, name="impact" if impact is not None else "plain")
    doc["spec"]["period"] = {"start": PERIOD[0], "end": PERIOD[1]}
    doc["spec"]["strategy"] = {"topkDropout": {"topk": 5, "nDrop": 2}}
    if impact is not None:
        doc["spec"]["exchange"]["impact"] = impact
    with contextlib.redirect_stdout(sys.stderr):
        return run_backtest(Backtest.model_validate(doc), report)


@pytest.fixture(scope="module")
def signal_file(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    days = [d for d in (bundle / "calendars" / "day.txt").read_text().split() if PERIOD[0] <= d <= PERIOD[1]]
    codes = [line.split("\t")[0] for line in (bundle / "instruments" / "all.txt").read_text().splitlines()]
    rng = np.random.default_rng(11)
    rows = [(d, c, float(rng.normal())) for d in days for c in codes]
    path = tmp_path_factory.mktemp("signal") / "scores.csv"
    pd.DataFrame(rows, columns=["datetime", "instrument", "score"]).to_csv(path, index=False)
    return path


def _all_in_cost_bps(report: Path, bundle: Path) -> float:
    """Fees plus impact (|price − close|·amount) over traded value, from the report's trades."""
    from qlib.data import D

    use_bundle(bundle)
    trades = pd.read_csv(report / "trades.csv", parse_dates=["datetime"])
    close = D.features(sorted(set(trades["instrument"])), ["$close"], PERIOD[0], PERIOD[1])["$close"]
    arrival = close.reindex(pd.MultiIndex.from_frame(trades[["instrument", "datetime"]])).to_numpy()
    impact = np.abs(trades["price"].to_numpy() - arrival) * trades["amount"].to_numpy()
    return float((trades["cost"].sum() + impact.sum()) / trades["value"].sum() * 1e4)


@pytest.mark.slow
def test_backtest_with_impact_earns_less_and_costs_more(
    bundle: Path, signal_file: Path, tmp_path: Path
) -> None:
    plain = _run(bundle, signal_file, tmp_path / "plain", None)
    zero = _run(bundle, signal_file, tmp_path / "zero", {})
    impact = _run(
        bundle,
        signal_file,
        tmp_path / "impact",
        {"permanent": 0.1, "temporary": 1.0, "slippageBps": 10, "maxParticipation": 0.1},
    )

    # A model of zeros is qlib's exchange: the same daily report and the same trades, to the bit.
    for name in ("report.csv", "trades.csv"):
        pd.testing.assert_frame_equal(
            pd.read_csv(zero.report_dir / name), pd.read_csv(plain.report_dir / name), check_exact=True
        )

    assert impact.results.trades > 50
    assert impact.results.annualized_return < plain.results.annualized_return
    assert impact.results.total_return < plain.results.total_return

    # Every fill's price carries its impact: buys above the close, sells below.
    trades = pd.read_csv(impact.report_dir / "trades.csv", parse_dates=["datetime"])
    plain_trades = pd.read_csv(plain.report_dir / "trades.csv", parse_dates=["datetime"])
    use_bundle(bundle)
    from qlib.data import D

    close = D.features(sorted(set(trades["instrument"])), ["$close"], PERIOD[0], PERIOD[1])["$close"]
    arrival = close.reindex(pd.MultiIndex.from_frame(trades[["instrument", "datetime"]])).to_numpy()
    buys = (trades["side"] == "buy").to_numpy()
    assert (trades["price"].to_numpy()[buys] > arrival[buys]).all()
    assert (trades["price"].to_numpy()[~buys] < arrival[~buys]).all()
    assert plain_trades["price"].to_numpy() == pytest.approx(
        close.reindex(pd.MultiIndex.from_frame(plain_trades[["instrument", "datetime"]])).to_numpy(), rel=1e-6
    )

    # Fees plus impact per traded value: higher with impact. (The headline avgTradeCostBps counts
    # the fees only; the impact is in the fill prices, hence in the return.)
    with_impact = _all_in_cost_bps(impact.report_dir, bundle)
    without = _all_in_cost_bps(plain.report_dir, bundle)
    assert without == pytest.approx(plain.results.avg_trade_cost_bps, rel=1e-3)
    assert with_impact > without + 10  # at least the 10 bps of slippage on top
