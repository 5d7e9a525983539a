"""The trading pod's HTTP signal API: targets in, orders out through the OMS, status for the operator.

Routes: ``POST /v1/signals``, ``GET /v1/orders``, ``GET /v1/positions``, ``GET /v1/status``,
``POST /v1/trading-state`` (bearer token, per-client rate limit), ``GET /healthz``, ``GET /readyz``
(200 once recovery finished), ``GET /metrics``, ``GET /openapi.json`` (the contract, generated from
the models requests are validated with: signal_schema.py). The HTTP handler and the benchmark share
``SignalService.handle``: parse, plan, submit.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from aiohttp import web
from aiolimiter import AsyncLimiter
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import ValidationError as PydanticValidationError

from kubequant.api.broker_capabilities import limit_price_refusal
from kubequant.api.live import LiveTradingSessionStatus, SessionPhase, SignalRateLimit, TradingState
from kubequant.errors import ConfigError, ValidationError
from kubequant.workloads.trading.execution.journal import JournalError
from kubequant.workloads.trading.execution.oms import NotReady, OrderManager
from kubequant.workloads.trading.model.domain import ZERO, utcnow
from kubequant.workloads.trading.model.events import SignalReceived
from kubequant.workloads.trading.model.orders import Order, OrderStatus
from kubequant.workloads.trading.model.signals import Signal, Target, plan_orders
from kubequant.workloads.trading.node import metrics
from kubequant.workloads.trading.node.signal_schema import (
    DEFAULT_MAX_TARGETS,
    MAX_NUMBER,
    SIGNAL_IN,
    TRADING_STATE_IN,
    openapi_document,
    with_instruments,
)
from kubequant.workloads.trading.risk.engine import Reason
from kubequant.workloads.trading.risk.trading_state import MAX_REASON, TradingStateRefused, set_running

if TYPE_CHECKING:
    from kubequant.workloads.trading.node.runtime import TradingRuntime

log = logging.getLogger(__name__)

TOKEN_ENV = "KUBEQUANT_SIGNAL_TOKEN"
TOKEN_FILE_ENV = "KUBEQUANT_SIGNAL_TOKEN_FILE"
RISK_REASONS = frozenset(r.value for r in Reason)
# On the read routes: "durable" when the answer holds only events on disk; "pending" when writes
# kept arriving and the answer also shows some still being written (rare: under a steady stream).
JOURNAL_HEADER = "Kubequant-Journal"
MAX_BODY_BYTES = 1 << 20  # a signal of 10,000 targets (the most maxTargets allows) is about 0.6 MB
MAX_JSON_DEPTH = 32  # a signal is 3 levels deep; anything far deeper is refused before it is parsed


class BadRequest(Exception):
    """A request the API refuses, naming the JSON path of the field at fault and the fix."""

    def __init__(self, error: str, field: str, fix: str, status: int = 422) -> None:
        super().__init__(error)
        self.error, self.field, self.fix, self.status = error, field, fix, status

    def body(self) -> dict[str, str]:
        """The JSON error body."""
        return {"error": self.error, "field": self.field, "fix": self.fix}


def load_token(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The bearer token: from ``path`` (a mounted Secret key), else $KUBEQUANT_SIGNAL_TOKEN_FILE, else $KUBEQUANT_SIGNAL_TOKEN."""
    env = os.environ if env is None else env
    source = path or env.get(TOKEN_FILE_ENV)
    if source:
        try:
            token = Path(source).read_text().strip()
        except OSError as err:
            raise ConfigError(
                f"cannot read the token: {err}", where=str(source), fix="mount the Secret"
            ) from err
    else:
        token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(
            "the signal API has no bearer token",
            where="spec.strategy.signalApi.tokenSecretRef",
            fix=f"mount the Secret key (--token-file) or set {TOKEN_ENV}",
        )
    return token


