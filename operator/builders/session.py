"""A LiveTradingSession's children: the trading pod (a one-replica StatefulSet) and what it needs.

In the order they are applied: the pod's own ServiceAccount, a Role that lets it read its own
session and RiskPolicy and write its own status (by name only), the RoleBinding, a ConfigMap with
the session and its resolved RiskPolicy, a Service for the signal API and metrics, a NetworkPolicy,
and the StatefulSet. Secrets (broker credentials, the signal token) are mounted by reference only:
nothing here ever holds their contents.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from kubequant.api.live import BrokerType, LiveTradingSession, NetworkPeer
from kubequant.api.risk import RiskPolicy
from kubequant.operator.builders.common import (
    DATA_DIR,
    child_name,
    container_security_context,
    data_volume,
    object_meta,
    pod_placement,
    pod_security_context,
    resources_dict,
)
from kubequant.operator.config import OperatorConfig
from kubequant.version import API_GROUP

COMPONENT = "trading"
CONTAINER = "trading"
CONFIG_DIR = "/etc/kubequant"
SESSION_KEY = "session.yaml"
POLICY_KEY = "policy.yaml"
STATE_DIR = "/var/lib/kubequant/state"
CACHE_DIR = "/var/lib/kubequant/cache"
# The pod's own API credentials (a projected, expiring ServiceAccount token, the cluster's CA and
# its namespace), mounted where the runtime is told to look (--api-dir), not at the default path.
API_DIR = "/var/run/secrets/kubequant/api"
BROKER_DIR = "/var/run/secrets/kubequant/broker"
TOKEN_DIR = "/var/run/secrets/kubequant/signal"
TOKEN_FILE = f"{TOKEN_DIR}/token"
TERMINATION_LOG = "/dev/termination-log"
JOURNAL_VOLUME = "journal"
PORT_NAME = "http"
DEFAULT_PORT = 8080
# Pods of one broker account carry the account's hash: a second session's pod on the same account
# is found by label, without listing sessions.
ACCOUNT_LABEL = f"{API_GROUP}/account"
# The runtime's graceful stop: in-flight signals finish, loops stop, the journal closes.
GRACE_SECONDS = 60
TOKEN_SECONDS = 3600
DNS_NAMESPACE = {"kubernetes.io/metadata.name": "kube-system"}
DNS_PODS = {"k8s-app": "kube-dns"}


def trading_name(session_name: str) -> str:
    """The deterministic name of the StatefulSet, Service, ServiceAccount, Role, RoleBinding and
    NetworkPolicy of the session called ``session_name`` (different kinds, one name)."""
    return child_name(session_name, "trading", limit=52)  # the pod adds "-0"; PVCs "journal-…-0"


def config_map_name(session_name: str) -> str:
    """The deterministic name of the session's ConfigMap."""
    return child_name(session_name, "trading-config")


def pod_name(session_name: str) -> str:
    """The trading pod's name (the StatefulSet's only ordinal)."""
    return f"{trading_name(session_name)}-0"


def journal_claim_name(session_name: str) -> str:
    """The journal's PersistentVolumeClaim, as the StatefulSet controller names it."""
    return f"{JOURNAL_VOLUME}-{pod_name(session_name)}"


def account_key(account: str) -> str:
    """A label value for a broker account (accounts may hold any character)."""
    return hashlib.sha256(account.encode()).hexdigest()[:16]


def api_port(session: LiveTradingSession) -> int:
    """The port of the signal API and metrics."""
    api = session.spec.strategy.signal_api
    return api.port if api is not None else DEFAULT_PORT


def selector_labels(session: LiveTradingSession) -> dict[str, str]:
    """Labels that select the session's pod."""
    labels = object_meta(session, "", COMPONENT)["labels"]
    return {k: labels[k] for k in (f"{API_GROUP}/livetradingsession", "app.kubernetes.io/component")}


def resolved_session(session: LiveTradingSession) -> dict[str, Any]:
    """The session as the pod reads it: defaults filled in, no status, no server metadata."""
    return {
        "apiVersion": session.api_version,
        "kind": "LiveTradingSession",
        "metadata": {
            "name": session.metadata.name,
            "namespace": session.metadata.namespace,
            # The runtime ignores a copy older than what it already follows through the API.
            **(
                {"generation": session.metadata.generation} if session.metadata.generation is not None else {}
            ),
        },
        "spec": session.spec.to_manifest(),
    }


def resolved_policy(policy: RiskPolicy) -> dict[str, Any]:
    """The RiskPolicy as the pod reads it, with the generation it was resolved at."""
    meta: dict[str, Any] = {"name": policy.metadata.name, "namespace": policy.metadata.namespace}
    if policy.metadata.generation is not None:
        meta["generation"] = policy.metadata.generation
    return {
        "apiVersion": policy.api_version,
        "kind": "RiskPolicy",
        "metadata": meta,
        "spec": policy.spec.to_manifest(),
    }


