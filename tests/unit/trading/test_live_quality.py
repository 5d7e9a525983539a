"""A live session's data quality and rolling rank IC: exact figures on bars and prices made by hand."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

import numpy as np
import pytest
from scipy.stats import spearmanr

from kubequant.workloads.trading.adapters.paper.market import QlibMarket
from kubequant.workloads.trading.node.live_quality import RollingRankIc, feed_quality, paper_bar_quality

D1, D2, D3, D4 = (dt.date(2024, 1, d) for d in (2, 3, 4, 5))


def test_paper_bar_quality_reads_the_exchange_the_fills_read(market: QlibMarket) -> None:
    t = market.bar_time(5)
    names = market.instruments
    got = paper_bar_quality(market.exchange, [*names, "NOPE01"], t)
    closes = [market.exchange.get_close(i, t, t) for i in names]
    missing_close = sum(c is None or math.isnan(c) for c in closes) + 1  # the unknown instrument
    assert got.instruments == len(names) + 1
    assert got.missing_ratio["close"] == pytest.approx(missing_close / (len(names) + 1))
    assert got.instruments_missing >= 1  # NOPE01 has neither close nor volume
    assert set(got.missing_ratio) == {"close", "volume"}


def test_feed_quality_counts_symbols_without_a_fresh_price() -> None:
    prices = {"AAPL": Decimal("190.1"), "MSFT": None, "SPY": Decimal("470")}
    got = feed_quality(prices.get, ["AAPL", "MSFT", "SPY", "NVDA"])
    assert got.missing_ratio == {"price": 0.5}
    assert got.instruments_missing == 2
    assert feed_quality(prices.get, []).missing_ratio == {"price": 0.0}


def test_rank_ic_of_a_day_is_spearman_of_its_scores_against_the_return_to_the_next_start() -> None:
    names = [f"S{i}" for i in range(8)]
    rng = np.random.default_rng(7)
    scores = {n: float(s) for n, s in zip(names, rng.normal(size=8), strict=True)}
    p1 = {n: Decimal(str(round(10 + i, 2))) for i, n in enumerate(names)}
    p2 = {
        n: Decimal(str(round(float(p1[n]) * (1 + r), 4)))
        for n, r in zip(names, rng.normal(0, 0.02, 8), strict=True)
    }
    ic = RollingRankIc(window=3)
    assert ic.observe(D1, scores, p1.get) is None  # nothing realised yet
    assert ic.observe(D1, scores, p2.get) is None  # the same day again: nothing changes
    value = ic.observe(D2, scores, p2.get)
    returns = [float(p2[n]) / float(p1[n]) - 1 for n in names]
    expected = spearmanr([scores[n] for n in names], returns).statistic
    assert value == pytest.approx(expected)


def test_the_rolling_value_is_the_mean_of_the_last_window_days_and_perfect_foresight_scores_one() -> None:
    names = [f"S{i}" for i in range(6)]
    ic = RollingRankIc(window=2)
    prices = {n: Decimal(10) for n in names}
    days = [D1, D2, D3, D4]
    values = []
    for k, day in enumerate(days):
        # Returns until the next start follow the scores (k even) or oppose them (k odd).
        scores = {n: float(i) for i, n in enumerate(names)}
        values.append(ic.observe(day, scores, prices.get))
        sign = 1 if k % 2 == 0 else -1
        prices = {n: prices[n] * (1 + Decimal(sign * (i + 1)) / 100) for i, n in enumerate(names)}
    assert values[0] is None
    assert values[1] == pytest.approx(1.0)  # D1's scores ranked D1→D2 returns perfectly
    assert values[2] == pytest.approx(0.0)  # mean of +1 and -1
    assert values[3] == pytest.approx(0.0)  # window 2: (-1 + 1) / 2


def test_too_few_instruments_or_missing_prices_give_no_ic() -> None:
    ic = RollingRankIc(min_instruments=5)
    scores = {f"S{i}": float(i) for i in range(6)}
    first = {f"S{i}": Decimal(10) for i in range(6)}
    later = {f"S{i}": Decimal(11 + i) for i in range(3)}  # only three names priced the next day
    ic.observe(D1, scores, first.get)
    assert ic.observe(D2, scores, later.get) is None
    assert not ic.daily
