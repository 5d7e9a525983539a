"""The LiveTradingSession kind: one broker-connected trading pod guarded by a RiskPolicy."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from kubequant.api.backtest import Exchange, Signal, TopkDropout, Universe
from kubequant.api.base import AGE, ApiModel, CrdFacts, PrinterColumn, Rule
from kubequant.api.broker_capabilities import CAPABILITIES, needs_universe, refusals
from kubequant.api.common import (
    DataSource,
    LocalObjectReference,
    PodOptions,
    Quantity,
    SecretKeyReference,
)
from kubequant.api.quantity import quantity_or_none
from kubequant.api.resource import Resource, WorkloadStatus
from kubequant.api.timezones import TimeZone


class SessionMode(StrEnum):
    PAPER = "paper"
    LIVE = "live"


class BrokerType(StrEnum):
    PAPER = "paper"
    ALPACA = "alpaca"
    GATEWAY = "gateway"
    XUEQIU = "xueqiu"


class AccountType(StrEnum):
    CASH = "cash"
    MARGIN = "margin"


class Broker(ApiModel):
    """The broker adapter and its credentials."""

    type: BrokerType = Field(
        BrokerType.PAPER,
        description="paper (built-in, fills against bars), alpaca, gateway (a Windows desktop client "
        "through `kubequant gateway`; endpoint is the gateway's URL), or xueqiu (a Xueqiu simulated "
        "portfolio through easytrader; account is its ZH code).",
    )
    account_type: AccountType = Field(
        AccountType.CASH,
        description="cash or margin. Short selling is refused unless the account is margin outside region cn "
        "(a RiskPolicy's limits.longOnly overrides).",
    )
    credentials_secret_ref: LocalObjectReference | None = Field(
        None, description="Secret with the broker's API credentials (required for real brokers)."
    )
    endpoint: Annotated[str, StringConstraints(pattern=r"^https?://", max_length=512)] | None = Field(
        None, description="Override of the broker's API endpoint (e.g. a paper-trading URL)."
    )
    market_data_endpoint: Annotated[str, StringConstraints(pattern=r"^https?://", max_length=512)] | None = (
        Field(
            None,
            description="Override of the broker's market data endpoint, the session's last prices "
            "(alpaca: https://data.alpaca.markets).",
        )
    )


class SignalRateLimit(ApiModel):
    """How fast one client (by source address) may call the signal API's /v1 routes."""

    requests_per_second: int = Field(
        5000,
        ge=1,
        le=1_000_000,
        description="Sustained requests per second one client may make; more are refused with 429 and "
        "Retry-After. The default is five times the 1,000 signals/s the API is sized for.",
    )
    burst: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Requests one client may make at once after a quiet spell (default: requestsPerSecond).",
    )


class SignalApi(ApiModel):
    """The HTTP signal API served by the trading pod."""

    port: int = Field(8080, ge=1024, le=65535, description="Port of the signal API.")
    token_secret_ref: SecretKeyReference | None = Field(
        None, description="Secret key holding the bearer token callers must present."
    )
    max_targets: int = Field(
        500,
        ge=1,
        le=10000,
        description="Most targets one signal may carry; a larger signal is refused (422).",
    )
    rate_limit: SignalRateLimit = Field(
        default_factory=SignalRateLimit,
        description="Per-client rate limit of the /v1 routes (429 with Retry-After beyond it).",
    )


class ScheduledStrategy(ApiModel):
    """Rebalance from a model's scores on a schedule: TopkDropout targets sliced over time."""

    signal: Signal = Field(description="Where the scores come from (modelRef or file).")
    topk_dropout: TopkDropout = Field(
        default_factory=TopkDropout, description="Target portfolio construction."
    )
    rebalance_at: Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")] = Field(
        "09:35", description="Time of day (session time zone) the rebalance starts."
    )
    slices: int = Field(10, ge=1, le=1000, description="Child orders each target is split into (TWAP).")
    slice_interval_seconds: int = Field(60, ge=1, le=3600, description="Time between child orders.")


class SessionStrategy(ApiModel):
    """What drives the session's orders. Set signalApi, scheduled, or both."""

    signal_api: SignalApi | None = Field(None, description="Accept target signals over HTTP.")
    scheduled: ScheduledStrategy | None = Field(
        None, description="Rebalance from model scores on a schedule."
    )

    __rules__ = (
        Rule(
            cel="has(self.signalApi) || has(self.scheduled)",
            message="nothing drives the session's orders; set signalApi, scheduled, or both",
            field="signalApi",
            check=lambda s: s.signal_api is not None or s.scheduled is not None,
        ),
    )


