"""The guide's block markers: a shell block without a marker, a skip without a reason or an unknown option
is an error, so no command of the user guide goes untested by accident (fast: parses text only)."""

from __future__ import annotations

from pathlib import Path

import pytest
from guide_blocks import read_page

pytestmark = pytest.mark.integration


def _page(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text)
    return path


def test_marked_blocks_are_read_with_their_options(tmp_path: Path) -> None:
    page = read_page(
        _page(
            tmp_path,
            '<!-- docs-test: run expect="Sharpe (net)" expect=Report timeout=60 -->\n'
            "```bash\nkubequant run -f a.yaml\n```\n\n"
            '<!-- docs-test: skip reason="needs a cluster" -->\n'
            "```console\n$ kubectl get bt\nNAME PHASE\n```\n"
            "```yaml\nkind: Backtest\n```\n",
        )
    )
    assert page.errors == []
    run, skip = page.blocks
    assert (run.action, run.expect, run.timeout, run.script) == (
        "run",
        ("Sharpe (net)", "Report"),
        60,
        "kubequant run -f a.yaml",
    )
    assert (skip.action, skip.reason, skip.script) == ("skip", "needs a cluster", "kubectl get bt")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("```bash\nls\n```\n", "without a <!-- docs-test: run|skip --> marker"),
        ("<!-- docs-test: run -->\n\nSome prose.\n\n```bash\nls\n```\n", "without a"),
        ("<!-- docs-test: skip -->\n```bash\nls\n```\n", 'needs reason="…"'),
        ('<!-- docs-test: run expects="x" -->\n```bash\nls\n```\n', "unknown docs-test option"),
        ("<!-- docs-test: maybe -->\n```bash\nls\n```\n", "starts with run or skip"),
    ],
)
def test_bad_or_missing_markers_are_errors(tmp_path: Path, text: str, error: str) -> None:
    page = read_page(_page(tmp_path, text))
    assert any(error in e for e in page.errors), page.errors
