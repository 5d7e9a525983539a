"""The compiled day → 1min level against its reference, qlib's NestedExecutor, on the same inputs.

Each case runs one Backtest spec twice through the runner's ``_backtest``: with ``engine: qlib``
(qlib's NestedExecutor, SimulatorExecutor at 1min, qlib's TWAPStrategy or kubequant's VWAP/expiring
variants, the 1-minute Exchange or ImpactExchange) and with ``engine: auto`` (CompiledSlicingExecutor
on a MinuteBackedExchange). The daily report, every 1-minute fill and the level indicators must agree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from qlib_session import intraday_scores

from kubequant.api import Backtest
from kubequant.workloads.backtest.qlib_config import exchange_kwargs, executor_config
from kubequant.workloads.backtest.runner import _backtest
from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAYS = 8
FLOAT32 = 1e-5  # tolerance for qlib's float32 arithmetic


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compiled") / "bundle"
    spec = SampleSpec(
        instruments=40,
        start="2021-06-01",
        end="2021-12-31",
        seed=11,
        freqs=("day", "1min"),
        minute_instruments=20,
        minute_days=DAYS + 6,
    )
    write_sample_bundle(path, spec)
    return path


@pytest.fixture(scope="module")
def scores(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.Series:
    os.chdir(tmp_path_factory.mktemp("compiled-qlib"))
    return intraday_scores(bundle)


def _spec(bundle: Path, engine: str, strategy: dict[str, Any], **extra: Any) -> Any:
    days = (bundle / "calendars" / "day.txt").read_text().split()
    exchange = {"openCost": 0.0005, "closeCost": 0.0015, "minCost": 5, "limitThreshold": 0.095}
    exchange.update(extra.pop("exchange", {}))
    doc = {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "Backtest",
        "metadata": {"name": "compiled"},
        "spec": {
            "data": {"path": str(bundle)},
            "universe": {"market": "intraday"},
            "period": {"start": days[-DAYS - 1], "end": days[-2]},
            "account": 5_000_000,
            "signal": {"file": {"path": "unused.csv"}},
            "strategy": {"topkDropout": {"topk": 6, "nDrop": 2}},
            "executor": {
                "frequency": "day",
                "tradeType": extra.pop("trade_type", "serial"),
                "engine": engine,
                "levels": [{"frequency": "1min", "strategy": strategy}],
            },
            "exchange": exchange,
        },
    }
    return Backtest.model_validate(doc).spec


IMPACT = {"slippageBps": 3, "temporary": 0.3, "permanent": 0.1, "maxParticipation": 0.02}
CASES = {
    "twap": ({"twap": {}}, {}),
    "twap-parallel": ({"twap": {}}, {"trade_type": "parallel"}),
    "twap-impact-carry": ({"twap": {}}, {"exchange": {"impact": {**IMPACT, "onCap": "carry"}}}),
    "twap-impact-expire": ({"twap": {}}, {"exchange": {"impact": {**IMPACT, "onCap": "expire"}}}),
    "vwap": ({"vwap": {"lookbackDays": 3}}, {}),
    "vwap-impact": ({"vwap": {"lookbackDays": 3}}, {"exchange": {"impact": {**IMPACT, "onCap": "carry"}}}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_level_matches_qlibs_nested_executor(bundle: Path, scores: pd.Series, case: str) -> None:
    strategy, extra = CASES[case]
    reference = _spec(bundle, "qlib", strategy, **dict(extra))
    compiled = _spec(bundle, "auto", strategy, **dict(extra))
    assert executor_config(reference)["class"] == "NestedExecutor"
    assert executor_config(compiled)["class"] == "CompiledSlicingExecutor"
    assert exchange_kwargs(compiled)["exchange"]["class"].startswith("MinuteBacked")

    ref_daily, _, ref_ind, ref_trades = _backtest(reference, scores)
    our_daily, _, our_ind, our_trades = _backtest(compiled, scores)

    net = (our_daily["return"] - our_daily["cost"]) - (ref_daily["return"] - ref_daily["cost"])
    print(
        f"{case}: {len(ref_trades)} fills, largest daily net-return difference {net.abs().max() * 1e4:.6f} bp"
    )
    assert len(ref_daily) == len(our_daily) == DAYS
    # qlib's quote is float32 and NumPy 2 keeps float32 × Python float in float32, so qlib's values
    # carry float32 rounding (~1e-7 relative); the compiled level computes in float64.
    assert net.abs().max() < 1e-5  # 0.1 bp; the goal is 1 bp
    # With onCap: expire a lot that float32 rounding moves to the neighbouring minute may expire there.
    totals = 1e-3 if "expire" in case else FLOAT32
    for column in ("turnover", "cost", "account"):
        np.testing.assert_allclose(our_daily[column], ref_daily[column], rtol=totals, err_msg=column)

    # Every 1-minute fill: same minute, instrument, side, amount and price — except where qlib's float32
    # rounding puts a lot of a slice into the neighbouring minute (a handful per thousand fills).
    assert len(ref_trades) > 20, "the case must trade"
    assert len(our_trades) == len(ref_trades)
    key = ["datetime", "instrument", "side"]
    both = ref_trades.merge(our_trades, on=key, how="outer", suffixes=("_q", "_k"), indicator=True)
    same = (both["_merge"] == "both") & np.isclose(both["amount_q"], both["amount_k"], rtol=FLOAT32, atol=0)
    moved = int((~same).sum())
    print(f"{case}: {moved} of {len(ref_trades)} fills in a neighbouring minute")
    assert moved <= max(2, len(ref_trades) // 200)
    matched = both[same]
    np.testing.assert_allclose(matched["price_k"], matched["price_q"], rtol=FLOAT32)
    np.testing.assert_allclose(matched["cost_k"], matched["cost_q"], rtol=FLOAT32)
    # Per day, instrument and side the dealt amounts and values agree whatever the minute.
    per_day = [ref_trades["datetime"].dt.normalize(), "instrument", "side"]
    ref_day = ref_trades.groupby(per_day)[["amount", "value"]].sum()
    our_day = our_trades.groupby([our_trades["datetime"].dt.normalize(), "instrument", "side"])[
        ["amount", "value"]
    ].sum()
    pd.testing.assert_index_equal(ref_day.index, our_day.index)
    np.testing.assert_allclose(our_day.to_numpy(), ref_day.to_numpy(), rtol=totals)

    # The execution-quality inputs: orders per level and fill rates.
    assert set(our_ind) == {"1day", "1min"}
    for level in ("1day", "1min"):
        ours, theirs = our_ind[level][0], ref_ind[level][0]
        assert ours["count"].sum() == theirs["count"].sum(), level
        # A lot moved to the neighbouring minute changes that minute's fill rate.
        tolerance = FLOAT32 if moved == 0 or level == "1day" else 1e-3
        assert ours["ffr"].mean() == pytest.approx(theirs["ffr"].mean(), rel=tolerance), level
    pa_tolerance = FLOAT32 if moved == 0 else 1e-4  # 1 bp of price advantage
    assert our_ind["1day"][0]["pa"].mean() == pytest.approx(ref_ind["1day"][0]["pa"].mean(), abs=pa_tolerance)
