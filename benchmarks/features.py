"""qlib's Alpha158 against the compiled one (kubequant.workloads.features), measured side by side.

    .venv/bin/python benchmarks/features.py [--instruments 300,1000] [--runs 3]

For each size, a sample bundle (``kubequant data sample --instruments N``: 2020–2022, cached) and
the handler over one year (2022, with 2021 as look-back), each measurement in a fresh
subprocess: wall time of building the handler (load + processors, what ``DatasetH`` pays), the
process's peak RSS, and the largest relative difference between the two frames (NaN where both
are NaN counts as equal; any NaN/value disagreement is counted separately). The compiled path's
cold compile time (an empty numba cache) is reported apart from its run time. Goal: >= 10x at
1000 instruments, peak memory <= qlib's. Prints median and worst of the runs and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START, END = "2022-01-01", "2022-12-31"
KWARGS = {
    "instruments": "all",
    "start_time": START,
    "end_time": END,
    "fit_start_time": START,
    "fit_end_time": "2022-08-31",
}


def child(engine: str, bundle: str, out: str | None) -> None:
    """One measurement in this fresh process; prints a JSON line."""
    import logging

    import qlib

    qlib.init(provider_uri=bundle, region="cn", logging_level=logging.WARNING)
    from qlib.data.dataset.handler import DataHandlerLP

    warmup = 0.0
    if engine == "compiled":
        # Compile (or load from numba's cache) every kernel on a tiny panel, timed on its own.
        import numpy as np

        from kubequant.workloads.features import Alpha158
        from kubequant.workloads.features import kernels as K

        t0 = time.perf_counter()
        x = np.ones((1, 8))
        s, e = np.array([0]), np.array([7])
        K.rolling_sum(x, s, e, 3, True)
        K.rolling_std(x, s, e, 3)
        K.rolling_extreme(x, s, e, 3, True)
        K.rolling_quantile(x, s, e, 3, 0.5)
        K.rolling_rank_pct(x, s, e, 3)
        K.rolling_arg_extreme(x, s, e, 3, True)
        K.rolling_corr(x, x, s, e, 3)
        K.rolling_regression(x, s, e, 3, 0)
        K.shift(x.astype(np.float32), s, e, 1)
        K.shift(x, s, e, 1)
        warmup = time.perf_counter() - t0
        cls = Alpha158
    else:
        from qlib.contrib.data.handler import Alpha158 as cls  # type: ignore[assignment,no-redef]

    t0 = time.perf_counter()
    handler = cls(**KWARGS)
    wall = time.perf_counter() - t0
    raw = handler.fetch(data_key=DataHandlerLP.DK_R)
    if out:
        raw.to_pickle(out)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall_s": wall, "rss_mib": rss_mib, "warmup_s": warmup, "rows": len(raw)}))


def _run(engine: str, bundle: Path, out: Path | None = None, env: dict[str, str] | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", engine, "--bundle", str(bundle)]
    if out is not None:
        cmd += ["--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{engine} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def max_relative_difference(a_path: Path, b_path: Path) -> tuple[float, int, bool]:
    """(max relative difference where both are numbers, cells where only one is NaN, same index/columns)."""
    import numpy as np
    import pandas as pd

    a = pd.read_pickle(a_path)
    b = pd.read_pickle(b_path)
    same_shape = a.index.equals(b.index) and list(a.columns) == list(b.columns)
    if not same_shape:
        return float("inf"), -1, False
    x = a.to_numpy(np.float64)
    y = b.to_numpy(np.float64)
    one_nan = int((np.isnan(x) ^ np.isnan(y)).sum())
    both = np.isfinite(x) & np.isfinite(y)
    with np.errstate(all="ignore"):
        rel = np.abs(x - y)[both] / np.maximum(np.abs(x), np.abs(y))[both]
    rel = rel[np.isfinite(rel)]
    inf_mismatch = int(((np.isinf(x) | np.isinf(y)) & (x != y)).sum())
    return (float(rel.max()) if rel.size else 0.0), one_nan + inf_mismatch, True


def _fmt(values: list[float], unit: str) -> str:
    return f"median {statistics.median(values):8.2f}{unit}  worst {max(values):8.2f}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instruments", default="300,1000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", choices=["qlib", "compiled"])
    parser.add_argument("--bundle")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.bundle, args.out)
        return

    from kubequant.workloads.data.sample import SampleSpec, ensure_sample_bundle

    print(f"load average before: {os.getloadavg()}  cpus: {os.cpu_count()}")
    for n in (int(v) for v in args.instruments.split(",")):
        bundle = ensure_sample_bundle(SampleSpec(instruments=n))
        with tempfile.TemporaryDirectory() as tmp:
            tmpdir = Path(tmp)
            cold = _run("compiled", bundle, env={"NUMBA_CACHE_DIR": str(tmpdir / "numba-cold")})
            results: dict[str, list[dict]] = {"qlib": [], "compiled": []}
            for i in range(args.runs):
                for engine in ("qlib", "compiled"):  # interleaved: both see the same machine load
                    out = tmpdir / f"{engine}.pkl" if i == 0 else None
                    results[engine].append(_run(engine, bundle, out))
            rel, disagreements, same_shape = max_relative_difference(
                tmpdir / "qlib.pkl", tmpdir / "compiled.pkl"
            )
        q_wall = [r["wall_s"] for r in results["qlib"]]
        c_wall = [r["wall_s"] for r in results["compiled"]]
        ratios = [q / c for q, c in zip(q_wall, c_wall, strict=True)]
        print(
            f"\n== Alpha158, {n} instruments x 1 year ({START}..{END}), {results['qlib'][0]['rows']} rows, "
            f"{args.runs} runs"
        )
        print(
            f"qlib      wall {_fmt(q_wall, 's')}   peak RSS {_fmt([r['rss_mib'] for r in results['qlib']], ' MiB')}"
        )
        print(
            f"compiled  wall {_fmt(c_wall, 's')}   peak RSS "
            f"{_fmt([r['rss_mib'] for r in results['compiled']], ' MiB')}"
        )
        print(
            f"speed-up (qlib/compiled, per run pair): median {statistics.median(ratios):.1f}x  "
            f"worst {min(ratios):.1f}x"
        )
        print(
            f"compiled cold start: kernel compile {cold['warmup_s']:.2f}s (empty numba cache), then run "
            f"{cold['wall_s']:.2f}s; warm cache load {statistics.median(r['warmup_s'] for r in results['compiled']):.2f}s"
        )
        print(
            f"parity: same index/columns {same_shape}; max relative difference {rel:.3g}; "
            f"cells NaN/inf in one only: {disagreements}"
        )
        print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
