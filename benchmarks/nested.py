"""Nested execution cost: single-level day vs qlib's NestedExecutor day→1min vs kubequant's nested path.

    .venv/bin/python benchmarks/nested.py [--instruments 30] [--days 20]

One sample bundle with 1-minute bars, one signal (20-day momentum from the daily closes), one
TopkDropout strategy; every path runs in this process. Prints wall times, the ratio of the
kubequant nested path to the single-level daily time (goal <= 1.2), and how far kubequant's
results are from qlib's NestedExecutor on the same inputs (goal: within 1 bp).
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
    args = parser.parse_args()
    from qlib.contrib.evaluate import risk_analysis

    from kubequant.workloads.backtest.runner import init_qlib

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
        timings: dict[str, float] = {}
        reports: dict[str, pd.DataFrame] = {}
        for name, run in (
            ("single-level day (qlib)", lambda: plain_qlib(scores, start, end, nested=False)),
            ("NestedExecutor day→1min (qlib)", lambda: plain_qlib(scores, start, end, nested=True)),
            (
                "kubequant nested day→1min",
                lambda: run_backtest(kubequant_manifest(bundle, signal, start, end), root / "report"),
            ),
        ):
            began = time.perf_counter()
            out = run()
            timings[name] = time.perf_counter() - began
            if isinstance(out, pd.DataFrame):
                reports[name] = out
        ours = pd.read_csv(root / "report" / "report.csv", index_col="datetime", parse_dates=True)
        theirs = reports["NestedExecutor day→1min (qlib)"]
        diff_bp = (ours["return"] - ours["cost"] - (theirs["return"] - theirs["cost"])).abs().max() * 1e4
        ann = {
            "kubequant": risk_analysis(ours["return"] - ours["cost"], freq="day")["risk"][
                "annualized_return"
            ],
            "qlib nested": risk_analysis(theirs["return"] - theirs["cost"], freq="day")["risk"][
                "annualized_return"
            ],
        }
    base = timings["single-level day (qlib)"]
    print(
        f"instruments={args.instruments} days={args.days} (1-minute bars: {args.days * 240} steps per instrument)"
    )
    for name, seconds in timings.items():
        print(f"{name:<32} {seconds:8.2f} s   {seconds / base:6.2f}× single-level")
    print(
        f"kubequant nested / single-level day: {timings['kubequant nested day→1min'] / base:.2f}× (goal <= 1.2)"
    )
    print(
        f"largest daily net-return difference kubequant vs qlib NestedExecutor: {diff_bp:.4f} bp (goal < 1 bp)"
    )
    print(
        f"annualised net return: kubequant {ann['kubequant']:+.4f}, qlib NestedExecutor {ann['qlib nested']:+.4f}"
    )


if __name__ == "__main__":
    main()