def build_config_map(session: LiveTradingSession, policy: RiskPolicy) -> dict[str, Any]:
    """The session and its resolved RiskPolicy, as files for the runtime (its start-up copy)."""

    def dump(doc: dict[str, Any]) -> str:
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)

    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(session, config_map_name(session.metadata.name), COMPONENT),
        "data": {SESSION_KEY: dump(resolved_session(session)), POLICY_KEY: dump(resolved_policy(policy))},
    }


def service_account_name(session: LiveTradingSession) -> str:
    """The account the pod runs as: the spec's (allowed by the workload policy), else its own."""
    return session.spec.pod.service_account_name or trading_name(session.metadata.name)


def build_service_account(session: LiveTradingSession) -> dict[str, Any]:
    """The pod's own ServiceAccount; no token is mounted from it but the pod's projected one."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": object_meta(session, trading_name(session.metadata.name), COMPONENT),
        "automountServiceAccountToken": False,
    }


def build_role(session: LiveTradingSession) -> dict[str, Any]:
    """What the runtime may do with the API: follow its own session (the kill switch) and RiskPolicy
    (live limits), and write its own status. By name only; nothing else, no Secrets."""
    own = [session.metadata.name]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": object_meta(session, trading_name(session.metadata.name), COMPONENT),
        "rules": [
            {
                "apiGroups": [API_GROUP],
                "resources": ["livetradingsessions"],
                "resourceNames": own,
                "verbs": ["get", "list", "watch"],
            },
            {
                "apiGroups": [API_GROUP],
                "resources": ["livetradingsessions/status"],
                "resourceNames": own,
                "verbs": ["patch"],
            },
            {
                "apiGroups": [API_GROUP],
                "resources": ["riskpolicies"],
                "resourceNames": [session.spec.risk_policy_ref.name],
                "verbs": ["get", "list", "watch"],
            },
        ],
    }


def build_role_binding(session: LiveTradingSession) -> dict[str, Any]:
    """Binds the Role to the pod's ServiceAccount."""
    name = trading_name(session.metadata.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": object_meta(session, name, COMPONENT),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": service_account_name(session),
                "namespace": session.metadata.namespace,
            }
        ],
    }


