"""Adjustments to qlib 0.9.7 for running inside kubequant, applied once before a run.

- qlib's ``utils.resam.get_valid_value`` (used when a nested level resamples minute data, e.g. by
  SBBStrategyEMA) calls ``Series.fillna(method=...)``, which pandas 3 removed. The replacement is
  the same computation with ``ffill``/``bfill``.
- The MLflow run that qlib's models open goes to a scratch folder that is deleted after the run;
  qlib would also shell out to ``git diff``/``git status`` of the working directory to store in it,
  which costs time and, in a pod or any folder that is not a repository, prints git's usage text.
"""

from __future__ import annotations

from typing import Any

import pandas as pd


def _get_valid_value(series: pd.Series, last: bool = True) -> Any:
    """The last (or first) non-NaN value of a series, as qlib's original computes it."""
    return series.ffill().iloc[-1] if last else series.bfill().iloc[0]


def _skip_uncommitted_code(self: Any) -> None:
    """Store no git diff of the working directory in the scratch MLflow run."""


def apply() -> None:
    """Patch those two qlib functions (idempotent)."""
    from qlib.utils import resam
    from qlib.workflow.recorder import MLflowRecorder

    resam.get_valid_value = _get_valid_value
    MLflowRecorder._log_uncommitted_code = _skip_uncommitted_code  # type: ignore[method-assign]
