"""Runs a Backtest in process: the one code path of `kubequant run` and of the operator's Job pod."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kubequant.api.backtest import Backtest, BacktestSpec
from kubequant.api.modules import DEFAULT_ALLOWED_MODULES
from kubequant.api.results import BacktestResults, DataQuality, SingleLevelComparison
from kubequant.errors import ConfigError
from kubequant.workloads.backtest import execution, metrics, preflight, report
from kubequant.workloads.backtest.import_guard import guarded_imports
from kubequant.workloads.backtest.qlib_config import (
    engine_note,
    exchange_kwargs,
    executor_config,
    strategy_config,
)
from kubequant.workloads.backtest.signal import (
    Signal,
    init_class,
    read_signal_file,
    score_with_artifact,
    train_and_predict,
)
from kubequant.workloads.data import quality
from kubequant.workloads.data.bundle import resolve_bundle

log = logging.getLogger(__name__)

Progress = Callable[[str, str], None]


def _quiet(stage: str, message: str) -> None:
    log.info("%s: %s", stage, message)


@dataclass
class BacktestOutcome:
    """What a finished backtest leaves: the headline results and the report folder."""

    results: BacktestResults
    report_dir: Path
    files: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def resolve_data_path(bt: Backtest, data_path: Path | None = None) -> Path:
    """The local folder of the bundle: an override (a mounted volume), a path, or the cached sample."""
    return resolve_bundle(bt.spec.data, data_path)


def init_qlib(provider_uri: Path, region: str, scratch: Path) -> None:
    """Point qlib at the bundle (process-wide), with its caches off so runs are independent.

    qlib's models log training metrics to an MLflow experiment; it goes to ``scratch`` rather
    than ./mlruns in the user's working directory.
    """
    import qlib

    from kubequant.workloads.backtest import qlib_compat
    from kubequant.workloads.data.bars import DATASET_PROVIDER

    qlib_compat.apply()
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    qlib.init(
        provider_uri=str(provider_uri),
        region=region,
        logging_level=logging.WARNING,
        expression_cache=None,
        dataset_cache=None,
        # raw fields (the Exchange's quote, the bars) read straight from the .bin files: same frames
        dataset_provider=DATASET_PROVIDER,
        exp_manager={
            "class": "MLflowExpManager",
            "module_path": "qlib.workflow.expm",
            # qlib locks "<uri path without its leading slash>" relative to the working directory;
            # a relative file: URI makes that lock land inside ``scratch`` instead of under ./tmp.
            "kwargs": {"uri": f"file:{os.path.relpath(scratch)}", "default_exp_name": "kubequant"},
        },
    )


def recording_strategy(config: dict[str, Any], signal: pd.Series, executed: list[Any]) -> Any:
    """The configured qlib strategy, subclassed only to keep the execute results qlib hands it each step."""
    from qlib.utils import get_callable_kwargs

    try:
        klass, kwargs = get_callable_kwargs(config)
    except (ModuleNotFoundError, AttributeError) as err:
        raise ConfigError(
            f"cannot import {config['module_path']}.{config['class']} ({err})",
            where="spec.strategy.custom.class",
            fix="check the class name and module",
        ) from err

    class Recording(klass):  # type: ignore[misc, valid-type]
        def post_exe_step(self, execute_result: Any) -> Any:
            executed.extend(execute_result or [])
            return super().post_exe_step(execute_result)

    Recording.__name__ = f"Recording{klass.__name__}"
    return init_class({"class": Recording, "kwargs": {**kwargs, "signal": signal}}, "spec.strategy")


def run_backtest(
    bt: Backtest,
    report_dir: Path | None = None,
    progress: Progress = _quiet,
    data_path: Path | None = None,
    allowed_modules: Sequence[str] = DEFAULT_ALLOWED_MODULES,
    model_dir: Path | None = None,
) -> BacktestOutcome:
    """Run one Backtest end to end and write its report; qlib loads classes only from ``allowed_modules``.

    A ``signal.modelRef`` scores with a TrainingJob's artifact: ``model_dir`` (the folder the operator
    mounts), else the one the local model store has for that TrainingJob (`kubequant run` registers it).
    """
    with guarded_imports(allowed_modules):
        return _run_backtest(
            bt, report_dir, progress, data_path, _model_artifact(bt, model_dir, allowed_modules)
        )


def _model_artifact(bt: Backtest, model_dir: Path | None, allowed_modules: Sequence[str]) -> Any:
    """The TrainingJob artifact a modelRef names, read before any data is loaded (None without a modelRef)."""
    ref = bt.spec.signal.model_ref
    if ref is None:
        return None
    from kubequant.workloads.training.artifacts import load_artifact, resolve_local

    where = "spec.signal.modelRef"
    folder = model_dir or resolve_local(bt.metadata.namespace or "default", ref.name, where=where)
    return load_artifact(folder, allowed_modules)


def _warn_other_bundle(model: Any, bundle_path: Path, progress: Progress) -> None:
    """Say so when the model was trained on another bundle (compares recorded checksums; never rehashes)."""
    import json

    from kubequant.workloads.data.qlib_format import MANIFEST

    trained_on = (model.manifest.get("data") or {}).get("fingerprint")
    try:
        current = json.loads((bundle_path / MANIFEST).read_text()).get("checksum")
    except (OSError, ValueError, AttributeError):
        current = None
    if trained_on and current and trained_on != current:
        progress(
            "signal",
            f"warning: the model was trained on another data bundle ({trained_on[:19]}…, this one "
            f"{current[:19]}…); its scores may not carry over",
        )


def _run_backtest(
    bt: Backtest, report_dir: Path | None, progress: Progress, data_path: Path | None, model: Any = None
) -> BacktestOutcome:
    spec = bt.spec
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    progress("data", "locating the data bundle (the built-in sample is generated on first use)")
    bundle_path = resolve_data_path(bt, data_path)
    bundle = preflight.Bundle.open(bundle_path)
    preflight.check_backtest(spec, bundle)
    if model is not None:
        _warn_other_bundle(model, bundle_path, progress)
    with tempfile.TemporaryDirectory(prefix="kubequant-mlruns-") as scratch:
        init_qlib(bundle_path, spec.data.region, Path(scratch))
        lap("data")
        try:
            return _run_in_qlib(bt, report_dir, progress, timings, lap, bundle_path, model)
        finally:
            _end_qlib_experiment()


# Kubernetes keeps at most 4096 bytes of a container's termination message.
TERMINATION_LIMIT = 4096
# What gives way, in order, when the results do not fit: the named missing instruments (their count
# stays), the per-level execution indicators, the single-level comparison. The report has them all.
_DROPPED_FIRST = (("dataQuality", "missingInstruments"), ("execution",), ("singleLevel",))


def termination_payload(results: BacktestResults, limit: int = TERMINATION_LIMIT) -> str:
    """The results as compact JSON of at most ``limit`` bytes, for the operator to copy into status."""
    body = results.to_manifest()
    for path in (None, *_DROPPED_FIRST):
        if path is not None:
            holder = body
            for part in path[:-1]:
                holder = holder.get(part) or {}
            holder.pop(path[-1], None)
        text = json.dumps(body, separators=(",", ":"), sort_keys=True)
        if len(text.encode()) <= limit:
            return text
    raise ValueError(f"the Backtest's headline results take more than {limit} bytes")


def run_data_quality(spec: BacktestSpec, bundle_path: Path) -> DataQuality:
    """What the run read, measured on the bundle: the handler's fields (only the exchange's with a
    signal file) for the universe's members over the period (qlib initialised)."""
    model = spec.signal.model
    fields = (
        quality.handler_fields(model.handler.class_name) if model is not None else quality.EXCHANGE_FIELDS
    )
    market, start, end = spec.universe.resolved_market(), spec.period.start, spec.period.end
    measured = quality.measure_universe(bundle_path, market, start, end, fields)
    return DataQuality.model_validate(measured.to_results())


