"""The operator's declared API access (operator/rbac.py, each handler module's RBAC) is exactly what it
uses: the Kubernetes client's requests of every handler path, recorded; and what kopf does for the
registered handlers. tests/unit/test_chart.py holds the chart to the same declarations.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kopf
import pytest
from kopf._core.intents import registries
from kubernetes import client

from kubequant.operator import kube, rbac
from kubequant.operator.config import OperatorConfig
from kubequant.operator.handlers import backtest as handler
from kubequant.operator.handlers import policy as policies
from kubequant.operator.handlers import session as sessions
from kubequant.operator.handlers import training

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
NS = "research"
BACKTEST: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "Backtest",
    "metadata": {"name": "lgb", "namespace": NS, "uid": "u-1", "generation": 1},
    "spec": {
        "period": {"start": "2022-01-04", "end": "2022-06-30"},
        "signal": {"file": {"path": "/s.csv"}},
        "data": {"volume": {"claimName": "market-data"}},
        "output": {"artifacts": {"volume": {"claimName": "reports"}}},
    },
}


# --------------------------------------------------------------------------- a recording API server


class FakeResponse:
    """What the client's REST layer returns, enough for ``_preload_content=False`` callers."""

    def __init__(self, status: int, payload: Any) -> None:
        self.status = status
        self.reason = "OK" if status < 300 else "Error"
        self.data = json.dumps(payload).encode()
        self.headers: dict[str, str] = {}
        self.response = self

    def read(self) -> bytes:
        return self.data

    def getheaders(self) -> dict[str, str]:
        return self.headers

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)


def grant_of(method: str, url: str) -> rbac.Grant:
    """The (group, resource, verb) an API request needs, as the API server's authorizer sees it."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    if segments[0] == "api":  # /api/v1/...
        group, rest = "", segments[2:]
    else:  # /apis/<group>/<version>/...
        group, rest = segments[1], segments[3:]
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    resource, name, sub = rest[0], rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None
    if sub:
        resource = f"{resource}/{sub}"
    watch = parse_qs(parts.query).get("watch") == ["true"]
    verb = {
        "GET": ("get" if name else ("watch" if watch else "list")),
        "POST": "create",
        "PATCH": "patch",
        "PUT": "update",
        "DELETE": "delete" if name else "deletecollection",
    }[method]
    return group, resource, verb


class Recorder:
    """Answers the handlers' requests from a tiny in-memory cluster and records the grant of each."""

    def __init__(self, objects: dict[str, dict[str, Any]], conflict_on_create: bool) -> None:
        self.objects = objects
        self.conflict_on_create = conflict_on_create
        self.grants: set[rbac.Grant] = set()
        self.requests: list[tuple[str, str]] = []

    def __call__(
        self,
        method: str,
        url: str,
        header_params: Any = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: Any = None,
    ) -> FakeResponse:
        path = urlsplit(url).path
        self.requests.append((method, path))
        self.grants.add(grant_of(method, url))
        if method == "POST":
            item = f"{path}/{body['metadata']['name']}"
            if self.conflict_on_create:
                return FakeResponse(409, {"reason": "AlreadyExists"})
            meta = {"uid": f"uid-{body['metadata']['name']}", **body["metadata"]}
            self.objects[item] = {**body, "metadata": meta}
            return FakeResponse(201, self.objects[item])
        if method == "GET" and path.endswith("/pods"):
            return FakeResponse(200, {"items": []})
        if method == "GET":
            found = self.objects.get(path)
            return (
                FakeResponse(200, found) if found is not None else FakeResponse(404, {"reason": "NotFound"})
            )
        return FakeResponse(200, {})


@pytest.fixture
def quiet_kopf(monkeypatch: pytest.MonkeyPatch) -> None:
    # kopf posts its log lines as Events through its own client (rbac.KOPF); the handlers' own Events go
    # through kubequant.operator.kube and are recorded (rbac.EVENTS).
    monkeypatch.setattr(kopf, "event", lambda *args, **kwargs: None)


