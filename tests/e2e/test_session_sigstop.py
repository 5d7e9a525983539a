"""A trading pod whose process hangs (SIGSTOP) is restarted by its liveness probe, recovers from its
journal, and duplicates nothing (issue 17, "Disk and process faults").

The operator runs a paper LiveTradingSession on a LocalKubelet node (hack/local_kubelet.py), which
runs the pod's probes as the kubelet does. The probes are the operator's (operator/builders/session.py:
liveness GET /healthz every 10 s, 2 s timeout, 3 failures; readiness GET /readyz every 5 s); a
LiveTradingSession does not let its author change them, so the hang lasts the real 20-32 s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from local_kubelet import TAINT_KEY, LocalKubelet
from operator_process import LOCAL_RUNNER_POLICY, OperatorProcess, chart_operator, free_port
from test_session_operator import (
    OPERATOR_NS,
    RESTRICTED,
    apply,
    call,
    journal_events,
    pod_status,
    policy_doc,
    session_doc,
    token_secret,
    venue_submissions,
    wait_trading,
)

from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

NODE = "kq-local-sigstop-e2e"
POD_PLACEMENT = {
    "nodeSelector": {"kubequant.io/pool": "local", "kubernetes.io/hostname": NODE},
    "tolerations": [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
}
# The operator's liveness probe: a failure at most every 10 s, 3 in a row, each after a 2 s timeout.
LIVENESS_PERIOD_S, LIVENESS_FAILURES = 10, 3


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sigstop-bundle") / "bundle"
    write_sample_bundle(out, SampleSpec(instruments=8, start="2020-01-01", end="2021-12-31", seed=11))
    return out


@pytest.fixture(scope="module")
def operator(
    core: client.CoreV1Api, kube_config: client.Configuration, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    with chart_operator(
        core,
        kube_config,
        OPERATOR_NS,
        tmp_path_factory.mktemp("sigstop-operator"),
        workload_policy=LOCAL_RUNNER_POLICY,
        tail_lines=40,
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def kubelet(api_client: client.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKubelet]:
    with LocalKubelet(
        api_client,
        node_name=NODE,
        workdir=tmp_path_factory.mktemp("sigstop-kubelet"),
        command_map={"kubequant": str(Path(sys.executable).parent / "kubequant")},
        restart_backoff_s=1.0,
    ) as runner:
        yield runner


@pytest.fixture
def journal_volume(core: client.CoreV1Api, kubelet: LocalKubelet, tmp_path: Path) -> Iterator[Any]:
    """``journal(namespace, session)``: the session's journal claim bound to a PersistentVolume that the
    LocalKubelet maps to a local folder, which outlives the container."""
    made: list[str] = []

    def journal(namespace: str, session: str) -> Path:
        claim = f"journal-{session}-trading-0"
        local = tmp_path / f"{namespace}-{claim}"
        kubelet.path_map[claim] = str(local)
        name = f"kq-e2e-sigstop-{namespace[-6:]}"
        core.create_persistent_volume(
            {
                "metadata": {"name": name, "labels": {"kubequant.io/e2e": "true"}},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": str(local)},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            }
        )
        made.append(name)
        return local

    yield journal
    for name in made:
        with contextlib.suppress(ApiException):
            core.delete_persistent_volume(name)


def container_status(core: client.CoreV1Api, namespace: str, pod: str) -> client.V1ContainerStatus | None:
    statuses = core.read_namespaced_pod(pod, namespace).status.container_statuses or []
    return statuses[0] if statuses else None


def pod_events(core: client.CoreV1Api, namespace: str, pod: str) -> list[client.CoreV1Event]:
    return core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod}").items


def test_a_hung_trading_process_is_restarted_by_its_liveness_probe_without_duplicates(
    operator: OperatorProcess,
    kubelet: LocalKubelet,
    make_namespace: Any,
    journal_volume: Any,
    bundle: Path,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    wait_until: Any,
) -> None:
    ns = make_namespace(RESTRICTED)
    token_secret(core, ns)
    state = journal_volume(ns, "hang")
    port = free_port()
    pod = "hang-trading-0"
    apply(ns, policy_doc(maxOrderQuantity=5000), session_doc("hang", port, bundle, pod=POD_PLACEMENT))
    wait_trading(custom, ns, "hang", wait_until, kubelet)
    # Readiness is /readyz: the container is ready once recovery finished.
    wait_until(
        lambda: (s := container_status(core, ns, pod)) is not None and s.ready, 30, "the container ready"
    )
    uid = core.read_namespaced_pod(pod, ns).metadata.uid

    # Targets (positions), one per instrument, then two raised: each one order, accepted.
    signals = [
        {
            "id": f"before-hang-{k}",
            "targets": [{"instrument": f"SYN000{1 + k % 6}", "quantity": 100 * (1 + k // 6)}],
        }
        for k in range(8)
    ]
    ordered: set[str] = set()
    for body in signals:
        code, answer = call(port, "POST", "/v1/signals", body)
        assert code == 202 and answer["orders"] and all(o["accepted"] for o in answer["orders"]), answer
        ordered |= {o["clientOrderId"] for o in answer["orders"]}
    code, before = call(port, "GET", "/v1/orders")
    assert code == 200
    assert {
        o["clientOrderId"] for o in before["orders"] if o["signalId"].startswith("before-hang-")
    } == ordered
    assert len(ordered) == len(signals)

    run = kubelet._find_run(pod, ns)
    assert run.proc is not None
    pid = run.proc.pid
    # The process hangs: nothing answers, not even /healthz (connections queue in the backlog).
    os.killpg(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    unready_after: float | None = None
    try:

        def killing() -> client.CoreV1Event | None:
            nonlocal unready_after
            status = container_status(core, ns, pod)
            if unready_after is None and status is not None and status.ready is False:
                unready_after = time.monotonic() - stopped_at
            return next(
                (e for e in pod_events(core, ns, pod) if e.reason == "Killing" and "liveness" in e.message),
                None,
            )

        kill = wait_until(killing, 60, "the liveness probe to kill the hung container", interval=0.5)
        killed_after = time.monotonic() - stopped_at
    finally:
        # SIGCONT: the SIGTERM the kubelet sent is handled now (a graceful stop), well within its 60 s grace.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGCONT)
    assert kill.message == "Container trading failed liveness probe, will be restarted"
    # Three failures, one per 10 s period: not before 20 s of hang, not long after 32 s.
    minimum = LIVENESS_PERIOD_S * (LIVENESS_FAILURES - 1)
    assert minimum <= killed_after <= LIVENESS_PERIOD_S * LIVENESS_FAILURES + 10, killed_after
    assert unready_after is not None and unready_after < killed_after  # readiness noticed first
    unhealthy = [e for e in pod_events(core, ns, pod) if e.reason == "Unhealthy"]
    liveness = [e for e in unhealthy if e.message.startswith("Liveness probe failed: ")]
    assert len(liveness) == 1 and liveness[0].count == LIVENESS_FAILURES, [
        (e.message, e.count) for e in unhealthy
    ]
    assert f'"http://127.0.0.1:{port}/healthz"' in liveness[0].message
    assert "context deadline exceeded" in liveness[0].message

    def restarted() -> client.V1ContainerStatus | None:
        status = container_status(core, ns, pod)
        return status if status and status.restart_count == 1 and status.ready else None

    status = wait_until(restarted, 120, "the container restarted and ready again")
    recovered_after = time.monotonic() - stopped_at
    # Restarted in place by the probe: the same pod (no new pod from the StatefulSet), one restart.
    assert core.read_namespaced_pod(pod, ns).metadata.uid == uid
    terminated = status.last_state.terminated
    assert terminated is not None and terminated.exit_code == 0, terminated  # the graceful stop after SIGCONT
    assert terminated.container_id == f"local://{uid}/{pid}" and status.state.running is not None
    wait_until(lambda: (pod_status(port) or {}).get("phase") == "Trading", 30, "trading again")
    print(
        f"SIGSTOP → pod not ready {unready_after:.1f} s, liveness kill {killed_after:.1f} s, "
        f"restarted and ready {recovered_after:.1f} s"
    )

    # Recovered from the journal: a second RecoveryCompleted, nothing halted, the same orders.
    recoveries = journal_events(state, "RecoveryCompleted")
    assert len(recoveries) == 2 and all(r.get("halted") is None for r in recoveries), recoveries
    code, after = call(port, "GET", "/v1/orders")
    assert code == 200
    assert {
        o["clientOrderId"] for o in after["orders"] if o["signalId"].startswith("before-hang-")
    } == ordered
    ids = [o["clientOrderId"] for o in after["orders"]]
    assert len(ids) == len(set(ids))
    # Sent again after the restart: answered from the journal, never ordered twice.
    for body in signals:
        code, answer = call(port, "POST", "/v1/signals", body)
        assert code == 200 and answer["duplicate"] is True, answer
    assert {cid: n for cid, n in venue_submissions(state).items() if n > 1} == {}
    created = [e["client_order_id"] for e in journal_events(state, "OrderCreated")]
    assert len(created) == len(set(created)) and ordered <= set(created)
    fills = [e["fill"]["fill_id"] for e in journal_events(state, "OrderFilled") if e.get("fill")]
    assert len(fills) == len(set(fills))
