"""Which levels run compiled, and how a longer bar is quoted from its minutes (qlib's aggregation rules)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kubequant.api.backtest import Executor
from kubequant.workloads.backtest.level_bars import last_valid

pytestmark = pytest.mark.unit


def _executor(*levels: tuple[str, dict[str, Any]], **extra: Any) -> Executor:
    return Executor.model_validate(
        {"frequency": "day", "levels": [{"frequency": f, "strategy": s} for f, s in levels], **extra}
    )


def test_built_in_slicing_runs_compiled_at_any_depth() -> None:
    three = _executor(("30min", {"sbbEma": {}}), ("1min", {"twap": {}}))
    assert three.compiled_reason() is None
    assert three.compiled_slicing() == ["sbb_ema", "twap"]
    four = _executor(("60min", {"twap": {}}), ("15min", {"vwap": {}}), ("1min", {"sbbEma": {}}))
    assert four.compiled_slicing() == ["twap", "vwap", "sbb_ema"]


@pytest.mark.parametrize(
    ("executor", "reason"),
    [
        (
            _executor(("30min", {"custom": {"class": "ACStrategy"}}), ("1min", {"twap": {}})),
            "custom strategy",
        ),
        (_executor(("30min", {"twap": {}}), engine="qlib"), "engine: qlib"),
        (_executor(("45min", {"twap": {}}), ("1min", {"twap": {}})), "120-minute sessions"),
        (_executor(("40min", {"twap": {}}), ("15min", {"twap": {}})), "levels[1]"),
    ],
)
def test_other_stacks_keep_qlibs_executor_and_say_why(executor: Executor, reason: str) -> None:
    assert executor.compiled_slicing() is None
    assert reason in (executor.compiled_reason() or "")


def test_a_bars_value_is_the_last_one_quoted() -> None:
    nan = np.nan
    minutes = np.array([[1.0, 2.0, nan, 4.0, nan, nan], [nan, nan, nan, 5.0, 6.0, nan]])
    edges = np.array([0, 3, 6])
    np.testing.assert_array_equal(last_valid(minutes, edges), [[2.0, 4.0], [nan, 6.0]])
