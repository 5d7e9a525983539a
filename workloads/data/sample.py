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
    DEFAULT_MARKET,
    SYMBOL_RE,
    BundleSummary,
    BundleWriter,
    is_kubequant_bundle,
)
from kubequant.workloads.data.sessions import INTRADAY_FREQ, SESSIONS_TEXT, bars_per_day, minute_calendar
from kubequant.workloads.data.synthetic import (
    FIELDS,
    LIMIT,
    SyntheticMarket,
    simulate_market,
    trading_calendar,
)

__all__ = ["BundleSummary", "SampleSpec", "ensure_sample_bundle", "sample_cache_root", "write_sample_bundle"]

GENERATOR = "kubequant.workloads.data.sample"
# Bump when the generator's output changes for the same spec: it keys the on-disk cache.
GENERATOR_VERSION = 1
# The same for the 1-minute bars (only specs with minute bars carry it, so daily caches survive a bump).
INTRADAY_GENERATOR_VERSION = 1
FIRST_YEAR = 2020
FREQS: tuple[str, ...] = ("day", INTRADAY_FREQ)  # what --freq accepts, in canonical order
INTRADAY_MARKET = "intraday"  # instruments/intraday.txt: the instruments that have minute bars
# Random streams of the minute bars, apart from the daily market's (which seeds with the bare seed).
_INSTRUMENT_STREAM, _BENCHMARK_STREAM = 1, 2


