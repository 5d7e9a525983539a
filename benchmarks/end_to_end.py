"""The demo's Backtest end to end (train + predict + backtest + report): qlib's paths against kubequant's defaults.

    .venv/bin/python benchmarks/end_to_end.py [--manifest examples/backtest.yaml] [--runs 3]

Each run is a fresh subprocess calling ``run_backtest`` on the manifest (the built-in sample by
default: 300 stocks, 2020–2022), the two setups interleaved:

- qlib: ``spec.signal.model.engine: qlib`` (qlib's Alpha158 handler) and qlib's own dataset provider
  (``D.features`` through ``LocalDatasetProvider``) for the Exchange's quote and the bars;
- kubequant: the defaults (``engine: auto``: the compiled Alpha158; ``BundleDatasetProvider``: raw
  fields memory-mapped from the ``.bin`` files).

Prints wall time per setup (median, worst), each stage's share (the runner's own laps: data, signal
= features + training + prediction, backtest, report), the whole-run speed-up, and whether the
results are identical (every figure of ``.status.results`` and the trades). Goal: >= 3x, identical.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QLIB_PROVIDER = {"class": "LocalDatasetProvider", "module_path": "qlib.data.data"}


def child(setup: str, manifest: str, out: str) -> None:
    """One run in this fresh process; writes the results and prints a JSON line."""
    import yaml

    from kubequant.api import Backtest
    from kubequant.workloads.backtest.runner import run_backtest
    from kubequant.workloads.data import bars

    doc = yaml.safe_load(Path(manifest).read_text())
    if setup == "qlib":
        doc["spec"]["signal"]["model"]["engine"] = "qlib"
        bars.DATASET_PROVIDER = QLIB_PROVIDER  # the runner reads it when it initialises qlib
    bt = Backtest.model_validate(doc)
    t0 = time.perf_counter()
    outcome = run_backtest(bt, report_dir=Path(out))
    wall = time.perf_counter() - t0
    results = (
        outcome.results.model_dump(mode="json") if hasattr(outcome.results, "model_dump") else outcome.results
    )
    print(json.dumps({"wall_s": wall, "timings": outcome.timings, "results": results}))


def _run(setup: str, manifest: Path, out: Path) -> dict:
    argv = [sys.executable, __file__, "--child", setup, str(manifest), str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=out.parent)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _trades(report: Path) -> str:
    found = sorted(report.rglob("trades.csv"))
    return found[0].read_text() if found else ""


def _differences(a: object, b: object, path: str = "results") -> list[str]:
    """Paths where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{path}.{key}")
        return out
    if isinstance(a, str) and isinstance(b, str) and "kq-e2e-bench-" in a and "kq-e2e-bench-" in b:
        return []  # where each run wrote its report: different folders by design
    return [] if a == b else [f"{path} ({a!r} vs {b!r})"[:200]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=REPO / "examples" / "backtest.yaml")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        child(*a.child)
        return
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    runs: dict[str, list[dict]] = {"qlib": [], "kubequant": []}
    with tempfile.TemporaryDirectory(prefix="kq-e2e-bench-") as tmp:
        for run in range(a.runs):
            for setup in ("qlib", "kubequant"):
                out = Path(tmp) / f"{setup}-{run}"
                got = _run(setup, a.manifest.resolve(), out)
                got["trades"] = _trades(out)
                runs[setup].append(got)
                print(f"  run {run + 1} {setup:9s} {got['wall_s']:6.1f} s  {got['timings']}", flush=True)
        first_q, first_k = runs["qlib"][0], runs["kubequant"][0]
        differing = _differences(first_q["results"], first_k["results"])
        if first_q["trades"] != first_k["trades"]:
            differing.append("trades.csv")
        identical = not differing
        if differing:
            print(f"  differ: {', '.join(differing)}")
    for setup, got in runs.items():
        walls = [g["wall_s"] for g in got]
        stages = {k: statistics.median(g["timings"].get(k, 0.0) for g in got) for k in got[0]["timings"]}
        total = sum(stages.values()) or 1.0
        shares = ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f} %)" for k, v in stages.items())
        print(f"{setup:9s}: {statistics.median(walls):6.1f} s (worst {max(walls):.1f}); stages: {shares}")
    ratios = sorted(q["wall_s"] / k["wall_s"] for q, k in zip(runs["qlib"], runs["kubequant"], strict=True))
    print(
        f"speed-up: median {statistics.median(ratios):.2f}x (worst {ratios[0]:.2f}x); results identical: "
        f"{identical}; goal >= 3x: {'met' if ratios[0] >= 3 and identical else 'MISSED'}"
    )
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
