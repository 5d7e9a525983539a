"""`kubequant validate`: bad manifests exit 2 with one line naming the field and the fix, never a traceback.

The invalid manifests live in ``bad_manifests/`` (see its README): one file per mistake, each with an
``# expect: <field path> | <substring>`` first line, so that an e2e test can send the same files to a
real API server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubequant.api import KINDS, Backtest, LiveTradingSession, RiskPolicy, TrainingJob
from kubequant.errors import ValidationError
from kubequant.manifests import load_documents, load_resources, parse_resource

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
BAD_DIR = Path(__file__).resolve().parent / "bad_manifests"
BAD_FILES = sorted(BAD_DIR.glob("*.yaml"))
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))

EXPECT_LINE = re.compile(
    r"^# expect: (?P<path>[^|]+?) \| (?P<substring>[^|]+?)(?: \| server: (?P<server>yes|no|policy|operator|json))?$"
)

# One valid object of each kind, as a user would write it: only the required fields.
VALID_ALL_KINDS = """\
apiVersion: kubequant.io/v1alpha1
kind: Backtest
metadata:
  name: scores-from-file
spec:
  period: {start: "2022-01-04", end: "2022-06-30"}
  signal:
    file: {path: /data/scores.parquet}
---
apiVersion: kubequant.io/v1alpha1
kind: TrainingJob
metadata:
  name: lgb-alpha158
spec:
  dataset:
    segments:
      train: {start: "2020-01-01", end: "2021-06-30"}
      valid: {start: "2021-07-01", end: "2021-12-31"}
      test: {start: "2022-01-01", end: "2022-12-29"}
---
apiVersion: kubequant.io/v1alpha1
kind: LiveTradingSession
metadata:
  name: paper-desk
spec:
  account: paper-001
  riskPolicyRef: {name: default-limits}
---
apiVersion: kubequant.io/v1alpha1
kind: RiskPolicy
metadata:
  name: default-limits
spec:
  limits: {maxConcentration: 0.1}
"""


@dataclass(frozen=True)
class Expectation:
    """The ``# expect:`` line of a bad manifest."""

    path: str
    substring: str
    server: bool
    # Who refuses it besides `kubequant validate`: yes (the CRDs), no (kubectl, before any validation),
    # policy (the chart's ValidatingAdmissionPolicy), operator (the operator alone), json (NaN or
    # infinity: kubectl cannot encode it, the API server refuses any body carrying it).
    checker: str = "yes"


@dataclass(frozen=True)
class Run:
    """One finished ``kubequant`` command."""

    returncode: int
    stdout: str
    stderr: str


def read_expectation(path: Path) -> Expectation:
    """Parse the first line of a bad manifest."""
    first = path.read_text().splitlines()[0]
    match = EXPECT_LINE.match(first)
    assert match, f"{path.name}: first line must be '# expect: <field path> | <substring>', not {first!r}"
    return Expectation(match["path"], match["substring"], match["server"] != "no", match["server"] or "yes")


