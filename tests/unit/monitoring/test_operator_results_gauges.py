"""The operator serves a finished Backtest's results from its status (also after a restart, when the
reconcile has nothing to do) and drops them when the object is deleted."""

from __future__ import annotations

import logging
from typing import Any

import kopf
import pytest
from prometheus_client import REGISTRY, generate_latest

from kubequant.operator import reconciler
from kubequant.operator.config import OperatorConfig
from kubequant.operator.handlers import backtest as handler

pytestmark = pytest.mark.unit

BODY: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "Backtest",
    "metadata": {"name": "gauged", "namespace": "research-gauges", "uid": "u-9", "generation": 1},
    "spec": {"period": {"start": "2022-01-04", "end": "2022-06-30"}, "signal": {"file": {"path": "/s.csv"}}},
    "status": {
        "phase": "Succeeded",
        "observedGeneration": 1,
        "results": {
            "sharpe": 1.5,
            "ic": 0.04,
            "rankIc": 0.05,
            "icir": 0.6,
            "annualizedReturn": 0.2,
            "maxDrawdown": -0.1,
        },
    },
}
LABELS = 'name="gauged",namespace="research-gauges"'


def scrape() -> str:
    return generate_latest(REGISTRY).decode()


def test_finished_backtest_results_are_served_and_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        reconciler, "post_event", lambda *a, **k: pytest.fail("a finished object needs no event")
    )
    handler.reconcile_backtest(
        body=kopf.Body(BODY),
        patch=kopf.Patch(),
        memo=kopf.Memo(config=OperatorConfig()),
        logger=logging.getLogger(),
    )
    text = scrape()
    assert f"kubequant_backtest_sharpe{{{LABELS}}} 1.5" in text
    assert f"kubequant_backtest_ic{{{LABELS}}} 0.04" in text
    assert f"kubequant_backtest_max_drawdown_ratio{{{LABELS}}} -0.1" in text
    assert f'kubequant_object_phase{{kind="Backtest",{LABELS},phase="Succeeded"}} 1.0' in text
    handler.forget_backtest(body=kopf.Body(BODY))
    assert 'namespace="research-gauges"' not in scrape()