def _end_qlib_experiment() -> None:
    """Close the MLflow run qlib's model opened, before its scratch folder goes away."""
    from qlib.workflow import R

    try:
        R.end_exp(recorder_status="FINISHED")
    except Exception:
        log.debug("no qlib experiment to end", exc_info=True)


def _run_in_qlib(
    bt: Backtest,
    report_dir: Path | None,
    progress: Progress,
    timings: dict[str, float],
    lap: Callable[[str], None],
    bundle_path: Path,
    model: Any = None,
) -> BacktestOutcome:
    spec = bt.spec

    market = spec.universe.resolved_market()
    signal: Signal
    if spec.signal.model is not None:
        signal = train_and_predict(spec.signal.model, market, progress)
    elif spec.signal.file is not None:
        progress("signal", f"reading {spec.signal.file.path}")
        signal = read_signal_file(Path(spec.signal.file.path), spec)
    elif model is not None:
        progress("signal", f"scoring with TrainingJob {spec.signal.model_ref.name}'s model ({model.path})")
        signal = score_with_artifact(model, spec, progress)
    else:
        raise ConfigError(
            "no source of scores", where="spec.signal", fix="set one of model, modelRef or file"
        )
    if signal.scores.empty:
        raise ConfigError(
            "the signal has no scores in the period", where="spec.signal", fix="check the period and universe"
        )
    lap("signal")

    progress("backtest", f"backtesting {spec.period.start} … {spec.period.end}")
    if spec.executor.levels:
        progress("backtest", engine_note(spec))
    daily, positions, indicators, trades = _backtest(spec, signal.scores)
    lap("backtest")

    ic, rank_ic = metrics.signal_ic(signal.scores, signal.label)
    results = metrics.summarize(daily, spec.account, len(trades), ic, rank_ic)
    update: dict[str, Any] = {"execution": execution.execution_quality(indicators, trades, spec)}
    if spec.executor.levels:
        progress("compare", "the same signal with the single-level daily executor")
        update["single_level"] = _single_level(spec, signal.scores)
        lap("compare")
    update["data_quality"] = run_data_quality(spec, bundle_path)
    lap("quality")
    out = report_dir or Path("reports") / bt.metadata.name
    update["report"] = str(out)
    results = results.model_copy(update=update)
    progress("report", f"writing the report to {out}")
    files = report.write_report(
        out,
        bt.metadata.name,
        results,
        daily,
        report.positions_frame(positions),
        trades,
        signal.scores,
        bt.to_manifest(),
        timings,
    )
    lap("report")
    return BacktestOutcome(results=results, report_dir=out, files=files, timings=timings)


