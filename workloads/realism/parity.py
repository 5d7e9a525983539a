"""``kubequant parity``: the same decisions in a Backtest and in the trading runtime, compared and attributed.

Every difference gets a cause (``Cause``); what no cause explains is ``unexplained`` and fails the
goals. Tolerances (the issue's goals, not tuned to pass): every matched fill within 1 bp of the
Backtest's price, every day's net value within 0.1 %, the same number of trades.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kubequant.api.backtest import Backtest
from kubequant.api.risk import RiskPolicy
from kubequant.workloads.realism.decisions import BacktestRun, load_scores, record_decisions, single_level
from kubequant.workloads.realism.replay import (
    REGION_TZ,
    ReplayedOrder,
    ReplayRun,
    permissive_policy,
    replay_decisions,
    replay_sliced,
    replay_summary,
)
from kubequant.workloads.trading.model.domain import MONEY_QUANTUM, PRICE_QUANTUM

Progress = Callable[[str, str], None]
FILL_BPS = 1.0  # goal: every fill's price within 1 bp
NAV_PCT = 0.1  # goal: every day's net value within 0.1 %
PRICE_HALF = float(PRICE_QUANTUM) / 2  # the paper broker's price rounding, at most half a quantum
CENT_HALF = float(MONEY_QUANTUM) / 2
EPS = 1e-9


class Cause(StrEnum):
    """Why the replay differs from the Backtest."""

    PRICE_QUANTUM = "price rounding"  # fills priced to 0.0001 by the broker, qlib in float32
    MONEY_QUANTUM = "cent rounding"  # fees and cash in cents
    LOT_ROUNDING = "rounding to lots"
    CASH_CHECK_ORDER = "cash check order"
    RISK_REJECTION = "risk rejection"
    T_PLUS_1 = "T+1"
    PRICE_LIMIT = "price limit"
    TRADING_SESSION = "trading session"
    BROKER_REJECTION = "broker rejection"
    NOT_TRADABLE = "not tradable at the bar"
    SLICE_TIMING = "timing of slices"
    UNEXPLAINED = "unexplained"


def _cn_reason_causes() -> dict[str, Cause]:
    """The runtime's rejection codes with a cause of their own: the A-share rules' (``risk/ashare.py``)."""
    causes = {"OUTSIDE_TRADING_WINDOW": Cause.TRADING_SESSION}
    by_rule = {
        "T_PLUS_ONE": Cause.T_PLUS_1,
        "ODD_LOT": Cause.LOT_ROUNDING,
        "PRICE_LIMIT": Cause.PRICE_LIMIT,
        "MARKET_CLOSED": Cause.TRADING_SESSION,
    }
    try:
        from kubequant.workloads.trading.risk.ashare import Rule
    except ImportError:  # pragma: no cover - a runtime without the A-share rules
        return causes
    for rule in Rule:
        causes[rule.value] = by_rule.get(rule.value, Cause.RISK_REJECTION)
    return causes


def _rejection(o: ReplayedOrder, reasons: dict[str, Cause]) -> str:
    """A rejection's cause and code; the paper broker's own refusals name the A-share rule first."""
    if o.source == "broker":
        rule = o.detail.split(":", 1)[0].strip()
        if rule in reasons:
            return f"{reasons[rule]}: {rule}"
        return f"{Cause.BROKER_REJECTION}: {o.reason}"
    return f"{reasons.get(o.reason, Cause.RISK_REJECTION)}: {o.reason}"


@dataclass
class FillRow:
    """One Backtest order beside its replay."""

    day: str
    seq: int
    instrument: str
    side: str
    backtest_quantity: float
    replay_quantity: float
    backtest_price: float | None
    replay_price: float | None
    diff_bps: float | None
    backtest_fee: float
    replay_fee: float
    replay_status: str
    causes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "seq": self.seq,
            "instrument": self.instrument,
            "side": self.side,
            "backtestQuantity": self.backtest_quantity,
            "replayQuantity": self.replay_quantity,
            "backtestPrice": self.backtest_price,
            "replayPrice": self.replay_price,
            "diffBps": self.diff_bps,
            "backtestFee": round(self.backtest_fee, 4),
            "replayFee": self.replay_fee,
            "replayStatus": self.replay_status,
            "causes": self.causes,
        }


@dataclass
class DayRow:
    """One day's net value, costs, turnover and trades on both sides."""

    day: str
    backtest_nav: float
    replay_nav: float | None
    diff_pct: float | None
    backtest_cost: float
    replay_cost: float
    backtest_turnover: float
    replay_turnover: float
    backtest_trades: int
    replay_trades: int
    causes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "backtestNav": round(self.backtest_nav, 2),
            "replayNav": self.replay_nav,
            "diffPct": self.diff_pct,
            "backtestCost": round(self.backtest_cost, 2),
            "replayCost": round(self.replay_cost, 2),
            "backtestTurnover": round(self.backtest_turnover, 2),
            "replayTurnover": round(self.replay_turnover, 2),
            "backtestTrades": self.backtest_trades,
            "replayTrades": self.replay_trades,
            "causes": self.causes,
        }