def record(monkeypatch: pytest.MonkeyPatch, recorder: Recorder) -> None:
    monkeypatch.setattr(client.ApiClient, "call_api", recorder)


def children(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Job the builders make for a Backtest, keyed by its API path."""
    from kubequant.api.backtest import Backtest
    from kubequant.manifests import parse_resource
    from kubequant.operator.builders.backtest import build_backtest_job

    bt = parse_resource(copy.deepcopy(body))
    assert isinstance(bt, Backtest)
    job = build_backtest_job(bt, OperatorConfig())
    job["metadata"]["uid"] = f"uid-{job['metadata']['name']}"  # as the API server returns it
    return {f"/apis/batch/v1/namespaces/{NS}/jobs/{job['metadata']['name']}": job}


def every_handler_path(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """Run each handler through each of its branches that calls the API; the recorded requests."""
    body = copy.deepcopy(BACKTEST)
    pvcs = {f"/api/v1/namespaces/{NS}/persistentvolumeclaims/{n}": {} for n in ("market-data", "reports")}
    owned = children(body)
    bt_path = f"/apis/kubequant.io/v1alpha1/namespaces/{NS}/backtests/lgb"
    # The Backtest as the Job event reads it: the uids of its children recorded at creation.
    recorded = {
        **body,
        "status": {
            "children": [
                {"kind": o["kind"], "name": o["metadata"]["name"], "uid": o["metadata"]["uid"]}
                for o in owned.values()
            ]
        },
    }
    recorder = Recorder({**pvcs, **owned, bt_path: recorded}, conflict_on_create=False)
    record(monkeypatch, recorder)
    memo = kopf.Memo(config=OperatorConfig())
    log = logging.getLogger()

    # Create: volumes checked, children created.
    handler.reconcile_backtest(body=kopf.Body(copy.deepcopy(body)), patch=kopf.Patch(), memo=memo, logger=log)
    # Resume after a restart: children exist, read back and adopted.
    recorder.conflict_on_create = True
    handler.reconcile_backtest(body=kopf.Body(copy.deepcopy(body)), patch=kopf.Patch(), memo=memo, logger=log)
    # spec.suspend toggled.
    handler.suspend_backtest(body=kopf.Body(copy.deepcopy(body)), new=True, old=False, logger=log)
    # The Job progressed: the owner's status is recomputed and written.
    job = next(o for p, o in owned.items() if "/jobs/" in p)
    job = {**copy.deepcopy(job), "status": {"active": 1}}
    handler.backtest_job_changed(body=kopf.Body(job), type="MODIFIED", logger=log)
    training_paths(recorder, memo, log)
    trading_paths(recorder, memo, log)
    return recorder


TRAINING: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "lgb", "namespace": NS, "uid": "u-t", "generation": 1},
    "spec": {
        "dataset": {
            "segments": {
                "train": {"start": "2020-01-01", "end": "2020-12-31"},
                "valid": {"start": "2021-01-01", "end": "2021-06-30"},
                "test": {"start": "2021-07-01", "end": "2021-12-31"},
            }
        },
        "data": {"volume": {"claimName": "market-data"}},
        "output": {"artifacts": {"volume": {"claimName": "reports"}}},
    },
}


def training_paths(recorder: Recorder, memo: kopf.Memo, log: logging.Logger) -> None:
    """The TrainingJob's handlers, through every branch that calls the API."""
    base = f"/apis/kubequant.io/v1alpha1/namespaces/{NS}/trainingjobs/lgb"
    recorder.conflict_on_create = False
    # Create: volumes checked, the ConfigMap and the RayJob created.
    patch = kopf.Patch()
    training.reconcile_training(body=kopf.Body(copy.deepcopy(TRAINING)), patch=patch, memo=memo, logger=log)
    created = dict(patch["status"])
    assert {c["kind"] for c in created["children"]} == {"ConfigMap", "RayJob"}
    # Resume after a restart: children exist, read back and adopted.
    recorder.conflict_on_create = True
    body = {**copy.deepcopy(TRAINING), "status": created}
    training.reconcile_training(body=kopf.Body(body), patch=kopf.Patch(), memo=memo, logger=log)
    training.suspend_training(body=kopf.Body(copy.deepcopy(TRAINING)), new=True, old=False, logger=log)
    # The RayJob finished: the TrainingJob is read, the submitter's pods listed, the status written.
    recorder.objects[base] = copy.deepcopy(body)
    rayjob = next(o for p, o in recorder.objects.items() if "/rayjobs/" in p)
    rayjob = {
        **copy.deepcopy(rayjob),
        "status": {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed"},
    }
    # A Backtest waits for this TrainingJob's model: the finished run reconciles it at once.
    waiting = {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "Backtest",
        "metadata": {"name": "from-model", "namespace": NS, "uid": "u-bm", "generation": 1},
        "spec": {"period": BACKTEST["spec"]["period"], "signal": {"modelRef": {"name": "lgb"}}},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "Accepted",
                    "status": "False",
                    "reason": "ModelNotReady",
                    "message": "",
                    "lastTransitionTime": "t",
                }
            ],
        },
    }
    recorder.objects[f"/apis/kubequant.io/v1alpha1/namespaces/{NS}/backtests/from-model"] = waiting
    index = {(NS, "lgb"): ["from-model"]}
    training.rayjob_changed(
        body=kopf.Body(rayjob), type="MODIFIED", memo=memo, logger=log, backtests_by_model=index
    )
    assert ("GET", f"/apis/kubequant.io/v1alpha1/namespaces/{NS}/backtests/from-model") in recorder.requests
    # A submitter pod finished: its RayJob is read, then the same.
    pod = {
        "metadata": {
            "name": "lgb-ray-x",
            "namespace": NS,
            "labels": {"batch.kubernetes.io/job-name": "lgb-ray"},
        },
        "status": {"phase": "Succeeded"},
    }
    training.submitter_pod_changed(body=kopf.Body(pod), type="MODIFIED", memo=memo, logger=log)


