"""`kubequant parity` on the sample bundle: the issue's goals, held, and every difference attributed.

A TopkDropout Backtest (seeded random scores, so it trades every day) over three months of the
built-in sample market; its decisions replayed through OMS → risk engine → paper broker → journal.
With a permissive policy: fills within 1 bp, daily net value within 0.1 %, the same trades. With
a policy that refuses large orders the goals are missed by design, and every difference names its
cause (the risk engine's reason code, then the cash and holdings it changed), none unexplained.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from kubequant.api.backtest import Backtest
from kubequant.api.common import DataSource
from kubequant.api.risk import RiskPolicy
from kubequant.cli import main
from kubequant.workloads.data.bundle import resolve_bundle
from kubequant.workloads.realism.parity import Cause, run_parity

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _backtest(scores: Path, start: str, end: str) -> dict[str, object]:
    return {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "Backtest",
        "metadata": {"name": "parity-sample"},
        "spec": {
            "data": {"sample": {}},
            "period": {"start": start, "end": end},
            "account": 10_000_000,
            "signal": {"file": {"path": str(scores)}},
            "strategy": {"topkDropout": {"topk": 10, "nDrop": 3}},
            "exchange": {"openCost": 0.0005, "closeCost": 0.0015, "minCost": 5, "limitThreshold": 0.095},
        },
    }


@pytest.fixture(scope="module")
def scores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random scores for every sample instrument on every day of 2021-12..2022-04."""
    bundle = resolve_bundle(DataSource.model_validate({"sample": {}}), None)
    days = [
        d for d in (bundle / "calendars" / "day.txt").read_text().split() if "2021-12-01" <= d <= "2022-04-30"
    ]
    names = [line.split("\t")[0] for line in (bundle / "instruments" / "all.txt").read_text().splitlines()]
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        [(d, n, rng.normal()) for d in days for n in names], columns=["datetime", "instrument", "score"]
    )
    path = tmp_path_factory.mktemp("parity-scores") / "scores.csv"
    frame.to_csv(path, index=False)
    return path


def test_goals_hold_on_the_sample_bundle(scores: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "backtest.yaml"
    manifest.write_text(yaml.safe_dump(_backtest(scores, "2022-01-04", "2022-03-31")))
    out = tmp_path / "parity"
    result = CliRunner().invoke(
        main, ["parity", "-f", str(manifest), "--out", str(out), "-o", "json", "--check"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output[result.output.index("{") :])
    assert doc["goalsMet"] is True
    level = doc["levels"][0]
    goals = level["goals"]
    assert goals["fillsWithin1bp"]["worstBps"] <= 1.0
    assert goals["navWithin0.1pct"]["worstPct"] <= 0.1
    assert goals["sameTradeCount"]["backtest"] == goals["sameTradeCount"]["replay"] > 300
    assert goals["everyDifferenceAttributed"]["unexplained"] == 0
    # The only differences are the broker's rounding of prices to 0.0001 and of fees to cents.
    assert set(level["causes"]) <= {Cause.PRICE_QUANTUM, Cause.MONEY_QUANTUM}
    assert level["summary"]["replayCost"] == pytest.approx(level["summary"]["backtestCost"], rel=1e-5)
    assert len(level["days"]) == 63 and all(d["replayNav"] is not None for d in level["days"])
    assert (out / "parity.json").is_file() and (out / "parity-day.png").stat().st_size > 10_000
    assert (out / "day" / "state" / "journal.sqlite").is_file()


def test_risk_rejections_are_attributed_not_hidden(scores: Path, tmp_path: Path) -> None:
    bt = Backtest.model_validate(_backtest(scores, "2022-01-04", "2022-02-28"))
    policy = RiskPolicy.model_validate(
        {
            "apiVersion": "kubequant.io/v1alpha1",
            "kind": "RiskPolicy",
            "metadata": {"name": "tight"},
            "spec": {"limits": {"maxOrderNotional": 960_000}},
        }
    )
    report = run_parity(bt, tmp_path / "parity", policy)
    level = report.levels[0]
    goals = level.goals()
    assert not report.met()
    assert not goals["sameTradeCount"]["met"] and not goals["navWithin0.1pct"]["met"]
    assert goals["everyDifferenceAttributed"]["met"], [
        f for f in level.fills if Cause.UNEXPLAINED in f.causes
    ]
    refused = [f for f in level.fills if f.replay_status == "rejected"]
    assert refused and all(f.causes for f in refused)
    assert any(c == f"{Cause.RISK_REJECTION}: ORDER_NOTIONAL" for f in refused for c in f.causes)
    # Every trade the replay lacks has a cause; every day after the first refusal carries it.
    for f in level.fills:
        if f.backtest_quantity != f.replay_quantity:
            assert f.causes, f
    first = min(f.day for f in refused)
    assert all(
        any(c.startswith(str(Cause.RISK_REJECTION)) for c in d.causes) for d in level.days if d.day >= first
    )
