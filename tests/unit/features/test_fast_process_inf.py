"""The compiled handlers' ProcessInf gives qlib's ProcessInf's frame, value for value, with or without ±inf."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from qlib.data.dataset import processor as qlib_processor

from kubequant.workloads.features.processors import ProcessInf, with_fast_processors

pytestmark = pytest.mark.unit


def frame(seed: int, with_inf: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    days = pd.date_range("2022-01-03", periods=40, freq="B")
    codes = [f"SH60000{i}" for i in range(6)]
    index = pd.MultiIndex.from_product([days, codes], names=["datetime", "instrument"])
    values = rng.normal(size=(len(index), 5)).astype(np.float32)
    values[rng.random(values.shape) < 0.1] = np.nan
    if with_inf:
        values[3, 1], values[50, 4], values[51, 4] = np.inf, -np.inf, np.inf
    columns = pd.MultiIndex.from_product([["feature"], [f"F{i}" for i in range(5)]])
    df = pd.DataFrame(values, index=index, columns=columns)
    return df.sample(frac=1.0, random_state=seed)  # unsorted, as a loader may hand it over


@pytest.mark.parametrize("with_inf", [False, True])
def test_the_same_frame_as_qlib_s(with_inf: bool) -> None:
    df = frame(3, with_inf)
    ours = ProcessInf()(df.copy())
    theirs = qlib_processor.ProcessInf()(df.copy())
    pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    assert not np.isinf(ours.to_numpy()).any()


def test_a_frame_without_inf_skips_qlib_s_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: object, df: pd.DataFrame) -> pd.DataFrame:
        raise AssertionError("qlib's per-day pass ran on a frame without ±inf")

    monkeypatch.setattr(qlib_processor.ProcessInf, "__call__", refuse)
    out = ProcessInf()(frame(4, with_inf=False))
    assert out.index.is_monotonic_increasing


def test_only_qlib_s_own_process_inf_is_replaced() -> None:
    mine = {"class": "ProcessInf", "module_path": "my.processors", "kwargs": {}}
    norm = {"class": "ZScoreNorm", "kwargs": {"fit_start_time": "2020-01-01", "fit_end_time": "2020-12-31"}}
    out = with_fast_processors(
        [{"class": "ProcessInf", "kwargs": {}}, norm, mine, qlib_processor.ProcessInf()]
    )
    assert isinstance(out[0], ProcessInf) and isinstance(out[3], ProcessInf)
    assert out[1] is norm and out[2] is mine