class Journal(ApiModel):
    """The durable order journal's volume."""

    size: Quantity = Field("1Gi", description="Size of the journal's PersistentVolumeClaim.")
    storage_class_name: str | None = Field(None, max_length=253, description="StorageClass of the volume.")
    delete_with_session: bool = Field(
        False,
        description="Delete the journal's PersistentVolumeClaim with the session. Off by default: the "
        "journal is the session's audit trail and outlives it until deleted by hand.",
    )

    __rules__ = (
        Rule(
            cel="type(self.size) == int ? self.size > 0 : (!isQuantity(self.size) || sign(quantity(self.size)) > 0)",
            message="a volume's size must be above zero; use e.g. 1Gi",
            field="size",
            check=lambda j: (v := quantity_or_none(j.size)) is None or v > 0,
        ),
    )


LabelValue = Annotated[str, StringConstraints(max_length=63)]
Cidr = Annotated[str, StringConstraints(pattern=r"^[0-9A-Fa-f:.]+/[0-9]{1,3}$", max_length=64)]


class LabelSelector(ApiModel):
    """Objects whose labels include all of these."""

    match_labels: dict[str, LabelValue] | None = Field(
        None, max_length=16, description="Labels the object must carry; empty selects every object."
    )


class NetworkPeer(ApiModel):
    """Pods allowed to call the session's signal API and scrape its metrics."""

    namespace_selector: LabelSelector | None = Field(
        None, description="Namespaces the pods may be in; unset: the session's own namespace."
    )
    pod_selector: LabelSelector | None = Field(
        None, description="Pods allowed within those namespaces; unset: every pod there."
    )


class SessionNetwork(ApiModel):
    """Who may reach the trading pod, and where it may connect (a NetworkPolicy)."""

    ingress_from: list[NetworkPeer] | None = Field(
        None,
        max_length=16,
        description="Callers of the signal API and metrics port; unset: pods of the session's namespace.",
    )
    broker_cidrs: list[Cidr] | None = Field(
        None,
        max_length=32,
        description="Addresses of a real broker's API (HTTPS, port 443); unset: any address on port 443. "
        "The paper broker needs none.",
    )


class ReplayOptions(ApiModel):
    """For a paper session: replay historical bars instead of following the clock."""

    period: Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}\.\.\d{4}-\d{2}-\d{2}$")] | None = (
        Field(None, description="START..END of the replay.")
    )
    speed: float = Field(
        0.0, ge=0, description="Replay speed relative to real time; 0 runs as fast as possible."
    )


# The broker type in a CEL rule, defaults included (an absent broker or type is the paper broker).
_TYPE = "(has(self.broker) && has(self.broker.type) ? self.broker.type : 'paper')"


