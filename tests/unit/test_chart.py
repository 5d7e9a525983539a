"""The operator's Helm chart renders what the platform promises: CRDs identical to crds/, one
operator (or an HA StatefulSet with distinct peering priorities), pods that meet the "restricted"
Pod Security Standard, least-privilege RBAC, and a values schema that rejects bad input.

Runs the real `helm` binary (built by `make k8s-binaries`), offline: `helm lint` and
`helm template` need no cluster.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubequant.operator import rbac

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "kubequant"
REPO_CRDS = REPO_ROOT / "crds"
CHART_CRDS = CHART / "crds"
RELEASE, NAMESPACE = "kq", "kubequant-system"

DEFAULT: tuple[str, ...] = ()
HA = ("ha.enabled=true",)
NAMESPACED = ("rbac.scope=namespace", "watchNamespaces={a,b}")
SCENARIOS = {"default": DEFAULT, "ha": HA, "namespaced": NAMESPACED}

CRD_DISCOVERY = {("apiextensions.k8s.io", "customresourcedefinitions", verb) for verb in ("list", "watch")}
FORBIDDEN_VERBS = {"escalate", "bind", "impersonate", "*"}
# Pod Security Standard "restricted" (https://kubernetes.io/docs/concepts/security/pod-security-standards/).
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


# --------------------------------------------------------------------------- helm


@functools.cache
def helm_binary() -> Path:
    bin_dir = subprocess.run(
        [str(REPO_ROOT / "hack" / "build-k8s.sh"), "--print-bin-dir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    helm = Path(bin_dir) / "helm"
    if not os.access(helm, os.X_OK):
        pytest.fail(
            f"the chart tests need helm at {helm}, and it is not there: run `make k8s-binaries` "
            "(builds helm, kubectl and the control plane at the versions of hack/versions.env).",
            pytrace=False,
        )
    return helm


@pytest.fixture(scope="session", autouse=True)
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep helm's cache/config/data out of $HOME, and no cluster in reach."""
    home = tmp_path_factory.mktemp("helm-home")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            mp.setenv(var, str(home / var.lower()))
        mp.delenv("KUBECONFIG", raising=False)
        yield


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, timeout=120)


def set_args(sets: Iterable[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


@functools.cache
def render(*sets: str) -> list[dict[str, Any]]:
    """The objects `helm template` renders for these --set values (CRDs excluded)."""
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *set_args(sets))
    assert result.returncode == 0, f"helm template {' '.join(sets)} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = objects(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_templates(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"])
        for doc in docs
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")
    ]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


# --------------------------------------------------------------------------- chart basics


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_strict(scenario: str) -> None:
    result = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *set_args(SCENARIOS[scenario]))
    assert result.returncode == 0, (
        f"helm lint --strict ({scenario}) failed:\n{result.stdout}\n{result.stderr}"
    )
    assert "0 chart(s) failed" in result.stdout


