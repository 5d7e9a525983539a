"""``kubequant run --replay``: a paper session over historical bars, faster than real time, signal API up.

The session's scheduled strategy (``spec.strategy.scheduled``) trades each bar: a TopkDropout
rebalance from its scores (a signal file, or a model trained in the run as a Backtest does),
each order sliced into ``slices`` children ``sliceIntervalSeconds`` apart on the replay's clock
from ``rebalanceAt``, every child through the OMS and the risk engine. Without a scheduled
strategy a momentum score (``$close/Ref($close,20)-1`` on the bundle) is the documented fallback,
one unsliced rebalance per bar. The paper broker deals the orders at the bar's close, the
runtime's housekeeping then journals fills and equity and trips the breakers; a halt ends the
replay. The signal API is up on loopback for signals from outside meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from kubequant.api.backtest import TopkDropout
from kubequant.api.live import LiveTradingSession, ReplayOptions, TradingState
from kubequant.api.risk import RiskPolicy
from kubequant.errors import ConfigError, ValidationError
from kubequant.workloads.trading.node.runtime import RuntimeConfig, TradingRuntime, bundle_path, prepare
from kubequant.workloads.trading.node.scheduled import Rebalancer, ScoreBook, load_scores
from kubequant.workloads.trading.node.signal_api import SignalService, build_app, load_token, serve

log = logging.getLogger(__name__)
MOMENTUM = "$close/Ref($close,20)-1"
Progress = Callable[[str, str], None]


@dataclass
class ReplaySummary:
    """What a replay did: the status the session would report, and the totals over the replay."""

    session: str
    period: str
    bars: int
    status: dict[str, Any]
    orders: int
    fills: int
    rejections_by_reason: dict[str, int]
    pnl: float
    max_drawdown: float
    final_state: str
    halt_reason: str | None
    signal_api: str
    state_dir: str
    strategy: str = ""
    equity_curve: list[float] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The LiveTradingSessionStatus object (camelCase), with the replay's totals under ``replay``."""
        return self.status | {
            "replay": {
                "session": self.session,
                "period": self.period,
                "bars": self.bars,
                "orders": self.orders,
                "fills": self.fills,
                "rejectionsByReason": self.rejections_by_reason,
                "pnl": self.pnl,
                "maxDrawdown": self.max_drawdown,
                "finalState": self.final_state,
                "haltReason": self.halt_reason,
                "signalApi": self.signal_api,
                "strategy": self.strategy,
                "stateDir": self.state_dir,
            }
        }

    def describe(self) -> list[str]:
        """Human-readable lines."""
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.rejections_by_reason.items())) or "none"
        return [
            f"Replay {self.session} {self.period} ({self.bars} bars)",
            f"  {'Strategy':<22} {self.strategy}",
            f"  {'Orders':<22} {self.orders}",
            f"  {'Fills':<22} {self.fills}",
            f"  {'Rejections by reason':<22} {reasons}",
            f"  {'PnL':<22} {self.pnl:+,.2f}",
            f"  {'Max drawdown':<22} {self.max_drawdown:.2%}",
            f"  {'Final state':<22} {self.final_state}"
            + (f" ({self.halt_reason})" if self.halt_reason else ""),
            f"  {'Journal':<22} {self.state_dir}",
        ]


class BarClock:
    """The replay's clock: a time on the trading bar's day in the session's time zone (14:30 unless set).

    The risk engine's trading day (daily trades, turnover, daily loss) follows the bars, not the
    wall clock; the scheduled strategy's slices set the time of day they are sent at.
    """

    def __init__(self, market: Any, broker: Any, timezone: str) -> None:
        self.market, self.broker, self.tz = market, broker, ZoneInfo(timezone)
        self.when: dt.datetime | None = None

    def day(self) -> dt.date:
        """The date of the bar now trading."""
        return self.market.bar_time(min(self.broker.bar, len(self.market.calendar) - 1)).date()

    def at(self, clock: str | dt.time) -> dt.datetime:
        """``clock`` (HH:MM) on the current bar's day, in UTC."""
        t = clock if isinstance(clock, dt.time) else dt.time.fromisoformat(clock)
        return dt.datetime.combine(self.day(), t, self.tz).astimezone(dt.UTC)

    def set(self, when: dt.datetime | None) -> None:
        """Hold the clock at ``when``; None goes back to 14:30 on the bar's day."""
        self.when = when

    def now(self) -> dt.datetime:
        """The current replay time."""
        if self.when is not None and self.when.astimezone(self.tz).date() >= self.day():
            return self.when
        return self.at(dt.time(14, 30))


