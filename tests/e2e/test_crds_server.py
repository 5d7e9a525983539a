"""The generated CRDs on a real API server: they install, explain themselves, and reject every bad manifest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from kubectl import REPO_ROOT, kubectl

pytestmark = pytest.mark.e2e

BAD = sorted((REPO_ROOT / "tests" / "unit" / "bad_manifests").glob("*.yaml"))


@pytest.fixture(scope="module", autouse=True)
def crds_installed() -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"), check=True)
    for crd in ("backtests", "trainingjobs", "livetradingsessions", "riskpolicies"):
        kubectl("wait", "--for=condition=Established", f"crd/{crd}.kubequant.io", "--timeout=60s", check=True)


def test_explain_shows_the_model_descriptions() -> None:
    out = kubectl("explain", "backtest.spec.exchange", check=True).stdout
    assert "Costs and trading rules" in out
    assert "openCost" in out and "Cost rate of buying" in out
    out = kubectl("explain", "riskpolicy.spec.limits.maxConcentration", check=True).stdout
    assert "fraction of equity" in out


def test_short_names_and_category() -> None:
    out = kubectl("api-resources", "--api-group=kubequant.io", "-o", "wide", check=True).stdout
    for short in ("bt", "tj", "lts", "rp"):
        assert re.search(rf"\b{short}\b", out), short
    assert "kubequant" in out


def _expectation(path: Path) -> tuple[str, str]:
    """The field a bad manifest breaks, and who refuses it: yes (the CRDs), no, policy or operator."""
    first = path.read_text().splitlines()[0]
    parts = [p.strip() for p in first.removeprefix("# expect:").split("|")]
    return parts[0], parts[2].removeprefix("server: ") if len(parts) > 2 else "yes"


def _server_path(message: str) -> str:
    """The API server writes map keys in brackets; ours are dotted."""
    return re.sub(r"\[([A-Za-z_][^\]]*)\]", r".\1", message)


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_api_server_rejects_bad_manifest(path: Path, make_namespace) -> None:  # type: ignore[no-untyped-def]
    field, checker = _expectation(path)
    ns = "default"
    proc = kubectl("create", "--dry-run=server", "-n", ns, "-f", str(path))
    if checker in ("policy", "operator"):
        # Rules that depend on the cluster's policy (module allow-list) or that no CRD schema can
        # express (kwargs depth, total size): the CRDs accept these, the chart's
        # ValidatingAdmissionPolicy (test_admission_policy.py) or the operator refuses them.
        assert proc.returncode == 0, (
            f"{path.name} is marked server: {checker}, yet the CRDs refuse it:\n{proc.stderr}"
        )
        return
    assert proc.returncode != 0, f"the API server accepted {path.name}:\n{proc.stdout}"
    if checker == "yes":
        assert field in _server_path(proc.stderr), f"{path.name}: expected {field!r} in:\n{proc.stderr}"


def test_valid_examples_are_accepted() -> None:
    for example in sorted((REPO_ROOT / "examples").glob("*.yaml")):
        proc = kubectl("create", "--dry-run=server", "-n", "default", "-f", str(example))
        assert proc.returncode == 0, f"{example.name}: {proc.stderr}"


def test_backtest_spec_is_immutable_except_suspend(namespace: str) -> None:
    kubectl("create", "-n", namespace, "-f", str(REPO_ROOT / "examples" / "backtest.yaml"), check=True)
    name = "bt/lgb-alpha158-topk"
    proc = kubectl(
        "patch", "-n", namespace, name, "--type=merge", "-p", '{"spec":{"period":{"end":"2022-12-28"}}}'
    )
    assert proc.returncode != 0 and "spec.period is immutable" in proc.stderr, proc.stderr
    kubectl("patch", "-n", namespace, name, "--type=merge", "-p", '{"spec":{"suspend":true}}', check=True)
