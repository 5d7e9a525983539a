"""The ``kubequant`` command line: the only place that prints for humans.

Bad input exits 2 with one line naming the field or file and the fix; failures exit 1;
tracebacks only with ``--debug``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from kubequant import console
from kubequant.errors import InputError, KubequantError

log = logging.getLogger("kubequant")


class _Context:
    debug: bool = False


def _fail(err: BaseException, debug: bool) -> None:
    if debug:
        raise err
    if isinstance(err, KubequantError):
        click.echo(f"error: {err.one_line()}", err=True)
        sys.exit(err.exit_code)
    click.echo(f"error: {type(err).__name__}: {err}", err=True)
    sys.exit(1)


class _Group(click.Group):
    """A group whose commands turn KubequantError into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except SystemExit:
            raise
        except Exception as err:
            root = ctx.find_root()
            _fail(err, bool(root.params.get("debug")))


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="kubequant")
def main(debug: bool) -> None:
    """kubequant: quantitative research and trading on Kubernetes."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _allow_module_option(command: Any) -> Any:
    """``--allow-module PREFIX`` (repeatable): more modules a manifest's classes may come from."""
    return click.option(
        "--allow-module",
        "allow_modules",
        multiple=True,
        metavar="PREFIX",
        help="Also allow classes from modules under PREFIX, e.g. acme.research (repeatable); "
        "qlib, kubequant and lightgbm always are. A manifest's classes run code on this machine.",
    )(command)


def _allow_list(extra: tuple[str, ...]) -> tuple[str, ...]:
    """The module allow-list: the built-in prefixes and --allow-module's."""
    from kubequant.api.modules import BadModulePrefix, module_allow_list

    try:
        return module_allow_list(extra)
    except BadModulePrefix as err:
        raise InputError(
            str(err), where="--allow-module", fix="pass a module prefix such as acme.research"
        ) from err


# --- crds ---------------------------------------------------------------------------------


@main.group(cls=_Group)
def crds() -> None:
    """CustomResourceDefinitions generated from the API models."""


@crds.command("generate")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("crds"), show_default=True)
@click.option(
    "--chart-crds",
    "chart_dir",
    type=click.Path(path_type=Path),
    default=Path("charts/kubequant/crds"),
    show_default=True,
    help="The Helm chart's copy, kept identical (skipped when the folder does not exist).",
)
@click.option("--check", is_flag=True, help="Exit 1 and name the file when the files on disk drift.")
def crds_generate(out_dir: Path, chart_dir: Path, check: bool) -> None:
    """Write crds/<plural>.kubequant.io.yaml (and the chart's copy) from the pydantic models."""
    from kubequant.crdgen import check_crds, write_crds

    targets = [out_dir] + (
        [chart_dir] if chart_dir.is_dir() and chart_dir.resolve() != out_dir.resolve() else []
    )
    if check:
        drifted = [name for target in targets for name in check_crds(target)]
        if drifted:
            for name in drifted:
                click.echo(
                    f"drift: {name} differs from the API models; run `kubequant crds generate`", err=True
                )
            sys.exit(1)
        click.echo(f"crds in {', '.join(map(str, targets))} match the API models")
        return
    for target in targets:
        for path in write_crds(target):
            click.echo(f"wrote {path}")


# --- validate -------------------------------------------------------------------------------


@main.command()
@click.option(
    "-f", "--filename", "files", multiple=True, required=True, help="Manifest file(s); '-' for stdin."
)
@_allow_module_option
def validate(files: tuple[str, ...], allow_modules: tuple[str, ...]) -> None:
    """Check manifests against the API models and cross-field rules (exit 2 if invalid)."""
    from kubequant.manifests import load_documents, validate_documents

    allowed = _allow_list(allow_modules)
    problems = 0
    for name in files:
        if name != "-" and not Path(name).is_file():
            raise InputError("no such file", where=name, fix="check the path given to -f")
        text = sys.stdin.read() if name == "-" else Path(name).read_text()
        for doc_name, errors in validate_documents(
            load_documents(text, source="<stdin>" if name == "-" else name), allowed
        ):
            if errors:
                problems += len(errors)
                for err in errors:
                    click.echo(f"{doc_name}: {err.one_line()}", err=True)
            else:
                click.echo(f"{doc_name}: valid")
    if problems:
        sys.exit(2)


# --- data -----------------------------------------------------------------------------------


