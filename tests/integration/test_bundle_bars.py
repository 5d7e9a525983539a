"""``read_fields`` gives exactly qlib's frame for raw fields, on bundles with gaps and ragged files.

qlib is initialised with ``BundleDatasetProvider`` (as the workloads do), so ``D.features`` takes the fast
path; the expected frames come from qlib's own ``LocalDatasetProvider``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import qlib
from qlib.data.data import LocalDatasetProvider

from kubequant.workloads.data.bars import DATASET_PROVIDER, is_raw, read_fields
from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

FIELDS = ["$open", "$high", "$low", "$close", "$volume", "$vwap", "$factor"]


def _write_bin(path: Path, start: int, values: np.ndarray) -> None:
    np.concatenate([[np.float32(start)], values.astype("<f4")]).astype("<f4").tofile(path)


def _read_bin(path: Path) -> tuple[int, np.ndarray]:
    raw = np.fromfile(path, dtype="<f4")
    return int(raw[0]), raw[1:]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sample bundle made ragged by hand: the cases qlib's reader has rules for."""
    path = tmp_path_factory.mktemp("bars") / "bundle"
    write_sample_bundle(
        path,
        SampleSpec(
            instruments=12,
            start="2021-01-01",
            end="2021-12-31",
            seed=11,
            freqs=("day", "1min"),
            minute_instruments=3,
            minute_days=3,
        ),
    )
    features = path / "features"
    codes = sorted(p.name for p in features.iterdir())
    # 1. volume starts 40 days after the other fields; close ends 30 days early (fields' ranges differ).
    start, volume = _read_bin(features / codes[0] / "volume.day.bin")
    _write_bin(features / codes[0] / "volume.day.bin", start + 40, volume[40:])
    start, close = _read_bin(features / codes[0] / "close.day.bin")
    _write_bin(features / codes[0] / "close.day.bin", start, close[:-30])
    # 2. no factor file at all (qlib: an empty series for that field, rows from the others).
    (features / codes[1] / "factor.day.bin").unlink()
    # 3. NaN inside the range (a suspension written as NaN): still a row.
    start, opened = _read_bin(features / codes[2] / "open.day.bin")
    opened[10:20] = np.nan
    _write_bin(features / codes[2] / "open.day.bin", start, opened)
    # 4. every file of an instrument empty but its header: no rows.
    for bin_file in (features / codes[3]).glob("*.day.bin"):
        _write_bin(bin_file, 5, np.array([], dtype=np.float32))
    # 5. a market whose spans cut instruments (a late listing, a delisting, a gap between two spans).
    market = path / "instruments" / "ragged.txt"
    market.write_text(
        f"{codes[0].upper()}\t2021-03-01\t2021-12-31\n"
        f"{codes[2].upper()}\t2021-01-01\t2021-04-30\n"
        f"{codes[4].upper()}\t2021-01-01\t2021-02-26\n"
        f"{codes[4].upper()}\t2021-06-01\t2021-12-31\n"
        f"{codes[3].upper()}\t2021-01-01\t2021-12-31\n"
        f"{codes[5].upper()}\t2022-01-01\t2022-12-31\n"
    )
    os.chdir(path.parent)
    qlib.init(
        provider_uri=str(path),
        region="cn",
        kernels=1,
        logging_level=logging.WARNING,
        clear_mem_cache=True,
        dataset_provider=DATASET_PROVIDER,
    )
    return path


def qlib_frame(
    instruments: Any, fields: list[str], start: Any = None, end: Any = None, freq: str = "day"
) -> pd.DataFrame:
    """qlib's own reader: what D.features gives with qlib's default provider."""
    return LocalDatasetProvider().dataset(instruments, fields, start, end, freq)


def fast_frame(
    instruments: Any, fields: list[str], start: Any = None, end: Any = None, freq: str = "day"
) -> pd.DataFrame:
    """The fast path, checked to be taken (not a fallback), and D.features through the provider."""
    from qlib.data import D

    frame = read_fields(instruments, fields, start, end, freq)
    assert frame is not None, "read_fields declined raw fields"
    pd.testing.assert_frame_equal(D.features(instruments, fields, start, end, freq=freq), frame)
    return frame


def _codes(bundle: Path) -> list[str]:
    return sorted(p.name.upper() for p in (bundle / "features").iterdir())


def _assert_same(expected: pd.DataFrame, got: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert list(got.index.names) == ["instrument", "datetime"]


@pytest.mark.parametrize(
    ("start", "end"),
    [("2021-01-01", "2021-12-31"), ("2021-02-15", "2021-05-31"), (None, None), ("2021-12-20", "2022-03-01")],
)
def test_a_list_of_instruments_reads_as_qlib_does(bundle: Path, start: str | None, end: str | None) -> None:
    codes = [*reversed(_codes(bundle)), "SH999999"]  # unsorted, and one the bundle lacks
    _assert_same(qlib_frame(codes, FIELDS, start, end), fast_frame(codes, FIELDS, start, end))


def test_a_market_config_masks_rows_by_its_listing_spans(bundle: Path) -> None:
    from qlib.data import D

    market = D.instruments("ragged")
    got = fast_frame(market, ["$close", "$volume"], "2021-01-01", "2021-12-31")
    _assert_same(qlib_frame(market, ["$close", "$volume"], "2021-01-01", "2021-12-31"), got)
    assert (
        got.index.get_level_values("instrument").nunique() == 3
    )  # the empty one and the 2022 one have no rows


def test_field_order_and_subsets_follow_the_request(bundle: Path) -> None:
    codes = _codes(bundle)[:3]
    for fields in (["$factor", "$close"], ["$volume"], ["$close", "$open", "$factor", "$vwap"]):
        _assert_same(
            qlib_frame(codes, fields, "2021-01-01", "2021-12-31"),
            fast_frame(codes, fields, "2021-01-01", "2021-12-31"),
        )


def test_minute_bars_read_as_qlib_does(bundle: Path) -> None:
    codes = [
        line.split("\t")[0] for line in (bundle / "instruments" / "intraday.txt").read_text().splitlines()
    ]
    fields = ["$close", "$volume", "$vwap"]
    expected = qlib_frame(codes, fields, None, None, freq="1min")
    assert len(expected) > 0
    _assert_same(expected, fast_frame(codes, fields, None, None, freq="1min"))


def test_a_period_without_trading_days_is_an_empty_frame_like_qlibs(bundle: Path) -> None:
    codes = _codes(bundle)
    expected = qlib_frame(codes, ["$close"], "2030-01-01", "2030-02-01")
    got = fast_frame(codes, ["$close"], "2030-01-01", "2030-02-01")
    assert got.empty and expected.empty
    assert list(got.columns) == list(expected.columns)


def test_expressions_and_duplicates_are_left_to_qlib(bundle: Path) -> None:
    from qlib.data import D

    codes = _codes(bundle)[:4]
    for fields in (["$close", "Ref($close, 1)"], ["$close", "$close"], ["$close/$factor"]):
        assert read_fields(codes, fields, "2021-01-01", "2021-06-30") is None
        expected = qlib_frame(codes, fields, "2021-01-01", "2021-06-30")
        pd.testing.assert_frame_equal(D.features(codes, fields, "2021-01-01", "2021-06-30"), expected)
    assert is_raw("$close") and is_raw("$VWAP") and not is_raw("Ref($close, 1)") and not is_raw("close")
