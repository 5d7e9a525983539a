"""numba kernels for qlib's expression operators over a panel of instruments.

A panel is a 2-D array ``x[instrument, day]`` on the bundle's calendar. Each instrument has its
own loaded span ``[starts[i], ends[i]]`` (inclusive day indexes): what qlib's expression engine
would have read for it (its bin file's range cut to the query window plus the expression's
look-back). Values outside the span do not exist for qlib, so every rolling window is cut at the
span's start, and outputs outside the span are NaN.

The rolling kernels follow pandas' ``Series.rolling(N, min_periods=1)`` (which qlib's ``Mean``,
``Sum``, ``Std``, ``Max``, ``Min``, ``Quantile``, ``Rank``, ``IdxMax``, ``IdxMin`` and ``Corr`` call):
±inf counts as missing, windows need one observation (two for ``Std`` and ``Corr``), and sums and
means are the same online Kahan sums (with pandas' exact answer for windows of equal values), so
values match to the last bits. ``Slope``, ``Rsquare`` and ``Resi`` are qlib's own cython kernels
(``qlib/data/_libs/rolling.pyx``), replayed step for step.
"""

from __future__ import annotations

import math

import numpy as np

from kubequant.workloads.features.numba_cache import configure

configure()

from numba import njit  # noqa: E402  (the cache folder must be set before numba is imported)


@njit(cache=True, inline="always")
def _missing(v: float) -> bool:
    return not math.isfinite(v)  # pandas' rolling treats ±inf as NaN


@njit(cache=True)
def rolling_sum(x: np.ndarray, starts: np.ndarray, ends: np.ndarray, n: int, mean: bool) -> np.ndarray:
    """pandas' rolling(n, min_periods=1).sum() (or .mean()) per instrument span."""
    rows, cols = x.shape
    out = np.full((rows, cols), np.nan)
    for i in range(rows):
        s, e = starts[i], ends[i]
        nobs = 0
        neg_ct = 0
        sum_x = 0.0
        comp_add = 0.0
        comp_rem = 0.0
        same = 0
        prev = np.nan
        for t in range(s, e + 1):
            j = t - n  # the value leaving the window
            if j >= s:
                v = x[i, j]
                if not _missing(v):
                    nobs -= 1
                    y = -v - comp_rem
                    tt = sum_x + y
                    comp_rem = tt - sum_x - y
                    sum_x = tt
                    if v < 0 or (v == 0 and math.copysign(1.0, v) < 0):
                        neg_ct -= 1
            v = x[i, t]
            if not _missing(v):
                nobs += 1
                y = v - comp_add
                tt = sum_x + y
                comp_add = tt - sum_x - y
                sum_x = tt
                if v < 0 or (v == 0 and math.copysign(1.0, v) < 0):
                    neg_ct += 1
                if v == prev:
                    same += 1
                else:
                    same = 1
                prev = v
            if nobs == 0:
                continue
            if mean:
                if same >= nobs:
                    r = prev
                else:
                    r = sum_x / nobs
                    if neg_ct == 0 and r < 0:
                        r = 0.0
                    elif neg_ct == nobs and r > 0:
                        r = 0.0
            elif same >= nobs:
                r = prev * nobs
            else:
                r = sum_x
            out[i, t] = r
    return out


_INV_COND_TOL = np.finfo(np.float64).eps * 1e3  # pandas: fewer than ~3 significant digits left


@njit(cache=True, inline="always")
def _var_add(v: float, st: np.ndarray) -> None:
    # st = [nobs, mean, ssqdm, compensation, unstable]
    prev_m2 = st[2]
    st[0] += 1.0
    prev_mean = st[1] - st[3]
    y = v - st[3]
    t = y - st[1]
    st[3] = t + st[1] - y
    st[1] = st[1] + t / st[0]
    st[2] = st[2] + (v - prev_mean) * (v - st[1])
    if prev_m2 * _INV_COND_TOL > st[2]:
        st[4] = 1.0


