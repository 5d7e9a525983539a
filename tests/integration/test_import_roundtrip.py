"""CSV/Parquet in, qlib bundle out: qlib's ``D.features`` returns exactly what went in (float32)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from qlib.data import D
from qlib_session import use_bundle

from kubequant.errors import DataError
from kubequant.workloads.data.importer import import_bundle
from kubequant.workloads.data.qlib_format import bundle_checksum

pytestmark = pytest.mark.integration

FIELDS = ["open", "high", "low", "close", "volume", "factor", "vwap", "amount", "change"]


def _truth() -> pd.DataFrame:
    """Three instruments with different spans and a gap (a suspension) inside one of them."""
    rng = np.random.default_rng(0)
    days = pd.bdate_range("2021-01-04", "2021-03-31")
    spans = {"AAA": days, "BBB": days[10:50].delete([5, 6, 7]), "CCC": days[:-5]}
    frames = []
    for symbol, dates in spans.items():
        n = len(dates)
        close = 10 * np.cumprod(1 + rng.normal(0, 0.02, n))
        open_ = close * (1 + rng.normal(0, 0.01, n))
        high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.01, n)))
        low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.01, n)))
        factor = np.where(np.arange(n) < n // 2, 1.0, 1.25) if symbol == "CCC" else np.ones(n)
        volume = rng.integers(1, 1000, n) * 100.0
        vwap = (high + low + close) / 3
        frames.append(
            pd.DataFrame(
                {"instrument": symbol, "date": dates, "open": open_, "high": high, "low": low, "close": close}
                | {"volume": volume, "factor": factor, "vwap": vwap, "amount": vwap * volume}
            )
        )
    truth = pd.concat(frames, ignore_index=True)
    truth["change"] = truth.groupby("instrument")["close"].pct_change()
    return truth


def _per_instrument(
    write: Callable[[pd.DataFrame, Path], None], suffix: str
) -> Callable[[pd.DataFrame, Path], Path]:
    def build(truth: pd.DataFrame, root: Path) -> Path:
        src = root / "src"
        src.mkdir()
        for symbol, frame in truth.groupby("instrument"):
            frame = frame.drop(columns=["instrument", "change"])
            if symbol == "AAA":
                # factor is optional (1.0), and column names are case-insensitive
                frame = frame.drop(columns=["factor"]).rename(columns=str.upper)
            write(frame, src / f"{str(symbol).lower()}{suffix}")
        return src

    return build


def _long_table(write: Callable[[pd.DataFrame, Path], None], name: str, column: str) -> Callable[..., Path]:
    def build(truth: pd.DataFrame, root: Path) -> Path:
        # Sorted by date across instruments, the way many exports come.
        frame = (
            truth.drop(columns=["change"])
            .sort_values(["date", "instrument"])
            .rename(columns={"instrument": column})
        )
        write(frame.rename(columns={"date": "datetime"}), root / name)
        return root / name

    return build


def _csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False)


def _parquet(frame: pd.DataFrame, path: Path) -> None:
    frame.to_parquet(path, index=False)


LAYOUTS = {
    "csv-per-instrument": _per_instrument(_csv, ".csv"),
    "parquet-per-instrument": _per_instrument(_parquet, ".parquet"),
    "csv-long-table": _long_table(_csv, "bars.csv", "Symbol"),
    "parquet-long-table": _long_table(_parquet, "bars.parquet", "instrument"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_roundtrip_through_qlib(tmp_path: Path, layout: str) -> None:
    truth = _truth()
    source = LAYOUTS[layout](truth, tmp_path)
    summary = import_bundle(source, tmp_path / "bundle")
    assert summary.rows == len(truth)
    assert summary.bundle.instruments == 3
    assert "3 instruments" in summary.describe()

    use_bundle(tmp_path / "bundle")
    calendar = pd.DatetimeIndex(D.calendar())
    assert calendar.equals(pd.DatetimeIndex(sorted(truth["date"].unique())))
    spans = D.list_instruments(D.instruments("all"))
    assert spans["BBB"] == [
        (truth[truth.instrument == "BBB"].date.min(), truth[truth.instrument == "BBB"].date.max())
    ]

    got = D.features(
        ["AAA", "BBB", "CCC"], [f"${f}" for f in FIELDS], start_time=calendar[0], end_time=calendar[-1]
    )
    got.columns = FIELDS
    traded = got.dropna(subset=["close"])
    expected = truth.set_index(["instrument", "date"])[FIELDS].sort_index()
    traded.index = traded.index.set_names(["instrument", "date"])
    assert traded.index.equals(expected.index)
    for field in FIELDS:
        np.testing.assert_array_equal(
            traded[field].to_numpy(), expected[field].to_numpy(dtype=np.float32), field
        )
    # BBB's missing days inside its span read as NaN bars.
    gaps = got.loc["BBB"]["close"].isna()
    assert gaps.sum() == 3 and got.loc["BBB"][gaps].isna().all().all()


def test_cli_imports_and_refuses_bad_input_with_exit_code_2(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kubequant.cli import main

    source = LAYOUTS["csv-per-instrument"](_truth(), tmp_path)
    result = CliRunner().invoke(main, ["data", "import", "--from", str(source), "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert "3 instruments" in result.output
    (source / "bbb.csv").write_text("date,open,high,low,close,volume\n2021-01-04,1,1,1,-1,1\n")
    result = CliRunner().invoke(main, ["data", "import", "--from", str(source), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert "bbb.csv:row 1" in result.output and "'close' is zero or negative" in result.output
    assert not (tmp_path / "c").exists()


def test_a_single_per_instrument_file(tmp_path: Path) -> None:
    truth = _truth()
    one = truth[truth.instrument == "CCC"].drop(columns=["instrument", "change"])
    one.to_csv(tmp_path / "ccc.csv", index=False)
    summary = import_bundle(tmp_path / "ccc.csv", tmp_path / "bundle")
    assert summary.bundle.instruments == 1
    assert (tmp_path / "bundle/instruments/all.txt").read_text().startswith("CCC\t2021-01-04\t")


def test_reimport_replaces_and_a_failed_import_keeps_the_old_bundle(tmp_path: Path) -> None:
    truth = _truth()
    out = tmp_path / "bundle"
    import_bundle(LAYOUTS["csv-long-table"](truth, tmp_path), out)
    bad = tmp_path / "bad"
    bad.mkdir()
    truth.assign(high=truth["low"] * 0.5).to_csv(bad / "bars.csv", index=False)
    before = bundle_checksum(out)
    with pytest.raises(DataError, match="high is below"):
        import_bundle(bad, out)
    assert bundle_checksum(out) == before

    fewer = tmp_path / "fewer"
    fewer.mkdir()
    truth[truth.instrument != "BBB"].to_csv(fewer / "bars.csv", index=False)
    import_bundle(fewer, out)
    assert [line.split("\t")[0] for line in (out / "instruments/all.txt").read_text().splitlines()] == [
        "AAA",
        "CCC",
    ]
    assert not (out / "features/bbb").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "bars.csv", "bundle", "fewer"]
