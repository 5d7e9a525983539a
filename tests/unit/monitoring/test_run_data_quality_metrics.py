"""A finished Backtest's data quality: carried in its termination message, served by the operator."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kubequant.api.results import BacktestResults
from kubequant.operator.metrics import DataQualityTracker
from kubequant.workloads.backtest.runner import termination_payload

QUALITY = {
    "missingRatio": {"close": 0.002, "volume": 0.25},
    "instruments": 300,
    "instrumentsMissing": 2,
    "missingInstruments": ["SH600001", "SZ000002"],
}


def scrape(tracker: DataQualityTracker) -> str:
    registry = CollectorRegistry()
    registry.register(tracker)
    return generate_latest(registry).decode()


def test_the_operator_serves_the_missing_ratio_by_field_and_the_missing_count() -> None:
    tracker = DataQualityTracker()
    tracker.observe(
        "Backtest", "research", "bt1", {"phase": "Succeeded", "results": {"dataQuality": QUALITY}}
    )
    text = scrape(tracker)
    assert (
        'kubequant_run_data_missing_ratio{field="volume",kind="Backtest",name="bt1",namespace="research"} 0.25'
        in text
    )
    assert (
        'kubequant_run_data_missing_ratio{field="close",kind="Backtest",name="bt1",namespace="research"} 0.002'
        in text
    )
    assert 'kubequant_run_instruments_missing{kind="Backtest",name="bt1",namespace="research"} 2.0' in text
    tracker.forget("Backtest", "research", "bt1")
    assert "bt1" not in scrape(tracker)


@pytest.mark.parametrize(
    "status",
    [
        None,
        {"phase": "Running"},
        {"results": {"sharpe": 1.0}},
        {"results": {"dataQuality": {"missingRatio": {"close": "x"}}}},
    ],
)
def test_no_data_quality_no_series(status: dict | None) -> None:
    tracker = DataQualityTracker()
    tracker.observe("Backtest", "ns", "old", {"results": {"dataQuality": QUALITY}})
    tracker.observe("Backtest", "ns", "old", status)  # a rerun's status without figures drops the old ones
    assert "old" not in scrape(tracker)


def test_termination_payload_keeps_everything_that_fits() -> None:
    results = BacktestResults.model_validate({"sharpe": 1.5, "trades": 10, "dataQuality": QUALITY})
    assert json.loads(termination_payload(results)) == results.to_manifest()


def test_termination_payload_drops_the_instrument_names_before_the_headline_figures() -> None:
    results = BacktestResults.model_validate(
        {"sharpe": 1.5, "trades": 10, "dataQuality": {**QUALITY, "missingInstruments": ["X" * 250] * 20}}
    )
    text = termination_payload(results)
    assert len(text.encode()) <= 4096
    body = json.loads(text)
    assert body["sharpe"] == 1.5
    assert body["dataQuality"]["instrumentsMissing"] == 2
    assert "missingInstruments" not in body["dataQuality"]
    with pytest.raises(ValueError, match="more than 100 bytes"):
        termination_payload(BacktestResults.model_validate({"report": "r" * 2000}), limit=100)


def test_a_trainingjobs_data_quality_is_served_from_its_status() -> None:
    tracker = DataQualityTracker()
    tracker.observe("TrainingJob", "research", "lgb", {"phase": "Succeeded", "dataQuality": QUALITY})
    text = scrape(tracker)
    assert (
        'kubequant_run_data_missing_ratio{field="volume",kind="TrainingJob",name="lgb",namespace="research"} 0.25'
        in text
    )
    assert 'kubequant_run_instruments_missing{kind="TrainingJob",name="lgb",namespace="research"} 2.0' in text
