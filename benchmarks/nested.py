"""Nested execution cost: single-level day vs qlib's NestedExecutor vs kubequant's compiled levels.

    .venv/bin/python benchmarks/nested.py [--instruments 30] [--days 20] [--repeats 3] [--cli-runs 3]

One sample bundle with 1-minute bars, one signal (20-day momentum from the daily closes), one
TopkDropout strategy; every path runs in this process. Timed: qlib's ``backtest()`` call for the
single-level day and the NestedExecutor day→1min TWAP (the reference), and kubequant's backtest
stage (``runner._backtest``: the compiled day→1min TWAP level on a MinuteBackedExchange) — the same
scope. The fast paths run once untimed first (qlib's caches, numba's compiled-code cache), then
``--repeats`` times alternating; medians are printed. Also printed: kubequant's whole ``run_backtest``
(signal file, backtest, execution measures, the single-level comparison run, report), for scale.
Prints the ratio of kubequant's nested backtest to the single-level daily time (goal <= 1.2) and how
far its results are from qlib's NestedExecutor on the same inputs (goal: within 1 bp).

Three levels (issue 16): day → 30min SBB-EMA → 1min TWAP with Almgren–Chriss impact, compiled, against
the same spec with the daily executor (goal <= 1.2×) and against qlib's NestedExecutor on the same
case (goal >= 50× faster); median and worst of ``--repeats`` runs each. ``--cli-runs`` N > 0 also
times ``kubequant run -f examples/backtest-nested.yaml`` against the same file with a daily executor
(whole runs, model training included; goal <= 1.2×). The machine's load average is printed: on a
shared machine the ratios, measured in the same run, are what to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kubequant.api import Backtest
from kubequant.workloads.backtest.runner import run_backtest
from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

EXCHANGE = {
    "limit_threshold": 0.095,
    "deal_price": "close",
    "open_cost": 0.0005,
    "close_cost": 0.0015,
    "min_cost": 5,
}


def momentum_scores(bundle: Path, days: list[str]) -> pd.Series:
    """20-day momentum of the intraday market's instruments (qlib expression), as the signal."""
    from qlib.data import D

    codes = [
        line.split("\t")[0] for line in (bundle / "instruments" / "intraday.txt").read_text().splitlines()
    ]
    frame = D.features(codes, ["$close / Ref($close, 20) - 1"], start_time=days[0], end_time=days[-1])
    scores = frame.iloc[:, 0].swaplevel().sort_index().dropna()
    scores.index.names = ["datetime", "instrument"]
    return scores


def plain_qlib(scores: pd.Series, start: str, end: str, nested: bool) -> pd.DataFrame:
    """qlib only: TopkDropout with SimulatorExecutor (day) or NestedExecutor(day → 1min TWAP)."""
    from qlib.backtest import backtest
    from qlib.backtest.executor import NestedExecutor, SimulatorExecutor
    from qlib.contrib.strategy import TopkDropoutStrategy
    from qlib.contrib.strategy.rule_strategy import TWAPStrategy

    strategy = TopkDropoutStrategy(signal=scores, topk=10, n_drop=2)
    if nested:
        executor = NestedExecutor(
            time_per_step="day",
            inner_executor=SimulatorExecutor(time_per_step="1min", generate_portfolio_metrics=True),
            inner_strategy=TWAPStrategy(),
            generate_portfolio_metrics=True,
        )
        exchange = {**EXCHANGE, "freq": "1min", "end_time": f"{end} 15:00:00"}
    else:
        executor = SimulatorExecutor(time_per_step="day", generate_portfolio_metrics=True)
        exchange = {**EXCHANGE, "freq": "day"}
    portfolio, _ = backtest(
        start_time=start,
        end_time=end,
        strategy=strategy,
        executor=executor,
        benchmark="SYNIDX",
        account=10_000_000,
        exchange_kwargs=exchange,
    )
    return next(iter(portfolio.values()))[0]


IMPACT = {
    "model": "almgrenChriss",
    "permanent": 0.01,
    "temporary": 0.3,
    "beta": 0.5,
    "slippageBps": 2,
    "maxParticipation": 0.2,
}
THREE_LEVELS = [
    {"frequency": "30min", "strategy": {"sbbEma": {}}},
    {"frequency": "1min", "strategy": {"twap": {}}},
]


