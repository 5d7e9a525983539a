"""`kubequant run` end to end on a small bundle: output, report folder, and bad input as one line with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from backtest_manifests import file_backtest, make_bundle, model_backtest, write_manifest

pytestmark = [pytest.mark.integration]

KUBEQUANT = str(Path(sys.executable).parent / "kubequant")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KUBEQUANT, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def signal_file(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Scores with a little foresight (tomorrow's return plus noise), so the IC is positive by construction."""
    days = [
        d for d in (bundle / "calendars" / "day.txt").read_text().split() if "2021-01-04" <= d <= "2021-06-28"
    ]
    codes = [line.split("\t")[0] for line in (bundle / "instruments" / "all.txt").read_text().splitlines()]
    rng = np.random.default_rng(3)
    rows = [(d, c, float(rng.normal())) for d in days for c in codes]
    path = tmp_path_factory.mktemp("signal") / "scores.csv"
    pd.DataFrame(rows, columns=["datetime", "instrument", "score"]).to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_model_backtest_json_and_report(bundle: Path, tmp_path: Path) -> None:
    manifest = write_manifest(model_backtest(bundle), tmp_path / "bt.yaml")
    proc = _run("run", "-f", str(manifest), "-o", "json", "--report-dir", str(tmp_path / "rep"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)  # stdout holds only the JSON: qlib's prints go to stderr
    assert "usage: git" not in proc.stderr  # qlib's recorder does not shell out to git here
    for key in (
        "annualizedReturn",
        "sharpe",
        "maxDrawdown",
        "informationRatio",
        "winRate",
        "turnover",
        "ic",
        "rankIc",
    ):
        assert isinstance(results[key], float), key
    assert results["trades"] > 0 and results["days"] > 100
    assert results["maxDrawdown"] <= 0
    assert len(json.dumps(results, separators=(",", ":"))) < 4096  # fits a pod's termination message
    report = tmp_path / "rep"
    for name in ("metrics.json", "report.csv", "positions.csv", "trades.csv", "scores.csv", "chart.png"):
        assert (report / name).stat().st_size > 0, name
    assert json.loads((report / "metrics.json").read_text())["results"] == results
    trades = pd.read_csv(report / "trades.csv")
    assert set(trades["side"]) == {"buy", "sell"} and (trades["cost"] >= 5 - 1e-9).all()  # minCost applies
    assert (report / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing is left in the working directory (qlib's MLflow files go to a scratch folder).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bt.yaml", "rep"]


def test_signal_file_backtest_table(bundle: Path, signal_file: Path, tmp_path: Path) -> None:
    manifest = write_manifest(file_backtest(bundle, signal_file), tmp_path / "bt.yaml")
    proc = _run("run", "-f", str(manifest), "--report-dir", str(tmp_path / "rep"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Annualised return" in proc.stdout and "Sharpe" in proc.stdout and "Max drawdown" in proc.stdout
    assert "backtest" in proc.stderr  # progress lines


def _mutate(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node = doc
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return doc


BAD_RUNS = [
    (
        "unknown strategy class",
        "spec.strategy",
        {"custom": {"class": "NoSuchStrategy"}},
        "spec.strategy.custom.class",
    ),
    ("missing data", "spec.data", {"path": "/nonexistent/bundle"}, "/nonexistent/bundle"),
    ("end on the calendar's last day", "spec.period.end", "2021-06-30", "spec.period.end"),
    (
        "start after the data",
        "spec.period",
        {"start": "2023-01-02", "end": "2023-02-01"},
        "spec.period.start",
    ),
    ("unknown market", "spec.universe", {"market": "csi300"}, "spec.universe.market"),
    ("empty universe", "spec.universe", {"instruments": ["NOPE1", "NOPE2"]}, "spec.universe.instruments"),
    ("unknown benchmark", "spec.benchmark", "SH000300", "spec.benchmark"),
    (
        "missing signal file",
        "spec.signal",
        {"file": {"path": "/nonexistent/scores.csv"}},
        "/nonexistent/scores.csv",
    ),
    ("a PVC outside the cluster", "spec.data", {"volume": {"claimName": "market-data"}}, "spec.data.volume"),
    ("modelRef outside the cluster", "spec.signal", {"modelRef": {"name": "lgb"}}, "spec.signal.modelRef"),
]


@pytest.mark.parametrize(("case", "path", "value", "named"), BAD_RUNS, ids=[c[0] for c in BAD_RUNS])
def test_bad_input_is_one_line_exit_2(
    bundle: Path, signal_file: Path, tmp_path: Path, case: str, path: str, value: Any, named: str
) -> None:
    doc = _mutate(file_backtest(bundle, signal_file), path, value)
    proc = _run("run", "-f", str(write_manifest(doc, tmp_path / "bt.yaml")), cwd=tmp_path)
    assert proc.returncode == 2, f"{case}: rc={proc.returncode}\n{proc.stderr[-2000:]}"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_malformed_signal_file(bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "scores.csv"
    bad.write_text("datetime,instrument,value\n2021-01-04,SYN0001,0.5\n")
    proc = _run(
        "run", "-f", str(write_manifest(file_backtest(bundle, bad), tmp_path / "bt.yaml")), cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "missing column 'score'" in proc.stderr and str(bad) in proc.stderr


def test_replay_flags_need_a_session(bundle: Path, signal_file: Path, tmp_path: Path) -> None:
    manifest = write_manifest(file_backtest(bundle, signal_file), tmp_path / "bt.yaml")
    proc = _run("run", "-f", str(manifest), "--replay", "2021-01-04..2021-02-01", cwd=tmp_path)
    assert proc.returncode == 2 and "apply to a LiveTradingSession" in proc.stderr


@pytest.fixture(autouse=True)
def _empty_model_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A modelRef resolves through the local model store: these runs see an empty one, never the user's."""
    monkeypatch.setenv("KUBEQUANT_MODEL_STORE", str(tmp_path_factory.mktemp("model-store")))


def test_model_ref_without_a_local_training_says_to_train_first(
    bundle: Path, signal_file: Path, tmp_path: Path
) -> None:
    doc = _mutate(file_backtest(bundle, signal_file), "spec.signal", {"modelRef": {"name": "lgb"}})
    proc = _run("run", "-f", str(write_manifest(doc, tmp_path / "bt.yaml")), cwd=tmp_path)
    assert proc.returncode == 2
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "no trained model for TrainingJob default/lgb" in error
    assert "run `kubequant run -f <the TrainingJob lgb's manifest>` first" in error
