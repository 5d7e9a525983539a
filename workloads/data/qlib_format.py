"""Writer for qlib's on-disk binary layout (what qlib's ``dump_bin`` script produces).

Layout, as read by ``qlib.data.storage.file_storage``::

    calendars/<freq>.txt                 one timestamp per line
    instruments/<market>.txt             SYMBOL<TAB>start<TAB>end
    features/<symbol lower>/<field>.<freq>.bin
                                         little-endian float32: [start index, v0, v1, ...]
    meta/bundle.json                     kubequant's manifest (not read by qlib)

A bundle is daily at heart (qlib's default freq and the outer level of every backtest); it may
also carry 1-minute bars in the same folder: ``calendars/1min.txt`` and ``<field>.1min.bin``,
each ``.1min.bin`` indexed into the minute calendar. qlib reads one ``instruments/`` for every
freq and filters minute rows by those spans, so in such a bundle the spans are written as
timestamps (``%Y-%m-%d %H:%M:%S``) ending at the last bar of the last day (14:59:00), not at its
midnight.

Everything is written into a temporary directory next to the target and renamed into place at
the end, so a reader never sees a half-written bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd

from kubequant.errors import DataError
from kubequant.workloads.data.sessions import last_bar_offset

# How each frequency spells its timestamps in calendars/ and instruments/ (as dump_bin does).
FREQ_FORMATS: dict[str, str] = {"day": "%Y-%m-%d", "1min": "%Y-%m-%d %H:%M:%S"}
# The bundle's primary frequency (its instruments/ spans and manifest): daily only.
SUPPORTED_FREQS: tuple[str, ...] = ("day",)
# Finer frequencies a daily bundle can carry beside its daily bars (``BundleWriter.add_calendar``).
INTRADAY_FREQS: tuple[str, ...] = ("1min",)
BUNDLE_FORMAT = "kubequant-bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST = "meta/bundle.json"
DEFAULT_MARKET = "all"
# Symbols become directory names and tab-separated fields: keep them to a safe alphabet.
SYMBOL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class BundleSummary:
    """What a written bundle holds, for humans (``describe``) and for callers."""

    path: Path
    freq: str
    instruments: int
    days: int
    start: str
    end: str
    files: int
    checksum: str
    fields: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        """One paragraph: instruments, days, date range, path and files."""
        text = (
            f"Wrote a qlib bundle (freq {self.freq}) with {self.instruments} instrument{'' if self.instruments == 1 else 's'} × {self.days} "
            f"trading days ({self.start} … {self.end}) to {self.path}: {self.files} files, "
            f"fields {', '.join(self.fields)}; checksum {self.checksum[:19]}…."
        )
        return " ".join([text, *self.notes])


def feature_dir_name(symbol: str) -> str:
    """The features/ folder name qlib looks up for ``symbol``."""
    from qlib.utils import code_to_fname  # qlib maps Windows device names (CON, NUL, …); match it exactly

    return str(code_to_fname(symbol)).lower()


def check_symbol(symbol: str, *, where: str) -> str:
    """Return ``symbol`` upper-cased, or raise DataError if it cannot be a qlib instrument name."""
    if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
        raise DataError(
            f"instrument name {symbol!r} is not usable",
            where=where,
            fix="use letters, digits, '.', '_' or '-' (starting with a letter or digit)",
        )
    return symbol.upper()


def encode_feature(start_index: int, values: np.ndarray) -> bytes:
    """Bytes of one ``<field>.<freq>.bin``: the start index then the values, as little-endian float32."""
    if start_index < 0 or start_index >= 2**24:  # float32 holds integers exactly only up to 2**24
        raise ValueError(f"start index {start_index} out of range")
    return (
        np.concatenate([[float(start_index)], np.asarray(values, dtype=np.float64)]).astype("<f4").tobytes()
    )


def read_feature(path: Path) -> tuple[int, np.ndarray]:
    """Read a ``.bin`` feature file back as (start index, float32 values)."""
    raw = np.fromfile(path, dtype="<f4")
    return int(raw[0]), raw[1:]


def format_timestamps(stamps: Iterable[pd.Timestamp], freq: str) -> list[str]:
    """Timestamps as qlib's text files spell them for ``freq``."""
    fmt = FREQ_FORMATS[freq]
    return [pd.Timestamp(s).strftime(fmt) for s in stamps]