@njit(cache=True)
def rolling_std(x: np.ndarray, starts: np.ndarray, ends: np.ndarray, n: int) -> np.ndarray:
    """pandas' rolling(n, min_periods=1).std() (ddof=1), pandas 3's ``roll_var`` step for step.

    Welford updates with Kahan compensation; a window recomputed from scratch when an update
    loses precision (``numerically_unstable``); ``zsqrt`` clips a negative variance to 0.
    """
    rows, cols = x.shape
    out = np.full((rows, cols), np.nan)
    add = np.zeros(5)  # nobs, mean, ssqdm, compensation_add, unstable
    for i in range(rows):
        s, e = starts[i], ends[i]
        add[:] = 0.0
        comp_rem = 0.0
        for t in range(s, e + 1):
            lo = max(s, t - n + 1)
            if t > s and lo <= t - 1:  # slide: remove the value leaving, add the new one
                j = t - n
                if j >= s:
                    v = x[i, j]
                    if not _missing(v):
                        prev_m2 = add[2]
                        add[0] -= 1.0
                        if add[0]:
                            prev_mean = add[1] - comp_rem
                            y = v - comp_rem
                            tt = y - add[1]
                            comp_rem = tt + add[1] - y
                            add[1] = add[1] - tt / add[0]
                            add[2] = add[2] - (v - prev_mean) * (v - add[1])
                            if prev_m2 * _INV_COND_TOL > add[2]:
                                add[4] = 1.0
                        else:
                            add[1] = 0.0
                            add[2] = 0.0
                            add[4] = 0.0
                v = x[i, t]
                if not _missing(v):
                    _var_add(v, add)
                recompute = add[4] != 0.0
            else:
                recompute = True
            if recompute:
                add[:] = 0.0
                comp_rem = 0.0
                for j in range(lo, t + 1):
                    v = x[i, j]
                    if not _missing(v):
                        _var_add(v, add)
                add[4] = 0.0
            nobs = add[0]
            if nobs > 1:
                var = add[2] / (nobs - 1.0)
                out[i, t] = 0.0 if var < 0 else math.sqrt(var)
    return out


@njit(cache=True)
def rolling_extreme(x: np.ndarray, starts: np.ndarray, ends: np.ndarray, n: int, is_max: bool) -> np.ndarray:
    """rolling(n, min_periods=1).max() / .min(), skipping missing values."""
    rows, cols = x.shape
    out = np.full((rows, cols), np.nan)
    for i in range(rows):
        s, e = starts[i], ends[i]
        for t in range(s, e + 1):
            lo = max(s, t - n + 1)
            found = False
            best = 0.0
            for j in range(lo, t + 1):
                v = x[i, j]
                if _missing(v):
                    continue
                if not found or (is_max and v > best) or (not is_max and v < best):
                    best = v
                    found = True
            if found:
                out[i, t] = best
    return out


@njit(cache=True)
def rolling_quantile(x: np.ndarray, starts: np.ndarray, ends: np.ndarray, n: int, q: float) -> np.ndarray:
    """rolling(n, min_periods=1).quantile(q) with pandas' linear interpolation.

    The window's present values are kept sorted (insert/remove by binary search), as pandas'
    skiplist does, so each day costs a shift of at most ``n`` values instead of a sort.
    """
    rows, cols = x.shape
    out = np.full((rows, cols), np.nan)
    buf = np.empty(n + 1)
    for i in range(rows):
        s, e = starts[i], ends[i]
        k = 0
        for t in range(s, e + 1):
            j = t - n
            if j >= s:
                v = x[i, j]
                if not _missing(v):
                    pos = np.searchsorted(buf[:k], v)
                    buf[pos : k - 1] = buf[pos + 1 : k].copy()
                    k -= 1
            v = x[i, t]
            if not _missing(v):
                pos = np.searchsorted(buf[:k], v)
                buf[pos + 1 : k + 1] = buf[pos:k].copy()
                buf[pos] = v
                k += 1
            if k == 0:
                continue
            if k == 1:
                out[i, t] = buf[0]
                continue
            p = q * (k - 1)
            idx = int(p)
            if p == idx:
                out[i, t] = buf[idx]
            else:
                out[i, t] = buf[idx] + (buf[idx + 1] - buf[idx]) * (p - idx)
    return out


@njit(cache=True)
def rolling_rank_pct(x: np.ndarray, starts: np.ndarray, ends: np.ndarray, n: int) -> np.ndarray:
    """rolling(n, min_periods=1).rank(pct=True): the last value's average rank over the count."""
    rows, cols = x.shape
    out = np.full((rows, cols), np.nan)
    for i in range(rows):
        s, e = starts[i], ends[i]
        for t in range(s, e + 1):
            cur = x[i, t]
            if _missing(cur):
                continue
            lo = max(s, t - n + 1)
            less = 0
            equal = 0
            nobs = 0
            for j in range(lo, t + 1):
                v = x[i, j]
                if _missing(v):
                    continue
                nobs += 1
                if v < cur:
                    less += 1
                elif v == cur:
                    equal += 1
            out[i, t] = (less + (equal + 1) / 2.0) / nobs
    return out


@njit(cache=True)
def rolling_arg_extreme(
    x: np.ndarray, starts: np.ndarray, ends: np.ndarray, n: int, is_max: bool
) -> np.ndarray:
    """rolling(n, min_periods=1).apply(lambda w: w.argmax() + 1, raw=True) (or argmin).

    The raw window keeps its NaNs and numpy's argmax/argmin stop at the first NaN, so a window
    with a missing value answers that value's position: qlib's IdxMax/IdxMin do exactly this.
    """
    rows, cols = x.shape
    out = np.full((rows, cols), np.nan)
    for i in range(rows):
        s, e = starts[i], ends[i]
        for t in range(s, e + 1):
            lo = max(s, t - n + 1)
            nobs = 0
            first_nan = -1
            best_pos = -1
            best = 0.0
            for j in range(lo, t + 1):
                v = x[i, j]
                if _missing(v):
                    if first_nan < 0:
                        first_nan = j - lo
                    continue
                nobs += 1
                if best_pos < 0 or (is_max and v > best) or (not is_max and v < best):
                    best = v
                    best_pos = j - lo
            if nobs == 0:
                continue
            out[i, t] = (first_nan if first_nan >= 0 else best_pos) + 1.0
    return out


