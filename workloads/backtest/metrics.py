"""Headline figures of a backtest, read from qlib's own report and analysis functions."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from kubequant.api.results import BacktestResults


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) or math.isinf(out) else round(out, 6)


def summarize(
    report: pd.DataFrame, account: float, trades: int, ic: pd.Series | None, rank_ic: pd.Series | None
) -> BacktestResults:
    """Results from qlib's daily portfolio report (columns return, cost, bench, turnover, account, …)."""
    from qlib.contrib.evaluate import risk_analysis

    net = report["return"] - report["cost"]
    portfolio = risk_analysis(net, freq="day")["risk"]
    excess = risk_analysis(report["return"] - report["bench"] - report["cost"], freq="day")["risk"]
    bench = risk_analysis(report["bench"], freq="day")["risk"]
    total_turnover = float(report["total_turnover"].iloc[-1])
    total_cost = float(report["total_cost"].iloc[-1])
    final_value = float(report["account"].iloc[-1])
    return BacktestResults(
        annualized_return=_num(portfolio["annualized_return"]),
        sharpe=_num(portfolio["information_ratio"]),
        max_drawdown=_num(portfolio["max_drawdown"]),
        excess_annualized_return=_num(excess["annualized_return"]),
        information_ratio=_num(excess["information_ratio"]),
        excess_max_drawdown=_num(excess["max_drawdown"]),
        benchmark_annualized_return=_num(bench["annualized_return"]),
        total_return=_num(final_value / account - 1),
        win_rate=_num((net > 0).mean()),
        turnover=_num(report["turnover"].mean()),
        avg_trade_cost_bps=_num(total_cost / total_turnover * 1e4) if total_turnover > 0 else None,
        total_cost=_num(total_cost),
        trades=trades,
        days=len(report),
        ic=_num(ic.mean()) if ic is not None else None,
        rank_ic=_num(rank_ic.mean()) if rank_ic is not None else None,
        icir=_num(ic.mean() / ic.std()) if ic is not None and len(ic) > 1 else None,
        final_account_value=_num(final_value),
    )


def signal_ic(scores: pd.Series, label: pd.Series | None) -> tuple[pd.Series | None, pd.Series | None]:
    """Daily IC and rank IC of the scores against the label (qlib's calc_ic)."""
    if label is None:
        return None, None
    from qlib.contrib.eva.alpha import calc_ic

    joined = pd.concat({"score": scores, "label": label}, axis=1, join="inner").dropna()
    if joined.empty:
        return None, None
    return calc_ic(joined["score"], joined["label"])