def is_kubequant_bundle(path: Path) -> bool:
    """True if ``path`` holds a bundle written by kubequant (its manifest says so)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == BUNDLE_FORMAT


def check_output_dir(out: Path) -> None:
    """Refuse an output path that holds something other than an empty dir or a kubequant bundle."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise DataError(
            "output path exists and is not a directory", where=str(out), fix="choose a new directory"
        )
    if any(out.iterdir()) and not is_kubequant_bundle(out):
        raise DataError(
            "output directory is not empty and is not a kubequant bundle; refusing to replace it",
            where=str(out),
            fix="choose a new or empty directory (an earlier kubequant bundle there is replaced)",
        )


def tree_checksum(digests: Mapping[str, str]) -> str:
    """Checksum of a bundle's content from its per-file sha256 digests (path order, manifest excluded)."""
    outer = hashlib.sha256()
    for rel in sorted(digests):
        outer.update(f"{rel}\0{digests[rel]}\n".encode())
    return "sha256:" + outer.hexdigest()


def bundle_checksum(path: Path) -> str:
    """Recompute the content checksum of the bundle at ``path`` (what meta/bundle.json records)."""
    digests = {}
    for file in path.rglob("*"):
        rel = file.relative_to(path).as_posix()
        if file.is_file() and rel != MANIFEST:
            digests[rel] = hashlib.sha256(file.read_bytes()).hexdigest()
    return tree_checksum(digests)


