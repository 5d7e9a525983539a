"""A TrainingJob's handler runs on the compiled engine under engine auto, as a Backtest's does."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kubequant.api.training import TrainingJobSpec
from kubequant.workloads.training.dataset import handler_config

pytestmark = pytest.mark.unit

SEGMENTS = {
    "train": {"start": "2020-01-01", "end": "2020-06-30"},
    "valid": {"start": "2020-07-01", "end": "2020-09-30"},
    "test": {"start": "2020-10-01", "end": "2020-12-31"},
}


def module_of(**dataset: Any) -> str:
    spec = TrainingJobSpec.model_validate({"dataset": {"segments": SEGMENTS, **dataset}})
    return str(handler_config(spec)["module_path"])


@pytest.mark.parametrize("name", ["Alpha158", "Alpha158vwap", "Alpha360", "Alpha360vwap"])
def test_qlibs_handlers_run_compiled_by_default(name: str) -> None:
    assert module_of(handler={"class": name}) == "kubequant.workloads.features"


@pytest.mark.parametrize(
    ("dataset", "module"),
    [
        ({"engine": "qlib"}, "qlib.contrib.data.handler"),
        (
            {"handler": {"class": "Alpha158", "module": "qlib.contrib.data.handler"}},
            "qlib.contrib.data.handler",
        ),
        ({"handler": {"class": "MyHandler", "module": "kubequant.custom"}}, "kubequant.custom"),
    ],
)
def test_engine_qlib_and_named_modules_run_as_named(dataset: dict[str, Any], module: str) -> None:
    assert module_of(**dataset) == module


def test_an_unknown_engine_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        TrainingJobSpec.model_validate({"dataset": {"segments": SEGMENTS, "engine": "fast"}})
    assert "engine" in str(err.value) and "'auto' or 'qlib'" in str(err.value)
