"""The scheduled strategy: a TopkDropout rebalance from model scores, each order sliced over time (TWAP).

One rebalance per trading day. Its parent orders are planned once, from the latest scores dated
before the day, with qlib's ``TopkDropoutStrategy`` selection, and journaled (``RebalancePlanned``)
before the first child is sent. Slot ``k`` opens ``k`` slice intervals after the plan's start; its
child of each parent is the planned share. A child's signal id is ``rebalance-<day>/<k>`` and its
leg the instrument, so its client order id is fixed by the plan: after a restart the same plan is
read back from the journal and the slots already sent are known from the orders, never sent twice.

Never a burst: one call sends at most the child of the slot open now, at most one planned share
per parent. Slots that passed unsent (a stall, a restart) are journaled as skipped with the reason
(``RebalanceSlotsSkipped``), and what they would have sent, together with children refused for the
order rate limit, is worked off at the same pace in up to ``slices`` further slots after the planned
window; what is left then is dropped, journaled with the reason.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from kubequant.api.backtest import Signal as SignalSpec
from kubequant.api.backtest import TopkDropout
from kubequant.api.live import ScheduledStrategy
from kubequant.errors import ConfigError, DataError
from kubequant.workloads.trading.execution.oms import OrderManager, SubmitOutcome
from kubequant.workloads.trading.model.domain import ZERO, OrderIntent, Side, WallClock
from kubequant.workloads.trading.model.events import EVENT_TYPES, Event
from kubequant.workloads.trading.model.orders import OrderStatus
from kubequant.workloads.trading.risk import ashare

log = logging.getLogger(__name__)
FIELD = "spec.strategy.scheduled"
Progress = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class RebalancePlanned(Event):
    """A day's rebalance: signed parent quantities, sliced ``slices`` times, ``interval_seconds`` apart from ``start``."""

    kind: ClassVar[str] = "RebalancePlanned"
    rebalance_id: str = ""
    day: str = ""
    scores_day: str = ""
    start: dt.datetime | None = None
    slices: int = 1
    interval_seconds: float = 0.0
    orders: dict[str, Decimal] = field(default_factory=dict)
    # The slots run on the exchange's trading time (region cn): the lunch break 11:30-13:00 is
    # skipped and a start outside the sessions waits for the next opening (risk/ashare.py).
    trading_time: bool = False

    def due(self, k: int) -> dt.datetime:
        """When child ``k`` (0-based) may be sent."""
        assert self.start is not None
        if self.trading_time:
            return ashare.trading_seconds_after(self.start, self.interval_seconds * k)
        return self.start + dt.timedelta(seconds=self.interval_seconds * k)

    def elapsed(self, now: dt.datetime) -> float:
        """Seconds from the start to ``now`` as the slots count them (trading time when ``trading_time``)."""
        assert self.start is not None
        if self.trading_time:
            return ashare.trading_seconds_between(self.start, now)
        return (now - self.start).total_seconds()


@dataclass(frozen=True, slots=True)
class RebalanceSlotsSkipped(Event):
    """Slots ``first``..``last`` (0-based) of a rebalance were not sent in their time, or what was left was dropped."""

    kind: ClassVar[str] = "RebalanceSlotsSkipped"
    rebalance_id: str = ""
    first: int = 0
    last: int = 0
    reason: str = ""


# The journal decodes by kind; these are the strategy's own events, so they register themselves here.
EVENT_TYPES.setdefault(RebalancePlanned.kind, RebalancePlanned)
EVENT_TYPES.setdefault(RebalanceSlotsSkipped.kind, RebalanceSlotsSkipped)
# Refusals that say "not now" rather than "not this": their quantity is tried again at a later slot.
RETRY_LATER = frozenset({"ORDER_RATE"})


# --- scores -------------------------------------------------------------------------------------
class ScoreBook:
    """Scores by day; a rebalance on day D trades the latest scores dated before D (qlib's shift of one step)."""

    def __init__(self, by_day: Mapping[dt.date, Mapping[str, float]]) -> None:
        self.by_day = {d: dict(s) for d, s in sorted(by_day.items()) if s}
        self.days = list(self.by_day)

    @classmethod
    def from_series(cls, scores: Any) -> ScoreBook:
        """From a score Series indexed by (datetime, instrument), as the Backtest's signal has it."""
        out: dict[dt.date, dict[str, float]] = {}
        for (ts, inst), value in scores.dropna().items():
            out.setdefault(ts.date(), {})[str(inst)] = float(value)
        return cls(out)

    def latest_before(self, day: dt.date) -> tuple[dt.date, dict[str, float]] | None:
        """The last scored day before ``day`` and its scores; None when there is none."""
        i = bisect.bisect_left(self.days, day)
        if i == 0:
            return None
        d = self.days[i - 1]
        return d, self.by_day[d]


