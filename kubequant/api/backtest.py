"""The Backtest kind: a Qlib backtest of a signal through a strategy, an executor and an exchange."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated, cast

from pydantic import Field, StringConstraints

from kubequant.api.base import AGE, ApiModel, CrdFacts, PrinterColumn, Rule
from kubequant.api.common import (
    ArtifactLocation,
    ClassReference,
    Condition,
    DataSource,
    DateRange,
    FilePath,
    InstrumentCode,
    JobOptions,
    LocalObjectReference,
    PodOptions,
    exactly_one_rule,
)
from kubequant.api.resource import Resource, WorkloadStatus
from kubequant.api.results import BacktestResults

Frequency = Annotated[str, StringConstraints(pattern=r"^(day|[1-9][0-9]*min)$", max_length=16)]


class Universe(ApiModel):
    """Which instruments may be held: a market (an instruments file of the bundle) or an explicit list."""

    market: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+$", max_length=64)] | None = Field(
        None,
        description="Name of an instruments file in the bundle (instruments/<market>.txt), e.g. all, csi300.",
    )
    instruments: list[InstrumentCode] | None = Field(
        None, min_length=1, max_length=5000, description="Explicit instrument codes, instead of a market."
    )

    __rules__ = (exactly_one_rule(["market", "instruments"], "leave both unset for market 'all'", True),)

    def resolved_market(self) -> str | list[str]:
        """The market name or instrument list qlib should load."""
        if self.instruments is not None:
            return list(self.instruments)
        return self.market or "all"


class Segments(ApiModel):
    """Train/valid/test periods of a dataset, in order and not overlapping."""

    train: DateRange = Field(description="Period the model is fitted on.")
    valid: DateRange = Field(description="Period used for early stopping and model selection.")
    test: DateRange = Field(description="Out-of-sample period the model predicts (and the backtest trades).")

    __rules__ = (
        Rule(
            cel="self.valid.start > self.train.end",
            message="valid must start after train ends; move valid.start after train.end",
            field="valid.start",
            check=lambda s: s.valid.start > s.train.end,
        ),
        Rule(
            cel="self.test.start > self.valid.end",
            message="test must start after valid ends; move test.start after valid.end",
            field="test.start",
            check=lambda s: s.test.start > s.valid.end,
        ),
    )


class InlineModel(ApiModel):
    """A model trained inside the run: features from a data handler, a qlib model, three segments."""

    handler: ClassReference = Field(
        default_factory=lambda: ClassReference(class_name="Alpha158"),
        description="Feature/label handler; default Alpha158 from qlib.contrib.data.handler.",
    )
    model: ClassReference = Field(
        default_factory=lambda: ClassReference(class_name="LGBModel"),
        description="qlib model class; default LGBModel (LightGBM) from qlib.contrib.model.gbdt.",
    )
    segments: Segments = Field(
        description="Train/valid/test periods; the backtest trades on test predictions."
    )
    # A string default (the enum's value): ExecutionEngine is declared further down this module.
    engine: ExecutionEngine = Field(
        cast("ExecutionEngine", "auto"),
        description=(
            "auto: qlib's Alpha158, Alpha158vwap, Alpha360 or Alpha360vwap (handler without a module) is computed by "
            "kubequant's compiled handler (kubequant.workloads.features: qlib's values, columns and "
            "processors, a fraction of the time); any other handler runs as named. "
            "qlib: always qlib's own handler (the reference)."
        ),
    )


class SignalFile(ApiModel):
    """Precomputed scores: a CSV or Parquet table with datetime, instrument and score columns."""

    path: FilePath = Field(description="File path (local for kubequant run, in the pod for the operator).")


class Signal(ApiModel):
    """Where the scores the strategy trades on come from. Set exactly one of model, modelRef, file."""

    model: InlineModel | None = Field(
        None, description="Train a model in the run and trade its test predictions."
    )
    model_ref: LocalObjectReference | None = Field(
        None, description="Use the model artifact of a succeeded TrainingJob in the same namespace."
    )
    file: SignalFile | None = Field(None, description="Trade precomputed scores from a file.")

    __rules__ = (exactly_one_rule(["model", "modelRef", "file"], "choose one source of scores"),)


class TopkDropout(ApiModel):
    """qlib's TopkDropoutStrategy: hold the top k by score, replace at most nDrop names per day."""

    topk: int = Field(50, ge=1, le=5000, description="Number of instruments held.")
    n_drop: int = Field(5, ge=0, le=5000, description="Instruments replaced each rebalance.")
    risk_degree: float = Field(0.95, gt=0, le=1, description="Fraction of the account invested, in (0, 1].")
    hold_thresh: int = Field(1, ge=1, description="Minimum days a position is held before it may be sold.")
    only_tradable: bool = Field(False, description="Rank only instruments tradable that day.")
    forbid_all_trade_at_limit: bool = Field(True, description="No buy or sell at limit-up/limit-down.")

    __rules__ = (
        Rule(
            cel="self.topk > self.nDrop",
            message="topk must be greater than nDrop; raise topk or lower nDrop",
            field="nDrop",
            check=lambda s: s.topk > s.n_drop,
        ),
    )