@dataclass
class LevelReport:
    """The comparison of one Backtest level with its replay."""

    level: str
    fills: list[FillRow]
    days: list[DayRow]
    replay: dict[str, Any]
    chart: str | None = None
    trade_counts: tuple[int, int] | None = None  # (backtest, replay) parents traded, when fills are children

    @property
    def matched(self) -> list[FillRow]:
        return [f for f in self.fills if f.diff_bps is not None]

    def goals(self) -> dict[str, Any]:
        """The issue's goals, measured."""
        worst_fill = max((abs(f.diff_bps or 0.0) for f in self.matched), default=0.0)
        worst_nav = max((abs(d.diff_pct) for d in self.days if d.diff_pct is not None), default=0.0)
        bt_trades = sum(1 for f in self.fills if f.backtest_quantity > 0)
        rp_trades = sum(1 for f in self.fills if f.replay_quantity > 0)
        if self.trade_counts is not None:
            bt_trades, rp_trades = self.trade_counts
        unexplained = sum(1 for f in self.fills if Cause.UNEXPLAINED in f.causes) + sum(
            1 for d in self.days if Cause.UNEXPLAINED in d.causes
        )
        return {
            "fillsWithin1bp": {"met": worst_fill <= FILL_BPS, "worstBps": round(worst_fill, 6)},
            "navWithin0.1pct": {"met": worst_nav <= NAV_PCT, "worstPct": round(worst_nav, 8)},
            "sameTradeCount": {"met": bt_trades == rp_trades, "backtest": bt_trades, "replay": rp_trades},
            "everyDifferenceAttributed": {"met": unexplained == 0, "unexplained": unexplained},
        }

    def causes(self) -> dict[str, int]:
        """How many fills and days each cause explains."""
        counted: Counter[str] = Counter()
        for causes in [*(f.causes for f in self.fills), *(d.causes for d in self.days)]:
            counted.update(set(causes))
        return dict(sorted(counted.items()))

    def to_json(self) -> dict[str, Any]:
        diffs = [abs(f.diff_bps) for f in self.matched if f.diff_bps is not None]
        return {
            "level": self.level,
            "goals": self.goals(),
            "summary": {
                "orders": len(self.fills),
                "childFills": None
                if self.trade_counts is None
                else {
                    "backtest": sum(1 for f in self.fills if f.backtest_quantity > 0),
                    "replay": sum(1 for f in self.fills if f.replay_quantity > 0),
                },
                "matchedFills": len(self.matched),
                "medianFillDiffBps": round(statistics.median(diffs), 6) if diffs else 0.0,
                "backtestCost": round(sum(d.backtest_cost for d in self.days), 2),
                "replayCost": round(sum(d.replay_cost for d in self.days), 2),
                "backtestTurnover": round(sum(d.backtest_turnover for d in self.days), 2),
                "replayTurnover": round(sum(d.replay_turnover for d in self.days), 2),
                "finalBacktestNav": self.days[-1].backtest_nav if self.days else None,
                "finalReplayNav": self.days[-1].replay_nav if self.days else None,
            },
            "causes": self.causes(),
            "replay": self.replay,
            "chart": self.chart,
            "days": [d.to_json() for d in self.days],
            "fills": [f.to_json() for f in self.fills],
        }


def _order_causes(o: ReplayedOrder, reasons: dict[str, Cause], earlier: bool) -> list[str]:
    """Why a replayed order dealt another quantity than the Backtest's (empty: the same quantity).

    A rejection names its code (``risk rejection: ORDER_NOTIONAL``); an order dealt differently after
    an earlier difference (less cash, another holding) is the cash check order.
    """
    d = o.decision
    bt_qty = d.dealt_shares if d.filled else 0.0
    if abs(o.quantity - bt_qty) <= 1e-6:
        return []
    if o.status == "rejected":
        return [_rejection(o, reasons)]
    if not o.sent:
        return [str(Cause.LOT_ROUNDING)]  # less than a share requested
    if o.quantity == 0 and bt_qty > 0 and o.status == "expired":
        return [str(Cause.CASH_CHECK_ORDER if earlier else Cause.NOT_TRADABLE)]
    if earlier:  # an earlier difference left another cash or holding for this order
        return [str(Cause.CASH_CHECK_ORDER)]
    return [str(Cause.UNEXPLAINED)]


