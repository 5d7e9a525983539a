"""Bad input to the training commands: one line naming the flag, field or file, and the exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kubequant.cli import main

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]


def _invoke(*args: str, env: dict[str, str] | None = None) -> object:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_submit_training_needs_an_entrypoint(tmp_path: Path) -> None:
    result = _invoke("workload", "submit-training", "--termination-log", str(tmp_path / "term"))
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: ENTRYPOINT: no entrypoint given — fix: pass the command after --"


def test_submit_training_outside_a_rayjob_names_the_missing_env_and_leaves_a_message(tmp_path: Path) -> None:
    term = tmp_path / "term"
    result = _invoke(
        "workload",
        "submit-training",
        "--termination-log",
        str(term),
        "--",
        "kubequant",
        "workload",
        "train",
        env={"RAY_DASHBOARD_ADDRESS": "", "RAY_JOB_SUBMISSION_ID": ""},
    )
    assert result.exit_code == 2
    assert "RAY_DASHBOARD_ADDRESS and RAY_JOB_SUBMISSION_ID not set" in result.stderr
    assert "RAY_DASHBOARD_ADDRESS" in json.loads(term.read_text())["error"]


def test_workload_train_needs_an_existing_config(tmp_path: Path) -> None:
    result = _invoke(
        "workload", "train", "--config", str(tmp_path / "nope.yaml"), "--artifact-dir", str(tmp_path)
    )
    assert result.exit_code == 2
    assert "nope.yaml" in result.stderr and "does not exist" in result.stderr


def test_workload_train_with_no_training_job_prints_the_error_line(tmp_path: Path) -> None:
    result = _invoke(
        "workload",
        "train",
        "--config",
        str(ROOT / "examples" / "backtest.yaml"),
        "--artifact-dir",
        str(tmp_path / "art"),
    )
    assert result.exit_code == 1
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("kubequant-error: ") and "expected one TrainingJob, found 0" in last
    assert not (tmp_path / "art").exists()


def test_run_refuses_replay_flags_for_a_training_job() -> None:
    result = _invoke(
        "run", "-f", str(ROOT / "examples" / "training.yaml"), "--replay", "2022-01-04..2022-01-10"
    )
    assert result.exit_code == 2
    assert "--replay, --speed and --policy apply to a LiveTradingSession" in result.stderr


def test_backtest_with_an_untrained_model_ref_says_to_train_first(tmp_path: Path) -> None:
    result = _invoke(
        "run",
        "-f",
        str(ROOT / "examples" / "backtest-from-model.yaml"),
        env={"KUBEQUANT_MODEL_STORE": str(tmp_path / "empty-store")},
    )
    assert result.exit_code == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "error: spec.signal.modelRef: no trained model for TrainingJob default/lgb-alpha158"
    )
    assert "run `kubequant run -f <the TrainingJob lgb-alpha158's manifest>` first" in line


def test_workload_backtest_model_dir_must_hold_an_artifact(tmp_path: Path) -> None:
    manifest = yaml.safe_load((ROOT / "examples" / "backtest-from-model.yaml").read_text())
    (tmp_path / "bt.yaml").write_text(yaml.safe_dump(manifest))
    (tmp_path / "model").mkdir()
    result = _invoke(
        "workload",
        "backtest",
        "--config",
        str(tmp_path / "bt.yaml"),
        "--report-dir",
        str(tmp_path / "rep"),
        "--termination-log",
        str(tmp_path / "term"),
        "--model-dir",
        str(tmp_path / "model"),
    )
    assert result.exit_code == 2
    assert "incomplete model artifact (missing model.pkl, dataset.yaml, model.json)" in result.stderr
    assert "incomplete model artifact" in json.loads((tmp_path / "term").read_text())["error"]