def test_chart_metadata_matches_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"], chart["version"]) == ("v2", "kubequant", "0.1.0")
    # The default image tag is the appVersion: it must name the version pyproject.toml builds.
    project_version = re.search(r'^version = "([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text(), re.M)
    assert project_version and chart["appVersion"] == project_version.group(1) == "0.1.0"


def test_chart_crds_are_copies_of_the_repo_crds() -> None:
    repo = sorted(p.name for p in REPO_CRDS.glob("*.yaml"))
    chart = sorted(p.name for p in CHART_CRDS.glob("*.kubequant.io.yaml"))
    fix = "run `cp crds/*.kubequant.io.yaml charts/kubequant/crds/` (never edit the copies by hand)"
    assert len(repo) == 4, repo
    assert chart == repo, f"charts/kubequant/crds/ has {chart}, crds/ has {repo}: {fix}"
    for name in repo:
        assert (CHART_CRDS / name).read_bytes() == (REPO_CRDS / name).read_bytes(), (
            f"charts/kubequant/crds/{name} differs from crds/{name}: {fix}"
        )


def test_chart_ships_kopf_peering_crds() -> None:
    extra = sorted(p.name for p in CHART_CRDS.iterdir() if not p.name.endswith(".kubequant.io.yaml"))
    assert extra == ["kopf-peerings.kopf.dev.yaml"], f"unexpected files in charts/kubequant/crds/: {extra}"
    crds = {d["metadata"]["name"]: d for d in yaml.safe_load_all((CHART_CRDS / extra[0]).read_text()) if d}
    expected = {
        "clusterkopfpeerings.kopf.dev": ("Cluster", "ClusterKopfPeering"),
        "kopfpeerings.kopf.dev": ("Namespaced", "KopfPeering"),
    }
    assert set(crds) == set(expected)
    for name, (scope, kind) in expected.items():
        spec = crds[name]["spec"]
        assert crds[name]["apiVersion"] == "apiextensions.k8s.io/v1"
        assert (spec["group"], spec["scope"], spec["names"]["kind"]) == ("kopf.dev", scope, kind)
        (version,) = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
        # kopf keeps its peers in .status as free-form keys.
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_object_carries_the_standard_labels(scenario: str) -> None:
    for doc in render(*SCENARIOS[scenario]):
        labels = doc["metadata"].get("labels", {})
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert labels.get("app.kubernetes.io/name") == "kubequant", where
        assert labels.get("app.kubernetes.io/instance") == RELEASE, where
        assert labels.get("app.kubernetes.io/component") == "operator", where
        assert labels.get("app.kubernetes.io/part-of") == "kubequant", where
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", where
        assert labels.get("app.kubernetes.io/version") == "0.1.0", where
        assert labels.get("helm.sh/chart") == "kubequant-0.1.0", where


# --------------------------------------------------------------------------- the operator


def test_default_is_one_deployment_replica_replaced_by_recreate() -> None:
    docs = render()
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    # Never two operators at once during an upgrade (kopf peering would pause both).
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not objects(docs, "StatefulSet")
    assert not objects(docs, "PodDisruptionBudget"), "a PDB on a single replica only blocks node drains"
    env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
    assert "KUBEQUANT_PRIORITY_FROM_ORDINAL" not in env


def test_default_operator_configuration() -> None:
    docs = render()
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/kubequant/kubequant:0.1.0"
    assert container["args"] == ["operator"]
    env = env_of(container)
    assert env["KUBEQUANT_NAMESPACES"] == ""  # all namespaces
    assert env["KUBEQUANT_METRICS_PORT"] == "9090"
    assert env["KUBEQUANT_HEALTH_PORT"] == "8081"
    assert env["KUBEQUANT_PEERING"] == "kubequant"
    # The trading pods' NetworkPolicy reaches the API server where the operator's does.
    assert (env["KUBEQUANT_API_SERVER_CIDRS"], env["KUBEQUANT_API_SERVER_PORTS"]) == ("", "443,6443")
    assert env["KUBEQUANT_WORKLOAD_IMAGE"] == "ghcr.io/kubequant/kubequant:0.1.0"
    # A tag can be moved to other content: pulled every time, never run from a node's stale copy.
    assert container["imagePullPolicy"] == "Always"
    assert env["KUBEQUANT_WORKLOAD_IMAGE_PULL_POLICY"] == "Always"
    assert not [name for name in env if "SECRET" in name]
    assert env["KUBEQUANT_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "startupProbe is not generous"

    service = one(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    # All namespaces: kopf keeps its peers in a ClusterKopfPeering.
    peering = one(docs, "ClusterKopfPeering")
    assert (peering["apiVersion"], peering["metadata"]["name"]) == ("kopf.dev/v1", "kubequant")
    assert not objects(docs, "KopfPeering")
    assert not objects(docs, "ServiceMonitor")


def test_values_reach_the_operator() -> None:
    docs = render(
        "image.repository=registry.example/kq",
        "image.tag=1.2.3",
        "workloadImage=registry.example/kq-workload:9",
        "workloadServiceAccountName=runner",
        "metrics.port=9191",
        "health.port=8181",
        "peering.name=research",
        "logLevel=debug",
        "metrics.serviceMonitor.enabled=true",
    )
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert container["image"] == "registry.example/kq:1.2.3"
    assert env["KUBEQUANT_WORKLOAD_IMAGE"] == "registry.example/kq-workload:9"
    assert env["KUBEQUANT_WORKLOAD_SERVICE_ACCOUNT"] == "runner"
    assert (env["KUBEQUANT_METRICS_PORT"], env["KUBEQUANT_HEALTH_PORT"]) == ("9191", "8181")
    assert env["KUBEQUANT_PEERING"] == "research"
    assert env["KUBEQUANT_LOG_LEVEL"] == "debug"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 9191, "health": 8181}
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == "research"
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


@pytest.mark.parametrize("replicas", [2, 3])
def test_ha_is_a_statefulset_with_distinct_priorities(replicas: int) -> None:
    docs = render("ha.enabled=true", f"ha.replicas={replicas}")
    assert not objects(docs, "Deployment"), "HA must not also run the Deployment"
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == replicas
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    env = env_of(sts["spec"]["template"]["spec"]["containers"][0])
    assert env["KUBEQUANT_PRIORITY_FROM_ORDINAL"] == "true"
    # The ordinal comes from the pod's own name (<statefulset>-<ordinal>).
    assert env["KUBEQUANT_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    headless = [s for s in objects(docs, "Service") if s["metadata"]["name"] == sts["spec"]["serviceName"]]
    assert headless and headless[0]["spec"]["clusterIP"] == "None"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    # Spread over nodes unless the user chose an affinity.
    assert "podAntiAffinity" in sts["spec"]["template"]["spec"]["affinity"]


# --------------------------------------------------------------------------- pod security


def restricted_violations(template: dict[str, Any]) -> list[str]:
    """Every way a pod template breaks the "restricted" Pod Security Standard (latest)."""
    spec = template["spec"]
    pod_sc = spec.get("securityContext", {})
    problems = []
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            problems.append(f"{host}=true")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']} of type {sorted(kinds)}")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser=0")
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    if not containers:
        problems.append("no containers")
    for c in containers:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {caps['add']}")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser=0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile {seccomp!r}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f"{name}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount")
    return problems


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pod_templates_meet_restricted(scenario: str) -> None:
    docs = render(*SCENARIOS[scenario])
    templates = pod_templates(docs)
    assert templates, "no pod template rendered"
    for where, template in templates:
        assert restricted_violations(template) == [], where
        spec = template["spec"]
        # What restricted allows but this project promises on top.
        assert spec["securityContext"]["runAsUser"] == 65532, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is True, where
        assert spec["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"], where
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["runAsUser"] == 65532 and sc["runAsNonRoot"] is True, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: no emptyDir at /tmp"


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        (("containers", 0, "securityContext", "allowPrivilegeEscalation"), True, "allowPrivilegeEscalation"),
        (("containers", 0, "securityContext", "capabilities"), {"add": ["SYS_ADMIN"]}, "drop ALL"),
        (("securityContext", "runAsUser"), 0, "runAsUser=0"),
        (("securityContext", "seccompProfile"), {"type": "Unconfined"}, "seccompProfile"),
        (("hostNetwork",), True, "hostNetwork"),
        (("volumes", 0), {"name": "host", "hostPath": {"path": "/"}}, "hostPath"),
    ],
)
def test_restricted_check_catches_violations(path: tuple[Any, ...], value: Any, problem: str) -> None:
    """The checker above is not vacuous: breaking one field of the rendered pod is caught."""
    template = yaml.safe_load(yaml.safe_dump(one(render(), "Deployment")["spec"]["template"]))
    target = template["spec"]
    for key in path[:-1]:
        target = target[key]
    if path[-1] in ("seccompProfile", "runAsUser", "capabilities", "allowPrivilegeEscalation"):
        for c in template["spec"]["containers"]:  # container settings override the pod's
            c["securityContext"].pop(path[-1], None)
    target[path[-1]] = value
    assert any(problem in p for p in restricted_violations(template))


# --------------------------------------------------------------------------- RBAC


@pytest.mark.parametrize("scenario", [*SCENARIOS, "cluster-named-namespaces"])
def test_rbac_has_no_wildcards_or_privilege_verbs(scenario: str) -> None:
    sets = SCENARIOS.get(scenario, ("watchNamespaces={a,b}",))
    docs = render(*sets)
    roles = objects(docs, "ClusterRole") + objects(docs, "Role")
    assert roles
    for role in roles:
        where = f"{role['kind']}/{role['metadata'].get('namespace', '')}/{role['metadata']['name']}"
        assert "aggregationRule" not in role, where
        for rule in role["rules"]:
            for field in ("verbs", "resources", "apiGroups"):
                assert not any("*" in item for item in rule.get(field, [])), (
                    f"{where}: '*' in {field}: {rule}"
                )
            assert not set(rule["verbs"]) & FORBIDDEN_VERBS, f"{where}: {rule}"
            assert "nonResourceURLs" not in rule and "resourceNames" not in rule, where
            # Cluster-wide RBAC objects never; namespaced Roles and RoleBindings only to give each
            # trading pod its own (the API server refuses a Role granting more than the operator has).
            assert not {"clusterroles", "clusterrolebindings"} & set(rule["resources"]), where
            if {"roles", "rolebindings"} & set(rule["resources"]):
                assert set(rule["verbs"]) == {"get", "create", "patch"}, f"{where}: {rule}"
            # Pods get Secrets by reference; the operator never reads one, in any scope.
            assert "secrets" not in rule["resources"], f"{where}: Secret access: {rule}"


RBAC_MODES = {
    # name: (--set values, rbac.scope, serves all namespaces)
    "cluster": ((), "cluster", True),
    "cluster-named-namespaces": (("watchNamespaces={a,b}",), "cluster", False),
    "namespace": (NAMESPACED, "namespace", False),
    "namespace-release-only": (("rbac.scope=namespace",), "namespace", False),
}


def rules_yaml(grants: Iterable[tuple[str, str, str]]) -> str:
    return yaml.safe_dump(rbac.as_rules(grants), default_flow_style=None, sort_keys=False)


@pytest.mark.parametrize("mode", RBAC_MODES)
def test_chart_rbac_is_exactly_the_operators_declarations(mode: str) -> None:
    """Like CRD drift: the chart grants what operator/rbac.py and the handlers' RBAC declare, no more, no less."""
    sets, scope, all_namespaces = RBAC_MODES[mode]
    docs = render(*sets)
    want = rbac.required_grants(scope, all_namespaces)  # type: ignore[arg-type]
    (cluster_role,) = objects(docs, "ClusterRole")
    got = grants(cluster_role["rules"])
    assert got == want.cluster, (
        f"ClusterRole ({mode}) differs from the declarations: extra {sorted(got - want.cluster)}, "
        f"missing {sorted(want.cluster - got)}. It should grant:\n{rules_yaml(want.cluster)}"
    )
    roles = objects(docs, "Role")
    if scope == "cluster":
        assert roles == [] and not objects(docs, "RoleBinding")
    served = env_of(one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0])[
        "KUBEQUANT_NAMESPACES"
    ]
    # One Role per served namespace, and nowhere else (not even the release namespace).
    assert sorted(r["metadata"]["namespace"] for r in roles) == (
        sorted(served.split(",")) if scope == "namespace" else []
    )
    for role in roles:
        got = grants(role["rules"])
        assert got == want.per_namespace, (
            f"Role in {role['metadata']['namespace']} ({mode}) differs from the declarations: extra "
            f"{sorted(got - want.per_namespace)}, missing {sorted(want.per_namespace - got)}. "
            f"It should grant:\n{rules_yaml(want.per_namespace)}"
        )