def build_service(session: LiveTradingSession) -> dict[str, Any]:
    """The signal API and the metrics (one port: the runtime serves /metrics next to /v1)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(session, trading_name(session.metadata.name), COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(session),
            "ports": [
                {"name": PORT_NAME, "port": api_port(session), "targetPort": PORT_NAME, "protocol": "TCP"}
            ],
        },
    }


def _peer(peer: NetworkPeer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if peer.namespace_selector is not None:
        out["namespaceSelector"] = {"matchLabels": dict(peer.namespace_selector.match_labels or {})}
    out["podSelector"] = {
        "matchLabels": dict((peer.pod_selector.match_labels if peer.pod_selector else None) or {})
    }
    return out


def build_network_policy(session: LiveTradingSession, cfg: OperatorConfig) -> dict[str, Any]:
    """Ingress only to the API port from the peers the spec names (default: its own namespace);
    egress only to DNS, the API server (the pod follows its session) and a real broker (HTTPS)."""
    spec = session.spec
    peers = (
        [_peer(p) for p in spec.network.ingress_from] if spec.network.ingress_from else [{"podSelector": {}}]
    )
    api_server: dict[str, Any] = {"ports": [{"port": p, "protocol": "TCP"} for p in cfg.api_server_ports]}
    if cfg.api_server_cidrs:
        api_server["to"] = [{"ipBlock": {"cidr": c}} for c in cfg.api_server_cidrs]
    egress: list[dict[str, Any]] = [
        {
            "to": [
                {
                    "namespaceSelector": {"matchLabels": DNS_NAMESPACE},
                    "podSelector": {"matchLabels": DNS_PODS},
                }
            ],
            "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
        },
        api_server,
    ]
    if spec.broker.type != BrokerType.PAPER:
        broker: dict[str, Any] = {"ports": [{"port": 443, "protocol": "TCP"}]}
        if spec.network.broker_cidrs:
            broker["to"] = [{"ipBlock": {"cidr": c}} for c in spec.network.broker_cidrs]
        egress.append(broker)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(session, trading_name(session.metadata.name), COMPONENT),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(session)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": peers, "ports": [{"port": api_port(session), "protocol": "TCP"}]}],
            "egress": egress,
        },
    }


def _volumes(session: LiveTradingSession) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Volumes, their mounts, and the runtime args they imply."""
    spec = session.spec
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(session.metadata.name)}},
        {
            "name": "kube-api",
            "projected": {
                "defaultMode": 0o440,
                "sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_SECONDS}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                        }
                    },
                ],
            },
        },
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "kube-api", "mountPath": API_DIR, "readOnly": True},
        {"name": JOURNAL_VOLUME, "mountPath": STATE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    args: list[str] = []
    if spec.broker.credentials_secret_ref is not None:
        volumes.append(
            {
                "name": "broker",
                "secret": {"secretName": spec.broker.credentials_secret_ref.name, "defaultMode": 0o440},
            }
        )
        mounts.append({"name": "broker", "mountPath": BROKER_DIR, "readOnly": True})
    token = spec.strategy.signal_api.token_secret_ref if spec.strategy.signal_api else None
    if token is not None:
        volumes.append(
            {
                "name": "signal-token",
                "secret": {
                    "secretName": token.name,
                    "items": [{"key": token.key, "path": "token"}],
                    "defaultMode": 0o440,
                },
            }
        )
        mounts.append({"name": "signal-token", "mountPath": TOKEN_DIR, "readOnly": True})
        args += ["--token-file", TOKEN_FILE]
    if (data := data_volume(spec.data)) is not None:
        volumes.append(data[0])
        mounts.append(data[1])
        args += ["--data", DATA_DIR]
    return volumes, mounts, args


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def build_stateful_set(session: LiveTradingSession, cfg: OperatorConfig) -> dict[str, Any]:
    """One replica of the trading runtime: a StatefulSet never starts a replacement pod before the old
    one is known gone, so one account never has two runtimes. The journal is a PersistentVolumeClaim
    from ``spec.journal``, kept when the session is deleted unless ``journal.deleteWithSession``."""
    spec = session.spec
    name = trading_name(session.metadata.name)
    volumes, mounts, extra_args = _volumes(session)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.pod.image or cfg.workload_image,
        "imagePullPolicy": spec.pod.image_pull_policy or cfg.workload_image_pull_policy,
        "command": [cfg.workload_command],
        "args": [
            "workload",
            "trading",
            "--session",
            f"{CONFIG_DIR}/{SESSION_KEY}",
            "--policy",
            f"{CONFIG_DIR}/{POLICY_KEY}",
            "--state-dir",
            STATE_DIR,
            "--port",
            str(api_port(session)),
            "--secrets-dir",
            BROKER_DIR,
            # The kill switch and the RiskPolicy reach the runtime through the API at once (the
            # mounted ConfigMap is the start-up copy; kubelets refresh it only every minute or so).
            "--api-dir",
            API_DIR,
            "--termination-log",
            TERMINATION_LOG,
            *extra_args,
        ],
        "env": [
            {"name": "KUBEQUANT_CACHE_DIR", "value": CACHE_DIR},
            {"name": "HOME", "value": "/tmp"},
            {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},
        ],
        "ports": [{"name": PORT_NAME, "containerPort": api_port(session), "protocol": "TCP"}],
        # /healthz answers once the bars are loaded (qlib: up to minutes), then at once; /readyz once
        # recovery finished and the session may trade.
        "startupProbe": _probe("/healthz", 5, 120),
        "livenessProbe": _probe("/healthz", 10, 3),
        "readinessProbe": _probe("/readyz", 5, 1),
        "terminationMessagePath": TERMINATION_LOG,
        # Only what the runtime writes there (its structured error), never its logs.
        "terminationMessagePolicy": "File",
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    resources = resources_dict(spec.pod.resources)
    if resources:
        container["resources"] = resources
    placement = pod_placement(spec.pod, cfg)
    placement["serviceAccountName"] = service_account_name(session)
    meta = object_meta(session, name, COMPONENT)
    pod_labels = {**meta["labels"], ACCOUNT_LABEL: account_key(spec.account)}
    claim: dict[str, Any] = {
        "metadata": {"name": JOURNAL_VOLUME, "labels": dict(meta["labels"])},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": str(spec.journal.size)}},
        },
    }
    if spec.journal.storage_class_name:
        claim["spec"]["storageClassName"] = spec.journal.storage_class_name
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": selector_labels(session)},
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate"},
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Delete" if spec.journal.delete_with_session else "Retain",
                "whenScaled": "Retain",
            },
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": volumes,
                    **placement,
                },
            },
            "volumeClaimTemplates": [claim],
        },
    }


def build_session_children(
    session: LiveTradingSession, policy: RiskPolicy, cfg: OperatorConfig
) -> list[dict[str, Any]]:
    """Every child, in the order they are applied (the pod's identity and rights before the pod)."""
    return [
        build_service_account(session),
        build_role(session),
        build_role_binding(session),
        build_config_map(session, policy),
        build_service(session),
        build_network_policy(session, cfg),
        build_stateful_set(session, cfg),
    ]