def recorded_backtest(spec: BacktestSpec, scores: pd.Series) -> tuple[Any, Any, Any, list[Any]]:
    """qlib's backtest of the spec with a strategy that keeps every execute result qlib hands it:
    qlib's portfolio metrics and indicators, the executor it ran, and those results in execution order."""
    from qlib.backtest import backtest as qlib_backtest

    executed: list[Any] = []
    strategy = recording_strategy(strategy_config(spec), scores, executed)
    executor = init_class(executor_config(spec), "spec.executor")
    portfolio, indicators = qlib_backtest(
        start_time=str(spec.period.start),
        end_time=str(spec.period.end),
        strategy=strategy,
        executor=executor,
        benchmark=spec.benchmark,
        account=spec.account,
        exchange_kwargs=exchange_kwargs(spec),
    )
    return portfolio, indicators, executor, executed


def _backtest(
    spec: BacktestSpec, scores: pd.Series
) -> tuple[pd.DataFrame, Any, dict[str, Any], pd.DataFrame]:
    """qlib's backtest of the spec: the outermost level's daily report, positions, every level's indicators, fills."""
    from kubequant.workloads.backtest.compiled_slicing import CompiledSlicingExecutor

    portfolio, indicators, executor, executed = recorded_backtest(spec, scores)
    daily, positions = next(iter(portfolio.values()))
    if isinstance(executor, CompiledSlicingExecutor):
        return daily, positions, executor.level_indicators(), executor.trades()
    return daily, positions, indicators, report.trades_frame(executed)


def _single_level(spec: BacktestSpec, scores: pd.Series) -> SingleLevelComparison:
    """The same signal through the single-level daily executor, for comparison with a nested run."""
    flat = spec.model_copy(
        update={"executor": spec.executor.model_copy(update={"levels": None, "frequency": "day"})}
    )
    daily, _positions, _indicators, trades = _backtest(flat, scores)
    summary = metrics.summarize(daily, spec.account, len(trades), None, None)
    return SingleLevelComparison(
        annualized_return=summary.annualized_return,
        sharpe=summary.sharpe,
        avg_trade_cost_bps=summary.avg_trade_cost_bps,
        total_cost=summary.total_cost,
        trades=summary.trades,
    )
