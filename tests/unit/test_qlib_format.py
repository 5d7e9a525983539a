"""The qlib binary-layout writer: exact file layout, atomic replacement, nothing half-written."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kubequant.errors import DataError
from kubequant.workloads.data.qlib_format import (
    BundleWriter,
    bundle_checksum,
    check_symbol,
    encode_feature,
    is_kubequant_bundle,
    read_feature,
)

pytestmark = pytest.mark.unit

CALENDAR = pd.to_datetime(["2020-01-02", "2020-01-03", "2020-01-06", "2020-01-07", "2020-01-08"])


def _write_small(out: Path) -> None:
    with BundleWriter(out, CALENDAR) as writer:
        writer.add_instrument("aaa", 1, {"close": np.array([10.0, np.nan, 11.0]), "factor": np.ones(3)})
        writer.add_instrument("BBB", 0, {"close": np.arange(5.0) + 1, "factor": np.ones(5)})
        writer.add_instrument("IDX", 0, {"close": np.full(5, 1000.0), "factor": np.ones(5)}, markets=())
        writer.commit({"generator": "test"})


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_feature_bytes_are_start_index_then_little_endian_float32() -> None:
    assert encode_feature(3, np.array([1.5, np.nan])) == struct.pack("<fff", 3.0, 1.5, float("nan"))


@given(start=st.integers(0, 2**24 - 1), values=arrays(np.float32, st.integers(1, 50)))
def test_feature_roundtrip(tmp_path_factory: pytest.TempPathFactory, start: int, values: np.ndarray) -> None:
    path = tmp_path_factory.mktemp("bin") / "close.day.bin"
    path.write_bytes(encode_feature(start, values))
    got_start, got = read_feature(path)
    assert got_start == start
    np.testing.assert_array_equal(got, values)


def test_layout_matches_what_qlib_reads(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    _write_small(out)
    assert (out / "calendars/day.txt").read_text().splitlines() == [d.strftime("%Y-%m-%d") for d in CALENDAR]
    assert (out / "instruments/all.txt").read_text().splitlines() == [
        "AAA\t2020-01-03\t2020-01-07",
        "BBB\t2020-01-02\t2020-01-08",
    ]
    start, values = read_feature(out / "features/aaa/close.day.bin")
    assert start == 1
    np.testing.assert_array_equal(values, np.array([10.0, np.nan, 11.0], dtype=np.float32))
    # Listed nowhere, but its features are there (a benchmark).
    assert (out / "features/idx/close.day.bin").is_file()
    assert not (out / "instruments/idx.txt").exists()
    manifest = json.loads((out / "meta/bundle.json").read_text())
    assert manifest["instruments"] == 2 and manifest["generator"] == "test"
    assert manifest["checksum"] == bundle_checksum(out)
    assert is_kubequant_bundle(out)
    assert _siblings(out) == []  # no temp dirs left beside it


def test_same_content_gives_same_checksum(tmp_path: Path) -> None:
    _write_small(tmp_path / "a")
    _write_small(tmp_path / "b")
    assert bundle_checksum(tmp_path / "a") == bundle_checksum(tmp_path / "b")
    (tmp_path / "b/features/aaa/close.day.bin").write_bytes(encode_feature(1, np.array([10.0, 1.0, 11.0])))
    assert bundle_checksum(tmp_path / "a") != bundle_checksum(tmp_path / "b")


def test_windows_device_names_use_qlibs_folder_name(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "b", CALENDAR) as writer:
        writer.add_instrument("CON", 0, {"close": np.ones(5)})
        writer.commit()
    assert (tmp_path / "b/features/_qlib_con/close.day.bin").is_file()


def test_error_inside_the_block_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with pytest.raises(RuntimeError), BundleWriter(out, CALENDAR) as writer:
        writer.add_instrument("AAA", 0, {"close": np.ones(5)})
        raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_leaving_without_commit_leaves_nothing(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "bundle", CALENDAR) as writer:
        writer.add_instrument("AAA", 0, {"close": np.ones(5)})
    assert list(tmp_path.iterdir()) == []


def test_replaces_a_previous_bundle(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    _write_small(out)
    with BundleWriter(out, CALENDAR[:2]) as writer:
        writer.add_instrument("ZZZ", 0, {"close": np.ones(2)})
        writer.commit()
    assert (out / "instruments/all.txt").read_text() == "ZZZ\t2020-01-02\t2020-01-03\n"
    assert not (out / "features/aaa").exists()
    assert _siblings(out) == []


def test_failed_rewrite_keeps_the_previous_bundle(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    _write_small(out)
    before = bundle_checksum(out)
    with pytest.raises(RuntimeError), BundleWriter(out, CALENDAR):
        raise RuntimeError("boom")
    assert bundle_checksum(out) == before
    assert _siblings(out) == []


def test_an_empty_directory_is_fine(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    _write_small(out)
    assert is_kubequant_bundle(out)


def test_refuses_to_replace_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(DataError) as err:
        BundleWriter(out, CALENDAR)
    assert err.value.where == str(out)
    assert "not a kubequant bundle" in err.value.message
    assert (out / "thesis.tex").read_text() == "years of work"
    assert _siblings(out) == []


def test_refuses_a_file_as_output(tmp_path: Path) -> None:
    out = tmp_path / "file"
    out.write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        BundleWriter(out, CALENDAR)


@pytest.mark.parametrize("symbol", ["", "a/b", "a\tb", "../x", ".hidden", "a b", "abc\n"])
def test_unsafe_symbols_are_refused(symbol: str) -> None:
    with pytest.raises(DataError, match="not usable"):
        check_symbol(symbol, where="here")


def test_symbols_are_upper_cased() -> None:
    assert check_symbol("sh600000", where="here") == "SH600000"


def test_bad_spans_and_lengths_are_refused(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "b", CALENDAR) as writer:
        with pytest.raises(ValueError, match="outside the calendar"):
            writer.add_instrument("AAA", 3, {"close": np.ones(3)})
        with pytest.raises(ValueError, match="equal length"):
            writer.add_instrument("AAA", 0, {"close": np.ones(3), "open": np.ones(2)})


def test_freq_is_checked() -> None:
    with pytest.raises(NotImplementedError, match="1min"):
        BundleWriter(Path("/nonexistent/x"), CALENDAR, freq="1min")
    with pytest.raises(ValueError, match="unknown freq"):
        BundleWriter(Path("/nonexistent/x"), CALENDAR, freq="week")