def test_the_operator_cannot_delete_or_read_what_it_does_not_need() -> None:
    """The reductions of issue 18, spelled out: no deletes, no Secrets, no cluster-wide Namespace list."""
    for mode, (sets, _, _) in RBAC_MODES.items():
        docs = render(*sets)
        granted = set().union(
            *(grants(r["rules"]) for r in objects(docs, "ClusterRole") + objects(docs, "Role"))
        )
        assert not {
            g
            for g in granted
            if g[2] in ("delete", "deletecollection", "update") and "finalizers" not in g[1]
        }, mode
        assert not {g for g in granted if g[1] in ("secrets", "namespaces")}, mode
        # Children are created, read back to adopt them, and patched to converge: never updated or deleted.
        for resource in ("configmaps", "services", "serviceaccounts", "statefulsets", "networkpolicies"):
            assert {g[2] for g in granted if g[1] == resource} == {"create", "get", "patch"}, (mode, resource)
        assert {g[2] for g in granted if g[1] == "pods"} == {"list", "watch"}, mode
        assert {g[1] for g in granted if g[0] == "kubequant.io"} == {
            f"{plural}{sub}"
            for plural in ("backtests", "trainingjobs", "livetradingsessions", "riskpolicies")
            for sub in ("", "/status", "/finalizers")
        } - {"riskpolicies/finalizers"}, mode
        # KubeRay's RayJob: made and passed spec.suspend on; KubeRay itself deletes what it made.
        assert {g[2] for g in granted if g[0] == "ray.io"} == {"create", "get", "patch", "list", "watch"}, (
            mode
        )
        assert {g[1] for g in granted if g[0] == "ray.io"} == {"rayjobs"}, mode