class Strategy(ApiModel):
    """The portfolio strategy. Set at most one of topkDropout, custom; none means TopkDropout defaults."""

    topk_dropout: TopkDropout | None = Field(None, description="qlib's TopkDropoutStrategy (the default).")
    custom: ClassReference | None = Field(
        None, description="Any importable qlib strategy class; the signal is passed as its `signal` argument."
    )

    __rules__ = (exactly_one_rule(["topkDropout", "custom"], "leave both unset for TopkDropout", True),)


SESSION_MINUTES = 120  # each A-share session (09:30–11:30, 13:00–15:00)


def minutes(frequency: str) -> int:
    """Length of a step in minutes (a trading day counts as 240, the A-share session)."""
    return 240 if frequency == "day" else int(frequency.removesuffix("min"))


def _cel_minutes(expr: str) -> str:
    return f"({expr} == 'day' ? 240 : int({expr}.replace('min', '')))"


class Twap(ApiModel):
    """qlib's TWAPStrategy: split each order evenly over the level's steps."""


class Vwap(ApiModel):
    """Volume-weighted slices: each step gets the share of the day's volume the instrument usually trades then."""

    lookback_days: int = Field(
        5,
        ge=1,
        le=60,
        description="Past trading days whose 1-minute volumes make the profile (none from the day traded).",
    )


class SbbEma(ApiModel):
    """qlib's SBBStrategyEMA: trade each order in the better of every two steps, judged by an EMA trend."""


class SlicingStrategy(ApiModel):
    """How a level splits the orders of the level above it. Set exactly one of twap, vwap, sbbEma, custom."""

    twap: Twap | None = Field(None, description="Equal slices (qlib's TWAPStrategy).")
    vwap: Vwap | None = Field(
        None, description="Slices in proportion to the usual intraday volume (kubequant's VWAPStrategy)."
    )
    sbb_ema: SbbEma | None = Field(
        None, description="qlib's SBBStrategyEMA (needs the instruments' minute bars)."
    )
    custom: ClassReference | None = Field(
        None, description="Any importable qlib strategy that executes an outer decision (e.g. ACStrategy)."
    )

    __rules__ = (
        exactly_one_rule(["twap", "vwap", "sbbEma", "custom"], "choose how this level slices orders"),
    )

    def slicing(self) -> str:
        """The built-in slicing chosen: twap, vwap or sbb_ema ('custom' for a class)."""
        if self.custom is not None:
            return "custom"
        if self.vwap is not None:
            return "vwap"
        return "sbb_ema" if self.sbb_ema is not None else "twap"


class ExecutorLevel(ApiModel):
    """One inner level of nested execution: its step and the strategy that slices the level above."""

    frequency: Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]*min$", max_length=16)] = Field(
        description="Step of this level, e.g. 30min or 1min; strictly finer than the level above."
    )
    strategy: SlicingStrategy = Field(description="How this level splits the orders it receives.")


