"""The Job pod's entrypoint leaves one structured line in its termination message: the results, or its
own error with anything that looks like a credential masked (the operator shows nothing else)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kubequant.cli import main

pytestmark = pytest.mark.unit

MANIFEST = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "Backtest",
    "metadata": {"name": "lgb", "namespace": "research"},
    "spec": {"period": {"start": "2022-01-04", "end": "2022-06-30"}, "signal": {"file": {"path": "/s.csv"}}},
}


def test_a_failure_leaves_only_its_redacted_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubequant.workloads.backtest import runner

    def fail(*args: object, **kwargs: object) -> None:
        print("progress: loading bars with password=hunter2")  # a log line, never carried
        raise ConnectionError("GET https://trader:hunter2@bars.example.com/v2 failed (api_key=abc123)")

    monkeypatch.setattr(runner, "run_backtest", fail)
    config = tmp_path / "backtest.yaml"
    config.write_text(yaml.safe_dump(MANIFEST))
    log = tmp_path / "termination-log"
    result = CliRunner().invoke(
        main,
        [
            "workload",
            "backtest",
            "--config",
            str(config),
            "--report-dir",
            str(tmp_path / "r"),
            "--termination-log",
            str(log),
        ],
    )
    assert result.exit_code != 0
    written = json.loads(log.read_text())
    assert set(written) == {"error"}
    assert "hunter2" not in written["error"] and "abc123" not in written["error"]
    assert written["error"].startswith("ConnectionError: GET https://[REDACTED]@bars.example.com/v2 failed")
