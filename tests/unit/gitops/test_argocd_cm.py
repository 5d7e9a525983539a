"""argocd/'s generated files stay what their sources make: the argocd-cm snippet carries the .lua files
byte for byte, and the test data is what the operator's status functions write today."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from argocd_lua import load_object, run_health

from kubequant import gitops

pytestmark = pytest.mark.unit


def test_generated_files_are_up_to_date() -> None:
    drifted = gitops.stale()
    assert not drifted, f"stale: {drifted}; run `python -m kubequant.gitops`"


def test_the_snippet_holds_every_health_script_unchanged() -> None:
    cm = yaml.safe_load((gitops.ARGOCD_DIR / gitops.SNIPPET).read_text())
    assert (cm["apiVersion"], cm["kind"], cm["metadata"]["name"]) == ("v1", "ConfigMap", "argocd-cm")
    assert set(cm["data"]) == {f"resource.customizations.health.kubequant.io_{k}" for k in gitops.KINDS}
    for kind in gitops.KINDS:
        assert cm["data"][gitops.configmap_key(kind)] == gitops.health_script(kind), kind


def test_the_snippets_scripts_give_the_same_health_as_the_files() -> None:
    cm = yaml.safe_load((gitops.ARGOCD_DIR / gitops.SNIPPET).read_text())
    folder = gitops.ARGOCD_DIR / gitops.CUSTOMIZATIONS
    for kind in gitops.KINDS:
        for path in sorted((folder / kind / "testdata").glob("*.yaml")):
            obj = load_object(path)
            assert run_health(cm["data"][gitops.configmap_key(kind)], obj) == run_health(
                gitops.health_script(kind), obj
            )


@pytest.fixture
def argocd_copy(tmp_path: Path) -> Path:
    root = tmp_path / "argocd"
    shutil.copytree(gitops.ARGOCD_DIR, root)
    return root


def test_check_names_an_edited_script_and_a_stray_file(
    argocd_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gitops.main(["--check", "--root", str(argocd_copy)]) == 0
    lua = argocd_copy / gitops.CUSTOMIZATIONS / "RiskPolicy" / "health.lua"
    lua.write_text(lua.read_text().replace('"Accepted"', '"Accepted by the operator"'))
    stray = argocd_copy / gitops.CUSTOMIZATIONS / "Backtest" / "testdata" / "hand_edited.yaml"
    stray.write_text("kind: Backtest\n")
    assert gitops.main(["--check", "--root", str(argocd_copy)]) == 1
    err = capsys.readouterr().err
    assert "argocd-cm.yaml" in err and "hand_edited.yaml" in err
    assert gitops.main(["--root", str(argocd_copy)]) == 0  # regenerates the snippet
    stray.unlink()
    assert gitops.main(["--check", "--root", str(argocd_copy)]) == 0
    cm = yaml.safe_load((argocd_copy / gitops.SNIPPET).read_text())
    assert "Accepted by the operator" in cm["data"][gitops.configmap_key("RiskPolicy")]


def test_check_notices_a_changed_operator_status(argocd_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A reason renamed in the operator's status changes the generated test data: --check fails.
    from kubequant.operator.status import backtest

    real = backtest.backtest_status

    def renamed(*args, **kwargs):  # type: ignore[no-untyped-def]
        status = real(*args, **kwargs)
        for cond in status["conditions"]:
            if cond["reason"] == "BacktestSucceeded":
                cond["reason"] = "Done"
        return status

    monkeypatch.setattr(backtest, "backtest_status", renamed)
    drifted = gitops.stale(argocd_copy)
    assert drifted == [
        str(argocd_copy / gitops.CUSTOMIZATIONS / "Backtest" / "testdata" / "healthy_succeeded.yaml")
    ]
