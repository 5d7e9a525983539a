"""engine: auto|qlib on a Backtest's inline model chooses the compiled Alpha158 or qlib's handler."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kubequant.api.backtest import InlineModel
from kubequant.workloads.backtest.qlib_config import dataset_config

SEGMENTS = {
    "train": {"start": "2020-01-01", "end": "2020-09-30"},
    "valid": {"start": "2020-10-01", "end": "2020-12-31"},
    "test": {"start": "2021-01-04", "end": "2021-06-28"},
}


def _handler(**model: Any) -> dict[str, Any]:
    spec = InlineModel.model_validate({"segments": SEGMENTS, **model})
    return dataset_config(spec, "all")["kwargs"]["handler"]


@pytest.mark.parametrize("name", ["Alpha158", "Alpha158vwap"])
def test_auto_uses_the_compiled_handler(name: str) -> None:
    handler = _handler(
        handler={"class": name, "kwargs": {"label": [["Ref($close, -1)/$close - 1"], ["LABEL0"]]}}
    )
    assert handler["class"] == name
    assert handler["module_path"] == "kubequant.workloads.features"
    assert handler["kwargs"]["label"] == [["Ref($close, -1)/$close - 1"], ["LABEL0"]]
    assert handler["kwargs"]["fit_end_time"] == "2020-09-30"


def test_default_model_is_auto_and_compiled() -> None:
    assert _handler()["module_path"] == "kubequant.workloads.features"


@pytest.mark.parametrize(
    ("model", "module"),
    [
        ({"engine": "qlib"}, "qlib.contrib.data.handler"),
        (
            {"handler": {"class": "Alpha158", "module": "qlib.contrib.data.handler"}},
            "qlib.contrib.data.handler",
        ),
        ({"handler": {"class": "Alpha360"}}, "kubequant.workloads.features"),
        ({"handler": {"class": "Alpha360vwap"}}, "kubequant.workloads.features"),
        ({"engine": "qlib", "handler": {"class": "Alpha360"}}, "qlib.contrib.data.handler"),
        ({"handler": {"class": "DataHandlerLP"}}, "qlib.contrib.data.handler"),
        ({"handler": {"class": "MyHandler", "module": "kubequant.custom"}}, "kubequant.custom"),
    ],
)
def test_qlib_engine_explicit_modules_and_other_handlers_are_kept(model: dict[str, Any], module: str) -> None:
    assert _handler(**model)["module_path"] == module


def test_unknown_engine_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        InlineModel.model_validate({"segments": SEGMENTS, "engine": "fast"})
    assert "engine" in str(err.value) and "'auto' or 'qlib'" in str(err.value)
