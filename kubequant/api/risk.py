"""The RiskPolicy kind: reusable pre-trade limits and post-trade circuit breakers."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from kubequant.api.base import AGE, ApiModel, CrdFacts, PrinterColumn, Rule
from kubequant.api.common import InstrumentCode
from kubequant.api.resource import Resource, StatusBase
from kubequant.api.timezones import TimeZone

ClockTime = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]


class Weekday(StrEnum):
    MON = "Mon"
    TUE = "Tue"
    WED = "Wed"
    THU = "Thu"
    FRI = "Fri"
    SAT = "Sat"
    SUN = "Sun"


class OrderRate(ApiModel):
    """At most maxOrders orders in any window of perSeconds seconds."""

    max_orders: int = Field(ge=1, description="Orders allowed in the window.")
    per_seconds: float = Field(1.0, gt=0, le=86400, description="Length of the sliding window, in seconds.")


class Limits(ApiModel):
    """Pre-trade limits; an order breaking any of them is rejected with a reason code."""

    max_order_notional: float | None = Field(None, gt=0, description="Largest value of one order.")
    max_order_quantity: float | None = Field(
        None, gt=0, description="Largest quantity of one order, in shares."
    )
    max_daily_trades: int | None = Field(None, ge=1, description="Orders allowed per trading day.")
    max_daily_turnover: float | None = Field(None, gt=0, description="Traded value allowed per trading day.")
    max_concentration: float | None = Field(
        None, gt=0, le=1, description="Largest position in one instrument, as a fraction of equity in (0, 1]."
    )
    max_gross_exposure: float | None = Field(
        None,
        gt=0,
        le=10,
        description="Sum of absolute position values over equity (1.0 = fully invested, no leverage).",
    )
    price_band: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Fat-finger band: a limit price further than this fraction from the last price is rejected.",
    )
    order_rate: OrderRate | None = Field(None, description="Order rate limit.")
    max_price_age_seconds: float | None = Field(
        None,
        gt=0,
        le=604800,
        description="Oldest last price an exposure-increasing order may be checked against, in seconds "
        "(older: rejected STALE_PRICE). Unset: only the price source's own staleness limit applies.",
    )
    long_only: bool | None = Field(
        None,
        description="Refuse any sell larger than the filled position net of resting sells (no short selling). "
        "Unset: on, except for a session with broker.accountType margin outside region cn.",
    )


class TradingWindow(ApiModel):
    """A time of day when orders may be sent, in the policy's time zone."""

    start: ClockTime = Field(description="Opening time, HH:MM.")
    end: ClockTime = Field(description="Closing time, HH:MM; after start.")
    weekdays: list[Weekday] = Field(
        default_factory=lambda: [Weekday.MON, Weekday.TUE, Weekday.WED, Weekday.THU, Weekday.FRI],
        max_length=7,
        description="Days the window applies to.",
    )

    __rules__ = (
        Rule(
            cel="self.end > self.start",
            message="a trading window must end after it starts; use two windows to span midnight",
            field="end",
            check=lambda w: w.end > w.start,
        ),
    )


class InstrumentFilter(ApiModel):
    """Instruments the session may or may not trade."""

    allowed: list[InstrumentCode] | None = Field(
        None, max_length=256, description="If set, only these may be traded."
    )
    blocked: list[InstrumentCode] | None = Field(None, max_length=256, description="Never traded.")

    __rules__ = (
        Rule(
            cel="!has(self.allowed) || !has(self.blocked) || !self.allowed.exists(x, x in self.blocked)",
            message="an instrument cannot be both allowed and blocked; remove it from one list",
            field="blocked",
            check=lambda f: not (f.allowed and f.blocked and set(f.allowed) & set(f.blocked)),
        ),
    )


class BreachAction(StrEnum):
    REDUCE_ONLY = "reduceOnly"
    HALT = "halt"


class Breakers(ApiModel):
    """Post-trade circuit breakers, as fractions of the day's starting (or peak) equity."""

    max_daily_loss: float | None = Field(
        None, gt=0, le=1, description="Loss since the day's open, in (0, 1]."
    )
    max_drawdown: float | None = Field(None, gt=0, le=1, description="Loss from the equity peak, in (0, 1].")
    action: BreachAction = Field(BreachAction.HALT, description="reduceOnly or halt (cancels open orders).")


class DisconnectPolicy(ApiModel):
    """What happens when the broker connection drops during trading hours."""

    grace_period_seconds: int = Field(30, ge=0, le=3600, description="Time tolerated before acting.")
    action: BreachAction = Field(BreachAction.REDUCE_ONLY, description="reduceOnly or halt.")


class RiskPolicySpec(ApiModel):
    """Limits applied to every session that references this policy."""

    limits: Limits = Field(default_factory=Limits, description="Pre-trade limits.")
    trading_windows: list[TradingWindow] | None = Field(
        None, max_length=16, description="When orders may be sent; unset means any time."
    )
    timezone: TimeZone = Field(
        "Asia/Shanghai",
        description="IANA time zone of the trading windows. The trading day (daily limits, the daily-loss "
        "breaker) is the session's: its spec.timezone, the exchange's zone.",
    )
    instruments: InstrumentFilter = Field(
        default_factory=InstrumentFilter, description="Allowed/blocked instruments."
    )
    breakers: Breakers = Field(default_factory=Breakers, description="Loss circuit breakers.")
    broker_disconnect: DisconnectPolicy = Field(
        default_factory=DisconnectPolicy, description="Broker disconnect handling."
    )


class RiskPolicyStatus(StatusBase):
    """Observed state of a RiskPolicy."""

    sessions: int | None = Field(None, ge=0, description="Number of sessions using this policy.")
    session_names: list[str] | None = Field(None, max_length=1024, description="Sessions using this policy.")


class RiskPolicy(Resource):
    """Reusable risk limits for LiveTradingSessions."""

    spec: RiskPolicySpec = Field(default_factory=RiskPolicySpec, description="The limits.")
    status: RiskPolicyStatus | None = Field(None, description="Observed state, written by the operator.")

    __crd__ = CrdFacts(
        kind="RiskPolicy",
        plural="riskpolicies",
        singular="riskpolicy",
        short_names=("rp",),
        description="Pre-trade limits and circuit breakers shared by LiveTradingSessions.",
        columns=(PrinterColumn("Sessions", ".status.sessions", "integer"), AGE),
    )