class ExecutionEngine(StrEnum):
    AUTO = "auto"
    QLIB = "qlib"


class Executor(ApiModel):
    """How decisions become trades: qlib's SimulatorExecutor at one frequency, or nested levels."""

    frequency: Frequency = Field("day", description="Decision step of the portfolio strategy (day, or Nmin).")
    trade_type: str = Field(
        "serial",
        pattern=r"^(serial|parallel)$",
        description="serial: sells settle before buys on the same step; parallel: independent.",
    )
    levels: list[ExecutorLevel] | None = Field(
        None,
        min_length=1,
        max_length=3,
        description=(
            "Inner levels, outermost first (qlib's NestedExecutor): e.g. [30min sbbEma, 1min twap]; "
            "the last level trades in the simulator. Unset: single level."
        ),
    )
    engine: ExecutionEngine = Field(
        ExecutionEngine.AUTO,
        description=(
            "auto: inner levels under a daily level that slice with TWAP, VWAP or sbbEma, each of a "
            "step dividing 120 minutes and the step above (e.g. day → 30min → 1min), run compiled "
            "(qlib's rules, the same results, a fraction of the time); levels with a custom "
            "strategy class run in qlib's NestedExecutor. qlib: always qlib's NestedExecutor (the reference)."
        ),
    )

    __rules__ = (
        Rule(
            cel=(
                "!has(self.levels) || ("
                f"{_cel_minutes('self.frequency')} > {_cel_minutes('self.levels[0].frequency')}"
                f" && (size(self.levels) < 2 || {_cel_minutes('self.levels[0].frequency')} > {_cel_minutes('self.levels[1].frequency')})"
                f" && (size(self.levels) < 3 || {_cel_minutes('self.levels[1].frequency')} > {_cel_minutes('self.levels[2].frequency')}))"
            ),
            message="each level must be strictly finer than the one above it; list levels from coarse to fine, e.g. day → 30min → 1min",
            field="levels",
            check=lambda e: (
                e.levels is None
                or all(
                    minutes(a) > minutes(b)
                    for a, b in zip(
                        [e.frequency, *(lv.frequency for lv in e.levels)],
                        [lv.frequency for lv in e.levels],
                        strict=False,
                    )
                )
            ),
        ),
    )

    def finest(self) -> str:
        """The frequency trades are simulated at."""
        return self.levels[-1].frequency if self.levels else self.frequency

    def compiled_reason(self) -> str | None:
        """Why the inner levels run on qlib's NestedExecutor; None when they run on the compiled engine."""
        levels = self.levels or []
        if not levels:
            return "single level"
        if self.engine != ExecutionEngine.AUTO:
            return "engine: qlib"
        if self.frequency != "day":
            return f"compiled levels run under a daily decision level, not {self.frequency}"
        above = SESSION_MINUTES
        for i, level in enumerate(levels):
            if level.strategy.custom is not None:
                return f"levels[{i}] slices with a custom strategy class"
            step = minutes(level.frequency)
            if SESSION_MINUTES % step or above % step:
                return (
                    f"levels[{i}]: {level.frequency} bars would not tile the 120-minute sessions "
                    f"or nest in the level above"
                )
            above = step
        return None

    def compiled_slicing(self) -> list[str] | None:
        """Each level's slicing (twap, vwap, sbb_ema) when the levels run compiled; None: qlib's executors."""
        if self.compiled_reason() is not None:
            return None
        return [level.strategy.slicing() for level in self.levels or []]


class DealPrice(StrEnum):
    CLOSE = "close"
    OPEN = "open"
    VWAP = "vwap"


class ImpactModelKind(StrEnum):
    ALMGREN_CHRISS = "almgrenChriss"


class OnCap(StrEnum):
    CARRY = "carry"
    EXPIRE = "expire"


