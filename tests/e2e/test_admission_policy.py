"""The chart's workload policy in the API server: its ValidatingAdmissionPolicy refuses a Backtest (a
TrainingJob, a LiveTradingSession) whose spec.pod or class modules break the policy, naming the
field, while no operator runs at all; an allowed one is created.

The chart is installed with replicaCount=0 (no operator pod) and the policy bound to this module's
namespace only, so that tests running meanwhile are not judged by it.
"""

from __future__ import annotations

import copy
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubectl import REPO_ROOT, bin_dir, helm_env, kubectl
from kubernetes import client

from kubequant.operator.builders.policy import image_repository

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CHART = REPO_ROOT / "charts" / "kubequant"
BAD = sorted((REPO_ROOT / "tests" / "unit" / "bad_manifests").glob("*.yaml"))
SEGMENTS = {
    "train": {"start": "2020-01-01", "end": "2021-06-30"},
    "valid": {"start": "2021-07-01", "end": "2021-12-31"},
    "test": {"start": "2022-01-01", "end": "2022-12-29"},
}
BACKTEST: dict[str, Any] = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "Backtest",
    "metadata": {"name": "policy"},
    "spec": {
        "period": {"start": "2022-01-04", "end": "2022-06-30"},
        "signal": {"file": {"path": "/data/scores.parquet"}},
    },
}


@dataclass(frozen=True)
class Installed:
    release: str
    release_ns: str
    namespace: str  # the namespace the policy is bound to
    elsewhere: str  # a namespace it is not bound to
    selector: dict[str, str]  # the labels that bind a namespace to it


def helm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(bin_dir() / "helm"), *args], capture_output=True, text=True, env=env, timeout=180
    )
    assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def create(namespace: str, doc: dict[str, Any], *flags: str) -> subprocess.CompletedProcess[str]:
    return kubectl("create", "-n", namespace, *flags, "-f", "-", stdin=yaml.safe_dump(doc))


def backtest(name: str, **pod: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BACKTEST)
    doc["metadata"]["name"] = name
    doc["spec"]["pod"] = pod
    return doc


@pytest.fixture(scope="module")
def installed(
    kube_config: client.Configuration,
    core: client.CoreV1Api,
    tmp_path_factory: pytest.TempPathFactory,
    wait_until: Any,
) -> Iterator[Installed]:
    suffix = uuid.uuid4().hex[:6]
    release, release_ns = f"kqp-{suffix}", f"e2e-policy-system-{suffix}"
    namespace, elsewhere = f"e2e-policy-{suffix}", f"e2e-policy-other-{suffix}"
    label = {"kubequant.io/e2e": "true", "kubequant.io/policy-e2e": suffix}
    for name, labels in (
        (release_ns, {"kubequant.io/e2e": "true"}),
        (namespace, label),
        (elsewhere, {"kubequant.io/e2e": "true"}),
    ):
        core.create_namespace({"metadata": {"name": name, "labels": labels}})
    home = tmp_path_factory.mktemp("helm-home")
    env = helm_env(home)
    values = home / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "replicaCount": 0,  # no operator: the API server alone enforces the policy
                "peering": {"name": release},
                "workloadPolicy": {
                    "allowedModules": ["acme.research"],
                    "allowedPriorityClasses": ["research-low"],
                    "admission": {"namespaceSelector": {"matchLabels": {"kubequant.io/policy-e2e": suffix}}},
                },
            }
        )
    )
    try:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"), check=True)
        helm("install", release, str(CHART), "-n", release_ns, "-f", str(values), env=env)
        # The API server loads a new policy and binding asynchronously.
        wait_until(
            lambda: (
                create(
                    namespace, backtest("probe", image="evil.example.com/miner"), "--dry-run=server"
                ).returncode
                != 0
            ),
            60,
            "the ValidatingAdmissionPolicy to take effect",
            interval=1,
        )
        yield Installed(release, release_ns, namespace, elsewhere, {"kubequant.io/policy-e2e": suffix})
    finally:
        subprocess.run(
            [str(bin_dir() / "helm"), "uninstall", release, "-n", release_ns, "--ignore-not-found", "--wait"],
            capture_output=True,
            env=env,
            timeout=180,
        )
        for name in (namespace, elsewhere, release_ns):
            core.delete_namespace(name, propagation_policy="Background")


