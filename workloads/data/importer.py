"""Import OHLCV bars from CSV or Parquet into a qlib bundle, refusing bad rows with file and row.

Input is either a directory with one file per instrument (symbol = file stem) or a long table with
an ``instrument``/``symbol`` column (a directory may mix both). Prices follow qlib's convention:
``open/high/low/close/vwap`` are adjusted prices and ``factor`` the adjustment factor (raw price =
close / factor; default 1.0 when the column is absent), ``volume`` is in adjusted shares.

Bars are daily (one per instrument and date) or 1-minute: a file in which some instrument has
several bars on one day holds intraday bars, and every file of one import must be of one kind.
1-minute bars are stamped in exchange time with the minute they start (qlib's CN grid, see
``sessions``); they become ``calendars/1min.txt`` and ``<field>.1min.bin`` beside daily bars
rolled up from them (qlib's backtests step through days even when they trade in minutes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kubequant.errors import DataError
from kubequant.workloads.data.qlib_format import BundleSummary, BundleWriter, check_output_dir, check_symbol
from kubequant.workloads.data.sessions import (
    BAR_LABELS_TEXT,
    INTRADAY_FREQ,
    SESSIONS_TEXT,
    bars_per_day,
    minute_calendar,
    on_bar_grid,
    roll_up_days,
)

REQUIRED = ("open", "high", "low", "close", "volume")
OPTIONAL = ("factor", "vwap", "amount")
DATE_COLUMNS = ("date", "datetime")
SYMBOL_COLUMNS = ("instrument", "symbol")
SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
COLUMNS_FIX = (
    "columns (case-insensitive): date, open, high, low, close, volume; optional factor, vwap, amount"
)
SESSIONS_FIX = (
    f"stamp each 1-minute bar in exchange time with the minute it starts: {BAR_LABELS_TEXT} "
    f"(sessions {SESSIONS_TEXT}, qlib's convention); bars stamped with the minute they end "
    "(09:31…11:30, 13:01…15:00) need shifting back one minute"
)


@dataclass(frozen=True)
class ImportSummary:
    """What an import read and the bundle it wrote."""

    source: Path
    source_files: int
    rows: int
    bundle: BundleSummary

    def describe(self) -> str:
        """One paragraph: what was read, then what was written."""
        return f"Imported {self.rows} bars from {self.source_files} file(s) under {self.source}. {self.bundle.describe()}"


@dataclass(frozen=True)
class _Bars:
    """One instrument's validated bars: dates (midnight; intraday: bar labels) and float64 fields."""

    symbol: str
    origin: str
    dates: pd.DatetimeIndex
    fields: dict[str, np.ndarray]


def import_bundle(source: Path, out: Path) -> ImportSummary:
    """Validate every file under ``source`` and write them as one qlib bundle at ``out``.

    Daily files give a daily bundle; 1-minute files a bundle with 1-minute bars and the daily
    bars rolled up from them.
    """
    source, out = Path(source), Path(out)
    files = discover_files(source)
    check_output_dir(out)  # fail before reading gigabytes
    bars: dict[str, _Bars] = {}
    # The first file, and its daily time of day (None: 1-minute bars); the others must match it.
    first: tuple[str, pd.Timedelta | None] | None = None
    rows = 0
    for file in files:
        frame = read_table(file)
        rows += len(frame)
        _check_mixed_stamps(frame, file)
        intraday_row = _first_intraday_row(frame)
        if intraday_row is not None:
            _check_sessions(frame, file)
        time_of_day = None if intraday_row is not None else _file_time_of_day(frame, file)
        first = first or (str(file), time_of_day)
        _check_same_kind(file, time_of_day, intraday_row, first)
        for item in _instruments(frame, file, intraday=time_of_day is None):
            if item.symbol in bars:
                raise DataError(
                    f"instrument {item.symbol} also appears in {bars[item.symbol].origin}",
                    where=item.origin,
                    fix="keep each instrument in one file",
                )
            bars[item.symbol] = item
    meta = {"generator": "kubequant.workloads.data.importer", "source": str(source)}
    if first is not None and first[1] is None:
        return ImportSummary(source, len(files), rows, _write_intraday(out, bars, meta))
    calendar = pd.DatetimeIndex(np.unique(np.concatenate([b.dates.to_numpy() for b in bars.values()])))
    with BundleWriter(out, calendar, freq="day") as writer:
        for symbol in sorted(bars):
            writer.add_instrument(symbol, *_on_calendar(bars[symbol], calendar))
        summary = writer.commit(meta)
    return ImportSummary(source=source, source_files=len(files), rows=rows, bundle=summary)


