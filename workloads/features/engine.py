"""Evaluate qlib expressions (``$close``, ``Mean(...)``, ``Corr(...)``…) over a panel with numba kernels.

The tree is qlib's own: fields are parsed by qlib (``ExpressionD.get_expression_instance``) and
each node is mapped to a kernel. qlib loads every field per instrument over its own window — the
query window widened by the field's look-back (``get_extended_window_size``) and cut to the
instrument's bin file — so the evaluator does the same per field through per-instrument spans,
and keeps qlib's dtypes: raw fields are float32, element-wise operators are the same numpy
ufuncs, rolling operators return float64, and the result is cast to float32 as qlib's
``LocalExpressionProvider`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kubequant.workloads.features import kernels as K


class UnsupportedExpression(Exception):
    """An expression (or an operator setting) the compiled engine does not evaluate; qlib's path does."""


@dataclass
class Panel:
    """Raw bundle fields on the calendar: ``fields[name][instrument, day]`` (float32, NaN when absent).

    The panel holds calendar days ``offset .. offset + width - 1`` only (the query window and its
    look-back). ``first``/``last`` are each instrument's bin file range as calendar indexes
    (inclusive); ``-1`` in ``first`` means the instrument has no data.
    """

    instruments: list[str]
    fields: dict[str, np.ndarray]
    first: np.ndarray
    last: np.ndarray
    offset: int


@dataclass
class _Window:
    starts: np.ndarray
    ends: np.ndarray
    cache: dict[str, Any] = field(default_factory=dict)
    # References still to be made to each node: a cached value is dropped after its last use,
    # so memory holds the sub-expressions shared between fields, not every intermediate panel.
    refs: dict[str, int] = field(default_factory=dict)


_PAIR_UFUNCS = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Greater",
    "Less",
    "Gt",
    "Ge",
    "Lt",
    "Le",
    "Eq",
    "Ne",
    "And",
    "Or",
    "Power",
}
_ELEM_UFUNCS = {"Abs", "Log", "Not"}
_ROLLING = {
    "Mean",
    "Sum",
    "Std",
    "Max",
    "Min",
    "Quantile",
    "Rank",
    "IdxMax",
    "IdxMin",
    "Slope",
    "Rsquare",
    "Resi",
}


def raw_fields(expr: Any, out: set[str] | None = None) -> set[str]:
    """The bundle fields (``$close`` → ``close``) an expression reads; raises for unsupported nodes."""
    from qlib.data.base import Feature

    out = set() if out is None else out
    name = type(expr).__name__
    if isinstance(expr, (int, float)):
        return out
    if isinstance(expr, Feature) and name == "Feature":
        out.add(str(expr._name))
        return out
    if name in _PAIR_UFUNCS or name == "Corr":
        raw_fields(expr.feature_left, out)
        raw_fields(expr.feature_right, out)
        if name == "Corr":
            _check_window(expr)
        return out
    if name in _ELEM_UFUNCS:
        return raw_fields(expr.feature, out)
    if name == "Ref":
        if not isinstance(expr.N, int) or expr.N == 0:
            raise UnsupportedExpression(f"{expr}: Ref with N={expr.N!r} (only non-zero integers)")
        return raw_fields(expr.feature, out)
    if name in _ROLLING:
        _check_window(expr)
        return raw_fields(expr.feature, out)
    raise UnsupportedExpression(f"{expr}: operator {name} has no compiled kernel")


def _check_window(expr: Any) -> None:
    if not isinstance(expr.N, int) or isinstance(expr.N, bool) or expr.N <= 0:
        raise UnsupportedExpression(
            f"{expr}: window N={expr.N!r} (only positive integers; 0 and EWM go to qlib)"
        )


def needed_days(exprs: list[Any], start_index: int, end_index: int, calendar_len: int) -> tuple[int, int]:
    """The calendar days (inclusive) the expressions read: the window widened by the longest look-backs."""
    lft = max(int(e.get_extended_window_size()[0]) for e in exprs)
    rght = max(int(e.get_extended_window_size()[1]) for e in exprs)
    return max(0, start_index - lft), min(calendar_len - 1, end_index + rght)


def _children(expr: Any) -> list[Any]:
    if hasattr(expr, "feature_left"):
        return [expr.feature_left, expr.feature_right]
    if hasattr(expr, "feature"):
        return [expr.feature]
    return []


def _count(expr: Any, refs: dict[str, int]) -> None:
    if isinstance(expr, (int, float)):
        return
    key = str(expr)
    refs[key] = refs.get(key, 0) + 1
    for child in _children(expr):
        _count(child, refs)