@main.group(cls=_Group)
def data() -> None:
    """Market data bundles in qlib's binary layout."""


@data.command("sample")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--instruments", type=click.IntRange(min=1), default=300, show_default=True)
@click.option(
    "--years",
    type=click.IntRange(min=1),
    default=None,
    help="Years from 2020-01-01 (default: through 2022-12-31).",
)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option(
    "--freq",
    "freq",
    default="day",
    show_default=True,
    help="Bar frequencies, comma-separated: day, or day,1min to add 1-minute bars consistent with the daily ones.",
)
@click.option(
    "--minute-instruments",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="With 1min: how many instruments get minute bars (listed in instruments/intraday.txt).",
)
@click.option(
    "--minute-days",
    type=click.IntRange(min=1),
    default=60,
    show_default=True,
    help="With 1min: minute bars for this many last trading days.",
)
def data_sample(
    out_dir: Path,
    instruments: int,
    years: int | None,
    seed: int,
    freq: str,
    minute_instruments: int,
    minute_days: int,
) -> None:
    """Generate the deterministic synthetic market (the demo data)."""
    from kubequant.errors import ValidationError
    from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

    freqs = tuple(f.strip() for f in freq.split(",") if f.strip())
    try:
        spec = SampleSpec.from_cli(
            instruments=instruments,
            years=years,
            seed=seed,
            freqs=freqs,
            minute_instruments=minute_instruments,
            minute_days=minute_days,
        )
    except ValidationError as err:
        if err.where != "sample.freqs":
            raise
        raise ValidationError(err.message, where="--freq", fix=err.fix) from err
    summary = write_sample_bundle(out_dir, spec)
    click.echo(summary.describe())


@main.command()
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where to keep the compiled kernels (default: NUMBA_CACHE_DIR, else kubequant's numba cache).",
)
def precompile(cache_dir: Path | None) -> None:
    """Compile the numba kernels (features, intraday execution) ahead of time, e.g. into an image;
    KUBEQUANT_NUMBA_SEED=DIR at run time copies them into a fresh cache."""
    if cache_dir is not None:
        os.environ["NUMBA_CACHE_DIR"] = str(cache_dir.resolve())
    from kubequant.workloads.precompile import precompile as run_precompile

    done = run_precompile()
    click.echo(
        f"compiled {done.kernels} kernels ({done.files} files) into {done.cache_dir} in {done.seconds:.1f} s"
    )


