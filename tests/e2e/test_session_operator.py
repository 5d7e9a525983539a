"""LiveTradingSessions and RiskPolicies on a real API server: the operator runs the trading pod.

The trading pod really runs (hack/local_kubelet.py runs the container's command, with the journal's
PersistentVolumeClaim mapped to a local folder that outlives the pod). The operator runs as a
process with the chart's ServiceAccount token, so a missing RBAC rule fails these tests; the pod
runs as its own ServiceAccount and follows its session and RiskPolicy through the API.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubectl import kubectl
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from local_kubelet import LocalKubelet
from operator_process import LOCAL_RUNNER_POLICY, OperatorProcess, chart_operator, free_port

from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

pytestmark = pytest.mark.e2e

OPERATOR_NS = "kubequant-e2e-system"
LOCAL_NODE = "kq-local-session-e2e"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
LOCAL_POD = {
    "nodeSelector": {"kubequant.io/pool": "local", "kubernetes.io/hostname": LOCAL_NODE},
    "tolerations": [{"key": "kubequant.io/local-runner", "operator": "Exists", "effect": "NoSchedule"}],
}
TOKEN = "e2e-signal-token-0123456789abcdef"
GROUP, VERSION = "kubequant.io", "v1alpha1"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic market the pods read from the host (their spec.data.path)."""
    out = tmp_path_factory.mktemp("session-bundle") / "bundle"
    write_sample_bundle(out, SampleSpec(instruments=8, start="2020-01-01", end="2021-12-31", seed=11))
    return out


