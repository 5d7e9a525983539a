"""Data quality of a run, measured on a hand-made bundle whose gaps are known cell by cell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kubequant.workloads.data import quality
from kubequant.workloads.data.qlib_format import BundleWriter

CAL = pd.bdate_range("2024-01-01", periods=10)
NAN = np.nan


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("q") / "bundle"
    with BundleWriter(out, CAL) as w:
        # AAA: all 10 days, two NaN closes (a suspension) and one NaN volume.
        close = np.arange(1, 11, dtype=float)
        close[[3, 4]] = NAN
        volume = np.ones(10)
        volume[7] = NAN
        w.add_instrument("AAA", 0, {"close": close, "volume": volume})
        # BBB: listed from day 5 only (its file starts at index 5), no volume file at all.
        w.add_instrument("BBB", 5, {"close": np.ones(5)})
        # CCC: a file with every value NaN: a member with no data.
        w.add_instrument("CCC", 0, {"close": np.full(10, NAN), "volume": np.full(10, NAN)})
        w.commit()
    return out


def test_missing_ratio_counts_nan_and_cells_outside_the_file_over_the_member_days(bundle: Path) -> None:
    spans = {"AAA": [(CAL[0], CAL[9])], "BBB": [(CAL[0], CAL[9])], "CCC": [(CAL[0], CAL[9])]}
    q = quality.measure(bundle, spans, CAL[0], CAL[9], ["close", "volume"])
    assert q.cells == 30
    # close: AAA 2 NaN, BBB 5 days before its file starts, CCC 10 NaN.
    assert q.missing_ratio["close"] == pytest.approx((2 + 5 + 10) / 30)
    # volume: AAA 1 NaN, BBB has no file (10), CCC 10 NaN.
    assert q.missing_ratio["volume"] == pytest.approx((1 + 10 + 10) / 30)
    assert q.instruments == 3
    assert q.instruments_missing == ("CCC",)


def test_only_the_period_and_the_membership_spans_are_read(bundle: Path) -> None:
    # AAA is a member only on days 2..5 (its NaN closes are days 3 and 4); BBB only before it had data.
    spans = {"AAA": [(CAL[2], CAL[5])], "BBB": [(CAL[0], CAL[3])], "DDD": [(CAL[8], CAL[9])]}
    q = quality.measure(bundle, spans, CAL[1], CAL[7], ["close"])
    # AAA: days 2..5 (4 cells, 2 NaN); BBB: days 1..3 (3 cells, none in its file); DDD: outside the period.
    assert q.cells == 7
    assert q.missing_ratio["close"] == pytest.approx(5 / 7)
    assert q.instruments == 2
    assert q.instruments_missing == ("BBB",)


def test_an_instrument_the_bundle_never_had_is_missing(bundle: Path) -> None:
    q = quality.measure(bundle, {"ZZZ": [(CAL[0], CAL[9])]}, CAL[0], CAL[9], ["close"])
    assert q.missing_ratio == {"close": 1.0}
    assert q.instruments_missing == ("ZZZ",)


def test_results_name_at_most_twenty_missing_instruments_but_count_all(bundle: Path) -> None:
    spans = {f"X{i:03d}": [(CAL[0], CAL[9])] for i in range(25)}
    got = quality.measure(bundle, spans, CAL[0], CAL[9], ["close"]).to_results()
    assert got["instrumentsMissing"] == 25
    assert len(got["missingInstruments"]) == 20
    assert got["missingInstruments"][0] == "X000"


def test_alpha158_reads_the_ohlc_vwap_volume_and_the_exchange_fields() -> None:
    assert quality.handler_fields("Alpha158") == ("close", "factor", "high", "low", "open", "volume", "vwap")
    assert set(quality.handler_fields("Alpha360")) >= {
        "close",
        "open",
        "high",
        "low",
        "vwap",
        "volume",
        "factor",
    }
    assert quality.handler_fields("my.module.CustomHandler") == tuple(
        sorted(set(quality.DEFAULT_FIELDS) | set(quality.EXCHANGE_FIELDS))
    )
    assert quality.fields_in(["Ref($close, 1)/$open", "Mean($volume,5)"]) == {"close", "open", "volume"}