class LiveTradingSessionSpec(ApiModel):
    """A trading session."""

    mode: SessionMode = Field(SessionMode.PAPER, description="paper or live. live needs a real broker.")
    account: Annotated[str, StringConstraints(min_length=1, max_length=128)] = Field(
        description="Broker account id; at most one session runs per account."
    )
    broker: Broker = Field(default_factory=Broker, description="The broker adapter.")
    risk_policy_ref: LocalObjectReference = Field(description="The RiskPolicy guarding this session.")
    strategy: SessionStrategy = Field(
        default_factory=lambda: SessionStrategy(signal_api=SignalApi()),
        description="Signal API and/or scheduled strategy.",
    )
    universe: Universe = Field(default_factory=Universe, description="Instruments the session may trade.")
    data: DataSource = Field(
        default_factory=DataSource, description="Bars for the paper broker and for prices."
    )
    exchange: Exchange = Field(
        default_factory=Exchange, description="Costs the paper broker charges (as a Backtest)."
    )
    starting_cash: float = Field(
        10_000_000,
        gt=0,
        description="Paper account's starting cash; for broker xueqiu, the money the portfolio's net value "
        "1.0 stands for (easytrader's initial_assets, at least 1000).",
    )
    timezone: TimeZone = Field(
        "Asia/Shanghai",
        description="Exchange time zone: the trading day of the daily limits and the daily-loss breaker, "
        "and the clock of the scheduled rebalance.",
    )
    halted: bool = Field(False, description="Kill switch: true cancels open orders and stops all trading.")
    journal: Journal = Field(default_factory=Journal, description="The order journal's storage.")
    replay: ReplayOptions | None = Field(None, description="Paper replay over historical bars.")
    network: SessionNetwork = Field(
        default_factory=SessionNetwork, description="The trading pod's NetworkPolicy (cluster only)."
    )
    pod: PodOptions = Field(default_factory=PodOptions, description="Pod placement (cluster only).")

    __rules__ = (
        Rule(
            cel="self.mode != 'live' || self.broker.type != 'paper'",
            message="mode live needs a real broker; set broker.type (e.g. alpaca) or use mode paper",
            field="broker.type",
            check=lambda s: s.mode != SessionMode.LIVE or s.broker.type != BrokerType.PAPER,
        ),
        Rule(
            cel="self.broker.type == 'paper' || has(self.broker.credentialsSecretRef)",
            message="a real broker needs credentials; set broker.credentialsSecretRef to a Secret",
            field="broker.credentialsSecretRef",
            check=lambda s: s.broker.type == BrokerType.PAPER or s.broker.credentials_secret_ref is not None,
        ),
        Rule(
            cel="!has(self.replay) || (self.mode == 'paper' && self.broker.type == 'paper')",
            message=(
                "replay only works in paper mode with the paper broker (it replays the bundle's bars); "
                "remove replay, or set mode paper and broker.type paper"
            ),
            field="replay",
            check=lambda s: (
                s.replay is None or (s.mode == SessionMode.PAPER and s.broker.type == BrokerType.PAPER)
            ),
        ),
        Rule(
            cel=f"!({_TYPE} == 'gateway') || has(self.broker.endpoint)",
            message="broker type gateway needs the gateway's URL; set broker.endpoint to https://HOST:PORT "
            "of `kubequant gateway`",
            field="broker.endpoint",
            check=lambda s: s.broker.type != BrokerType.GATEWAY or s.broker.endpoint is not None,
        ),
        Rule(
            cel="self.broker.type != 'xueqiu' || self.mode == 'paper'",
            message="a Xueqiu portfolio is simulated (no real money); set mode paper for broker type xueqiu",
            field="mode",
            check=lambda s: s.broker.type != BrokerType.XUEQIU or s.mode == SessionMode.PAPER,
        ),
        # What the broker lacks (kubequant/api/broker_capabilities.py; docs/brokers/capabilities.md).
        Rule(
            cel="!(has(self.broker) && has(self.broker.accountType) && self.broker.accountType == 'margin'"
            f" && {_TYPE} in {[t for t, c in CAPABILITIES.items() if not c.short_selling]})",
            message="the broker cannot sell short (docs/brokers/capabilities.md), so a margin account gives "
            "nothing; set broker.accountType cash",
            field="broker.accountType",
            check=lambda s: not any(f == "broker.accountType" for f, _ in refusals(s)),
        ),
        Rule(
            cel=f"!({_TYPE} in {needs_universe()}) || (has(self.universe)"
            " && has(self.universe.instruments) && size(self.universe.instruments) > 0)",
            message="the broker does not list what the account may trade (docs/brokers/capabilities.md); list "
            "the instruments in universe.instruments",
            field="universe.instruments",
            check=lambda s: not any(f == "universe.instruments" for f, _ in refusals(s)),
        ),
        Rule(
            cel="!(has(self.strategy) && has(self.strategy.scheduled))"
            f" || !({_TYPE} in {[t for t, c in CAPABILITIES.items() if not c.market_orders]})",
            message="the scheduled strategy sends market orders and the broker takes none "
            "(docs/brokers/capabilities.md); remove strategy.scheduled and send limit prices through "
            "strategy.signalApi",
            field="strategy.scheduled",
            check=lambda s: not any(f == "strategy.scheduled" for f, _ in refusals(s)),
        ),
    )


