"""Bad input to ``kubequant data import`` is refused with the file, the row or column, and a fix."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from kubequant.errors import DataError
from kubequant.workloads.data.importer import import_bundle

pytestmark = pytest.mark.unit

HEADER = "date,open,high,low,close,volume\n"
GOOD = (
    HEADER
    + "2020-01-02,10,11,9,10.5,1000\n2020-01-03,10.5,11,10,10.8,1200\n2020-01-06,10.8,11.5,10.5,11,900\n"
)


def _parquet_with(**changes: object) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "Date": pd.to_datetime(["2020-01-02", "2020-01-03", "2020-01-06"]),
            "Open": [10.0, 10.5, 10.8],
            "High": [11.0, 11.0, 11.5],
            "Low": [9.0, 10.0, 10.5],
            "Close": [10.5, 10.8, 11.0],
            "Volume": [1000.0, 1200.0, 900.0],
        }
    )
    for column, (row, value) in changes.items():
        frame.loc[row, column] = value
    return frame


# (id, files to write, text the error's `where` must contain, text its message must contain)
CASES: list[tuple[str, dict[str, str | pd.DataFrame], str, str]] = [
    (
        "unsorted-dates",
        {"AAA.csv": HEADER + "2020-01-03,10,11,9,10.5,1000\n2020-01-02,10,11,9,10.5,1000\n"},
        "AAA.csv:row 2",
        "dates not sorted",
    ),
    (
        "duplicate-dates",
        {"AAA.csv": GOOD + "2020-01-06,10.8,11.5,10.5,11,900\n"},
        "AAA.csv:row 4",
        "duplicate date",
    ),
    (
        "negative-price",
        {"AAA.csv": GOOD.replace("2020-01-03,10.5,", "2020-01-03,-10.5,")},
        "AAA.csv:row 2",
        "'open' is zero or negative",
    ),
    (
        "zero-close",
        {"AAA.csv": GOOD.replace("10.5,1000", "0,1000")},
        "AAA.csv:row 1",
        "'close' is zero or negative",
    ),
    (
        "high-below-close",
        {"AAA.csv": GOOD.replace("10.8,11.5,10.5,11,", "10.8,10.9,10.5,11,")},
        "AAA.csv:row 3",
        "high is below max(open, close)",
    ),
    (
        "low-above-open",
        {"AAA.csv": GOOD.replace("10.5,11,10,10.8", "10.5,11,10.6,10.8")},
        "AAA.csv:row 2",
        "low is above min(open, close)",
    ),
    ("nan-close", {"AAA.csv": GOOD.replace("10.5,11,10,10.8,", "10.5,11,10,,")}, "AAA.csv:row 2", "'close'"),
    ("nan-volume", {"AAA.csv": GOOD.replace(",900", ",NaN")}, "AAA.csv:row 3", "'volume'"),
    ("not-a-number", {"AAA.csv": GOOD.replace(",1200", ",12OO")}, "AAA.csv:row 2", "'12OO', not a number"),
    (
        "missing-columns",
        {"AAA.csv": "date,open,low,close\n2020-01-02,10,9,10.5\n"},
        "AAA.csv",
        "missing required column(s): high, volume",
    ),
    (
        "missing-date-column",
        {"AAA.csv": "day,open,high,low,close,volume\n1,1,1,1,1,1\n"},
        "AAA.csv",
        "missing required column(s): date",
    ),
    (
        "unparseable-date",
        {"AAA.csv": GOOD.replace("2020-01-03", "2020-13-45")},
        "AAA.csv:row 2",
        "unparseable date",
    ),
    ("missing-date", {"AAA.csv": GOOD.replace("2020-01-03", "")}, "AAA.csv:row 2", "missing date"),
    (
        "intraday-mixed-with-daily",
        {"AAA.csv": GOOD.replace("2020-01-03", "2020-01-03 10:30:00")},
        "AAA.csv:row 2",
        "mixed frequencies",
    ),
    (
        "time-parts-differ-in-a-file",
        {
            "AAA.csv": GOOD.replace("2020-01-02", "2020-01-02 15:00")
            .replace("2020-01-03", "2020-01-03 09:30")
            .replace("2020-01-06", "2020-01-06 15:00")
        },
        "AAA.csv:row 2",
        "time parts differ",
    ),
    (
        "time-parts-differ-between-files",
        {
            "AAA.csv": GOOD,
            "BBB.csv": GOOD.replace("-02,", "-02 15:00,")
            .replace("-03,", "-03 15:00,")
            .replace("-06,", "-06 15:00,"),
        },
        "BBB.csv",
        "mixed frequencies",
    ),
    (
        # 1-minute bars are imported now (tests/unit/test_importer_minutes.py); off-session ones are not.
        "intraday-bar-outside-sessions",
        {"AAA.csv": HEADER + "2020-01-02 09:31,10,11,9,10.5,1000\n2020-01-02 11:30,10,11,9,10.5,1000\n"},
        "AAA.csv:row 2",
        "outside the trading sessions",
    ),
    ("empty-file", {"AAA.csv": ""}, "AAA.csv", "file is empty"),
    ("header-only", {"AAA.csv": HEADER}, "AAA.csv", "no data rows"),
    ("no-files", {"notes.txt": "hello"}, "src", "no CSV or Parquet files found"),
    ("bad-symbol-from-file-name", {"A B.csv": GOOD}, "A B.csv", "not usable"),
    (
        "long-table-missing-instrument",
        {"all.csv": "symbol," + HEADER + "AAA,2020-01-02,10,11,9,10.5,1000\n,2020-01-03,10,11,9,10.5,1000\n"},
        "all.csv:row 2",
        "missing value in column 'symbol'",
    ),
    (
        "long-table-rows-count-in-the-file",
        {
            "all.csv": "Instrument,"
            + HEADER.title()
            + "AAA,2020-01-02,10,11,9,10.5,1000\nBBB,2020-01-02,10,11,9,10.5,1000\n"
            + "AAA,2020-01-03,10,11,9,10.5,1000\nBBB,2020-01-03,10,9,9,10.5,1000\n"
        },
        "all.csv:row 4",
        "BBB: high is below",
    ),
    (
        "instrument-in-two-files",
        {"AAA.csv": GOOD, "more.csv": "instrument," + HEADER + "aaa,2020-01-07,10,11,9,10.5,1000\n"},
        "more.csv",
        "also appears in",
    ),
    (
        "parquet-negative-volume",
        {"AAA.parquet": _parquet_with(Volume=(2, -5.0))},
        "AAA.parquet:row 3",
        "negative",
    ),
    (
        "parquet-low-above-close",
        {"AAA.parquet": _parquet_with(Low=(1, 10.9))},
        "AAA.parquet:row 2",
        "low is above",
    ),
    (
        "bad-factor",
        {
            "AAA.csv": GOOD.replace(HEADER, HEADER.strip() + ",factor\n")
            .replace("\n2", ",1\n2")
            .replace("900\n", "900,0\n")
        },
        "AAA.csv:row 3",
        "'factor' is zero",
    ),
    (
        "duplicate-columns",
        {"AAA.csv": "date,Close,open,high,low,close,volume\n"},
        "AAA.csv",
        "duplicate column",
    ),
    (
        "several-time-zones",
        {
            "AAA.csv": HEADER
            + "2020-01-02 00:00+08:00,10,11,9,10.5,1000\n2020-01-03 00:00+09:00,10,11,9,10.5,1000\n"
        },
        "AAA.csv",
        "Mixed timezones",
    ),
    (
        "ragged-csv",
        {"AAA.csv": GOOD + "2020-01-07,10,11,9,10.5,1000,7,8\n"},
        "AAA.csv",
        "cannot be read",
    ),
]


def _write(src: Path, files: dict[str, str | pd.DataFrame]) -> None:
    src.mkdir()
    for name, content in files.items():
        if isinstance(content, pd.DataFrame):
            content.to_parquet(src / name)
        else:
            (src / name).write_text(content)


@pytest.mark.parametrize(("files", "where", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_file_and_row(
    tmp_path: Path, files: dict[str, str | pd.DataFrame], where: str, message: str
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    _write(src, files)
    with pytest.raises(DataError) as err:
        import_bundle(src, out)
    assert where in (err.value.where or "")
    assert message in err.value.message
    assert err.value.fix, "every refusal says how to fix it"
    assert err.value.exit_code == 2
    assert not out.exists(), "a failed import leaves nothing behind"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_missing_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        import_bundle(tmp_path / "nope", tmp_path / "out")


def test_a_single_file_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    (tmp_path / "prices.xlsx").write_text("x")
    with pytest.raises(DataError, match="not a CSV or Parquet file"):
        import_bundle(tmp_path / "prices.xlsx", tmp_path / "out")


def test_a_non_empty_output_that_is_not_a_bundle_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "src", {"AAA.csv": GOOD})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(DataError) as err:
        import_bundle(tmp_path / "src", tmp_path / "out")
    assert err.value.where == str(tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_one_line_names_where_what_and_fix(tmp_path: Path) -> None:
    _write(tmp_path / "src", {"AAA.csv": GOOD.replace(",1200", ",-1200")})
    with pytest.raises(DataError) as err:
        import_bundle(tmp_path / "src", tmp_path / "out")
    line = err.value.one_line()
    assert line.startswith(f"{tmp_path / 'src' / 'AAA.csv'}:row 2: AAA: column 'volume' is negative")
    assert "fix:" in line