SESSION: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "LiveTradingSession",
    "metadata": {"name": "paper", "namespace": NS, "uid": "u-s", "generation": 1, "creationTimestamp": "t0"},
    "spec": {
        "account": "acct-1",
        "riskPolicyRef": {"name": "limits"},
        "strategy": {"signalApi": {"tokenSecretRef": {"name": "token", "key": "token"}}},
        "broker": {"type": "paper"},
    },
}
POLICY: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "RiskPolicy",
    "metadata": {"name": "limits", "namespace": NS, "uid": "u-p", "generation": 1},
    "spec": {"limits": {"maxOrderQuantity": 1000}},
}


class Once:
    """kopf's DaemonStopped for one round of a daemon's loop."""

    def __init__(self) -> None:
        self.rounds = 0

    def __bool__(self) -> bool:
        self.rounds += 1
        return self.rounds > 1

    async def wait(self, timeout: float | None = None) -> None:
        return None


def trading_paths(recorder: Recorder, memo: kopf.Memo, log: logging.Logger) -> None:
    """The LiveTradingSession's and the RiskPolicy's handlers, through every branch that calls the API."""
    base = f"/apis/kubequant.io/v1alpha1/namespaces/{NS}"
    recorder.objects[f"{base}/riskpolicies/limits"] = copy.deepcopy(POLICY)
    recorder.conflict_on_create = False
    indexes = {
        "session_accounts": {(NS, "acct-1"): [("t0", "paper")]},
        "policy_users": {(NS, "limits"): ["paper"]},
        "trading_pods": {},
    }
    # Create: the policy read, the account's pods listed, every child created, the pod listed.
    patch = kopf.Patch()
    sessions.reconcile_session(
        body=kopf.Body(copy.deepcopy(SESSION)), patch=patch, memo=memo, logger=log, **indexes
    )
    created = dict(patch["status"])
    assert {c["kind"] for c in created["children"]} >= {"StatefulSet", "Role", "RoleBinding", "NetworkPolicy"}
    # Resume after a restart by an older operator: children exist without the hash, adopted and patched.
    for obj in recorder.objects.values():
        ((obj.get("metadata") or {}).get("annotations") or {}).pop("kubequant.io/spec-hash", None)
    recorder.conflict_on_create = True
    body = {**copy.deepcopy(SESSION), "status": created}
    sessions.reconcile_session(
        body=kopf.Body(copy.deepcopy(body)), patch=kopf.Patch(), memo=memo, logger=log, **indexes
    )
    # The pod changed: the session is read and its status written.
    accepted = {
        **created,
        "conditions": [
            {"type": "Accepted", "status": "True", "reason": "x", "message": "", "lastTransitionTime": "t"}
        ],
    }
    recorder.objects[f"{base}/livetradingsessions/paper"] = {**copy.deepcopy(SESSION), "status": accepted}
    sts_uid = next(c["uid"] for c in created["children"] if c["kind"] == "StatefulSet")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "paper-trading-0",
            "namespace": NS,
            "labels": {"kubequant.io/livetradingsession": "paper"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "StatefulSet",
                    "name": "paper-trading",
                    "uid": sts_uid,
                    "controller": True,
                }
            ],
        },
        "status": {"phase": "Running"},
    }
    # The session's daemon: its pod (from the index) changed, the status is written.
    pods = {(NS, "paper"): [pod]}
    asyncio.run(
        sessions.follow_session(
            body=kopf.Body(recorder.objects[f"{base}/livetradingsessions/paper"]),
            stopped=Once(),
            logger=log,
            trading_pods=pods,
        )
    )
    # The policy's daemon writes the sessions that use it.
    asyncio.run(
        policies.follow_policy_users(body=kopf.Body(copy.deepcopy(POLICY)), stopped=Once(), **indexes)
    )
    # A RiskPolicy changed: its sessions are read and reconciled (their status written by the operator).
    policies.policy_changed(
        body=kopf.Body(copy.deepcopy(POLICY)), patch=kopf.Patch(), memo=memo, logger=log, **indexes
    )
    with pytest.raises(kopf.TemporaryError, match="paper"):
        policies.policy_deleted(
            body=kopf.Body(copy.deepcopy(POLICY)), patch=kopf.Patch(), memo=memo, **indexes
        )


