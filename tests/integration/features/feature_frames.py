"""Frame comparison for the compiled-features tests: qlib's frame against the compiled one."""

from __future__ import annotations

import numpy as np
import pandas as pd


def assert_frames_match(expected: pd.DataFrame, got: pd.DataFrame, rtol: float = 1e-5) -> None:
    """Same index, columns and dtypes; every value within ``rtol`` relative, or both NaN, or equal inf."""
    assert list(got.columns) == list(expected.columns)
    assert got.index.equals(expected.index), "row index differs"
    assert list(got.index.names) == list(expected.index.names)
    assert list(got.dtypes) == list(expected.dtypes)
    a = expected.to_numpy(np.float64)
    b = got.to_numpy(np.float64)
    with np.errstate(all="ignore"):
        rel = np.abs(a - b) / np.maximum(np.abs(a), np.abs(b))
    ok = (np.isnan(a) & np.isnan(b)) | (a == b) | (rel <= rtol)
    if not ok.all():
        rows, cols = np.nonzero(~ok)
        shown = [
            f"{expected.columns[c]} @ {expected.index[r]}: qlib {a[r, c]!r} compiled {b[r, c]!r}"
            for r, c in zip(rows[:8], cols[:8], strict=True)
        ]
        raise AssertionError(f"{len(rows)} values differ:\n" + "\n".join(shown))
