"""Data quality of a run: the missing-value ratio of each field it reads, and instruments with no data.

Measured on the bundle's own files, over the cells a run reads: each instrument of the universe on
each trading day of the period on which it is a member (the universe's spans from qlib's
``D.list_instruments``). A cell is missing when its value is NaN, when it lies outside the field's
file, or when the file does not exist. An instrument is missing when none of its cells has a value
in any field: it is in the universe but the bundle has nothing for it in the period.

The Backtest and TrainingJob workloads put the figures in their results (``.status.results.dataQuality``),
which the operator serves as ``kubequant_run_data_missing_ratio`` and ``kubequant_run_instruments_missing``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kubequant.workloads.data.qlib_format import feature_dir_name

# What qlib's Exchange reads to deal (the deal price, the volume cap, the adjustment factor) and the
# label reads: every Backtest reads these, whatever its features.
EXCHANGE_FIELDS = ("close", "volume", "factor")
# A handler whose expressions kubequant cannot list (a custom class): the daily bars a qlib handler reads.
DEFAULT_FIELDS = ("open", "high", "low", "close", "volume", "vwap")
# Instruments named in the report (the count is exact; the list is only the first ones, sorted).
NAMED_MISSING = 20

_FIELD = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class DataQuality:
    """Missing-value ratio per field over the cells a run reads, and the instruments with no data."""

    fields: tuple[str, ...]
    missing_ratio: Mapping[str, float]
    instruments: int
    instruments_missing: tuple[str, ...]
    cells: int

    def to_results(self) -> dict[str, Any]:
        """The object ``.status.results.dataQuality`` carries (camelCase, JSON types)."""
        return {
            "missingRatio": {f: round(self.missing_ratio[f], 6) for f in self.fields},
            "instruments": self.instruments,
            "instrumentsMissing": len(self.instruments_missing),
            "missingInstruments": list(self.instruments_missing[:NAMED_MISSING]),
        }


def fields_in(expressions: Iterable[str]) -> set[str]:
    """The bundle fields (``$close`` → ``close``) that qlib expressions read."""
    return {m.group(1) for e in expressions for m in _FIELD.finditer(str(e))}


def handler_fields(handler_class: str) -> tuple[str, ...]:
    """The fields a dataset handler's features read, plus what every run's exchange reads, sorted.

    Alpha158 and Alpha360 (qlib's and kubequant's compiled ones, ``…vwap`` included) list their
    expressions through qlib's own loader configs; any other handler gets ``DEFAULT_FIELDS``.
    """
    from qlib.contrib.data.loader import Alpha158DL, Alpha360DL

    base = handler_class.rsplit(".", 1)[-1]
    exprs: list[str]
    if base.startswith("Alpha158"):
        exprs = list(Alpha158DL.get_feature_config()[0])  # processors (kwargs) never change the fields read
    elif base.startswith("Alpha360"):
        exprs = list(Alpha360DL.get_feature_config()[0])
    else:
        exprs = [f"${f}" for f in DEFAULT_FIELDS]
    if base.endswith("vwap"):
        exprs.append("$vwap")  # the …vwap handlers' label reads the vwap
    return tuple(sorted(fields_in(exprs) | set(EXCHANGE_FIELDS)))


def measure(
    bundle: Path,
    spans: Mapping[str, Sequence[tuple[Any, Any]]],
    start: Any,
    end: Any,
    fields: Sequence[str],
    freq: str = "day",
) -> DataQuality:
    """Data quality of ``fields`` for the instruments in ``spans`` (their universe membership) from
    ``start`` to ``end`` (inclusive) on the bundle's ``freq`` calendar."""
    calendar = pd.to_datetime((bundle / "calendars" / f"{freq}.txt").read_text().split(), format="mixed")
    lo = int(calendar.searchsorted(pd.Timestamp(start), side="left"))
    hi = int(calendar.searchsorted(pd.Timestamp(end), side="right")) - 1
    missing = dict.fromkeys(fields, 0)
    cells = 0
    absent: list[str] = []
    members = 0
    for inst in sorted(spans):
        days = _member_days(calendar, spans[inst], lo, hi)
        if days.size == 0:
            continue  # not a member during the period: not read
        members += 1
        cells += days.size
        seen = False
        for f in fields:
            values = _field_values(bundle / "features" / feature_dir_name(inst) / f"{f}.{freq}.bin", days)
            nan = int(np.isnan(values).sum())
            missing[f] += nan
            seen = seen or nan < days.size
        if not seen:
            absent.append(inst)
    ratio = {f: (missing[f] / cells if cells else 0.0) for f in fields}
    return DataQuality(tuple(fields), ratio, members, tuple(absent), cells)


def _member_days(
    calendar: pd.DatetimeIndex, spans: Sequence[tuple[Any, Any]], lo: int, hi: int
) -> np.ndarray:
    """Calendar indices in [lo, hi] within any of the membership spans."""
    if hi < lo:
        return np.empty(0, dtype=np.int64)
    picked: set[int] = set()
    for s, e in spans:
        a = max(lo, int(calendar.searchsorted(pd.Timestamp(s), side="left")))
        b = min(hi, int(calendar.searchsorted(pd.Timestamp(e), side="right")) - 1)
        picked.update(range(a, b + 1))
    return np.array(sorted(picked), dtype=np.int64)


def _field_values(path: Path, days: np.ndarray) -> np.ndarray:
    """The values of a feature file on calendar indices ``days``; NaN where the file has none."""
    out = np.full(days.size, np.nan, dtype=np.float32)
    if not path.exists():
        return out
    raw = np.fromfile(path, dtype="<f4")
    if raw.size < 2:
        return out
    start, values = int(raw[0]), raw[1:]
    inside = (days >= start) & (days < start + values.size)
    out[inside] = values[days[inside] - start]
    return out


def universe_spans(market: str | list[str], start: Any, end: Any) -> dict[str, list[tuple[Any, Any]]]:
    """The universe's members and their membership spans in the period, from qlib (initialised)."""
    from qlib.data import D

    if isinstance(market, list):
        return {str(i): [(start, end)] for i in market}
    listed = D.list_instruments(D.instruments(market), start_time=start, end_time=end, as_list=False)
    return {str(i): [(s, e) for s, e in v] for i, v in listed.items()}


def measure_universe(
    bundle: Path, market: str | list[str], start: Any, end: Any, fields: Sequence[str]
) -> DataQuality:
    """Data quality of ``fields`` over the members of ``market`` (a qlib market name or instrument list) from
    ``start`` to ``end``, with qlib initialised: what a Backtest or a TrainingJob read."""
    return measure(bundle, universe_spans(market, start, end), start, end, fields)