def three_level_manifest(
    bundle: Path, signal: Path, start: str, end: str, engine: str, levels: bool
) -> Backtest:
    """day → 30min SBB-EMA → 1min TWAP with impact (``levels=False``: the same spec, daily executor)."""
    doc = kubequant_manifest(bundle, signal, start, end).to_manifest()
    doc["spec"]["executor"] = {
        "frequency": "day",
        "engine": engine,
        **({"levels": THREE_LEVELS} if levels else {}),
    }
    doc["spec"]["exchange"] = {**doc["spec"]["exchange"], "impact": IMPACT}
    return Backtest.model_validate(doc)


def cli_runs(runs: int, root: Path) -> tuple[list[float], list[float]]:
    """Whole ``kubequant run -f examples/backtest-nested.yaml`` vs the same file with a daily executor."""
    import subprocess

    import yaml

    example = Path(__file__).resolve().parent.parent / "examples" / "backtest-nested.yaml"
    doc = yaml.safe_load(example.read_text())
    doc["spec"]["executor"] = {"frequency": "day"}
    flat = root / "backtest-daily.yaml"
    flat.write_text(yaml.safe_dump(doc))
    cli = Path(sys.executable).parent / "kubequant"
    times: dict[Path, list[float]] = {example: [], flat: []}

    def run(path: Path) -> None:
        command = [str(cli), "run", "-f", str(path), "-o", "json", "--report-dir", str(root / "cli-report")]
        subprocess.run(command, check=True, capture_output=True, cwd=root)

    run(example)  # warm-up: the sample bundle (generated on first use), numba's cache
    for _ in range(runs):
        for path, out in times.items():
            began = time.perf_counter()
            run(path)
            out.append(time.perf_counter() - began)
    return times[example], times[flat]


