"""Compile the numba kernels ahead of time: ``kubequant precompile``, run when the image is built.

A pod's numba cache is an emptyDir, so every Backtest pod compiled its kernels cold before its first
feature (12-63 s on this project's machines). The image runs this once into a folder it ships, and
``KUBEQUANT_NUMBA_SEED`` names that folder at run time (``features/numba_cache.py`` copies it into the
pod's cache).

The kernels are compiled by the product's own path, not by calls made up for the purpose: numba
compiles one machine-code version per argument types and array layouts, and only the real path makes
the real ones. Two tiny Backtests on a synthetic market run end to end: Alpha158 features into a
day → 30min SBB-EMA → 1min TWAP stack with market impact, and Alpha360 features into day → 1min VWAP.
Together they reach every kernel of ``features/kernels.py``, ``backtest/slicing_kernel.py``,
``backtest/sbb_signal.py`` and ``backtest/impact_exchange.py`` (tests/integration/test_precompile.py
checks that a seeded process compiles none of them again).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEGMENTS = {
    "train": {"start": "2020-01-01", "end": "2020-06-30"},
    "valid": {"start": "2020-07-01", "end": "2020-08-31"},
    "test": {"start": "2020-09-01", "end": "2020-09-29"},
}
MODEL = {"class": "LGBModel", "kwargs": {"num_boost_round": 3, "num_leaves": 4, "num_threads": 1}}
SAMPLE = {
    "instruments": 8,
    "start": "2020-01-01",
    "end": "2020-09-30",
    "minuteBars": True,
    "minuteInstruments": 4,
    "minuteDays": 8,
}
IMPACT = {"model": "almgrenChriss", "permanent": 0.01, "temporary": 0.3, "beta": 0.5, "maxParticipation": 0.2}


def tiny_backtests() -> list[dict[str, Any]]:
    """The two manifests that reach every kernel (see the module doc)."""

    def backtest(
        name: str, handler: str, levels: list[dict[str, Any]], exchange: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "apiVersion": "kubequant.io/v1alpha1",
            "kind": "Backtest",
            "metadata": {"name": name},
            "spec": {
                "data": {"sample": SAMPLE},
                "universe": {"market": "intraday"},
                "period": {"start": "2020-09-21", "end": "2020-09-28"},
                "signal": {"model": {"handler": {"class": handler}, "model": MODEL, "segments": SEGMENTS}},
                "strategy": {"topkDropout": {"topk": 2, "nDrop": 1}},
                "executor": {"frequency": "day", "levels": levels},
                "exchange": exchange,
            },
        }

    return [
        backtest(
            "precompile-alpha158",
            "Alpha158",
            [
                {"frequency": "30min", "strategy": {"sbbEma": {}}},
                {"frequency": "1min", "strategy": {"twap": {}}},
            ],
            {"impact": IMPACT},
        ),
        backtest("precompile-alpha360", "Alpha360", [{"frequency": "1min", "strategy": {"vwap": {}}}], {}),
    ]


@dataclass(frozen=True)
class Precompiled:
    """What ``precompile`` left in the cache folder."""

    cache_dir: Path
    kernels: int  # numba index files: one per kernel compiled
    files: int
    seconds: float


def precompile() -> Precompiled:
    """Run the tiny Backtests so that numba compiles (and caches) every kernel; NUMBA_CACHE_DIR decides where."""
    from kubequant.manifests import parse_resource
    from kubequant.workloads.backtest.runner import run_backtest
    from kubequant.workloads.features import numba_cache

    started = time.perf_counter()
    cache = numba_cache.configure()
    with tempfile.TemporaryDirectory(prefix="kubequant-precompile-") as tmp:
        root = Path(tmp)
        previous = os.environ.get("KUBEQUANT_CACHE_DIR")
        os.environ["KUBEQUANT_CACHE_DIR"] = str(root / "data")  # the sample market: not kept
        try:
            for doc in tiny_backtests():
                bt = parse_resource(doc)
                run_backtest(bt, root / "reports" / bt.metadata.name)  # type: ignore[arg-type]
        finally:
            if previous is None:
                os.environ.pop("KUBEQUANT_CACHE_DIR", None)
            else:
                os.environ["KUBEQUANT_CACHE_DIR"] = previous
    files = [f for f in cache.rglob("*") if f.is_file()]
    return Precompiled(
        cache_dir=cache,
        kernels=sum(1 for f in files if f.suffix == ".nbi"),
        files=len(files),
        seconds=time.perf_counter() - started,
    )
