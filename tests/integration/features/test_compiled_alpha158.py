"""The compiled Alpha158 handler vs qlib's on a sample bundle: same frame, column for column."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from feature_frames import assert_frames_match

from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

pytestmark = [pytest.mark.integration]

# Thirty stocks over one year, with the generator's late listings, delistings and suspensions.
SAMPLE = SampleSpec(instruments=30, start="2020-01-01", end="2020-12-31", seed=5)
KWARGS = {
    "instruments": "all",
    "start_time": "2020-01-01",
    "end_time": "2020-12-31",
    "fit_start_time": "2020-01-01",
    "fit_end_time": "2020-08-31",
}
LOADER_LOG = "kubequant.workloads.features.loader"


@pytest.fixture(scope="module")
def sample_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("features-sample") / "bundle"
    write_sample_bundle(path, SAMPLE)
    return path


def test_alpha158_equals_qlib_raw_learn_and_infer(
    sample_bundle: Path, use_qlib: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    from qlib.contrib.data.handler import Alpha158 as QlibAlpha158
    from qlib.data.dataset.handler import DataHandlerLP
    from qlib.utils import init_instance_by_config

    use_qlib(sample_bundle)
    expected = QlibAlpha158(**KWARGS)
    with caplog.at_level(logging.INFO, logger=LOADER_LOG):
        got = init_instance_by_config(
            {"class": "Alpha158", "module_path": "kubequant.workloads.features", "kwargs": KWARGS}
        )
    assert not [r for r in caplog.records if r.name == LOADER_LOG], "fell back to qlib's engine"
    assert isinstance(got, QlibAlpha158)

    raw = expected.fetch(data_key=DataHandlerLP.DK_R)
    assert raw.shape[1] == 159 and raw.index.get_level_values("instrument").nunique() == 30
    assert raw.isna().any(axis=None), "the sample should exercise suspended days and short histories"
    for key in (DataHandlerLP.DK_R, DataHandlerLP.DK_L, DataHandlerLP.DK_I):
        assert_frames_match(expected.fetch(data_key=key), got.fetch(data_key=key))


def test_unsupported_settings_fall_back_to_qlib(
    sample_bundle: Path, use_qlib: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    from qlib.contrib.data.handler import Alpha158 as QlibAlpha158

    from kubequant.workloads.features import Alpha158

    use_qlib(sample_bundle)
    # EMA has no compiled kernel: the label group goes through qlib, the features stay compiled.
    kwargs = {**KWARGS, "start_time": "2020-10-01", "label": (["EMA($close, 5)/$close"], ["LABEL0"])}
    expected = QlibAlpha158(**kwargs)
    with caplog.at_level(logging.INFO, logger=LOADER_LOG):
        got = Alpha158(**kwargs)
    fallbacks = [r.getMessage() for r in caplog.records if r.name == LOADER_LOG]
    assert len(fallbacks) == 1 and "group label" in fallbacks[0] and "EMA" in fallbacks[0]
    assert_frames_match(expected.fetch(), got.fetch())