class TradingState(StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


class SessionPhase(StrEnum):
    PENDING = "Pending"
    RECONCILING = "Reconciling"
    TRADING = "Trading"
    HALTED = "Halted"
    FAILED = "Failed"
    STOPPED = "Stopped"

    @property
    def is_terminal(self) -> bool:
        """Whether the operator has given up on the session until its spec changes."""
        return self is SessionPhase.FAILED


class LiveDataQuality(ApiModel):
    """Gaps in the latest bar of a session's universe."""

    missing_ratio: dict[str, float] | None = Field(
        None,
        max_length=16,
        description="By field the session trades on (close and volume of the paper market's bar, a venue's "
        "last trade price): the fraction of the universe without a value.",
    )
    instruments: int | None = Field(None, ge=0, description="Instruments checked.")
    instruments_missing: int | None = Field(None, ge=0, description="Instruments with no value in any field.")


class LiveTradingSessionStatus(WorkloadStatus):
    """Observed state of a session."""

    phase: SessionPhase | None = Field(None, description="Summary for humans; conditions are authoritative.")
    trading_state: TradingState | None = Field(
        None, description="ACTIVE, REDUCING (only exposure-reducing orders) or HALTED."
    )
    halt_reason: str | None = Field(
        None, max_length=1024, description="Why the session is halted or reducing."
    )
    pod_name: str | None = Field(None, max_length=253, description="The trading pod.")
    broker_connected: bool | None = Field(None, description="Whether the broker connection is up.")
    equity: float | None = Field(None, description="Account value.")
    pnl: float | None = Field(None, description="Profit and loss since the session started.")
    daily_pnl: float | None = Field(None, description="Profit and loss since the trading day's open.")
    drawdown: float | None = Field(None, description="Loss from the equity peak, as a fraction.")
    gross_exposure: float | None = Field(None, description="Sum of absolute position values over equity.")
    positions: int | None = Field(None, ge=0, description="Instruments with a non-zero position.")
    orders_today: int | None = Field(None, ge=0, description="Orders sent today.")
    fills_today: int | None = Field(None, ge=0, description="Fills received today.")
    rejections_today: int | None = Field(None, ge=0, description="Orders rejected by the risk engine today.")
    last_heartbeat_time: dt.datetime | None = Field(None, description="Last time the runtime reported.")
    applied_policy_generation: int | None = Field(
        None,
        ge=0,
        description="metadata.generation of the RiskPolicy whose limits the runtime enforces now "
        "(behind the policy's own generation until a change has reached the pod).",
    )
    data_quality: LiveDataQuality | None = Field(
        None, description="Gaps in the latest bar of the session's universe (measured once per bar)."
    )
    live_rank_ic: float | None = Field(
        None,
        description="Mean over the last 20 trading days of the Spearman IC between the scores each day's "
        "rebalance traded on and the returns until the next day's rebalance.",
    )


class LiveTradingSession(Resource):
    """A broker-connected trading session."""

    spec: LiveTradingSessionSpec = Field(description="The session.")
    status: LiveTradingSessionStatus | None = Field(
        None, description="Observed state, written by the operator."
    )

    __crd__ = CrdFacts(
        kind="LiveTradingSession",
        plural="livetradingsessions",
        singular="livetradingsession",
        short_names=("lts",),
        description="One broker-connected trading pod guarded by a RiskPolicy.",
        columns=(
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("State", ".status.tradingState", description="ACTIVE, REDUCING or HALTED"),
            PrinterColumn("Mode", ".spec.mode"),
            PrinterColumn("Broker", ".spec.broker.type"),
            PrinterColumn("PnL", ".status.pnl", "number"),
            PrinterColumn("Drawdown", ".status.drawdown", "number"),
            AGE,
        ),
        # Everything else stays editable while the session runs (halted, image, policy, network):
        # the operator converges the StatefulSet. Its volume claim cannot change, so the journal's
        # volume is fixed at creation; deleteWithSession is the StatefulSet's retention policy,
        # which may change, so a user can still opt in to deleting the journal before deleting it.
        extra_spec_rules=(
            Rule(
                cel=(
                    "self.journal.size == oldSelf.journal.size"
                    " && has(self.journal.storageClassName) == has(oldSelf.journal.storageClassName)"
                    " && (!has(self.journal.storageClassName)"
                    " || self.journal.storageClassName == oldSelf.journal.storageClassName)"
                ),
                message=(
                    "spec.journal.size and spec.journal.storageClassName are immutable once created (a "
                    "StatefulSet's volume claim cannot change); set them back, or use a new session"
                ),
                field="journal",
                transition=True,
            ),
        ),
    )
