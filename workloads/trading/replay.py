"""``kubequant run --replay``: a paper session over historical bars, faster than real time, signal API up.

A built-in strategy drives it through the signal API on loopback: each bar, a TopkDropout rebalance
from a momentum score (``$close/Ref($close,20)-1`` on the bundle) becomes one signal of target
weights. The paper broker deals the orders at the bar's close, the runtime's housekeeping then
journals fills and equity and trips the breakers; a halt ends the replay.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import shutil
from collections.abc import Callable
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
from kubequant.workloads.trading.runtime import RuntimeConfig, TradingRuntime, prepare
from kubequant.workloads.trading.signal_api import SignalService, build_app, load_token, serve

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
                "stateDir": self.state_dir,
            }
        }

    def describe(self) -> list[str]:
        """Human-readable lines."""
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.rejections_by_reason.items())) or "none"
        return [
            f"Replay {self.session} {self.period} ({self.bars} bars)",
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
    """The replay's clock: the trading bar's day at 14:30 in the session's time zone.

    The risk engine's trading day (daily trades, turnover, daily loss) follows the bars, not the wall clock.
    """

    def __init__(self, market: Any, broker: Any, timezone: str) -> None:
        self.market, self.broker, self.tz = market, broker, ZoneInfo(timezone)

    def now(self) -> dt.datetime:
        """The current bar's time."""
        day = self.market.bar_time(min(self.broker.bar, len(self.market.calendar) - 1)).date()
        return dt.datetime.combine(day, dt.time(14, 30), self.tz).astimezone(dt.UTC)


def momentum_scores(instruments: list[str], start: str, end: str) -> dict[dt.date, dict[str, float]]:
    """The momentum score of every instrument on every day of ``start..end`` (qlib must be initialised)."""
    from qlib.data import D

    first = (dt.date.fromisoformat(start) - dt.timedelta(days=60)).isoformat()
    frame = D.features(instruments, [MOMENTUM], start_time=first, end_time=end, freq="day")
    out: dict[dt.date, dict[str, float]] = {}
    for (inst, ts), value in frame.iloc[:, 0].dropna().items():
        out.setdefault(ts.date(), {})[str(inst)] = float(value)
    return out


def topk_dropout(
    scores: dict[str, float], held: set[str], topk: int, n_drop: int, risk_degree: float
) -> dict[str, float]:
    """Target weights: keep the best ``topk``, replacing at most ``n_drop`` held names per rebalance."""
    ranked = sorted(scores, key=lambda k: (-scores[k], k))
    keep = sorted((h for h in held if h in scores), key=lambda k: (-scores[k], k))
    fresh = [k for k in ranked if k not in held]
    if len(keep) < topk:
        chosen = keep + fresh[: topk - len(keep)]
    else:
        # Sell the worst held names that a fresher name beats, n_drop at most (qlib's TopkDropout idea).
        drops = [h for h in keep[::-1][:n_drop] if fresh and scores[h] < scores[fresh[0]]]
        chosen = [h for h in keep if h not in drops] + fresh[: len(drops)]
    weight = round(risk_degree / max(topk, 1), 6)
    targets = {k: weight for k in chosen[:topk]}
    for h in held - set(targets):
        targets[h] = 0.0
    return targets


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
    progress("data", f"loading bars {period}")
    market = prepare(cfg)
    scores = momentum_scores(market.instruments, start, end)
    return asyncio.run(_replay(cfg, market, scores, period, speed, progress))


async def _replay(
    cfg: RuntimeConfig,
    market: Any,
    scores: dict[dt.date, dict[str, float]],
    period: str,
    speed: float,
    progress: Progress,
) -> ReplaySummary:
    import aiohttp

    spec = cfg.session.spec
    scheduled = spec.strategy.scheduled
    rule = (
        scheduled.topk_dropout
        if scheduled
        else TopkDropout(topk=max(1, min(10, len(market.instruments) // 3)), n_drop=2)
    )
    try:
        token = load_token()
    except ConfigError:
        token = secrets.token_urlsafe(24)
        progress("signalapi", "KUBEQUANT_SIGNAL_TOKEN is not set: using a random token for this run")
    runtime = TradingRuntime(cfg, market)
    runtime.oms.clock = runtime.broker.clock = BarClock(market, runtime.broker, spec.timezone)
    service = SignalService.for_runtime(runtime)
    port = spec.strategy.signal_api.port if spec.strategy.signal_api else 0
    try:
        runner, bound = await serve(build_app(service, token), "127.0.0.1", port)
    except OSError:
        runner, bound = await serve(build_app(service, token), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{bound}"
    progress("signalapi", f"listening on {url} (POST /v1/signals, GET /v1/status, /metrics)")
    curve: list[float] = []
    bars = 0
    try:
        report = await runtime.start()
        if not runtime.oms.ready:
            raise ConfigError(f"recovery failed closed: {report.halted}", where=str(cfg.state_dir))
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(url, headers=headers) as http:
            broker = runtime.broker
            while not broker.exhausted:
                day = market.bar_time(broker.bar - 1).date()
                held = {k for k, q in runtime.oms.state.projected().items() if q > 0}
                if today := scores.get(day):
                    targets = topk_dropout(today, held, rule.topk, rule.n_drop, rule.risk_degree)
                    body = {
                        "id": f"rebalance-{day.isoformat()}",
                        "targets": [{"instrument": k, "weight": w} for k, w in sorted(targets.items())],
                    }
                    async with http.post("/v1/signals", json=body) as resp:
                        if resp.status >= 400:
                            raise ConfigError(f"the signal API refused a rebalance: {await resp.text()}")
                broker.advance()
                await runtime.tick()
                bars += 1
                if (acct := runtime.oms.state.account) is not None:
                    curve.append(float(acct.equity))
                if bars % 20 == 0:
                    progress("replay", f"{day} bar {bars}: equity {curve[-1] if curve else 0:,.0f}")
                if runtime.risk.state is TradingState.HALTED:
                    progress("replay", f"{day}: HALTED ({'; '.join(runtime.risk.describe().values())})")
                    break
                if speed > 0:
                    await asyncio.sleep(86400 / speed)
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
        equity_curve=curve,
    )