def kubequant_script() -> str:
    """The console script of the interpreter running the tests (the dev venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "kubequant"
    if beside.exists():
        return str(beside)
    found = shutil.which("kubequant")
    assert found, "the kubequant console script is not installed; run `make venv`"
    return found


def kubequant(*args: str, stdin: str | None = None, cwd: Path | None = None) -> Run:
    """Run ``kubequant ARGS`` as a user would, in a subprocess."""
    proc = subprocess.run(
        [kubequant_script(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd or REPO_ROOT,
        timeout=60,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_no_traceback(run: Run) -> None:
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout, run.stderr


def error_lines(run: Run) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def bad_runs() -> dict[Path, Run]:
    """``kubequant validate -f FILE`` for every bad manifest, run side by side to keep the suite fast."""
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 4)) as pool:
        runs = pool.map(lambda f: kubequant("validate", "-f", str(f)), BAD_FILES)
        return dict(zip(BAD_FILES, runs, strict=True))


# --------------------------------------------------------------------------- the bad-manifest folder


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_bad_manifest_is_rejected_naming_field_and_fix(path: Path, bad_runs: dict[Path, Run]) -> None:
    expected = read_expectation(path)
    run = bad_runs[path]
    assert run.returncode == 2, f"exit {run.returncode}\nstdout: {run.stdout}\nstderr: {run.stderr}"
    assert_no_traceback(run)
    lines = error_lines(run)
    # Invalid for exactly one reason: one document, one error, one line.
    assert len(lines) == 1, f"{path.name} should break exactly one rule, got:\n{run.stderr}"
    line = lines[0]
    assert line.startswith(f"{path}#0 "), line
    assert f": {expected.path}: " in line, f"expected the field {expected.path!r} in:\n{line}"
    assert expected.substring in line, f"expected {expected.substring!r} in:\n{line}"
    assert run.stdout == "", "an invalid document must not also be reported valid"


def test_bad_manifest_folder_covers_every_kind() -> None:
    assert len(BAD_FILES) >= 30
    kinds: dict[str, int] = {}
    names: set[tuple[str, str]] = set()
    for path in BAD_FILES:
        expected = read_expectation(path)
        docs = list(yaml.safe_load_all(path.read_text()))
        assert len(docs) == 1, f"{path.name}: one manifest per file"
        doc = docs[0]
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}, f"{path.name}: a complete manifest"
        if expected.server:
            # The API server only sees files it can route to one of our CRDs.
            assert doc["kind"] in KINDS and doc["apiVersion"] == "kubequant.io/v1alpha1", path.name
            kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
        name = doc["metadata"].get("name")
        if name is not None:
            assert (doc["kind"], name) not in names, f"{path.name}: {doc['kind']}/{name} is used twice"
            names.add((doc["kind"], name))
    assert set(kinds) == set(KINDS), f"every kind needs bad manifests; have {kinds}"
    assert min(kinds.values()) >= 5, kinds


def test_bad_manifest_expectations_name_distinct_mistakes() -> None:
    seen: dict[tuple[str, str], str] = {}
    for path in BAD_FILES:
        expected = read_expectation(path)
        key = (expected.path, expected.substring)
        assert key not in seen, f"{path.name} repeats {seen[key]}"
        seen[key] = path.name


# --------------------------------------------------------------------------- valid input, stdin, YAML


def test_valid_multi_document_file_of_all_kinds_exits_0(tmp_path: Path) -> None:
    texts = [VALID_ALL_KINDS, *(p.read_text() for p in EXAMPLES)]
    manifest = tmp_path / "all-kinds.yaml"
    manifest.write_text("\n---\n".join(texts))
    count = sum(len(load_documents(t)) for t in texts)

    run = kubequant("validate", "-f", str(manifest))

    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    reported = run.stdout.splitlines()
    assert len(reported) == count
    assert all(line.endswith(": valid") for line in reported), run.stdout
    for kind in KINDS:
        assert any(f" {kind}/" in line for line in reported), f"no {kind} in {run.stdout}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid(example: Path) -> None:
    run = kubequant("validate", "-f", str(example))
    assert run.returncode == 0, run.stderr


def test_valid_manifest_on_stdin() -> None:
    run = kubequant("validate", "-f", "-", stdin=VALID_ALL_KINDS)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "<stdin>#0 Backtest/scores-from-file: valid"
    assert len(run.stdout.splitlines()) == 4


def test_bad_manifest_on_stdin_names_stdin_and_field() -> None:
    path = BAD_DIR / "backtest-topk-not-above-ndrop.yaml"
    run = kubequant("validate", "-f", "-", stdin=path.read_text())
    assert run.returncode == 2
    assert_no_traceback(run)
    assert error_lines(run) == [
        "<stdin>#0 Backtest/topk-ndrop: spec.strategy.topkDropout.nDrop: topk must be greater than nDrop"
        " — fix: raise topk or lower nDrop"
    ]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "apiVersion: kubequant.io/v1alpha1\n"
        "kind: Backtest\n"
        "metadata:\n"
        "  name: broken\n"
        "spec:\n"
        '  period: start: "2022-01-04"\n'  # a second mapping on one line
        "  signal:\n"
        "    file: {path: /data/scores.parquet}\n"
    )
    run = kubequant("validate", "-f", str(broken))
    assert run.returncode == 2
    assert_no_traceback(run)
    assert error_lines(run) == [
        f"error: {broken}:6: not valid YAML (mapping values are not allowed here) — fix: fix the YAML syntax"
    ]


def test_yaml_syntax_error_in_a_later_document_counts_lines_from_the_top() -> None:
    text = VALID_ALL_KINDS + "---\nkind: RiskPolicy\nmetadata: name: late\n"
    run = kubequant("validate", "-f", "-", stdin=text)
    assert run.returncode == 2
    assert_no_traceback(run)
    assert run.stdout == "", "nothing is validated when the file is not YAML"
    (line,) = error_lines(run)
    assert line.startswith(f"error: <stdin>:{len(text.splitlines())}: not valid YAML"), line


def test_tab_indentation_is_a_syntax_error_with_a_line(tmp_path: Path) -> None:
    tabbed = tmp_path / "tabbed.yaml"
    tabbed.write_text("apiVersion: kubequant.io/v1alpha1\nkind: RiskPolicy\nmetadata:\n\tname: tabs\n")
    run = kubequant("validate", "-f", str(tabbed))
    assert run.returncode == 2
    assert_no_traceback(run)
    assert f"{tabbed}:4: not valid YAML" in run.stderr


def test_errors_in_several_documents_are_all_reported(tmp_path: Path) -> None:
    picks = [
        "backtest-period-end-before-start.yaml",
        "riskpolicy-drawdown-zero.yaml",
        "trainingjob-valid-loss-maximised.yaml",
    ]
    docs = [(BAD_DIR / name).read_text() for name in picks]
    docs.insert(1, VALID_ALL_KINDS.split("---\n")[3])  # a valid RiskPolicy between the bad ones
    manifest = tmp_path / "mixed.yaml"
    manifest.write_text("---\n".join(docs))

    run = kubequant("validate", "-f", str(manifest))

    assert run.returncode == 2
    assert_no_traceback(run)
    lines = error_lines(run)
    assert len(lines) == 3, run.stderr
    assert lines[0].startswith(f"{manifest}#0 Backtest/end-before-start: spec.period.end: ")
    assert lines[1].startswith(f"{manifest}#2 RiskPolicy/drawdown-zero: spec.breakers.maxDrawdown: ")
    assert lines[2].startswith(f"{manifest}#3 TrainingJob/valid-loss-max: spec.tune.mode: ")
    assert run.stdout == f"{manifest}#1 RiskPolicy/default-limits: valid\n"


def test_several_errors_in_one_document_are_all_reported(tmp_path: Path) -> None:
    manifest = tmp_path / "many.yaml"
    manifest.write_text(
        "apiVersion: kubequant.io/v1alpha1\n"
        "kind: Backtest\n"
        "metadata: {name: many-mistakes}\n"
        "spec:\n"
        "  period: {start: '2022-01-04', end: '2022-06-30'}\n"
        "  signal: {file: {path: /data/scores.parquet}}\n"
        "  executor: {frequency: 1h}\n"
        "  exchange: {openCost: -1, dealPrice: twap}\n"
        "  benchmrk: SYNIDX\n"
    )
    run = kubequant("validate", "-f", str(manifest))
    assert run.returncode == 2
    assert_no_traceback(run)
    fields = sorted(line.split(": ")[1] for line in error_lines(run))
    assert fields == [
        "spec.benchmrk",
        "spec.exchange.dealPrice",
        "spec.exchange.openCost",
        "spec.executor.frequency",
    ]


def test_several_files_are_all_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(VALID_ALL_KINDS)
    bad = BAD_DIR / "riskpolicy-concentration-above-one.yaml"
    run = kubequant("validate", "-f", str(bad), "-f", str(good))
    assert run.returncode == 2
    assert error_lines(run) == [
        f"{bad}#0 RiskPolicy/concentration: spec.limits.maxConcentration: 1.5 is out of range"
        " — fix: use a value <= 1.0"
    ]
    assert run.stdout.count(": valid\n") == 4 and f"{good}#3 RiskPolicy/default-limits: valid" in run.stdout


def test_a_document_that_is_not_a_mapping(tmp_path: Path) -> None:
    manifest = tmp_path / "list.yaml"
    manifest.write_text("- apiVersion: kubequant.io/v1alpha1\n  kind: Backtest\n")
    run = kubequant("validate", "-f", str(manifest))
    assert run.returncode == 2
    assert_no_traceback(run)
    assert "(document): a manifest must be a mapping" in run.stderr


def test_missing_file_is_one_line_without_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    run = kubequant("validate", "-f", str(missing))
    assert run.returncode != 0
    assert_no_traceback(run)
    assert len(error_lines(run)) == 1 and "nope.yaml" in run.stderr


# --------------------------------------------------------------------------- parse_resource


def errors_of(body: Any) -> list[ValidationError]:
    """The errors ``parse_resource`` raises for ``body`` (it must raise)."""
    with pytest.raises(Exception) as raised:
        parse_resource(body)
    errors = getattr(raised.value, "errors", None)
    assert isinstance(errors, list) and errors, f"{raised.value!r} carries no errors"
    assert all(isinstance(e, ValidationError) for e in errors)
    return errors


def valid_docs() -> Iterator[dict[str, Any]]:
    for doc in load_documents(VALID_ALL_KINDS):
        yield doc.body


def test_parse_resource_returns_the_kind_with_defaults() -> None:
    parsed = [parse_resource(body) for body in valid_docs()]
    assert [type(p) for p in parsed] == [Backtest, TrainingJob, LiveTradingSession, RiskPolicy]
    backtest, training, session, policy = parsed
    assert isinstance(backtest, Backtest)
    assert backtest.spec.strategy.topk_dropout is None and backtest.spec.exchange.deal_price == "close"
    assert isinstance(training, TrainingJob) and training.spec.model.class_name == "LGBModel"
    assert isinstance(session, LiveTradingSession) and session.spec.strategy.signal_api is not None
    assert isinstance(policy, RiskPolicy) and policy.spec.breakers.action == "halt"


def test_parse_resource_collects_every_error_of_a_document() -> None:
    body = next(valid_docs())
    body["spec"]["executor"] = {"frequency": "hourly"}
    body["spec"]["exchange"] = {"closeCost": -0.1}
    body["spec"]["strategy"] = {"topkDropout": {"topk": 3, "nDrop": 5}}
    errors = errors_of(body)
    assert {e.where for e in errors} == {
        "spec.executor.frequency",
        "spec.exchange.closeCost",
        "spec.strategy.topkDropout.nDrop",
    }
    assert all(e.fix for e in errors), [e.one_line() for e in errors]


def test_parse_resource_reports_a_quantity_once() -> None:
    """An int-or-string field fails both branches in pydantic; the user sees one error."""
    body = next(valid_docs())
    body["spec"]["pod"] = {"resources": {"limits": {"memory": "lots"}}}
    (error,) = errors_of(body)
    assert error.where == "spec.pod.resources.limits.memory"
    assert error.fix is not None and "Kubernetes quantity" in error.fix


def test_parse_resource_checks_kind_first() -> None:
    (error,) = errors_of({"apiVersion": "v1", "kind": "Trainingjob", "metadata": {"name": "x"}})
    assert (error.where, error.fix) == ("kind", "did you mean TrainingJob?")
    (error,) = errors_of({"apiVersion": "kubequant.io/v1alpha1"})
    assert error.where == "kind" and error.fix is not None
    assert all(kind in error.fix for kind in KINDS)


def test_parse_resource_rejects_non_mappings() -> None:
    for body in (None, "Backtest", ["a", "b"], 3):
        (error,) = errors_of(body)
        assert error.where == "(document)"


def test_parse_resource_names_list_items_and_nested_fields() -> None:
    body = list(valid_docs())[3]
    body["spec"]["tradingWindows"] = [
        {"start": "09:30", "end": "11:30"},
        {"start": "13:00", "end": "15:00", "weekdays": ["Mon", "Someday"]},
    ]
    (error,) = errors_of(body)
    assert error.where == "spec.tradingWindows[1].weekdays[1]"
    assert error.fix is not None and "'Mon'" in error.fix


def test_parse_resource_unknown_field_suggests_the_close_name() -> None:
    body = list(valid_docs())[2]
    body["spec"]["riskPolicyRef"] = {"nmae": "default-limits"}
    errors = errors_of(body)
    by_where = {e.where: e for e in errors}
    assert by_where["spec.riskPolicyRef.nmae"].fix == "did you mean name?"
    assert by_where["spec.riskPolicyRef.name"].message == "required field is missing"


def test_load_resources_raises_the_first_error_with_the_document(tmp_path: Path) -> None:
    manifest = tmp_path / "two.yaml"
    manifest.write_text(VALID_ALL_KINDS + "---\n" + (BAD_DIR / "backtest-bad-frequency.yaml").read_text())
    with pytest.raises(ValidationError) as raised:
        load_resources(manifest)
    assert raised.value.where == f"{manifest}#4 Backtest/bad-frequency: spec.executor.frequency"
    assert raised.value.exit_code == 2
    assert "fix: use day or Nmin" in str(raised.value)
    manifest.write_text(VALID_ALL_KINDS)
    assert [type(r).__name__ for r in load_resources(manifest)] == list(KINDS)
