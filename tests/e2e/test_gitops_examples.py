"""examples/gitops on a real API server with Argo CD's own CRDs (Application, ApplicationSet,
AppProject from its Go module at ARGOCD_VERSION, hack/fetch-argocd-crds.sh): every manifest is
server-side applied with --dry-run=server, so the CRDs' schemas (Argo CD's and kubequant's) and
CEL rules judge them, and the two charts the Applications install are rendered with the
Applications' own Helm values and judged the same way; the documented `kubectl patch` of argocd-cm
installs the health checks unchanged. No Argo CD runs: its controllers are not what is tested here
(the health checks are, in tests/unit/gitops, on Lua 5.1).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubectl import REPO_ROOT, bin_dir, kubeconfig
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubequant import gitops

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

GITOPS = REPO_ROOT / "examples" / "gitops"
ARGOCD_CRDS = ("application-crd.yaml", "applicationset-crd.yaml", "appproject-crd.yaml")
DRY_RUN = ("apply", "--server-side", "--dry-run=server", "--field-manager=argocd-controller")


def run(
    *args: str | Path, stdin: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": kubeconfig()}
    return subprocess.run(
        [str(a) for a in args], input=stdin, capture_output=True, text=True, env=env, timeout=timeout
    )


def must(result: subprocess.CompletedProcess[str]) -> str:
    if result.returncode != 0:
        pytest.fail(
            f"`{' '.join(result.args)}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def kubectl(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run(bin_dir() / "kubectl", *args, stdin=stdin)


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def argocd_crd_dir() -> Path:
    script = REPO_ROOT / "hack" / "fetch-argocd-crds.sh"
    must(run(script))  # once: a cache outside the repo
    folder = Path(must(run(script, "--print-dir")).strip())
    assert (folder / ".complete").exists(), f"{folder} is incomplete: run {script}"
    return folder


def install_crds(files: list[Path]) -> None:
    """Server-side, as the kubequant-crds Application does (ApplicationSet's CRD is ~1.5 MB: too big
    for client-side apply's annotation)."""
    flags = [a for f in files for a in ("-f", str(f))]
    must(kubectl("apply", "--server-side", "--force-conflicts", *flags))
    # `kubectl wait` errors (not waits) on a CRD the API server has not given conditions yet.
    deadline = time.monotonic() + 120
    while (waited := kubectl("wait", "--for=condition=Established", "--timeout=60s", *flags)).returncode:
        if time.monotonic() > deadline:
            must(waited)
        time.sleep(1)


@pytest.fixture(scope="module")
def crds(kube_config: client.Configuration) -> None:
    """Argo CD's CRDs and the operator chart's (kubequant.io and kopf's peering). They stay installed,
    as the kubequant CRDs do after every e2e module: applying them again is a no-op."""
    folder = argocd_crd_dir()
    install_crds([folder / name for name in ARGOCD_CRDS])
    install_crds(sorted((REPO_ROOT / "charts" / "kubequant" / "crds").glob("*.yaml")))


def destination_namespaces() -> set[str]:
    """Every namespace a manifest of examples/gitops or an Application's destination names."""
    names = set()
    for path in GITOPS.rglob("*.yaml"):
        for doc in documents(path):
            if doc["kind"] == "Namespace":
                names.add(doc["metadata"]["name"])
            elif doc["metadata"].get("namespace"):
                names.add(doc["metadata"]["namespace"])
            if doc["kind"] == "Application":
                names.add(doc["spec"]["destination"].get("namespace") or "default")
    return names - {"default"}


@pytest.fixture(scope="module")
def namespaces(crds: None, core: client.CoreV1Api, wait_until: Any) -> Iterator[set[str]]:
    """The namespaces the manifests live in (a dry run still needs them); those made here go after."""
    made = []
    for name in sorted(destination_namespaces()):
        # A namespace a previous run deleted may still be terminating.
        wait_until(lambda n=name: _not_terminating(core, n), 120, f"namespace {name} to finish terminating")
        try:
            core.create_namespace({"metadata": {"name": name, "labels": {"kubequant.io/e2e": "true"}}})
            made.append(name)
        except ApiException as exc:
            if exc.status != 409:
                raise
    yield destination_namespaces()
    for name in made:
        core.delete_namespace(name, propagation_policy="Background")


def _not_terminating(core: client.CoreV1Api, name: str) -> bool:
    try:
        return core.read_namespace(name).status.phase != "Terminating"
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise


def research_namespace() -> str:
    app = next(
        d
        for p in (GITOPS / "apps").glob("*.yaml")
        for d in documents(p)
        if d["kind"] == "Application" and d["spec"]["source"]["path"] == "examples/gitops/research"
    )
    return str(app["spec"]["destination"]["namespace"])


MANIFESTS = sorted(GITOPS.rglob("*.yaml"))


@pytest.mark.parametrize("path", MANIFESTS, ids=[str(p.relative_to(GITOPS)) for p in MANIFESTS])
def test_the_api_server_accepts_every_manifest(path: Path, namespaces: set[str]) -> None:
    # research/ carries no namespace: its Application's destination gives it one, as -n does here.
    where = ["-n", research_namespace()] if path.parent.name == "research" else []
    out = must(kubectl(*DRY_RUN, *where, "-f", path))
    applied = [line for line in out.splitlines() if line.endswith("serverside-applied (server dry run)")]
    assert len(applied) == len(documents(path)), out


def _without_destination(app: dict[str, Any]) -> None:
    del app["spec"]["destination"]


def _prune_as_text(app: dict[str, Any]) -> None:
    app["spec"]["syncPolicy"]["automated"]["prune"] = "yes"


@pytest.mark.parametrize(
    ("breaks", "field"),
    [(_without_destination, "spec.destination"), (_prune_as_text, "spec.syncPolicy.automated.prune")],
    ids=["no-destination", "prune-as-text"],
)
def test_argo_cds_schema_refuses_a_broken_application(breaks: Any, field: str, namespaces: set[str]) -> None:
    # The check above is real: the Application CRD's schema judges the manifests.
    app = documents(GITOPS / "apps" / "operator.yaml")[0]
    breaks(app)
    result = kubectl(*DRY_RUN, "-f", "-", stdin=yaml.safe_dump(app))
    assert result.returncode != 0 and field in result.stderr, result.stderr


def helm_applications() -> list[dict[str, Any]]:
    return [
        d
        for p in sorted((GITOPS / "apps").glob("*.yaml"))
        for d in documents(p)
        if d["kind"] == "Application" and "helm" in d["spec"]["source"]
    ]


def prometheus_operator_crds() -> Path:
    out = must(run(REPO_ROOT / "hack" / "build-k8s.sh", "--print-prometheus-operator-crd-dir"))
    folder = Path(out.strip())
    if not (folder / ".complete").exists():
        pytest.fail(f"{folder} is missing: run `hack/build-k8s.sh monitoring`", pytrace=False)
    return folder


@pytest.mark.parametrize("app", helm_applications(), ids=lambda a: a["metadata"]["name"])
def test_the_charts_render_with_the_applications_values_and_are_accepted(
    app: dict[str, Any], namespaces: set[str], tmp_path: Path
) -> None:
    source, dest = app["spec"]["source"], app["spec"]["destination"]
    helm = source["helm"]
    if source["path"] == "manifests/monitoring":
        # The monitoring chart's objects are the Prometheus operator's kinds.
        install_crds(sorted(prometheus_operator_crds().glob("*.yaml")))
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(helm.get("valuesObject") or {}))
    home = tmp_path / "helm"
    env_args = [f"--repository-cache={home / 'cache'}", f"--repository-config={home / 'repositories.yaml'}"]
    args = ["template", helm.get("releaseName") or app["metadata"]["name"], REPO_ROOT / source["path"]]
    args += ["--namespace", dest["namespace"], "-f", values, *env_args]
    if helm.get("skipCrds"):
        args.append("--skip-crds")
    rendered = must(run(bin_dir() / "helm", *args))  # values.schema.json judges the values
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert docs
    if helm.get("skipCrds"):
        assert not [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    # Argo CD puts a namespaced object without a namespace into the destination's; some templates name
    # theirs (the operator's Roles in the watched namespaces).
    cluster_kinds = cluster_scoped_kinds()
    for doc in docs:
        if doc["kind"] not in cluster_kinds:
            doc["metadata"].setdefault("namespace", dest["namespace"])
    out = must(kubectl(*DRY_RUN, "-f", "-", stdin=yaml.safe_dump_all(docs)))
    assert out.count("serverside-applied (server dry run)") == len(docs), out


def cluster_scoped_kinds() -> set[str]:
    """Kinds the API server serves without a namespace (the KIND column is the last one)."""
    out = must(kubectl("api-resources", "--namespaced=false", "--no-headers"))
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_the_documented_argocd_cm_patch_installs_the_health_checks(
    namespaces: set[str], core: client.CoreV1Api
) -> None:
    # docs/gitops.md: `kubectl -n argocd patch configmap argocd-cm --patch-file argocd/argocd-cm.yaml`
    # on the ConfigMap an Argo CD install has (here an empty one with a setting of its own).
    name = "argocd-cm"
    core.create_namespaced_config_map(
        "argocd", {"metadata": {"name": name}, "data": {"timeout.reconciliation": "180s"}}
    )
    try:
        must(
            kubectl(
                "-n", "argocd", "patch", "configmap", name, "--patch-file", gitops.ARGOCD_DIR / gitops.SNIPPET
            )
        )
        data = core.read_namespaced_config_map(name, "argocd").data
        assert data.pop("timeout.reconciliation") == "180s"  # merged, not replaced
        assert data == {gitops.configmap_key(kind): gitops.health_script(kind) for kind in gitops.KINDS}
    finally:
        core.delete_namespaced_config_map(name, "argocd")
