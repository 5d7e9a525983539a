"""docs/reference/ is generated from the code (the API models' schema, click's commands) and drift-tested,
like crds/ and docs/metrics.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from kubequant import reference_docs
from kubequant.api import KINDS
from kubequant.cli import main
from kubequant.crdgen import openapi_schema

pytestmark = pytest.mark.unit


def test_reference_pages_match_the_code() -> None:
    """Fails when a field, default, rule or command changes without `kubequant reference-docs`."""
    result = CliRunner().invoke(main, ["reference-docs", "--check"])
    assert result.exit_code == 0, result.output
    assert reference_docs.stale() == []


def test_check_fails_on_a_stale_page_and_write_fixes_it(tmp_path: Path) -> None:
    assert reference_docs.main(["--check", "--output", str(tmp_path)]) == 1  # missing pages
    assert reference_docs.main(["--output", str(tmp_path)]) == 0
    assert reference_docs.main(["--check", "--output", str(tmp_path)]) == 0
    page = tmp_path / "crds.md"
    page.write_text(page.read_text().replace("default `300`", "default `200`"))
    assert reference_docs.stale(tmp_path) == [page]


def test_every_spec_field_of_every_kind_is_documented() -> None:
    text = reference_docs.render_crds()
    for kind, cls in KINDS.items():
        assert f"## {kind}" in text
        spec = openapi_schema(cls)["properties"]["spec"]
        for name in spec.get("properties", {}):
            assert f"**`spec.{name}`**" in text, (kind, name)
    # Defaults, ranges, required and the CEL rules with their messages come through.
    line = next(x for x in text.splitlines() if x.startswith("- **`spec.data.sample.instruments`**"))
    assert "default `300`" in line and "≥ 1" in line and "≤ 5000" in line
    assert re.search(r"- \*\*`spec\.period`\*\* · object · \*\*required\*\*", text)
    assert "rule `self.end > self.start` (on `.end`): end must be after start" in text
    assert "spec fields are immutable except: `suspend`" in text


def test_every_command_is_documented_with_its_options() -> None:
    text = reference_docs.render_cli()
    headings = set(re.findall(r"^## (kubequant.*)$", text, re.MULTILINE))
    for expected in (
        "kubequant",
        "kubequant run",
        "kubequant validate",
        "kubequant data import",
        "kubequant crds generate",
        "kubequant trading resume",
        "kubequant workload backtest",
        "kubequant reference-docs",
    ):
        assert expected in headings, expected
    run_help = text.split("## kubequant run\n", 1)[1].split("\n## ", 1)[0]
    assert "--verbose" in run_help and "--report-dir" in run_help and "Usage: kubequant run" in run_help
