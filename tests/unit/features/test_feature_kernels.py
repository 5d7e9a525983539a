"""The numba kernels against pandas' rolling windows and qlib's cython kernels, series by series."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kubequant.workloads.features import kernels as K


def _series() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    walk = (20 * np.exp(np.cumsum(rng.normal(0, 0.02, 200)))).astype(np.float32).astype(np.float64)
    gappy = walk.copy()
    gappy[rng.random(200) < 0.1] = np.nan
    gappy[40:70] = np.nan  # a suspension longer than every window
    flat = np.round(walk)
    flat[80:130] = flat[80]  # long constant run: variance must come back to pandas' exact value
    zero_vol = rng.integers(0, 3, 200).astype(np.float64) * 1000  # a third of the days without volume
    with np.errstate(all="ignore"):
        ratio = zero_vol / np.roll(zero_vol, 1)  # inf and NaN, as Log($volume/Ref($volume,1)+1) feeds Corr
    return {
        "walk": walk,
        "gappy": gappy,
        "flat": flat,
        "const": np.full(200, 7.25),
        "zero_vol": zero_vol,
        "ratio": ratio,
        "short": walk[:3],
    }


SERIES = _series()
WINDOWS = [5, 20, 60]


def _span(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.ascontiguousarray(x[None, :]), np.array([0]), np.array([x.size - 1])


def _same(got: np.ndarray, expected: np.ndarray, rtol: float = 1e-9) -> None:
    np.testing.assert_allclose(got, np.asarray(expected, dtype=np.float64), rtol=rtol, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", sorted(SERIES))
@pytest.mark.parametrize("n", WINDOWS)
def test_single_series_kernels_match_pandas(name: str, n: int) -> None:
    x = SERIES[name]
    panel, s, e = _span(x)
    roll = pd.Series(x).rolling(n, min_periods=1)
    _same(K.rolling_sum(panel, s, e, n, False)[0], roll.sum())
    _same(K.rolling_sum(panel, s, e, n, True)[0], roll.mean())
    _same(K.rolling_std(panel, s, e, n)[0], roll.std())
    _same(K.rolling_extreme(panel, s, e, n, True)[0], roll.max())
    _same(K.rolling_extreme(panel, s, e, n, False)[0], roll.min())
    for q in (0.2, 0.8):
        _same(K.rolling_quantile(panel, s, e, n, q)[0], roll.quantile(q))
    _same(K.rolling_rank_pct(panel, s, e, n)[0], roll.rank(pct=True))
    _same(K.rolling_arg_extreme(panel, s, e, n, True)[0], roll.apply(lambda w: w.argmax() + 1, raw=True))
    _same(K.rolling_arg_extreme(panel, s, e, n, False)[0], roll.apply(lambda w: w.argmin() + 1, raw=True))


@pytest.mark.parametrize("n", WINDOWS)
@pytest.mark.parametrize(
    "pair", [("walk", "zero_vol"), ("gappy", "ratio"), ("flat", "walk"), ("const", "walk")]
)
def test_corr_matches_pandas(pair: tuple[str, str], n: int) -> None:
    x, y = SERIES[pair[0]], SERIES[pair[1]]
    panel, s, e = _span(x)
    expected = pd.Series(x).rolling(n, min_periods=1).corr(pd.Series(y))
    _same(K.rolling_corr(panel, np.ascontiguousarray(y[None, :]), s, e, n)[0], expected, rtol=1e-7)


@pytest.mark.parametrize("name", ["walk", "gappy", "flat", "const", "short"])
@pytest.mark.parametrize("n", WINDOWS)
def test_regression_kernels_replay_qlib_cython(name: str, n: int) -> None:
    from qlib.data._libs.rolling import rolling_resi, rolling_rsquare, rolling_slope

    x = SERIES[name]
    panel, s, e = _span(x)
    with np.errstate(all="ignore"):
        for kind, reference in enumerate((rolling_slope, rolling_rsquare, rolling_resi)):
            _same(K.rolling_regression(panel, s, e, n, kind)[0], reference(x.copy(), n), rtol=0)


def test_spans_cut_windows_and_shift_like_a_loaded_series() -> None:
    """A row's values before its span do not exist: windows and shifts start at the span."""
    x = SERIES["walk"][:50]
    panel = np.vstack([x, x])
    starts, ends = np.array([0, 20]), np.array([49, 39])
    means = K.rolling_sum(panel, starts, ends, 10, True)
    tail = pd.Series(x[20:40]).rolling(10, min_periods=1).mean().to_numpy()
    _same(means[1, 20:40], tail)
    assert np.isnan(means[1, :20]).all() and np.isnan(means[1, 40:]).all()
    shifted = K.shift(panel.astype(np.float32), starts, ends, -2)
    assert shifted.dtype == np.float32
    _same(shifted[1, 20:38], x[22:40].astype(np.float32))
    assert np.isnan(shifted[1, 38:40]).all(), "no look-ahead past the loaded span"
