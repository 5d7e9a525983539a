"""A new user's `kubequant operator --namespace X` with no chart: it says what it waits for, and stops when it is there."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kubectl import REPO_ROOT, kubeconfig, kubectl
from operator_process import OperatorProcess

pytestmark = pytest.mark.e2e


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"{what} within {timeout}s; the operator's log:\n{log()}")


def test_a_peered_operator_without_its_peering_object_says_so_and_resumes(
    namespace: str, tmp_path: Path
) -> None:
    # The chart's peering CRDs (as on any cluster the chart was installed on), but no KopfPeering here.
    kubectl(
        "apply",
        "--server-side",
        "-f",
        str(REPO_ROOT / "charts/kubequant/crds/kopf-peerings.kopf.dev.yaml"),
        check=True,
    )
    operator = OperatorProcess(
        Path(kubeconfig()),
        tmp_path / "operator.log",
        extra_env={"KUBEQUANT_PEERING_WARNING_SECONDS": "1"},
        peering=["--namespace", namespace],  # peered: no --standalone
    )
    operator.start()
    try:
        read = lambda: operator.log.read_text(errors="replace")  # noqa: E731
        waiting = re.compile(
            rf"WARNING.*kopf peering is mandatory and waits for KopfPeering kubequant in namespace {namespace}"
        )
        _wait_for(lambda: len(waiting.findall(read())) >= 2, 30, "two peering warnings", operator.tail)
        first = next(line for line in read().splitlines() if waiting.search(line))
        assert "--standalone" in first and "peering.create=true" in first
        # The way out the warning gives, as written there.
        manifest = re.search(r"echo '(\{.*?\})' \| kubectl apply -f -", first)
        assert manifest, first
        kubectl("apply", "-f", "-", stdin=manifest.group(1), check=True)
        assert json.loads(manifest.group(1))["metadata"]["namespace"] == namespace
        _wait_for(lambda: "kopf peering objects found" in read(), 30, "the all-clear", operator.tail)
        warnings_then = len(waiting.findall(read()))
        time.sleep(2.5)
        assert len(waiting.findall(read())) == warnings_then, "it kept warning after the object appeared"
    finally:
        operator.stop()