def json_depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (a scalar is 0), without recursion."""
    depth, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            depth = max(depth, level)
            stack.extend((child, level + 1) for child in children)
    return depth


def parse_json(raw: bytes) -> Any:
    """A request body as JSON; BadRequest (400) for what is not JSON or nests deeper than a request can."""
    try:
        body = json.loads(raw)
    except RecursionError:
        body = None
        depth: int | None = None
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRequest(f"the body is not JSON: {err}", "$", "send a JSON object", 400) from None
    else:
        # Each level opens a bracket: with no more brackets than levels allowed (a signal of up to 30
        # targets), the walk is not needed.
        if raw.count(b"{") + raw.count(b"[") <= MAX_JSON_DEPTH:
            return body
        depth = json_depth(body)
        if depth <= MAX_JSON_DEPTH:
            return body
    deeper = "too deep to parse" if depth is None else f"{depth} levels deep"
    raise BadRequest(
        f"the body nests {deeper}; at most {MAX_JSON_DEPTH} levels are accepted",
        "$",
        'send {"id": ..., "targets": [{"instrument": ..., "quantity": ...}]}',
        400,
    )


def signal_digest(signal: Signal) -> str:
    """A digest of what a signal asks for: equal for the same targets however the numbers were written."""

    def num(value: Decimal | None) -> str | None:
        return None if value is None else str(value.normalize())

    targets = sorted(
        (t.instrument, num(t.quantity), num(t.weight), num(t.limit_price)) for t in signal.targets
    )
    return hashlib.sha256(json.dumps(targets, separators=(",", ":")).encode()).hexdigest()[:32]


def parse_signal(
    body: Any, knows: Any = None, max_targets: int = DEFAULT_MAX_TARGETS, limit_refusal: str | None = None
) -> Signal:
    """A Signal from the request JSON, validated by the published model; BadRequest names the first field at fault.

    ``knows(instrument)`` says whether the venue lists the instrument (None skips that check).
    """
    if type(body) is dict and type(targets := body.get("targets")) is list and len(targets) > max_targets:
        # Before validation: a signal over the cap costs nothing to refuse, whatever its targets hold.
        raise BadRequest(
            f"{len(targets)} targets, more than the {max_targets} one signal may carry",
            "targets",
            "split the signal, or raise spec.strategy.signalApi.maxTargets",
        )
    try:
        wire = SIGNAL_IN.validate_python(body)
    except PydanticValidationError as err:
        raise refusal(err, SIGNAL_REFUSALS) from None
    limits = wire.limit_prices or {}
    parsed: list[Target] = []
    seen: set[str] = set()
    for i, t in enumerate(wire.targets):
        inst = t.instrument
        if knows is not None and not knows(inst):
            raise BadRequest(
                f"unknown instrument {inst}",
                f"targets[{i}].instrument",
                "use an instrument the venue lists as tradable (and in spec.universe, if set)",
            )
        if inst in seen:
            raise BadRequest(
                f"{inst} appears twice", f"targets[{i}].instrument", "give one target per instrument"
            )
        seen.add(inst)
        parsed.append(Target(inst, t.quantity, t.weight, limits.get(inst)))
    for inst in limits:
        if inst not in seen:
            raise BadRequest(f"no target for {inst}", f"limitPrices.{inst}", "remove it or add a target")
    if limits and limit_refusal is not None:  # a market-only venue: a limit price would be silently dropped
        error, _, fix = limit_refusal.partition("; ")
        raise BadRequest(error.removeprefix("limitPrices: "), f"limitPrices.{next(iter(limits))}", fix)
    return Signal(wire.id, tuple(parsed))


def json_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the JSON path the API names ("targets[0].weight"; "$" for the body)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":  # a dict key that failed: the path already ends with the key
            out += ("." if out else "") + part[:40]
    return out or "$"


@dataclass(frozen=True)
class Refusals:
    """How one request model's validation errors read: the fix for a body of the wrong shape, per field."""

    shape: str  # the fix when the body is not an object
    fields: dict[str, str]  # parent path -> the fix for an unknown field there


SIGNAL_REFUSALS = Refusals(
    'send {"id": ..., "targets": [...]}',
    {"$": "use only id, limitPrices, targets", "target": "use instrument, weight or quantity"},
)
TRADING_STATE_REFUSALS = Refusals(
    'send {"state": "ACTIVE", "reason": "..."}', {"$": "use only state and reason"}
)


def _shown(value: Any) -> str:
    return repr(value[:40]) if isinstance(value, str) else f"a JSON {type(value).__name__}"


def _as_decimal(value: Any) -> Decimal | None:
    try:
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        return None