def momentum_scores(instruments: list[str], start: str, end: str) -> dict[dt.date, dict[str, float]]:
    """The momentum score of every instrument on every day of ``start..end`` (qlib must be initialised)."""
    from qlib.data import D

    first = (dt.date.fromisoformat(start) - dt.timedelta(days=60)).isoformat()
    frame = D.features(instruments, [MOMENTUM], start_time=first, end_time=end, freq="day")
    out: dict[dt.date, dict[str, float]] = {}
    for (inst, ts), value in frame.iloc[:, 0].dropna().items():
        out.setdefault(ts.date(), {})[str(inst)] = float(value)
    return out


def momentum_book(instruments: list[str], start: str, end: str) -> ScoreBook:
    """The fallback strategy's scores: momentum on every day of ``start..end``."""
    return ScoreBook(momentum_scores(instruments, start, end))


def _policy_file(policy: RiskPolicy, folder: Path) -> Path:
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(policy.model_dump(by_alias=True, exclude_none=True, mode="json")))
    return path


def run_replay(
    session: LiveTradingSession,
    policy: RiskPolicy | None,
    period: str,
    speed: float,
    report_dir: Path,
    progress: Progress,
) -> ReplaySummary:
    """Replay ``period`` (START..END) of the session's bundle with the paper broker and the signal API up."""
    if policy is None:
        raise ConfigError(
            f"no RiskPolicy {session.spec.risk_policy_ref.name!r} for the session",
            where="spec.riskPolicyRef",
            fix="put the RiskPolicy in the same file or pass --policy FILE",
        )
    try:
        ReplayOptions(period=period, speed=speed)
        start, end = period.split("..")
        if dt.date.fromisoformat(start) >= dt.date.fromisoformat(end):
            raise ValueError("START must be before END")
    except ValueError as err:
        raise ValidationError(
            f"bad replay period {period!r}: {str(err).splitlines()[0]}",
            where="--replay",
            fix="give START..END as YYYY-MM-DD..YYYY-MM-DD",
        ) from err
    spec = session.spec.model_copy(update={"replay": ReplayOptions(period=period, speed=speed)})
    session = session.model_copy(update={"spec": spec})
    report_dir.mkdir(parents=True, exist_ok=True)
    state_dir = report_dir / "state"
    if state_dir.exists():
        shutil.rmtree(state_dir)  # a replay starts from an empty journal and a fresh paper account
    cfg = RuntimeConfig(session=session, policy_path=_policy_file(policy, report_dir), state_dir=state_dir)
    scheduled = spec.strategy.scheduled
    with _qlib_for(cfg) as initialised:
        progress("data", f"loading bars {period}")
        market = prepare(cfg, init=not initialised)
        if scheduled is not None:
            scores = load_scores(scheduled.signal, market.instruments, (start, end), progress)
            _check_covers(scores, start, end)
        else:
            progress("strategy", "no spec.strategy.scheduled: the momentum fallback trades")
            scores = momentum_book(market.instruments, start, end)
    return asyncio.run(_replay(cfg, market, scores, period, speed, progress))


@contextlib.contextmanager
def _qlib_for(cfg: RuntimeConfig) -> Iterator[bool]:
    """qlib as the Backtest runner sets it up when a model is trained in the run (True), else nothing (False)."""
    scheduled = cfg.session.spec.strategy.scheduled
    if scheduled is None or scheduled.signal.model is None:
        yield False
        return
    from kubequant.workloads.backtest.runner import _end_qlib_experiment, init_qlib

    with tempfile.TemporaryDirectory(prefix="kubequant-mlruns-") as scratch:
        init_qlib(bundle_path(cfg.session, cfg.data_path), cfg.session.spec.data.region, Path(scratch))
        try:
            yield True
        finally:
            _end_qlib_experiment()


def _check_covers(scores: ScoreBook, start: str, end: str) -> None:
    first, last = dt.date.fromisoformat(start) - dt.timedelta(days=10), dt.date.fromisoformat(end)
    if not any(first <= d < last for d in scores.days):
        span = f"{scores.days[0]}..{scores.days[-1]}"
        raise ConfigError(
            f"the scores ({span}) have no day in the replay {start}..{end}",
            where="spec.strategy.scheduled.signal",
            fix="replay days the scores cover, or give scores for the period",
        )