def evaluate(
    exprs: list[Any],
    panel: Panel,
    start_index: int,
    end_index: int,
    sink: Callable[[int, np.ndarray], None] | None = None,
) -> list[np.ndarray]:
    """Each expression over the panel as qlib would compute it, as float32 ``[instrument, day]``.

    ``start_index``/``end_index`` are calendar indexes of the query window; the result's days are
    the panel's (calendar ``panel.offset`` onwards). With ``sink``, each result is handed over as
    it is computed (``sink(position, values)``) and not kept, which bounds memory.
    """
    has_data = panel.first >= 0
    windows: dict[tuple[int, int], _Window] = {}
    keys = []
    for expr in exprs:
        lft, rght = expr.get_extended_window_size()
        key = (int(lft), int(rght))
        keys.append(key)
        win = windows.get(key)
        if win is None:
            q_start = max(0, start_index - key[0])
            q_end = end_index + key[1]
            starts = np.where(has_data, np.maximum(panel.first, q_start) - panel.offset, 0).astype(np.int64)
            ends = np.where(has_data, np.minimum(panel.last, q_end) - panel.offset, -1).astype(np.int64)
            win = windows[key] = _Window(starts, ends)
        _count(expr, win.refs)
    results: list[np.ndarray] = []
    with np.errstate(all="ignore"):
        for position, (expr, key) in enumerate(zip(exprs, keys, strict=True)):
            value = _eval(expr, panel, windows[key])
            if isinstance(value, (int, float)):
                raise UnsupportedExpression(f"{expr}: a constant expression")
            if sink is None:
                results.append(np.asarray(value, dtype=np.float32))
            else:
                sink(position, np.asarray(value, dtype=np.float32))
    return results


def _eval(expr: Any, panel: Panel, win: _Window) -> Any:
    if isinstance(expr, (int, float)):
        return expr
    key = str(expr)
    win.refs[key] -= 1
    value = win.cache.get(key)
    if value is None:
        value = _compute(expr, panel, win)
        if win.refs[key] > 0:
            win.cache[key] = value
    else:
        _release(expr, win)
        if win.refs[key] == 0:
            del win.cache[key]
    return value


def _release(expr: Any, win: _Window) -> None:
    """A cached node was reused: its sub-expressions lose this occurrence's references too."""
    for child in _children(expr):
        if isinstance(child, (int, float)):
            continue
        key = str(child)
        win.refs[key] -= 1
        if win.refs[key] == 0:
            win.cache.pop(key, None)
        _release(child, win)


def _f64(x: Any) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float64)


def _compute(expr: Any, panel: Panel, win: _Window) -> Any:
    name = type(expr).__name__
    s, e = win.starts, win.ends
    if name == "Feature":
        return panel.fields[str(expr._name)]
    if name in _PAIR_UFUNCS:
        return getattr(np, expr.func)(
            _eval(expr.feature_left, panel, win), _eval(expr.feature_right, panel, win)
        )
    if name in _ELEM_UFUNCS:
        return getattr(np, expr.func)(_eval(expr.feature, panel, win))
    if name == "Ref":
        x = _eval(expr.feature, panel, win)
        if x.dtype == np.bool_:
            raise UnsupportedExpression(f"{expr}: Ref of a boolean series (pandas turns it into objects)")
        return K.shift(np.ascontiguousarray(x), s, e, expr.N)
    if name == "Corr":
        left = _f64(_eval(expr.feature_left, panel, win))
        right = _f64(_eval(expr.feature_right, panel, win))
        out = K.rolling_corr(left, right, s, e, expr.N)
        flat = K.near_zero(K.rolling_std(left, s, e, expr.N)) | K.near_zero(
            K.rolling_std(right, s, e, expr.N)
        )
        out[flat] = np.nan
        return out
    x = _eval(expr.feature, panel, win)
    n = expr.N
    if name in ("Slope", "Rsquare", "Resi"):
        # qlib hands the series' own values (float32 for raw fields) to its cython kernels.
        xv = _f64(x)
        out = K.rolling_regression(xv, s, e, n, ("Slope", "Rsquare", "Resi").index(name))
        if name == "Rsquare":
            out[K.near_zero(K.rolling_std(xv, s, e, n))] = np.nan
        return out
    xv = _f64(x)
    if name == "Mean":
        return K.rolling_sum(xv, s, e, n, True)
    if name == "Sum":
        return K.rolling_sum(xv, s, e, n, False)
    if name == "Std":
        return K.rolling_std(xv, s, e, n)
    if name in ("Max", "Min"):
        return K.rolling_extreme(xv, s, e, n, name == "Max")
    if name == "Quantile":
        return K.rolling_quantile(xv, s, e, n, float(expr.qscore))
    if name == "Rank":
        return K.rolling_rank_pct(xv, s, e, n)
    if name in ("IdxMax", "IdxMin"):
        return K.rolling_arg_extreme(xv, s, e, n, name == "IdxMax")
    raise UnsupportedExpression(f"{expr}: operator {name} has no compiled kernel")
