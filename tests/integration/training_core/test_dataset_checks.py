"""A TrainingJob's data checks before qlib runs: a bad universe or metric names its field and the fix, and
the bundle fingerprint in model.json is the same whether the bundle recorded it or it is computed."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from training_manifests import training_job

from kubequant.api.training import TrainingJob
from kubequant.errors import ConfigError, DataError
from kubequant.workloads.data.qlib_format import MANIFEST, bundle_checksum
from kubequant.workloads.training.dataset import bundle_fingerprint, check_bundle
from kubequant.workloads.training.evaluate import valid_score

pytestmark = pytest.mark.integration


def spec_with_universe(bundle: Path, universe: dict[str, object]) -> TrainingJob:
    doc = training_job(bundle)
    doc["spec"]["universe"] = universe
    return TrainingJob.model_validate(doc)


def some_instruments(bundle: Path, n: int) -> list[str]:
    lines = (bundle / "instruments" / "all.txt").read_text().splitlines()
    return [line.split("\t")[0] for line in lines[:n]]


def test_instruments_the_bundle_lacks_are_named_with_the_field(training_bundle: Path) -> None:
    known = some_instruments(training_bundle, 2)
    check_bundle(spec_with_universe(training_bundle, {"instruments": known}).spec, training_bundle)
    bad = spec_with_universe(training_bundle, {"instruments": [*known, "SH999998", "SZ999999"]})
    with pytest.raises(ConfigError, match="instruments not in the bundle: SH999998, SZ999999") as err:
        check_bundle(bad.spec, training_bundle)
    assert err.value.where == "spec.universe.instruments" and "instruments/all.txt" in (err.value.fix or "")


def test_a_market_the_bundle_lacks_is_refused_before_qlib(training_bundle: Path) -> None:
    with pytest.raises(ConfigError, match="csi300"):
        check_bundle(spec_with_universe(training_bundle, {"market": "csi300"}).spec, training_bundle)


def test_the_fingerprint_is_the_recorded_checksum_or_the_same_one_computed(
    training_bundle: Path, tmp_path: Path
) -> None:
    recorded = bundle_fingerprint(training_bundle)
    assert recorded == bundle_checksum(training_bundle)
    copy = tmp_path / "bundle"
    shutil.copytree(training_bundle, copy)
    (copy / MANIFEST).write_text("not json")  # a damaged manifest: computed, the same
    assert bundle_fingerprint(copy) == recorded
    (copy / MANIFEST).unlink()  # a bundle written by qlib's own tools: no manifest
    assert bundle_fingerprint(copy) == recorded


def test_valid_score_refuses_an_unknown_metric_and_is_nan_without_overlap() -> None:
    index = pd.MultiIndex.from_product(
        [pd.to_datetime(["2020-10-09", "2020-10-12"]), ["SH600000", "SH600001", "SH600002"]],
        names=["datetime", "instrument"],
    )
    pred = pd.Series([0.1, 0.2, 0.3, 0.3, 0.2, 0.1], index=index)
    label = pd.Series([0.01, 0.02, 0.03, 0.01, 0.02, 0.03], index=index)
    with pytest.raises(DataError, match="unknown metric 'sharpe'") as err:
        valid_score(pred, label, "sharpe")
    assert err.value.where == "spec.tune.metric"
    assert valid_score(pred, label, "valid_loss") == pytest.approx(((pred - label) ** 2).mean())
    assert valid_score(pred, label, "valid_ic") == pytest.approx(0.0)  # +1 one day, -1 the next
    other_days = label.copy()
    other_days.index = other_days.index.set_levels(pd.to_datetime(["2021-01-04", "2021-01-05"]), level=0)
    for metric in ("valid_ic", "valid_rank_ic", "valid_loss"):
        assert math.isnan(valid_score(pred, other_days, metric))
