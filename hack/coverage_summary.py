"""Coverage of the last `make test` per package: lines and branches, from the combined data file.

    python hack/coverage_summary.py [--data-file build/coverage/.coverage]

Prints one row per package folder (kubequant/, kubequant/api, operator/, operator/handlers,
workloads/trading/node, ...) and the totals, and writes the HTML report (build/coverage/html).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import coverage

REPO = Path(__file__).resolve().parent.parent
TOP = ("kubequant", "operator", "workloads")


def package_of(path: Path) -> str:
    """``workloads/trading/node`` for ``workloads/trading/node/runtime.py``: top folder and at most two more."""
    rel = path.relative_to(REPO)
    return "/".join(rel.parts[: min(len(rel.parts) - 1, 3)]) or rel.parts[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-file", default=str(REPO / "build/coverage/.coverage"))
    parser.add_argument("--html", default=str(REPO / "build/coverage/html"))
    args = parser.parse_args(argv)
    cov = coverage.Coverage(data_file=args.data_file, config_file=str(REPO / "pyproject.toml"))
    cov.load()
    rows: dict[str, list[int]] = defaultdict(
        lambda: [0, 0, 0, 0, 0]
    )  # files, stmts, missed, branches, missed
    measured = {
        Path(name)
        for name in cov.get_data().measured_files()
        if Path(name).is_relative_to(REPO) and Path(name).relative_to(REPO).parts[0] in TOP
    }
    # A module no test imported is in no data file: it counts, every line of it missed.
    every = {p for top in TOP for p in (REPO / top).rglob("*.py") if "__pycache__" not in p.parts}
    for path in sorted(measured | every):
        name = str(path)
        numbers = cov._analyze(name).numbers  # coverage's own per-file counts (its report uses them too)
        for key in (package_of(path), path.relative_to(REPO).parts[0], "TOTAL"):
            row = rows[key]
            row[0] += 1
            row[1] += numbers.n_statements
            row[2] += numbers.n_missing
            row[3] += numbers.n_branches
            row[4] += numbers.n_missing_branches

    def pct(total: int, missed: int) -> str:
        return f"{100.0 * (total - missed) / total:5.1f}%" if total else "    -"

    print(f"{'package':<32} {'files':>5} {'lines':>7} {'branches':>9}   (statements, branches)")
    order = sorted(k for k in rows if k != "TOTAL" and "/" in k) + [k for k in TOP if k in rows] + ["TOTAL"]
    for key in order:
        if key not in rows:
            continue
        files, stmts, missed, branches, bmissed = rows[key]
        rule = key in TOP or key == "TOTAL"
        print(
            f"{('== ' + key) if rule else key:<32} {files:>5} {pct(stmts, missed):>7} {pct(branches, bmissed):>9}"
            f"   ({stmts}, {branches})"
        )
    cov.html_report(directory=args.html, skip_empty=True)
    print(f"HTML report: {args.html}/index.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
