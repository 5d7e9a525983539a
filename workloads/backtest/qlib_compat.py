"""Compatibility of qlib 0.9.7 with pandas 3, applied once before a run.

qlib's ``utils.resam.get_valid_value`` (used when a nested level resamples minute data, e.g. by
SBBStrategyEMA) calls ``Series.fillna(method=...)``, which pandas 3 removed. The replacement is the
same computation with ``ffill``/``bfill``; nothing else of qlib is touched.
"""

from __future__ import annotations

from typing import Any

import pandas as pd


def _get_valid_value(series: pd.Series, last: bool = True) -> Any:
    """The last (or first) non-NaN value of a series, as qlib's original computes it."""
    return series.ffill().iloc[-1] if last else series.bfill().iloc[0]


def apply() -> None:
    """Patch the qlib functions that pandas 3 broke (idempotent)."""
    from qlib.utils import resam

    resam.get_valid_value = _get_valid_value
