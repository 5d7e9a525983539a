"""One rule for where a workload's bundle is (Backtest, TrainingJob, session): override, path, sample."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from kubequant.api.common import DataSource, SampleData, VolumeData
from kubequant.errors import ConfigError
from kubequant.workloads.data.bundle import resolve_bundle, sample_spec
from kubequant.workloads.data.sample import SampleSpec

pytestmark = pytest.mark.unit


def test_an_override_wins_over_the_spec(tmp_path: Path) -> None:
    data = DataSource(path="/data/qlib_cn")
    assert resolve_bundle(data, tmp_path) == tmp_path


def test_a_path_is_used_as_it_is() -> None:
    assert resolve_bundle(DataSource(path="/data/qlib_cn")) == Path("/data/qlib_cn")


def test_the_sample_settings_map_onto_the_generator_spec() -> None:
    sample = SampleData(
        instruments=12,
        start=dt.date(2021, 1, 1),
        end=dt.date(2021, 12, 31),
        seed=7,
        minute_bars=True,
        minute_instruments=3,
        minute_days=5,
    )
    assert sample_spec(sample) == SampleSpec(
        instruments=12,
        start="2021-01-01",
        end="2021-12-31",
        seed=7,
        freqs=("day", "1min"),
        minute_instruments=3,
        minute_days=5,
    )
    # The defaults of both agree, so a default sample is one cached bundle whichever workload asks.
    assert sample_spec(SampleData()) == SampleSpec()


@pytest.mark.parametrize("flag", ["--data-path", "--data"])
def test_a_volume_outside_the_cluster_names_the_field_and_the_way_out(flag: str) -> None:
    data = DataSource(volume=VolumeData(claim_name="market-data"))
    with pytest.raises(ConfigError) as err:
        resolve_bundle(data, override_flag=flag)
    text = err.value.one_line()
    assert "spec.data.volume" in text and "spec.data.path" in text and flag in text
