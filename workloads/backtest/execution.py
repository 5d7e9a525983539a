"""Execution quality of a backtest: qlib's per-level trade indicators, and measures on the fills."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from kubequant.api.backtest import BacktestSpec
from kubequant.api.results import ExecutionQuality, LevelExecution
from kubequant.workloads.backtest.qlib_config import engine_note


def _num(value: Any, scale: float = 1.0) -> float | None:
    try:
        out = float(value) * scale
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) or math.isinf(out) else round(out, 4)


def _frequency(key: str) -> str:
    """qlib keys levels as '1day', '30min', '1min'."""
    return "day" if key.endswith("day") else key


def level_indicators(indicators: dict[str, Any]) -> list[LevelExecution]:
    """Fill rate, price advantage and order count of each level (outermost first), from qlib's indicators."""
    levels = []
    for key, (frame, _obj) in indicators.items():
        empty = frame is None or frame.empty
        levels.append(
            LevelExecution(
                frequency=_frequency(key),
                orders=0 if empty else int(frame["count"].sum()),
                fill_rate=None if empty else _num(frame["ffr"].mean()),
                price_advantage_bps=None if empty else _num(frame["pa"].mean(), 1e4),
            )
        )
    return levels


def _features(codes: list[str], fields: list[str], start: str, end: str, freq: str) -> pd.DataFrame:
    from qlib.data import D

    frame = D.features(codes, fields, start_time=start, end_time=end, freq=freq)
    frame.columns = [c.lstrip("$") for c in frame.columns]
    return frame


def fill_measures(trades: pd.DataFrame, spec: BacktestSpec, parent_orders: int) -> dict[str, float | None]:
    """Shortfall against the day's open, distance from the bar's price, participation, fills per order."""
    if trades.empty:
        return {}
    codes = sorted(trades["instrument"].unique())
    start, end = str(spec.period.start), str(spec.period.end)
    minute = spec.executor.finest() != "day"
    day_open = _features(codes, ["$open"], start, end, "day")["open"]
    bars = _features(
        codes, ["$close", "$volume"], start, f"{end} 15:00:00" if minute else end, "1min" if minute else "day"
    )
    fills = trades.assign(
        day=trades["datetime"].dt.normalize(), sign=trades["side"].map({"buy": 1.0, "sell": -1.0})
    )
    arrival = day_open.reindex(pd.MultiIndex.from_arrays([fills["instrument"], fills["day"]])).to_numpy()
    bar = bars.reindex(pd.MultiIndex.from_arrays([fills["instrument"], fills["datetime"]]))
    close, volume = bar["close"].to_numpy(), bar["volume"].to_numpy()
    qty, price, sign = fills["amount"].to_numpy(), fills["price"].to_numpy(), fills["sign"].to_numpy()
    shortfall = (sign * (price - arrival) * qty).sum() / (arrival * qty).sum()
    distance = (abs(price - close) * qty).sum() / (close * qty).sum()
    share = pd.Series(qty / volume)[volume > 0]
    return {
        "implementation_shortfall_bps": _num(shortfall, 1e4),
        "impact_bps": _num(distance, 1e4),
        "participation": _num(share.mean()) if not share.empty else None,
        "fills_per_order": _num(len(fills) / parent_orders) if parent_orders else None,
    }


def execution_quality(
    indicators: dict[str, Any], trades: pd.DataFrame, spec: BacktestSpec
) -> ExecutionQuality:
    """The execution block of the results."""
    levels = level_indicators(indicators)
    parent_orders = (levels[0].orders or 0) if levels else 0
    engine = engine_note(spec) if spec.executor.levels else None
    return ExecutionQuality(levels=levels, engine=engine, **fill_measures(trades, spec, parent_orders))
