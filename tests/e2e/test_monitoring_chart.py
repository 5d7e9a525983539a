"""The monitoring chart (manifests/monitoring) on a real API server with the Prometheus operator's
CRDs (monitoring.coreos.com, from the Go module pinned in hack/versions.env): installs in mode (a),
every object passes the CRDs' schemas, carries the `release` label, and upgrades with changed values.

A real Prometheus (hack/build-k8s.sh monitoring) scrapes a running operator with the chart's rules,
and killing the operator drives KubequantOperatorDown to firing, read back from its API; it scrapes a
running trading pod program too, whose halt through the signal API drives KubequantSessionHalted to
firing and whose resume resolves it. The rules' other cases and the routing are tested with promtool
and amtool in tests/unit/monitoring.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubectl import REPO_ROOT, bin_dir, helm_env, wait_established
from kubernetes import client
from operator_process import chart_operator, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CHART = REPO_ROOT / "manifests" / "monitoring"
GROUP, VERSION = "monitoring.coreos.com", "v1"


def prometheus_operator_crds() -> Path:
    out = subprocess.run(
        [str(REPO_ROOT / "hack" / "build-k8s.sh"), "--print-prometheus-operator-crd-dir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = Path(out)
    if not (path / ".complete").exists():
        pytest.fail(f"{path} is missing: run `hack/build-k8s.sh monitoring`", pytrace=False)
    return path


def run(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=180)
    if result.returncode != 0:
        pytest.fail(
            f"`{' '.join(map(str, args))}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, kube_config: client.Configuration) -> dict[str, str]:
    home = tmp_path_factory.mktemp("helm-home")
    return helm_env(home)


@pytest.fixture(scope="module")
def crds_installed(env: dict[str, str]) -> None:
    folder = prometheus_operator_crds()
    kubectl = bin_dir() / "kubectl"
    files = sorted(folder.glob("*.yaml"))
    run(
        kubectl,
        "apply",
        "--server-side",
        "--force-conflicts",
        *(a for f in files for a in ("-f", f)),
        env=env,
    )

    # (PyYAML cannot load these CRDs: their schemas hold a bare `=` enum value, YAML 1.1's value tag.)
    def kubectl_(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(kubectl), *args], capture_output=True, text=True, env=env, timeout=180)

    wait_established(kubectl_, *(a for f in files for a in ("-f", str(f))))


@pytest.fixture(scope="module")
def release(env: dict[str, str], crds_installed: None, core: client.CoreV1Api) -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:6]
    namespace, name = f"e2e-monitoring-{suffix}", f"kqmon-{suffix}"
    core.create_namespace({"metadata": {"name": namespace, "labels": {"kubequant.io/e2e": "true"}}})
    helm = bin_dir() / "helm"
    try:
        out = run(
            helm, "install", name, CHART, "-n", namespace, "--set", "release=prom-e2e", "--wait", env=env
        )
        assert "STATUS: deployed" in out.stdout
        yield namespace, name
    finally:
        subprocess.run(
            [str(helm), "uninstall", name, "-n", namespace, "--ignore-not-found"],
            env=env,
            capture_output=True,
        )
        core.delete_namespace(namespace, propagation_policy="Background")


def items(
    custom: client.CustomObjectsApi, namespace: str, plural: str, version: str = VERSION
) -> list[dict[str, Any]]:
    return custom.list_namespaced_custom_object(GROUP, version, namespace, plural)["items"]  # type: ignore[no-any-return]


def test_mode_a_objects_are_admitted_with_the_release_label(
    release: tuple[str, str], custom: client.CustomObjectsApi, core: client.CoreV1Api
) -> None:
    namespace, _ = release
    monitors = items(custom, namespace, "servicemonitors") + items(custom, namespace, "podmonitors")
    rules = items(custom, namespace, "prometheusrules")
    amcs = items(custom, namespace, "alertmanagerconfigs", "v1alpha1")
    dashboards = core.list_namespaced_config_map(namespace, label_selector="grafana_dashboard=1").items
    assert len(monitors) == 3 and len(rules) == 1 and len(amcs) == 1 and len(dashboards) == 4
    for obj in [*monitors, *rules, *amcs]:
        assert obj["metadata"]["labels"]["release"] == "prom-e2e"
    # What the server stored is what the chart rendered (no field pruned by the CRD's schema).
    alerts = [r for g in rules[0]["spec"]["groups"] for r in g["rules"]]
    assert len(alerts) == 20 and all(r["annotations"]["runbook_url"] for r in alerts)
    receivers = {r["name"]: r for r in amcs[0]["spec"]["receivers"]}
    assert receivers["kubequant-team"]["wechatConfigs"][0]["apiSecret"]["name"] == "kubequant-alerting-wechat"
    assert amcs[0]["spec"]["inhibitRules"][0]["equal"] == ["alert_family", "namespace", "session", "name"]


def test_upgrade_changes_thresholds_and_rejects_a_bad_object(
    release: tuple[str, str], env: dict[str, str], custom: client.CustomObjectsApi
) -> None:
    namespace, name = release
    helm = bin_dir() / "helm"
    run(
        helm,
        "upgrade",
        name,
        CHART,
        "-n",
        namespace,
        "--reuse-values",
        "--set-json",
        "rules.minIC=0.03",
        env=env,
    )
    (rule,) = items(custom, namespace, "prometheusrules")
    (ic,) = [r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("alert") == "KubequantModelICLow"]
    assert "< 0.03" in ic["expr"]
    # The CRD's schema is enforced: an AlertmanagerConfig receiver with an unknown matchType is refused.
    bad = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "AlertmanagerConfig",
        "metadata": {"name": "bad"},
        "spec": {
            "route": {"receiver": "x", "matchers": [{"name": "a", "value": "b", "matchType": "~~"}]},
            "receivers": [{"name": "x"}],
        },
    }
    with pytest.raises(client.exceptions.ApiException) as err:
        custom.create_namespaced_custom_object(GROUP, "v1alpha1", namespace, "alertmanagerconfigs", bad)
    assert err.value.status == 422


# --------------------------------------------------------------------------- a real Prometheus


def prometheus_binary() -> Path:
    path = bin_dir() / "prometheus"
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run `hack/build-k8s.sh monitoring`", pytrace=False)
    return path


def api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


def chart_rules(tmp_path: Path, *values: str) -> Path:
    """The chart's rule groups rendered by helm with ``values`` (e.g. shorter ``for`` durations), as a
    Prometheus rule file."""
    sets = [a for v in values for a in ("--set", v)]
    rendered = subprocess.run(
        [
            str(bin_dir() / "helm"),
            "template",
            "kqmon",
            str(CHART),
            *sets,
            "--show-only",
            "templates/prometheusrule.yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(yaml.safe_load(rendered)["spec"]))
    return path


@contextlib.contextmanager
def running_prometheus(tmp_path: Path, rules: Path, scrape_configs: list[dict[str, Any]]) -> Iterator[int]:
    """A real Prometheus evaluating ``rules`` every second over ``scrape_configs``; yields its port."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": scrape_configs,
    }
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp_path / "prometheus.log").open("w") as log:
        proc = subprocess.Popen(
            [
                str(prometheus_binary()),
                f"--config.file={tmp_path / 'prometheus.yaml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(20)


def alert_named(port: int, name: str, state: str | None = None) -> dict[str, Any] | None:
    """The alert ``name`` Prometheus holds (in ``state``: pending or firing), or None."""
    try:  # Prometheus may not listen yet
        alerts = api(port, "/api/v1/alerts")["alerts"]
    except urllib.error.URLError:
        return None
    return next(
        (a for a in alerts if a["labels"]["alertname"] == name and (state is None or a["state"] == state)),
        None,
    )


def up(port: int, job: str) -> list[Any] | None:
    """The targets of ``job`` Prometheus has scraped successfully, or None."""
    try:  # Prometheus may not listen yet
        result = api(port, "/api/v1/query", query=f'up{{job="{job}"}}')["result"]
    except urllib.error.URLError:
        return None
    return [r for r in result if r["value"][1] == "1"] or None


def test_real_prometheus_scrapes_the_operator_and_fires_operator_down(
    core: client.CoreV1Api,
    kube_config: client.Configuration,
    custom: client.CustomObjectsApi,
    wait_until: Any,
    tmp_path: Path,
) -> None:
    """Prometheus (built from the module proxy) scrapes a running operator with the chart's rules;
    killing the operator drives KubequantOperatorDown to firing, read back from Prometheus's API."""
    namespace = f"e2e-mon-op-{uuid.uuid4().hex[:6]}"
    rules = chart_rules(tmp_path, "rules.operatorDownFor=3s")
    with chart_operator(core, kube_config, namespace, tmp_path) as operator:
        scrape = {
            # As the chart's ServiceMonitor: job kubequant-operator, the objects' namespaces honoured.
            "job_name": "kubequant-operator",
            "honor_labels": True,
            "static_configs": [
                {"targets": [f"127.0.0.1:{operator.metrics_port}"], "labels": {"namespace": namespace}}
            ],
        }
        with running_prometheus(tmp_path, rules, [scrape]) as port:
            wait_until(lambda: up(port, "kubequant-operator"), 60, "Prometheus to scrape the operator")
            # A Backtest makes the operator export a per-object series, with the object's namespace.
            custom.create_namespaced_custom_object(
                "kubequant.io",
                "v1alpha1",
                namespace,
                "backtests",
                {
                    "apiVersion": "kubequant.io/v1alpha1",
                    "kind": "Backtest",
                    "metadata": {"name": "scraped"},
                    "spec": {
                        "period": {"start": "2022-01-04", "end": "2022-06-30"},
                        "signal": {"file": {"path": "/s.csv"}},
                    },
                },
            )
            phase = f'kubequant_object_phase{{kind="Backtest", name="scraped", namespace="{namespace}"}}'
            wait_until(
                lambda: api(port, "/api/v1/query", query=phase)["result"] or None,
                60,
                "the Backtest's phase series",
            )
            assert alert_named(port, "KubequantOperatorDown") is None
            operator.kill()
            alert = wait_until(
                lambda: alert_named(port, "KubequantOperatorDown", "firing"),
                60,
                "KubequantOperatorDown to fire",
            )
            assert alert["labels"]["severity"] == "critical" and alert["labels"]["namespace"] == namespace
            assert f"in namespace {namespace} has answered" in alert["annotations"]["description"]
            assert alert["annotations"]["runbook_url"].endswith("docs/runbook.md#kubequantoperatordown")


TRADING_SESSION = """\
apiVersion: kubequant.io/v1alpha1
kind: LiveTradingSession
metadata: {{name: {name}}}
spec:
  account: paper-{name}
  riskPolicyRef: {{name: {name}}}
  data: {{path: {bundle}}}
  startingCash: 1000000
  replay: {{period: "2020-01-01..2020-06-30"}}
---
apiVersion: kubequant.io/v1alpha1
kind: RiskPolicy
metadata: {{name: {name}}}
spec:
  limits: {{maxOrderQuantity: 20000}}
"""


@contextlib.contextmanager
def trading_pod_program(tmp_path: Path, name: str) -> Iterator[tuple[str, str]]:
    """The trading pod's program (`kubequant workload trading`) on a paper session, serving its signal API
    and metrics on loopback; yields its URL and bearer token once it is ready."""
    from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

    bundle = tmp_path / "bundle"
    write_sample_bundle(bundle, SampleSpec(instruments=6, start="2020-01-01", end="2020-12-31", seed=5))
    session = tmp_path / "session.yaml"
    session.write_text(TRADING_SESSION.format(name=name, bundle=bundle))
    token = uuid.uuid4().hex
    (tmp_path / "token").write_text(token)
    port = free_port()
    kubequant = str(Path(sys.executable).with_name("kubequant"))
    with (tmp_path / "trading.log").open("w") as log:
        proc = subprocess.Popen(
            [
                kubequant,
                "workload",
                "trading",
                "--session",
                str(session),
                "--state-dir",
                str(tmp_path / "volume"),
                "--broker-record",
                str(tmp_path / "broker.sqlite"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--token-file",
                str(tmp_path / "token"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "trading.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "trading.log").read_text()[-3000:]
            time.sleep(1)
        yield url, token
    finally:
        proc.terminate()
        proc.wait(30)


def set_trading_state(url: str, token: str, state: str) -> None:
    request = urllib.request.Request(
        f"{url}/v1/trading-state",
        data=json.dumps({"state": state, "reason": "e2e: drive the alert"}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200 and json.loads(resp.read())["state"] == state


def test_real_prometheus_fires_session_halted_for_a_halted_trading_pod_and_resolves_it(
    wait_until: Any, tmp_path: Path
) -> None:
    """The chart's trading alerts over a real trading pod program: Prometheus scrapes its /metrics as the
    chart's PodMonitor does (job kubequant-trading, the session's namespace and name as labels); an
    operator's halt through the signal API drives KubequantSessionHalted to firing, and resuming
    resolves it."""
    namespace, session = "e2e-trading", "halt-alert"
    rules = chart_rules(tmp_path)
    with trading_pod_program(tmp_path, session) as (url, token):
        scrape = {
            "job_name": "kubequant-trading",
            "static_configs": [
                {
                    "targets": [url.removeprefix("http://")],
                    "labels": {"namespace": namespace, "session": session},
                }
            ],
        }
        with running_prometheus(tmp_path, rules, [scrape]) as port:
            wait_until(lambda: up(port, "kubequant-trading"), 60, "Prometheus to scrape the trading pod")
            active = 'kubequant_trading_state{job="kubequant-trading", state="ACTIVE"} == 1'
            wait_until(lambda: api(port, "/api/v1/query", query=active)["result"] or None, 60, "ACTIVE")
            assert alert_named(port, "KubequantSessionHalted") is None

            set_trading_state(url, token, "HALTED")
            alert = wait_until(
                lambda: alert_named(port, "KubequantSessionHalted", "firing"), 60, "KubequantSessionHalted"
            )
            assert alert["labels"]["severity"] == "critical"
            assert (alert["labels"]["namespace"], alert["labels"]["session"]) == (namespace, session)
            assert f"{namespace}/{session} is HALTED" in alert["annotations"]["description"]
            assert alert["annotations"]["runbook_url"].endswith("docs/runbook.md#kubequantsessionhalted")
            assert alert_named(port, "KubequantBrokerDisconnected") is None  # the paper venue stayed up

            set_trading_state(url, token, "ACTIVE")
            wait_until(
                lambda: alert_named(port, "KubequantSessionHalted") is None or None,
                60,
                "KubequantSessionHalted to resolve",
            )
