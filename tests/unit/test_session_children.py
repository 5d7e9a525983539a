"""The trading pod as the operator builds it, its status, and the session handler's decisions (no cluster)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
from typing import Any

import kopf
import pytest
import yaml

from kubequant.api.live import LiveTradingSession
from kubequant.api.risk import RiskPolicy
from kubequant.manifests import parse_resource
from kubequant.operator import kube, reconciler
from kubequant.operator.builders import session as builders
from kubequant.operator.builders.common import SPEC_HASH_ANNOTATION, converge_patch, with_spec_hash
from kubequant.operator.config import OperatorConfig
from kubequant.operator.handlers import session as handler
from kubequant.operator.status import policy as policy_status
from kubequant.operator.status import session as status

pytestmark = pytest.mark.unit

NS = "trading"
SESSION: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "LiveTradingSession",
    "metadata": {"name": "paper", "namespace": NS, "uid": "u-s", "generation": 3, "creationTimestamp": "t1"},
    "spec": {
        "account": "acct-1",
        "riskPolicyRef": {"name": "limits"},
        "strategy": {"signalApi": {"port": 8090, "tokenSecretRef": {"name": "signal-token", "key": "token"}}},
        "journal": {"size": "2Gi", "storageClassName": "fast"},
    },
}
POLICY: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "RiskPolicy",
    "metadata": {"name": "limits", "namespace": NS, "uid": "u-p", "generation": 7},
    "spec": {"limits": {"maxOrderQuantity": 1000}},
}
T0 = dt.datetime(2026, 3, 2, 9, 30, tzinfo=dt.UTC)


def session(**spec: Any) -> LiveTradingSession:
    doc = copy.deepcopy(SESSION)
    doc["spec"].update(spec)
    out = parse_resource(doc)
    assert isinstance(out, LiveTradingSession)
    return out


def policy() -> RiskPolicy:
    out = parse_resource(copy.deepcopy(POLICY))
    assert isinstance(out, RiskPolicy)
    return out


def children(
    s: LiveTradingSession | None = None, cfg: OperatorConfig | None = None
) -> dict[str, dict[str, Any]]:
    return {
        o["kind"]: o
        for o in builders.build_session_children(s or session(), policy(), cfg or OperatorConfig())
    }


# --------------------------------------------------------------------------- builders


def test_children_in_order_with_deterministic_names_and_our_controller_reference() -> None:
    built = builders.build_session_children(session(), policy(), OperatorConfig())
    assert [o["kind"] for o in built] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Service",
        "NetworkPolicy",
        "StatefulSet",
    ]
    names = {o["kind"]: o["metadata"]["name"] for o in built}
    assert names["ConfigMap"] == "paper-trading-config" and names["StatefulSet"] == "paper-trading"
    for obj in built:
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref["controller"] and ref["blockOwnerDeletion"] and ref["uid"] == "u-s"
        assert obj["metadata"]["labels"]["kubequant.io/livetradingsession"] == "paper"


def test_a_long_name_leaves_room_for_the_pod_and_its_journal_claim() -> None:
    name = "s" * 200
    assert len(builders.pod_name(name)) <= 63 and len(builders.journal_claim_name(name)) <= 63


def test_one_replica_restricted_with_probes_and_a_graceful_stop() -> None:
    sts = children()["StatefulSet"]
    spec = sts["spec"]
    assert spec["replicas"] == 1 and spec["podManagementPolicy"] == "OrderedReady"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert (
        pod["securityContext"]["runAsNonRoot"]
        and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    )
    ctx = container["securityContext"]
    assert (
        ctx["allowPrivilegeEscalation"] is False
        and ctx["readOnlyRootFilesystem"]
        and ctx["capabilities"]["drop"] == ["ALL"]
    )
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 300
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert container["ports"] == [{"name": "http", "containerPort": 8090, "protocol": "TCP"}]
    assert container["terminationMessagePolicy"] == "File"
    args = container["args"]
    assert args[:2] == ["workload", "trading"] and args[args.index("--port") + 1] == "8090"
    assert args[args.index("--api-dir") + 1] == builders.API_DIR
    assert args[args.index("--token-file") + 1] == builders.TOKEN_FILE


def test_the_journal_is_a_claim_from_spec_journal_kept_unless_asked() -> None:
    spec = children()["StatefulSet"]["spec"]
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "journal"
    assert (
        claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
        and claim["spec"]["storageClassName"] == "fast"
    )
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    gone = children(session(journal={"deleteWithSession": True}))["StatefulSet"]["spec"]
    assert gone["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"


def test_secrets_are_mounted_by_reference_and_never_copied() -> None:
    s = session(broker={"type": "alpaca", "credentialsSecretRef": {"name": "alpaca-keys"}}, mode="live")
    built = children(s)
    pod = built["StatefulSet"]["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    assert secrets["broker"]["secretName"] == "alpaca-keys"
    assert secrets["signal-token"] == {
        "secretName": "signal-token",
        "items": [{"key": "token", "path": "token"}],
        "defaultMode": 0o440,
    }
    # No Secret's content or key name anywhere else: not in the ConfigMap, not in env.
    assert not any("valueFrom" in e for e in pod["containers"][0]["env"])
    config = json.dumps(built["ConfigMap"]["data"])
    assert "alpaca-keys" in config  # the reference, as the user wrote it, is all the pod reads
    assert pod["automountServiceAccountToken"] is False
    (api,) = [v for v in pod["volumes"] if v["name"] == "kube-api"]
    token = next(s["serviceAccountToken"] for s in api["projected"]["sources"] if "serviceAccountToken" in s)
    assert token["expirationSeconds"] <= 3600


def test_the_pods_role_reads_only_its_own_session_and_policy_by_name() -> None:
    built = children()
    rules = built["Role"]["rules"]
    assert all(r["resourceNames"] for r in rules)
    granted = {
        (res, verb, tuple(r["resourceNames"])) for r in rules for res in r["resources"] for verb in r["verbs"]
    }
    assert granted == {
        ("livetradingsessions", "get", ("paper",)),
        ("livetradingsessions", "list", ("paper",)),
        ("livetradingsessions", "watch", ("paper",)),
        ("livetradingsessions/status", "patch", ("paper",)),
        ("riskpolicies", "get", ("limits",)),
        ("riskpolicies", "list", ("limits",)),
        ("riskpolicies", "watch", ("limits",)),
    }
    subject = built["RoleBinding"]["subjects"][0]
    assert subject == {"kind": "ServiceAccount", "name": "paper-trading", "namespace": NS}
    assert built["StatefulSet"]["spec"]["template"]["spec"]["serviceAccountName"] == "paper-trading"


def test_network_policy_default_same_namespace_and_egress_only_dns_api_and_broker() -> None:
    np = children()["NetworkPolicy"]["spec"]
    assert np["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = np["ingress"]
    assert ingress["from"] == [{"podSelector": {}}] and ingress["ports"] == [
        {"port": 8090, "protocol": "TCP"}
    ]
    assert len(np["egress"]) == 2  # DNS and the API server: the paper broker needs no network
    cfg = OperatorConfig(api_server_cidrs=["10.0.0.1/32"], api_server_ports=[6443])
    peers = [
        {
            "namespaceSelector": {"matchLabels": {"team": "quant"}},
            "podSelector": {"matchLabels": {"app": "signals"}},
        }
    ]
    s = session(
        broker={"type": "alpaca", "credentialsSecretRef": {"name": "k"}},
        network={"ingressFrom": peers, "brokerCidrs": ["203.0.113.0/24"]},
    )
    np = children(s, cfg)["NetworkPolicy"]["spec"]
    assert np["ingress"][0]["from"] == peers
    dns, api, broker = np["egress"]
    assert dns["ports"][0]["port"] == 53
    assert api == {"ports": [{"port": 6443, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}]}
    assert broker == {
        "ports": [{"port": 443, "protocol": "TCP"}],
        "to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
    }


def test_the_config_map_holds_the_session_and_the_resolved_policy_with_generations() -> None:
    data = children()["ConfigMap"]["data"]
    s = yaml.safe_load(data["session.yaml"])
    p = yaml.safe_load(data["policy.yaml"])
    assert (
        s["kind"] == "LiveTradingSession"
        and s["metadata"]["generation"] == 3
        and s["spec"]["halted"] is False
    )
    assert p["kind"] == "RiskPolicy" and p["metadata"]["generation"] == 7
    assert p["spec"]["limits"]["maxOrderQuantity"] == 1000


# --------------------------------------------------------------------------- convergence


def hashed(s: LiveTradingSession, cfg: OperatorConfig | None = None) -> dict[str, dict[str, Any]]:
    return {k: with_spec_hash(v) for k, v in children(s, cfg).items()}


def test_the_kill_switch_changes_the_config_map_but_never_restarts_the_pod() -> None:
    before, after = hashed(session()), hashed(session(halted=True))
    changed = {
        k for k in before if before[k]["metadata"]["annotations"] != after[k]["metadata"]["annotations"]
    }
    assert changed == {"ConfigMap"}


def test_an_image_or_resources_change_patches_the_stateful_set() -> None:
    before = hashed(session())
    after = hashed(session(pod={"image": "ghcr.io/kubequant/kubequant:0.2.0"}))
    existing = {**before["StatefulSet"], "metadata": {**before["StatefulSet"]["metadata"], "uid": "u-sts"}}
    ops = converge_patch(existing, after["StatefulSet"])
    assert ops is not None and ops[0] == {"op": "test", "path": "/metadata/uid", "value": "u-sts"}
    spec_op = next(op for op in ops if op["path"] == "/spec")
    assert spec_op["op"] == "replace"
    assert (
        spec_op["value"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/kubequant/kubequant:0.2.0"
    )
    hash_op = ops[-1]
    assert hash_op["path"].endswith("kubequant.io~1spec-hash")
    assert hash_op["value"] == after["StatefulSet"]["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    assert converge_patch(after["StatefulSet"], after["StatefulSet"]) is None  # unchanged: no write


# --------------------------------------------------------------------------- status


def pod(
    *,
    ready: bool = True,
    running: bool = True,
    waiting: dict[str, str] | None = None,
    terminated: dict[str, Any] | None = None,
    last: dict[str, Any] | None = None,
) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if running:
        state["running"] = {"startedAt": "2026-03-02T09:00:00Z"}
    if waiting:
        state["waiting"] = waiting
    if terminated:
        state["terminated"] = terminated
    cs: dict[str, Any] = {"state": state, "restartCount": 1 if last else 0}
    if last:
        cs["lastState"] = {"terminated": last}
    return {
        "metadata": {"name": "paper-trading-0"},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [cs],
        },
    }


def conds(st: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


def run_status(
    p: dict[str, Any] | None, reported: dict[str, Any] | None = None, halted: bool = False
) -> dict[str, Any]:
    return status.session_status(
        3, halted, "paper-trading", "paper-trading-0", p, reported or {}, T0, [("spec.x", "signal-token")]
    )


def test_trading_when_the_pod_is_ready_and_the_runtime_active() -> None:
    st = run_status(
        pod(),
        {"tradingState": "ACTIVE", "brokerConnected": True, "lastHeartbeatTime": "2026-03-02T09:29:50Z"},
    )
    assert st["phase"] == "Trading" and st["podName"] == "paper-trading-0" and st["observedGeneration"] == 3
    assert conds(st) == {
        "Accepted": ("True", "StatefulSetCreated"),
        "Ready": ("True", "PodReady"),
        "Trading": ("True", "Active"),
        "Halted": ("False", "NotHalted"),
        "Degraded": ("False", "AsExpected"),
    }


def test_the_kill_switch_is_pending_until_the_runtime_confirms_it() -> None:
    fresh = {"brokerConnected": True, "lastHeartbeatTime": "2026-03-02T09:29:59Z"}
    st = run_status(pod(), {**fresh, "tradingState": "ACTIVE"}, halted=True)
    assert conds(st)["Halted"] == ("Unknown", "KillSwitchPending")
    done = {**fresh, "tradingState": "HALTED", "haltReason": "HALTED: kill switch (spec.halted)"}
    st = run_status(pod(), done, halted=True)
    assert st["phase"] == "Halted" and conds(st)["Halted"] == ("True", "KillSwitch")
    assert conds(st)["Trading"] == ("False", "Halted") and st["message"].startswith("halted:")


def test_exit_code_3_is_recovery_failed() -> None:
    term = {
        "exitCode": 3,
        "finishedAt": "2026-03-02T09:00:00Z",
        "message": json.dumps({"error": "journal empty, account in use"}),
    }
    st = run_status(pod(ready=False, running=False, waiting={"reason": "CrashLoopBackOff"}, last=term))
    assert st["phase"] == "Failed"
    assert conds(st)["Degraded"] == ("True", "RecoveryFailed")
    assert "journal empty, account in use" in st["message"]


def test_a_broker_disconnect_or_a_silent_runtime_is_degraded() -> None:
    st = run_status(
        pod(),
        {"tradingState": "REDUCING", "brokerConnected": False, "lastHeartbeatTime": "2026-03-02T09:29:59Z"},
    )
    assert conds(st)["Degraded"] == ("True", "BrokerDisconnected") and conds(st)["Trading"] == (
        "True",
        "ReduceOnly",
    )
    st = run_status(
        pod(),
        {"tradingState": "ACTIVE", "brokerConnected": True, "lastHeartbeatTime": "2026-03-02T09:20:00Z"},
    )
    assert conds(st)["Degraded"] == ("True", "RuntimeSilent")


def test_a_pod_waiting_for_its_volumes_names_the_secrets_it_mounts() -> None:
    waiting = {"reason": "ContainerCreating", "message": 'secret "signal-token" not found'}
    st = run_status(pod(ready=False, running=False, waiting=waiting))
    assert st["phase"] == "Pending" and conds(st)["Ready"] == ("False", "ContainerCreating")
    assert "signal-token (spec.x)" in st["message"]


def test_recovering_pod_is_reconciling() -> None:
    st = run_status(pod(ready=False))
    assert st["phase"] == "Reconciling" and conds(st)["Ready"] == ("False", "Recovering")
    st = run_status(pod())  # ready (probes passed), but the runtime has not reported yet
    assert st["phase"] == "Reconciling" and conds(st)["Trading"] == ("False", "NotReported")


def test_a_runtime_that_reported_then_fails_its_readiness_probe_is_not_called_recovering() -> None:
    # The container started 09:00; its runtime reported at 09:05 (so recovery had finished); now /readyz fails.
    reported = {"tradingState": "ACTIVE", "lastHeartbeatTime": "2026-03-02T09:05:00Z"}
    st = run_status(pod(ready=False), reported)
    assert st["phase"] == "Reconciling" and conds(st)["Ready"] == ("False", "NotReady")
    assert "readiness probe" in st["message"] and "liveness probe" in st["message"]
    # A heartbeat from before this container started (the previous incarnation's): still recovering.
    earlier = {"tradingState": "ACTIVE", "lastHeartbeatTime": "2026-03-02T08:59:00Z"}
    assert conds(run_status(pod(ready=False), earlier))["Ready"] == ("False", "Recovering")
    broken = {"tradingState": "ACTIVE", "lastHeartbeatTime": "not a time"}
    assert conds(run_status(pod(ready=False), broken))["Ready"] == ("False", "Recovering")


def test_policy_status_lists_its_sessions() -> None:
    st = policy_status.policy_status(7, ["b", "a", "a"], None, T0)
    assert st["sessions"] == 2 and st["sessionNames"] == ["a", "b"] and st["observedGeneration"] == 7
    assert st["conditions"][0]["reason"] == "ReferencedBySessions"
    blocked = policy_status.policy_status(7, ["a"], st, T0, deleting=True)
    assert blocked["conditions"][0]["reason"] == "DeletionBlocked" and "deletion waits" in blocked["message"]


# --------------------------------------------------------------------------- the handler's decisions


class Cluster:
    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []
        self.policy: dict[str, Any] | None = copy.deepcopy(POLICY)
        self.pods: list[dict[str, Any]] = []


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Cluster:
    rec = Cluster()

    def apply(obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        rec.applied.append(obj)
        return {**obj, "metadata": {**obj["metadata"], "uid": f"uid-{obj['kind']}"}}

    monkeypatch.setattr(kube, "apply", apply)
    monkeypatch.setattr(
        kube, "read_custom", lambda plural, ns, name: rec.policy if plural == "riskpolicies" else None
    )
    monkeypatch.setattr(kube, "list_pods", lambda ns, selector: rec.pods)
    monkeypatch.setattr(
        reconciler,
        "post_event",
        lambda body, *, type, reason, message="", **_: rec.events.append((type, reason)),
    )
    return rec


def reconcile(body: dict[str, Any], **indexes: Any) -> kopf.Patch:
    patch = kopf.Patch()
    handler.reconcile_session(
        body=kopf.Body(body),
        patch=patch,
        memo=kopf.Memo(config=OperatorConfig(retry_delay_seconds=3)),
        logger=logging.getLogger(),
        **indexes,
    )
    return patch


def test_a_session_is_run_and_its_children_recorded(cluster: Cluster) -> None:
    patch = reconcile(copy.deepcopy(SESSION))
    assert [o["kind"] for o in cluster.applied][-1] == "StatefulSet"
    st = patch["status"]
    assert st["phase"] == "Pending" and {c["kind"] for c in st["children"]} >= {"StatefulSet", "ConfigMap"}
    assert ("Normal", "Accepted") in cluster.events


def test_a_missing_policy_waits_and_names_it(cluster: Cluster) -> None:
    cluster.policy = None
    patch = kopf.Patch()
    with pytest.raises(kopf.TemporaryError) as err:
        handler.reconcile_session(
            body=kopf.Body(copy.deepcopy(SESSION)),
            patch=patch,
            memo=kopf.Memo(config=OperatorConfig(retry_delay_seconds=3)),
            logger=logging.getLogger(),
        )
    assert err.value.delay == 3 and cluster.applied == []
    accepted = next(c for c in patch["status"]["conditions"] if c["type"] == "Accepted")
    assert accepted["reason"] == "RiskPolicyNotFound" and "limits" in accepted["message"]
    assert patch["status"]["phase"] == "Pending"


def test_a_second_session_on_the_account_waits_naming_the_holder(cluster: Cluster) -> None:
    body = copy.deepcopy(SESSION)
    body["metadata"]["name"] = "second"
    holders = {(NS, "acct-1"): [("t0", "first"), ("t1", "second")]}
    with pytest.raises(kopf.TemporaryError, match="session first holds broker account acct-1"):
        reconcile(body, session_accounts=holders)
    assert cluster.applied == []


def test_a_pod_of_another_session_still_on_the_account_is_waited_for(cluster: Cluster) -> None:
    cluster.pods = [
        {"metadata": {"name": "old-trading-0", "labels": {"kubequant.io/livetradingsession": "old"}}}
    ]
    with pytest.raises(kopf.TemporaryError, match="old-trading-0 of session old"):
        reconcile(copy.deepcopy(SESSION))


def test_a_signal_api_without_a_token_secret_is_refused(cluster: Cluster) -> None:
    body = copy.deepcopy(SESSION)
    body["spec"]["strategy"] = {"signalApi": {"port": 8090}}
    with pytest.raises(kopf.PermanentError, match="tokenSecretRef"):
        reconcile(body)
    assert cluster.applied == []


# --------------------------------------------------------------------------- events


def test_every_condition_transition_is_an_event_even_without_a_phase_change(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker disconnect while Trading changes no phase; an operator still gets a Warning Event."""
    written: list[dict[str, Any]] = []
    monkeypatch.setattr(kube, "patch_custom_status", lambda plural, ns, name, new: written.append(new))
    now = handler.reconciler.now()
    beat = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    report = {"tradingState": "ACTIVE", "brokerConnected": True, "lastHeartbeatTime": beat}
    body = copy.deepcopy(SESSION)
    body["status"] = {**report, **status.session_status(3, False, "t", "paper-trading-0", pod(), report, now)}
    assert body["status"]["phase"] == "Trading"

    body["status"]["brokerConnected"] = False
    handler.refresh(body, pod(), logging.getLogger())
    assert written[-1]["phase"] == "Trading"
    assert cluster.events == [("Warning", "BrokerDisconnected")]

    body["status"] = {**body["status"], **written[-1]}
    handler.refresh(body, pod(), logging.getLogger())  # nothing changed: no write, no Event
    assert len(written) == 1 and len(cluster.events) == 1

    body["status"]["brokerConnected"] = True
    handler.refresh(body, pod(), logging.getLogger())
    assert cluster.events[-1] == ("Normal", "AsExpected")