def test_cluster_scope_binds_the_cluster_role_to_the_service_account() -> None:
    docs = render()
    role = one(docs, "ClusterRole")
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    sa = one(docs, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"], "namespace": NAMESPACE}]


def test_cluster_scope_with_named_namespaces_uses_namespaced_peering() -> None:
    """kopf serving named namespaces keeps a KopfPeering in each, never the cluster one."""
    docs = render("watchNamespaces={a,b}")
    assert grants(one(docs, "ClusterRole")["rules"]) >= {("kopf.dev", "kopfpeerings", "patch")}
    assert ("kopf.dev", "clusterkopfpeerings", "patch") not in grants(one(docs, "ClusterRole")["rules"])
    assert sorted(p["metadata"]["namespace"] for p in objects(docs, "KopfPeering")) == ["a", "b"]
    assert not objects(docs, "ClusterKopfPeering")
    env = env_of(one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0])
    assert env["KUBEQUANT_NAMESPACES"] == "a,b"


def test_namespace_scope_grants_roles_in_each_watched_namespace() -> None:
    docs = render(*NAMESPACED)
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    roles = {r["metadata"]["namespace"]: r for r in objects(docs, "Role")}
    # Not in the release namespace: kopf peers and posts Events in the namespaces it serves.
    assert set(roles) == {"a", "b"}
    bindings = {b["metadata"]["namespace"]: b for b in objects(docs, "RoleBinding")}
    assert set(bindings) == set(roles)
    for ns, binding in bindings.items():
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] == roles[ns]["metadata"]["name"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    # Cluster-wide, only reading CRDs (kopf's resource discovery): no Role can grant that.
    assert grants(one(docs, "ClusterRole")["rules"]) == CRD_DISCOVERY
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["name"] == sa
    assert sorted(p["metadata"]["namespace"] for p in objects(docs, "KopfPeering")) == ["a", "b"]
    env = env_of(one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0])
    assert env["KUBEQUANT_NAMESPACES"] == "a,b"


