"""Bundle loading: ``D.features`` with qlib's dataset provider against kubequant's (memory-mapped ``.bin`` files).

    .venv/bin/python benchmarks/loading.py [--instruments 300,1000] [--years 1,3] [--runs 3]

For each size, the sample bundle (``kubequant data sample --instruments N``: 2020–2022, cached), the
fields a Backtest's exchange and the paper broker read (OHLCV, vwap, factor) over the last 1 or 3
years, warm OS cache (one untimed read first). Each measurement runs in a fresh subprocess, the two
readers interleaved: wall time of ``D.features`` with qlib's ``LocalDatasetProvider`` and with
``kubequant.workloads.data.bars.BundleDatasetProvider`` (what the workloads' ``qlib.init`` sets), and
whether the frames are identical
(``pandas.testing.assert_frame_equal``, exact). qlib runs with its default worker processes
(``kernels``: CPUs - 2, at least 1), as a user's ``qlib.init`` would. Goal: >= 3x. Prints median
and worst of the runs and the load average.
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

FIELDS = ["$open", "$high", "$low", "$close", "$volume", "$vwap", "$factor"]
END = "2022-12-31"


def child(reader: str, bundle: str, start: str, out: str | None) -> None:
    """One measurement in this fresh process; prints a JSON line."""
    import logging

    import qlib

    from kubequant.workloads.data.bars import DATASET_PROVIDER

    provider = {} if reader == "qlib" else {"dataset_provider": DATASET_PROVIDER}
    qlib.init(provider_uri=bundle, region="cn", logging_level=logging.WARNING, **provider)
    from qlib.data import D

    codes = D.list_instruments(D.instruments("all"), as_list=True)
    D.features(codes, FIELDS, start, END)  # warm: the OS cache, qlib's calendar and instrument caches
    t0 = time.perf_counter()
    frame = D.features(codes, FIELDS, start, END)
    wall = time.perf_counter() - t0
    if out:
        frame.to_pickle(out)
    print(json.dumps({"wall_s": wall, "rows": len(frame)}))


def _run(reader: str, bundle: Path, start: str, out: Path | None) -> dict:
    argv = [sys.executable, __file__, "--child", reader, str(bundle), start, str(out or "")]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _same(a: Path, b: Path) -> bool:
    import pandas as pd

    try:
        pd.testing.assert_frame_equal(pd.read_pickle(b), pd.read_pickle(a), check_exact=True)
    except AssertionError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instruments", default="300,1000")
    parser.add_argument("--years", default="1,3")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        reader, bundle, start, out = a.child
        child(reader, bundle, start, out or None)
        return
    from kubequant.workloads.data.sample import SampleSpec, ensure_sample_bundle

    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    rows = []
    for n in (int(x) for x in a.instruments.split(",")):
        bundle = ensure_sample_bundle(SampleSpec(instruments=n))
        for years in (int(y) for y in a.years.split(",")):
            start = f"{2023 - years}-01-01"
            walls: dict[str, list[float]] = {"qlib": [], "kubequant": []}
            identical = True
            with tempfile.TemporaryDirectory() as tmp:
                for run in range(a.runs):
                    for reader in ("qlib", "kubequant"):
                        out = Path(tmp) / f"{reader}.pkl" if run == 0 else None
                        walls[reader].append(_run(reader, bundle, start, out)["wall_s"])
                identical = _same(Path(tmp) / "qlib.pkl", Path(tmp) / "kubequant.pkl")
            ratios = sorted(q / k for q, k in zip(walls["qlib"], walls["kubequant"], strict=True))
            rows.append((n, years, walls, ratios, identical))
            q, k = walls["qlib"], walls["kubequant"]
            print(
                f"{n:5d} instruments x {years} yr: qlib {statistics.median(q):6.2f} s (worst {max(q):.2f}), "
                f"kubequant {statistics.median(k):6.3f} s (worst {max(k):.3f}); speed-up median "
                f"{statistics.median(ratios):5.1f}x (worst {ratios[0]:.1f}x); frames identical: {identical}; "
                f"goal >= 3x: {'met' if ratios[0] >= 3 and identical else 'MISSED'}"
            )
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
