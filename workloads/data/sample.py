"""The built-in demo data: a deterministic synthetic market written as a qlib bundle, cached on disk."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kubequant.errors import ValidationError
from kubequant.workloads.data.qlib_format import (
    SYMBOL_RE,
    BundleSummary,
    BundleWriter,
    is_kubequant_bundle,
)
from kubequant.workloads.data.synthetic import FIELDS, simulate_market, trading_calendar

__all__ = ["BundleSummary", "SampleSpec", "ensure_sample_bundle", "sample_cache_root", "write_sample_bundle"]

GENERATOR = "kubequant.workloads.data.sample"
# Bump when the generator's output changes for the same spec: it keys the on-disk cache.
GENERATOR_VERSION = 1
FIRST_YEAR = 2020


@dataclass(frozen=True)
class SampleSpec:
    """What synthetic market to generate; equal specs give byte-identical bundles."""

    instruments: int = 300
    start: str = "2020-01-01"
    end: str = "2022-12-31"
    seed: int = 42
    benchmark: str = "SYNIDX"

    def __post_init__(self) -> None:
        if not isinstance(self.instruments, int) or not 1 <= self.instruments <= 9999:
            raise ValidationError("must be between 1 and 9999", where="sample.instruments")
        try:
            start, end = pd.Timestamp(self.start), pd.Timestamp(self.end)
        except (ValueError, TypeError) as exc:
            raise ValidationError(
                f"not a date: {exc}", where="sample.start/end", fix="use YYYY-MM-DD"
            ) from exc
        if len(trading_calendar(self.start, self.end)) < 2 or end <= start:
            raise ValidationError(
                f"{self.start} … {self.end} holds fewer than two trading days", where="sample.end"
            )
        if not SYMBOL_RE.fullmatch(self.benchmark) or self.benchmark.upper().startswith("SYN0"):
            raise ValidationError(
                f"benchmark name {self.benchmark!r} is not usable", where="sample.benchmark"
            )

    @classmethod
    def from_cli(cls, instruments: int = 300, years: int | None = None, seed: int = 42) -> SampleSpec:
        """The spec for ``kubequant data sample``: ``years=N`` means 2020-01-01 through 31 Dec of year 2020+N-1."""
        if years is None:
            return cls(instruments=instruments, seed=seed)
        if years < 1:
            raise ValidationError("must be at least 1", where="--years")
        return cls(
            instruments=instruments,
            start=f"{FIRST_YEAR}-01-01",
            end=f"{FIRST_YEAR + years - 1}-12-31",
            seed=seed,
        )

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-able values."""
        return dataclasses.asdict(self)

    def short_hash(self) -> str:
        """A short stable hash of the spec and the generator version (names the cache folder)."""
        payload = json.dumps({"spec": self.to_dict(), "generator": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def write_sample_bundle(out: Path, spec: SampleSpec | None = None) -> BundleSummary:
    """Generate the synthetic market for ``spec`` and write it as a qlib bundle at ``out``."""
    spec = spec or SampleSpec()
    market = simulate_market(spec.instruments, trading_calendar(spec.start, spec.end), spec.seed)
    benchmark = spec.benchmark.upper()
    sectors_csv = "symbol,sector\n" + "".join(
        f"{s},{sec}\n" for s, sec in zip(market.symbols, market.sectors, strict=True)
    )
    # Transpose once so each instrument's series is contiguous.
    by_instrument = {name: np.ascontiguousarray(market.fields[name].T) for name in FIELDS}
    with BundleWriter(Path(out), market.calendar, freq="day") as writer:
        for i, symbol in enumerate(market.symbols):
            lo, hi = int(market.first[i]), int(market.last[i]) + 1
            writer.add_instrument(symbol, lo, {name: by_instrument[name][i, lo:hi] for name in FIELDS})
        # The benchmark has features (so D.features([benchmark], ...) works) but is not in the universe.
        writer.add_instrument(benchmark, 0, {name: market.benchmark[name] for name in FIELDS}, markets=())
        writer.add_file("meta/sectors.csv", sectors_csv)
        meta = {
            "generator": GENERATOR,
            "generator_version": GENERATOR_VERSION,
            "spec": spec.to_dict(),
            "benchmark": benchmark,
            "sectors": "meta/sectors.csv",
        }
        return writer.commit(
            meta, notes=(f"Benchmark {benchmark} (equal-weighted, not in instruments/all.txt).",)
        )


def sample_cache_root(cache_dir: Path | None = None) -> Path:
    """Where sample bundles are cached: ``cache_dir``, else $KUBEQUANT_CACHE_DIR, else ~/.cache/kubequant."""
    root = cache_dir or os.environ.get("KUBEQUANT_CACHE_DIR") or Path.home() / ".cache" / "kubequant"
    return Path(root).expanduser() / "data"


def ensure_sample_bundle(spec: SampleSpec | None = None, cache_dir: Path | None = None) -> Path:
    """Return the cached sample bundle for ``spec``, generating it on first use (safe across processes)."""
    spec = spec or SampleSpec()
    root = sample_cache_root(cache_dir)
    target = root / f"sample-{spec.short_hash()}"
    if is_kubequant_bundle(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / f".{target.name}.lock"):
        # Another process may have finished it while we waited for the lock.
        if not is_kubequant_bundle(target):
            write_sample_bundle(target, spec)
    return target


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive fcntl lock on ``path`` for the duration of the block."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