def load_scores(
    signal: SignalSpec,
    codes: list[str],
    period: tuple[str, str],
    progress: Progress,
    *,
    model_dir: Path | None = None,
    namespace: str = "default",
) -> ScoreBook:
    """The strategy's scores through the Backtest's own readers: a signal file, a model trained in the run,
    or a TrainingJob's model artifact (modelRef).

    A modelRef's artifact is ``model_dir``, else $KUBEQUANT_MODEL_DIR (the folder the operator mounts in
    the pod), else the local model store's entry for the TrainingJob in ``namespace``. qlib must be
    initialised (for a model, with an experiment manager, as the Backtest runner does).
    """
    from kubequant.api.backtest import BacktestSpec, SignalFile
    from kubequant.api.common import DateRange
    from kubequant.workloads.backtest.signal import read_signal_file, train_and_predict

    if signal.model_ref is not None:
        scores = _model_ref_scores(signal, codes, period, progress, model_dir, namespace)
    elif signal.file is not None:
        path = Path(signal.file.path)
        if not path.is_file():
            raise DataError("signal file not found", where=str(path), fix=f"check {FIELD}.signal.file.path")
        progress("signal", f"reading {path}")
        spec = BacktestSpec(
            period=DateRange(start=period[0], end=period[1]),
            signal=SignalSpec(file=SignalFile(path=str(path))),
        )
        scores = read_signal_file(path, spec).scores
    elif signal.model is not None:
        scores = train_and_predict(signal.model, codes, progress).scores
    else:  # the API model makes this impossible; kept for a hand-built spec
        raise ConfigError("no source of scores", where=f"{FIELD}.signal", fix="set file, model or modelRef")
    book = ScoreBook.from_series(scores)
    if not book.days:
        raise ConfigError("the signal has no scores", where=f"{FIELD}.signal", fix="check the file or model")
    return book


def _model_ref_scores(
    signal: SignalSpec,
    codes: list[str],
    period: tuple[str, str],
    progress: Progress,
    model_dir: Path | None,
    namespace: str,
) -> Any:
    """Scores of the TrainingJob's artifact over ``period`` for ``codes``."""
    import os

    from kubequant.api.backtest import BacktestSpec, Universe
    from kubequant.api.common import DateRange
    from kubequant.workloads.backtest.signal import score_with_artifact
    from kubequant.workloads.training.artifacts import load_artifact, resolve_local

    assert signal.model_ref is not None
    where = f"{FIELD}.signal.modelRef"
    env_dir = os.environ.get("KUBEQUANT_MODEL_DIR")
    folder = model_dir or (
        Path(env_dir) if env_dir else resolve_local(namespace, signal.model_ref.name, where)
    )
    loaded = load_artifact(folder)
    spec = BacktestSpec(
        period=DateRange(start=period[0], end=period[1]),
        universe=Universe(instruments=list(codes)),
        signal=signal,
    )
    progress("signal", f"scoring with TrainingJob {signal.model_ref.name}'s model ({folder})")
    return score_with_artifact(loaded, spec, progress).scores


# --- TopkDropout -------------------------------------------------------------------------------
def topk_dropout(
    scores: Mapping[str, float],
    held: list[str],
    topk: int,
    n_drop: int,
    tradable: Callable[[str], bool] | None = None,
) -> tuple[list[str], list[str]]:
    """(sell, buy): qlib's ``TopkDropoutStrategy`` selection (method_sell "bottom", method_buy "top").

    Held names rank by their score (unscored ones last, so they go first); at most ``topk + n_drop -
    held`` fresh names are candidates; a held name is sold only if it is among the ``n_drop`` worst
    of held and candidates together, so a rebalance never sells high to buy low. ``tradable``
    plays ``only_tradable``. Unlike qlib's ``get_last_n``, ``n_drop`` 0 sells nothing.
    """
    ok = tradable or (lambda _: True)

    def rank(names: list[str]) -> list[str]:
        # pandas' sort_values(ascending=False): descending, NaN (unscored) last; ties stay stable.
        return sorted(names, key=lambda k: (k not in scores, -scores.get(k, 0.0)))

    def first_n(names: list[str], n: int) -> list[str]:
        return [k for k in names if ok(k)][: max(n, 0)]

    def last_n(names: list[str], n: int) -> list[str]:
        picked = [k for k in names if ok(k)]
        return picked[len(picked) - n :] if n > 0 else []

    last = rank(list(held))
    fresh = rank([k for k in scores if k not in set(last)])
    today = first_n(fresh, n_drop + topk - len(last))
    comb = rank(list(dict.fromkeys([*last, *today])))
    worst = set(last_n(comb, n_drop))
    sell = [k for k in last if k in worst]
    buy = today[: max(len(sell) + topk - len(last), 0)]
    return sell, buy


