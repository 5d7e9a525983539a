"""The kill switch and RiskPolicy changes of a running session, journaled (workloads/trading/risk/control.py)
and followed through the API (workloads/trading/node/cluster.py: the parts that need no server)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from kubequant.api.live import TradingState
from kubequant.api.risk import RiskPolicySpec
from kubequant.workloads.trading.node.cluster import RUNTIME_FIELDS, field_manager, runtime_status
from kubequant.workloads.trading.node.runtime import RuntimeConfig, TradingRuntime, read_session
from kubequant.workloads.trading.risk.control import policy_digest, set_kill_switch

pytestmark = pytest.mark.unit

SESSION = """\
apiVersion: kubequant.io/v1alpha1
kind: LiveTradingSession
metadata: {name: k, generation: 4}
spec: {account: a, riskPolicyRef: {name: p}}
---
apiVersion: kubequant.io/v1alpha1
kind: RiskPolicy
metadata: {name: p, generation: 2}
spec: {limits: {maxOrderQuantity: 500}}
"""


@pytest.fixture
def runtime(tmp_path: Path, market: Any) -> Any:
    path = tmp_path / "session.yaml"
    path.write_text(SESSION)
    session, _ = read_session(path)
    rt = TradingRuntime(
        RuntimeConfig(session=session, policy_path=path, state_dir=tmp_path, session_path=path), market
    )
    asyncio.run(rt.start())
    yield rt
    rt.close()


def kinds(rt: Any, kind: str) -> list[Any]:
    return [e for _, e in rt.journal.replay() if e.kind == kind]


def test_switching_the_kill_switch_off_leaves_a_latched_breaker_halted(runtime: Any) -> None:
    runtime.risk.set_condition("max_drawdown", TradingState.HALTED, "drawdown 0.3 >= 0.25")
    assert asyncio.run(set_kill_switch(runtime.oms, True, source="api", by="kubectl-patch", reason="drill"))
    assert not asyncio.run(
        set_kill_switch(runtime.oms, True, source="file")
    )  # the same state: nothing journaled
    assert asyncio.run(set_kill_switch(runtime.oms, False, source="api"))
    assert runtime.risk.state is TradingState.HALTED and "max_drawdown" in runtime.risk.conditions
    switched = kinds(runtime, "KillSwitchSet")
    assert [(e.on, e.source, e.by, e.reason) for e in switched] == [
        (True, "api", "kubectl-patch", "drill"),
        (False, "api", "", ""),
    ]


def test_a_new_policy_is_journaled_once_with_its_generation(runtime: Any) -> None:
    assert runtime.policy.name == "p" and runtime.policy.generation == 2
    tighter = RiskPolicySpec.model_validate({"limits": {"maxOrderQuantity": 100}})
    assert asyncio.run(runtime.policy.apply(tighter, source="api", generation=3))
    assert not asyncio.run(runtime.policy.apply(tighter, source="file", generation=3))  # the slower copy
    assert runtime.risk.policy.limits.max_order_quantity == 100
    (applied,) = kinds(runtime, "RiskPolicyApplied")
    assert (applied.name, applied.generation, applied.source, applied.digest) == (
        "p",
        3,
        "api",
        policy_digest(tighter),
    )


def test_an_older_session_file_than_the_api_delivered_is_ignored(runtime: Any) -> None:
    assert runtime.saw_session(6)  # the API's generation 6
    assert not runtime.saw_session(5)  # then a kubelet refresh of the ConfigMap written at 5
    assert runtime.saw_session(6) and runtime.saw_session(None)


def test_the_report_clears_what_the_runtime_no_longer_says() -> None:
    body = runtime_status({"phase": "Trading", "tradingState": "ACTIVE", "equity": 1.0, "conditions": []})
    assert set(body) == set(RUNTIME_FIELDS) and body["haltReason"] is None  # null: the merge patch removes it
    assert "phase" not in body and "conditions" not in body  # the operator's


def test_who_set_the_kill_switch_comes_from_managed_fields() -> None:
    meta = {
        "managedFields": [
            {
                "manager": "kubectl-client-side-apply",
                "operation": "Update",
                "time": "2026-01-01T00:00:00Z",
                "fieldsV1": {"f:spec": {"f:account": {}}},
            },
            {
                "manager": "kubectl-patch",
                "operation": "Update",
                "time": "2026-01-02T00:00:00Z",
                "fieldsV1": {"f:spec": {"f:halted": {}}},
            },
        ]
    }
    assert field_manager(meta, "halted") == "kubectl-patch (Update) at 2026-01-02T00:00:00Z"
    assert field_manager({}, "halted") == ""