def test_namespace_scope_without_namespaces_watches_the_release_namespace() -> None:
    docs = render("rbac.scope=namespace")
    env = env_of(one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0])
    assert env["KUBEQUANT_NAMESPACES"] == NAMESPACE
    assert [r["metadata"]["namespace"] for r in objects(docs, "Role")] == [NAMESPACE]
    assert [p["metadata"]["namespace"] for p in objects(docs, "KopfPeering")] == [NAMESPACE]


def test_rbac_create_false_renders_no_rbac() -> None:
    docs = render("rbac.create=false")
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert not objects(docs, kind), kind


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("rbac.scope=everything",), "/rbac/scope"),
        (("rbacc.create=true",), "rbacc"),
        (("replicaCount=2",), "/replicaCount"),
        (("image.pullPolicy=Sometimes",), "/image/pullPolicy"),
        (("watchNamespaces={Not_A_Namespace}",), "/watchNamespaces/0"),
        (("logLevel=loud",), "/logLevel"),
        (("metrics.port=70000",), "/metrics/port"),
        (("ha.enabled=true", "ha.replicas=1"), "/ha/replicas"),
        (("serviceAccount.annotations.a=1",), "/serviceAccount/annotations/a"),
        (("metrics.port=8081",), "metrics.port and health.port must differ"),
        (("ha.enabled=true", "pdb.minAvailable=2"), "pdb.minAvailable (2) must be below ha.replicas (2)"),
        (("image.digest=latest",), "/image/digest"),
        (("workloadImagePullPolicy=Sometimes",), "/workloadImagePullPolicy"),
        (("networkPolicy.apiServer.cidrs={10.0.0.1}",), "/networkPolicy/apiServer/cidrs/0"),
        (("networkPolicy.egress=everything",), "egress"),
    ],
)
def test_bad_values_fail_naming_the_value(sets: tuple[str, ...], message: str) -> None:
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *set_args(sets))
    assert result.returncode != 0, f"helm template accepted {sets}"
    assert message in result.stderr, result.stderr


# --------------------------------------------------------------------------- image


def test_dockerfile_runs_as_the_chart_user_and_starts_the_operator() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    # Both stages from the one digest-pinned base (tests/unit/test_supply_chain.py checks the pin).
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim\S*@sha256:[0-9a-f]{64}$", dockerfile, re.M)
    assert re.findall(r"^FROM (\S+)", dockerfile, re.M) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] in ("65532", "65532:65532"), users
    assert 'ENTRYPOINT ["kubequant"]' in dockerfile
    assert 'CMD ["operator"]' in dockerfile
    assert re.search(r"pip install --no-deps --no-build-isolation \. ", dockerfile, re.M)