def _check_same_kind(
    file: Path,
    time_of_day: pd.Timedelta | None,
    intraday_row: int | None,
    first: tuple[str, pd.Timedelta | None],
) -> None:
    """Refuse a file whose bars differ in kind from the first file's: daily vs 1-minute, or stamped otherwise."""
    first_file, first_time = first
    if (time_of_day is None) != (first_time is None):
        here, there = ("1-minute", "daily") if time_of_day is None else ("daily", "1-minute")
        raise DataError(
            f"mixed frequencies: {here} bars here but {there} bars in {first_file}",
            where=_where(file, intraday_row or 1),
            fix="import daily and 1-minute bars separately, into two bundles",
        )
    if time_of_day is not None and first_time is not None and time_of_day != first_time:
        raise DataError(
            f"mixed frequencies: bars here are stamped {_hms(time_of_day)} but in {first_file} {_hms(first_time)}",
            where=str(file),
            fix="give every file the same kind of timestamps (daily bars: dates only, YYYY-MM-DD)",
        )


def _write_intraday(out: Path, bars: dict[str, _Bars], meta: dict[str, str]) -> BundleSummary:
    """Write 1-minute bars on the full session grid of every day with a bar, and their daily roll-up."""
    daily = {}
    for symbol, minutes in bars.items():
        days, fields = roll_up_days(minutes.dates.to_numpy(), minutes.fields)
        daily[symbol] = _Bars(symbol, minutes.origin, pd.DatetimeIndex(days), fields)
    calendar = pd.DatetimeIndex(np.unique(np.concatenate([b.dates.to_numpy() for b in daily.values()])))
    grid = minute_calendar(calendar)
    with BundleWriter(out, calendar, freq="day") as writer:
        writer.add_calendar(INTRADAY_FREQ, grid)
        for symbol in sorted(bars):
            writer.add_instrument(symbol, *_on_calendar(daily[symbol], calendar))
            writer.add_instrument(symbol, *_on_calendar(bars[symbol], grid), freq=INTRADAY_FREQ)
        note = (
            f"1-minute bars: {sum(len(b.dates) for b in bars.values())} bars on the {bars_per_day()}-bar "
            f"grid of {len(calendar)} days (calendars/{INTRADAY_FREQ}.txt, <field>.{INTRADAY_FREQ}.bin); "
            "the daily bars are rolled up from them."
        )
        return writer.commit(meta, notes=(note,))


def discover_files(source: Path) -> list[Path]:
    """The CSV/Parquet files to import: ``source`` itself, or the files directly inside it."""
    if source.is_file():
        if not source.name.lower().endswith(SUFFIXES):
            raise DataError(
                "not a CSV or Parquet file", where=str(source), fix=f"use one of {', '.join(SUFFIXES)}"
            )
        return [source]
    if not source.is_dir():
        raise DataError(
            "no such file or directory", where=str(source), fix="pass an existing file or directory"
        )
    files = sorted(p for p in source.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES))
    if not files:
        raise DataError(
            "no CSV or Parquet files found",
            where=str(source),
            fix=f"put files ending in {', '.join(SUFFIXES)} there",
        )
    return files