def plan_parents(
    scores: Mapping[str, float],
    positions: Mapping[str, Decimal],
    marks: Mapping[str, Decimal],
    cash: Decimal,
    rule: TopkDropout,
    *,
    lot: Decimal = Decimal(1),
    tradable: Callable[[str], bool] | None = None,
    days_held: Callable[[str], int] | None = None,
) -> dict[str, Decimal]:
    """Signed parent quantities of one rebalance, as qlib's TopkDropoutStrategy sizes them.

    Sold names go out whole; the cash (with the sales' proceeds at the marks) times ``risk_degree``
    is split equally over the names bought, each rounded down to whole lots at its mark. Names
    held fewer than ``hold_thresh`` rebalances, or not tradable, are left alone.
    """
    ok = tradable or (lambda _: True)
    held = [k for k, q in positions.items() if q > 0]
    sell, buy = topk_dropout(scores, held, rule.topk, rule.n_drop, ok if rule.only_tradable else None)
    out: dict[str, Decimal] = {}
    for inst in sell:
        if not ok(inst) or (days_held is not None and days_held(inst) < rule.hold_thresh):
            continue
        mark = marks.get(inst)
        out[inst] = -positions[inst]
        cash += positions[inst] * mark if mark is not None else ZERO
    if buy:
        value = cash * Decimal(repr(rule.risk_degree)) / len(buy)
        for inst in buy:
            mark = marks.get(inst)
            if not ok(inst) or mark is None or mark <= 0:
                continue
            qty = (value / mark / lot).to_integral_value(ROUND_DOWN) * lot
            if qty > 0:
                out[inst] = qty
    return out


def slice_quantity(parent: Decimal, k: int, slices: int, lot: Decimal = Decimal(1)) -> Decimal:
    """Child ``k`` of ``slices`` of a signed parent: equal shares in whole lots, the last one takes the rest."""
    size = abs(parent)

    def done(j: int) -> Decimal:
        if j >= slices:
            return size
        return (size * j / slices / lot).to_integral_value(ROUND_DOWN) * lot

    child = done(k + 1) - done(k)
    return child if parent >= 0 else -child


