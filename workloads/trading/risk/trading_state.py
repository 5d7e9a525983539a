"""An operator's explicit, journaled change of the trading state: resume after a latched halt, or halt by hand.

Breakers (max daily loss, max drawdown) and a reconciliation failure latch; only this clears
them. A change journals ``TradingStateSet`` (who, why, from what, the equity the breakers measure
from afterwards) and then the ``RiskStateChanged`` that a restart restores, so a stopped runtime
(``kubequant trading resume``) and a running one (``POST /v1/trading-state``) are changed the same
way. The kill switch (``spec.halted``) is never overridden: it must be switched off first.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, ClassVar

from kubequant.api.live import TradingState
from kubequant.errors import ConfigError, InputError, ValidationError
from kubequant.workloads.trading.model.domain import utcnow
from kubequant.workloads.trading.model.events import EVENT_TYPES, Event, RiskStateChanged
from kubequant.workloads.trading.risk.engine import STICKY, RiskEngine

MANUAL = "manual"
KILL_SWITCH = "kill_switch"
LOCK_NAME = "runtime.lock"
MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class TradingStateSet(Event):
    """An operator set the trading state; ``equity`` (when known) restarts the breakers' peak and day start."""

    kind: ClassVar[str] = "TradingStateSet"
    state: str = "ACTIVE"
    reason: str = ""
    source: str = ""
    previous: str = ""
    cleared: dict[str, str] = field(default_factory=dict)
    equity: Decimal | None = None


# The journal decodes by kind; recovery imports this module, so every journal reader knows the kind.
EVENT_TYPES.setdefault(TradingStateSet.kind, TradingStateSet)


class TradingStateRefused(InputError):
    """The change is not allowed now (the kill switch is on, the runtime is running, ...); exit code 2."""


def check_request(state: str, reason: str, *, allowed: tuple[TradingState, ...]) -> TradingState:
    """The target state of a request, or ValidationError naming the field at fault."""
    names = ", ".join(s.value for s in allowed)
    try:
        target = TradingState(state)
    except ValueError:
        raise ValidationError(
            f"unknown trading state {state!r}", where="state", fix=f"use one of {names}"
        ) from None
    if target not in allowed:
        raise ValidationError(f"cannot set {target} here", where="state", fix=f"use one of {names}")
    if not reason.strip():
        raise ValidationError("a reason is required", where="reason", fix="say why, e.g. 'loss reviewed'")
    if len(reason) > MAX_REASON:
        raise ValidationError(f"the reason is over {MAX_REASON} characters", where="reason", fix="shorten it")
    return target


def next_conditions(conditions: dict[str, str], target: TradingState, reason: str) -> dict[str, str]:
    """The conditions after setting ``target``: latched ones cleared, a manual one holding REDUCING or HALTED."""
    kept = {k: v for k, v in conditions.items() if k not in STICKY and k != KILL_SWITCH}
    if target is not TradingState.ACTIVE:
        kept[MANUAL] = f"{target.value}: set by an operator: {reason}"
    return kept


def state_of(conditions: dict[str, str]) -> TradingState:
    """The most severe state journaled conditions ("STATE: detail") ask for."""
    return max(
        (TradingState(v.partition(": ")[0]) for v in conditions.values()),
        key=[TradingState.ACTIVE, TradingState.REDUCING, TradingState.HALTED].index,
        default=TradingState.ACTIVE,
    )


def refuse_kill_switch(on: bool) -> None:
    """Nothing resumes while the kill switch is on."""
    if on:
        raise TradingStateRefused(
            "the kill switch is on",
            where="spec.halted",
            fix="set spec.halted: false in the session (and let the runtime pick it up) first",
        )


def apply_to_risk(risk: RiskEngine, event: TradingStateSet) -> None:
    """Make ``risk`` follow a journaled change: its latched conditions, and the breakers' new baseline."""
    for name in event.cleared:
        risk.reset(name)
    target = TradingState(event.state)
    risk.set_condition(
        MANUAL, None if target is TradingState.ACTIVE else target, f"set by an operator: {event.reason}"
    )
    reset_baseline(risk, event)


def reset_baseline(risk: RiskEngine, event: TradingStateSet) -> None:
    """The loss so far is accepted: drawdown and the day's loss are measured from the event's equity on."""
    if event.equity is not None:
        risk.peak_equity = event.equity
        risk.day_start_equity = event.equity
        risk.equity_day = risk.trading_day(event.ts)


async def set_running(oms: object, state: str, reason: str, source: str = "api") -> TradingStateSet:
    """Change the state of a running runtime's OMS: journal it, then the new trading state (a halt cancels)."""
    from kubequant.workloads.trading.execution.oms import OrderManager
    from kubequant.workloads.trading.execution.reconcile import sync_risk_state

    assert isinstance(oms, OrderManager)
    target = check_request(state, reason, allowed=tuple(TradingState))
    risk = oms.risk
    refuse_kill_switch(KILL_SWITCH in risk.conditions)
    if "reconciliation" in risk.conditions and target is not TradingState.HALTED:
        raise TradingStateRefused(
            "a reconciliation failure is cleared only by a fresh reconciliation",
            where="state",
            fix="stop the runtime, fix the venue, run `kubequant trading resume`, start it again",
        )
    account = oms.state.account
    cleared = {k: v for k, v in risk.describe().items() if k in STICKY}
    event = TradingStateSet(
        oms.clock.now(),
        state=target.value,
        reason=reason,
        source=source,
        previous=risk.state.value,
        cleared=cleared,
        equity=account.equity if account is not None else None,
    )
    oms.commit(event)
    apply_to_risk(risk, event)
    await sync_risk_state(oms)
    return event


