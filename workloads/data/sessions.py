"""The exchange's trading sessions and qlib's 1-minute bar grid (Asia/Shanghai wall-clock time).

qlib's CN convention (``qlib.utils.time.CN_TIME`` / ``get_min_cal``): the sessions are
09:30–11:30 and 13:00–15:00, and a 1-minute bar is labelled by the minute it *starts*, so a day
has 240 bars stamped 09:30…11:29 and 13:00…14:59. ``calendars/1min.txt`` lists every such label
of every trading day (``%Y-%m-%d %H:%M:%S``), whether or not a given stock traded in it, the way
qlib's own collectors build it (``generate_minutes_calendar_from_daily``). Timestamps are naive:
they are the exchange's local time, not UTC.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

INTRADAY_FREQ = "1min"
# (open, close) of each session, half-open: a bar stamped with the close time is outside it.
SESSIONS: tuple[tuple[str, str], ...] = (("09:30", "11:30"), ("13:00", "15:00"))
SESSIONS_TEXT = "09:30–11:30 and 13:00–15:00 Asia/Shanghai"
BAR_LABELS_TEXT = "09:30…11:29 and 13:00…14:59"


@functools.cache
def bar_offsets() -> np.ndarray:
    """The 1-minute bar labels of one day as offsets from midnight (timedelta64[ns]), qlib's order."""
    from qlib.constant import REG_CN
    from qlib.utils.time import get_min_cal  # the grid qlib resamples and aligns with

    labels = get_min_cal(shift=0, region=REG_CN)
    offsets = np.array([np.timedelta64(t.hour * 60 + t.minute, "m") for t in labels], dtype="timedelta64[ns]")
    offsets.setflags(write=False)
    return offsets


def bars_per_day() -> int:
    """How many 1-minute bars a full trading day has (240 on the CN exchanges)."""
    return len(bar_offsets())


def minute_calendar(days: pd.DatetimeIndex) -> pd.DatetimeIndex:
    """Every 1-minute bar label of each trading day in ``days``, in time order."""
    midnight = pd.DatetimeIndex(days).normalize().to_numpy().astype("datetime64[ns]")
    stamps = midnight[:, None] + bar_offsets()[None, :]
    return pd.DatetimeIndex(stamps.ravel())


def on_bar_grid(stamps: np.ndarray) -> np.ndarray:
    """Which timestamps (datetime64[ns]) are 1-minute bar labels inside the sessions."""
    stamps = np.asarray(stamps, dtype="datetime64[ns]")
    time_of_day = stamps - stamps.astype("datetime64[D]").astype("datetime64[ns]")
    return np.isin(time_of_day, bar_offsets())


def last_bar_offset() -> pd.Timedelta:
    """Offset from midnight of a day's last bar label (14:59): where an instrument's listing ends."""
    return pd.Timedelta(bar_offsets()[-1])


def roll_up_days(
    stamps: np.ndarray, fields: dict[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Daily bars from one instrument's intraday bars (sorted ``stamps``): the days, and each field.

    open = first open, high = max, low = min, close = last close, volume and amount = sums,
    vwap = volume-weighted (the plain mean on a day without volume), factor = the day's (first)
    factor, change = close over the previous day's close. Fields absent from ``fields`` stay absent.
    """
    stamps = np.asarray(stamps, dtype="datetime64[ns]")
    days, first = np.unique(stamps.astype("datetime64[D]"), return_index=True)
    last = np.append(first[1:], len(stamps)) - 1
    out: dict[str, np.ndarray] = {}
    for name, values in fields.items():
        if name in ("open", "factor"):
            out[name] = values[first]
        elif name == "close":
            out[name] = values[last]
        elif name == "high":
            out[name] = np.maximum.reduceat(values, first)
        elif name == "low":
            out[name] = np.minimum.reduceat(values, first)
        elif name in ("volume", "amount"):
            out[name] = np.add.reduceat(values, first)
    if "vwap" in fields:
        volume = np.add.reduceat(fields["volume"], first)
        traded = np.add.reduceat(fields["vwap"] * fields["volume"], first)
        plain = np.add.reduceat(fields["vwap"], first) / np.diff(np.append(first, len(stamps)))
        out["vwap"] = np.where(volume > 0, traded / np.where(volume > 0, volume, 1.0), plain)
    if "change" in fields:
        close = fields["close"][last]
        out["change"] = np.concatenate([[np.nan], close[1:] / close[:-1] - 1.0])
    return days.astype("datetime64[ns]"), out
