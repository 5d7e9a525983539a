"""Every command of the user guide runs: each page's ```bash/```console blocks marked ``run`` are executed
in order in a scratch folder (with a copy of examples/) against the real `kubequant` CLI, must exit 0 and
print what the marker expects; blocks that need a cluster are marked ``skip`` with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from guide_blocks import Block, guide_pages, read_page

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
PAGES = guide_pages()


def test_the_guide_has_its_pages_and_every_block_is_marked() -> None:
    names = {p.name for p in PAGES}
    assert {
        "first-backtest.md",
        "import-data.md",
        "nested-execution.md",
        "training.md",
        "trading.md",
    } <= names
    for path in PAGES:
        page = read_page(path)
        assert not page.errors, page.errors
        assert any(b.action == "run" for b in page.blocks), f"{path.name} runs no command"


def _workspace(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(REPO_ROOT / "examples", work / "examples")
    return work


@pytest.mark.parametrize("path", PAGES, ids=[p.stem for p in PAGES])
def test_guide_page_commands_run(path: Path, tmp_path: Path) -> None:
    page = read_page(path)
    assert not page.errors, page.errors
    work = _workspace(tmp_path)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for block in page.blocks:
        where = f"{block.page}:{block.line}"
        if block.action == "skip":
            continue  # test_cluster_block_is_skipped reports it
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=block.timeout,
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{where} exited {proc.returncode}:\n{output[-4000:]}"
        for expected in block.expect:
            assert expected in output, f"{where}: {expected!r} not in the output:\n{output[-4000:]}"


SKIPPED = [b for p in PAGES for b in read_page(p).blocks if b.action == "skip"]


@pytest.mark.parametrize("block", SKIPPED, ids=[f"{b.page}:{b.line}" for b in SKIPPED])
def test_cluster_block_is_skipped(block: Block) -> None:
    """Shown as skipped with its reason, never faked: the cluster paths are tested in tests/e2e."""
    pytest.skip(f"{block.page}:{block.line}: {block.reason}")
