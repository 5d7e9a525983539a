"""`kubequant operator` without its peering objects says so at WARNING, with the two ways out, until they appear."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kubequant.operator.config import OperatorConfig
from kubequant.operator.peering import (
    Found,
    PeeringObject,
    awaited_objects,
    check,
    kubernetes_lookup,
    waiting_message,
    watch_until_present,
)

pytestmark = pytest.mark.unit


def test_what_kopf_waits_for_depends_on_the_namespaces_served() -> None:
    assert awaited_objects(OperatorConfig(standalone=True)) == []
    assert awaited_objects(OperatorConfig()) == [
        PeeringObject("ClusterKopfPeering", "clusterkopfpeerings", "kubequant")
    ]
    assert awaited_objects(OperatorConfig(namespaces="research, trading", peering="kq")) == [
        PeeringObject("KopfPeering", "kopfpeerings", "kq", "research"),
        PeeringObject("KopfPeering", "kopfpeerings", "kq", "trading"),
    ]
    # kopf accepts namespace globs; there is no object name to look for in those.
    assert awaited_objects(OperatorConfig(namespaces="team-*")) == []


def test_the_message_names_the_object_and_both_ways_out() -> None:
    obj = PeeringObject("KopfPeering", "kopfpeerings", "kubequant", "research")
    text = waiting_message([(obj, Found.MISSING)])
    assert "KopfPeering kubequant in namespace research" in text
    assert "no object is handled until it exists" in text
    assert "peering.create=true" in text and "--standalone" in text and "KUBEQUANT_STANDALONE" in text
    assert (
        """echo '{"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "kubequant", """
        """"namespace": "research"}}' | kubectl apply -f -"""
    ) in text
    assert "kopf-peerings.kopf.dev.yaml" not in text, "the CRD is there: no need to install it"
    cluster = PeeringObject("ClusterKopfPeering", "clusterkopfpeerings", "kubequant")
    text = waiting_message([(cluster, Found.NOT_SERVED)])
    assert "ClusterKopfPeering kubequant (its CRD is not installed)" in text
    assert "kubectl apply -f charts/kubequant/crds/kopf-peerings.kopf.dev.yaml && echo" in text


def test_it_warns_until_the_object_appears_then_says_so(caplog: pytest.LogCaptureFixture) -> None:
    obj = PeeringObject("ClusterKopfPeering", "clusterkopfpeerings", "kubequant")
    answers = iter([Found.NOT_SERVED, Found.MISSING, Found.PRESENT])
    slept: list[float] = []
    with caplog.at_level(logging.INFO, logger="kubequant.operator.peering"):
        watch_until_present([obj], lambda _: next(answers), 60, sleep=slept.append)
    levels = [(r.levelname, r.getMessage()[:40]) for r in caplog.records]
    assert [lvl for lvl, _ in levels] == ["WARNING", "WARNING", "INFO"], levels
    assert "kopf peering objects found" in caplog.records[-1].getMessage()
    assert slept == [60, 60]


def test_a_lookup_that_cannot_tell_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    obj = PeeringObject("ClusterKopfPeering", "clusterkopfpeerings", "kubequant")
    assert check([obj], lambda _: Found.UNKNOWN) == []
    with caplog.at_level(logging.INFO):
        watch_until_present([obj], lambda _: Found.UNKNOWN, 60, sleep=lambda _: None)
    assert caplog.records == []


class FakeCustomObjects:
    """CustomObjectsApi's two list calls, answering from a canned result."""

    def __init__(self, result: dict[str, Any] | ApiException) -> None:
        self.result = result
        self.calls: list[tuple[Any, ...]] = []

    def _answer(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls.append((*args, kwargs.get("field_selector")))
        if isinstance(self.result, ApiException):
            raise self.result
        return self.result

    list_namespaced_custom_object = _answer
    list_cluster_custom_object = _answer


@pytest.mark.parametrize(
    "result,found",
    [
        ({"items": [{"metadata": {"name": "kubequant"}}]}, Found.PRESENT),
        ({"items": []}, Found.MISSING),
        (ApiException(status=404), Found.NOT_SERVED),
        (ApiException(status=403), Found.UNKNOWN),
    ],
)
def test_the_lookup_lists_by_name_as_the_chart_s_rbac_allows(
    result: dict[str, Any] | ApiException, found: Found
) -> None:
    api = FakeCustomObjects(result)
    obj = PeeringObject("KopfPeering", "kopfpeerings", "kubequant", "research")
    assert kubernetes_lookup(api)(obj) is found  # type: ignore[arg-type]
    assert api.calls == [("kopf.dev", "v1", "research", "kopfpeerings", "metadata.name=kubequant")]
