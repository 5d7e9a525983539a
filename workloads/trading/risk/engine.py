"""The pre-trade risk engine: a pure component between a signal and the broker, driven by a RiskPolicySpec.

``check(intent, view, now)`` never talks to the broker and never changes anything; the OMS calls
``record`` once an accepted order is journaled, so the daily and rate counters count only orders
that can reach the broker.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

from kubequant.api.live import AccountType, LiveTradingSessionSpec, TradingState
from kubequant.api.risk import BreachAction, RiskPolicySpec
from kubequant.workloads.trading.model.domain import ZERO, OrderIntent, PortfolioView, to_decimal
from kubequant.workloads.trading.risk import ashare
from kubequant.workloads.trading.risk.ashare import AShareRules, MarketFacts

# Enough digits that products of quantities and prices are exact, so a limit is never missed by rounding.
EXACT = decimal.Context(prec=80, traps=[decimal.InvalidOperation, decimal.DivisionByZero])
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
SEVERITY = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}
# Conditions that outlive a restart (restored from the journal); the others are re-derived live.
# The session's default exchange zone (LiveTradingSessionSpec.timezone).
DEFAULT_EXCHANGE_TZ = LiveTradingSessionSpec.model_fields["timezone"].default
STICKY = frozenset({"max_daily_loss", "max_drawdown", "reconciliation", "manual"})
# The condition a broker outage past the policy's grace period sets (brokerDisconnect.action).
DISCONNECT = "broker_disconnect"


class Reason(StrEnum):
    KILL_SWITCH = "KILL_SWITCH"
    HALTED = "HALTED"
    INSTRUMENT_BLOCKED = "INSTRUMENT_BLOCKED"
    INSTRUMENT_NOT_ALLOWED = "INSTRUMENT_NOT_ALLOWED"
    OUTSIDE_TRADING_WINDOW = "OUTSIDE_TRADING_WINDOW"
    NO_PRICE = "NO_PRICE"
    STALE_PRICE = "STALE_PRICE"
    SHORT_SELLING = "SHORT_SELLING"
    REDUCE_ONLY = "REDUCE_ONLY"
    ORDER_QUANTITY = "ORDER_QUANTITY"
    ORDER_NOTIONAL = "ORDER_NOTIONAL"
    PRICE_BAND = "PRICE_BAND"
    ORDER_RATE = "ORDER_RATE"
    DAILY_TRADES = "DAILY_TRADES"
    DAILY_TURNOVER = "DAILY_TURNOVER"
    CONCENTRATION = "CONCENTRATION"
    GROSS_EXPOSURE = "GROSS_EXPOSURE"
    # China A-share rules (region cn; risk/ashare.py): the values of ``ashare.Rule``.
    MARKET_CLOSED = "MARKET_CLOSED"
    T_PLUS_ONE = "T_PLUS_ONE"
    ODD_LOT = "ODD_LOT"
    PRICE_LIMIT = "PRICE_LIMIT"


@dataclass(frozen=True, slots=True)
class Accept:
    """The order may go to the broker; ``notional`` is what it counts against the limits."""

    notional: Decimal


@dataclass(frozen=True, slots=True)
class Reject:
    """The order must not reach the broker."""

    reason: Reason
    detail: str


Verdict = Accept | Reject


@dataclass
class Counters:
    """Orders and turnover of one trading day, and the recent order times for the rate limit."""

    day: dt.date | None = None
    trades: int = 0
    turnover: Decimal = ZERO
    recent: deque[dt.datetime] = field(default_factory=deque)

    def for_day(self, day: dt.date) -> tuple[int, Decimal]:
        """Trades and turnover counted on ``day`` (zero on another day)."""
        return (self.trades, self.turnover) if self.day == day else (0, ZERO)

    def in_window(self, now: dt.datetime, seconds: float) -> int:
        """Orders recorded in the ``seconds`` before ``now`` (the sliding window)."""
        start = now - dt.timedelta(seconds=seconds)
        return sum(1 for t in self.recent if start < t <= now)


@dataclass(frozen=True)
class Condition:
    """One reason the session is not ACTIVE."""

    state: TradingState
    detail: str


def _limit(value: float | None) -> Decimal | None:
    return None if value is None else to_decimal(value)


def _action_state(action: BreachAction | str) -> TradingState:
    return TradingState.HALTED if BreachAction(action) is BreachAction.HALT else TradingState.REDUCING


def reduces(side_sign: int, quantity: Decimal, filled: Decimal, resting: tuple[Decimal, Decimal]) -> bool:
    """Whether an order only reduces the filled position, net of the resting orders that reduce it too.

    ``resting`` is (buys, sells) still working. A sell reduces a long by at most what the resting
    sells have not already claimed; a resting buy never makes a sell "reducing" (cancel the buy and
    the sell would go short).
    """
    buys, sells = resting
    if side_sign < 0:
        return filled > 0 and quantity <= filled - sells
    return filled < 0 and quantity <= -filled - buys


class RiskEngine:
    """Pre-trade checks, post-trade breakers and the trading state (ACTIVE, REDUCING, HALTED).

    The trading day (daily trades and turnover, the daily-loss breaker) is the exchange's: a day in
    ``exchange_tz``, the session's zone. The policy's own ``timezone`` is only the clock of its
    trading windows, so one policy can guard sessions on exchanges in different zones.
    """

    def __init__(
        self,
        policy: RiskPolicySpec,
        *,
        kill_switch: bool = False,
        exchange_tz: str = DEFAULT_EXCHANGE_TZ,
        short_selling: bool = False,
        ashare_rules: AShareRules | None = None,
    ) -> None:
        self.policy = policy
        # The A-share venue rules (T+1, lots, price limits, sessions) for a session in region cn.
        self.ashare = ashare_rules
        self.tz = ZoneInfo(policy.timezone)
        self.exchange_tz = ZoneInfo(exchange_tz)
        self.short_selling = short_selling  # the session's default; the policy's longOnly overrides
        self.counters = Counters()
        self.conditions: dict[str, Condition] = {}
        self.day_start_equity: Decimal | None = None
        self.equity_day: dt.date | None = None
        self.peak_equity: Decimal | None = None
        self.disconnected_since: dt.datetime | None = None
        self.set_kill_switch(kill_switch)

    # --- state -----------------------------------------------------------------------------
    @property
    def state(self) -> TradingState:
        """The most severe state any condition asks for."""
        states = [c.state for c in self.conditions.values()]
        return max(states, key=SEVERITY.__getitem__, default=TradingState.ACTIVE)

    def describe(self) -> dict[str, str]:
        """Conditions as name -> "STATE: detail" (what the journal and the status show)."""
        return {k: f"{c.state}: {c.detail}" for k, c in sorted(self.conditions.items())}

    def set_condition(self, name: str, state: TradingState | None, detail: str = "") -> None:
        """Hold the session in ``state`` for ``name``; None clears it."""
        if state is None or state is TradingState.ACTIVE:
            self.conditions.pop(name, None)
        else:
            self.conditions[name] = Condition(TradingState(state), detail)

    def restore(self, conditions: dict[str, str]) -> None:
        """Bring back the sticky conditions of a journaled RiskStateChanged, and a broker outage's state.

        The outage's state comes back too: a pod restarted during (or after) an outage past the grace
        still holds REDUCING or HALTED, so that recovery cancels what that state cancels and trading
        resumes only once those cancels are done and the OMS has reconciled (``outage_state``), as
        it would have without the restart.
        """
        for name, text in conditions.items():
            if name in STICKY or name == DISCONNECT:
                state, _, detail = text.partition(": ")
                self.set_condition(name, TradingState(state), detail)

    def set_kill_switch(self, on: bool) -> None:
        """The kill switch halts at once and stays until switched off."""
        self.set_condition("kill_switch", TradingState.HALTED if on else None, "kill switch (spec.halted)")

    def reset(self, name: str) -> None:
        """Clear a latched condition (an operator's decision, e.g. after a drawdown halt)."""
        self.conditions.pop(name, None)

    @classmethod
    def for_session(cls, policy: RiskPolicySpec, session: LiveTradingSessionSpec) -> RiskEngine:
        """The engine guarding ``session``: its kill switch, its exchange's trading day, its account's shorting."""
        return cls(
            policy,
            kill_switch=session.halted,
            exchange_tz=session.timezone,
            short_selling=session.broker.account_type == AccountType.MARGIN and session.data.region != "cn",
            ashare_rules=AShareRules.for_session(session),
        )

    def update_policy(self, policy: RiskPolicySpec) -> None:
        """Use ``policy`` from now on; counters and latched conditions carry over."""
        self.policy = policy
        self.tz = ZoneInfo(policy.timezone)

    @property
    def long_only(self) -> bool:
        """Whether sells beyond the filled position (short sales) are refused."""
        explicit = self.policy.limits.long_only
        return not self.short_selling if explicit is None else explicit

    # --- time ------------------------------------------------------------------------------
    def trading_day(self, now: dt.datetime) -> dt.date:
        """The exchange's trading day of ``now``: its calendar day in the session's time zone."""
        return now.astimezone(self.exchange_tz).date()

    def in_trading_window(self, now: dt.datetime) -> bool:
        """True if ``now`` lies in a trading window (always, without windows); windows end exclusive."""
        windows = self.policy.trading_windows
        if not windows:
            return True
        local = now.astimezone(self.tz)
        day, clock = WEEKDAYS[local.weekday()], local.time()
        return any(
            day in w.weekdays and dt.time.fromisoformat(w.start) <= clock < dt.time.fromisoformat(w.end)
            for w in windows
        )

    # --- pre-trade -------------------------------------------------------------------------
    def check(
        self, intent: OrderIntent, view: PortfolioView, now: dt.datetime, facts: MarketFacts | None = None
    ) -> Verdict:
        """Accept, or Reject with the first limit ``intent`` breaks; pure.

        ``facts`` feed the A-share rules (``self.ashare``): without them T+1 counts nothing as
        bought today and the price limit is left to the venue; lots and sessions need none.
        """
        with decimal.localcontext(EXACT):
            return self._check(intent, view, now, facts)

    def _check(
        self, intent: OrderIntent, view: PortfolioView, now: dt.datetime, facts: MarketFacts | None
    ) -> Verdict:
        policy, limits, inst = self.policy, self.policy.limits, intent.instrument
        if "kill_switch" in self.conditions:
            return Reject(Reason.KILL_SWITCH, "the kill switch is on")
        if self.state is TradingState.HALTED:
            return Reject(Reason.HALTED, "; ".join(self.describe().values()))
        if policy.instruments.blocked and inst in policy.instruments.blocked:
            return Reject(Reason.INSTRUMENT_BLOCKED, f"{inst} is blocked")
        if policy.instruments.allowed is not None and inst not in policy.instruments.allowed:
            return Reject(Reason.INSTRUMENT_NOT_ALLOWED, f"{inst} is not in the allowed list")
        if not self.in_trading_window(now):
            return Reject(
                Reason.OUTSIDE_TRADING_WINDOW, f"{now.astimezone(self.tz):%a %H:%M} {policy.timezone}"
            )
        rules = self.ashare
        if rules is not None and rules.sessions:
            if closed := ashare.check_session(now, facts.trading_day if facts is not None else None):
                return Reject(Reason(closed.rule.value), closed.detail)
        last, limit = view.marks.get(inst), intent.limit_price
        filled = view.filled.get(inst, ZERO)
        resting = view.resting.get(inst, (ZERO, ZERO))
        reducing = reduces(intent.side.sign, intent.quantity, filled, resting)
        if last is None and (limit is None or not reducing):
            why = "no limit price and no" if limit is None else "an order that adds exposure needs a"
            return Reject(Reason.NO_PRICE, f"{why} last price for {inst}")
        age, max_age = view.ages.get(inst), limits.max_price_age_seconds
        if not reducing and age is not None and max_age is not None and age > max_age:
            return Reject(
                Reason.STALE_PRICE, f"the last price of {inst} is {age:.0f}s old (limit {max_age:g}s)"
            )
        # Valued conservatively: a limit far from the market must not understate what the order moves.
        ref = last if limit is None else limit if last is None else max(limit, last)
        qty, notional = intent.quantity, intent.quantity * ref
        before = view.positions.get(inst, ZERO)
        after = before + intent.signed_quantity
        if self.state is TradingState.REDUCING and not reducing:
            return Reject(
                Reason.REDUCE_ONLY,
                f"reduce-only: {intent.side} {qty} {inst} does not reduce the filled position {filled} "
                f"(resting buys {resting[0]}, sells {resting[1]})",
            )
        if self.long_only and intent.side.sign < 0 and qty > filled - resting[1]:
            return Reject(
                Reason.SHORT_SELLING,
                f"selling {qty} {inst} would go short: filled {filled}, resting sells {resting[1]}",
            )
        if rules is not None:
            broken = self._check_ashare(rules, intent, filled, resting[1], last, facts or MarketFacts())
            if broken is not None:
                return Reject(Reason(broken.rule.value), broken.detail)
        if (cap := _limit(limits.max_order_quantity)) is not None and qty > cap:
            return Reject(Reason.ORDER_QUANTITY, f"quantity {qty} > {cap}")
        if (cap := _limit(limits.max_order_notional)) is not None and notional > cap:
            return Reject(Reason.ORDER_NOTIONAL, f"notional {notional} > {cap}")
        if (band := _limit(limits.price_band)) is not None and intent.limit_price is not None:
            if last is None:
                return Reject(Reason.PRICE_BAND, f"no last price for {inst} to check the limit against")
            if abs(intent.limit_price - last) > band * last:
                return Reject(
                    Reason.PRICE_BAND, f"limit {intent.limit_price} is more than {band} from {last}"
                )
        if limits.order_rate is not None:
            seen = self.counters.in_window(now, limits.order_rate.per_seconds)
            if seen + 1 > limits.order_rate.max_orders:
                return Reject(
                    Reason.ORDER_RATE, f"{seen} orders in the last {limits.order_rate.per_seconds}s"
                )
        trades, turnover = self.counters.for_day(self.trading_day(now))
        if limits.max_daily_trades is not None and trades + 1 > limits.max_daily_trades:
            return Reject(Reason.DAILY_TRADES, f"{trades} orders today")
        if (cap := _limit(limits.max_daily_turnover)) is not None and turnover + notional > cap:
            return Reject(Reason.DAILY_TURNOVER, f"turnover {turnover} + {notional} > {cap}")
        reject = self._check_exposure(inst, before, after, ref if last is None else last, view)
        return reject or Accept(notional)

    def check_resend(
        self,
        instrument: str,
        adds_exposure: bool,
        now: dt.datetime,
        *,
        price_age: float | None = None,
        trading_day: Callable[[dt.date], bool] | None = None,
    ) -> Reject | None:
        """Whether an order that passed ``check`` may still go out now, for its one resend; None when it may.

        The checks whose answer can change between the first send and the resend: the kill switch,
        the trading state, the instrument lists, the trading window and sessions, and the age of the
        price of an order that adds exposure. The limits (quantities, notional, rate, daily counts)
        counted the order when it was first sent: a resend is the same order, not another one.
        """
        policy = self.policy
        if "kill_switch" in self.conditions:
            return Reject(Reason.KILL_SWITCH, "the kill switch is on")
        if self.state is TradingState.HALTED:
            return Reject(Reason.HALTED, "; ".join(self.describe().values()))
        if self.state is TradingState.REDUCING and adds_exposure:
            return Reject(Reason.REDUCE_ONLY, f"reduce-only: the order of {instrument} adds exposure")
        if policy.instruments.blocked and instrument in policy.instruments.blocked:
            return Reject(Reason.INSTRUMENT_BLOCKED, f"{instrument} is blocked")
        if policy.instruments.allowed is not None and instrument not in policy.instruments.allowed:
            return Reject(Reason.INSTRUMENT_NOT_ALLOWED, f"{instrument} is not in the allowed list")
        if not self.in_trading_window(now):
            return Reject(
                Reason.OUTSIDE_TRADING_WINDOW, f"{now.astimezone(self.tz):%a %H:%M} {policy.timezone}"
            )
        if self.ashare is not None and self.ashare.sessions:
            if closed := ashare.check_session(now, trading_day):
                return Reject(Reason(closed.rule.value), closed.detail)
        max_age = policy.limits.max_price_age_seconds
        if adds_exposure and price_age is not None and max_age is not None and price_age > max_age:
            return Reject(
                Reason.STALE_PRICE,
                f"the last price of {instrument} is {price_age:.0f}s old (limit {max_age:g}s)",
            )
        return None

    @staticmethod
    def _check_ashare(
        rules: AShareRules,
        intent: OrderIntent,
        filled: Decimal,
        resting_sells: Decimal,
        last: Decimal | None,
        facts: MarketFacts,
    ) -> ashare.Violation | None:
        """T+1, lots and the price limit of one order (the venue's rules; ``ashare``)."""
        inst, qty, buy = intent.instrument, intent.quantity, intent.side.sign > 0
        if rules.t_plus_one and not buy and filled > 0:
            broken = ashare.check_sellable(inst, qty, filled, facts.bought_today, resting_sells)
            if broken is not None:
                return broken
        if rules.lots and (broken := ashare.check_lot(buy, qty, rules.lot, filled)) is not None:
            return broken
        if rules.price_limits and facts.limits_known:
            # A market order is checked at its reference price (the last price).
            price = intent.limit_price if intent.limit_price is not None else last
            if price is not None:
                return ashare.check_price(inst, price, facts.previous_close, facts.st)
        return None

    def _check_exposure(
        self, inst: str, before: Decimal, after: Decimal, price: Decimal, view: PortfolioView
    ) -> Reject | None:
        limits, equity = self.policy.limits, view.equity
        # Orders that do not add to the instrument's (or the book's) exposure always pass these two.
        if (cap := _limit(limits.max_concentration)) is not None and abs(after) > abs(before):
            value = abs(after) * price
            if equity <= 0 or value > cap * equity:
                return Reject(Reason.CONCENTRATION, f"{inst} would be {value} of equity {equity} (cap {cap})")
        if (cap := _limit(limits.max_gross_exposure)) is not None:
            others = ZERO
            for other, q in view.positions.items():
                if other == inst or not q:
                    continue
                mark = view.marks.get(other)
                if mark is None:
                    return Reject(Reason.GROSS_EXPOSURE, f"no price for {other} to value the book")
                others += abs(q) * mark
            gross_before, gross_after = others + abs(before) * price, others + abs(after) * price
            if gross_after > gross_before and (equity <= 0 or gross_after > cap * equity):
                return Reject(Reason.GROSS_EXPOSURE, f"gross {gross_after} of equity {equity} (cap {cap})")
        return None

    def record(self, notional: Decimal, now: dt.datetime) -> None:
        """Count an order that passed ``check`` and was journaled as submitted."""
        day = self.trading_day(now)
        if self.counters.day != day:
            self.counters.day, self.counters.trades, self.counters.turnover = day, 0, ZERO
        self.counters.trades += 1
        self.counters.turnover += notional
        self.counters.recent.append(now)
        rate = self.policy.limits.order_rate
        # Keep only what the current window can see; a policy with a longer window starts short.
        horizon = now - dt.timedelta(seconds=rate.per_seconds if rate else 0)
        while self.counters.recent and self.counters.recent[0] <= horizon:
            self.counters.recent.popleft()

    # --- post-trade ------------------------------------------------------------------------
    def observe_equity(self, equity: Decimal, now: dt.datetime, *, evaluate: bool = True) -> None:
        """Track the day's opening and the peak equity; trip the loss breakers when ``evaluate``."""
        day = self.trading_day(now)
        if self.equity_day != day:
            self.equity_day, self.day_start_equity = day, equity
            self.conditions.pop("max_daily_loss", None)  # the daily loss breaker resets each trading day
        self.peak_equity = equity if self.peak_equity is None else max(self.peak_equity, equity)
        if not evaluate:
            return
        breakers = self.policy.breakers
        action = _action_state(breakers.action)
        with decimal.localcontext(EXACT):
            start, peak = self.day_start_equity or ZERO, self.peak_equity
            if (
                (cap := _limit(breakers.max_daily_loss)) is not None
                and start > 0
                and start - equity >= cap * start
            ):
                self.set_condition(
                    "max_daily_loss", action, f"daily loss {start - equity} >= {cap} of {start}"
                )
            if (
                (cap := _limit(breakers.max_drawdown)) is not None
                and peak > 0
                and peak - equity >= cap * peak
            ):
                self.set_condition(
                    "max_drawdown", action, f"drawdown {peak - equity} >= {cap} of peak {peak}"
                )

    def outage_state(self) -> TradingState | None:
        """The state a broker outage past its grace period holds the session in; None when none does.

        After a reconnect the OMS keeps it (it does not report the connection here) until the
        resting orders that state cancels are cancelled and the OMS has reconciled: only then does
        ``observe_connectivity(True, ...)`` clear it and trading resume.
        """
        held = self.conditions.get(DISCONNECT)
        return held.state if held is not None else None

    def observe_connectivity(self, connected: bool, now: dt.datetime) -> None:
        """Act on a broker disconnect that outlasts the grace period in trading hours; clear on reconnect."""
        if connected:
            self.disconnected_since = None
            self.conditions.pop(DISCONNECT, None)
            return
        self.disconnected_since = self.disconnected_since or now
        rule = self.policy.broker_disconnect
        down = (now - self.disconnected_since).total_seconds()
        if down >= rule.grace_period_seconds and self.in_trading_window(now):
            self.set_condition(DISCONNECT, _action_state(rule.action), f"broker disconnected for {down:.0f}s")
