"""`kubequant run` trains a TrainingJob on a local Ray and a Backtest trades its model through modelRef."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from training_manifests import model_ref_backtest, training_job, write_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KUBEQUANT = str(Path(sys.executable).parent / "kubequant")


def _run(*args: str, cwd: Path, store: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBEQUANT_MODEL_STORE": str(store), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([KUBEQUANT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def trained(training_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    """One `kubequant run -f training.yaml -o json`: its result, artifact folder and model store."""
    work = tmp_path_factory.mktemp("train")
    manifest = write_manifest(training_job(training_bundle), work / "training.yaml")
    proc = _run(
        "run",
        "-f",
        str(manifest),
        "-o",
        "json",
        "--report-dir",
        str(work / "art"),
        cwd=work,
        store=work / "store",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout), work / "art", work / "store"


def test_training_writes_a_complete_artifact(trained: tuple[dict, Path, Path], training_bundle: Path) -> None:
    result, art, _store = trained
    assert result["modelUri"] == str(art.resolve())
    assert result["trials"] == 1
    for name in ("model.pkl", "handler.pkl", "dataset.yaml", "metrics.json", "model.json"):
        assert (art / name).is_file(), name
    manifest = json.loads((art / "model.json").read_text())
    assert manifest["format"] == "kubequant-model" and manifest["mode"] == "single"
    assert manifest["versions"]["ray"] == "2.60.0" and manifest["versions"]["qlib"] == "0.9.7"
    assert manifest["model"]["class"] == "LGBModel" and manifest["model"]["params"]["num_leaves"] == 16
    assert manifest["segments"]["valid"] == ["2020-10-01", "2020-12-31"]
    bundle_manifest = json.loads((training_bundle / "meta" / "bundle.json").read_text())
    assert manifest["data"]["fingerprint"] == bundle_manifest["checksum"]
    assert manifest["result"] == result
    assert json.loads((art / "metrics.json").read_text())["ic"] == result["metrics"]["ic"]


def test_training_metrics_are_finite_and_sane(trained: tuple[dict, Path, Path]) -> None:
    metrics = trained[0]["metrics"]
    for key in ("ic", "icir", "rankIc", "rankIcir", "validIc", "loss"):
        assert math.isfinite(metrics[key]), key
    for key in ("ic", "rankIc", "validIc"):
        assert -0.5 < metrics[key] < 0.5, (key, metrics[key])
    # The sample market carries a learnable signal: the model beats chance on the valid segment.
    assert metrics["validIc"] > 0
    # The loss is the MSE on the cross-sectionally normalised label: near 1 for a weak predictor.
    assert 0.5 < metrics["loss"] < 1.5
    assert trained[0]["bestMetric"] == metrics["validIc"]


def test_the_result_carries_the_data_quality_of_what_was_read(trained: tuple[dict, Path, Path]) -> None:
    quality = trained[0]["dataQuality"]
    # Alpha158 reads the daily bars and the exchange's fields; the synthetic bundle has every cell.
    assert {"open", "high", "low", "close", "volume", "factor"} <= set(quality["missingRatio"])
    assert all(0.0 <= v < 0.05 for v in quality["missingRatio"].values()), quality
    assert quality["instruments"] > 0 and quality["instrumentsMissing"] == 0


def test_the_model_is_registered_in_the_local_store(trained: tuple[dict, Path, Path]) -> None:
    _result, art, store = trained
    pointer = json.loads((store / "default" / "small-lgb.json").read_text())
    assert pointer["artifactDir"] == str(art.resolve())


def test_backtest_with_model_ref_trades_the_models_scores(
    trained: tuple[dict, Path, Path], training_bundle: Path, tmp_path: Path
) -> None:
    result, _art, store = trained
    manifest = write_manifest(model_ref_backtest(training_bundle, "small-lgb"), tmp_path / "bt.yaml")
    proc = _run(
        "run",
        "-f",
        str(manifest),
        "-o",
        "json",
        "--report-dir",
        str(tmp_path / "rep"),
        cwd=tmp_path,
        store=store,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "scoring with TrainingJob small-lgb's model" in proc.stderr
    bt = json.loads(proc.stdout)
    assert bt["trades"] > 0 and bt["days"] > 100
    # Same period and label as the training's test segment: the artifact reproduces the model's scores.
    assert bt["ic"] == pytest.approx(result["metrics"]["ic"], abs=0.005)
    assert bt["rankIc"] == pytest.approx(result["metrics"]["rankIc"], abs=0.005)
    assert any(p.suffix in (".csv", ".parquet") for p in (tmp_path / "rep").iterdir())


def test_a_scheduled_session_scores_with_the_model_ref(
    trained: tuple[dict, Path, Path], training_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LiveTradingSession's scheduled strategy reads the same artifact (the pod's $KUBEQUANT_MODEL_DIR)."""
    from kubequant.api.backtest import Signal
    from kubequant.workloads.trading.node.scheduled import load_scores
    from kubequant.workloads.training.dataset import init_qlib_for

    _result, art, _store = trained
    init_qlib_for(training_bundle, "cn")
    codes = ["SYN0001", "SYN0002", "SYN0003", "SYN0004", "SYN0005"]
    monkeypatch.setenv("KUBEQUANT_MODEL_DIR", str(art))
    messages: list[str] = []
    book = load_scores(
        Signal(model_ref={"name": "small-lgb"}),
        codes,
        ("2021-03-01", "2021-03-31"),
        lambda _stage, msg: messages.append(msg),
    )
    assert book.days and all(d.month == 3 and d.year == 2021 for d in book.days)
    assert set(book.by_day[book.days[0]]) == set(codes)
    assert any("small-lgb" in m for m in messages)


def test_workload_backtest_scores_with_the_mounted_model_dir(
    trained: tuple[dict, Path, Path], training_bundle: Path, tmp_path: Path
) -> None:
    """The cluster path: the operator mounts the artifact and passes --model-dir (no model store there)."""
    result, art, _store = trained
    manifest = write_manifest(model_ref_backtest(training_bundle, "small-lgb"), tmp_path / "bt.yaml")
    term = tmp_path / "termination-log"
    proc = _run(
        "workload",
        "backtest",
        "--config",
        str(manifest),
        "--report-dir",
        str(tmp_path / "rep"),
        "--termination-log",
        str(term),
        "--model-dir",
        str(art),
        cwd=tmp_path,
        store=tmp_path / "empty-store",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(term.read_text())
    assert results["ic"] == pytest.approx(result["metrics"]["ic"], abs=0.005)
