"""What a finished Backtest reports: headline figures, execution quality, the single-level comparison.

This is the object `kubequant run -o json` prints and the operator writes to `.status.results`.
"""

from __future__ import annotations

from pydantic import Field

from kubequant.api.base import ApiModel


class LevelExecution(ApiModel):
    """qlib's trade indicators of one execution level."""

    frequency: str | None = Field(None, max_length=16, description="Step of the level (day, 30min, 1min).")
    orders: int | None = Field(None, ge=0, description="Orders the level executed or passed down.")
    fill_rate: float | None = Field(
        None, description="Mean share of each order's amount that was filled (qlib's ffr)."
    )
    price_advantage_bps: float | None = Field(
        None,
        description="Mean price advantage over the period's TWAP, in bps (qlib's pa; positive is better).",
    )


class ExecutionQuality(ApiModel):
    """How well orders were executed, measured on the fills."""

    levels: list[LevelExecution] | None = Field(
        None, max_length=4, description="Indicators per level, outermost first."
    )
    engine: str | None = Field(
        None,
        max_length=300,
        description="Which engine ran the inner levels, and why (the compiled engine, or qlib's NestedExecutor).",
    )
    implementation_shortfall_bps: float | None = Field(
        None,
        description="Value-weighted cost of the fills against the arrival price (the day's open), in bps.",
    )
    impact_bps: float | None = Field(
        None,
        description="Value-weighted distance of fill prices from their bar's price (slippage and impact), in bps.",
    )
    participation: float | None = Field(None, description="Mean share of the bar's volume taken by a fill.")
    fills_per_order: float | None = Field(
        None, description="Fills per order of the portfolio strategy (orders split)."
    )


class SingleLevelComparison(ApiModel):
    """The same signal and strategy run with the single-level daily executor."""

    annualized_return: float | None = Field(None, description="Annualised return, net of costs.")
    sharpe: float | None = Field(None, description="Sharpe ratio (risk-free 0).")
    avg_trade_cost_bps: float | None = Field(None, description="Costs over traded value, in bps.")
    total_cost: float | None = Field(None, description="Sum of trading costs.")
    trades: int | None = Field(None, description="Number of filled orders.")


class DataQuality(ApiModel):
    """Data quality of the cells a run read: each universe member on each trading day of the period."""

    missing_ratio: dict[str, float] | None = Field(
        None,
        max_length=64,
        description="By field the run reads (close, volume, ...): the fraction of its cells that are NaN or "
        "absent from the bundle.",
    )
    instruments: int | None = Field(None, ge=0, description="Universe members during the period.")
    instruments_missing: int | None = Field(
        None, ge=0, description="Members with no value in any field read during the period."
    )
    missing_instruments: list[str] | None = Field(
        None, max_length=20, description="The first of those members (sorted), at most 20."
    )


class BacktestResults(ApiModel):
    """Headline figures of a finished backtest (the object `kubequant run -o json` prints)."""

    annualized_return: float | None = Field(
        None, description="Annualised return of the portfolio, net of costs."
    )
    sharpe: float | None = Field(
        None, description="Annualised return over annualised volatility (risk-free 0)."
    )
    max_drawdown: float | None = Field(None, description="Largest peak-to-trough loss, negative.")
    excess_annualized_return: float | None = Field(
        None, description="Annualised return over the benchmark, net."
    )
    information_ratio: float | None = Field(None, description="Information ratio of the excess return, net.")
    excess_max_drawdown: float | None = Field(None, description="Max drawdown of the excess return, net.")
    benchmark_annualized_return: float | None = Field(None, description="Annualised return of the benchmark.")
    total_return: float | None = Field(None, description="Compounded return over the period, net of costs.")
    win_rate: float | None = Field(None, description="Fraction of trading days with a positive net return.")
    turnover: float | None = Field(None, description="Mean daily turnover (traded value / account value).")
    avg_trade_cost_bps: float | None = Field(None, description="Total costs over total traded value, in bps.")
    total_cost: float | None = Field(None, description="Sum of trading costs, in account currency.")
    trades: int | None = Field(None, description="Number of filled orders.")
    days: int | None = Field(None, description="Trading days in the period.")
    ic: float | None = Field(None, description="Mean daily Pearson IC of the signal with the label.")
    rank_ic: float | None = Field(None, description="Mean daily Spearman IC of the signal with the label.")
    icir: float | None = Field(None, description="IC mean over IC standard deviation.")
    final_account_value: float | None = Field(None, description="Account value at the end of the period.")
    execution: ExecutionQuality | None = Field(
        None, description="Execution quality, per level and on the fills."
    )
    single_level: SingleLevelComparison | None = Field(
        None,
        description="For nested runs: the same signal with the single-level executor, to show what realism costs.",
    )
    data_quality: DataQuality | None = Field(
        None, description="Missing values and instruments with no data among what the run read."
    )
    report: str | None = Field(None, max_length=2048, description="Where the full report was written.")
