"""docs/metrics.md is generated from the code's registries (drift-tested like the CRDs), names follow
the conventions, and the status-backed and risk gauges report what the code computed."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kubequant import metrics_docs
from kubequant.api.risk import RiskPolicySpec
from kubequant.operator.metrics import PhaseTracker, ResultsTracker
from kubequant.workloads.trading.node import metrics as trading_metrics
from kubequant.workloads.trading.risk.engine import RiskEngine

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_metrics_doc_is_current() -> None:
    """Fails when a metric is added, renamed or re-described without `python -m kubequant.metrics_docs`."""
    result = subprocess.run(
        [sys.executable, "-m", "kubequant.metrics_docs", "--check"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_stale_doc(tmp_path: Path) -> None:
    stale = tmp_path / "metrics.md"
    stale.write_text(metrics_docs.render().replace("kubequant_equity", "kubequant_equity_old"))
    assert metrics_docs.main(["--check", "--output", str(stale)]) == 1
    assert metrics_docs.main(["--output", str(stale)]) == 0
    assert metrics_docs.main(["--check", "--output", str(stale)]) == 0


def test_names_follow_the_conventions() -> None:
    docs = metrics_docs.registered()
    assert len(docs) >= 30
    for d in docs:
        assert re.fullmatch(r"kubequant_[a-z0-9_]+", d.name), d.name
        assert d.help, d.name
        assert d.name.endswith("_total") == (d.type == "counter"), d.name
        # Bounded labels: never an order id, a signal id or an instrument.
        assert not {"order", "order_id", "client_order_id", "signal_id", "instrument", "symbol"} & set(
            d.labels
        )
    names = {d.name for d in docs}
    assert "kubequant_signal_to_submit_seconds_bucket" in metrics_docs.series_names()
    assert {"kubequant_backtest_sharpe", "kubequant_trainingjob_ic", "kubequant_object_phase"} <= names


def scrape(*collectors: object) -> str:
    registry = CollectorRegistry()
    for c in collectors:
        registry.register(c)  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_results_gauges_follow_status_and_disappear_on_delete() -> None:
    results = ResultsTracker()
    status = {
        "phase": "Succeeded",
        "results": {
            "ic": 0.031,
            "rankIc": 0.042,
            "icir": 0.5,
            "sharpe": 1.25,
            "annualizedReturn": 0.12,
            "maxDrawdown": -0.08,
        },
    }
    results.observe("Backtest", "research", "bt1", status)
    results.observe(
        "TrainingJob",
        "research",
        "tj1",
        {"metrics": {"ic": 0.02, "rankIc": 0.03, "icir": 0.4, "validIc": 0.05}},
    )
    results.observe("Backtest", "research", "running", {"phase": "Running"})  # no results yet: no series
    text = scrape(results)
    assert 'kubequant_backtest_sharpe{name="bt1",namespace="research"} 1.25' in text
    assert 'kubequant_backtest_max_drawdown_ratio{name="bt1",namespace="research"} -0.08' in text
    assert 'kubequant_backtest_rank_ic{name="bt1",namespace="research"} 0.042' in text
    assert 'kubequant_trainingjob_valid_ic{name="tj1",namespace="research"} 0.05' in text
    assert "running" not in text
    results.forget("Backtest", "research", "bt1")
    text = scrape(results)
    assert 'name="bt1"' not in text and 'name="tj1"' in text


def test_phase_gauge_per_object() -> None:
    phases = PhaseTracker()
    phases.set("Backtest", "research/bt1", "Failed")
    phases.set("Backtest", "research/bt2", "Succeeded")
    text = scrape(phases)
    assert (
        'kubequant_object_phase{kind="Backtest",name="bt1",namespace="research",phase="Failed"} 1.0' in text
    )
    assert 'kubequant_objects{kind="Backtest",phase="Failed"} 1.0' in text
    phases.forget("Backtest", "research/bt1")
    assert 'name="bt1"' not in scrape(phases)


def test_record_risk_reports_the_engines_drawdown_daily_loss_and_trips() -> None:
    policy = RiskPolicySpec.model_validate(
        {"breakers": {"maxDrawdown": 0.05, "maxDailyLoss": 0.02, "action": "halt"}}
    )
    risk = RiskEngine(policy)
    now = dt.datetime(2026, 12, 2, 2, 0, tzinfo=dt.UTC)
    risk.observe_equity(Decimal("1000000"), now)
    trips = trading_metrics.BREAKER_TRIPS.labels("max_daily_loss")._value.get()
    risk.observe_equity(Decimal("970000"), now)  # -3% today, -3% from peak: the daily-loss breaker trips
    trading_metrics.record_risk(risk, Decimal("970000"))
    assert trading_metrics.DRAWDOWN._value.get() == pytest.approx(0.03)
    assert trading_metrics.DAILY_PNL._value.get() == pytest.approx(-30000)
    assert trading_metrics.DAILY_LOSS._value.get() == pytest.approx(0.03)
    assert trading_metrics.BREAKER_LIMIT.labels("max_drawdown")._value.get() == pytest.approx(0.05)
    assert trading_metrics.RISK_CONDITION.labels("max_daily_loss")._value.get() == 1
    assert trading_metrics.BREAKER_TRIPS.labels("max_daily_loss")._value.get() == trips + 1
    trading_metrics.record_risk(risk, Decimal("970000"))  # still holding: not a second trip
    assert trading_metrics.BREAKER_TRIPS.labels("max_daily_loss")._value.get() == trips + 1
    risk.set_kill_switch(True)
    trading_metrics.record_conditions(set(risk.conditions))
    assert trading_metrics.KILL_SWITCH._value.get() == 1
    risk.set_kill_switch(False)
    risk.reset("max_daily_loss")
    trading_metrics.record_conditions(set(risk.conditions))
    assert trading_metrics.KILL_SWITCH._value.get() == 0
    assert trading_metrics.RISK_CONDITION.labels("max_daily_loss")._value.get() == 0


def test_reconnects_count_only_a_regained_connection() -> None:
    before = trading_metrics.BROKER_RECONNECTS._value.get()
    for up in (True, True, False, False, True, True):
        trading_metrics.record_connectivity(up)
    assert trading_metrics.BROKER_RECONNECTS._value.get() == before + 1
    assert trading_metrics.BROKER_CONNECTED._value.get() == 1
