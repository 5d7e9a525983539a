"""The submitter's contract with the operator: the termination message, the log lines it reads, its env."""

from __future__ import annotations

import json

import pytest

from kubequant.errors import ConfigError
from kubequant.workloads.training import submit

pytestmark = pytest.mark.unit

RESULT = {
    "modelUri": "/var/run/kubequant/artifacts/default/lgb",
    "bestMetric": 0.0612,
    "bestParams": {"learning_rate": 0.05, "num_leaves": 64},
    "trials": 8,
    "metrics": {"ic": 0.061, "icir": 0.98, "rankIc": 0.072, "rankIcir": 1.1, "validIc": 0.06, "loss": 0.99},
}


def test_a_small_result_is_kept_whole() -> None:
    text = submit.termination_payload(RESULT)
    assert json.loads(text) == RESULT
    assert len(text.encode()) <= submit.TERMINATION_LIMIT


def test_best_params_are_dropped_first_when_the_message_is_too_big() -> None:
    big = {**RESULT, "bestParams": {f"param_{i}": "x" * 64 for i in range(80)}}
    text = submit.termination_payload(big)
    assert len(text.encode()) <= submit.TERMINATION_LIMIT
    kept = json.loads(text)
    assert "bestParams" not in kept
    assert kept["metrics"] == RESULT["metrics"] and kept["bestMetric"] == RESULT["bestMetric"]


def test_the_data_quality_goes_next_then_metrics_then_a_clear_error() -> None:
    quality = {"missingRatio": {"close": 0.5}, "instruments": 9, "instrumentsMissing": 3}
    named = {**quality, "missingInstruments": ["SH600000" + "X" * 40] * 20}
    with_quality = {**RESULT, "bestParams": {"a": "x" * 5000}, "dataQuality": named}
    # The named instruments go first, the counts stay.
    kept = json.loads(submit.termination_payload(with_quality, limit=700))
    assert (
        kept["dataQuality"] == quality and "bestParams" not in kept and kept["metrics"] == RESULT["metrics"]
    )
    # Then the data quality, then the metrics.
    kept = json.loads(submit.termination_payload(with_quality, limit=len(json.dumps(RESULT)) - 10))
    assert "dataQuality" not in kept and "metrics" in kept
    text = submit.termination_payload({**RESULT, "bestParams": {"a": "x" * 5000}}, limit=120)
    assert json.loads(text) == {k: v for k, v in RESULT.items() if k not in ("bestParams", "metrics")}
    text = submit.termination_payload({**RESULT, "modelUri": "/" + "m" * 4100})
    assert "does not fit" in json.loads(text)["error"]


def test_the_last_result_line_of_the_logs_is_taken_and_validated() -> None:
    logs = "\n".join(
        [
            "[    1.0s] ray       connecting",
            "kubequant-result: " + json.dumps({"trials": 1}),
            "some later log line",
            "kubequant-result: " + json.dumps(RESULT),
        ]
    )
    result, error = submit.parse_logs(logs)
    assert result == RESULT and error is None


def test_an_error_line_is_read_and_a_bad_result_line_is_not_a_result() -> None:
    result, error = submit.parse_logs("noise\nkubequant-error: spec.model: cannot import x — fix: check it\n")
    assert result is None and error == "spec.model: cannot import x — fix: check it"
    result, error = submit.parse_logs('kubequant-result: {"trials": -3}\n')
    assert result is None and "unreadable result" in error
    assert submit.parse_logs("nothing here") == (None, None)


def test_error_payload_is_redacted_and_bounded() -> None:
    text = submit.error_payload("failed with token=ghp_" + "a" * 36 + " " + "y" * 9000)
    body = json.loads(text)
    assert set(body) == {"error"}
    assert "ghp_" + "a" * 36 not in body["error"]
    assert len(text.encode()) <= submit.TERMINATION_LIMIT


def test_dashboard_address_becomes_a_url() -> None:
    assert submit.dashboard_url("raycluster-head-svc.ns.svc.cluster.local:8265") == (
        "http://raycluster-head-svc.ns.svc.cluster.local:8265"
    )
    assert submit.dashboard_url("https://ray.example:443") == "https://ray.example:443"


def test_missing_kuberay_env_is_named() -> None:
    assert submit.submission_env({"RAY_DASHBOARD_ADDRESS": "h:8265", "RAY_JOB_SUBMISSION_ID": "tj-1"}) == (
        "h:8265",
        "tj-1",
    )
    with pytest.raises(ConfigError, match="RAY_JOB_SUBMISSION_ID not set"):
        submit.submission_env({"RAY_DASHBOARD_ADDRESS": "h:8265"})
    with pytest.raises(ConfigError, match="RAY_DASHBOARD_ADDRESS and RAY_JOB_SUBMISSION_ID not set"):
        submit.submission_env({})


def test_a_dashboard_that_is_not_ready_is_retried_and_a_real_refusal_is_not() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError(
                "Request failed with status code 500: No available agent to submit job, please try again later."
            )
        return "submitted"

    assert submit.retrying(flaky, "submitting", patience_s=5, pause_s=0.01) == "submitted"
    assert len(calls) == 3

    def refused() -> None:
        calls.append(1)
        raise RuntimeError("Request failed with status code 400: bad entrypoint")

    calls.clear()
    with pytest.raises(RuntimeError, match="400"):
        submit.retrying(refused, "submitting", patience_s=5, pause_s=0.01)
    assert len(calls) == 1


def test_retrying_gives_up_after_its_patience() -> None:
    def down() -> None:
        raise ConnectionError("connection refused")

    with pytest.raises(ConnectionError):
        submit.retrying(down, "connecting", patience_s=0.05, pause_s=0.01)