@data.command("import")
@click.option("--from", "source", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
def data_import(source: Path, out_dir: Path) -> None:
    """Import OHLCV CSV/Parquet (a file per instrument, or one long table) into a qlib bundle."""
    from kubequant.workloads.data.importer import import_bundle

    summary = import_bundle(source, out_dir)
    click.echo(summary.describe())


# --- run / workload --------------------------------------------------------------------------


def _stderr_progress() -> Any:
    import time

    start = time.perf_counter()

    def progress(stage: str, message: str) -> None:
        click.echo(f"[{time.perf_counter() - start:7.1f}s] {stage:<9} {message}", err=True)

    return progress


_TABLE_ROWS = (
    ("annualizedReturn", "Annualised return", "{:+.2%}"),
    ("sharpe", "Sharpe (net)", "{:.2f}"),
    ("maxDrawdown", "Max drawdown", "{:.2%}"),
    ("excessAnnualizedReturn", "Excess return (ann.)", "{:+.2%}"),
    ("informationRatio", "Information ratio", "{:.2f}"),
    ("benchmarkAnnualizedReturn", "Benchmark return (ann.)", "{:+.2%}"),
    ("totalReturn", "Total return", "{:+.2%}"),
    ("winRate", "Win rate (days)", "{:.1%}"),
    ("turnover", "Mean daily turnover", "{:.2%}"),
    ("avgTradeCostBps", "Avg trade cost (bps)", "{:.1f}"),
    ("trades", "Trades", "{:d}"),
    ("days", "Days", "{:d}"),
    ("ic", "IC (test)", "{:.4f}"),
    ("rankIc", "Rank IC (test)", "{:.4f}"),
    ("icir", "ICIR", "{:.3f}"),
    ("finalAccountValue", "Final account value", "{:,.0f}"),
)


def _print_results(name: str, results: dict[str, Any]) -> None:
    click.echo(f"Backtest {name}")
    for key, label, fmt in _TABLE_ROWS:
        value = results.get(key)
        click.echo(f"  {label:<26} {'-' if value is None else fmt.format(value)}")
    execution = results.get("execution")
    if execution:
        click.echo("  Execution")
        if execution.get("engine"):
            click.echo(f"    {'Engine':<8} {execution['engine']}")
        for level in execution.get("levels", []):
            fill = level.get("fillRate")
            pa = level.get("priceAdvantageBps")
            click.echo(
                f"    {level['frequency']:<8} orders {level['orders']:>7}  fill rate "
                f"{'-' if fill is None else f'{fill:.1%}'}  price advantage {'-' if pa is None else f'{pa:+.2f} bps'}"
            )
        for key, label, fmt in (
            ("implementationShortfallBps", "Shortfall vs arrival (bps)", "{:.2f}"),
            ("impactBps", "Slippage+impact (bps)", "{:.2f}"),
            ("participation", "Participation", "{:.2%}"),
            ("fillsPerOrder", "Fills per order", "{:.1f}"),
        ):
            value = execution.get(key)
            click.echo(f"    {label:<24} {'-' if value is None else fmt.format(value)}")
    single = results.get("singleLevel")
    if single:
        click.echo("  Same signal, single-level daily executor")
        for key, label, fmt in (
            ("annualizedReturn", "Annualised return", "{:+.2%}"),
            ("avgTradeCostBps", "Avg trade cost (bps)", "{:.1f}"),
            ("trades", "Trades", "{:d}"),
        ):
            value = single.get(key)
            click.echo(f"    {label:<24} {'-' if value is None else fmt.format(value)}")
    if results.get("report"):
        click.echo(f"  {'Report':<26} {results['report']}")


@main.command()
@click.option(
    "-f", "--filename", "file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--report-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Backtest: the report folder (default ./reports/<name>); TrainingJob: the model artifact folder "
    "(default spec.output.artifacts.path, else ./models/<name>).",
)
@click.option(
    "--replay",
    "replay",
    default=None,
    metavar="START..END",
    help="LiveTradingSession: replay these days of bars with the paper broker (default: spec.replay.period).",
)
@click.option(
    "--speed",
    type=click.FloatRange(min=0),
    default=None,
    help="LiveTradingSession replay speed relative to real time; 0 runs as fast as possible.",
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="LiveTradingSession: RiskPolicy file, when the manifest has none.",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show qlib's, LightGBM's and Ray's own output and warnings here, with a timestamped line per "
    "stage (default: they go to run.log in the report folder).",
)
@_allow_module_option
def run(
    file: Path,
    output: str,
    report_dir: Path | None,
    replay: str | None,
    speed: float | None,
    policy_file: Path | None,
    verbose: bool,
    allow_modules: tuple[str, ...],
) -> None:
    """Run a manifest in process, with no cluster (TrainingJob on a local Ray, then Backtest;
    LiveTradingSession with --replay)."""
    from kubequant.api import Backtest
    from kubequant.api.live import LiveTradingSession
    from kubequant.errors import ValidationError
    from kubequant.manifests import load_resources
    from kubequant.workloads.backtest.runner import run_backtest

    allowed = _allow_list(allow_modules)
    resources = load_resources(file, allowed)
    sessions = [r for r in resources if isinstance(r, LiveTradingSession)]
    if sessions:
        from kubequant.workloads.backtest.import_guard import guarded_imports

        with guarded_imports(allowed):
            _run_replay(
                file, resources, sessions[0], output, report_dir, replay, speed, policy_file, allowed, verbose
            )
        return
    from kubequant.api.training import TrainingJob

    trainings = [r for r in resources if isinstance(r, TrainingJob)]
    runnable = [r for r in resources if isinstance(r, Backtest)]
    if replay is not None or speed is not None or policy_file is not None:
        raise ValidationError(
            "--replay, --speed and --policy apply to a LiveTradingSession", where=str(file), fix="remove them"
        )
    if not runnable and not trainings:
        kinds = sorted({type(r).__name__ for r in resources}) or ["nothing"]
        raise ValidationError(
            f"found {', '.join(kinds)}; nothing kubequant run can run",
            where=str(file),
            fix="give a Backtest or a TrainingJob",
        )
    count = len(runnable) + len(trainings)
    outputs: dict[str, Any] = {}
    printers: dict[str, Any] = {}

    def target_for(name: str, default: Path | None) -> Path | None:
        if report_dir is None:
            return default
        return report_dir if count == 1 else report_dir / name

    # TrainingJobs first, so that a Backtest in the same file can name them in signal.modelRef.
    for tj in trainings:
        trained = _run_training(tj, target_for(tj.metadata.name, None), allowed, verbose)
        outputs[tj.metadata.name] = trained[0]
        printers[tj.metadata.name] = lambda name, results, trials=trained[1]: _print_training(
            name, results, trials
        )
    notes: list[str] = []
    for bt in runnable:
        # qlib and LightGBM print to stdout; stdout is kept for the results (-o json).
        folder = target_for(bt.metadata.name, None) or Path("reports") / bt.metadata.name
        stages = console.NESTED_BACKTEST_STAGES if bt.spec.executor.levels else console.BACKTEST_STAGES
        with console.run_output(folder / console.LOG_NAME, verbose, stages) as out:
            outcome = run_backtest(bt, folder, progress=out.progress, allowed_modules=allowed)
        outputs[bt.metadata.name] = outcome.results.to_manifest()
        printers[bt.metadata.name] = _print_results
        if out.log_path is not None:
            notes.append(console.log_note(out.log_path))
    for note in notes:
        click.echo(note, err=True)
    if output == "json":
        only = next(iter(outputs.values())) if len(outputs) == 1 else outputs
        click.echo(json.dumps(only, indent=2, sort_keys=True))
    else:
        for name, results in outputs.items():
            printers[name](name, results)


def _training_dir(tj: Any, override: Path | None) -> Path:
    """Where a local training writes its artifact: --report-dir, spec.output.artifacts.path, ./models/<name>."""
    if override is not None:
        return override
    path = tj.spec.output.artifacts.path
    return Path(path) if path else Path("models") / tj.metadata.name


def _run_training(
    tj: Any, override: Path | None, allowed: tuple[str, ...], verbose: bool = False
) -> tuple[dict[str, Any], Any]:
    """Train locally, register the artifact in the local model store; the result manifest and the trials."""
    from kubequant.workloads.training.artifacts import register_local
    from kubequant.workloads.training.train import run_training

    out = _training_dir(tj, override)
    with console.run_output(out / console.LOG_NAME, verbose, console.TRAINING_STAGES) as shown:
        outcome = run_training(tj, out, allowed_modules=allowed, progress=shown.progress)
    if shown.log_path is not None:
        click.echo(console.log_note(shown.log_path), err=True)
    pointer = register_local(tj.metadata.namespace or "default", tj.metadata.name, outcome.artifact_dir)
    log.info("registered %s in the local model store (%s)", tj.metadata.name, pointer)
    trials = outcome.trials
    if trials is not None and tj.spec.tune is not None and "metric" in trials.columns:
        trials = trials.sort_values("metric", ascending=tj.spec.tune.mode == "min", na_position="last")
    return outcome.result.to_manifest(), trials


_TRAINING_ROWS = (
    ("ic", "IC (test)", "{:.4f}"),
    ("icir", "ICIR (test)", "{:.3f}"),
    ("rankIc", "Rank IC (test)", "{:.4f}"),
    ("rankIcir", "Rank ICIR (test)", "{:.3f}"),
    ("validIc", "IC (valid)", "{:.4f}"),
    ("loss", "Loss (valid)", "{:.5f}"),
)


def _print_training(name: str, result: dict[str, Any], trials: Any = None) -> None:
    click.echo(f"TrainingJob {name}")
    metrics = result.get("metrics") or {}
    for key, label, fmt in _TRAINING_ROWS:
        value = metrics.get(key)
        click.echo(f"  {label:<26} {'-' if value is None else fmt.format(value)}")
    best = result.get("bestMetric")
    click.echo(f"  {'Best metric':<26} {'-' if best is None else f'{best:.4f}'}")
    click.echo(f"  {'Trials':<26} {result.get('trials', '-')}")
    if result.get("bestParams"):
        params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(result["bestParams"].items()))
        click.echo(f"  {'Best params':<26} {params}")
    click.echo(f"  {'Model':<26} {result.get('modelUri', '-')}")
    if trials is not None and len(trials):
        _print_trials(trials)


