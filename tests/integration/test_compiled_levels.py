"""Compiled stacks of levels (day → 60/30/15min → 1min; TWAP, VWAP, SBB-EMA) against qlib's NestedExecutor.

Each case runs one Backtest spec twice through the runner's ``_backtest``: ``engine: qlib`` (one qlib
NestedExecutor per inner level, qlib's TWAPStrategy / SBBStrategyEMA or kubequant's VWAP and
expiring variants, the 1-minute Exchange or ImpactExchange) and ``engine: auto`` (the compiled
levels on a MinuteBackedExchange). The daily report, every fill of the finest level and every
level's indicators must agree, up to qlib's float32 quotes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from qlib_session import intraday_scores, use_bundle

from kubequant.api import Backtest
from kubequant.workloads.backtest.qlib_config import executor_config
from kubequant.workloads.backtest.runner import _backtest
from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAYS = 6
FLOAT32 = 1e-5  # tolerance for qlib's float32 arithmetic


def _sample(path: Path, minute_days: int) -> Path:
    """The test market at ``path``: 40 instruments, minute bars for 16 over the last ``minute_days``."""
    spec = SampleSpec(
        instruments=40,
        start="2021-06-01",
        end="2021-12-31",
        seed=5,
        freqs=("day", "1min"),
        minute_instruments=16,
        minute_days=minute_days,
    )
    write_sample_bundle(path, spec)
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _sample(tmp_path_factory.mktemp("levels") / "bundle", DAYS + 6)


@pytest.fixture(scope="module")
def scores(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.Series:
    os.chdir(tmp_path_factory.mktemp("levels-qlib"))
    return intraday_scores(bundle)


def _spec(bundle: Path, engine: str, levels: list[dict[str, Any]], impact: dict[str, Any] | None) -> Any:
    days = (bundle / "calendars" / "day.txt").read_text().split()
    exchange: dict[str, Any] = {
        "openCost": 0.0005,
        "closeCost": 0.0015,
        "minCost": 5,
        "limitThreshold": 0.095,
    }
    if impact is not None:
        exchange["impact"] = impact
    doc = {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "Backtest",
        "metadata": {"name": "levels"},
        "spec": {
            "data": {"path": str(bundle)},
            "universe": {"market": "intraday"},
            "period": {"start": days[-DAYS - 1], "end": days[-2]},
            "account": 5_000_000,
            "signal": {"file": {"path": "unused.csv"}},
            "strategy": {"topkDropout": {"topk": 6, "nDrop": 2}},
            "executor": {"frequency": "day", "engine": engine, "levels": levels},
            "exchange": exchange,
        },
    }
    return Backtest.model_validate(doc).spec


SBB = {"sbbEma": {}}
TWAP = {"twap": {}}
VWAP = {"vwap": {"lookbackDays": 3}}
IMPACT = {"slippageBps": 3, "temporary": 0.3, "permanent": 0.1, "maxParticipation": 0.02}
CASES: dict[str, tuple[list[tuple[str, dict[str, Any]]], dict[str, Any] | None]] = {
    "30min-sbb": ([("30min", SBB)], None),
    "1min-sbb": ([("1min", SBB)], None),
    "30min-sbb/1min-twap": ([("30min", SBB), ("1min", TWAP)], None),
    "30min-sbb/1min-twap-impact": ([("30min", SBB), ("1min", TWAP)], {**IMPACT, "onCap": "carry"}),
    "60min-twap/1min-twap-expire": ([("60min", TWAP), ("1min", TWAP)], {**IMPACT, "onCap": "expire"}),
    "15min-vwap/1min-sbb": ([("15min", VWAP), ("1min", SBB)], None),
    "60min-twap/15min-sbb/1min-twap": ([("60min", TWAP), ("15min", SBB), ("1min", TWAP)], None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_levels_match_qlibs_nested_executor(bundle: Path, scores: pd.Series, case: str) -> None:
    stack, impact = CASES[case]
    _compare(bundle, scores, case, stack, impact)


def test_a_period_from_the_first_minute_bar_matches_qlib(
    bundle: Path, scores: pd.Series, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The period starts on the first day with minute bars: the first 30-min bar is the first of qlib's
    calendar, with no bar before it for SBB-EMA's signal (qlib then reads the calendar's last bar, an
    empty window: every trend of that reset is MID). The compiled signal failed there (IndexError)."""
    # minute bars from the period's first day (days[-DAYS - 1])
    path = _sample(tmp_path_factory.mktemp("levels-first") / "bundle", DAYS + 1)
    os.chdir(tmp_path_factory.mktemp("levels-first-qlib"))
    try:
        stack, impact = CASES["30min-sbb/1min-twap"]
        _compare(path, intraday_scores(path), "first minute day, 30min-sbb/1min-twap", stack, impact)
    finally:
        use_bundle(bundle)  # the module's bundle again, for the tests after this one