def _fee_causes(fee: float, backtest_fee: float, quantity: float, backtest_value: float) -> list[str]:
    """A fee's difference: cents, plus what the price's rounding moves a fee at the Backtest's rate; else unexplained."""
    gap = abs(fee - backtest_fee)
    if gap <= EPS:
        return []
    rate = backtest_fee / backtest_value if backtest_value > 0 else 0.0
    fits = gap <= CENT_HALF + quantity * PRICE_HALF * rate + EPS
    return [str(Cause.MONEY_QUANTUM if fits else Cause.UNEXPLAINED)]


def compare(run: BacktestRun, replay: ReplayRun) -> LevelReport:
    """Fill by fill and day by day, with the cause of every difference."""
    reasons = _cn_reason_causes()
    fills: list[FillRow] = []
    by_day: dict[dt.date, list[FillRow]] = {}
    day_causes: set[str] = set()  # the causes of quantity differences so far (they carry into later days)
    for o in replay.orders:
        d = o.decision
        causes: list[str] = _order_causes(o, reasons, bool(day_causes))
        bt_price = d.traded_price if d.filled else None
        rp_price = o.price if o.quantity > 0 else None
        diff = None
        if bt_price is not None and rp_price is not None and bt_price > 0:
            diff = (rp_price - bt_price) / bt_price * 1e4 * (1 if d.side == "buy" else -1)
            if abs(rp_price - bt_price) > EPS and not causes:
                # The broker's price is qlib's price / factor rounded to the quantum; qlib's quote is float32.
                tolerance = PRICE_HALF + 1e-6 * bt_price
                fits = abs(rp_price - bt_price) <= tolerance
                causes.append(str(Cause.PRICE_QUANTUM if fits else Cause.UNEXPLAINED))
            if not causes or causes == [Cause.PRICE_QUANTUM]:
                causes += _fee_causes(o.fee, d.cost, o.quantity, d.value)
        row = FillRow(
            day=str(d.day),
            seq=d.seq,
            instrument=d.instrument,
            side=d.side,
            backtest_quantity=round(d.dealt_shares if d.filled else 0.0, 6),
            replay_quantity=o.quantity,
            backtest_price=None if bt_price is None else round(bt_price, 6),
            replay_price=None if rp_price is None else round(rp_price, 6),
            diff_bps=None if diff is None else round(diff, 6),
            backtest_fee=d.cost if d.filled else 0.0,
            replay_fee=o.fee,
            replay_status=o.status,
            causes=causes,
        )
        if any(c not in (Cause.PRICE_QUANTUM, Cause.MONEY_QUANTUM) for c in causes):
            day_causes.update(str(c) for c in causes)
        fills.append(row)
        by_day.setdefault(d.day, []).append(row)
    days = _days(run, replay, by_day, day_causes_of(fills))
    return LevelReport(run.level, fills, days, replay_summary(replay))