def test_the_image_ships_kernels_compiled_for_any_cpu() -> None:
    """The build compiles the numba kernels (kubequant precompile) into the folder KUBEQUANT_NUMBA_SEED
    names at run time, for the generic CPU at both ends (numba keys its cache by CPU model)."""
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    built = re.search(r"kubequant precompile --cache-dir (\S+)", dockerfile)
    seed = re.search(r"KUBEQUANT_NUMBA_SEED=(\S+)", dockerfile)
    assert built and seed and built.group(1) == seed.group(1), (built, seed)
    final = dockerfile[dockerfile.rindex("\nFROM ") :]
    assert "kubequant precompile" not in final and "KUBEQUANT_NUMBA_SEED" in final
    assert "NUMBA_CPU_NAME=generic" in final
    assert dockerfile.index("NUMBA_CPU_NAME=generic") < dockerfile.index("kubequant precompile --cache-dir")


# --------------------------------------------------------------------------- images and pull policies


def test_a_digest_pins_both_images_and_is_pulled_only_when_missing() -> None:
    digest = "sha256:" + "a" * 64
    docs = render(f"image.digest={digest}", "image.tag=ignored")
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert container["image"] == f"ghcr.io/kubequant/kubequant@{digest}"
    assert env["KUBEQUANT_WORKLOAD_IMAGE"] == f"ghcr.io/kubequant/kubequant@{digest}"
    # A digest names content that cannot change: the node's copy is the image.
    assert container["imagePullPolicy"] == env["KUBEQUANT_WORKLOAD_IMAGE_PULL_POLICY"] == "IfNotPresent"


@pytest.mark.parametrize(
    ("sets", "operator_policy", "workload_policy"),
    [
        # A tagged workload image is re-pulled even when the operator's is pinned.
        (
            ("image.digest=sha256:" + "b" * 64, "workloadImage=registry.example/kq:1"),
            "IfNotPresent",
            "Always",
        ),
        (("workloadImage=registry.example/kq@sha256:" + "c" * 64,), "Always", "IfNotPresent"),
        (("image.pullPolicy=Never", "workloadImagePullPolicy=IfNotPresent"), "Never", "IfNotPresent"),
    ],
)
def test_pull_policies_follow_tag_or_digest_unless_set(
    sets: tuple[str, ...], operator_policy: str, workload_policy: str
) -> None:
    (container,) = one(render(*sets), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["imagePullPolicy"] == operator_policy
    assert env_of(container)["KUBEQUANT_WORKLOAD_IMAGE_PULL_POLICY"] == workload_policy


# --------------------------------------------------------------------------- network policy


def network_policy(*sets: str) -> dict[str, Any]:
    return one(render(*sets), "NetworkPolicy")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_network_policy_isolates_the_operator_pods(scenario: str) -> None:
    docs = render(*SCENARIOS[scenario])
    policy = one(docs, "NetworkPolicy")
    spec = policy["spec"]
    assert policy["metadata"]["namespace"] == NAMESPACE
    # Selects exactly the operator's pods (Deployment or HA StatefulSet).
    (workload,) = objects(docs, "Deployment") + objects(docs, "StatefulSet")
    assert spec["podSelector"]["matchLabels"] == workload["spec"]["selector"]["matchLabels"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    # Ingress: the metrics port only, from the monitoring namespace only.
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert ingress["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {},
        }
    ]
    # Egress: the API server's ports, and DNS in kube-system; nothing else.
    api, dns = spec["egress"]
    assert api == {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]}
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]


def test_network_policy_pins_the_api_server_and_drops_dns_when_asked() -> None:
    spec = network_policy(
        "networkPolicy.apiServer.cidrs={10.0.0.5/32,fd00::1/128}",
        "networkPolicy.apiServer.ports={6443}",
        "networkPolicy.dns.enabled=false",
        "networkPolicy.metrics.namespaceSelector.matchLabels.team=observability",
        "networkPolicy.metrics.podSelector.matchLabels.app=prometheus",
    )["spec"]
    assert spec["egress"] == [
        {
            "ports": [{"port": 6443, "protocol": "TCP"}],
            "to": [{"ipBlock": {"cidr": "10.0.0.5/32"}}, {"ipBlock": {"cidr": "fd00::1/128"}}],
        }
    ]
    assert spec["ingress"][0]["from"] == [
        {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": "monitoring", "team": "observability"}
            },
            "podSelector": {"matchLabels": {"app": "prometheus"}},
        }
    ]
    assert spec["ingress"][0]["ports"][0]["port"] == "metrics"


def test_network_policy_can_be_turned_off() -> None:
    assert not objects(render("networkPolicy.enabled=false"), "NetworkPolicy")
