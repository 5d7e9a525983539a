"""The report folder of a backtest: metrics.json, daily report, positions, trades and a chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from kubequant.api.results import BacktestResults


def positions_frame(positions: dict[Any, Any]) -> pd.DataFrame:
    """One row per day and instrument held: amount, price, weight, days held."""
    rows = []
    for day, pos in positions.items():
        for code, info in pos.position.items():
            if isinstance(info, dict):
                rows.append(
                    {
                        "datetime": pd.Timestamp(day),
                        "instrument": code,
                        "amount": info.get("amount"),
                        "price": info.get("price"),
                        "weight": info.get("weight"),
                        "count_day": info.get("count_day"),
                    }
                )
    return pd.DataFrame(rows, columns=["datetime", "instrument", "amount", "price", "weight", "count_day"])


def trades_frame(executed: list[tuple[Any, float, float, float]]) -> pd.DataFrame:
    """One row per filled order, from qlib's execute results (order, value, cost, price)."""
    rows = []
    for order, value, cost, price in executed:
        if order.deal_amount <= 0:
            continue
        rows.append(
            {
                "datetime": pd.Timestamp(order.start_time),
                "instrument": order.stock_id,
                "side": "buy" if int(order.direction) == 1 else "sell",
                "amount": order.deal_amount,
                "price": price,
                "value": value,
                "cost": cost,
                "factor": order.factor,
            }
        )
    return pd.DataFrame(
        rows, columns=["datetime", "instrument", "side", "amount", "price", "value", "cost", "factor"]
    )


def write_chart(report: pd.DataFrame, path: Path, title: str) -> None:
    """Cumulative net return against the benchmark, and the drawdown, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    net = (report["return"] - report["cost"]).cumsum()
    bench = report["bench"].cumsum()
    drawdown = net - net.cummax()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot(net.index, net.to_numpy(), label="strategy (net of costs)")
    top.plot(bench.index, bench.to_numpy(), label="benchmark")
    top.plot(net.index, (net - bench).to_numpy(), label="excess", linestyle="--")
    top.set_ylabel("cumulative return (sum)")
    top.set_title(title)
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    bottom.fill_between(drawdown.index, drawdown.to_numpy(), 0, color="tab:red", alpha=0.4)
    bottom.set_ylabel("drawdown")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    out: Path,
    name: str,
    results: BacktestResults,
    report: pd.DataFrame,
    positions: pd.DataFrame,
    trades: pd.DataFrame,
    scores: pd.Series,
    manifest: dict[str, Any],
    timings: dict[str, float],
) -> list[Path]:
    """Write every report file into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "metrics.json": lambda p: p.write_text(
            json.dumps(
                {"results": results.to_manifest(), "timingsSeconds": timings, "backtest": manifest},
                indent=2,
                default=str,
            )
            + "\n"
        ),
        "report.csv": lambda p: report.to_csv(p, index_label="datetime"),
        "positions.csv": lambda p: positions.to_csv(p, index=False),
        "trades.csv": lambda p: trades.to_csv(p, index=False),
        "scores.csv": lambda p: scores.rename("score").to_csv(p),
        "chart.png": lambda p: write_chart(report, p, f"Backtest {name}"),
    }
    written = []
    for file_name, write in files.items():
        path = out / file_name
        write(path)
        written.append(path)
    return written
