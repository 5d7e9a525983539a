"""A Backtest with the compiled Alpha158 (engine auto) trades exactly as with qlib's handler (engine qlib)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from kubequant.api import Backtest
from kubequant.workloads.backtest.runner import run_backtest
from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle
from kubequant.workloads.features.loader import CompiledDataLoader

pytestmark = [pytest.mark.integration]

SAMPLE = SampleSpec(instruments=25, start="2020-01-01", end="2021-03-31", seed=13)


def _manifest(bundle: Path, engine: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "Backtest",
        "metadata": {"name": f"engine-{engine}"},
        "spec": {
            "data": {"path": str(bundle)},
            "benchmark": "SYNIDX",
            "period": {"start": "2021-01-04", "end": "2021-03-30"},
            "account": 10_000_000,
            "signal": {
                "model": {
                    "engine": engine,
                    "handler": {"class": "Alpha158"},
                    "model": {
                        "class": "LGBModel",
                        "kwargs": {
                            "loss": "mse",
                            "num_leaves": 8,
                            "num_boost_round": 20,
                            "num_threads": 1,
                            "seed": 3,
                            "deterministic": True,
                            "verbosity": -1,
                        },
                    },
                    "segments": {
                        "train": {"start": "2020-01-01", "end": "2020-08-31"},
                        "valid": {"start": "2020-09-01", "end": "2020-12-31"},
                        "test": {"start": "2021-01-04", "end": "2021-03-30"},
                    },
                }
            },
            "strategy": {"topkDropout": {"topk": 6, "nDrop": 2}},
            "exchange": {"openCost": 0.0005, "closeCost": 0.0015, "minCost": 5, "dealPrice": "close"},
        },
    }


def test_compiled_and_qlib_handlers_give_the_same_trades(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    bundle = tmp_path / "bundle"
    write_sample_bundle(bundle, SAMPLE)
    compiled_groups: list[str | None] = []
    original = CompiledDataLoader._compiled

    def counting(self: CompiledDataLoader, *args: Any) -> pd.DataFrame:
        frame = original(self, *args)
        compiled_groups.append(args[-1])
        return frame

    monkeypatch.setattr(CompiledDataLoader, "_compiled", counting)
    outcomes = {}
    with contextlib.redirect_stdout(sys.stderr):
        for engine in ("qlib", "auto"):
            bt = Backtest.model_validate(_manifest(bundle, engine))
            outcomes[engine] = run_backtest(bt, tmp_path / f"report-{engine}")
            assert bool(compiled_groups) == (engine == "auto"), (
                f"engine {engine}: compiled groups {compiled_groups}"
            )
    assert sorted(compiled_groups) == ["feature", "label"]

    for name in ("trades.csv", "positions.csv", "report.csv", "scores.csv"):
        qlib_frame = pd.read_csv(outcomes["qlib"].report_dir / name)
        compiled_frame = pd.read_csv(outcomes["auto"].report_dir / name)
        assert len(qlib_frame) > 0, name
        pd.testing.assert_frame_equal(compiled_frame, qlib_frame, check_exact=True, obj=name)
    metrics = {engine: _without_paths(o.results.to_manifest()) for engine, o in outcomes.items()}
    assert metrics["auto"] == metrics["qlib"] and metrics["auto"]


def _without_paths(value: Any) -> Any:
    """The results, less where each run's report was written (the folders differ by design)."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if not (isinstance(v, str) and "report-" in v)}
    return value
