"""The operator under cluster faults: time to converge, Events per object, duplicates and memory (issue 17).

    .venv/bin/python benchmarks/operator_faults.py [--faults none,apiserver,watchcut,etcd,apf] [--repeat 3]
                                                   [--batch 20] [--etcd-pause 30]

Starts a separate cluster of hack/dev-cluster.sh (``kubequant-faults-bench`` in
build/bench-fault-cluster; never the shared .dev-cluster), the operator as the chart's ServiceAccount
behind a real Toxiproxy, and runs each fault ``--repeat`` times over a batch of suspended Backtests
(``tests/e2e/cluster_faults.py``, the code of ``tests/e2e/test_operator_cluster_faults.py``):

- none: the reference, measured first in the same run;
- apiserver: the API server SIGKILLed once the operator made its first Job, started again;
- watchcut: the operator's connections (watches included) cut by Toxiproxy while the batch is created;
- etcd: etcd SIGSTOPped ``--etcd-pause`` seconds mid-batch;
- apf: API Priority and Fairness rejecting the operator's requests (429) until the batch converged.

Per fault: seconds from the end of the fault to the whole batch converged (median and worst of the
runs, and the median's ratio to the reference's), seconds from the first create, the most Events
about one Backtest, Backtests with a second Job (or any ConfigMap), and the operator's RSS before and after.
The cluster is removed at the end (``--keep`` leaves it up for another run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from cluster_faults import FAULTS, FaultCluster, Measurement, operator_rig  # noqa: E402


def row(name: str, runs: list[Measurement], reference: float | None) -> str:
    after = [m.converge_seconds for m in runs]
    total = [m.total_seconds for m in runs]
    med = statistics.median(after)
    ratio = f"{med / reference:5.1f}x" if reference else "    -"
    dups = sum(len(m.duplicates) for m in runs)
    extra = "; ".join(
        f"{k}={v}" for m in runs[:1] for k, v in m.extra.items() if k not in ("events", "reasons")
    )
    return (
        f"{name:<10} {len(runs):>4} {med:>8.1f} {max(after):>7.1f} {ratio} {statistics.median(total):>8.1f} "
        f"{max(total):>7.1f} {max(m.max_events for m in runs):>7} {dups:>5}  {extra}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", default="none,apiserver,watchcut,etcd,apf")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--etcd-pause", type=float, default=30.0)
    parser.add_argument("--keep", action="store_true", help="leave the cluster up at the end")
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        parser.error(f"--faults: unknown {', '.join(unknown)}; list some of {', '.join(FAULTS)}")
    if args.repeat < 1 or args.batch < 1:
        parser.error("--repeat and --batch: use 1 or more")
    if "none" in faults:  # the reference first
        faults.remove("none")
    faults.insert(0, "none")
    cluster = FaultCluster("kubequant-faults-bench", REPO / "build" / "bench-fault-cluster")
    print(f"starting the separate cluster {cluster.name} ({cluster.state_dir})", file=sys.stderr)
    cluster.up()
    results: dict[str, list[Measurement]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp, operator_rig(cluster, Path(tmp)) as rig:
            rss_before = 0.0
            for fault in faults:
                for i in range(args.repeat):
                    kwargs: dict[str, float] = {"n": args.batch}
                    if fault == "etcd":
                        kwargs["pause_seconds"] = args.etcd_pause
                    m = FAULTS[fault](rig, **kwargs)
                    print(
                        f"  {fault} run {i + 1}: {m.converge_seconds:.1f} s after the fault, "
                        f"operator RSS {rig.rss_mb():.1f} MiB",
                        file=sys.stderr,
                    )
                    results.setdefault(fault, []).append(m)
                if fault == "none":
                    rss_before = rig.rss_mb()
            rss_after = rig.rss_mb()
    finally:
        if not args.keep:
            cluster.down()
    reference = statistics.median(m.converge_seconds for m in results["none"])
    print(f"batch of {args.batch} suspended Backtests, {args.repeat} runs per fault")
    print(
        f"{'fault':<10} {'runs':>4} {'conv.med':>8} {'worst':>7} {'ratio':>6} {'tot.med':>8} {'worst':>7} "
        f"{'events':>7} {'dups':>5}  extra"
    )
    for fault, runs in results.items():
        print(row(fault, runs, reference if fault != "none" else None))
    print(f"operator RSS: {rss_before:.1f} MiB after the reference, {rss_after:.1f} MiB after every fault")
    return 0


if __name__ == "__main__":
    sys.exit(main())
