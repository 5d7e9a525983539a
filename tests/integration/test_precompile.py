"""Kernels compiled ahead of time (`kubequant precompile`) spare a fresh process every compilation.

A pod's numba cache is an emptyDir: without a seed each Backtest pod compiled its kernels cold. The
image runs `kubequant precompile` into a folder and sets KUBEQUANT_NUMBA_SEED to it. Here: precompile
into a seed folder, then a new process with an empty cache and the seed runs the same Backtests and
numba's own counters say it compiled nothing (every kernel loaded from the cache). Without the seed the
same process compiles them all (its cache is empty), so the test fails if seeding stops working.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

# Kernels no product path calls: the one-level kernel the unit tests drive (the levels run work_bars).
NOT_IN_THE_PRODUCT = {"slicing_kernel.slice_day"}

KUBEQUANT = str(Path(sys.executable).parent / "kubequant")

# Runs the precompile Backtests in a process whose cache is seeded, then reads numba's counters of every
# kernel: cache hits and misses (a miss is a compilation).
COUNT = r"""
import json, sys
from kubequant.workloads.precompile import precompile
done = precompile()
import numba.core.registry
from kubequant.workloads.features import kernels
from kubequant.workloads.backtest import impact_exchange, sbb_signal, slicing_kernel
stats = {}
for module in (kernels, slicing_kernel, sbb_signal, impact_exchange):
    for name, value in vars(module).items():
        if isinstance(value, numba.core.registry.CPUDispatcher) and value.__module__ == module.__name__:
            if value.targetoptions.get("inline") == "always":
                continue  # inlined into its callers: never compiled (nor cached) on its own
            s = value.stats
            stats[f"{module.__name__.rsplit('.', 1)[1]}.{name}"] = [
                sum(s.cache_hits.values()), sum(s.cache_misses.values())
            ]
print(json.dumps({"stats": stats, "seconds": done.seconds}))
"""


def test_a_seeded_process_compiles_no_kernel(tmp_path: Path) -> None:
    seed, fresh = tmp_path / "seed", tmp_path / "fresh"
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "KUBEQUANT_NUMBA_SEED")}
    started = time.perf_counter()
    out = subprocess.run(
        [KUBEQUANT, "precompile", "--cache-dir", str(seed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    cold = time.perf_counter() - started
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"into {seed}" in out.stdout, out.stdout
    assert len(list(seed.rglob("*.nbi"))) >= 15, out.stdout

    seeded = subprocess.run(
        [sys.executable, "-c", COUNT],
        env={**env, "NUMBA_CACHE_DIR": str(fresh), "KUBEQUANT_NUMBA_SEED": str(seed)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    report = json.loads(seeded.stdout.strip().splitlines()[-1])
    stats: dict[str, list[int]] = report["stats"]
    compiled = {name: misses for name, (_, misses) in stats.items() if misses}
    assert not compiled, f"compiled again although seeded: {compiled}"
    # Every kernel the product runs was compiled into the seed (a kernel called from another one is
    # not loaded on its own: its caller's machine code holds it). A new kernel the precompile Backtests
    # do not reach would be compiled in every pod: extend workloads/precompile.py's manifests.
    seeded_names = {f.name.split("-")[0] for f in seed.rglob("*.nbi")}
    unreached = sorted(set(stats) - seeded_names - NOT_IN_THE_PRODUCT)
    assert not unreached, f"not compiled by kubequant precompile: {unreached}"
    assert any(hits for hits, _ in stats.values()), "nothing was loaded from the cache"
    assert len(stats) >= 15, stats
    print(f"precompile (cold, whole command) {cold:.1f} s; the same runs seeded {report['seconds']:.1f} s")
