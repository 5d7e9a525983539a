"""The compiled Alpha360 handler vs qlib's on a sample bundle: same frame, column for column."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from feature_frames import assert_frames_match

from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

pytestmark = [pytest.mark.integration]

# Eight stocks over half a year, with the generator's late listings, delistings and suspensions
# (qlib's own Alpha360 evaluates 360 expressions per stock: the reference is the slow side).
SAMPLE = SampleSpec(instruments=8, start="2020-01-01", end="2020-06-30", seed=11)
KWARGS = {
    "instruments": "all",
    "start_time": "2020-01-01",
    "end_time": "2020-06-30",
    "fit_start_time": "2020-01-01",
    "fit_end_time": "2020-04-30",
}
# The processors' pass runs on the last two weeks only: qlib's ProcessInf (in Alpha360's default
# inference processors) loops over every column of every day, ~0.9 s a day on this sample, and is
# qlib's code on both sides. The raw features are compared over the whole half year.
PROCESSED_KWARGS = {
    **KWARGS,
    "start_time": "2020-06-15",
    "fit_start_time": "2020-06-15",
    "fit_end_time": "2020-06-22",
}
RAW_ONLY = {"infer_processors": [], "learn_processors": []}
LOADER_LOG = "kubequant.workloads.features.loader"


@pytest.fixture(scope="module")
def alpha360_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("alpha360-sample") / "bundle"
    write_sample_bundle(path, SAMPLE)
    return path


def compiled(handler: str, kwargs: dict[str, Any]) -> Any:
    from qlib.utils import init_instance_by_config

    return init_instance_by_config(
        {"class": handler, "module_path": "kubequant.workloads.features", "kwargs": kwargs}
    )


def test_alpha360_equals_qlib_raw_learn_and_infer(
    alpha360_bundle: Path, use_qlib: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    from qlib.contrib.data.handler import Alpha360 as QlibAlpha360
    from qlib.data.dataset.handler import DataHandlerLP

    use_qlib(alpha360_bundle)
    expected = QlibAlpha360(**KWARGS, **RAW_ONLY)
    with caplog.at_level(logging.INFO, logger=LOADER_LOG):
        got = compiled("Alpha360", {**KWARGS, **RAW_ONLY})
    assert not [r for r in caplog.records if r.name == LOADER_LOG], "fell back to qlib's engine"
    assert isinstance(got, QlibAlpha360)

    raw = expected.fetch(data_key=DataHandlerLP.DK_R)
    assert raw.shape[1] == 361 and raw.index.get_level_values("datetime").nunique() > 100
    assert raw.isna().any(axis=None), "the sample should exercise suspended days and short histories"
    assert_frames_match(raw, got.fetch(data_key=DataHandlerLP.DK_R))

    # Learn and infer with Alpha360's default processors (qlib's: ProcessInf, ZScoreNorm and Fillna
    # at inference, DropnaLabel and CSZScoreNorm of the label when learning).
    expected = QlibAlpha360(**PROCESSED_KWARGS)
    got = compiled("Alpha360", PROCESSED_KWARGS)
    assert (
        [type(p).__name__ for p in got.infer_processors]
        == [type(p).__name__ for p in expected.infer_processors]
        == ["ProcessInf", "ZScoreNorm", "Fillna"]
    )
    assert [type(p).__name__ for p in got.learn_processors] == [
        type(p).__name__ for p in expected.learn_processors
    ]
    for key in (DataHandlerLP.DK_R, DataHandlerLP.DK_L, DataHandlerLP.DK_I):
        want = expected.fetch(data_key=key)
        assert len(want) > 0
        assert_frames_match(want, got.fetch(data_key=key))


def test_alpha360vwap_labels_on_vwap(alpha360_bundle: Path, use_qlib: Callable[[Path], None]) -> None:
    from qlib.data import D
    from qlib.data.dataset.handler import DataHandlerLP

    from kubequant.workloads.features import Alpha360vwap

    use_qlib(alpha360_bundle)
    got = Alpha360vwap(**KWARGS, **RAW_ONLY).fetch(data_key=DataHandlerLP.DK_R)[["LABEL0"]]
    expr = "Ref($vwap, -2)/Ref($vwap, -1) - 1"
    want = D.features(D.instruments("all"), [expr], KWARGS["start_time"], KWARGS["end_time"])
    want = want.swaplevel().sort_index().rename(columns={expr: "LABEL0"})
    assert_frames_match(want, got.reindex(want.index))