@pytest.fixture(scope="module")
def operator(
    core: client.CoreV1Api, kube_config: client.Configuration, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("session-operator")
    with chart_operator(
        core, kube_config, OPERATOR_NS, workdir, workload_policy=LOCAL_RUNNER_POLICY, tail_lines=60
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def kubelet(api_client: client.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKubelet]:
    with LocalKubelet(
        api_client,
        node_name=LOCAL_NODE,
        workdir=tmp_path_factory.mktemp("session-kubelet"),
        command_map={"kubequant": str(Path(sys.executable).parent / "kubequant")},
        restart_backoff_s=1.0,
    ) as runner:
        yield runner


@pytest.fixture
def volumes(core: client.CoreV1Api, kubelet: LocalKubelet, tmp_path: Path) -> Iterator[Any]:
    """``journal(namespace, session)``: a PersistentVolume bound to the session's journal claim, mapped
    by the LocalKubelet to a local folder (which survives the pod); the PVs are removed afterwards."""
    made: list[str] = []

    def journal(namespace: str, session: str) -> Path:
        claim = f"journal-{session}-trading-0"
        local = tmp_path / f"{namespace}-{claim}"
        kubelet.path_map[claim] = str(local)
        name = f"kq-e2e-{uuid.uuid4().hex[:10]}"
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
        try:
            core.delete_persistent_volume(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


# --------------------------------------------------------------------------- helpers


def policy_doc(name: str = "limits", **limits: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RiskPolicy",
        "metadata": {"name": name},
        "spec": {"limits": {"maxConcentration": 0.5, "maxDailyTrades": 100000, **limits}},
    }


def session_doc(
    name: str, port: int, bundle: Path, account: str = "paper-e2e", **spec: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LiveTradingSession",
        "metadata": {"name": name},
        "spec": {
            "account": account,
            "riskPolicyRef": {"name": "limits"},
            "strategy": {
                "signalApi": {"port": port, "tokenSecretRef": {"name": "signal-token", "key": "token"}}
            },
            "data": {"path": str(bundle)},
            "startingCash": 2_000_000,
            "exchange": {"openCost": 0.0005, "closeCost": 0.0015, "minCost": 5},
            # One bar a second; tests must not outlive the replay's ~480 bars.
            "replay": {"period": "2020-03-02..2021-12-30", "speed": 86400},
            "pod": LOCAL_POD,
        },
    }
    doc["spec"].update(spec)
    return doc


def token_secret(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "signal-token"}, "stringData": {"token": TOKEN}}
    )


def apply(namespace: str, *docs: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(docs), check=True)


def get(custom: client.CustomObjectsApi, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)  # type: ignore[no-any-return]


def status_of(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return get(custom, namespace, "livetradingsessions", name).get("status") or {}


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """The pod's signal API on loopback (the LocalKubelet's pods share the host's network)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
    except OSError:
        return 0, None


def journal_events(state: Path, kind: str) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{state / 'journal.sqlite'}?mode=ro", uri=True, timeout=10) as db:
        rows = db.execute("SELECT body FROM events WHERE kind = ? ORDER BY seq", (kind,)).fetchall()
    return [json.loads(body) for (body,) in rows]


def venue_submissions(state: Path) -> dict[str, int]:
    """Orders the paper venue received, by client order id (a second one is a duplicate)."""
    with sqlite3.connect(f"file:{state / 'paper-broker.sqlite'}?mode=ro", uri=True, timeout=10) as db:
        return dict(db.execute("SELECT client_order_id, COUNT(*) FROM submissions GROUP BY client_order_id"))


def wait_trading(
    custom: client.CustomObjectsApi,
    namespace: str,
    name: str,
    wait_until: Any,
    kubelet: LocalKubelet,
    timeout: float = 180,
) -> dict[str, Any]:
    def trading() -> dict[str, Any] | None:
        st = status_of(custom, namespace, name)
        return (
            st if st.get("phase") == "Trading" and condition(st, "Trading").get("status") == "True" else None
        )

    try:
        return wait_until(trading, timeout, f"session {name} Trading")  # type: ignore[no-any-return]
    except BaseException:
        try:
            print(kubelet.logs(f"{name}-trading-0", namespace)[-6000:])
        except KeyError:
            pass
        print(json.dumps(status_of(custom, namespace, name), indent=1))
        raise


def pod_uid(core: client.CoreV1Api, namespace: str, name: str) -> str | None:
    try:
        return core.read_namespaced_pod(name, namespace).metadata.uid  # type: ignore[no-any-return]
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def pod_status(port: int) -> dict[str, Any] | None:
    code, body = call(port, "GET", "/v1/status")
    return body if code == 200 else None


# --------------------------------------------------------------------------- tests


def test_a_paper_session_trades_halts_reloads_and_survives_sigkill_without_duplicates(
    operator: OperatorProcess,
    kubelet: LocalKubelet,
    make_namespace: Any,
    volumes: Any,
    bundle: Path,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    wait_until: Any,
) -> None:
    ns = make_namespace(RESTRICTED)
    token_secret(core, ns)
    state = volumes(ns, "paper")
    port = free_port()
    apply(ns, policy_doc(maxOrderQuantity=5000), session_doc("paper", port, bundle))
    st = wait_trading(custom, ns, "paper", wait_until, kubelet)
    assert st["tradingState"] == "ACTIVE" and st["podName"] == "paper-trading-0" and st["equity"] > 0
    assert {c["kind"] for c in st["children"]} == {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Service",
        "NetworkPolicy",
        "StatefulSet",
    }
    # kubectl: the printer columns, wait, explain.
    proc = kubectl("wait", "-n", ns, "lts/paper", "--for=condition=Trading", "--timeout=30s")
    assert proc.returncode == 0, proc.stderr
    header, row = kubectl("get", "lts", "paper", "-n", ns, check=True).stdout.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "PHASE", "STATE"] and row.split()[1:3] == ["Trading", "ACTIVE"]
    assert "ingressFrom" in kubectl("explain", "lts.spec.network", check=True).stdout
    assert "sessionNames" in kubectl("explain", "rp.status", check=True).stdout

    # Signals trade; the status shows the pod's numbers.
    code, answer = call(
        port, "POST", "/v1/signals", {"id": "sig-1", "targets": [{"instrument": "SYN0001", "quantity": 500}]}
    )
    assert code == 202 and answer["orders"][0]["accepted"], answer
    wait_until(
        lambda: (
            (status_of(custom, ns, "paper").get("ordersToday") or 0) >= 1
            or (status_of(custom, ns, "paper").get("positions") or 0) >= 1
        ),
        30,
        "the order in status",
    )
    st = wait_until(
        lambda: (lambda s: s if s.get("pnl") is not None and s.get("positions") else None)(
            status_of(custom, ns, "paper")
        ),
        30,
        "PnL",
    )
    assert isinstance(st["pnl"], float | int) and isinstance(st["drawdown"], float | int)

    # The kill switch reaches the running pod without a restart, journaled with who and why.
    kubectl("annotate", "-n", ns, "lts/paper", "kubequant.io/halt-reason=e2e drill", check=True)
    t0 = time.monotonic()
    kubectl("patch", "-n", ns, "lts/paper", "--type=merge", "-p", '{"spec":{"halted":true}}', check=True)
    wait_until(
        lambda: (pod_status(port) or {}).get("tradingState") == "HALTED", 10, "the pod HALTED", interval=0.05
    )
    halted_after = time.monotonic() - t0
    print(f"kill switch: kubectl patch → pod HALTED in {halted_after:.2f} s (kubectl's own start included)")
    code, answer = call(
        port,
        "POST",
        "/v1/signals",
        {"id": "sig-halted", "targets": [{"instrument": "SYN0002", "quantity": 100}]},
    )
    assert code == 202 and answer["orders"][0]["reason"] == "KILL_SWITCH", answer
    (switched,) = journal_events(state, "KillSwitchSet")
    assert switched["on"] is True and switched["source"] == "api" and switched["reason"] == "e2e drill"
    assert switched["by"].startswith("kubectl-patch"), switched
    st = wait_until(
        lambda: (lambda s: s if condition(s, "Halted").get("status") == "True" else None)(
            status_of(custom, ns, "paper")
        ),
        15,
        "Halted",
    )
    assert st["phase"] == "Halted" and condition(st, "Halted")["reason"] == "KillSwitch"
    assert st["tradingState"] == "HALTED" and "kill switch" in st["haltReason"]
    assert "StatefulSet" in {c["kind"] for c in st["children"]}
    assert core.read_namespaced_pod("paper-trading-0", ns).status.container_statuses[0].restart_count == 0
    kubectl("patch", "-n", ns, "lts/paper", "--type=merge", "-p", '{"spec":{"halted":false}}', check=True)
    wait_until(lambda: (pod_status(port) or {}).get("tradingState") == "ACTIVE", 10, "ACTIVE again")

    # A RiskPolicy change is applied live, journaled with its generation.
    t0 = time.monotonic()
    kubectl(
        "patch",
        "-n",
        ns,
        "rp/limits",
        "--type=merge",
        "-p",
        '{"spec":{"limits":{"maxOrderQuantity":150}}}',
        check=True,
    )
    generation = get(custom, ns, "riskpolicies", "limits")["metadata"]["generation"]
    wait_until(
        lambda: any(e["generation"] == generation for e in journal_events(state, "RiskPolicyApplied")),
        10,
        "the new policy journaled",
        interval=0.05,
    )
    print(f"RiskPolicy: kubectl patch → journaled in the pod in {time.monotonic() - t0:.2f} s")
    code, answer = call(
        port,
        "POST",
        "/v1/signals",
        {"id": "sig-big", "targets": [{"instrument": "SYN0003", "quantity": 1000}]},
    )
    assert code == 202 and answer["orders"][0]["reason"] == "ORDER_QUANTITY", answer
    rp = wait_until(
        lambda: (lambda r: r if (r.get("status") or {}).get("sessionNames") == ["paper"] else None)(
            get(custom, ns, "riskpolicies", "limits")
        ),
        30,
        "the policy's users",
    )
    assert rp["status"]["sessions"] == 1
    proc = kubectl("wait", "-n", ns, "rp/limits", "--for=condition=InUse", "--timeout=30s")
    assert proc.returncode == 0, proc.stderr
    header, row = kubectl("get", "rp", "limits", "-n", ns, check=True).stdout.splitlines()[:2]
    assert header.split()[:2] == ["NAME", "SESSIONS"] and row.split()[1] == "1"

    # The signal token never leaves its Secret: not in the ConfigMap, the status, Events, logs or metrics.
    config = core.read_namespaced_config_map("paper-trading-config", ns).data
    events = core.list_namespaced_event(ns).items
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    places = {
        "ConfigMap": json.dumps(config),
        "status": json.dumps(status_of(custom, ns, "paper")),
        "Events": " ".join(f"{e.reason} {e.message}" for e in events),
        "operator log": operator.log.read_text(errors="replace"),
        "pod log": kubelet.logs("paper-trading-0", ns),
        "metrics": metrics,
    }
    assert [where for where, text in places.items() if TOKEN in text] == []

    # SIGKILL mid-replay: the container restarts, recovers from the journal; then the pod is deleted
    # and the StatefulSet makes a new one on the same volume. Signals sent again change nothing.
    sent = [
        {"id": f"burst-{k}", "targets": [{"instrument": f"SYN000{1 + k % 6}", "quantity": 100}]}
        for k in range(12)
    ]
    for body in sent:
        assert call(port, "POST", "/v1/signals", body)[0] == 202
    run = kubelet._find_run("paper-trading-0", ns)
    assert run.proc is not None
    os.killpg(run.proc.pid, signal.SIGKILL)
    wait_until(lambda: (pod_status(port) or {}).get("phase") == "Trading", 120, "trading after SIGKILL")
    assert core.read_namespaced_pod("paper-trading-0", ns).status.container_statuses[0].restart_count >= 1
    old_uid = pod_uid(core, ns, "paper-trading-0")
    core.delete_namespaced_pod("paper-trading-0", ns)
    wait_until(lambda: pod_uid(core, ns, "paper-trading-0") not in (None, old_uid), 120, "a new pod")
    wait_until(lambda: (pod_status(port) or {}).get("phase") == "Trading", 120, "trading in the new pod")
    for body in sent:
        code, answer = call(port, "POST", "/v1/signals", body)
        assert code == 200 and answer["duplicate"] is True, answer
    duplicates = {cid: n for cid, n in venue_submissions(state).items() if n > 1}
    assert duplicates == {}
    assert len(journal_events(state, "RecoveryCompleted")) >= 3  # three lives on one journal
    wait_trading(custom, ns, "paper", wait_until, kubelet, timeout=60)
    # The runtime's reports do not each make the operator post an Event (kopf posts every handler run).
    events = core.list_namespaced_event(ns, field_selector="involvedObject.name=paper").items
    print(f"Events about lts/paper: {len(events)} ({sorted({e.reason for e in events})})")
    assert len(events) < 40, [(e.reason, e.message) for e in events]


def test_a_second_session_on_the_same_account_waits_naming_the_holder(
    operator: OperatorProcess,
    make_namespace: Any,
    bundle: Path,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    wait_until: Any,
) -> None:
    ns = make_namespace()
    token_secret(core, ns)
    apply(ns, policy_doc(), session_doc("first", free_port(), bundle, pod={}))
    wait_until(
        lambda: condition(status_of(custom, ns, "first"), "Accepted").get("status") == "True",
        60,
        "first accepted",
    )
    time.sleep(1)  # a later creationTimestamp (second precision)
    apply(ns, session_doc("second", free_port(), bundle, pod={}))
    accepted = wait_until(
        lambda: (lambda c: c if c.get("reason") == "AccountInUse" else None)(
            condition(status_of(custom, ns, "second"), "Accepted")
        ),
        60,
        "AccountInUse",
    )
    assert (
        accepted["status"] == "False"
        and "session first holds broker account paper-e2e" in accepted["message"]
    )
    apps = client.AppsV1Api(core.api_client)
    assert [s.metadata.name for s in apps.list_namespaced_stateful_set(ns).items] == ["first-trading"]
    # The holder goes: the second session starts once the first one's pod is gone too.
    kubectl("delete", "-n", ns, "lts/first", "--wait=true", check=True)
    wait_until(
        lambda: any(s.metadata.name == "second-trading" for s in apps.list_namespaced_stateful_set(ns).items),
        90,
        "second's StatefulSet",
    )


def test_a_policy_in_use_cannot_be_deleted_and_a_missing_one_is_waited_for(
    operator: OperatorProcess,
    make_namespace: Any,
    bundle: Path,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    wait_until: Any,
) -> None:
    ns = make_namespace()
    token_secret(core, ns)
    apps = client.AppsV1Api(core.api_client)
    # No policy yet: Pending with the reason, nothing created.
    apply(ns, session_doc("guarded", free_port(), bundle, pod={}))
    accepted = wait_until(
        lambda: (lambda c: c if c.get("reason") == "RiskPolicyNotFound" else None)(
            condition(status_of(custom, ns, "guarded"), "Accepted")
        ),
        60,
        "RiskPolicyNotFound",
    )
    assert "limits" in accepted["message"] and status_of(custom, ns, "guarded")["phase"] == "Pending"
    assert not apps.list_namespaced_stateful_set(ns).items
    # The policy appears: the session recovers by itself.
    apply(ns, policy_doc())
    wait_until(
        lambda: apps.list_namespaced_stateful_set(ns).items, 60, "the StatefulSet once the policy exists"
    )
    # Deleting the policy in use is blocked, with the reason on its status and an Event.
    wait_until(
        lambda: get(custom, ns, "riskpolicies", "limits")["metadata"].get("finalizers"), 30, "the finalizer"
    )
    kubectl("delete", "-n", ns, "rp/limits", "--wait=false", check=True)

    def blocked() -> dict[str, Any] | None:
        rp = get(custom, ns, "riskpolicies", "limits")
        cond = condition(rp.get("status") or {}, "InUse")
        return (
            rp
            if rp["metadata"].get("deletionTimestamp") and cond.get("reason") == "DeletionBlocked"
            else None
        )

    rp = wait_until(blocked, 30, "deletion blocked")
    assert "guarded" in rp["status"]["message"]
    events = core.list_namespaced_event(ns, field_selector="involvedObject.name=limits").items
    assert "DeletionBlocked" in {e.reason for e in events}
    time.sleep(3)
    assert get(custom, ns, "riskpolicies", "limits")  # still there, and still in force for its session
    assert condition(status_of(custom, ns, "guarded"), "Accepted")["status"] == "True"
    kubectl("delete", "-n", ns, "lts/guarded", "--wait=true", check=True)

    def gone() -> bool:
        try:
            get(custom, ns, "riskpolicies", "limits")
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_until(gone, 60, "the policy deleted once unused")


def test_a_missing_secret_leaves_a_clear_reason(
    operator: OperatorProcess,
    kubelet: LocalKubelet,
    make_namespace: Any,
    volumes: Any,
    bundle: Path,
    custom: client.CustomObjectsApi,
    wait_until: Any,
) -> None:
    ns = make_namespace(RESTRICTED)
    volumes(ns, "nosecret")
    apply(ns, policy_doc(), session_doc("nosecret", free_port(), bundle, account="other"))

    def waiting() -> dict[str, Any] | None:
        st = status_of(custom, ns, "nosecret")
        ready = condition(st, "Ready")
        return (
            st
            if ready.get("reason") == "ContainerCreating" and "signal-token" in ready.get("message", "")
            else None
        )

    st = wait_until(waiting, 90, "Ready=False naming the Secret")
    assert st["phase"] == "Pending"
    assert "spec.strategy.signalApi.tokenSecretRef" in condition(st, "Ready")["message"]


def test_the_trading_pods_are_admitted_under_restricted(
    operator: OperatorProcess,
    make_namespace: Any,
    bundle: Path,
    core: client.CoreV1Api,
    wait_until: Any,
) -> None:
    ns = make_namespace(RESTRICTED)
    token_secret(core, ns)
    apply(ns, policy_doc(), session_doc("hardened", free_port(), bundle, pod={}))
    apps = client.AppsV1Api(core.api_client)
    wait_until(lambda: apps.list_namespaced_stateful_set(ns).items, 60, "the StatefulSet")
    wait_until(lambda: core.list_namespaced_pod(ns).items, 60, "the pod to be created")
    events = core.list_namespaced_event(ns).items
    refused = [e.message for e in events if e.reason in ("FailedCreate", "FailedCreatePodFailed")]
    assert refused == []
    # Every child exists with the operator's name and controller reference.
    np = client.NetworkingV1Api(core.api_client).read_namespaced_network_policy("hardened-trading", ns)
    assert np.metadata.owner_references[0].kind == "LiveTradingSession"
    role = client.RbacAuthorizationV1Api(core.api_client).read_namespaced_role("hardened-trading", ns)
    assert all(rule.resource_names for rule in role.rules)