def _fallback_rule(market: Any) -> TopkDropout:
    topk = max(2, min(10, len(market.instruments) // 3))
    return TopkDropout(topk=topk, n_drop=min(2, topk - 1))


async def _replay(
    cfg: RuntimeConfig,
    market: Any,
    scores: ScoreBook,
    period: str,
    speed: float,
    progress: Progress,
) -> ReplaySummary:
    spec = cfg.session.spec
    scheduled = spec.strategy.scheduled
    try:
        token = load_token()
    except ConfigError:
        token = secrets.token_urlsafe(24)
        progress("signalapi", "KUBEQUANT_SIGNAL_TOKEN is not set: using a random token for this run")
    runtime = TradingRuntime(cfg, market)
    clock = BarClock(market, runtime.broker, spec.timezone)
    runtime.oms.clock = runtime.broker.clock = clock
    service = SignalService.for_runtime(runtime)
    port = spec.strategy.signal_api.port if spec.strategy.signal_api else 0
    try:
        runner, bound = await serve(build_app(service, token), "127.0.0.1", port)
    except OSError:
        runner, bound = await serve(build_app(service, token), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{bound}"
    progress("signalapi", f"listening on {url} (POST /v1/signals, GET /v1/status, /metrics)")
    if scheduled is not None:
        rebalancer = Rebalancer.for_strategy(
            runtime.oms, scheduled, scores, lot=runtime.lot(), tradable=runtime.tradable
        )
        rebalance_at = scheduled.rebalance_at
        rule = scheduled.topk_dropout
        described = (
            f"scheduled ({_source(scheduled)}; topk {rule.topk}, nDrop {rule.n_drop}; "
            f"{scheduled.slices} slices every {scheduled.slice_interval_seconds}s from {rebalance_at})"
        )
    else:
        rule = _fallback_rule(market)
        rebalancer = Rebalancer(runtime.oms, rule, scores, lot=runtime.lot(), tradable=runtime.tradable)
        rebalance_at = "14:30"
        described = f"momentum fallback (topk {rule.topk}, nDrop {rule.n_drop}; one order per name at 14:30)"
    progress("strategy", described)
    curve: list[float] = []
    bars = 0
    try:
        report = await runtime.start()
        if not runtime.oms.ready:
            raise ConfigError(f"recovery failed closed: {report.halted}", where=str(cfg.state_dir))
        broker = runtime.broker
        close = dt.time(15, 0)
        while not broker.exhausted:
            day, start = clock.day(), clock.at(rebalance_at)
            last = start
            if runtime.risk.state is not TradingState.HALTED:
                clock.set(start)
                runtime.observe_day(day, rebalancer.scores)
                # Child k is sent at start + k * sliceIntervalSeconds on the replay's clock.
                when: dt.datetime | None = start
                while when is not None:
                    if speed > 0 and when > last:
                        await asyncio.sleep((when - last).total_seconds() / speed)
                    clock.set(when)
                    last = when
                    await rebalancer.run_due(day, start, when)
                    when = rebalancer.next_due(day)
            clock.set(max(last, clock.at(close)))
            broker.advance()
            await runtime.tick()
            clock.set(None)
            bars += 1
            if (acct := runtime.oms.state.account) is not None:
                curve.append(float(acct.equity))
            if bars % 20 == 0:
                progress("replay", f"{day} bar {bars}: equity {curve[-1] if curve else 0:,.0f}")
            if runtime.risk.state is TradingState.HALTED:
                progress("replay", f"{day}: HALTED ({'; '.join(runtime.risk.describe().values())})")
                break
            if speed > 0:
                spent = (last - start).total_seconds()
                await asyncio.sleep(max(0.0, 86400 - spent) / speed)
        status = service.status()
        totals = service.counts(today_only=False)
    finally:
        await runner.cleanup()
        runtime.close()
    peak, max_dd = 0.0, 0.0
    for equity in curve:
        peak = max(peak, equity)
        if peak > 0:
            max_dd = max(max_dd, (peak - equity) / peak)
    start_cash = float(Decimal(repr(spec.starting_cash)))
    return ReplaySummary(
        session=cfg.session.metadata.name,
        period=period,
        bars=bars,
        status=status,
        orders=totals["orders"],
        fills=totals["fills"],
        rejections_by_reason=totals["rejectionsByReason"],
        pnl=round((curve[-1] if curve else start_cash) - start_cash, 2),
        max_drawdown=round(max_dd, 6),
        final_state=str(status.get("tradingState", "")),
        halt_reason=status.get("haltReason"),
        signal_api=url,
        state_dir=str(cfg.state_dir),
        strategy=described,
        equity_curve=curve,
    )


def _source(scheduled: Any) -> str:
    signal = scheduled.signal
    if signal.file is not None:
        return f"scores from {signal.file.path}"
    return f"scores of {signal.model.model.class_name} trained in the run"