@dataclass(frozen=True)
class SampleSpec:
    """What synthetic market to generate; equal specs give byte-identical bundles."""

    instruments: int = 300
    start: str = "2020-01-01"
    end: str = "2022-12-31"
    seed: int = 42
    benchmark: str = "SYNIDX"
    # Bar frequencies to write: "day" always, "1min" adds minute bars derived from the daily ones.
    freqs: tuple[str, ...] = ("day",)
    # Minute bars are big (240 per day): only for this many instruments (the first that trade
    # in the window) over this many last trading days.
    minute_instruments: int = 50
    minute_days: int = 60

    def __post_init__(self) -> None:
        if not isinstance(self.instruments, int) or not 1 <= self.instruments <= 9999:
            raise ValidationError("must be between 1 and 9999", where="sample.instruments")
        freqs = (self.freqs,) if isinstance(self.freqs, str) else tuple(self.freqs)
        unknown = [f for f in freqs if f not in FREQS]
        if unknown or "day" not in freqs:
            what = f"unknown frequency {unknown[0]!r}" if unknown else "day is missing"
            raise ValidationError(
                what,
                where="sample.freqs",
                fix="use day or day,1min (minute bars are derived from the daily bars)",
            )
        object.__setattr__(self, "freqs", tuple(f for f in FREQS if f in freqs))
        for name in ("minute_instruments", "minute_days"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 9999:
                raise ValidationError("must be between 1 and 9999", where=f"sample.{name}")
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

    @property
    def has_minutes(self) -> bool:
        """Whether the bundle gets 1-minute bars."""
        return INTRADAY_FREQ in self.freqs

    @classmethod
    def from_cli(
        cls,
        instruments: int = 300,
        years: int | None = None,
        seed: int = 42,
        freqs: tuple[str, ...] = ("day",),
        minute_instruments: int = 50,
        minute_days: int = 60,
    ) -> SampleSpec:
        """The spec for ``kubequant data sample``: ``years=N`` means 2020-01-01 through 31 Dec of year 2020+N-1."""
        if years is not None and years < 1:
            raise ValidationError("must be at least 1", where="--years")
        dates = (
            {}
            if years is None
            else {"start": f"{FIRST_YEAR}-01-01", "end": f"{FIRST_YEAR + years - 1}-12-31"}
        )
        return cls(
            instruments=instruments,
            seed=seed,
            freqs=freqs,
            minute_instruments=minute_instruments,
            minute_days=minute_days,
            **dates,
        )

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-able values; the minute settings only when there are minute bars."""
        spec = dataclasses.asdict(self)
        if not self.has_minutes:  # they shape nothing then: daily specs keep their old form and hash
            for name in ("freqs", "minute_instruments", "minute_days"):
                spec.pop(name)
        else:
            spec["freqs"] = list(self.freqs)
        return spec

    def short_hash(self) -> str:
        """A short stable hash of the spec and the generator version (names the cache folder)."""
        versions = {"generator": GENERATOR_VERSION}
        if self.has_minutes:
            versions["intraday_generator"] = INTRADAY_GENERATOR_VERSION
        payload = json.dumps({"spec": self.to_dict(), **versions}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def write_sample_bundle(out: Path, spec: SampleSpec | None = None) -> BundleSummary:
    """Generate the synthetic market for ``spec`` and write it as a qlib bundle at ``out``."""
    spec = spec or SampleSpec()
    market = simulate_market(spec.instruments, trading_calendar(spec.start, spec.end), spec.seed)
    benchmark = spec.benchmark.upper()
    sectors_csv = "symbol,sector\n" + "".join(
        f"{s},{sec}\n" for s, sec in zip(market.symbols, market.sectors, strict=True)
    )
    window = _minute_window(market, spec) if spec.has_minutes else None
    with_minutes = set(window[1]) if window else set()
    # Transpose once so each instrument's series is contiguous.
    by_instrument = {name: np.ascontiguousarray(market.fields[name].T) for name in FIELDS}
    with BundleWriter(Path(out), market.calendar, freq="day") as writer:
        for i, symbol in enumerate(market.symbols):
            lo, hi = int(market.first[i]), int(market.last[i]) + 1
            markets = (DEFAULT_MARKET, INTRADAY_MARKET) if i in with_minutes else (DEFAULT_MARKET,)
            writer.add_instrument(
                symbol, lo, {name: by_instrument[name][i, lo:hi] for name in FIELDS}, markets=markets
            )
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
        notes = [f"Benchmark {benchmark} (equal-weighted, not in instruments/all.txt)."]
        if window is not None:
            meta["intraday_generator_version"] = INTRADAY_GENERATOR_VERSION
            notes.append(_write_minutes(writer, market, spec.seed, benchmark, *window))
        return writer.commit(meta, notes=notes)


def _minute_window(market: SyntheticMarket, spec: SampleSpec) -> tuple[int, list[int]]:
    """First day of the minute window, and the instruments that get minute bars (the first that trade in it)."""
    first_day = max(0, len(market.calendar) - spec.minute_days)
    trades = np.isfinite(market.fields["close"][first_day:]).any(axis=0)
    return first_day, [int(i) for i in np.flatnonzero(trades)[: spec.minute_instruments]]


def _write_minutes(
    writer: BundleWriter,
    market: SyntheticMarket,
    seed: int,
    benchmark: str,
    first_day: int,
    instruments: list[int],
) -> str:
    """Add the 1-minute calendar and bars of the window; returns a line for the summary."""
    from kubequant.workloads.data.intraday import simulate_minutes

    days = market.calendar[first_day:]
    writer.add_calendar(INTRADAY_FREQ, minute_calendar(days))
    n = bars_per_day()

    def write(symbol: str, daily: dict[str, np.ndarray], limit: float | None, stream: list[int]) -> None:
        close = daily["close"]
        last_close = pd.Series(close).ffill().to_numpy()
        prev_close = np.concatenate([[np.nan], last_close[:-1]])[first_day:]  # NaN before the first bar
        ok = np.isfinite(close[first_day:])
        bars = {
            k: daily[k][first_day:][ok] for k in ("open", "high", "low", "close", "volume", "vwap", "factor")
        }
        rng = np.random.default_rng([seed, *stream])
        minutes = simulate_minutes(bars, prev_close[ok], rng, limit=limit)
        # The listing within the window, as the daily files span the listing: a suspended day at
        # either end of the window is NaN bars, not a shorter series.
        listed = np.flatnonzero(np.isfinite(close))
        lo, hi = max(int(listed[0]) - first_day, 0), int(listed[-1]) - first_day + 1
        fields = {}
        for name, values in minutes.items():
            grid = np.full((len(days), n), np.nan)  # suspended days keep no minute bars
            grid[ok] = values
            fields[name] = grid[lo:hi].ravel()
        writer.add_instrument(symbol, lo * n, fields, freq=INTRADAY_FREQ)

    for i in instruments:
        daily = {name: market.fields[name][:, i] for name in FIELDS}
        write(market.symbols[i], daily, LIMIT, [_INSTRUMENT_STREAM, i])
    write(benchmark, market.benchmark, None, [_BENCHMARK_STREAM])
    return (
        f"1-minute bars ({n} a day, sessions {SESSIONS_TEXT}) for {len(instruments)} instruments "
        f"(instruments/{INTRADAY_MARKET}.txt) and {benchmark} over the last {len(days)} trading days "
        f"({days[0].date()} … {days[-1].date()})."
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