def compare_sliced(run: BacktestRun, replay: ReplayRun) -> LevelReport:
    """Child by child (same minute, instrument and side), and day by day, with the cause of every difference.

    The Backtest's inner TWAP and the runtime's scheduled strategy both slice each parent over the
    day's minutes in whole lots, by different roundings (qlib: each step's share of the remainder;
    the runtime: equal cumulative lots): where the children differ in size the cause is
    ``rounding to lots``, where one side has a child in a minute the other has not, ``timing of slices``.
    The trades goal counts parents (a daily order with any fill) on both sides.
    """
    assert run.children is not None
    reasons = _cn_reason_causes()
    Key = tuple[dt.date, int, str, str]
    backtest: dict[Key, tuple[float, float, float]] = {}
    for row in run.children.itertuples(index=False):
        t = pd.Timestamp(row.datetime)
        factor = float(row.factor) if row.factor and np.isfinite(row.factor) else 1.0
        shares = float(row.amount) * factor
        if shares <= 0:
            continue
        backtest[(t.date(), t.hour * 60 + t.minute, str(row.instrument), str(row.side))] = (
            shares,
            float(row.price) / factor,
            float(row.cost),
        )
    replayed: dict[Key, ReplayedOrder] = {
        (r.decision.day, r.decision.seq, r.decision.instrument, r.decision.side): r for r in replay.orders
    }
    fills: list[FillRow] = []
    for key in sorted(set(backtest) | set(replayed)):
        day, minute, inst, side = key
        bt_qty, bt_price, bt_fee = backtest.get(key, (0.0, math.nan, 0.0))
        o = replayed.get(key)
        rp_qty, rp_price, rp_fee = (o.quantity, o.price, o.fee) if o is not None else (0.0, math.nan, 0.0)
        causes: list[str] = []
        if o is not None and o.status == "rejected":
            causes.append(_rejection(o, reasons))
        elif bt_qty > 0 and rp_qty > 0:
            if abs(bt_qty - rp_qty) > 1e-6:
                causes.append(str(Cause.LOT_ROUNDING))
            else:
                if abs(rp_price - bt_price) > EPS:
                    fits = abs(rp_price - bt_price) <= PRICE_HALF + 1e-6 * bt_price
                    causes.append(str(Cause.PRICE_QUANTUM if fits else Cause.UNEXPLAINED))
                if Cause.UNEXPLAINED not in causes:
                    causes += _fee_causes(rp_fee, bt_fee, rp_qty, bt_qty * bt_price)
        elif bt_qty > 0 or rp_qty > 0:
            causes.append(str(Cause.SLICE_TIMING))
        diff = None
        if bt_qty > 0 and rp_qty > 0 and bt_price > 0:
            diff = (rp_price - bt_price) / bt_price * 1e4 * (1 if side == "buy" else -1)
        fills.append(
            FillRow(
                day=f"{day} {minute // 60:02d}:{minute % 60:02d}",
                seq=minute,
                instrument=inst,
                side=side,
                backtest_quantity=round(bt_qty, 6),
                replay_quantity=rp_qty,
                backtest_price=None if bt_qty <= 0 else round(bt_price, 6),
                replay_price=None if rp_qty <= 0 else round(rp_price, 6),
                diff_bps=None if diff is None else round(diff, 6),
                backtest_fee=bt_fee,
                replay_fee=rp_fee,
                replay_status="" if o is None else o.status,
                causes=causes,
            )
        )
    by_day: dict[dt.date, list[FillRow]] = {}
    for row in fills:
        by_day.setdefault(dt.date.fromisoformat(row.day[:10]), []).append(row)
    days = _days(run, replay, by_day, _carried_by_day(fills))
    bt_parents = {(o.day, o.instrument, o.side) for o in run.orders if o.filled}
    rp_parents = {
        (o.decision.day, o.decision.instrument, o.decision.side) for o in replay.orders if o.quantity > 0
    }
    level = LevelReport(
        run.level, fills, days, replay_summary(replay), trade_counts=(len(bt_parents), len(rp_parents))
    )
    return level