def _number_refusal(kind: str, name: str, value: Any) -> tuple[str, str]:
    if kind == "finite_number":
        return "not a finite number", "give a finite number"
    number = _as_decimal(value) if kind not in ("decimal_parsing", "decimal_type") else None
    if number is None:
        shown = f": {value[:40]!r}" if isinstance(value, str) else ""
        return f"not a number{shown}", "give a JSON number"
    if name == "weight":
        return f"weight {number} is outside [-1, 1]", "give a fraction of equity"
    if kind == "greater_than":
        return "a limit price must be positive", "give a price > 0"
    return f"{number:.3E} is out of range", f"give a number of magnitude at most {MAX_NUMBER:.0E}"


def _explain(error: Any, refusals: Refusals) -> tuple[str, str]:
    """The message and the fix of one pydantic error (``error``: an item of ValidationError.errors())."""
    kind, loc, value = error["type"], error["loc"], error.get("input")
    path = json_path(loc)
    name = next((p for p in reversed(loc) if isinstance(p, str) and p != "[key]"), "")
    if kind == "extra_forbidden":
        key = str(loc[-1])[:40]
        return f"unknown field {key!r}", refusals.fields["target" if len(loc) > 1 else "$"]
    if kind == "missing" and name == "id":
        return "the idempotency key is missing", "set id to a key unique to this signal"
    if path == "id":
        return "id must be 1-128 characters of A-Z a-z 0-9 . _ : @ / -", "use a short unique string"
    if path == "targets":
        return "targets must be a non-empty list", "give at least one target"
    if loc[0] == "targets" and len(loc) == 2:
        if kind == "target_shape":
            return error["msg"], "give weight (fraction of equity) or quantity (signed shares), not both"
        return "a target must be an object", 'give {"instrument": ..., "weight": ...}'
    instrument_fix = "use 1-32 characters of A-Z a-z 0-9 . _ - (e.g. SYN0001)"
    if name == "instrument":
        if kind == "missing":
            return "the target has no instrument", instrument_fix
        return f"instrument {_shown(value)} is not an instrument code", instrument_fix
    if path == "limitPrices":
        return "limitPrices must be an object", "map instrument to a price"
    if loc[0] == "limitPrices" and loc[-1] == "[key]":
        return f"instrument {_shown(value)} is not an instrument code", instrument_fix
    if name in ("weight", "quantity") or loc[0] == "limitPrices":
        return _number_refusal(kind, name, value)
    if name == "state":
        if kind == "missing" or not isinstance(value, str):
            return "state is missing", "give ACTIVE, REDUCING or HALTED"
        return f"unknown trading state {value[:40]!r}", "use one of ACTIVE, REDUCING, HALTED"
    if name == "reason":
        if kind == "missing" or not isinstance(value, str):
            return "reason is missing", "say why the state changes"
        if kind == "string_too_long":
            return f"the reason is over {MAX_REASON} characters", "shorten it"
        return "a reason is required", "say why, e.g. 'loss reviewed'"
    return str(error["msg"]), "see the signal API's schema at /openapi.json"


def refusal(err: PydanticValidationError, refusals: Refusals) -> BadRequest:
    """The BadRequest for the first error of a request model's validation: 400 for the body's shape, else 422."""
    error = err.errors(include_url=False, include_context=False)[0]
    if not error["loc"]:
        return BadRequest("the body must be a JSON object", "$", refusals.shape, 400)
    message, fix = _explain(error, refusals)
    return BadRequest(message, json_path(error["loc"]), fix)


FAILED_CLOSED_FIX = "free space on the journal's volume if it is full; the pod exits and its restart recovers from the journal"


def _not_ready_fix(oms: OrderManager) -> str:
    """What a client can do about a 503: wait for recovery, or (the OMS failed closed) nothing until a restart."""
    return FAILED_CLOSED_FIX if oms.failed else "wait for /readyz"


def _code(order: Order) -> str:
    return order.reason.partition(":")[0] if order.status is OrderStatus.REJECTED else ""


def order_summary(order: Order) -> dict[str, Any]:
    """One order in a signal's answer: its client id, whether it is on its way, and the reason code if not."""
    accepted = order.status is not OrderStatus.REJECTED
    return {
        "clientOrderId": order.client_order_id,
        "instrument": order.instrument,
        "side": order.side.value,
        "quantity": str(order.quantity),
        "status": order.status.value,
        "accepted": accepted,
        "reason": None if accepted else _code(order),
        "detail": order.reason or None,
    }


@dataclass(frozen=True)
class SignalAnswer:
    """What a signal produced: the HTTP status and the JSON body."""

    status: int
    body: dict[str, Any]