def kubequant_manifest(bundle: Path, signal: Path, start: str, end: str) -> Backtest:
    return Backtest.model_validate(
        {
            "apiVersion": "kubequant.io/v1alpha1",
            "kind": "Backtest",
            "metadata": {"name": "nested-bench"},
            "spec": {
                "data": {"path": str(bundle)},
                "universe": {"market": "intraday"},
                "period": {"start": start, "end": end},
                "account": 10_000_000,
                "signal": {"file": {"path": str(signal)}},
                "strategy": {"topkDropout": {"topk": 10, "nDrop": 2, "riskDegree": 0.95}},
                "executor": {"frequency": "day", "levels": [{"frequency": "1min", "strategy": {"twap": {}}}]},
                "exchange": {"openCost": 0.0005, "closeCost": 0.0015, "minCost": 5, "limitThreshold": 0.095},
            },
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instruments", type=int, default=30)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cli-runs", type=int, default=0, help="whole kubequant run of the example, N times")
    args = parser.parse_args()
    from qlib.contrib.evaluate import risk_analysis

    from kubequant.workloads.backtest.runner import _backtest, init_qlib

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        root = Path(tmp)
        os.chdir(root)
        bundle = root / "bundle"
        spec = SampleSpec(
            instruments=max(args.instruments, 40),
            start="2021-01-01",
            end="2021-12-31",
            freqs=("day", "1min"),
            minute_instruments=args.instruments,
            minute_days=args.days + 2,
        )
        write_sample_bundle(bundle, spec)
        days = (bundle / "calendars" / "day.txt").read_text().split()
        start, end = days[-args.days - 1], days[-2]
        init_qlib(bundle, "cn", root)
        logging.getLogger("qlib").setLevel(logging.ERROR)
        scores = momentum_scores(bundle, days[-args.days - 30 :])
        signal = root / "scores.csv"
        scores.rename("score").to_csv(signal)
        bt = kubequant_manifest(bundle, signal, start, end)
        three = three_level_manifest(bundle, signal, start, end, "auto", levels=True)
        three_daily = three_level_manifest(bundle, signal, start, end, "auto", levels=False)
        three_qlib = three_level_manifest(bundle, signal, start, end, "qlib", levels=True)
        paths = {
            "single-level day (qlib)": lambda: plain_qlib(scores, start, end, nested=False),
            "kubequant nested day→1min": lambda: _backtest(bt.spec, scores)[0],
            "kubequant day, impact": lambda: _backtest(three_daily.spec, scores)[0],
            "kubequant day→30min SBB→1min, impact": lambda: _backtest(three.spec, scores)[0],
        }
        first: dict[str, float] = {}
        for name, run in paths.items():  # warm-up: qlib's caches, numba's cache (or its compilation)
            began = time.perf_counter()
            run()
            first[name] = time.perf_counter() - began
        times: dict[str, list[float]] = {name: [] for name in paths}
        reports: dict[str, pd.DataFrame] = {}
        for _ in range(args.repeats):
            for name, run in paths.items():
                began = time.perf_counter()
                reports[name] = run()
                times[name].append(time.perf_counter() - began)
        began = time.perf_counter()
        theirs = plain_qlib(scores, start, end, nested=True)
        reference_time = time.perf_counter() - began
        qlib_three: list[float] = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            theirs_three = _backtest(three_qlib.spec, scores)[0]
            qlib_three.append(time.perf_counter() - began)
        ours_three = reports["kubequant day→30min SBB→1min, impact"]
        three_bp = (
            ours_three["return"] - ours_three["cost"] - (theirs_three["return"] - theirs_three["cost"])
        ).abs().max() * 1e4
        example_times, flat_times = cli_runs(args.cli_runs, root) if args.cli_runs else ([], [])
        began = time.perf_counter()
        run_backtest(bt, root / "report")
        whole = time.perf_counter() - began
        ours = reports["kubequant nested day→1min"]
        diff_bp = (ours["return"] - ours["cost"] - (theirs["return"] - theirs["cost"])).abs().max() * 1e4
        ann = {
            name: risk_analysis(frame["return"] - frame["cost"], freq="day")["risk"]["annualized_return"]
            for name, frame in (("kubequant", ours), ("qlib nested", theirs))
        }
    median = {name: float(np.median(values)) for name, values in times.items()}
    base = median["single-level day (qlib)"]
    nested = median["kubequant nested day→1min"]
    print(
        f"instruments={args.instruments} days={args.days} (1-minute bars: {args.days * 240} steps per instrument),"
        f" medians of {args.repeats} runs"
    )
    print(
        f"{'single-level day (qlib)':<34} {base:8.3f} s   1.00×   (first run {first['single-level day (qlib)']:.3f} s)"
    )
    print(
        f"{'NestedExecutor day→1min (qlib)':<34} {reference_time:8.3f} s {reference_time / base:6.2f}×   (one run)"
    )
    print(
        f"{'kubequant nested day→1min':<34} {nested:8.3f} s {nested / base:6.2f}×"
        f"   (first run {first['kubequant nested day→1min']:.3f} s)"
    )
    print(
        f"{'kubequant run_backtest, whole':<34} {whole:8.3f} s {whole / base:6.2f}×   (with the comparison run and report)"
    )
    print(f"kubequant nested / single-level day: {nested / base:.2f}× (goal <= 1.2)")
    print(f"kubequant nested vs qlib's NestedExecutor: {reference_time / nested:.1f}× faster")
    print(
        f"largest daily net-return difference kubequant vs qlib NestedExecutor: {diff_bp:.4f} bp (goal < 1 bp)"
    )
    print(
        f"annualised net return: kubequant {ann['kubequant']:+.4f}, qlib NestedExecutor {ann['qlib nested']:+.4f}"
    )
    print()
    print("three levels: day → 30min SBB-EMA → 1min TWAP, Almgren–Chriss impact (median / worst of runs)")
    daily_three = times["kubequant day, impact"]
    compiled_three = times["kubequant day→30min SBB→1min, impact"]
    for name, values in (
        ("daily executor, same spec", daily_three),
        ("compiled 3 levels", compiled_three),
        ("qlib NestedExecutor 3 levels", qlib_three),
    ):
        print(f"{name:<34} {np.median(values):8.3f} s  worst {max(values):8.3f} s  ({len(values)} runs)")
    print(
        f"compiled 3 levels / daily executor: {np.median(compiled_three) / np.median(daily_three):.2f}× "
        f"(worst run {max(compiled_three) / np.median(daily_three):.2f}×; goal <= 1.2); "
        f"/ single-level day (qlib): {np.median(compiled_three) / base:.2f}×"
    )
    print(
        f"qlib NestedExecutor / compiled, 3 levels: {np.median(qlib_three) / np.median(compiled_three):.1f}× "
        f"(slowest compiled run {np.median(qlib_three) / max(compiled_three):.1f}×; goal >= 50)"
    )
    print(f"largest daily net-return difference, 3 levels, compiled vs qlib: {three_bp:.4f} bp (goal < 1 bp)")
    if example_times:
        print(
            f"kubequant run -f examples/backtest-nested.yaml: {np.median(example_times):.2f} s "
            f"(worst {max(example_times):.2f} s); same file, daily executor {np.median(flat_times):.2f} s "
            f"(worst {max(flat_times):.2f} s): {np.median(example_times) / np.median(flat_times):.2f}× (goal <= 1.2)"
        )
    print(
        f"load average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
