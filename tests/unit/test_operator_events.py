"""The operator's Events: each transition announced once, however often its reconcile is retried.

An API server restarted between a handler and kopf's status patch made the retried reconcile announce
the same transition again (Backtests "Accepted" twice, seen by tests/e2e/test_operator_cluster_faults.py).
Events are now named after what they announce, so the API server refuses the repeat (409).
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import re
from typing import Any

import kopf
import pytest
import urllib3
from kubernetes.client.rest import ApiException

from kubequant.operator import kube, reconciler
from kubequant.operator.builders.events import MAX_MESSAGE, build_event, event_name, status_digest
from kubequant.operator.config import OperatorConfig
from kubequant.operator.handlers import backtest as handler
from kubequant.operator.handlers.session import SESSION

pytestmark = pytest.mark.unit

BODY: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "Backtest",
    "metadata": {"name": "lgb", "namespace": "research", "uid": "u-1", "generation": 1},
    "spec": {
        "period": {"start": "2022-01-04", "end": "2022-06-30"},
        "signal": {"file": {"path": "/s.csv"}},
        "suspend": True,
    },
}
# A DNS subdomain, as the API server checks an Event's name.
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
NOW = dt.datetime(2026, 12, 3, 9, 30, tzinfo=dt.UTC)


class Events:
    """The API server's Events: a create under a taken name is refused, as with 409 AlreadyExists."""

    def __init__(self) -> None:
        self.by_name: dict[str, dict[str, Any]] = {}
        self.attempts = 0

    def create(self, event: dict[str, Any]) -> bool:
        self.attempts += 1
        name = event["metadata"]["name"]
        assert DNS_SUBDOMAIN.match(name) and len(name) <= 253, name
        if name in self.by_name:
            return False
        self.by_name[name] = event
        return True

    def reasons(self) -> list[str]:
        return sorted(e["reason"] for e in self.by_name.values())


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Events:
    server = Events()
    monkeypatch.setattr(kube, "apply", lambda obj, **_: obj)
    monkeypatch.setattr(kube, "job_pods", lambda *a, **k: [])
    monkeypatch.setattr(kube, "pvc_exists", lambda ns, name: True)
    monkeypatch.setattr(kube, "create_event", server.create)
    return server


def reconcile(body: dict[str, Any]) -> dict[str, Any]:
    """One run of the creation handler; the status kopf would patch."""
    patch = kopf.Patch()
    handler.reconcile_backtest(
        body=kopf.Body(copy.deepcopy(body)),
        patch=patch,
        memo=kopf.Memo(config=OperatorConfig()),
        logger=logging.getLogger(),
    )
    return dict(patch.get("status") or {})


def test_a_reconcile_retried_after_its_status_write_was_lost_announces_nothing_twice(events: Events) -> None:
    first = reconcile(BODY)
    assert first["phase"] == "Suspended"
    assert events.reasons() == ["Accepted", "Suspended"]
    # kopf's patch never landed (the API server was restarting): the retry sees the same old status.
    again = reconcile(BODY)
    assert again["phase"] == "Suspended"
    assert events.attempts == 4, "the retry posts again (the server, not the operator, knows what landed)"
    assert events.reasons() == ["Accepted", "Suspended"], "each transition announced once"
    # Once the status landed, a later reconcile has nothing to announce.
    reconcile({**BODY, "status": first})
    assert events.attempts == 4


def test_the_same_transition_from_another_status_is_a_new_event(events: Events) -> None:
    def degraded(since: str) -> dict[str, Any]:
        return {
            "phase": "Trading",
            "conditions": [
                {"type": "Degraded", "status": "False", "reason": "AsExpected", "lastTransitionTime": since}
            ],
        }

    new = {
        "phase": "Trading",
        "conditions": [
            {
                "type": "Degraded",
                "status": "True",
                "reason": "BrokerDisconnected",
                "message": "no answer from the venue",
                "lastTransitionTime": "t2",
            }
        ],
    }
    body = {"apiVersion": "kubequant.io/v1alpha1", "kind": "LiveTradingSession", "metadata": BODY["metadata"]}
    log = logging.getLogger()
    reconciler.announce(SESSION, body, degraded("t0"), new, log)
    reconciler.announce(SESSION, body, degraded("t0"), new, log)  # a body lagging the write: the same
    assert events.reasons() == ["BrokerDisconnected"]
    reconciler.announce(SESSION, body, degraded("t1"), new, log)  # disconnected again, later
    assert events.reasons() == ["BrokerDisconnected", "BrokerDisconnected"]


@pytest.mark.parametrize(
    "failure",
    [
        ApiException(status=500, reason="Internal Server Error"),
        ApiException(status=403, reason="Forbidden"),
        urllib3.exceptions.MaxRetryError(None, "/api/v1/namespaces/research/events", "refused"),  # type: ignore[arg-type]
    ],
)
def test_an_event_that_cannot_be_posted_is_logged_and_the_reconcile_goes_on(
    monkeypatch: pytest.MonkeyPatch, events: Events, failure: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(event: dict[str, Any]) -> bool:
        raise failure

    monkeypatch.setattr(kube, "create_event", refuse)
    with caplog.at_level(logging.WARNING, logger=reconciler.__name__):
        status = reconcile(BODY)
    assert status["phase"] == "Suspended"
    assert "posting the Event lgb.accepted." in caplog.text


def test_event_names_are_stable_valid_and_distinct() -> None:
    body = {"metadata": {"name": "lgb", "namespace": "research", "uid": "u-1"}}
    assert event_name(body, "Accepted", "accepted") == event_name(copy.deepcopy(body), "Accepted", "accepted")
    assert event_name(body, "Accepted", "accepted").startswith("lgb.accepted.")
    others = {
        event_name(body, "Accepted", "other key"),
        event_name(body, "Suspended", "accepted"),
        event_name({"metadata": {**body["metadata"], "uid": "u-2"}}, "Accepted", "accepted"),
    }
    assert event_name(body, "Accepted", "accepted") not in others and len(others) == 3
    long = {"metadata": {"name": "a" * 253, "namespace": "research"}}
    for reason in ("Accepted", "QuotaExceeded", "Degraded=True: odd/Reason_", ""):
        name = event_name(long, reason, "k")
        assert DNS_SUBDOMAIN.match(name) and len(name) <= 253, name


def test_the_event_names_its_object_and_keeps_a_long_message_s_start_and_end() -> None:
    body = {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "Backtest",
        "metadata": {"name": "lgb", "namespace": "research", "uid": "u-1"},
    }
    message = "start " + "x" * 5000 + " end"
    event = build_event(
        body, type="Warning", reason="Failed", message=message, key="k", now=NOW, instance="operator-0"
    )
    assert event["involvedObject"] == {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "Backtest",
        "name": "lgb",
        "namespace": "research",
        "uid": "u-1",
    }
    assert event["metadata"]["namespace"] == "research"
    assert len(event["message"]) == MAX_MESSAGE
    assert event["message"].startswith("start ") and event["message"].endswith(" end")
    assert event["eventTime"] == "2026-12-03T09:30:00.000000Z" and event["reportingInstance"] == "operator-0"


def test_the_status_digest_ignores_key_order() -> None:
    assert status_digest({"a": 1, "b": [1, 2]}) == status_digest({"b": [1, 2], "a": 1})
    assert status_digest(None) == status_digest({}) != status_digest({"phase": "Pending"})