class SignalService:
    """Signals to orders through one OMS, and the session's status; no HTTP in here."""

    def __init__(
        self,
        oms: OrderManager,
        *,
        starting_equity: Decimal,
        knows: Any = None,
        lot: Decimal = Decimal(1),
        max_targets: int = DEFAULT_MAX_TARGETS,
        rate_limit: SignalRateLimit | None = None,
        extra_status: Callable[[], Mapping[str, Any]] | None = None,
        limit_refusal: str | None = None,
        instruments: Callable[[], Sequence[str] | None] | None = None,
    ) -> None:
        self.oms = oms
        # The instruments ``knows`` takes, listed (None until the venue's list is read): the published
        # document enumerates them.
        self.instruments = instruments
        # Why this venue cannot take a limit price (a market-only venue), or None: refused per signal.
        self.limit_refusal = limit_refusal
        # What the runtime measures besides the OMS (the applied policy, data quality, live rank IC).
        self.extra_status = extra_status
        self.starting_equity = starting_equity
        self.knows = knows
        self.lot = lot
        self.max_targets = max_targets
        self.rate_limit = rate_limit or SignalRateLimit()
        self._by_signal: dict[str, list[str]] | None = None
        self._pending: dict[str, asyncio.Future[None]] = {}  # signal ids whose orders are being submitted

    @classmethod
    def for_runtime(cls, runtime: TradingRuntime) -> SignalService:
        """The service of a wired runtime: its OMS, its starting cash, its instruments and lot, its target cap."""
        spec = runtime.cfg.session.spec
        api = spec.strategy.signal_api
        return cls(
            runtime.oms,
            starting_equity=Decimal(repr(spec.starting_cash)),
            knows=runtime.knows(),
            lot=runtime.lot(),
            max_targets=api.max_targets if api is not None else DEFAULT_MAX_TARGETS,
            rate_limit=api.rate_limit if api is not None else None,
            extra_status=runtime.status_fields,
            limit_refusal=limit_price_refusal(str(spec.broker.type)),
            instruments=runtime.instruments,
        )

    def _index(self) -> dict[str, list[str]]:
        # Built from the journal-backed state on first use (after recovery), then kept up to date.
        if self._by_signal is None:
            self._by_signal = {sid: [] for sid in self.oms.state.signals}
            for order in self.oms.state.orders.values():
                self._by_signal.setdefault(order.signal_id, []).append(order.client_order_id)
        return self._by_signal

    async def handle(self, body: Any, received: float | None = None) -> SignalAnswer:
        """Validate, plan and submit one signal.

        The same id with the same payload returns its orders with duplicate true (200); with another
        payload it is refused (409). Every signal taken is journaled with a digest of its payload,
        so this holds across restarts, for signals that needed no order too.
        """
        received = time.perf_counter() if received is None else received
        oms = self.oms
        if not oms.ready:  # first: the venue's instrument list is read during the start
            raise NotReady(oms.failed or "recovery has not finished", fix=_not_ready_fix(oms))
        signal = parse_signal(body, self.knows, self.max_targets, self.limit_refusal)
        index = self._index()
        pending = self._pending.get(signal.signal_id)
        if pending is not None:  # the same id is being submitted right now: answer once it is done
            await asyncio.shield(pending)
        digest = signal_digest(signal)
        known = index.get(signal.signal_id)
        if known is not None:
            taken = oms.state.signals.get(signal.signal_id)
            if taken is not None and taken != digest:
                raise BadRequest(
                    f"signal {signal.signal_id} was already taken with a different payload",
                    "id",
                    "a retry must repeat the payload exactly; send a new signal under a new id",
                    409,
                )
            await oms.settled()  # what it made may still be on its way to the disk
            orders = [oms.state.orders[cid] for cid in known]
            return SignalAnswer(200, self._answer(signal.signal_id, orders, duplicate=True))
        view = oms.view(*(t.instrument for t in signal.targets))
        for i, target in enumerate(signal.targets):
            mark = view.marks.get(target.instrument)
            if target.weight is not None and (mark is None or mark <= 0):
                raise BadRequest(
                    f"no last price for {target.instrument} yet, so its weight cannot become a quantity",
                    f"targets[{i}].weight",
                    "send a quantity instead, or send the signal again once the instrument has traded",
                )
        done = self._pending[signal.signal_id] = asyncio.get_running_loop().create_future()
        index[signal.signal_id] = cids = []
        orders = []
        try:
            # Journaled ahead of its orders (the same group commit): a retry after a restart is known.
            oms.stage(SignalReceived(oms.clock.now(), signal.signal_id, digest))
            for intent in plan_orders(signal, view.positions, view.marks, view.equity, self.lot):
                outcome = await oms.submit(intent, received)
                if outcome.order.client_order_id not in cids:
                    cids.append(outcome.order.client_order_id)
                orders.append(outcome.order)
            await oms.settled()
        finally:
            del self._pending[signal.signal_id]
            done.set_result(None)
        return SignalAnswer(202, self._answer(signal.signal_id, orders, duplicate=False))

    @staticmethod
    def _answer(signal_id: str, orders: list[Order], duplicate: bool) -> dict[str, Any]:
        return {"id": signal_id, "duplicate": duplicate, "orders": [order_summary(o) for o in orders]}

    async def set_trading_state(self, body: Any) -> dict[str, Any]:
        """Set the trading state by an operator's request ({"state", "reason"}); BadRequest names the field."""
        try:
            wire = TRADING_STATE_IN.validate_python(body)
        except PydanticValidationError as err:
            raise refusal(err, TRADING_STATE_REFUSALS) from None
        if not self.oms.ready:
            raise NotReady(self.oms.failed or "recovery has not finished", fix=_not_ready_fix(self.oms))
        try:
            event = await set_running(self.oms, wire.state, wire.reason)
        except ValidationError as err:
            raise BadRequest(err.message, err.where or "$", err.fix or "") from None
        except TradingStateRefused as err:
            raise BadRequest(err.message, err.where or "$", err.fix or "", 409) from None
        risk = self.oms.risk
        return {
            "requested": event.state,
            "previous": event.previous,
            "state": risk.state.value,
            "cleared": event.cleared,
            "conditions": risk.describe(),
        }

    def orders(self) -> list[dict[str, object]]:
        """Every order of the session, oldest first."""
        return [o.to_dict() for o in self.oms.state.orders.values()]

    def positions(self) -> list[dict[str, str | None]]:
        """Non-zero positions with their marks."""
        out = []
        for inst, pos in sorted(self.oms.state.positions.items()):
            if not pos.quantity:
                continue
            mark = self.oms.mark(inst)
            out.append(
                {
                    "instrument": inst,
                    "quantity": str(pos.quantity),
                    "averagePrice": str(pos.average_price),
                    "mark": None if mark is None else str(mark),
                    "marketValue": None
                    if mark is None
                    else str((pos.quantity * mark).quantize(Decimal("0.01"))),
                    "realizedPnl": str(pos.realized_pnl.quantize(Decimal("0.01"))),
                    "fees": str(pos.fees),
                }
            )
        return out

    def counts(self, today_only: bool = True) -> dict[str, Any]:
        """Orders sent, fills and risk rejections (today, or over the whole session) and rejections by reason."""
        risk, now = self.oms.risk, self.oms.clock.now()
        day = risk.trading_day(now)
        orders = fills = rejections = 0
        by_reason: dict[str, int] = {}
        for order in self.oms.state.orders.values():
            if order.external:
                continue
            if not today_only or risk.trading_day(order.created) == day:
                code = _code(order)
                if code in RISK_REASONS:
                    rejections += 1
                elif order.status is not OrderStatus.PENDING_NEW:
                    orders += 1
                if code:
                    by_reason[code] = by_reason.get(code, 0) + 1
            fills += sum(1 for f in order.fills.values() if not today_only or risk.trading_day(f.ts) == day)
        return {"orders": orders, "fills": fills, "rejections": rejections, "rejectionsByReason": by_reason}

    def status(self) -> dict[str, Any]:
        """The session's state, shaped like LiveTradingSessionStatus (camelCase)."""
        oms, risk = self.oms, self.oms.risk
        state = risk.state
        account = oms.state.account
        equity = account.equity if account else None
        if oms.failed:
            phase = SessionPhase.FAILED
        elif not oms.ready:
            phase = SessionPhase.RECONCILING
        elif state is TradingState.HALTED:
            phase = SessionPhase.HALTED
        else:
            phase = SessionPhase.TRADING
        gross = ZERO
        for inst, pos in oms.state.positions.items():
            if pos.quantity and (mark := oms.mark(inst)) is not None:
                gross += abs(pos.quantity * mark)
        peak, day_start = risk.peak_equity, risk.day_start_equity
        counts = self.counts()
        status = LiveTradingSessionStatus(
            phase=phase,
            trading_state=state,
            halt_reason=("; ".join(risk.describe().values())[:1024] or None) if risk.conditions else None,
            broker_connected=oms.broker.is_connected(),
            equity=None if equity is None else float(equity),
            pnl=None if equity is None else float(equity - self.starting_equity),
            daily_pnl=None if equity is None or day_start is None else float(equity - day_start),
            drawdown=None if equity is None or not peak else float(max(ZERO, peak - equity) / peak),
            gross_exposure=None if not equity else float(gross / equity),
            positions=sum(1 for p in oms.state.positions.values() if p.quantity),
            orders_today=counts["orders"],
            fills_today=counts["fills"],
            rejections_today=counts["rejections"],
            last_heartbeat_time=utcnow(),
            message=oms.failed,
            **(self.extra_status() if self.extra_status is not None else {}),
        )
        return status.model_dump(by_alias=True, exclude_none=True, mode="json")