def test_forbidden_image_is_refused_with_no_operator_running(
    installed: Installed, core: client.CoreV1Api
) -> None:
    pods = core.list_namespaced_pod(installed.release_ns).items
    assert pods == [], f"no operator should run: {[p.metadata.name for p in pods]}"
    proc = create(installed.namespace, backtest("miner", image="evil.example.com/miner:latest"))
    assert proc.returncode != 0, proc.stdout
    assert "spec.pod.image: image evil.example.com/miner:latest" in proc.stderr, proc.stderr
    assert "(allowed: ghcr.io/kubequant/kubequant)" in proc.stderr and "allowedImages" in proc.stderr
    gone = kubectl("get", "-n", installed.namespace, "bt/miner")
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_allowed_image_is_accepted(installed: Installed) -> None:
    doc = backtest(
        "allowed",
        image="ghcr.io/kubequant/kubequant:0.2.0",
        nodeSelector={"kubequant.io/pool": "gpu"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        resources={"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"nvidia.com/gpu": 4}},
        serviceAccountName="default",
        priorityClassName="research-low",
    )
    proc = create(installed.namespace, doc)
    assert proc.returncode == 0, proc.stderr
    got = kubectl(
        "get", "-n", installed.namespace, "bt/allowed", "-o", "jsonpath={.spec.pod.image}", check=True
    )
    assert got.stdout == "ghcr.io/kubequant/kubequant:0.2.0"


@pytest.mark.parametrize(
    ("pod", "field"),
    [
        ({"image": "python:3.11"}, "spec.pod.image: image python:3.11 (repository docker.io/library/python)"),
        ({"image": "ghcr.io/kubequant/kubequant-evil:1"}, "spec.pod.image"),
        ({"image": "docker.io/python"}, "(repository docker.io/library/python)"),
        ({"image": "localhost:5000/kq:1"}, "(repository localhost:5000/kq)"),
        ({"serviceAccountName": "ci-deployer"}, "spec.pod.serviceAccountName: ServiceAccount ci-deployer"),
        (
            {"priorityClassName": "system-node-critical"},
            "spec.pod.priorityClassName: PriorityClass system-node-critical",
        ),
        ({"tolerations": [{"operator": "Exists"}]}, "spec.pod.tolerations: tolerating every taint"),
        (
            {"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]},
            "spec.pod.tolerations: tolerating taint node-role.kubernetes.io/control-plane",
        ),
        (
            {"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}},
            "spec.pod.nodeSelector.node-role.kubernetes.io/control-plane",
        ),
        ({"imagePullSecrets": [{"name": "other-team"}]}, "spec.pod.imagePullSecrets: pull secret other-team"),
        ({"resources": {"limits": {"nvidia.com/gpu": 8}}}, "spec.pod.resources.limits.nvidia.com/gpu"),
        ({"resources": {"requests": {"cpu": "17"}}}, "spec.pod.resources.requests.cpu"),
        ({"resources": {"requests": {"memory": "65Gi"}}}, "spec.pod.resources.requests.memory"),
        ({"resources": {"limits": {"amd.com/gpu": 1}}}, "spec.pod.resources.limits.amd.com/gpu"),
    ],
    ids=lambda v: re.sub(r"\W+", "-", str(v))[:40],
)
def test_each_pod_rule_is_refused_naming_the_field(
    installed: Installed, pod: dict[str, Any], field: str
) -> None:
    proc = create(installed.namespace, backtest("rule", **pod), "--dry-run=server")
    assert proc.returncode != 0, f"the API server accepted {pod}"
    assert field in proc.stderr and "workload policy" in proc.stderr, proc.stderr


def test_other_kinds_with_a_pod_are_checked_too(installed: Installed) -> None:
    training = {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "gpus"},
        "spec": {"dataset": {"segments": SEGMENTS}, "pod": {"resources": {"limits": {"nvidia.com/gpu": 8}}}},
    }
    session = {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "LiveTradingSession",
        "metadata": {"name": "as-deployer"},
        "spec": {
            "account": "a-1",
            "riskPolicyRef": {"name": "p"},
            "pod": {"serviceAccountName": "ci-deployer"},
        },
    }
    proc = create(installed.namespace, training, "--dry-run=server")
    assert proc.returncode != 0 and "spec.pod.resources.limits.nvidia.com/gpu" in proc.stderr, proc.stderr
    proc = create(installed.namespace, session, "--dry-run=server")
    assert proc.returncode != 0 and "spec.pod.serviceAccountName" in proc.stderr, proc.stderr


def training_with_ray(name: str, ray: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {"dataset": {"segments": SEGMENTS}, "ray": ray},
    }


@pytest.mark.parametrize(
    ("ray", "field"),
    [
        ({"headResources": {"requests": {"cpu": "17"}}}, "spec.ray.headResources.requests.cpu: 17 cpu"),
        ({"headResources": {"limits": {"memory": "65Gi"}}}, "spec.ray.headResources.limits.memory: 65Gi"),
        (
            {"workers": {"replicas": 2, "resources": {"limits": {"amd.com/gpu": "1"}}}},
            "spec.ray.workers.resources.limits.amd.com/gpu",
        ),
        ({"workers": {"replicas": 1, "gpusPerWorker": 8}}, "spec.ray.workers.gpusPerWorker: 8 GPUs per pod"),
    ],
    ids=lambda v: re.sub(r"\W+", "-", str(v))[:40],
)
def test_a_trainingjobs_ray_pods_are_held_to_the_ceilings(
    installed: Installed, ray: dict[str, Any], field: str
) -> None:
    proc = create(installed.namespace, training_with_ray("ray-over", ray), "--dry-run=server")
    assert proc.returncode != 0, f"the API server accepted {ray}"
    assert field in proc.stderr and "workload policy" in proc.stderr, proc.stderr


def test_a_trainingjob_with_ray_pods_inside_the_ceilings_is_accepted(installed: Installed) -> None:
    ray = {
        "headResources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": 4}},
        "workers": {"replicas": 2, "gpusPerWorker": 4, "resources": {"requests": {"cpu": "16"}}},
    }
    proc = create(installed.namespace, training_with_ray("ray-ok", ray), "--dry-run=server")
    assert proc.returncode == 0, proc.stderr


def _policy_manifests() -> list[Path]:
    return [p for p in BAD if p.read_text().splitlines()[0].endswith("| server: policy")]


@pytest.mark.parametrize("path", _policy_manifests(), ids=lambda p: p.stem)
def test_module_allow_list_bad_manifests_are_refused(installed: Installed, path: Path) -> None:
    """The bad manifests marked `server: policy`: the CRDs accept them, the policy does not."""
    field = path.read_text().splitlines()[0].removeprefix("# expect: ").split(" | ")[0]
    proc = kubectl("create", "--dry-run=server", "-n", installed.namespace, "-f", str(path))
    assert proc.returncode != 0, f"the API server accepted {path.name}"
    assert f"{field}: module " in proc.stderr and "allowedModules" in proc.stderr, proc.stderr


def test_an_admin_s_module_prefix_is_allowed(installed: Installed) -> None:
    doc = copy.deepcopy(BACKTEST)
    doc["spec"]["strategy"] = {"custom": {"class": "Momentum", "module": "acme.research.strategies"}}
    assert create(installed.namespace, doc, "--dry-run=server").returncode == 0
    doc["spec"]["strategy"]["custom"]["module"] = "acme.researchx"
    proc = create(installed.namespace, doc, "--dry-run=server")
    assert proc.returncode != 0 and "spec.strategy.custom.module: module acme.researchx" in proc.stderr


def test_namespaces_outside_the_selector_are_not_judged(installed: Installed) -> None:
    proc = create(
        installed.elsewhere, backtest("unbound", image="evil.example.com/miner"), "--dry-run=server"
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "image",
    [
        "python:3.11",
        "docker.io/python",
        "index.docker.io/library/python:3",
        "acme/tools:1",
        "localhost/kq:dev",
        "registry.example.com:5000/a/b@sha256:" + "c" * 64,
    ],
)
def test_the_api_server_resolves_repositories_as_the_operator_does(installed: Installed, image: str) -> None:
    proc = create(installed.namespace, backtest("resolve", image=image), "--dry-run=server")
    assert proc.returncode != 0
    assert f"(repository {image_repository(image)})" in proc.stderr, proc.stderr


def test_objects_admitted_before_the_policy_keep_their_kill_switch(
    installed: Installed, make_namespace: Any, core: client.CoreV1Api, wait_until: Any
) -> None:
    """A session created where the policy did not apply yet: toggling spec.halted (the kill switch)
    and the operator's metadata patches still work once it does; a change of its pod is judged."""
    ns = make_namespace()
    session = {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "LiveTradingSession",
        "metadata": {"name": "older"},
        "spec": {
            "account": "a-1",
            "riskPolicyRef": {"name": "p"},
            "pod": {"priorityClassName": "legacy-high"},
        },
    }
    assert create(ns, session).returncode == 0
    core.patch_namespace(ns, {"metadata": {"labels": installed.selector}})
    name = "lts/older"

    def pod_change_refused() -> bool:
        patch = '{"spec":{"pod":{"priorityClassName":"legacy-higher"}}}'
        proc = kubectl("patch", "-n", ns, name, "--type=merge", "--dry-run=server", "-p", patch)
        return proc.returncode != 0 and "spec.pod.priorityClassName" in proc.stderr

    wait_until(pod_change_refused, 60, "the policy to judge the newly selected namespace", interval=1)
    halt = kubectl("patch", "-n", ns, name, "--type=merge", "-p", '{"spec":{"halted":true}}')
    assert halt.returncode == 0, halt.stderr
    note = kubectl("annotate", "-n", ns, name, "kubequant.io/last-handled-configuration={}")
    assert note.returncode == 0, note.stderr
