"""kubequant adds no arithmetic to qlib: the same configuration run straight through qlib's API gives the same numbers."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import qlib_reference
from backtest_manifests import EXCHANGE, MODEL_KWARGS, SEGMENTS, make_bundle, model_backtest

from kubequant.api import Backtest
from kubequant.workloads.backtest.runner import run_backtest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _plain_qlib(bundle: Path, mlruns: Path) -> pd.DataFrame:
    """The same run through qlib's API only (benchmarks/qlib_reference.py)."""
    qlib_reference.init(bundle, mlruns)
    exchange = {
        "freq": "day",
        "limit_threshold": EXCHANGE["limitThreshold"],
        "deal_price": EXCHANGE["dealPrice"],
        "open_cost": EXCHANGE["openCost"],
        "close_cost": EXCHANGE["closeCost"],
        "min_cost": EXCHANGE["minCost"],
    }
    segments = {k: (v["start"], v["end"]) for k, v in SEGMENTS.items()}
    return qlib_reference.run(
        segments, MODEL_KWARGS, ("2021-01-04", "2021-06-28"), 8, 2, 10_000_000, exchange
    )


def test_kubequant_matches_plain_qlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qlib.contrib.evaluate import risk_analysis

    monkeypatch.chdir(tmp_path)
    bundle = make_bundle(tmp_path)
    bt = Backtest.model_validate(model_backtest(bundle))
    with contextlib.redirect_stdout(sys.stderr):
        outcome = run_backtest(bt, tmp_path / "report")
        reference = _plain_qlib(bundle, tmp_path / "mlruns")

    ours = pd.read_csv(outcome.report_dir / "report.csv", index_col="datetime", parse_dates=True)
    assert len(ours) == len(reference) > 100
    for column in ("return", "cost", "bench", "turnover", "account", "total_cost"):
        np.testing.assert_allclose(
            ours[column].to_numpy(), reference[column].to_numpy(), rtol=1e-9, err_msg=column
        )

    net = reference["return"] - reference["cost"]
    expected = risk_analysis(net, freq="day")["risk"]
    excess = risk_analysis(reference["return"] - reference["bench"] - reference["cost"], freq="day")["risk"]
    results = outcome.results
    assert results.annualized_return == pytest.approx(expected["annualized_return"], abs=1e-6)
    assert results.sharpe == pytest.approx(expected["information_ratio"], abs=1e-6)
    assert results.max_drawdown == pytest.approx(expected["max_drawdown"], abs=1e-6)
    assert results.information_ratio == pytest.approx(excess["information_ratio"], abs=1e-6)
    assert results.final_account_value == pytest.approx(reference["account"].iloc[-1], rel=1e-9)
    # The report's metrics.json carries the same object that -o json prints and the operator stores.
    saved = json.loads((outcome.report_dir / "metrics.json").read_text())
    assert saved["results"] == results.to_manifest()