def _short(value: Any, width: int = 40) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_trials(trials: Any, top: int = 10) -> None:
    """The first ``top`` trials (sorted best first by the caller), as a fixed-width table."""
    frame = trials.head(top)
    click.echo(f"  Top {len(frame)} trials")
    columns = [str(c) for c in frame.columns]
    rows = [[_short(v) for v in row] for row in frame.itertuples(index=False)]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    click.echo("    " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        click.echo("    " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _run_replay(
    file: Path,
    resources: list[Any],
    session: Any,
    output: str,
    report_dir: Path | None,
    replay: str | None,
    speed: float | None,
    policy_file: Path | None,
    allowed: tuple[str, ...],
    verbose: bool = False,
) -> None:
    from kubequant.api.risk import RiskPolicy
    from kubequant.errors import ValidationError
    from kubequant.manifests import load_resources
    from kubequant.workloads.trading.node.replay import run_replay

    spec_replay = session.spec.replay
    period = replay or (spec_replay.period if spec_replay else None)
    if period is None:
        raise ValidationError(
            "a LiveTradingSession runs locally only as a replay",
            where="--replay",
            fix="pass --replay START..END (or set spec.replay.period)",
        )
    pool = load_resources(policy_file, allowed) if policy_file is not None else resources
    policies = [r for r in pool if isinstance(r, RiskPolicy)]
    wanted = session.spec.risk_policy_ref.name
    policy = next((p for p in policies if p.metadata.name == wanted), policies[0] if policy_file else None)
    target = report_dir if report_dir is not None else Path("reports") / session.metadata.name
    # A replay's stage lines (the signal API's address, a halt) are read by the user: lines, never a bar.
    with console.run_output(target / console.LOG_NAME, verbose, (), bar=False) as shown:
        summary = run_replay(
            session,
            policy,
            period,
            speed if speed is not None else (spec_replay.speed if spec_replay else 0.0),
            target,
            shown.progress,
        )
    if shown.log_path is not None:
        click.echo(console.log_note(shown.log_path), err=True)
    if output == "json":
        click.echo(json.dumps(summary.to_json(), indent=2, sort_keys=True))
    else:
        for line in summary.describe():
            click.echo(line)


@main.group(cls=_Group)
def trading() -> None:
    """A trading session's runtime: its journal and trading state."""


@trading.command("resume")
@click.option(
    "--state-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The session's volume (the folder with journal.sqlite).",
)
@click.option("--reason", required=True, help="Why the session may trade again (journaled).")
@click.option(
    "--to",
    "to",
    type=click.Choice(["ACTIVE", "REDUCING"]),
    default="ACTIVE",
    show_default=True,
    help="The state the next start begins in: ACTIVE, or REDUCING (only exposure-reducing orders).",
)
@click.option(
    "--session",
    "session_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The session manifest: its spec.halted (the kill switch) is checked; default: the journal's last state.",
)
def trading_resume(state_dir: Path, reason: str, to: str, session_file: Path | None) -> None:
    """Clear a latched halt (breakers, reconciliation) of a stopped runtime; journaled, read at its next start.

    A running runtime takes the same change on POST /v1/trading-state. The kill switch is never overridden.
    """
    from kubequant.workloads.trading.risk.trading_state import resume_stopped

    kill_switch = None
    if session_file is not None:
        from kubequant.workloads.trading.node.runtime import read_session

        session, _ = read_session(session_file)
        kill_switch = session.spec.halted
    result = resume_stopped(state_dir, reason, to, kill_switch=kill_switch)
    cleared = ", ".join(f"{k} ({v})" for k, v in sorted(result.cleared.items())) or "nothing latched"
    click.echo(f"{state_dir}: {result.previous} -> {result.state} at the next start; cleared {cleared}")


@trading.command("adopt")
@click.option(
    "--state-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The session's volume (the folder with journal.sqlite; created if missing).",
)
@click.option(
    "--reason", required=True, help="Why the account's positions and orders are adopted (journaled)."
)
def trading_adopt(state_dir: Path, reason: str) -> None:
    """Let a session with an empty journal start from the broker's positions and open orders; journaled.

    A start on an empty journal whose account holds positions, open orders or kubequant's own
    orders fails closed (a lost journal volume looks the same); this is the explicit decision to adopt.
    """
    from kubequant.workloads.trading.risk.trading_state import adopt_stopped

    result = adopt_stopped(state_dir, reason)
    cleared = ", ".join(sorted(result.cleared)) or "nothing latched"
    made = " (new journal)" if result.created else ""
    click.echo(
        f"{state_dir}{made}: the next start adopts the broker's positions and open orders; cleared {cleared}"
    )


@trading.command("report")
@click.option(
    "--state-dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The session's volume (the folder with journal.sqlite).",
)
@click.option(
    "--session",
    "session_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The LiveTradingSession manifest (default: session.yaml in --state-dir, as parity leaves it).",
)
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The qlib bundle, instead of the session's spec.data.",
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def trading_report(state_dir: Path, session_file: Path | None, data_path: Path | None, output: str) -> None:
    """Compare a session's journaled fills with the Backtest's exchange model; fit spec.exchange.impact to them."""
    from kubequant.workloads.realism.report import trading_report as build_report

    report = build_report(state_dir, session_file, data_path)
    if output == "json":
        click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        for line in report.describe():
            click.echo(line)


@main.command("parity")
@click.option(
    "-f",
    "--filename",
    "file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The Backtest manifest (signal model or file).",
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A RiskPolicy for the replay (default: a permissive one, no limits).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where parity.json, the charts and the replay's journal go (default ./reports/<name>/parity).",
)
@click.option(
    "--check", is_flag=True, help="Exit 1 when a goal is missed (fills 1 bp, net value 0.1 %, trades)."
)
@click.option(
    "-v", "--verbose", is_flag=True, help="Show qlib's own output here (default: run.log in --out)."
)
@_allow_module_option
def parity(
    file: Path,
    output: str,
    policy_file: Path | None,
    out_dir: Path | None,
    check: bool,
    verbose: bool,
    allow_modules: tuple[str, ...],
) -> None:
    """Run a Backtest, replay its daily decisions through the trading runtime, and compare fills and net value."""
    from kubequant.api import Backtest
    from kubequant.api.risk import RiskPolicy
    from kubequant.errors import ValidationError
    from kubequant.manifests import load_resources
    from kubequant.workloads.backtest.import_guard import guarded_imports
    from kubequant.workloads.realism.parity import run_parity

    allowed = _allow_list(allow_modules)
    backtests = [r for r in load_resources(file, allowed) if isinstance(r, Backtest)]
    if not backtests:
        raise ValidationError("no Backtest in the file", where=str(file), fix="give a Backtest manifest")
    bt = backtests[0]
    policy = None
    if policy_file is not None:
        policies = [r for r in load_resources(policy_file, allowed) if isinstance(r, RiskPolicy)]
        if not policies:
            raise ValidationError(
                "no RiskPolicy in the file", where="--policy", fix="give a RiskPolicy manifest"
            )
        policy = policies[0]
    out = out_dir or Path("reports") / bt.metadata.name / "parity"
    with (
        guarded_imports(allowed),
        console.run_output(out / console.LOG_NAME, verbose, (), bar=False) as shown,
    ):
        report = run_parity(bt, out, policy, shown.progress)
    if shown.log_path is not None:
        click.echo(console.log_note(shown.log_path), err=True)
    if output == "json":
        click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        for line in report.describe():
            click.echo(line)
    if check and not report.met():
        raise SystemExit(1)


@main.command("gateway")
@click.option(
    "--client",
    "client",
    type=click.Choice(["universal", "miniqmt"]),
    required=True,
    help="The desktop client easytrader drives: Tonghuashun's universal client, or miniQMT.",
)
@click.option("--account", required=True, help="The fund account the client is logged in to (spec.account).")
@click.option("--listen", default="127.0.0.1:8443", show_default=True, help="HOST:PORT to serve on.")
@click.option(
    "--state",
    type=click.Path(path_type=Path),
    default=Path("kubequant-gateway.sqlite"),
    show_default=True,
    help="The SQLite file of client order ids and fills (keep it across restarts).",
)
@click.option(
    "--client-path", default=None, help="xiadan.exe of the universal client, or miniQMT's userdata_mini."
)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option(
    "--client-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CA of the trading pod's client certificate: mutual TLS.",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A file holding the bearer token the pod must present.",
)
def gateway(
    client: str,
    account: str,
    listen: str,
    state: Path,
    client_path: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    client_ca: Path | None,
    token_file: Path | None,
) -> None:
    """Serve a Windows desktop trading client to a trading pod (broker.type gateway; docs/brokers/gateway.md)."""
    from kubequant.workloads.trading.adapters.gateway.server import run_gateway

    run_gateway(
        client=client,
        account=account,
        listen=listen,
        state=state,
        client_path=client_path,
        token_file=token_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        client_ca=client_ca,
    )


@main.group(cls=_Group)
def workload() -> None:
    """Entrypoints of the pods the operator creates."""


@workload.command("backtest")
@click.option(
    "--config", "config", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--report-dir", type=click.Path(path_type=Path), required=True)
@click.option(
    "--data-path", type=click.Path(path_type=Path), default=None, help="Mounted bundle (overrides spec.data)."
)
@click.option(
    "--termination-log",
    type=click.Path(path_type=Path),
    default=Path("/dev/termination-log"),
    show_default=True,
    help="Where the results JSON is written for the operator (Kubernetes' terminationMessagePath).",
)
@click.option(
    "--model-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="signal.modelRef: the TrainingJob's artifact folder (mounted by the operator).",
)
@_allow_module_option
def workload_backtest(
    config: Path,
    report_dir: Path,
    data_path: Path | None,
    termination_log: Path,
    model_dir: Path | None,
    allow_modules: tuple[str, ...],
) -> None:
    """Run the Backtest in --config (a manifest) and leave its results in the termination log.

    The module allow-list is checked again here, on the manifest the pod reads, and while qlib
    imports: the operator passes the cluster's extra prefixes as --allow-module.
    """
    from kubequant.api import Backtest
    from kubequant.manifests import load_resources
    from kubequant.workloads.backtest.runner import run_backtest, termination_payload

    def leave(payload: str) -> None:
        if termination_log.parent.exists():
            termination_log.write_text(payload)

    try:
        allowed = _allow_list(allow_modules)
        (bt,) = [r for r in load_resources(config, allowed) if isinstance(r, Backtest)]
        with contextlib.redirect_stdout(sys.stderr):
            outcome = run_backtest(
                bt,
                report_dir,
                progress=_stderr_progress(),
                data_path=data_path,
                allowed_modules=allowed,
                model_dir=model_dir,
            )
    except Exception as err:
        # The operator reads the reason from the termination message (never the logs), so a failure
        # leaves one too: one structured line, with anything that looks like a credential masked.
        from kubequant.redaction import redact

        text = err.one_line() if isinstance(err, KubequantError) else f"{type(err).__name__}: {err}"
        leave(json.dumps({"error": redact(text, limit=2048)}))
        raise
    payload = termination_payload(outcome.results)
    leave(payload)
    click.echo(payload)


@workload.command("train")
@click.option(
    "--config", "config", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--artifact-dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Where the model artifact is written (shared storage on a multi-node cluster).",
)
@click.option(
    "--data-path", type=click.Path(path_type=Path), default=None, help="Mounted bundle (overrides spec.data)."
)
@click.option(
    "--ray-address",
    default=None,
    metavar="ADDRESS",
    help="The Ray cluster's GCS address; default RAY_ADDRESS (set by `ray job submit`), else auto.",
)
@_allow_module_option
def workload_train(
    config: Path,
    artifact_dir: Path,
    data_path: Path | None,
    ray_address: str | None,
    allow_modules: tuple[str, ...],
) -> None:
    """The RayJob's entrypoint: run the TrainingJob in --config on the running Ray cluster.

    The last stdout line is `kubequant-result: <TrainingResult JSON>` (or `kubequant-error: <reason>`,
    exit 1): the submitter reads it from the Ray job's logs.
    """
    import os

    from kubequant.api.training import TrainingJob
    from kubequant.manifests import load_resources
    from kubequant.redaction import redact
    from kubequant.workloads.training.submit import ERROR_PREFIX, RESULT_PREFIX
    from kubequant.workloads.training.train import run_training

    try:
        allowed = _allow_list(allow_modules)
        jobs = [r for r in load_resources(config, allowed) if isinstance(r, TrainingJob)]
        if len(jobs) != 1:
            raise InputError(
                f"expected one TrainingJob, found {len(jobs)}", where=str(config), fix="give one TrainingJob"
            )
        address = ray_address or os.environ.get("RAY_ADDRESS") or "auto"
        with contextlib.redirect_stdout(sys.stderr):
            outcome = run_training(
                jobs[0],
                artifact_dir,
                data_path=data_path,
                allowed_modules=allowed,
                progress=_stderr_progress(),
                ray_address=address,
            )
    except Exception as err:
        if click.get_current_context().find_root().params.get("debug"):
            raise
        text = err.one_line() if isinstance(err, KubequantError) else f"{type(err).__name__}: {err}"
        click.echo(f"error: {text}", err=True)
        click.echo(ERROR_PREFIX + redact(" ".join(text.split()), limit=2048))
        sys.exit(1)
    payload = json.dumps(outcome.result.to_manifest(), separators=(",", ":"), sort_keys=True)
    click.echo(RESULT_PREFIX + payload)


@workload.command(
    "submit-training",
    context_settings={"ignore_unknown_options": True},
)
@click.option(
    "--termination-log",
    type=click.Path(path_type=Path),
    default=Path("/dev/termination-log"),
    show_default=True,
    help='Where the TrainingResult JSON (or {"error": ...}) is written for the operator.',
)
@click.option(
    "--poll-seconds",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Status poll period.",
)
@click.option(
    "--patience-seconds",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="How long a dashboard that is not ready (starting, job agent not registered, restarting) is waited for.",
)
@click.argument("entrypoint", nargs=-1, type=click.UNPROCESSED)
def workload_submit_training(
    termination_log: Path, poll_seconds: float, patience_seconds: float, entrypoint: tuple[str, ...]
) -> None:
    """The RayJob's submitter pod: submit ENTRYPOINT (after --) once under RAY_JOB_SUBMISSION_ID to the
    dashboard at RAY_DASHBOARD_ADDRESS, or follow the job already there; stream its logs; leave the result
    in the termination log. Exit 0 only when the job SUCCEEDED with a result."""
    from kubequant.workloads.training.submit import submit_and_follow

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    if not entrypoint:
        raise InputError("no entrypoint given", where="ENTRYPOINT", fix="pass the command after --")
    outcome = submit_and_follow(
        list(entrypoint), termination_log, write, poll_s=poll_seconds, patience_s=patience_seconds
    )
    click.echo(
        f"submitter: Ray job {outcome.status}{'' if outcome.created else ' (followed an existing job)'}",
        err=True,
    )
    if outcome.exit_code:
        click.echo(f"error: {outcome.message}", err=True)
    sys.exit(outcome.exit_code)


@workload.command(
    "trading",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.pass_context
def workload_trading(ctx: click.Context) -> None:
    """The trading pod: `python -m kubequant.workloads.trading.node.runtime` with the same flags (see docs/trading.md)."""
    from kubequant.workloads.trading.node.runtime import main as runtime_main

    sys.exit(runtime_main(list(ctx.args)))


# --- operator -------------------------------------------------------------------------------


@main.command("operator")
@click.option(
    "-n", "--namespace", "namespaces", multiple=True, help="Namespace to watch (repeatable); none: all."
)
@click.option(
    "--metrics-port", type=int, default=None, help="Prometheus /metrics port (KUBEQUANT_METRICS_PORT, 9090)."
)
@click.option(
    "--health-port", type=int, default=None, help="kopf /healthz port (KUBEQUANT_HEALTH_PORT, 8081)."
)
@click.option("--peering", default=None, help="kopf peering name (KUBEQUANT_PEERING, kubequant).")
@click.option("--priority", type=int, default=None, help="Peering priority (KUBEQUANT_PRIORITY, 0).")
@click.option("--standalone", is_flag=True, default=None, help="No peering (single replica).")
def operator_cmd(
    namespaces: tuple[str, ...],
    metrics_port: int | None,
    health_port: int | None,
    peering: str | None,
    priority: int | None,
    standalone: bool | None,
) -> None:
    """Run the kopf operator that reconciles kubequant's custom resources."""
    from kubequant.operator.config import OperatorConfig
    from kubequant.operator.main import run_operator

    flags = {
        "namespaces": list(namespaces) or None,
        "metrics_port": metrics_port,
        "health_port": health_port,
        "peering": peering,
        "priority": priority,
        "standalone": standalone,
    }
    cfg = OperatorConfig(**{k: v for k, v in flags.items() if v is not None})
    root = click.get_current_context().find_root()
    logging.getLogger().setLevel(logging.DEBUG if root.params.get("debug") else cfg.log_level)
    run_operator(cfg)


# --- metrics-docs ----------------------------------------------------------------------------

from kubequant.cli_metrics import metrics_docs  # noqa: E402

main.add_command(metrics_docs)


# --- reference-docs --------------------------------------------------------------------------


@main.command("reference-docs")
@click.option("--check", is_flag=True, help="Fail (exit 1) when a page of docs/reference/ is stale.")
def reference_docs(check: bool) -> None:
    """Write docs/reference/ (every CRD field, every command) from the API models and this CLI."""
    from kubequant import reference_docs as pages

    sys.exit(pages.main(["--check"] if check else []))


if __name__ == "__main__":
    main()
