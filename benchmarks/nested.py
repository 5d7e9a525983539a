"""Nested execution cost: single-level day vs qlib's NestedExecutor day→1min vs kubequant's nested path.

    .venv/bin/python benchmarks/nested.py [--instruments 30] [--days 20] [--repeats 3]

One sample bundle with 1-minute bars, one signal (20-day momentum from the daily closes), one
TopkDropout strategy; every path runs in this process. Timed: qlib's ``backtest()`` call for the
single-level day and the NestedExecutor day→1min TWAP (the reference), and kubequant's backtest
stage (``runner._backtest``: the compiled day→1min TWAP level on a MinuteBackedExchange) — the same
scope. The fast paths run once untimed first (qlib's caches, numba's compiled-code cache), then
``--repeats`` times alternating; medians are printed. Also printed: kubequant's whole ``run_backtest``
(signal file, backtest, execution measures, the single-level comparison run, report), for scale.
Prints the ratio of kubequant's nested backtest to the single-level daily time (goal <= 1.2) and how
far its results are from qlib's NestedExecutor on the same inputs (goal: within 1 bp).
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
        paths = {
            "single-level day (qlib)": lambda: plain_qlib(scores, start, end, nested=False),
            "kubequant nested day→1min": lambda: _backtest(bt.spec, scores)[0],
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


if __name__ == "__main__":
    main()
