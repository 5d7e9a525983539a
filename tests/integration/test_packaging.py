"""Packaging: the folders ``operator/`` and ``workloads/`` ship as ``kubequant.operator`` / ``kubequant.workloads``.

``kubequant`` and ``kubequant.operator`` are namespace packages on purpose (see setup.py): a
top-level ``operator`` package would shadow the standard library. These tests build the wheel,
install it into a fresh virtual environment and use it from outside the checkout, so nothing of
the editable install can stand in for it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO_ROOT = Path(__file__).resolve().parents[2]
MAPPED = {"operator": "kubequant/operator", "workloads": "kubequant/workloads"}
STDLIB_OPERATOR = Path(sysconfig.get_paths()["stdlib"]) / "operator.py"


def run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command with a clean Python environment; fail with its output if it fails."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    clean.update(PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1", **env)
    proc = subprocess.run(cmd, cwd=cwd, env=clean, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def source_modules(folder: str) -> list[str]:
    return sorted(
        p.relative_to(REPO_ROOT / folder).as_posix()
        for p in (REPO_ROOT / folder).rglob("*.py")
        if "__pycache__" not in p.parts
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built (without isolation, from the dev venv's setuptools) from a copy of the checkout."""
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "*.pyc")
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    for folder in ("kubequant", "operator", "workloads"):
        shutil.copytree(REPO_ROOT / folder, src / folder, ignore=ignore)
    out = root / "dist"
    run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)], cwd=root
    )
    (built,) = out.glob("kubequant-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv holding only the wheel; the dev venv's site-packages are visible for the dependencies.

    The dev site-packages come in through a .pth line, and .pth files inside a directory added that
    way are not processed, so the dev venv's editable finder stays inactive.
    """
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv.parent)
    python = venv / "bin" / "python"
    purelib = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv.parent
    )
    site = Path(purelib.stdout.strip())
    (site / "kubequant-dev-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        [
            str(python),
            *("-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed"),
            *("--disable-pip-version-check", "--no-warn-script-location", str(wheel)),
        ],
        cwd=venv.parent,
    )
    return venv


def test_wheel_maps_the_folders_into_kubequant(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("kubequant/operator/") for n in names), names
    assert any(n.startswith("kubequant/workloads/") for n in names), names
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"kubequant", wheel.name.split("-py3")[0] + ".dist-info"}, top
    assert not any(n.startswith(("operator/", "workloads/", "tests/")) for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    # Namespace packages by design: no __init__.py that would make them regular packages.
    assert "kubequant/__init__.py" not in names and "kubequant/operator/__init__.py" not in names
    assert "kubequant/py.typed" in names and "kubequant/api/__init__.py" in names
    assert "kubequant/operator/main.py" in names and "kubequant/operator/builders/backtest.py" in names
    for folder, package in MAPPED.items():
        missing = [m for m in source_modules(folder) if f"{package}/{m}" not in names]
        assert not missing, f"{folder}/ modules not shipped as {package}/: {missing}"


def test_wheel_installs_and_runs_outside_the_checkout(fresh_venv: Path, tmp_path: Path) -> None:
    bin_dir = fresh_venv / "bin"
    version = run([str(bin_dir / "kubequant"), "--version"], cwd=tmp_path)
    assert version.stdout.strip() == "kubequant, version 0.1.0"

    probe = (
        "import json, sys, operator, kubequant, kubequant.api, kubequant.crdgen, kubequant.operator, "
        "kubequant.workloads, kubequant.operator.config as top, "
        "kubequant.operator.builders.backtest as sub\n"
        "print(json.dumps({'operator': operator.__file__, 'kubequant': list(kubequant.__path__),"
        " 'api': kubequant.api.__file__, 'crdgen': kubequant.crdgen.__file__,"
        " 'kq_operator': list(kubequant.operator.__path__), 'workloads': kubequant.workloads.__file__,"
        " 'probes': [top.__file__, sub.__file__], 'meta_path': [repr(f) for f in sys.meta_path]}))"
    )
    found = json.loads(run([str(bin_dir / "python"), "-c", probe], cwd=tmp_path).stdout)

    assert Path(found["operator"]) == STDLIB_OPERATOR
    assert [
        Path(p).relative_to(Path(p).parents[2] if "builders" in p else Path(p).parents[1]).as_posix()
        for p in found["probes"]
    ] == [
        "operator/config.py",
        "operator/builders/backtest.py",
    ]
    site = str(fresh_venv.resolve())
    for key in ("api", "crdgen", "workloads"):
        assert Path(found[key]).resolve().is_relative_to(site), (key, found[key])
    for key in ("kubequant", "kq_operator"):
        assert found[key] and all(Path(p).resolve().is_relative_to(site) for p in found[key]), (
            key,
            found[key],
        )
    assert not any("editable" in f.lower() for f in found["meta_path"]), found["meta_path"]


def test_installed_wheel_generates_the_repo_crds(fresh_venv: Path, tmp_path: Path) -> None:
    out = tmp_path / "crds"
    run([str(fresh_venv / "bin" / "kubequant"), "crds", "generate", "--out", str(out)], cwd=tmp_path)
    generated = sorted(p.name for p in out.iterdir())
    assert generated == sorted(p.name for p in (REPO_ROOT / "crds").glob("*.yaml"))
    diff = subprocess.run(["diff", "-r", str(REPO_ROOT / "crds"), str(out)], capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout[-3000:]


# --------------------------------------------------------------------------- the editable (dev) install


def test_editable_install_maps_operator_folder(tmp_path: Path) -> None:
    probe = (
        "import json, kubequant.operator, kubequant.workloads, kubequant.api\n"
        "print(json.dumps({'operator': list(kubequant.operator.__path__),"
        " 'workloads': kubequant.workloads.__file__, 'api': kubequant.api.__file__}))"
    )
    for cwd in (tmp_path, REPO_ROOT):
        found = json.loads(run([sys.executable, "-c", probe], cwd=cwd).stdout)
        assert str(REPO_ROOT / "operator") in found["operator"], (cwd, found)
        assert Path(found["workloads"]) == REPO_ROOT / "workloads" / "__init__.py"
        assert Path(found["api"]) == REPO_ROOT / "kubequant" / "api" / "__init__.py"


@pytest.mark.parametrize(
    "flags,code",
    [
        ([], "import operator; print(operator.__file__)"),
        # -S: nothing preloads operator, so the import really searches sys.path ('' = the repo root first).
        (["-S"], "import operator; print(operator.__file__)"),
        (
            [],
            "import sys, importlib; sys.modules.pop('operator'); print(importlib.import_module('operator').__file__)",
        ),
    ],
    ids=["plain", "no-site", "reimport"],
)
def test_operator_folder_does_not_shadow_the_standard_library(flags: list[str], code: str) -> None:
    found = run([sys.executable, *flags, "-c", code], cwd=REPO_ROOT).stdout.strip()
    assert Path(found) == STDLIB_OPERATOR