def declared_by_handlers(source: rbac.Source) -> set[rbac.Grant]:
    return {
        grant
        for module in rbac.handler_modules()
        for access in module.RBAC  # type: ignore[attr-defined]
        if access.source == source
        for grant in access.grants()
    }


# --------------------------------------------------------------------------- the tests


def test_code_declarations_are_exactly_the_calls_the_handlers_make(
    monkeypatch: pytest.MonkeyPatch, quiet_kopf: None
) -> None:
    recorder = every_handler_path(monkeypatch)
    assert any(path.endswith("/lgb/status") for _, path in recorder.requests), "no status write recorded"
    declared = declared_by_handlers("code")
    assert recorder.grants - declared == set(), (
        f"called but not declared (add to the handler module's RBAC): {sorted(recorder.grants - declared)}"
    )
    assert declared - recorder.grants == set(), (
        f"declared but never called (drop from RBAC, or exercise it in this test): "
        f"{sorted(declared - recorder.grants)}"
    )


def test_the_recorder_maps_requests_to_the_authorizers_verbs() -> None:
    """grant_of is not vacuous: it reads verbs, groups and subresources as the API server does."""
    base = "https://k8s:6443"
    assert grant_of("GET", f"{base}/api/v1/namespaces/a/pods?labelSelector=x") == ("", "pods", "list")
    assert grant_of("GET", f"{base}/api/v1/namespaces/a/pods?watch=true") == ("", "pods", "watch")
    assert grant_of("GET", f"{base}/api/v1/namespaces/a/secrets/s") == ("", "secrets", "get")
    assert grant_of("PATCH", f"{base}/apis/kubequant.io/v1alpha1/namespaces/a/backtests/b/status") == (
        "kubequant.io",
        "backtests/status",
        "patch",
    )
    assert grant_of("POST", f"{base}/apis/batch/v1/namespaces/a/jobs") == ("batch", "jobs", "create")
    assert grant_of("DELETE", f"{base}/apis/batch/v1/namespaces/a/jobs/j") == ("batch", "jobs", "delete")
    assert grant_of("GET", f"{base}/api/v1/namespaces") == ("", "namespaces", "list")