class TokenMask(logging.Filter):
    """Masks the bearer tokens of this process's signal APIs in a record, its traceback included.

    aiohttp logs a request it cannot parse with the parser's error, which quotes the raw header line:
    an Authorization header with a stray byte would otherwise put the token in the log.
    """

    tokens: ClassVar[set[str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        text, trace = record.getMessage(), record.exc_text or ""
        for token in self.tokens:
            text, trace = text.replace(token, "[REDACTED]"), trace.replace(token, "[REDACTED]")
        record.msg, record.args, record.exc_text = text, None, trace or None
        return True


SERVER_LOG = logging.getLogger(f"{__name__}.server")  # aiohttp's request handling, for our servers
SERVER_LOG.addFilter(TokenMask())


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers, dumps=lambda o: json.dumps(o, default=str))


class ClientRateLimit:
    """A leaky bucket (aiolimiter) per client address that refuses, never queues, a request over the limit."""

    def __init__(self, limit: SignalRateLimit, max_clients: int = 4096) -> None:
        self.burst = limit.burst or limit.requests_per_second
        self.period = self.burst / limit.requests_per_second  # a full bucket drains in this many seconds
        # A bucket that refused has room for one more within 1/rate seconds; HTTP counts whole seconds.
        self.retry_after = str(max(1, math.ceil(1 / limit.requests_per_second)))
        self.max_clients = max_clients
        self._buckets: dict[str, AsyncLimiter] = {}

    async def admit(self, client: str) -> bool:
        """Whether ``client`` may make one more request now; its capacity is taken when it may."""
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._forget_idle()
            bucket = self._buckets[client] = AsyncLimiter(self.burst, self.period)
        if not bucket.has_capacity():
            return False
        await bucket.acquire()  # there is capacity: returns without waiting
        return True

    def _forget_idle(self) -> None:
        # Many addresses: drop the drained buckets (nothing to remember), then the oldest if all are busy.
        for client in [c for c, b in self._buckets.items() if b.has_capacity(b.max_rate)]:
            del self._buckets[client]
        while len(self._buckets) >= self.max_clients:
            del self._buckets[next(iter(self._buckets))]


def build_app(service: SignalService, token: str) -> web.Application:
    """The aiohttp application over ``service``: per-client rate limit and bearer-token auth on every /v1 route."""
    expected = token.encode()
    TokenMask.tokens.add(token)
    limiter = ClientRateLimit(service.rate_limit)
    unauthorized = {
        "error": "missing or wrong bearer token",
        "field": "headers.Authorization",
        "fix": "send Authorization: Bearer <token from the session's Secret>",
    }
    throttled = {
        "error": "too many requests from this client",
        "field": "$",
        "fix": "retry after Retry-After seconds, or raise spec.strategy.signalApi.rateLimit",
    }
    too_large = BadRequest(
        f"the body is {MAX_BODY_BYTES} bytes or more",
        "$",
        "send a smaller body (split the signal)",
        413,
    )
    generic = openapi_document(service.max_targets)
    documents: dict[bool, bytes] = {}

    def document() -> bytes:
        """The contract, with this session's instruments once the venue's list is read (then kept)."""
        if True in documents:  # the listing is read once, at start: no sort of it per request after that
            return documents[True]
        listed = service.instruments() if service.instruments is not None else None
        key = listed is not None
        if key not in documents:
            documents[key] = json.dumps(with_instruments(generic, listed)).encode()
        return documents[key]

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.path.startswith("/v1/"):
            return await handler(request)
        status = 500  # what an unexpected error becomes
        try:
            response = await guarded(request, handler)
            status = response.status
            return response
        except web.HTTPException as err:  # aiohttp's own answers (404, 405)
            status = err.status
            raise
        finally:
            # The route's template, not the path a client sent: a label per path would grow unbounded.
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            metrics.signal_api_answers(route, status).inc()

    async def guarded(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # Throttled first, so guessing tokens is throttled too.
        if not await limiter.admit(request.remote or ""):
            return _json(throttled, 429, {"Retry-After": limiter.retry_after})
        # surrogateescape: a header that is not UTF-8 compares (unequal), never raises. The scheme
        # is case-insensitive (RFC 7235); the token is compared in constant time, always: how much
        # of a wrong token matched does not show in how long the refusal took.
        scheme, _, given = (
            request.headers.get("Authorization", "").encode("utf-8", "surrogateescape").partition(b" ")
        )
        if not hmac.compare_digest(given, expected) or scheme.lower() != b"bearer":
            return _json(unauthorized, 401)
        return await handler(request)

    async def json_call(
        request: web.Request, call: Callable[[Any], Awaitable[tuple[dict[str, Any], int]]]
    ) -> web.Response:
        """Parse the JSON body, run ``call`` on it; a bad body is 400 (413 too large), a refused field 4xx, not ready 503."""
        if (request.content_length or 0) >= MAX_BODY_BYTES:
            return _json(too_large.body(), too_large.status)  # refused before a byte of it is read
        try:
            raw = await request.read()  # a chunked body stops being read at the limit
        except web.HTTPRequestEntityTooLarge:
            return _json(too_large.body(), too_large.status)
        try:
            body = parse_json(raw)
        except BadRequest as err:
            return _json(err.body(), err.status)
        try:
            answer, status = await call(body)
        except BadRequest as err:
            return _json(err.body(), err.status)
        except NotReady as err:
            return _json({"error": err.message, "field": "", "fix": err.fix or "retry later"}, 503)
        except JournalError as err:
            # This request's own event could not be made durable: nothing was sent, the runtime fails closed.
            return _json({"error": err.message, "field": "", "fix": err.fix or FAILED_CLOSED_FIX}, 503)
        return _json(answer, status)

    async def post_signal(request: web.Request) -> web.Response:
        received = time.perf_counter()

        async def submit(body: Any) -> tuple[dict[str, Any], int]:
            answer = await service.handle(body, received)
            return answer.body, answer.status

        return await json_call(request, submit)

    async def post_trading_state(request: web.Request) -> web.Response:
        async def set_state(body: Any) -> tuple[dict[str, Any], int]:
            return await service.set_trading_state(body), 200

        return await json_call(request, set_state)

    async def durable_read(read: Callable[[], Any]) -> web.Response:
        # Only what is on disk: an event a crash could still erase is never shown as fact.
        body, durable = await service.oms.read_durable(read)
        response = _json(body)
        response.headers[JOURNAL_HEADER] = "durable" if durable else "pending"
        return response

    async def get_orders(request: web.Request) -> web.Response:
        return await durable_read(lambda: {"orders": service.orders()})

    async def get_positions(request: web.Request) -> web.Response:
        return await durable_read(lambda: {"positions": service.positions()})

    async def get_status(request: web.Request) -> web.Response:
        return await durable_read(service.status)

    async def healthz(request: web.Request) -> web.Response:
        return _json({"ok": True})

    async def readyz(request: web.Request) -> web.Response:
        oms = service.oms
        if oms.ready:
            return _json({"ready": True})
        return _json({"ready": False, "reason": oms.failed or "recovery has not finished"}, 503)

    async def get_metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def get_openapi(request: web.Request) -> web.Response:
        return web.Response(body=document(), content_type="application/json")

    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/v1/signals", post_signal)
    app.router.add_post("/v1/trading-state", post_trading_state)
    app.router.add_get("/v1/orders", get_orders)
    app.router.add_get("/v1/positions", get_positions)
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/openapi.json", get_openapi)
    return app


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start ``app`` on ``host:port`` (0 picks a free port); returns the runner and the bound port."""
    runner = web.AppRunner(app, access_log=None, logger=SERVER_LOG)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # aiohttp exposes the bound sockets only here
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, int(bound)
