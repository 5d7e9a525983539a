"""The human table `kubequant run` prints for a TrainingJob: metrics, best params, the top 10 trials."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from kubequant.cli import _print_training

pytestmark = pytest.mark.unit

RESULT = {
    "modelUri": "/models/lgb",
    "bestMetric": 0.0466,
    "bestParams": {"learning_rate": 0.0661, "num_leaves": 35},
    "trials": 12,
    "metrics": {"ic": 0.0234, "icir": 0.127, "rankIc": 0.0135, "validIc": 0.0466, "loss": 0.96529},
}


def test_table_shows_metrics_params_and_the_ten_best_trials(capsys: pytest.CaptureFixture[str]) -> None:
    trials = pd.DataFrame(
        {
            "trial_id": [f"t{i:02d}" for i in range(12)],
            "status": ["TERMINATED"] * 11 + ["ERROR"],
            "metric": [0.05 - i * 0.001 for i in range(11)] + [math.nan],
            "error": [None] * 11 + ["ValueError: " + "x" * 80],
        }
    )
    _print_training("lgb", RESULT, trials)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "TrainingJob lgb"
    assert lines[1].split() == ["IC", "(test)", "0.0234"]
    assert any(line.split() == ["Rank", "ICIR", "(test)", "-"] for line in lines)  # absent → "-"
    assert any(line.split()[:2] == ["Best", "params"] and "learning_rate=0.0661" in line for line in lines)
    top = lines.index("  Top 10 trials")
    rows = lines[top + 2 :]
    assert [r.split()[0] for r in rows] == [f"t{i:02d}" for i in range(10)]  # the order given (best first)
    assert rows[0].split()[-1] == "-"  # no error: a dash, not "None"


def test_long_values_are_cut_to_the_column_width(capsys: pytest.CaptureFixture[str]) -> None:
    trials = pd.DataFrame({"trial_id": ["a"], "metric": [math.nan], "error": ["E" * 100]})
    _print_training("lgb", RESULT, trials)
    row = capsys.readouterr().out.splitlines()[-1]
    assert "E" * 39 + "…" in row and "E" * 41 not in row
