"""The operator chart on a real API server: installs into a namespace that enforces the "restricted"
Pod Security Standard, becomes available, upgrades, keeps its CRDs upgradable by server-side
apply, and grants its ServiceAccount exactly the least-privilege matrix (`kubectl auth can-i`).

kwok simulates the pods (nothing is pulled or run), so the image can be any name; the operator's
own behaviour is tested elsewhere.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubectl import REPO_ROOT, bin_dir, helm_env, wait_established
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

NamespaceFactory = Callable[..., str]
WaitUntil = Callable[..., Any]

CHART = REPO_ROOT / "charts" / "kubequant"
REPO_CRDS = REPO_ROOT / "crds"
CHART_CRDS = CHART / "crds"
IMAGE = ("example.invalid/kubequant", "e2e")  # never pulled: kwok simulates the containers
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/warn-version": "latest",
}


# --------------------------------------------------------------------------- tools


@dataclass(frozen=True)
class Tools:
    helm: Path
    kubectl: Path
    env: dict[str, str]

    def run(
        self, *args: str | Path, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(a) for a in args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"`{' '.join(str(a) for a in args)}` exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}",
                pytrace=False,
            )
        return result

    def can_i(self, sa: str, verb: str, resource: str, *flags: str) -> bool:
        result = self.run(self.kubectl, "auth", "can-i", verb, resource, "--as", sa, *flags, check=False)
        answer = result.stdout.strip().splitlines()[-1:] or [""]
        assert answer[0] in ("yes", "no"), f"kubectl auth can-i {verb} {resource}: {result.stderr}"
        return answer[0] == "yes"

    def can_i_list(self, sa: str, namespace: str) -> list[dict[str, str]]:
        """`kubectl auth can-i --list` as rows of its four columns."""
        out = self.run(self.kubectl, "auth", "can-i", "--list", "--as", sa, "-n", namespace).stdout
        header, *lines = out.splitlines()
        names = ["Resources", "Non-Resource URLs", "Resource Names", "Verbs"]
        starts = [header.index(name) for name in names]
        rows = []
        for line in lines:
            cells = [
                line[start : (starts[i + 1] if i + 1 < len(starts) else None)].strip()
                for i, start in enumerate(starts)
            ]
            rows.append(dict(zip(names, cells, strict=True)))
        return rows


@pytest.fixture(scope="module")
def tools(kube_config: client.Configuration, tmp_path_factory: pytest.TempPathFactory) -> Tools:
    binaries = bin_dir()
    for name in ("helm", "kubectl"):
        if not os.access(binaries / name, os.X_OK):
            pytest.fail(f"{binaries / name} is missing: run `make k8s-binaries`", pytrace=False)
    home = tmp_path_factory.mktemp("helm-home")
    env = helm_env(home)  # the cluster that kube_config (conftest) found to answer
    return Tools(helm=binaries / "helm", kubectl=binaries / "kubectl", env=env)


def apply_crds(tools: Tools, folder: Path) -> subprocess.CompletedProcess[str]:
    """The documented CRD upgrade path; waits until every CRD of the folder is Established."""
    result = tools.run(tools.kubectl, "apply", "--server-side", "--force-conflicts", "-f", folder)
    names = [
        doc["metadata"]["name"]
        for path in sorted(folder.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    wait_established(functools.partial(tools.run, tools.kubectl), *(f"crd/{n}" for n in names))
    return result


def helm_values(release: str, *sets: str) -> list[str]:
    base = [
        f"image.repository={IMAGE[0]}",
        f"image.tag={IMAGE[1]}",
        # ClusterKopfPeering is cluster-scoped: a per-release name keeps parallel runs apart.
        f"peering.name={release}",
        # The workload policy's ValidatingAdmissionPolicy is cluster-wide: it would judge the
        # objects of every other test running meanwhile. test_admission_policy.py installs it bound
        # to its own namespace.
        "workloadPolicy.admission.enabled=false",
    ]
    return [arg for s in (*base, *sets) for arg in ("--set", s)]


def deployment_available(apps: client.AppsV1Api, namespace: str, name: str) -> client.V1Deployment | None:
    dep = apps.read_namespaced_deployment(name, namespace)
    status = dep.status
    done = (
        (status.observed_generation or 0) >= dep.metadata.generation
        and status.updated_replicas == dep.spec.replicas
        and status.available_replicas == dep.spec.replicas
        and any(c.type == "Available" and c.status == "True" for c in status.conditions or [])
    )
    return dep if done else None


def failed_create_events(core: client.CoreV1Api, namespace: str) -> list[str]:
    return [
        f"{e.involved_object.kind}/{e.involved_object.name}: {e.message}"
        for e in core.list_namespaced_event(namespace).items
        if e.reason == "FailedCreate"
    ]


def sa_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


# --------------------------------------------------------------------------- a cluster-scope release


@dataclass
class Release:
    name: str
    namespace: str
    fullname: str
    sa: str
    install: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def apps(api_client: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(api_client)


@pytest.fixture(scope="module")
def release(tools: Tools, core: client.CoreV1Api) -> Iterator[Release]:
    """The chart with its defaults (cluster scope), in a restricted namespace of its own."""
    suffix = uuid.uuid4().hex[:6]
    namespace, name = f"e2e-chart-{suffix}", f"kq-{suffix}"
    core.create_namespace(
        {"metadata": {"name": namespace, "labels": {"kubequant.io/e2e": "true", **RESTRICTED}}}
    )
    try:
        apply_crds(tools, REPO_CRDS)
        install = tools.run(tools.helm, "install", name, CHART, "-n", namespace, *helm_values(name))
        yield Release(name, namespace, f"{name}-kubequant", f"{name}-kubequant", install)
    finally:
        tools.run(tools.helm, "uninstall", name, "-n", namespace, "--ignore-not-found", "--wait", check=False)
        core.delete_namespace(namespace, propagation_policy="Background")


def test_install_is_available_and_admitted_by_restricted(
    release: Release, tools: Tools, core: client.CoreV1Api, apps: client.AppsV1Api, wait_until: WaitUntil
) -> None:
    ns = release.namespace
    assert "STATUS: deployed" in release.install.stdout
    # Warn mode reports what enforce would reject, at the Deployment's creation.
    assert "PodSecurity" not in release.install.stderr, release.install.stderr
    dep = wait_until(
        lambda: deployment_available(apps, ns, release.fullname),
        120,
        "the operator Deployment to be available",
    )
    assert dep.spec.replicas == 1 and dep.spec.strategy.type == "Recreate"

    selector = ",".join(f"{k}={v}" for k, v in dep.spec.selector.match_labels.items())
    pods = core.list_namespaced_pod(ns, label_selector=selector).items
    assert len(pods) == 1, [p.metadata.name for p in pods]
    pod = pods[0]
    assert pod.status.phase == "Running"
    assert pod.spec.node_name, "the pod was not scheduled"
    assert pod.spec.security_context.run_as_user == 65532
    assert pod.spec.containers[0].security_context.read_only_root_filesystem is True
    assert pod.spec.service_account_name == release.sa
    # The pod was admitted: its ReplicaSet never failed to create one.
    replica_sets = apps.list_namespaced_replica_set(ns, label_selector=selector).items
    assert replica_sets and all(rs.status.replicas == 1 for rs in replica_sets if rs.spec.replicas)
    assert failed_create_events(core, ns) == []

    # Helm created kopf's peering CRDs (if absent) and the peering object the operator joins.
    peering = tools.run(tools.kubectl, "get", "clusterkopfpeering", release.name, "-o", "json")
    assert json.loads(peering.stdout)["metadata"]["labels"]["app.kubernetes.io/instance"] == release.name
    service = core.read_namespaced_service(f"{release.fullname}-metrics", ns)
    assert [(p.name, p.port) for p in service.spec.ports] == [("metrics", 9090)]
    # The API server accepted the NetworkPolicy, selecting exactly the operator's pods. (Whether it
    # is enforced is the CNI's business: this cluster has none.)
    policy = client.NetworkingV1Api(core.api_client).read_namespaced_network_policy(release.fullname, ns)
    assert policy.spec.pod_selector.match_labels == dep.spec.selector.match_labels
    assert sorted(policy.spec.policy_types) == ["Egress", "Ingress"]
    assert [p.port for rule in policy.spec.ingress for p in rule.ports] == ["metrics"]


def test_serviceaccount_can_do_what_the_operator_needs_and_nothing_more(
    release: Release, tools: Tools, wait_until: WaitUntil
) -> None:
    sa, ns = sa_user(release.namespace, release.sa), release.namespace
    wait_until(
        lambda: tools.can_i(sa, "list", "backtests.kubequant.io", "-n", ns),
        30,
        "the ClusterRoleBinding to apply",
    )
    # Exactly the verbs the handlers and kopf use (operator/rbac.py, the handlers' RBAC)...
    allowed = [
        ("list", "backtests.kubequant.io", "--all-namespaces"),
        ("watch", "backtests.kubequant.io", "-n", "default"),
        ("get", "backtests.kubequant.io", "-n", ns),
        ("patch", "backtests.kubequant.io", "-n", ns),
        ("patch", "backtests.kubequant.io", "--subresource=status", "-n", ns),
        ("update", "backtests.kubequant.io", "--subresource=finalizers", "-n", ns),
        ("create", "jobs.batch", "-n", ns),
        ("get", "jobs.batch", "-n", ns),
        ("list", "jobs.batch", "--all-namespaces"),
        ("watch", "jobs.batch", "-n", ns),
        ("patch", "jobs.batch", "-n", ns),
        ("create", "configmaps", "-n", ns),
        ("get", "configmaps", "-n", ns),
        ("list", "pods", "-n", ns),
        ("get", "persistentvolumeclaims", "-n", ns),
        ("create", "events", "-n", ns),
        ("list", "clusterkopfpeerings.kopf.dev"),
        ("watch", "clusterkopfpeerings.kopf.dev"),
        ("patch", "clusterkopfpeerings.kopf.dev"),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
        # LiveTradingSessions and RiskPolicies (issue 9): watched, indexed, read, their status written;
        # the trading pod's children created, adopted and converged (patch); trading pods watched.
        *((verb, "livetradingsessions.kubequant.io", "-n", ns) for verb in ("get", "list", "watch", "patch")),
        *((verb, "riskpolicies.kubequant.io", "-n", ns) for verb in ("get", "list", "watch", "patch")),
        ("patch", "livetradingsessions.kubequant.io", "--subresource=status", "-n", ns),
        ("patch", "riskpolicies.kubequant.io", "--subresource=status", "-n", ns),
        ("update", "livetradingsessions.kubequant.io", "--subresource=finalizers", "-n", ns),
        *(
            (verb, resource, "-n", ns)
            for resource in (
                "statefulsets.apps",
                "services",
                "serviceaccounts",
                "networkpolicies.networking.k8s.io",
                "roles.rbac.authorization.k8s.io",
                "rolebindings.rbac.authorization.k8s.io",
            )
            for verb in ("create", "get", "patch")
        ),
        ("patch", "configmaps", "-n", ns),
        ("watch", "pods", "-n", ns),
        # TrainingJobs (issue 10): watched, read, their status written; the RayJob created, adopted,
        # suspended (patch) and watched. KubeRay makes the RayCluster: the operator never touches it.
        *((verb, "trainingjobs.kubequant.io", "-n", ns) for verb in ("get", "list", "watch", "patch")),
        ("patch", "trainingjobs.kubequant.io", "--subresource=status", "-n", ns),
        ("update", "trainingjobs.kubequant.io", "--subresource=finalizers", "-n", ns),
        *((verb, "rayjobs.ray.io", "-n", ns) for verb in ("create", "get", "patch", "list", "watch")),
    ]
    # ...and not one more: what the chart used to grant, what no handler calls, and the dangerous.
    denied = [
        ("get", "secrets", "--all-namespaces"),
        ("get", "secrets", "-n", ns),
        ("list", "secrets", "-n", "default"),
        ("delete", "jobs.batch", "-n", ns),
        ("update", "jobs.batch", "-n", ns),
        ("list", "configmaps", "-n", ns),
        ("watch", "configmaps", "-n", ns),
        ("delete", "configmaps", "-n", ns),
        ("get", "pods", "-n", ns),
        ("create", "pods", "-n", ns),
        ("delete", "pods", "-n", ns),
        ("create", "pods", "--subresource=exec", "-n", ns),
        ("get", "pods", "--subresource=log", "-n", ns),
        ("get", "backtests.kubequant.io", "--subresource=status", "-n", ns),
        ("update", "backtests.kubequant.io", "--subresource=status", "-n", ns),
        ("create", "backtests.kubequant.io", "-n", ns),
        ("delete", "backtests.kubequant.io", "-n", ns),
        ("update", "backtests.kubequant.io", "-n", ns),
        ("create", "trainingjobs.kubequant.io", "-n", ns),
        ("delete", "trainingjobs.kubequant.io", "-n", ns),
        ("update", "trainingjobs.kubequant.io", "-n", ns),
        ("delete", "rayjobs.ray.io", "-n", ns),
        ("update", "rayjobs.ray.io", "-n", ns),
        ("get", "rayclusters.ray.io", "-n", ns),
        ("create", "rayclusters.ray.io", "-n", ns),
        ("patch", "events", "-n", ns),
        ("create", "events.events.k8s.io", "-n", ns),
        ("get", "clusterkopfpeerings.kopf.dev"),
        ("list", "namespaces"),
        ("watch", "namespaces"),
        ("delete", "namespaces"),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "persistentvolumeclaims", "-n", ns),
        # Never delete, update or read beyond what the sessions need, and no cluster-wide RBAC.
        ("delete", "statefulsets.apps", "-n", ns),
        ("update", "statefulsets.apps", "-n", ns),
        ("delete", "livetradingsessions.kubequant.io", "-n", ns),
        ("update", "livetradingsessions.kubequant.io", "-n", ns),
        ("delete", "riskpolicies.kubequant.io", "-n", ns),
        ("create", "riskpolicies.kubequant.io", "-n", ns),
        ("update", "riskpolicies.kubequant.io", "--subresource=finalizers", "-n", ns),
        ("delete", "roles.rbac.authorization.k8s.io", "-n", ns),
        ("update", "rolebindings.rbac.authorization.k8s.io", "-n", ns),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("delete", "networkpolicies.networking.k8s.io", "-n", ns),
        ("delete", "persistentvolumeclaims", "-n", ns),
        ("list", "services", "-n", ns),
        ("escalate", "clusterroles.rbac.authorization.k8s.io"),
        ("escalate", "roles.rbac.authorization.k8s.io", "-n", ns),
        ("bind", "clusterroles.rbac.authorization.k8s.io"),
        ("impersonate", "users"),
        ("impersonate", "serviceaccounts", "-n", ns),
        # (The TokenRequest subresource: "serviceaccounts/token" alone would mean a ServiceAccount named token.)
        ("create", "serviceaccounts", "--subresource=token", "-n", ns),
    ]
    wrong = [f"can {' '.join(c)}" for c in denied if tools.can_i(sa, *c)]
    wrong += [f"cannot {' '.join(c)}" for c in allowed if not tools.can_i(sa, *c)]
    assert wrong == [], f"{sa}: {wrong}"

    # The complete list: no wildcard anywhere in what it may do. (The built-in discovery grants
    # every account has, e.g. GET on the non-resource URL /api/*, are compared against an
    # account with no bindings at all.)
    nobody = sa_user(ns, "nobody-" + uuid.uuid4().hex[:6])
    for where in (ns, "default"):
        rows = tools.can_i_list(sa, where)
        baseline = tools.can_i_list(nobody, where)
        granted = [r for r in rows if r not in baseline]
        assert any(r["Resources"] == "backtests.kubequant.io" for r in granted), granted
        for row in rows:
            for column in ("Resources", "Resource Names", "Verbs"):
                assert "*" not in row[column], f"-n {where}: {row}"
        for row in granted:
            assert "*" not in " ".join(row.values()), f"-n {where}: {row}"
            assert not row["Resources"].startswith("secrets"), f"-n {where}: {row}"


def test_crds_upgrade_by_server_side_apply_over_the_release(
    release: Release, tools: Tools, apps: client.AppsV1Api, wait_until: WaitUntil
) -> None:
    """The documented path: Helm never upgrades crds/, `kubectl apply --server-side` does."""
    for folder in (CHART_CRDS, REPO_CRDS):
        result = apply_crds(tools, folder)
        assert "serverside-applied" in result.stdout, result.stdout
    crds = json.loads(tools.run(tools.kubectl, "get", "crd", "-o", "json", "--show-managed-fields").stdout)[
        "items"
    ]
    by_name = {c["metadata"]["name"]: c for c in crds}
    for path in sorted(CHART_CRDS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            live = by_name[doc["metadata"]["name"]]
            managers = {m["manager"] for m in live["metadata"]["managedFields"] if m["operation"] == "Apply"}
            assert "kubectl" in managers, f"{doc['metadata']['name']} managed by {managers}"
            assert [v["name"] for v in live["spec"]["versions"]] == [
                v["name"] for v in doc["spec"]["versions"]
            ]
    status = json.loads(
        tools.run(tools.helm, "status", release.name, "-n", release.namespace, "-o", "json").stdout
    )
    assert status["info"]["status"] == "deployed"
    wait_until(lambda: deployment_available(apps, release.namespace, release.fullname), 60, "the Deployment")


def test_helm_upgrade_with_a_changed_value(
    release: Release, tools: Tools, core: client.CoreV1Api, apps: client.AppsV1Api, wait_until: WaitUntil
) -> None:
    ns = release.namespace
    before = apps.read_namespaced_deployment(release.fullname, ns)
    result = tools.run(
        tools.helm,
        "upgrade",
        release.name,
        CHART,
        "-n",
        ns,
        "--reuse-values",
        "--set",
        "logLevel=debug",
        "--set",
        "podAnnotations.kubequant\\.io/e2e=upgraded",
    )
    assert "PodSecurity" not in result.stderr, result.stderr
    status = json.loads(tools.run(tools.helm, "status", release.name, "-n", ns, "-o", "json").stdout)
    assert (status["version"], status["info"]["status"]) == (2, "deployed")

    dep = wait_until(lambda: deployment_available(apps, ns, release.fullname), 120, "the upgraded Deployment")
    assert dep.metadata.generation > before.metadata.generation
    env = {e.name: e.value for e in dep.spec.template.spec.containers[0].env}
    assert env["KUBEQUANT_LOG_LEVEL"] == "debug"
    assert env["KUBEQUANT_PEERING"] == release.name  # --reuse-values kept the install's values

    selector = ",".join(f"{k}={v}" for k, v in dep.spec.selector.match_labels.items())
    pods = wait_until(
        lambda: [
            p
            for p in core.list_namespaced_pod(ns, label_selector=selector).items
            if p.metadata.deletion_timestamp is None and p.status.phase == "Running"
        ],
        120,
        "the upgraded operator pod",
    )
    assert len(pods) == 1
    assert pods[0].metadata.annotations.get("kubequant.io/e2e") == "upgraded"
    assert failed_create_events(core, ns) == []


def test_uninstall_removes_the_cluster_objects_and_keeps_the_crds(
    release: Release, tools: Tools, api_client: client.ApiClient
) -> None:
    tools.run(tools.helm, "uninstall", release.name, "-n", release.namespace, "--wait")
    rbac = client.RbacAuthorizationV1Api(api_client)
    cluster_name = f"{release.namespace}-{release.fullname}"
    for read in (rbac.read_cluster_role, rbac.read_cluster_role_binding):
        with pytest.raises(ApiException) as gone:
            read(cluster_name)
        assert gone.value.status == 404
    peering = tools.run(tools.kubectl, "get", "clusterkopfpeering", release.name, check=False)
    assert peering.returncode != 0 and "NotFound" in peering.stderr
    # Helm never deletes crds/: the custom resources outlive the release.
    tools.run(tools.kubectl, "get", "crd", "backtests.kubequant.io", "clusterkopfpeerings.kopf.dev")


# --------------------------------------------------------------------------- namespace scope + HA


def test_namespace_scope_ha_install(
    tools: Tools,
    core: client.CoreV1Api,
    apps: client.AppsV1Api,
    api_client: client.ApiClient,
    make_namespace: NamespaceFactory,
    wait_until: WaitUntil,
) -> None:
    """Roles only in the watched namespace, no Secrets anywhere; two HA replicas admitted."""
    home = make_namespace(labels=RESTRICTED)
    watched = make_namespace()
    name = f"kq-{uuid.uuid4().hex[:6]}"
    apply_crds(tools, REPO_CRDS)
    try:
        tools.run(
            tools.helm,
            "install",
            name,
            CHART,
            "-n",
            home,
            *helm_values(name, "rbac.scope=namespace", f"watchNamespaces={{{watched}}}", "ha.enabled=true"),
        )
        fullname = f"{name}-kubequant"

        def sts_ready() -> client.V1StatefulSet | None:
            sts = apps.read_namespaced_stateful_set(fullname, home)
            return sts if sts.status.ready_replicas == 2 and sts.status.available_replicas == 2 else None

        sts = wait_until(sts_ready, 120, "the HA StatefulSet to have 2 ready replicas")
        assert sts.spec.pod_management_policy == "Parallel"
        pods = core.list_namespaced_pod(home, label_selector=f"app.kubernetes.io/instance={name}").items
        assert sorted(p.metadata.name for p in pods) == [f"{fullname}-0", f"{fullname}-1"]
        assert failed_create_events(core, home) == []
        pdb = client.PolicyV1Api(api_client).read_namespaced_pod_disruption_budget(fullname, home)
        assert pdb.spec.min_available == 1
        tools.run(tools.kubectl, "get", "kopfpeering", name, "-n", watched)

        sa = sa_user(home, fullname)
        wait_until(
            lambda: tools.can_i(sa, "list", "backtests.kubequant.io", "-n", watched), 30, "the RoleBinding"
        )
        allowed = [
            ("create", "jobs.batch", "-n", watched),
            ("list", "pods", "-n", watched),
            ("patch", "backtests.kubequant.io", "--subresource=status", "-n", watched),
            ("list", "kopfpeerings.kopf.dev", "-n", watched),
            ("patch", "kopfpeerings.kopf.dev", "-n", watched),
            ("create", "events", "-n", watched),
            ("list", "customresourcedefinitions.apiextensions.k8s.io"),
        ]
        denied = [
            ("get", "secrets", "-n", watched),
            ("list", "secrets", "-n", watched),
            ("delete", "jobs.batch", "-n", watched),
            ("create", "events", "-n", home),
            ("patch", "kopfpeerings.kopf.dev", "-n", home),
            ("create", "jobs.batch", "-n", home),
            ("get", "secrets", "-n", home),
            ("get", "secrets", "-n", "default"),
            ("get", "secrets", "--all-namespaces"),
            ("list", "backtests.kubequant.io", "--all-namespaces"),
            ("list", "backtests.kubequant.io", "-n", home),
            ("create", "jobs.batch", "-n", "default"),
            ("list", "namespaces"),
            ("patch", "clusterkopfpeerings.kopf.dev"),
            ("create", "pods", "-n", watched),
            ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
        ]
        wrong = [f"can {' '.join(c)}" for c in denied if tools.can_i(sa, *c)]
        wrong += [f"cannot {' '.join(c)}" for c in allowed if not tools.can_i(sa, *c)]
        assert wrong == [], f"{sa}: {wrong}"
    finally:
        tools.run(tools.helm, "uninstall", name, "-n", home, "--ignore-not-found", "--wait", check=False)
