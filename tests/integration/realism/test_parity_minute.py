"""`kubequant parity` with the compiled day → 1min TWAP level, on the sample bundle with minute bars.

The Backtest's daily parents are replayed on a paper market of 1-minute bars, sliced by the
runtime's scheduled strategy (``Rebalancer``: whole lots, 60 s apart) where the Backtest's inner
level slices with qlib's TWAP. The slicings differ by design (lot rounding; the runtime's slot
clock and its catch-up after the lunch break); those differences are attributed, matched children
still fill within 1 bp, and the daily net value stays within 0.1 %.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kubequant.api.backtest import Backtest
from kubequant.api.common import DataSource
from kubequant.workloads.data.bundle import resolve_bundle
from kubequant.workloads.realism.parity import Cause, run_parity

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAMPLE = {"instruments": 100, "minuteBars": True, "minuteInstruments": 30, "minuteDays": 40}
BY_DESIGN = {
    Cause.PRICE_QUANTUM,
    Cause.MONEY_QUANTUM,
    Cause.LOT_ROUNDING,
    Cause.SLICE_TIMING,
    f"{Cause.RISK_REJECTION}: SHORT_SELLING",  # a sell parent larger than what the slower slices bought
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    bundle = resolve_bundle(DataSource.model_validate({"sample": SAMPLE}), None)
    days = [
        d for d in (bundle / "calendars" / "day.txt").read_text().split() if "2022-11-01" <= d <= "2022-12-31"
    ]
    names = [
        line.split("\t")[0] for line in (bundle / "instruments" / "intraday.txt").read_text().splitlines()
    ]
    rng = np.random.default_rng(7)
    out = tmp_path_factory.mktemp("parity-minute")
    scores = out / "scores.csv"
    pd.DataFrame(
        [(d, n, rng.normal()) for d in days for n in names], columns=["datetime", "instrument", "score"]
    ).to_csv(scores, index=False)
    bt = Backtest.model_validate(
        {
            "apiVersion": "kubequant.io/v1alpha1",
            "kind": "Backtest",
            "metadata": {"name": "parity-minute"},
            "spec": {
                "data": {"sample": SAMPLE},
                "universe": {"market": "intraday"},
                "period": {"start": "2022-12-01", "end": "2022-12-07"},
                "account": 10_000_000,
                "signal": {"file": {"path": str(scores)}},
                "strategy": {"topkDropout": {"topk": 4, "nDrop": 1}},
                "executor": {"frequency": "day", "levels": [{"frequency": "1min", "strategy": {"twap": {}}}]},
            },
        }
    )
    doc: dict[str, object] = run_parity(bt, out / "parity").to_json()
    return doc


def test_both_levels_are_compared(report: dict[str, object]) -> None:
    levels = report["levels"]
    assert isinstance(levels, list) and [lv["level"] for lv in levels] == ["day", "day→1min"]
    assert levels[0]["goals"]["sameTradeCount"]["met"] and levels[0]["goals"]["fillsWithin1bp"]["met"]
    assert Path(levels[1]["chart"]).is_file()


def test_the_minute_level_meets_the_goals_with_every_difference_attributed(report: dict[str, object]) -> None:
    level = report["levels"][1]  # type: ignore[index]
    goals = level["goals"]
    assert goals["everyDifferenceAttributed"]["met"], goals
    assert goals["fillsWithin1bp"]["met"], goals  # children in the same minute, same size or not
    assert goals["navWithin0.1pct"]["met"], goals
    assert goals["sameTradeCount"]["met"] and goals["sameTradeCount"]["backtest"] == 12
    assert set(level["causes"]) <= BY_DESIGN, level["causes"]
    # The slicings differ: children of other sizes and minutes are there, and named.
    assert level["causes"].get(Cause.LOT_ROUNDING, 0) > 100
    children = level["summary"]["childFills"]
    assert children["backtest"] > 2000 and children["replay"] > 2000