class BundleWriter:
    """Builds a bundle in a temp dir beside ``out``; ``commit`` renames it into place, any error removes it.

    Use as a context manager: leaving the block with an exception (or without ``commit``) discards
    everything written so far.
    """

    def __init__(self, out: Path, calendar: Sequence[pd.Timestamp] | pd.DatetimeIndex, *, freq: str = "day"):
        if freq not in FREQ_FORMATS:
            raise ValueError(f"unknown freq {freq!r}; known: {sorted(FREQ_FORMATS)}")
        if freq not in SUPPORTED_FREQS:
            raise NotImplementedError(
                f"freq {freq!r} as a bundle's own frequency is not implemented: a bundle is daily, "
                f"with intraday bars beside (add_calendar({freq!r}, ...))"
            )
        cal = pd.DatetimeIndex(calendar)
        if len(cal) == 0:
            raise ValueError("calendar is empty")
        if not cal.is_monotonic_increasing or not cal.is_unique:
            raise ValueError("calendar must be strictly increasing")
        self.out = Path(out)
        self.freq = freq
        self.calendar = cal
        self.calendars: dict[str, pd.DatetimeIndex] = {freq: cal}
        self._digests: dict[str, str] = {}
        self._spans: dict[str, dict[str, tuple[int, int]]] = {}
        self._symbols: dict[str, set[str]] = {freq: set()}
        self._fields: dict[str, set[str]] = {freq: set()}
        self._done = False
        check_output_dir(self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()
        try:
            self.add_file(f"calendars/{freq}.txt", "".join(f"{d}\n" for d in format_timestamps(cal, freq)))
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._done:
            self.abort()

    def add_file(self, rel: str, content: str | bytes) -> None:
        """Write one file (path relative to the bundle root) into the bundle."""
        data = content.encode() if isinstance(content, str) else content
        target = self.tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self._digests[rel] = hashlib.sha256(data).hexdigest()

    def add_calendar(self, freq: str, calendar: Sequence[pd.Timestamp] | pd.DatetimeIndex) -> None:
        """Add a finer calendar (``calendars/<freq>.txt``) for intraday bars beside the daily ones."""
        if freq not in INTRADAY_FREQS:
            raise ValueError(f"freq {freq!r} cannot be added to a bundle; known: {list(INTRADAY_FREQS)}")
        if freq in self.calendars:
            raise ValueError(f"calendar {freq} added twice")
        cal = pd.DatetimeIndex(calendar)
        if len(cal) == 0:
            raise ValueError("calendar is empty")
        if not cal.is_monotonic_increasing or not cal.is_unique:
            raise ValueError("calendar must be strictly increasing")
        if len(cal) >= 2**24:  # start indices are stored as float32
            raise ValueError(f"calendar {freq} has {len(cal)} bars; at most {2**24 - 1} fit the format")
        outside = ~pd.DatetimeIndex(cal.normalize().unique()).isin(self.calendar)
        if outside.any():
            day = cal.normalize().unique()[np.argmax(outside)]
            raise ValueError(f"calendar {freq} has bars on {day.date()}, which the daily calendar lacks")
        self.add_file(f"calendars/{freq}.txt", "".join(f"{d}\n" for d in format_timestamps(cal, freq)))
        self.calendars[freq] = cal
        self._symbols[freq] = set()
        self._fields[freq] = set()

    def add_instrument(
        self,
        symbol: str,
        start_index: int,
        fields: Mapping[str, np.ndarray],
        *,
        markets: Iterable[str] = (DEFAULT_MARKET,),
        freq: str | None = None,
    ) -> None:
        """Write one instrument's fields (each a 1-D array from ``start_index``); list it in ``markets``.

        ``freq`` (default: the bundle's own) picks the calendar ``start_index`` counts in; only
        daily bars list an instrument in ``markets``, intraday bars go beside them.
        """
        freq = freq or self.freq
        if freq not in self.calendars:
            raise ValueError(f"no {freq} calendar in this bundle; add_calendar({freq!r}, ...) first")
        symbol = check_symbol(symbol, where=f"instrument {symbol!r}")
        if symbol in self._symbols[freq]:
            raise ValueError(f"instrument {symbol} written twice")
        lengths = {len(v) for v in fields.values()}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(f"{symbol}: fields must be non-empty and of equal length, got {lengths}")
        end_index = start_index + lengths.pop() - 1
        if start_index < 0 or end_index >= len(self.calendars[freq]):
            raise ValueError(f"{symbol}: span {start_index}..{end_index} outside the calendar")
        folder = feature_dir_name(symbol)
        for name, values in fields.items():
            self.add_file(f"features/{folder}/{name.lower()}.{freq}.bin", encode_feature(start_index, values))
            self._fields[freq].add(name.lower())
        self._symbols[freq].add(symbol)
        if freq != self.freq:
            return
        for market in markets:
            self._spans.setdefault(market.lower(), {})[symbol] = (start_index, end_index)

    def _span_text(self, start: int, end: int) -> list[str]:
        """An instruments/ line's start and end: dates, or timestamps covering the last day's minutes."""
        first, last = self.calendar[start], self.calendar[end]
        if len(self.calendars) == 1:
            return format_timestamps([first, last], self.freq)
        return format_timestamps([first, last + last_bar_offset()], "1min")

    def commit(self, meta: Mapping[str, Any] | None = None, notes: Sequence[str] = ()) -> BundleSummary:
        """Write instruments/ and the manifest, then move the bundle into place; returns its summary."""
        try:
            for market, spans in sorted(self._spans.items()):
                lines = ["\t".join([sym, *self._span_text(s, e)]) for sym, (s, e) in sorted(spans.items())]
                self.add_file(f"instruments/{market}.txt", "".join(f"{line}\n" for line in lines))
            checksum = tree_checksum(self._digests)
            listed = len(self._spans.get(DEFAULT_MARKET, {}))
            start, end = format_timestamps(self.calendar[[0, -1]], self.freq)
            manifest = {
                "format": BUNDLE_FORMAT,
                "format_version": BUNDLE_FORMAT_VERSION,
                "freq": self.freq,
                "fields": sorted(self._fields[self.freq]),
                "calendar": {"start": start, "end": end, "days": len(self.calendar)},
                "instruments": listed,
                "markets": {m: len(s) for m, s in sorted(self._spans.items())},
                "checksum": checksum,
                **(meta or {}),
            }
            intraday = {f: c for f, c in self.calendars.items() if f != self.freq}
            if intraday:  # absent from daily-only bundles, so those stay byte-identical
                manifest["intraday"] = {
                    freq: {
                        "fields": sorted(self._fields[freq]),
                        "start": format_timestamps(cal[[0]], freq)[0],
                        "end": format_timestamps(cal[[-1]], freq)[0],
                        "bars": len(cal),
                        "days": int(cal.normalize().nunique()),
                        "instruments": len(self._symbols[freq]),
                    }
                    for freq, cal in sorted(intraday.items())
                }
            self.add_file(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            self._swap_into_place()
        except BaseException:
            self.abort()
            raise
        self._done = True
        return BundleSummary(
            path=self.out,
            freq=self.freq,
            instruments=listed,
            days=len(self.calendar),
            start=start,
            end=end,
            files=len(self._digests),
            checksum=checksum,
            fields=tuple(sorted(self._fields[self.freq])),
            notes=tuple(notes),
        )

    def abort(self) -> None:
        """Discard everything written so far."""
        self._done = True
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _swap_into_place(self) -> None:
        # Re-check: another process may have put something at `out` while we were writing.
        check_output_dir(self.out)
        if not self.out.exists():
            os.rename(self.tmp, self.out)
            return
        # A directory cannot be atomically exchanged with rename(2) alone: move the old one aside,
        # move the new one in, and put the old one back if that fails.
        old = self.out.parent / f".{self.out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(self.out, old)
        try:
            os.rename(self.tmp, self.out)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rename(old, self.out)
            raise
        shutil.rmtree(old, ignore_errors=True)
