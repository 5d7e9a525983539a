"""Checks a Backtest against its data bundle before qlib runs, so mistakes end in one clear line.

qlib itself fails deep inside with IndexError or KeyError for a period outside the calendar, an
unknown market or an empty universe; these checks name the field and the fix instead.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from kubequant.api.backtest import BacktestSpec
from kubequant.api.common import DateRange
from kubequant.errors import ConfigError, DataError


@dataclass(frozen=True)
class Bundle:
    """What the checks need to know of a qlib bundle: its calendar and its markets."""

    path: Path
    calendar: list[dt.date]

    @classmethod
    def open(cls, path: Path, freq: str = "day") -> Bundle:
        """Read a bundle's calendar; a missing or empty bundle is a DataError."""
        cal_file = path / "calendars" / f"{freq}.txt"
        if not cal_file.is_file():
            raise DataError(
                f"no qlib bundle here (missing calendars/{freq}.txt)",
                where=str(path),
                fix="point spec.data.path at a bundle made by `kubequant data import` or `kubequant data sample`",
            )
        days = [
            dt.date.fromisoformat(line.strip()[:10])
            for line in cal_file.read_text().splitlines()
            if line.strip()
        ]
        if not days:
            raise DataError("the calendar is empty", where=str(cal_file), fix="re-import the data")
        return cls(path, days)

    def market_members(self, market: str) -> list[tuple[str, dt.date, dt.date]]:
        """Rows of instruments/<market>.txt."""
        file = self.path / "instruments" / f"{market}.txt"
        if not file.is_file():
            known = sorted(p.stem for p in (self.path / "instruments").glob("*.txt"))
            raise ConfigError(
                f"market {market!r} is not in the bundle",
                where="spec.universe.market",
                fix=f"use one of {known}",
            )
        rows = []
        for line in file.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                rows.append(
                    (parts[0], dt.date.fromisoformat(parts[1][:10]), dt.date.fromisoformat(parts[2][:10]))
                )
        return rows

    def has_instrument(self, code: str) -> bool:
        """Whether the bundle has features for ``code``."""
        return (self.path / "features" / code.lower()).is_dir()


def check_range(bundle: Bundle, rng: DateRange, field: str, need_next_day: bool) -> None:
    """A period must lie in the calendar; a backtest also needs the day after its end."""
    first, last = bundle.calendar[0], bundle.calendar[-1]
    # A start before the first day is fine (qlib begins at the first trading day); one after the data is not.
    if rng.start > last:
        raise ConfigError(
            f"{rng.start} is after the data ends ({first} … {last})",
            where=f"{field}.start",
            fix=f"start before {last}",
        )
    latest = bundle.calendar[-2] if need_next_day else last
    if rng.end > latest:
        why = " (qlib needs the next trading day to close the last step)" if need_next_day else ""
        raise ConfigError(
            f"{rng.end} is past the last usable day {latest}{why}",
            where=f"{field}.end",
            fix=f"end on or before {latest}",
        )
    if not any(rng.start <= d <= rng.end for d in bundle.calendar):
        raise ConfigError("no trading day in this period", where=field, fix="widen the period")


def check_backtest(spec: BacktestSpec, bundle: Bundle) -> None:
    """Every check of a Backtest against its bundle."""
    check_range(bundle, spec.period, "spec.period", need_next_day=True)
    if spec.signal.model is not None:
        seg = spec.signal.model.segments
        for name in ("train", "valid", "test"):
            check_range(
                bundle, getattr(seg, name), f"spec.signal.model.segments.{name}", need_next_day=name == "test"
            )
    if not bundle.has_instrument(spec.benchmark):
        raise ConfigError(
            f"benchmark {spec.benchmark!r} has no data in the bundle",
            where="spec.benchmark",
            fix="use an index the bundle has",
        )
    if spec.executor.finest() != "day":
        check_minute_data(spec, bundle)
    universe = spec.universe.resolved_market()
    if isinstance(universe, str):
        live = [
            code
            for code, lo, hi in bundle.market_members(universe)
            if lo <= spec.period.end and hi >= spec.period.start
        ]
        if not live:
            raise ConfigError(
                f"market {universe!r} has no instrument trading in {spec.period.start} … {spec.period.end}",
                where="spec.universe.market",
                fix="choose another market or period",
            )
    else:
        missing = [code for code in universe if not bundle.has_instrument(code)]
        if len(missing) == len(universe):
            raise ConfigError(
                "none of the instruments has data in the bundle",
                where="spec.universe.instruments",
                fix="list codes the bundle has",
            )


def check_minute_data(spec: BacktestSpec, bundle: Bundle) -> None:
    """Intraday steps need the bundle's 1-minute bars over the whole period."""
    field = "spec.executor.levels" if spec.executor.levels else "spec.executor.frequency"
    calendar = bundle.path / "calendars" / "1min.txt"
    if not calendar.is_file():
        raise ConfigError(
            f"the bundle has no 1-minute bars for the {spec.executor.finest()} level",
            where=field,
            fix="use a bundle with minute bars (`kubequant data sample --freq day,1min`, or import them)",
        )
    days = sorted({line[:10] for line in calendar.read_text().splitlines() if line.strip()})
    if not days or days[0] > str(spec.period.start) or days[-1] < str(spec.period.end):
        span = f"{days[0]} … {days[-1]}" if days else "none"
        raise ConfigError(
            f"minute bars cover {span}, not the whole period {spec.period.start} … {spec.period.end}",
            where="spec.period",
            fix="shorten the period to the days with minute bars, or generate or import more",
        )