def read_table(file: Path) -> pd.DataFrame:
    """Read one file with lower-cased column names and a 1-based ``_row`` column; refuse empty files."""
    try:
        if file.name.lower().endswith((".parquet", ".pq")):
            frame = pd.read_parquet(file)
        else:
            # As text, so a bad cell can be quoted back to the user verbatim.
            frame = pd.read_csv(file, dtype=str, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise DataError(
            "file is empty", where=str(file), fix="export the data again with a header row"
        ) from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise DataError(f"cannot be read: {exc}", where=str(file), fix="check the file's format") from exc
    names = [str(c).strip().lower() for c in frame.columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(
            f"duplicate column(s): {', '.join(dupes)}", where=str(file), fix="keep one column per name"
        )
    frame.columns = names
    if frame.empty:
        raise DataError(
            "file has no data rows", where=str(file), fix="export the data again, or remove the file"
        )
    missing = [c for c in REQUIRED if c not in names]
    if not any(c in names for c in DATE_COLUMNS):
        missing.insert(0, "date")
    if missing:
        raise DataError(f"missing required column(s): {', '.join(missing)}", where=str(file), fix=COLUMNS_FIX)
    if all(c in names for c in DATE_COLUMNS):
        raise DataError("both 'date' and 'datetime' columns", where=str(file), fix="keep one of them")
    frame = frame.reset_index(drop=True)
    frame["_row"] = np.arange(1, len(frame) + 1)
    frame["_ts"] = _parse_dates(frame, file)
    for column in REQUIRED + OPTIONAL:
        if column in frame:
            frame[column] = _parse_numbers(frame, column, file)
    return frame


def _where(file: Path, row: int) -> str:
    return f"{file}:row {row}"


def _hms(delta: pd.Timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _parse_dates(frame: pd.DataFrame, file: Path) -> pd.Series:
    column = next(c for c in DATE_COLUMNS if c in frame)
    raw = frame[column]
    if pd.api.types.is_datetime64_any_dtype(raw):
        parsed = raw
    else:
        # Integers such as 20200102 are dates, not nanoseconds since 1970.
        text = raw.astype("string") if pd.api.types.is_numeric_dtype(raw) else raw
        try:
            tries = [pd.to_datetime(text, errors="coerce", format="ISO8601")]
            if tries[0].isna().sum() > raw.isna().sum():
                tries.append(pd.to_datetime(text, errors="coerce"))  # one consistent non-ISO format
        except ValueError as exc:  # e.g. offsets of several time zones in one column
            raise DataError(
                f"column '{column}': {exc}", where=str(file), fix="use one time zone, or none"
            ) from exc
        parsed = min(tries, key=lambda s: int(s.isna().sum()))
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_localize(None)  # keep the exchange's wall-clock time
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        value = raw.iloc[i]
        what = "missing date" if pd.isna(value) else f"unparseable date {str(value)!r}"
        raise DataError(
            f"{what} in column '{column}'", where=_where(file, i + 1), fix="write dates as YYYY-MM-DD"
        )
    return parsed.astype("datetime64[ns]")


def _parse_numbers(frame: pd.DataFrame, column: str, file: Path) -> pd.Series:
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce").astype("float64")
    bad = (raw.notna() & ~np.isfinite(values.fillna(0.0))) | (raw.notna() & values.isna())
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise DataError(
            f"column '{column}' has {str(raw.iloc[i])!r}, not a number",
            where=_where(file, i + 1),
            fix="write plain decimal numbers",
        )
    return values


def _time_of_day(frame: pd.DataFrame) -> np.ndarray:
    ts = frame["_ts"]
    return np.asarray((ts - ts.dt.normalize()).to_numpy(), dtype="timedelta64[ns]")


def _check_mixed_stamps(frame: pd.DataFrame, file: Path) -> None:
    """Refuse a file mixing bare dates (daily) with timestamps that carry a time (intraday)."""
    has_time = _time_of_day(frame) != np.timedelta64(0, "ns")
    if has_time.any() and not has_time.all():
        i = int(np.argmax(has_time != has_time[0]))
        raise DataError(
            f"mixed frequencies: {frame['_ts'].iloc[i]} vs row 1's {frame['_ts'].iloc[0]} "
            "(intraday timestamps mixed with daily dates)",
            where=_where(file, i + 1),
            fix="import one frequency at a time; daily bars as dates (YYYY-MM-DD)",
        )


def _first_intraday_row(frame: pd.DataFrame) -> int | None:
    """The first row (1-based) stamped at another time of a day on which its instrument has a bar already.

    None means a daily file (a repeated date, or a repeated timestamp, is a duplicate, not intraday).
    """
    ts = frame["_ts"]
    if not (ts != ts.dt.normalize()).any():
        return None
    column = next((c for c in SYMBOL_COLUMNS if c in frame), None)
    symbol = (
        frame[column].astype("string").str.strip().str.upper().fillna("").to_numpy()
        if column
        else np.zeros(len(frame))
    )
    keys = pd.DataFrame({"s": symbol, "t": ts.to_numpy(), "d": ts.dt.normalize().to_numpy()})
    again = keys.duplicated(["s", "d"]) & ~keys.duplicated(["s", "t"])
    return int(frame["_row"].to_numpy()[np.argmax(again.to_numpy())]) if again.any() else None


def _check_sessions(frame: pd.DataFrame, file: Path) -> None:
    """Refuse 1-minute bars stamped outside the exchange's sessions or between whole minutes."""
    ts = frame["_ts"].to_numpy()
    bad = ~on_bar_grid(ts)
    if bad.any():
        i = int(np.argmax(bad))
        stamp = pd.Timestamp(ts[i])
        what = (
            "not on a whole minute"
            if stamp.second or stamp.nanosecond or stamp.microsecond
            else (f"outside the trading sessions ({SESSIONS_TEXT})")
        )
        raise DataError(f"1-minute bar at {stamp} is {what}", where=_where(file, i + 1), fix=SESSIONS_FIX)


def _file_time_of_day(frame: pd.DataFrame, file: Path) -> pd.Timedelta:
    """The one time of day every (daily) bar in the file is stamped with; refuse differing time parts."""
    tod = _time_of_day(frame)
    differs = tod != tod[0]
    if differs.any():
        i = int(np.argmax(differs))
        raise DataError(
            f"mixed frequencies: row {i + 1} is stamped {_hms(pd.Timedelta(tod[i]))} but row 1 "
            f"{_hms(pd.Timedelta(tod[0]))} (time parts differ between daily bars)",
            where=_where(file, i + 1),
            fix="stamp every daily bar the same way, best as a date without time (YYYY-MM-DD); "
            "1-minute bars have several rows per day",
        )
    return pd.Timedelta(tod[0])


def _instruments(frame: pd.DataFrame, file: Path, *, intraday: bool = False) -> Iterator[_Bars]:
    """Split a file into per-instrument bars (by its symbol column, else its file name) and validate each."""
    column = next((c for c in SYMBOL_COLUMNS if c in frame), None)
    if column is None:
        stem = file.name.split(".")[0]
        yield _validate(frame, file, check_symbol(stem, where=str(file)), str(file), intraday)
        return
    symbols = frame[column].astype("string").str.strip()
    missing = symbols.isna() | (symbols == "")
    if missing.any():
        row = int(frame["_row"].to_numpy()[np.argmax(missing.to_numpy())])
        raise DataError(
            f"missing value in column '{column}'", where=_where(file, row), fix="name every row's instrument"
        )
    groups = frame.groupby(symbols.str.upper().to_numpy(), sort=False).indices
    for positions in groups.values():  # positions keep file order, so row checks stay meaningful
        first = int(positions[0])
        name = check_symbol(str(symbols.iloc[first]), where=_where(file, first + 1))
        yield _validate(frame.iloc[positions], file, name, f"{file} (instrument {name})", intraday)


def _validate(frame: pd.DataFrame, file: Path, symbol: str, origin: str, intraday: bool = False) -> _Bars:
    """Check one instrument's rows (order, duplicates, prices, OHLC consistency) and return its bars."""
    rows = frame["_row"].to_numpy()
    ts = frame["_ts"].to_numpy()

    def refuse(mask: np.ndarray, message: str, fix: str) -> None:
        if mask.any():
            i = int(np.argmax(mask))
            raise DataError(
                message.format(i=i, ts=pd.Timestamp(ts[i])), where=_where(file, int(rows[i])), fix=fix
            )

    step = np.concatenate([[np.timedelta64(1, "ns")], np.diff(ts)])
    prev = np.concatenate([ts[:1], ts[:-1]])
    what = "timestamp" if intraday else "date"
    for i in np.flatnonzero(step <= np.timedelta64(0, "ns"))[:1]:
        duplicate = step[i] == np.timedelta64(0, "ns")
        kind = f"duplicate {what}" if duplicate else f"{what}s not sorted"
        raise DataError(
            f"{symbol}: {kind}: {pd.Timestamp(ts[i])} follows {pd.Timestamp(prev[i])}",
            where=_where(file, int(rows[i])),
            fix=f"keep one row per {what}"
            if duplicate
            else f"sort each instrument's rows by {what}, oldest first",
        )
    days = pd.DatetimeIndex(ts).normalize()
    same_day = np.concatenate([[False], days[1:] == days[:-1]])
    if not intraday:
        refuse(
            same_day,
            f"{symbol}: several bars on one day ({{ts}})",
            "keep one daily bar per date (1-minute bars go in files of their own)",
        )
    values = {c: frame[c].to_numpy(dtype="float64") for c in REQUIRED + OPTIONAL if c in frame}
    for column in (*REQUIRED, "factor"):
        if column in values:
            refuse(
                np.isnan(values[column]),
                f"{symbol}: missing value (NaN) in required column '{column}'",
                "fill the value, or leave out the day (a suspended day has no row)",
            )
    for column in ("open", "high", "low", "close", "factor", "vwap"):
        if column in values:
            refuse(
                values[column] <= 0, f"{symbol}: column '{column}' is zero or negative", "prices must be > 0"
            )
    for column in ("volume", "amount"):
        if column in values:
            refuse(values[column] < 0, f"{symbol}: column '{column}' is negative", "volumes must be >= 0")
    o, h, lo, c = (values[k] for k in ("open", "high", "low", "close"))
    refuse(h < np.maximum(o, c), f"{symbol}: high is below max(open, close)", "check the row's OHLC values")
    refuse(lo > np.minimum(o, c), f"{symbol}: low is above min(open, close)", "check the row's OHLC values")
    values.setdefault("factor", np.ones(len(frame)))
    if intraday:
        factor = values["factor"]
        refuse(
            same_day & (factor != np.concatenate([factor[:1], factor[:-1]])),
            f"{symbol}: the factor changes within a day ({{ts}})",
            "an adjustment factor holds for a whole day: give every bar of a day that day's factor",
        )
    values["change"] = change_from_previous_close(c, same_day if intraday else None)
    stamps = pd.DatetimeIndex(ts) if intraday else days
    return _Bars(symbol=symbol, origin=origin, dates=stamps, fields=values)


def _on_calendar(bars: _Bars, calendar: pd.DatetimeIndex) -> tuple[int, dict[str, np.ndarray]]:
    """Spread bars onto the calendar from their first day; days without a bar become NaN."""
    pos = calendar.get_indexer(bars.dates)
    start = int(pos[0])
    out = {}
    for name, values in bars.fields.items():
        series = np.full(int(pos[-1]) - start + 1, np.nan)
        series[pos - start] = values
        out[name] = series
    return start, out


def change_from_previous_close(close: np.ndarray, same_day: np.ndarray | None) -> np.ndarray:
    """``$change``: each bar's close against the previous trading day's close (NaN on the first day).

    Daily bars: the bar before (suspended days have no row). 1-minute bars (``same_day``: the bar
    is on the same day as the one before it): the last close of the previous day with bars, the
    reference of the exchange's price limits, so qlib's limit rule (``$change`` against
    ``limit_threshold``) flags every minute traded at the limit.
    """
    change = np.full(len(close), np.nan)
    if same_day is None:
        change[1:] = close[1:] / close[:-1] - 1.0
        return change
    first = ~np.asarray(same_day, dtype=bool)
    first[:1] = True
    day = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    last_close = close[np.r_[starts[1:] - 1, len(close) - 1]]
    previous = np.r_[np.nan, last_close[:-1]][day]
    with np.errstate(invalid="ignore"):
        change[:] = close / previous - 1.0
    return change
