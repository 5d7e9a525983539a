"""``kubequant run --replay`` on the examples, as a user runs it: the summary JSON of a paper replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
PERIOD = "2022-01-04..2022-02-28"


def replay(example: str, report_dir: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "kubequant.cli", "run", "-f", str(ROOT / "examples" / example)]
    cmd += ["--replay", PERIOD, "--report-dir", str(report_dir), "-o", "json"]
    env = os.environ | {"KUBEQUANT_SIGNAL_TOKEN": "replay-test-token"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "signalapi listening on http://127.0.0.1:" in done.stderr
    return json.loads(done.stdout)


def test_paper_replay_trades(tmp_path: Path) -> None:
    out = replay("live-paper.yaml", tmp_path)
    summary = out["replay"]
    assert summary["orders"] > 0 and summary["fills"] > 0
    assert out["tradingState"] == summary["finalState"] == "ACTIVE"
    assert out["phase"] == "Trading" and out["brokerConnected"] is True
    assert out["positions"] > 0 and out["equity"] > 0
    assert {"pnl", "drawdown", "grossExposure", "ordersToday", "fillsToday", "rejectionsToday"} <= set(out)
    assert (tmp_path / "state" / "journal.sqlite").is_file()


def test_drawdown_breaker_halts_the_replay(tmp_path: Path) -> None:
    out = replay("live-paper-breaker.yaml", tmp_path)
    summary = out["replay"]
    assert summary["orders"] > 0 and summary["fills"] > 0
    assert out["tradingState"] == summary["finalState"] == "HALTED"
    assert out["phase"] == "Halted"
    assert "drawdown" in out["haltReason"] and summary["maxDrawdown"] >= 0.005