class ImpactModel(ApiModel):
    """Market impact that depends on the order: every fill's price moves against the trade.

    For q shares dealt in a bar of volume V (participation p = q/V), arrival price P and daily
    volatility σ, the fill price is P·(1 + d·(slippageBps/1e4 + temporary·σ·p^beta + permanent·p)),
    d = +1 for a buy and -1 for a sell; the impact cost is |fill - P|·q, on top of the fees.
    """

    model: ImpactModelKind = Field(
        ImpactModelKind.ALMGREN_CHRISS,
        description="The impact model; almgrenChriss: permanent impact linear in participation plus "
        "temporary impact proportional to volatility times participation to the power beta.",
    )
    permanent: float = Field(
        0.0,
        ge=0,
        description="Permanent impact coefficient: the price moves by permanent·(q/V) of itself, "
        "charged to the order that causes it.",
    )
    temporary: float = Field(
        0.0,
        ge=0,
        description="Temporary impact coefficient: the fill moves by temporary·σ·(q/V)^beta of the price, "
        "σ being the daily volatility.",
    )
    beta: float = Field(
        0.5,
        gt=0,
        le=2,
        description="Exponent of participation in the temporary impact, in (0, 2]; 0.5 is the square-root law.",
    )
    slippage_bps: float = Field(
        0.0, ge=0, lt=10000, description="Fixed slippage of every fill against the trade, in basis points."
    )
    max_participation: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Cap on an order's share of a bar's volume, in (0, 1]; unset means no cap. A bar "
        "without volume cannot be traded whenever an impact model is set.",
    )
    on_cap: OnCap = Field(
        OnCap.CARRY,
        description="What happens to the part of an order above maxParticipation: carry (nested "
        "execution works it in the next bars) or expire (dropped). A single-level backtest does not "
        "trade it that step either way; the strategy decides afresh at the next step.",
    )
    volatility_window: int = Field(
        20,
        ge=2,
        le=1000,
        description="Trading days of close-to-close returns in the rolling daily volatility σ; the σ of "
        "a day uses the returns of the days before it only.",
    )


class Exchange(ApiModel):
    """Trading costs and rules of the simulated exchange (qlib's Exchange)."""

    open_cost: float = Field(0.0005, ge=0, lt=1, description="Cost rate of buying, as a fraction of value.")
    close_cost: float = Field(
        0.0015, ge=0, lt=1, description="Cost rate of selling (commission plus stamp duty)."
    )
    min_cost: float = Field(5.0, ge=0, description="Minimum cost of one trade, in account currency.")
    stamp_duty: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Stamp duty on sells, as a fraction of value, charged on top of closeCost "
        "(China: 0.0005 since 2023-08-28). 0 by default because closeCost's default 0.0015 already "
        "holds qlib's historical 0.1 % duty; for today's China costs set closeCost to the commission "
        "(e.g. 0.0005) and stampDuty 0.0005. The Backtest and the paper broker charge it alike.",
    )
    limit_threshold: float | None = Field(
        0.095,
        gt=0,
        le=1,
        description="Daily move, in (0, 1], at which an instrument is limit-up/down and untradable.",
    )
    deal_price: DealPrice = Field(DealPrice.CLOSE, description="Price trades fill at: close, open or vwap.")
    trade_unit: int | None = Field(
        None, ge=1, description="Lot size in shares; defaults to the region's (100 for cn)."
    )
    impact_cost: float = Field(
        0.0,
        ge=0,
        description="qlib's impact cost: coefficient of the squared share of the day's value traded.",
    )
    impact: ImpactModel | None = Field(
        None,
        description="Almgren–Chriss market impact, slippage and a participation cap, priced into every "
        "fill (an alternative to impactCost).",
    )

    __rules__ = (
        Rule(
            cel="!has(self.impact) || !has(self.impactCost) || self.impactCost == 0.0",
            message="impactCost and impact are two impact models and cannot both be set; "
            "set impactCost to 0 or remove impact",
            field="impactCost",
            check=lambda s: s.impact is None or s.impact_cost == 0,
        ),
    )