def _compare(
    bundle: Path,
    scores: pd.Series,
    case: str,
    stack: list[tuple[str, dict[str, Any]]],
    impact: dict[str, Any] | None,
) -> None:
    """Run the stack on both engines and hold the compiled run to qlib's (see the module doc)."""
    levels = [{"frequency": f, "strategy": s} for f, s in stack]
    reference = _spec(bundle, "qlib", levels, impact)
    compiled = _spec(bundle, "auto", levels, impact)
    assert executor_config(reference)["class"] == "NestedExecutor"
    assert executor_config(compiled)["class"] == "CompiledSlicingExecutor"

    ref_daily, _, ref_ind, ref_trades = _backtest(reference, scores)
    our_daily, _, our_ind, our_trades = _backtest(compiled, scores)

    net = (our_daily["return"] - our_daily["cost"]) - (ref_daily["return"] - ref_daily["cost"])
    print(
        f"{case}: {len(ref_trades)} fills, largest daily net-return difference {net.abs().max() * 1e4:.6f} bp"
    )
    assert len(ref_daily) == len(our_daily) == DAYS
    assert net.abs().max() < 1e-4  # 1 bp
    # Every fill of the finest level: same bar, instrument, side, amount and price — except where
    # qlib's float32 rounding puts a lot into the neighbouring bar.
    assert len(ref_trades) > 20, "the case must trade"
    key = ["datetime", "instrument", "side"]
    both = ref_trades.merge(our_trades, on=key, how="outer", suffixes=("_q", "_k"), indicator=True)
    same = (both["_merge"] == "both") & np.isclose(both["amount_q"], both["amount_k"], rtol=FLOAT32, atol=0)
    moved = int((~same).sum())
    print(f"{case}: {moved} of {len(ref_trades)} fills differ")
    assert abs(len(our_trades) - len(ref_trades)) <= max(2, len(ref_trades) // 200)
    assert moved <= max(2, len(ref_trades) // 100)
    # A lot that float32 rounding moves (qlib's whole-lot counts of a non-integer trade unit, e.g.
    # 100 shares / factor 1.51) changes that day's turnover and cost by a fraction of a lot.
    totals = 1e-3 if moved or (impact and impact["onCap"] == "expire") else FLOAT32
    for column in ("turnover", "cost", "account"):
        np.testing.assert_allclose(our_daily[column], ref_daily[column], rtol=totals, err_msg=column)
    matched = both[same]
    np.testing.assert_allclose(matched["price_k"], matched["price_q"], rtol=FLOAT32)
    np.testing.assert_allclose(matched["cost_k"], matched["cost_q"], rtol=FLOAT32)

    # Every level's indicators: the same levels, orders per level, fill rates.
    assert list(our_ind) == ["1day", *(f for f, _ in stack)]
    assert set(our_ind) == set(ref_ind)
    for level in our_ind:
        ours, theirs = our_ind[level][0], ref_ind[level][0]
        assert ours["count"].sum() == pytest.approx(theirs["count"].sum(), rel=0.01), level
        tolerance = FLOAT32 if moved == 0 or level == "1day" else 1e-2
        assert ours["ffr"].mean() == pytest.approx(theirs["ffr"].mean(), rel=tolerance, abs=1e-9), level
    for level in list(our_ind)[:-1]:  # price advantage of the non-atomic levels
        pa_ours, pa_theirs = our_ind[level][0]["pa"].mean(), ref_ind[level][0]["pa"].mean()
        assert pa_ours == pytest.approx(pa_theirs, abs=1e-4 if moved else FLOAT32), level


def test_hourly_bars_follow_the_a_share_sessions(bundle: Path, scores: pd.Series) -> None:
    """60min bars start 09:30, 10:30, 13:00, 14:00, and no bar of any compiled level spans the lunch break."""
    from kubequant.workloads.backtest.level_bars import LevelBars
    from kubequant.workloads.backtest.minute_exchange import MinuteBackedExchange

    days = (bundle / "calendars" / "day.txt").read_text().split()
    exchange = MinuteBackedExchange(
        start_time=days[-3], end_time=days[-2], codes="intraday", deal_price="close", limit_threshold=0.095
    )
    for frequency, starts in (
        ("60min", ["09:30", "10:30", "13:00", "14:00"]),
        ("30min", ["09:30", "10:00", "10:30", "11:00", "13:00", "13:30", "14:00", "14:30"]),
    ):
        bars = LevelBars.aggregate(exchange.minutes, frequency)
        assert sorted({t.strftime("%H:%M") for t in bars.starts}) == starts
        minutes = exchange.minutes.minutes
        for b in range(len(bars.starts)):
            inside = minutes[bars.edges[b] : bars.edges[b + 1]]
            assert len(inside) == int(frequency.removesuffix("min"))
            assert not ((inside.hour < 12).any() and (inside.hour >= 13).any()), "a bar spans lunch"