# --- the rebalancer ------------------------------------------------------------------------------
class Rebalancer:
    """Plans each day's rebalance once (journaled), then sends every child whose time has come."""

    def __init__(
        self,
        oms: OrderManager,
        rule: TopkDropout,
        scores: ScoreBook,
        *,
        slices: int = 1,
        interval_seconds: float = 0.0,
        lot: Decimal = Decimal(1),
        tradable: Callable[[str], bool] | None = None,
    ) -> None:
        self.oms = oms
        self.rule = rule
        self.scores = scores
        self.slices = slices
        self.interval = float(interval_seconds)
        self.lot = lot
        self.tradable = tradable
        self.plans: dict[str, RebalancePlanned] = {}
        # Per plan: the next slot to send, and the client order ids of its children so far.
        self.next_slot: dict[str, int] = {}
        self.children_sent: dict[str, list[str]] = {}
        self.no_scores: set[dt.date] = set()
        for _, event in oms.journal.replay():
            if isinstance(event, RebalancePlanned):
                self.plans[event.rebalance_id] = event

    @classmethod
    def for_strategy(
        cls, oms: OrderManager, strategy: ScheduledStrategy, scores: ScoreBook, **kw: Any
    ) -> Rebalancer:
        """The rebalancer of a session's ``spec.strategy.scheduled``."""
        return cls(
            oms,
            strategy.topk_dropout,
            scores,
            slices=strategy.slices,
            interval_seconds=strategy.slice_interval_seconds,
            **kw,
        )

    @staticmethod
    def plan_id(day: dt.date) -> str:
        """The rebalance of ``day``."""
        return f"rebalance-{day.isoformat()}"

    @staticmethod
    def signal_id(plan_id: str, k: int) -> str:
        """The signal id of child ``k`` of a plan (its legs are the instruments)."""
        return f"{plan_id}/{k + 1:03d}"

    def _days_held(self) -> Callable[[str], int]:
        # Rebalances since the position was last opened, plus the one being planned (qlib's stock count).
        opened: dict[str, dt.datetime] = {}
        running: dict[str, Decimal] = {}
        fills = sorted(
            (f for o in self.oms.state.orders.values() for f in o.fills.values()), key=lambda f: f.ts
        )
        for f in fills:
            before = running.get(f.instrument, ZERO)
            running[f.instrument] = before + f.signed_quantity
            if before == 0 and running[f.instrument] != 0:
                opened[f.instrument] = f.ts
        starts = [p.start for p in self.plans.values() if p.start is not None]

        def days(inst: str) -> int:
            since = opened.get(inst)
            return 1 + sum(1 for s in starts if since is not None and s > since)

        return days

    def plan(self, day: dt.date, start: dt.datetime) -> RebalancePlanned | None:
        """Plan and journal the rebalance of ``day``; None when no scores precede it or nothing is known yet."""
        latest = self.scores.latest_before(day)
        account = self.oms.state.account
        if latest is None or account is None:
            if day not in self.no_scores:
                self.no_scores.add(day)
                log.warning("no rebalance on %s: %s", day, "no scores before it" if latest else "no account")
            return None
        scores_day, scores = latest
        view = self.oms.view(*scores)
        rule = self.rule
        parents = plan_parents(
            scores,
            view.positions,
            view.marks,
            account.cash,
            rule,
            lot=self.lot,
            tradable=self.tradable,
            days_held=self._days_held() if rule.hold_thresh > 1 else None,
        )
        event = RebalancePlanned(
            self.oms.clock.now(),
            rebalance_id=self.plan_id(day),
            day=day.isoformat(),
            scores_day=scores_day.isoformat(),
            start=start,
            slices=self.slices,
            interval_seconds=self.interval,
            orders=parents,
            trading_time=self.on_trading_time(),
        )
        self.oms.commit(event)
        self.plans[event.rebalance_id] = event
        log.info("rebalance %s from scores of %s: %d orders", event.rebalance_id, scores_day, len(parents))
        return event

    def on_trading_time(self) -> bool:
        """Whether a plan's slots keep to the A-share sessions (region cn), skipping the lunch break.

        Wherever the clock is the exchange's: a real broker's session (the session hours bind) and a
        replay (its bar clock); not a paper session on the wall clock, whose bars trade round the clock.
        """
        rules = self.oms.risk.ashare
        return rules is not None and (rules.sessions or not isinstance(self.oms.clock, WallClock))

    def slot_share(self, plan: RebalancePlanned, inst: str, k: int) -> Decimal:
        """The most slot ``k`` sends of a parent (unsigned): its planned child, then an even share in lots."""
        parent = plan.orders[inst]
        if plan.interval_seconds <= 0:  # every slot due at once: one child of the whole parent
            return abs(parent)
        if k < plan.slices:
            return abs(slice_quantity(parent, k, plan.slices, self.lot))
        return (abs(parent) / plan.slices / self.lot).to_integral_value(ROUND_UP) * self.lot

    def _children(self, plan: RebalancePlanned) -> list[str]:
        """The client order ids of a plan's children, read from the OMS once per process (after a restart)."""
        pid = plan.rebalance_id
        if pid not in self.children_sent:
            prefix, last = f"{pid}/", 0
            cids = []
            for order in self.oms.state.orders.values():
                if order.signal_id.startswith(prefix):
                    cids.append(order.client_order_id)
                    last = max(last, int(order.signal_id[len(prefix) :]))
            self.children_sent[pid] = cids
            self.next_slot[pid] = last  # signal ids number slots from 1
        return self.children_sent[pid]

    def committed(self, plan: RebalancePlanned) -> dict[str, Decimal]:
        """Unsigned quantity of each parent its children have taken (a child refused "not now" takes none)."""
        out = dict.fromkeys(plan.orders, ZERO)
        for cid in self._children(plan):
            order = self.oms.state.orders[cid]
            refused_for_now = order.status is OrderStatus.REJECTED and (
                order.retryable or order.reason.partition(":")[0] in RETRY_LATER
            )
            if not refused_for_now and order.instrument in out:
                out[order.instrument] += order.quantity
        return out

    def children(self, plan: RebalancePlanned, k: int) -> list[OrderIntent]:
        """The intents of slot ``k``: each parent's share, at most what it has left; sells first, for the cash."""
        sid = self.signal_id(plan.rebalance_id, k)
        done = self.committed(plan)
        out = []
        for inst, parent in sorted(plan.orders.items(), key=lambda kv: (kv[1] > 0, kv[0])):
            qty = min(self.slot_share(plan, inst, k), abs(parent) - done[inst])
            if qty > 0:
                out.append(OrderIntent(inst, Side.BUY if parent > 0 else Side.SELL, qty, sid, inst))
        return out

    @staticmethod
    def last_slot(plan: RebalancePlanned) -> int:
        """The last slot a plan may use: its own, then as many again to catch up (none when all are due at once)."""
        return plan.slices - 1 if plan.interval_seconds <= 0 else 2 * plan.slices - 1

    def slot_at(self, plan: RebalancePlanned, now: dt.datetime) -> int:
        """The slot open at ``now`` (the last one from the moment every slot is due)."""
        assert plan.start is not None
        if plan.interval_seconds <= 0:
            return plan.slices - 1
        slot = int(plan.elapsed(now) // plan.interval_seconds)
        # On trading time a slot opens when it is due: in the lunch break the next one waits for 13:00.
        while slot > 0 and plan.due(slot) > now:
            slot -= 1
        return slot

    async def run_due(self, day: dt.date, start: dt.datetime, now: dt.datetime) -> list[SubmitOutcome]:
        """Plan ``day`` once ``now`` reaches ``start``, then send the child of the slot open at ``now``."""
        pid = self.plan_id(day)
        plan = self.plans.get(pid)
        if plan is None:
            if now < start or not self.oms.ready:
                return []
            plan = self.plan(day, start)
            if plan is None:
                return []
        if now < plan.due(0):
            return []
        self._children(plan)
        k, slot = self.next_slot[pid], self.slot_at(plan, now)
        last_slot = self.last_slot(plan)
        if slot < k or k > last_slot:
            return []
        if slot > last_slot:
            self._skip(plan, k, slot, now)
            self._drop_rest(plan, last_slot)
            return []
        if slot > k:
            self._skip(plan, k, slot - 1, now)
        outcomes: list[SubmitOutcome] = []
        for intent in self.children(plan, slot):
            outcome = await self.oms.submit(intent)
            self.children_sent[pid].append(outcome.order.client_order_id)
            outcomes.append(outcome)
        self.next_slot[pid] = slot + 1
        if slot == last_slot:
            self._drop_rest(plan, last_slot)
        return outcomes

    def _skip(self, plan: RebalancePlanned, first: int, last: int, now: dt.datetime) -> None:
        late = (now - plan.due(first)).total_seconds()
        reason = f"not sent in time (slot {first + 1} was due {late:.0f}s before {now:%H:%M:%S}): a stall or a restart"
        log.warning("rebalance %s: slots %d-%d %s", plan.rebalance_id, first + 1, last + 1, reason)
        self.oms.commit(RebalanceSlotsSkipped(now, plan.rebalance_id, first, last, reason))

    def _drop_rest(self, plan: RebalancePlanned, last_slot: int) -> None:
        done = self.committed(plan)
        left = {inst: abs(q) - done[inst] for inst, q in plan.orders.items() if abs(q) > done[inst]}
        self.next_slot[plan.rebalance_id] = last_slot + 1
        if left:
            reason = "the catch-up slots ran out; dropped " + ", ".join(
                f"{k} {v}" for k, v in sorted(left.items())
            )
            log.warning("rebalance %s: %s", plan.rebalance_id, reason)
            self.oms.commit(
                RebalanceSlotsSkipped(
                    self.oms.clock.now(), plan.rebalance_id, last_slot + 1, last_slot + 1, reason
                )
            )

    def next_due(self, day: dt.date) -> dt.datetime | None:
        """When the next slot of ``day``'s plan opens; None when nothing is left (or there is no plan)."""
        plan = self.plans.get(self.plan_id(day))
        if plan is None:
            return None
        self._children(plan)
        k = self.next_slot[plan.rebalance_id]
        if k > self.last_slot(plan):
            return None
        done = self.committed(plan)
        if all(abs(q) <= done[inst] for inst, q in plan.orders.items()):
            return None
        return plan.due(k)


def wall_rebalance(now: dt.datetime, timezone: str, rebalance_at: str) -> tuple[dt.date, dt.datetime] | None:
    """The trading day and rebalance start of ``now`` on the wall clock: weekdays at ``rebalance_at`` local time."""
    tz = ZoneInfo(timezone)
    local = now.astimezone(tz)
    if local.weekday() >= 5:
        return None
    hour, minute = (int(x) for x in rebalance_at.split(":"))
    start = dt.datetime.combine(local.date(), dt.time(hour, minute), tz)
    return local.date(), start.astimezone(dt.UTC)
