"""The compiled Alpha360 handler vs qlib's on a sample bundle: same frame, column for column."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

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
LOADER_LOG = "kubequant.workloads.features.loader"


@pytest.fixture(scope="module")
def alpha360_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("alpha360-sample") / "bundle"
    write_sample_bundle(path, SAMPLE)
    return path


def test_alpha360_equals_qlib_raw_learn_and_infer(
    alpha360_bundle: Path, use_qlib: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    from qlib.contrib.data.handler import Alpha360 as QlibAlpha360
    from qlib.data.dataset.handler import DataHandlerLP
    from qlib.utils import init_instance_by_config

    use_qlib(alpha360_bundle)
    expected = QlibAlpha360(**KWARGS)
    with caplog.at_level(logging.INFO, logger=LOADER_LOG):
        got = init_instance_by_config(
            {"class": "Alpha360", "module_path": "kubequant.workloads.features", "kwargs": KWARGS}
        )
    assert not [r for r in caplog.records if r.name == LOADER_LOG], "fell back to qlib's engine"
    assert isinstance(got, QlibAlpha360)

    raw = expected.fetch(data_key=DataHandlerLP.DK_R)
    assert raw.shape[1] == 361 and list(raw.columns) == list(got.fetch(data_key=DataHandlerLP.DK_R).columns)
    assert raw.isna().any(axis=None), "the sample should exercise suspended days and short histories"
    # Learn and infer run qlib's processors (Alpha360's infer default normalises and fills).
    for key in (DataHandlerLP.DK_R, DataHandlerLP.DK_L, DataHandlerLP.DK_I):
        assert_frames_match(expected.fetch(data_key=key), got.fetch(data_key=key))


def test_alpha360vwap_labels_on_vwap(alpha360_bundle: Path, use_qlib: Callable[[Path], None]) -> None:
    from qlib.data import D
    from qlib.data.dataset.handler import DataHandlerLP

    from kubequant.workloads.features import Alpha360vwap

    use_qlib(alpha360_bundle)
    got = Alpha360vwap(**KWARGS).fetch(data_key=DataHandlerLP.DK_R)[["LABEL0"]]
    expr = "Ref($vwap, -2)/Ref($vwap, -1) - 1"
    want = D.features(D.instruments("all"), [expr], KWARGS["start_time"], KWARGS["end_time"])
    want = want.swaplevel().sort_index().rename(columns={expr: "LABEL0"})
    assert_frames_match(want, got.reindex(want.index))