@njit(cache=True)
def rolling_corr(x: np.ndarray, y: np.ndarray, starts: np.ndarray, ends: np.ndarray, n: int) -> np.ndarray:
    """pandas' rolling(n, min_periods=1).corr(other): over days where both values exist."""
    rows, cols = x.shape
    out = np.full((rows, cols), np.nan)
    for i in range(rows):
        s, e = starts[i], ends[i]
        for t in range(s, e + 1):
            lo = max(s, t - n + 1)
            k = 0
            sx = 0.0
            sy = 0.0
            for j in range(lo, t + 1):
                a = x[i, j]
                b = y[i, j]
                if _missing(a) or _missing(b):
                    continue
                k += 1
                sx += a
                sy += b
            if k < 2:
                continue
            mx = sx / k
            my = sy / k
            sxx = 0.0
            syy = 0.0
            sxy = 0.0
            for j in range(lo, t + 1):
                a = x[i, j]
                b = y[i, j]
                if _missing(a) or _missing(b):
                    continue
                sxx += (a - mx) * (a - mx)
                syy += (b - my) * (b - my)
                sxy += (a - mx) * (b - my)
            den = math.sqrt(sxx * syy)
            if den > 0:
                r = sxy / den
                out[i, t] = min(1.0, max(-1.0, r))
    return out


@njit(cache=True, error_model="numpy")
def rolling_regression(x: np.ndarray, starts: np.ndarray, ends: np.ndarray, n: int, kind: int) -> np.ndarray:
    """qlib's cython rolling Slope (kind 0), Rsquare (1) and Resi (2), replayed step for step.

    qlib keeps running sums over a deque that starts as ``n`` NaNs; NaN inputs are skipped
    (they neither add to the sums nor count), and ±inf is *not* treated as missing here.
    """
    rows, cols = x.shape
    out = np.full((rows, cols), np.nan)
    w = float(n)
    for i in range(rows):
        s, e = starts[i], ends[i]
        na_count = n
        i_sum = 0.0
        x_sum = 0.0
        x2_sum = 0.0
        y_sum = 0.0
        y2_sum = 0.0
        xy_sum = 0.0
        for t in range(s, e + 1):
            val = x[i, t]
            xy_sum = xy_sum - y_sum
            x2_sum = x2_sum + i_sum - 2 * x_sum
            x_sum = x_sum - i_sum
            j = t - n
            front = x[i, j] if j >= s else np.nan
            if not math.isnan(front):
                i_sum -= 1
                y_sum -= front
                y2_sum -= front * front
            else:
                na_count -= 1
            if math.isnan(val):
                na_count += 1
            else:
                i_sum += 1
                x_sum += w
                x2_sum += w * w
                y_sum += val
                y2_sum += val * val
                xy_sum += w * val
            cnt = float(n - na_count)
            denom = cnt * x2_sum - x_sum * x_sum
            # error_model="numpy": x/0 is ±inf or NaN as in qlib's cdivision, never an exception.
            if kind == 0:
                out[i, t] = (cnt * xy_sum - x_sum * y_sum) / denom
            elif kind == 1:
                rv = (cnt * xy_sum - x_sum * y_sum) / np.sqrt(denom * (cnt * y2_sum - y_sum * y_sum))
                out[i, t] = rv * rv
            else:
                slope = (cnt * xy_sum - x_sum * y_sum) / denom
                x_mean = x_sum / cnt
                y_mean = y_sum / cnt
                interp = y_mean - slope * x_mean
                out[i, t] = val - (slope * w + interp)
    return out


@njit(cache=True)
def shift(x: np.ndarray, starts: np.ndarray, ends: np.ndarray, k: int) -> np.ndarray:
    """Series.shift(k) inside each span: day t takes day t-k when that day was loaded."""
    rows, cols = x.shape
    out = np.full((rows, cols), np.nan, dtype=x.dtype)
    for i in range(rows):
        s, e = starts[i], ends[i]
        for t in range(s, e + 1):
            j = t - k
            if s <= j <= e:
                out[i, t] = x[i, j]
    return out


def near_zero(std: np.ndarray) -> np.ndarray:
    """qlib's ``np.isclose(rolling std, 0, atol=2e-05)`` guard (NaN is not close)."""
    return np.abs(std) <= 2e-05
