"""Monitoring mode (b), manifests/monitoring/standalone: one `helm install` of kubequant-monitoring with
kube-prometheus-stack, on a real API server.

kube-prometheus-stack and its dependencies come from the Go module proxy at the versions of
hack/versions.env (hack/fetch-monitoring-charts.sh); the charts/ folder is made as `helm dependency
build` makes it (kubequant-monitoring packaged by `helm package`, kube-prometheus-stack unpacked).
The install brings the Prometheus operator's CRDs, Prometheus, Alertmanager and Grafana, and the
wiring is checked where it is decided, on the objects the API server stored: the Prometheus selects
kubequant's monitors and rules (its label selectors, run by the API server), the Alertmanager reads
kubequant's config and mounts every receiver Secret it names, and Grafana's sidecar selects the
dashboards. kwok runs no container, so no Prometheus process is started by the install itself; the
rules and routing are run by the real Prometheus, promtool and amtool in test_monitoring_chart.py and
tests/unit/monitoring.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubectl import REPO_ROOT, bin_dir, helm_env, wait_established
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CHART = REPO_ROOT / "manifests" / "monitoring"
STANDALONE = CHART / "standalone"
GROUP = "monitoring.coreos.com"
RECEIVER_SECRETS = [
    "kubequant-alerting-pager",
    "kubequant-alerting-email",
    "kubequant-alerting-wechat",
    "kubequant-alerting-dingtalk",
]


def run(*args: str | Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=300)
    if check and result.returncode != 0:
        pytest.fail(
            f"`{' '.join(map(str, args))}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, kube_config: client.Configuration) -> dict[str, str]:
    home = tmp_path_factory.mktemp("helm-home")
    return helm_env(home)


def kube_prometheus_stack(env: dict[str, str]) -> Path:
    script = REPO_ROOT / "hack" / "fetch-monitoring-charts.sh"
    run(script, env=env)  # once: a cache outside the repo
    folder = Path(run(script, "--print-dir", env=env).stdout.strip())
    assert (folder / ".complete").exists(), f"{folder} is incomplete: run {script}"
    return folder / "kube-prometheus-stack"


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    """The standalone chart with its dependencies in charts/, as `helm dependency build` leaves it."""
    folder = tmp_path_factory.mktemp("standalone") / "kubequant-monitoring-standalone"
    shutil.copytree(STANDALONE, folder)
    charts = folder / "charts"
    charts.mkdir()
    run(bin_dir() / "helm", "package", CHART, "-d", charts, env=env)  # file://.. as a packaged chart
    shutil.copytree(kube_prometheus_stack(env), charts / "kube-prometheus-stack")
    return folder


def test_the_standalone_chart_lints_strict_with_its_dependencies(chart: Path, env: dict[str, str]) -> None:
    out = run(bin_dir() / "helm", "lint", "--strict", chart, env=env)
    assert "0 chart(s) failed" in out.stdout
    # The checks template renders nothing under the defaults, whatever the release is named (lint's
    # release is "test-release").
    assert "[ERROR]" not in out.stdout and "Fail:" not in out.stdout, out.stdout


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("kubequant-monitoring.release=other", ["kubequant-monitoring.release", '"other"', "release=kqsa"]),
        (
            "kube-prometheus-stack.alertmanager.alertmanagerSpec.configSecret=elsewhere",
            ["alertmanagerSpec.configSecret", '"elsewhere"', '"kubequant-alertmanager"'],
        ),
        (
            "kubequant-monitoring.alertmanager.secretName=",
            ["kubequant-monitoring.alertmanager.secretName is empty"],
        ),
    ],
)
def test_values_that_would_leave_the_charts_unwired_are_refused_with_the_fix(
    chart: Path, env: dict[str, str], value: str, names: list[str]
) -> None:
    out = run(bin_dir() / "helm", "template", "kqsa", chart, "--set", value, env=env, check=False)
    assert out.returncode != 0
    for name in names:
        assert name in out.stderr, out.stderr
    assert "Fix:" in out.stderr


def test_alertmanager_off_needs_no_config_secret(chart: Path, env: dict[str, str]) -> None:
    out = run(
        bin_dir() / "helm",
        "template",
        "kqsa",
        chart,
        "--set",
        "kube-prometheus-stack.alertmanager.enabled=false",
        "--set",
        "kube-prometheus-stack.alertmanager.alertmanagerSpec.configSecret=unused",
        env=env,
    )
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert "Alertmanager" not in kinds and "Prometheus" in kinds


@pytest.fixture(scope="module")
def installed(
    chart: Path, env: dict[str, str], core: client.CoreV1Api, api_client: client.ApiClient
) -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:6]
    namespace, release = f"e2e-monitoring-sa-{suffix}", f"kqsa-{suffix}"
    core.create_namespace({"metadata": {"name": namespace, "labels": {"kubequant.io/e2e": "true"}}})
    kubectl = bin_dir() / "kubectl"
    crds = sorted((chart / "charts" / "kube-prometheus-stack" / "charts" / "crds" / "crds").glob("*.yaml"))
    if crd_exists(api_client, "prometheuses"):
        # Another module installed (older) Prometheus operator CRDs, which Helm would leave as they are:
        # upgrade them the way kube-prometheus-stack's docs say to (server-side apply of its crds/).
        run(
            kubectl,
            "apply",
            "--server-side",
            "--force-conflicts",
            *(a for f in crds for a in ("-f", f)),
            env=env,
        )
    try:
        out = run(
            bin_dir() / "helm",
            "install",
            release,
            chart,
            "-n",
            namespace,
            "--wait",
            "--timeout",
            "5m",
            env=env,
        )
        assert "STATUS: deployed" in out.stdout

        def kubectl_(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
            return run(kubectl, *args, env=env, check=check)

        wait_established(kubectl_, *(a for f in crds for a in ("-f", str(f))))
        yield namespace, release
    finally:
        subprocess.run(
            [str(bin_dir() / "helm"), "uninstall", release, "-n", namespace, "--ignore-not-found", "--wait"],
            env=env,
            capture_output=True,
            timeout=300,
        )
        core.delete_namespace(namespace, propagation_policy="Background")


def crd_exists(api_client: client.ApiClient, plural: str) -> bool:
    try:
        client.ApiextensionsV1Api(api_client).read_custom_resource_definition(f"{plural}.{GROUP}")
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def one(custom: client.CustomObjectsApi, namespace: str, plural: str) -> dict[str, Any]:
    (obj,) = custom.list_namespaced_custom_object(GROUP, "v1", namespace, plural)["items"]
    return obj  # type: ignore[no-any-return]


def selector(spec: dict[str, Any]) -> str:
    """A LabelSelector as the label_selector query string the API server evaluates."""
    terms = [f"{k}={v}" for k, v in (spec.get("matchLabels") or {}).items()]
    for expr in spec.get("matchExpressions") or []:
        op, values = expr["operator"], ",".join(expr.get("values") or [])
        terms.append(
            {"In": f"{expr['key']} in ({values})", "NotIn": f"{expr['key']} notin ({values})"}.get(
                op, expr["key"] if op == "Exists" else f"!{expr['key']}"
            )
        )
    return ",".join(terms)


def test_one_install_brings_prometheus_alertmanager_grafana_and_the_operator(
    installed: tuple[str, str], custom: client.CustomObjectsApi, api_client: client.ApiClient
) -> None:
    namespace, release = installed
    for plural in ("prometheuses", "alertmanagers", "servicemonitors", "podmonitors", "prometheusrules"):
        assert crd_exists(api_client, plural), plural
    assert one(custom, namespace, "prometheuses")["metadata"]["name"].startswith(release)
    assert one(custom, namespace, "alertmanagers")["metadata"]["name"].startswith(release)
    deployments = client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items
    names = {d.metadata.labels.get("app.kubernetes.io/name") for d in deployments}
    assert {"grafana", "kube-prometheus-stack-prometheus-operator", "kube-state-metrics"} <= names
    assert all((d.status.ready_replicas or 0) == d.spec.replicas for d in deployments)


def test_the_prometheus_selects_kubequant_s_monitors_and_rules(
    installed: tuple[str, str], custom: client.CustomObjectsApi
) -> None:
    namespace, release = installed
    spec = one(custom, namespace, "prometheuses")["spec"]
    found: dict[str, set[str]] = {}
    for kind, plural in [
        ("serviceMonitor", "servicemonitors"),
        ("podMonitor", "podmonitors"),
        ("rule", "prometheusrules"),
    ]:
        # {} selects every namespace: kubequant's objects may live beside the operator and sessions.
        assert spec[f"{kind}NamespaceSelector"] == {}, kind
        chosen = custom.list_cluster_custom_object(
            GROUP, "v1", plural, label_selector=selector(spec[f"{kind}Selector"])
        )["items"]
        found[plural] = {
            o["metadata"]["name"]
            for o in chosen
            if o["metadata"]["labels"].get("app.kubernetes.io/name") == "kubequant-monitoring"
        }
        assert all(
            o["metadata"]["labels"]["release"] == release
            for o in chosen
            if o["metadata"]["namespace"] == namespace
        )
    assert len(found["servicemonitors"]) == 1, found  # the operator
    assert len(found["podmonitors"]) == 2, found  # trading pods, Ray head and workers
    (rule_name,) = found["prometheusrules"]
    rule = custom.get_namespaced_custom_object(GROUP, "v1", namespace, "prometheusrules", rule_name)
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert {"KubequantOperatorDown", "KubequantSessionHalted"} <= alerts


def test_the_alertmanager_reads_kubequant_s_config_and_mounts_every_receiver_secret(
    installed: tuple[str, str], custom: client.CustomObjectsApi, core: client.CoreV1Api
) -> None:
    namespace, _ = installed
    spec = one(custom, namespace, "alertmanagers")["spec"]
    secret = core.read_namespaced_secret(spec["configSecret"], namespace)
    config = yaml.safe_load(_decoded(secret, "alertmanager.yaml"))
    receivers = {r["name"] for r in config["receivers"]}
    assert {"kubequant-pager", "kubequant-team", "kubequant-null"} <= receivers
    assert spec["secrets"] == RECEIVER_SECRETS
    # Every credential is a file under a Secret the Alertmanager mounts (the operator mounts
    # spec.secrets at /etc/alertmanager/secrets/<name>/): none is missing, none is in the config.
    files = list(_file_values(config))
    assert files, "the config reads no credential from a file"
    for path in files:
        parts = Path(path).parts
        assert parts[:4] == ("/", "etc", "alertmanager", "secrets") and parts[4] in spec["secrets"], path


def test_grafana_s_sidecar_selects_the_dashboards(
    installed: tuple[str, str], api_client: client.ApiClient, core: client.CoreV1Api
) -> None:
    namespace, _ = installed
    (grafana,) = (
        client.AppsV1Api(api_client)
        .list_namespaced_deployment(namespace, label_selector="app.kubernetes.io/name=grafana")
        .items
    )
    (sidecar,) = [
        c
        for c in grafana.spec.template.spec.containers
        if {"name": "LABEL", "value": "grafana_dashboard"}
        in [{"name": e.name, "value": e.value} for e in c.env or []]
    ]
    env = {e.name: e.value for e in sidecar.env}
    assert env["NAMESPACE"] == "ALL"
    chosen = core.list_config_map_for_all_namespaces(
        label_selector=f"{env['LABEL']}={env['LABEL_VALUE']}"
    ).items
    ours = {
        c.metadata.name
        for c in chosen
        if c.metadata.namespace == namespace
        and c.metadata.labels.get("app.kubernetes.io/name") == "kubequant-monitoring"
    }
    assert len(ours) == 4, ours  # platform, research, trading, data quality
    for cm in chosen:
        if cm.metadata.name in ours:
            assert cm.metadata.annotations.get(env["FOLDER_ANNOTATION"]), cm.metadata.name


def _decoded(secret: client.V1Secret, key: str) -> str:
    import base64

    return base64.b64decode(secret.data[key]).decode()


def _file_values(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("_file") and isinstance(value, str):
                yield value
            else:
                yield from _file_values(value)
    elif isinstance(node, list):
        for item in node:
            yield from _file_values(item)