class Output(ApiModel):
    """Where the full report goes."""

    artifacts: ArtifactLocation = Field(
        default_factory=ArtifactLocation,
        description="Report location; default ./reports/<name> locally, an emptyDir in a pod.",
    )


class BacktestSpec(ApiModel):
    """What to backtest and how."""

    data: DataSource = Field(default_factory=DataSource, description="The qlib data bundle.")
    universe: Universe = Field(default_factory=Universe, description="Instruments the strategy may hold.")
    benchmark: InstrumentCode = Field(
        "SYNIDX", description="Benchmark instrument code (the sample's is SYNIDX)."
    )
    period: DateRange = Field(description="Days the strategy trades; inside the bundle's calendar.")
    account: float = Field(100_000_000, gt=0, description="Starting cash.")
    signal: Signal = Field(description="Where the scores come from: model, modelRef or file.")
    strategy: Strategy = Field(default_factory=Strategy, description="Portfolio strategy.")
    executor: Executor = Field(default_factory=Executor, description="How decisions are executed.")
    exchange: Exchange = Field(default_factory=Exchange, description="Costs and trading rules.")
    output: Output = Field(default_factory=Output, description="Where the full report is written.")
    pod: PodOptions = Field(default_factory=PodOptions, description="Pod placement (cluster only).")
    job: JobOptions = Field(default_factory=JobOptions, description="Job limits (cluster only).")
    suspend: bool = Field(
        False, description="Create the Job suspended; the only field that may change later."
    )

    __rules__ = (
        Rule(
            cel="!has(self.signal.model) || self.period.start >= self.signal.model.segments.test.start",
            message="period must lie within signal.model.segments.test; move period.start on or after test.start",
            field="period.start",
            check=lambda s: s.signal.model is None or s.period.start >= s.signal.model.segments.test.start,
        ),
        Rule(
            cel="!has(self.signal.model) || self.period.end <= self.signal.model.segments.test.end",
            message="period must lie within signal.model.segments.test; move period.end on or before test.end",
            field="period.end",
            check=lambda s: s.signal.model is None or s.period.end <= s.signal.model.segments.test.end,
        ),
    )


class BacktestPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"

    @property
    def is_terminal(self) -> bool:
        """Whether the run is over: a finished Backtest keeps its outcome."""
        return self in (BacktestPhase.SUCCEEDED, BacktestPhase.FAILED)


class BacktestStatus(WorkloadStatus):
    """Observed state of a Backtest."""

    phase: BacktestPhase | None = Field(None, description="Summary for humans; conditions are authoritative.")
    job_name: str | None = Field(None, max_length=253, description="Name of the Job running the backtest.")
    start_time: dt.datetime | None = Field(None, description="When the Job started.")
    completion_time: dt.datetime | None = Field(None, description="When the backtest finished.")
    results: BacktestResults | None = Field(None, description="Headline figures, when Succeeded.")


class Backtest(Resource):
    """A Qlib backtest run as a Kubernetes Job."""

    spec: BacktestSpec = Field(description="What to backtest and how.")
    status: BacktestStatus | None = Field(None, description="Observed state, written by the operator.")

    __crd__ = CrdFacts(
        kind="Backtest",
        plural="backtests",
        singular="backtest",
        short_names=("bt",),
        description="A Qlib backtest of a signal through a strategy, an executor and an exchange with costs.",
        columns=(
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn(
                "Return", ".status.results.annualizedReturn", "number", description="Annualised return"
            ),
            PrinterColumn("Sharpe", ".status.results.sharpe", "number"),
            PrinterColumn("MaxDD", ".status.results.maxDrawdown", "number", description="Max drawdown"),
            AGE,
        ),
        # The spec cannot change once created (results must describe the spec they came from),
        # except `suspend`, which starts a suspended run.
        mutable_spec_fields=("suspend",),
    )


_ = Condition  # re-exported through kubequant.api