def kopf_needs() -> set[rbac.Grant]:
    """What kopf does for the registered handlers: list and watch each selected kind; for changing
    handlers, patch it (finalizers, older annotations) and its status subresource (its bookkeeping)."""
    modules = {m.__name__ for m in rbac.handler_modules()}  # type: ignore[attr-defined]
    registry = registries.get_default_registry()
    needs: set[rbac.Grant] = set()
    for sub in (registry._watching, registry._changing, registry._spawning, registry._indexing):
        for h in sub.get_all_handlers():
            if h.fn.__module__ not in modules or h.selector is None:
                continue
            group = h.selector.group or ""
            plural = h.selector.plural or h.selector.any_name
            assert isinstance(plural, str), h
            needs |= {(group, plural, "list"), (group, plural, "watch")}
            if sub is registry._changing or sub is registry._spawning:
                needs |= {(group, plural, "patch"), (group, f"{plural}/status", "patch")}
    assert not registry._webhooks.get_all_handlers(), "admission webhooks need their own RBAC and Service"
    return needs


def test_kopf_declarations_are_exactly_what_kopf_does_for_the_handlers() -> None:
    needs, declared = kopf_needs(), declared_by_handlers("kopf")
    assert needs, "no handlers registered"
    assert needs == declared, (
        f"kopf needs but not declared: {sorted(needs - declared)}; "
        f"declared but kopf does not need: {sorted(declared - needs)}"
    )


def test_admission_declarations_are_only_the_owners_finalizers() -> None:
    """Nothing calls these; OwnerReferencesPermissionEnforcement wants them for blockOwnerDeletion."""
    for grant in declared_by_handlers("admission"):
        assert grant[1].endswith("/finalizers") and grant[2] == "update", grant


def test_no_secret_access_is_declared_or_called(monkeypatch: pytest.MonkeyPatch, quiet_kopf: None) -> None:
    for access in rbac.declared():
        assert access.resource != "secrets", access
    assert not any(r == "secrets" for _, r, _ in every_handler_path(monkeypatch).grants)
    # And no code path that could: no Secret call of the client anywhere in the operator.
    # (/var/run/secrets/... is where a pod mounts Secrets by reference, not an API path.)
    calls = re.compile(r"namespaced_secret|secret_for_all_namespaces|[\"']secrets\b|(?<!/run)/secrets\b")
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{n}: {line.strip()}"
        for path in sorted((REPO_ROOT / "operator").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if calls.search(line) and not line.lstrip().startswith("#")
    ]
    assert offenders == [], offenders


@pytest.mark.parametrize(
    ("scope", "all_namespaces"), [("cluster", True), ("cluster", False), ("namespace", False)]
)
def test_required_grants_split_by_scope(scope: rbac.RbacScope, all_namespaces: bool) -> None:
    grants = rbac.required_grants(scope, all_namespaces)
    everything = grants.cluster | grants.per_namespace
    peering = "clusterkopfpeerings" if all_namespaces else "kopfpeerings"
    assert ("kopf.dev", peering, "patch") in everything
    assert ("batch", "jobs", "create") in everything
    if scope == "namespace":
        # Cluster-wide, only what no Role can grant: reading CRDs.
        assert grants.cluster == {
            ("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")
        }
        assert ("batch", "jobs", "create") in grants.per_namespace
    else:
        assert grants.per_namespace == frozenset()
    with pytest.raises(ValueError, match="named namespaces"):
        rbac.required_grants("namespace", True)


def test_as_rules_groups_verbs_per_resource() -> None:
    rules = rbac.as_rules({("", "pods", "list"), ("batch", "jobs", "get"), ("batch", "jobs", "create")})
    assert rules == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get"]},
    ]


@pytest.fixture(autouse=True)
def _fresh_kube_client() -> Iterator[None]:
    kube.api.cache_clear()
    yield
    kube.api.cache_clear()
