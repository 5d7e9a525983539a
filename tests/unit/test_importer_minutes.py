"""``kubequant data import`` with 1-minute bars: qlib reads them back at freq 1min, bad stamps are refused."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import qlib
from qlib.data import D

from kubequant.errors import DataError
from kubequant.workloads.data.importer import import_bundle
from kubequant.workloads.data.sessions import bar_offsets, minute_calendar

pytestmark = pytest.mark.unit

DAYS = pd.DatetimeIndex(["2021-03-01", "2021-03-02", "2021-03-03"])
FIELDS = ["open", "high", "low", "close", "volume", "vwap", "factor", "change"]


def _minutes(symbol: str, stamps: pd.DatetimeIndex, rng: np.random.Generator, factor: float) -> pd.DataFrame:
    n = len(stamps)
    close = 20 * np.cumprod(1 + rng.normal(0, 0.001, n))
    open_ = close * (1 + rng.normal(0, 0.0005, n))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.0005, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.0005, n)))
    return pd.DataFrame(
        {"instrument": symbol, "datetime": stamps, "open": open_, "high": high, "low": low, "close": close}
        | {"volume": rng.integers(0, 50, n) * 100.0, "vwap": (open_ + close) / 2, "factor": factor}
    )


@pytest.fixture(scope="module")
def truth() -> pd.DataFrame:
    """AAA trades every minute of three days; BBB skips some minutes and all of the middle day."""
    rng = np.random.default_rng(3)
    grid = minute_calendar(DAYS)
    keep = rng.random(len(grid)) > 0.2
    keep[[0, -1]] = True  # (qlib returns a series from its first bar on)
    sparse = grid[(grid.normalize() != DAYS[1]) & keep]
    frames = [_minutes("AAA", grid, rng, 1.0), _minutes("BBB", sparse, rng, 2.0)]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def bundle(truth: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("minutes") / "src"
    src.mkdir()
    # One instrument as its own Parquet file, the other in a long CSV table with text timestamps.
    truth[truth.instrument == "AAA"].drop(columns="instrument").to_parquet(src / "AAA.parquet")
    bbb = truth[truth.instrument == "BBB"].copy()
    bbb["datetime"] = bbb["datetime"].dt.strftime("%Y-%m-%d %H:%M:%S")
    bbb.to_csv(src / "long.csv", index=False)
    out = src.parent / "bundle"
    summary = import_bundle(src, out)
    assert "1-minute bars" in summary.describe()
    from qlib.workflow import R

    if R._provider is not None and R._provider.exp_manager.active_experiment is not None:
        R.end_exp()  # an earlier test's experiment still open: qlib refuses to re-init then
    qlib.init(
        provider_uri=str(out), region="cn", kernels=1, logging_level=logging.WARNING, clear_mem_cache=True
    )
    return out


def _expected(truth: pd.DataFrame) -> pd.DataFrame:
    frame = truth.set_index(["instrument", "datetime"]).sort_index()
    close = frame["close"]
    # Against the previous trading day's last close (the reference of the price limits).
    day = frame.index.get_level_values("datetime").normalize()
    day_close = close.groupby([frame.index.get_level_values("instrument"), day]).last()
    previous = day_close.groupby(level=0).shift(1)
    keys = pd.MultiIndex.from_arrays([frame.index.get_level_values("instrument"), day])
    frame["change"] = close.to_numpy() / previous.reindex(keys).to_numpy() - 1
    return frame


def test_minute_bars_read_back_through_qlib(bundle: Path, truth: pd.DataFrame) -> None:
    got = D.features(["AAA", "BBB"], [f"${f}" for f in FIELDS], "2021-03-01", "2021-03-03 15:00", freq="1min")
    got.columns = FIELDS
    expected = _expected(truth)[FIELDS]
    traded = got.loc[expected.index]
    np.testing.assert_allclose(traded.to_numpy(), expected.to_numpy().astype(np.float32), rtol=1e-6)
    # Every session minute of every day is on the calendar; BBB's missing minutes and day are NaN.
    assert len(got.loc["AAA"]) == len(got.loc["BBB"]) == 3 * 240
    missing = got.drop(index=expected.index)
    assert len(missing) == 3 * 240 * 2 - len(truth) and missing["close"].isna().all()
    assert got.loc["BBB"].loc["2021-03-02"]["close"].isna().all()


def test_calendar_is_the_session_grid(bundle: Path) -> None:
    lines = (bundle / "calendars/1min.txt").read_text().splitlines()
    assert len(lines) == 3 * 240
    assert lines[0] == "2021-03-01 09:30:00" and lines[119] == "2021-03-01 11:29:00"
    assert lines[120] == "2021-03-01 13:00:00" and lines[-1] == "2021-03-03 14:59:00"
    cal = pd.DatetimeIndex(D.calendar(start_time="2021-03-01", end_time="2021-03-03 15:00", freq="1min"))
    assert list(cal) == list(pd.DatetimeIndex(lines))
    assert list(D.calendar(freq="day")) == list(DAYS)
    # Listings end at the last minute of the last day, so minute queries keep that day.
    assert (bundle / "instruments/all.txt").read_text().splitlines() == [
        "AAA\t2021-03-01 00:00:00\t2021-03-03 14:59:00",
        "BBB\t2021-03-01 00:00:00\t2021-03-03 14:59:00",
    ]
    assert (
        len(D.features(D.instruments("all"), ["$close"], "2021-03-03", "2021-03-03 15:00", freq="1min"))
        == 480
    )


def test_daily_bars_are_rolled_up_from_the_minutes(bundle: Path, truth: pd.DataFrame) -> None:
    day = D.features(["AAA", "BBB"], [f"${f}" for f in FIELDS], "2021-03-01", "2021-03-03", freq="day")
    day.columns = FIELDS
    for (symbol, date), minutes in truth.groupby(["instrument", truth["datetime"].dt.normalize()]):
        row = day.loc[(symbol, date)]
        volume = minutes["volume"].sum()
        expected = {
            "open": minutes["open"].iloc[0],
            "high": minutes["high"].max(),
            "low": minutes["low"].min(),
            "close": minutes["close"].iloc[-1],
            "volume": volume,
            "vwap": (minutes["vwap"] * minutes["volume"]).sum() / volume,
            "factor": minutes["factor"].iloc[0],
        }
        np.testing.assert_allclose(row[list(expected)].to_numpy(), list(expected.values()), rtol=1e-6)
    assert day.loc[("BBB", DAYS[1])].isna().all()  # BBB did not trade that day
    bbb = day.loc["BBB"]["close"]
    assert bbb.loc[DAYS[2]] / bbb.loc[DAYS[0]] - 1 == pytest.approx(
        day.loc[("BBB", DAYS[2]), "change"], rel=1e-5
    )


HEADER = "datetime,open,high,low,close,volume\n"


def _bars(*stamps: str) -> str:
    return HEADER + "".join(f"{s},10,11,9,10.5,1000\n" for s in stamps)


@pytest.mark.parametrize(
    ("files", "where", "message"),
    [
        ({"AAA.csv": _bars("2021-03-01 09:30", "2021-03-01 12:00")}, "AAA.csv:row 2", "outside the trading"),
        ({"AAA.csv": _bars("2021-03-01 14:59", "2021-03-01 15:00")}, "AAA.csv:row 2", "outside the trading"),
        ({"AAA.csv": _bars("2021-03-01 09:25", "2021-03-01 09:30")}, "AAA.csv:row 1", "outside the trading"),
        ({"AAA.csv": _bars("2021-03-01 09:30", "2021-03-01 09:31:30")}, "AAA.csv:row 2", "whole minute"),
        (
            {"AAA.csv": _bars("2021-03-01 09:30", "2021-03-01 09:31", "2021-03-02")},
            "AAA.csv:row 3",
            "mixed frequencies",
        ),
        (
            {
                "AAA.csv": _bars("2021-03-01", "2021-03-02"),
                "BBB.csv": _bars("2021-03-01 09:30", "2021-03-01 09:31"),
            },
            "BBB.csv:row 2",
            "mixed frequencies: 1-minute bars here but daily bars in",
        ),
        (
            {
                "AAA.csv": _bars("2021-03-01 09:30", "2021-03-01 09:31"),
                "BBB.csv": _bars("2021-03-01", "2021-03-02"),
            },
            "BBB.csv:row 1",
            "mixed frequencies: daily bars here but 1-minute bars in",
        ),
        (
            {"AAA.csv": _bars("2021-03-01 09:30", "2021-03-01 09:31", "2021-03-01 09:31")},
            "AAA.csv:row 3",
            "duplicate timestamp",
        ),
        (
            {"AAA.csv": _bars("2021-03-01 09:31", "2021-03-01 09:30")},
            "AAA.csv:row 2",
            "timestamps not sorted",
        ),
        (
            {
                "AAA.csv": _bars("2021-03-01 09:30", "2021-03-01 09:31").replace(
                    "10,11,9,10.5,1000\n2", "10,9,9,10.5,1000\n2"
                )
            },
            "AAA.csv:row 1",
            "high is below",
        ),
        (
            {
                "AAA.csv": "datetime,open,high,low,close,volume,factor\n"
                "2021-03-01 09:30,10,11,9,10.5,1000,1\n2021-03-01 09:31,10,11,9,10.5,1000,2\n"
            },
            "AAA.csv:row 2",
            "factor changes within a day",
        ),
    ],
    ids=[
        "lunch-break",
        "end-label-15:00",
        "pre-open-auction",
        "between-minutes",
        "date-among-minutes",
        "minute-file-after-daily-file",
        "daily-file-after-minute-file",
        "duplicate-minute",
        "unsorted-minutes",
        "per-bar-ohlc-check",
        "factor-within-a-day",
    ],
)
def test_bad_minute_input_is_refused_with_file_and_row(
    tmp_path: Path, files: dict[str, str], where: str, message: str
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for name, text in files.items():
        (src / name).write_text(text)
    with pytest.raises(DataError) as err:
        import_bundle(src, out)
    assert where in (err.value.where or ""), err.value.one_line()
    assert message in err.value.message, err.value.one_line()
    assert err.value.fix
    assert not out.exists()


def test_session_fix_explains_the_bar_labels(tmp_path: Path) -> None:
    (tmp_path / "AAA.csv").write_text(_bars("2021-03-01 14:59", "2021-03-01 15:00"))
    with pytest.raises(DataError) as err:
        import_bundle(tmp_path / "AAA.csv", tmp_path / "out")
    assert "09:30…11:29 and 13:00…14:59" in (err.value.fix or "")


def test_bar_grid_is_qlibs() -> None:
    from qlib.utils.time import get_min_cal

    times = [(pd.Timestamp(0) + pd.Timedelta(o)).time() for o in bar_offsets()]
    assert times == get_min_cal(0, "cn") and len(times) == 240