def _carried_by_day(fills: list[FillRow]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    carried: set[str] = set()
    for row in fills:
        carried |= {c for c in row.causes if c not in (Cause.PRICE_QUANTUM, Cause.MONEY_QUANTUM)}
        out[row.day[:10]] = set(carried)
    return out


def day_causes_of(fills: list[FillRow]) -> dict[str, set[str]]:
    """Per day, the causes of quantity differences on that day or before (they carry forward)."""
    out: dict[str, set[str]] = {}
    carried: set[str] = set()
    for row in sorted(fills, key=lambda r: (r.day, r.seq)):
        carried |= {c for c in row.causes if c not in (Cause.PRICE_QUANTUM, Cause.MONEY_QUANTUM)}
        out[row.day] = set(carried)
    return out


def _days(
    run: BacktestRun,
    replay: ReplayRun,
    by_day: dict[dt.date, list[FillRow]],
    carried: dict[str, set[str]],
) -> list[DayRow]:
    """Each day's net values; a gap is attributed to the differences so far, else to rounding within its bound.

    The rounding bound: half a price quantum on every share filled and every share held (the marks),
    half a cent on every fee.
    """
    out: list[DayRow] = []
    causes_so_far: set[str] = set()
    rounding = 0.0
    positions: dict[str, float] = {}
    for t, nav in run.daily["account"].items():
        day = dt.date.fromisoformat(str(t)[:10])
        rows = by_day.get(day, [])
        causes_so_far |= carried.get(str(day), set())
        for r in rows:
            if r.replay_quantity > 0:
                rounding += r.replay_quantity * PRICE_HALF + CENT_HALF
                sign = 1 if r.side == "buy" else -1
                positions[r.instrument] = positions.get(r.instrument, 0.0) + sign * r.replay_quantity
        held = sum(abs(q) for q in positions.values())
        rp = replay.equity.get(day)
        diff = None if rp is None else (rp - float(nav)) / float(nav) * 100
        causes: list[str] = sorted(causes_so_far)
        if rp is not None and abs(rp - float(nav)) > EPS and not causes:
            bound = rounding + held * PRICE_HALF + CENT_HALF
            causes = [
                f"{Cause.PRICE_QUANTUM}"
                if abs(rp - float(nav)) <= bound + 1e-6 * float(nav)
                else f"{Cause.UNEXPLAINED}"
            ]
        out.append(
            DayRow(
                day=str(day),
                backtest_nav=float(nav),
                replay_nav=None if rp is None else round(rp, 2),
                diff_pct=None if diff is None else round(diff, 8),
                backtest_cost=sum(r.backtest_fee for r in rows),
                replay_cost=sum(r.replay_fee for r in rows),
                backtest_turnover=sum(
                    (r.backtest_quantity * (r.backtest_price or 0.0)) for r in rows if r.backtest_quantity
                ),
                replay_turnover=sum((r.replay_quantity * (r.replay_price or 0.0)) for r in rows),
                backtest_trades=sum(1 for r in rows if r.backtest_quantity > 0),
                replay_trades=sum(1 for r in rows if r.replay_quantity > 0),
                causes=causes,
            )
        )
    return out


@dataclass
class ParityReport:
    """Every level's comparison."""

    backtest: str
    period: str
    policy: str
    levels: list[LevelReport]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def met(self) -> bool:
        """Whether every goal of every level is met."""
        return all(g["met"] for lv in self.levels for g in lv.goals().values())

    def to_json(self) -> dict[str, Any]:
        return {
            "backtest": self.backtest,
            "period": self.period,
            "policy": self.policy,
            "goalsMet": self.met(),
            "notes": self.notes,
            "seconds": round(self.seconds, 1),
            "levels": [lv.to_json() for lv in self.levels],
        }

    def describe(self) -> list[str]:
        """The printed table."""
        lines = [f"Parity {self.backtest} {self.period} (policy {self.policy})"]
        for lv in self.levels:
            doc = lv.to_json()
            s, g = doc["summary"], doc["goals"]
            lines += [
                f"  Level {lv.level}",
                f"    {'Orders':<28} {s['orders']}",
                f"    {'Trades (backtest/replay)':<28} {g['sameTradeCount']['backtest']} / {g['sameTradeCount']['replay']}"
                + _ok(g["sameTradeCount"]["met"]),
                f"    {'Fill price diff (median/worst)':<28} {s['medianFillDiffBps']:.4f} / "
                f"{g['fillsWithin1bp']['worstBps']:.4f} bp" + _ok(g["fillsWithin1bp"]["met"]),
                f"    {'Daily net value diff (worst)':<28} {g['navWithin0.1pct']['worstPct']:.6f} %"
                + _ok(g["navWithin0.1pct"]["met"]),
                f"    {'Costs (backtest/replay)':<28} {s['backtestCost']:,.2f} / {s['replayCost']:,.2f}",
                f"    {'Turnover (backtest/replay)':<28} {s['backtestTurnover']:,.0f} / {s['replayTurnover']:,.0f}",
                f"    {'Final NAV (backtest/replay)':<28} {s['finalBacktestNav'] or 0:,.2f} / {s['finalReplayNav'] or 0:,.2f}",
                f"    {'Differences by cause':<28} "
                + (", ".join(f"{k} {v}" for k, v in doc["causes"].items()) or "none"),
                f"    {'Unexplained':<28} {g['everyDifferenceAttributed']['unexplained']}"
                + _ok(g["everyDifferenceAttributed"]["met"]),
            ]
            if lv.replay.get("rejections"):
                lines.append(
                    f"    {'Rejections':<28} "
                    + ", ".join(f"{k} {v}" for k, v in lv.replay["rejections"].items())
                )
            if lv.chart:
                lines.append(f"    {'Chart':<28} {lv.chart}")
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  Goals {'met' if self.met() else 'NOT met'} ({self.seconds:.1f} s)")
        return lines


def _ok(met: bool) -> str:
    return "  ok" if met else "  MISSED"


def write_chart(level: LevelReport, path: Path, title: str) -> None:
    """Both equity curves and their difference (bp), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [dt.date.fromisoformat(d.day) for d in level.days if d.replay_nav is not None]
    bt = [d.backtest_nav for d in level.days if d.replay_nav is not None]
    rp = [float(d.replay_nav) for d in level.days if d.replay_nav is not None]
    diff = [(r - b) / b * 1e4 for r, b in zip(rp, bt, strict=True)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=[3, 1])
    top.plot(days, bt, label="Backtest", linewidth=1.4)
    top.plot(days, rp, label="Replay (OMS → risk → paper broker)", linewidth=1.0, linestyle="--")
    top.set_ylabel("net value")
    top.set_title(title)
    top.legend()
    bottom.plot(days, diff, color="tab:red", linewidth=1.0)
    bottom.axhline(0, color="grey", linewidth=0.5)
    bottom.set_ylabel("replay − backtest (bp)")
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _quiet(stage: str, message: str) -> None:
    return None


def run_parity(
    bt: Backtest,
    out: Path,
    policy: RiskPolicy | None = None,
    progress: Progress = _quiet,
    data_path: Path | None = None,
) -> ParityReport:
    """Run the Backtest, replay its decisions through the runtime, compare; write parity.json and the charts."""
    import time

    from kubequant.workloads.backtest import preflight
    from kubequant.workloads.backtest.runner import _end_qlib_experiment, init_qlib, resolve_data_path

    started = time.perf_counter()
    spec = bt.spec
    region = spec.data.region
    chosen = policy or permissive_policy(REGION_TZ.get(region, "Asia/Shanghai"))
    bundle_path = resolve_data_path(bt, data_path)
    preflight.check_backtest(spec, preflight.Bundle.open(bundle_path))
    notes: list[str] = []
    levels: list[LevelReport] = []
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kubequant-mlruns-") as scratch:
        init_qlib(bundle_path, region, Path(scratch))
        try:
            scores = load_scores(bt, progress)
            progress("backtest", "single-level daily backtest, recording the strategy's orders")
            flat = single_level(spec)
            run = record_decisions(flat, scores, "day")
            progress(
                "replay",
                f"replaying {len(run.orders)} orders over {len(run.days())} days through the runtime",
            )
            replayed = replay_decisions(flat, run, bt.metadata.name, chosen, out / "day")
            level = compare(run, replayed)
            chart = out / "parity-day.png"
            write_chart(level, chart, f"{bt.metadata.name}: Backtest vs replay (single level)")
            level.chart = str(chart)
            levels.append(level)
            nested = _nested_level(spec)
            if nested is None and spec.executor.levels:
                notes.append(
                    "only a compiled day → 1min TWAP level is replayed (the runtime's scheduled strategy "
                    "slices like TWAP); this Backtest's levels ("
                    + " → ".join([spec.executor.frequency, *(lv.frequency for lv in spec.executor.levels)])
                    + ") are compared at the single-level daily executor"
                )
            elif nested is not None:
                progress(
                    "backtest", f"{nested} backtest (compiled), recording the strategy's orders and fills"
                )
                run = record_decisions(spec, scores, nested)
                progress(
                    "replay",
                    f"replaying {len(run.orders)} parents over {len(run.days())} days, a bar a minute",
                )
                replayed = replay_sliced(spec, run, bt.metadata.name, chosen, out / "1min")
                level = compare_sliced(run, replayed)
                chart = out / "parity-1min.png"
                write_chart(level, chart, f"{bt.metadata.name}: Backtest vs replay ({nested})")
                level.chart = str(chart)
                levels.append(level)
        finally:
            _end_qlib_experiment()
    report = ParityReport(
        backtest=bt.metadata.name,
        period=f"{spec.period.start}..{spec.period.end}",
        policy=chosen.metadata.name,
        levels=levels,
        notes=notes,
        seconds=time.perf_counter() - started,
    )
    (out / "parity.json").write_text(json.dumps(report.to_json(), indent=2, sort_keys=True, default=_num))
    return report


def _nested_level(spec: Any) -> str | None:
    """``day→1min`` when the Backtest has one inner 1-minute TWAP level under a daily one, compiled."""
    levels = spec.executor.levels or []
    if (
        spec.executor.frequency == "day"
        and len(levels) == 1
        and levels[0].frequency == "1min"
        and spec.executor.compiled_slicing() == ["twap"]
    ):
        return "day→1min"
    return None


def _num(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