@dataclass(frozen=True)
class ResumeResult:
    """What an offline resume wrote."""

    previous: str
    state: str
    cleared: dict[str, str]


def resume_stopped(
    state_dir: Path, reason: str, to: str = "ACTIVE", *, kill_switch: bool | None = None, source: str = "cli"
) -> ResumeResult:
    """Journal a resume for a stopped runtime; its next start begins in ``to``.

    ``kill_switch`` is the session file's ``spec.halted`` when known; otherwise the journal's last
    trading state decides.
    """
    from kubequant.workloads.trading.execution.journal import Journal
    from kubequant.workloads.trading.model.state import OmsState

    target = check_request(to, reason, allowed=(TradingState.ACTIVE, TradingState.REDUCING))
    path = state_dir / "journal.sqlite"
    if not path.is_file():
        raise ConfigError(
            "no journal in the state directory", where=str(path), fix="pass the session's --state-dir"
        )
    with RuntimeLock(state_dir, purpose="resume"), Journal(path) as journal:
        state = OmsState.rebuild(journal.events())
        if kill_switch is None:
            if KILL_SWITCH in state.risk_conditions:
                raise TradingStateRefused(
                    "the kill switch was on when the runtime stopped",
                    where="spec.halted",
                    fix="set spec.halted: false and pass the session file with --session",
                )
        else:
            refuse_kill_switch(kill_switch)
        now = utcnow()
        conditions = next_conditions(state.risk_conditions, target, reason)
        cleared = {k: v for k, v in state.risk_conditions.items() if k in STICKY}
        equity = state.account.equity if state.account is not None else None
        new_state = state_of(conditions)
        journal.append(
            TradingStateSet(now, target.value, reason, source, state.risk_state, cleared, equity),
            RiskStateChanged(now, new_state.value, conditions),
        )
    return ResumeResult(state.risk_state, new_state.value, cleared)


@dataclass(frozen=True)
class AdoptResult:
    """What an offline adoption wrote."""

    created: bool  # the journal did not exist (a lost volume, or a new session)
    cleared: dict[str, str]


def adopt_stopped(state_dir: Path, reason: str, *, source: str = "cli") -> AdoptResult:
    """Allow a session whose journal is empty to start from the broker's positions and open orders.

    Journals ``AdoptionAuthorized`` (who, why) and clears the halt a refused start latched; the next
    start baselines from the broker and adopts its open orders. Refused when the journal already
    holds a history (adoption would throw it away) or while a runtime holds the state directory.
    """
    from kubequant.workloads.trading.execution.journal import Journal
    from kubequant.workloads.trading.model.events import AdoptionAuthorized
    from kubequant.workloads.trading.model.state import OmsState

    if not reason.strip():
        raise ValidationError("a reason is required", where="--reason", fix="say why the account is adopted")
    if len(reason) > MAX_REASON:
        raise ValidationError(
            f"the reason is over {MAX_REASON} characters", where="--reason", fix="shorten it"
        )
    path = state_dir / "journal.sqlite"
    created = not path.exists()
    with RuntimeLock(state_dir, purpose="adopt"), Journal(path) as journal:
        state = OmsState.rebuild(journal.events())
        if state.has_history:
            raise TradingStateRefused(
                f"the journal already holds this session's history ({len(state.orders)} orders)",
                where=str(path),
                fix="start the runtime: it reconciles a journal with the broker; adoption is for an empty journal",
            )
        now = utcnow()
        cleared = {k: v for k, v in state.risk_conditions.items() if k in STICKY}
        conditions = {k: v for k, v in state.risk_conditions.items() if k not in STICKY}
        new_state = state_of(conditions)
        journal.append(
            AdoptionAuthorized(now, reason, source), RiskStateChanged(now, new_state.value, conditions)
        )
    return AdoptResult(created, cleared)


class RuntimeLock:
    """An exclusive lock on a state directory: one runtime per journal, and no offline change under a running one."""

    def __init__(self, state_dir: Path, purpose: str = "run") -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self.purpose = purpose
        self._file: IO[str] | None = None

    def acquire(self) -> RuntimeLock:
        """Take the lock or raise TradingStateRefused naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            fix = {
                "resume": "use POST /v1/trading-state on the running runtime, or stop it first",
                "adopt": "stop the runtime first",
            }.get(self.purpose, "stop the other runtime using this state directory")
            raise TradingStateRefused(
                f"the state directory is in use by {holder}", where=str(self.path.parent), fix=fix
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"pid {os.getpid()} ({self.purpose}) since {dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ}\n"
        )
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        """Let go of the lock."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> RuntimeLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
