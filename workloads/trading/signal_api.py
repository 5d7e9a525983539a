"""The trading pod's HTTP signal API: targets in, orders out through the OMS, status for the operator.

Routes: ``POST /v1/signals``, ``GET /v1/orders``, ``GET /v1/positions``, ``GET /v1/status``,
``POST /v1/trading-state`` (bearer token), ``GET /healthz``, ``GET /readyz`` (200 once recovery
finished), ``GET /metrics``. The HTTP
handler and the benchmark share ``SignalService.handle``: parse, plan, submit.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from kubequant.api.live import LiveTradingSessionStatus, SessionPhase, SignalApi, TradingState
from kubequant.errors import ConfigError, ValidationError
from kubequant.workloads.trading.domain import ZERO, utcnow
from kubequant.workloads.trading.events import SignalReceived
from kubequant.workloads.trading.oms import NotReady, OrderManager
from kubequant.workloads.trading.orders import Order, OrderStatus
from kubequant.workloads.trading.risk_engine import Reason
from kubequant.workloads.trading.signals import Signal, Target, plan_orders
from kubequant.workloads.trading.trading_state import TradingStateRefused, set_running

if TYPE_CHECKING:
    from kubequant.workloads.trading.runtime import TradingRuntime

log = logging.getLogger(__name__)

TOKEN_ENV = "KUBEQUANT_SIGNAL_TOKEN"
TOKEN_FILE_ENV = "KUBEQUANT_SIGNAL_TOKEN_FILE"
INSTRUMENT = re.compile(r"^[A-Za-z0-9._-]{1,32}$")  # kubequant.api.common.InstrumentCode
SIGNAL_ID = re.compile(r"^[A-Za-z0-9._:@/-]{1,128}$")
RISK_REASONS = frozenset(r.value for r in Reason)
_TOP_KEYS = frozenset({"id", "targets", "limitPrices"})
DEFAULT_MAX_TARGETS: int = SignalApi.model_fields["max_targets"].default
# On the read routes: "durable" when the answer holds only events on disk; "pending" when writes
# kept arriving and the answer also shows some still being written (rare: under a steady stream).
JOURNAL_HEADER = "Kubequant-Journal"
MAX_NUMBER = Decimal("1E12")  # no quantity or price of a real order comes near it
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


def _number(value: Any, field: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadRequest("not a number", field, "give a JSON number")
    try:
        out = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise BadRequest(f"not a number: {str(value)[:40]!r}", field, "give a JSON number") from None
    if not out.is_finite() or (isinstance(value, float) and not math.isfinite(value)):
        raise BadRequest("not a finite number", field, "give a finite number")
    if out.copy_abs() > MAX_NUMBER:  # copy_abs: no context, so no Overflow on 1E+999999999
        raise BadRequest(
            f"{out:.3E} is out of range", field, f"give a number of magnitude at most {MAX_NUMBER:.0E}"
        )
    return out


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


def parse_signal(body: Any, knows: Any = None, max_targets: int = DEFAULT_MAX_TARGETS) -> Signal:
    """A Signal from the request JSON; BadRequest names the first field at fault.

    ``knows(instrument)`` says whether the venue lists the instrument (None skips that check).
    """
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", "$", 'send {"id": ..., "targets": [...]}', 400)
    for key in body:
        if key not in _TOP_KEYS:
            raise BadRequest(
                f"unknown field {key[:40]!r}", key[:40], f"use only {', '.join(sorted(_TOP_KEYS))}"
            )
    sid = body.get("id")
    if sid is None:
        raise BadRequest("the idempotency key is missing", "id", "set id to a key unique to this signal")
    if not isinstance(sid, str) or not SIGNAL_ID.match(sid):
        raise BadRequest(
            "id must be 1-128 characters of A-Z a-z 0-9 . _ : @ / -", "id", "use a short unique string"
        )
    targets = body.get("targets")
    if not isinstance(targets, list) or not targets:
        raise BadRequest("targets must be a non-empty list", "targets", "give at least one target")
    if len(targets) > max_targets:
        raise BadRequest(
            f"{len(targets)} targets, more than the {max_targets} one signal may carry",
            "targets",
            "split the signal, or raise spec.strategy.signalApi.maxTargets",
        )
    limits = body.get("limitPrices") or {}
    if not isinstance(limits, dict):
        raise BadRequest("limitPrices must be an object", "limitPrices", "map instrument to a price")
    parsed: list[Target] = []
    seen: set[str] = set()
    for i, t in enumerate(targets):
        where = f"targets[{i}]"
        if not isinstance(t, dict):
            raise BadRequest("a target must be an object", where, 'give {"instrument": ..., "weight": ...}')
        extra = set(t) - {"instrument", "weight", "quantity"}
        if extra:
            key = sorted(extra)[0]
            raise BadRequest(
                f"unknown field {key[:40]!r}", f"{where}.{key[:40]}", "use instrument, weight or quantity"
            )
        inst = t.get("instrument")
        if not isinstance(inst, str) or not INSTRUMENT.match(inst):
            shown = repr(inst[:40]) if isinstance(inst, str) else f"a JSON {type(inst).__name__}"
            raise BadRequest(
                f"instrument {shown} is not an instrument code",
                f"{where}.instrument",
                "use 1-32 characters of A-Z a-z 0-9 . _ - (e.g. SYN0001)",
            )
        if knows is not None and not knows(inst):
            raise BadRequest(
                f"unknown instrument {inst}",
                f"{where}.instrument",
                "use an instrument the venue lists as tradable (and in spec.universe, if set)",
            )
        if inst in seen:
            raise BadRequest(f"{inst} appears twice", f"{where}.instrument", "give one target per instrument")
        seen.add(inst)
        has_w, has_q = t.get("weight") is not None, t.get("quantity") is not None
        if has_w == has_q:
            raise BadRequest(
                "set exactly one of weight and quantity"
                if has_w
                else "a target needs a weight or a quantity",
                where,
                "give weight (fraction of equity) or quantity (signed shares), not both",
            )
        price = None
        if inst in limits:
            price = _number(limits[inst], f"limitPrices.{inst}")
            if price <= 0:
                raise BadRequest("a limit price must be positive", f"limitPrices.{inst}", "give a price > 0")
        if has_w:
            weight = _number(t["weight"], f"{where}.weight")
            if not -1 <= weight <= 1:
                raise BadRequest(
                    f"weight {weight} is outside [-1, 1]", f"{where}.weight", "give a fraction of equity"
                )
            parsed.append(Target(inst, weight=weight, limit_price=price))
        else:
            parsed.append(
                Target(inst, quantity=_number(t["quantity"], f"{where}.quantity"), limit_price=price)
            )
    for inst in limits:
        if inst not in seen:
            raise BadRequest(f"no target for {inst}", f"limitPrices.{inst}", "remove it or add a target")
    return Signal(sid, tuple(parsed))


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
    ) -> None:
        self.oms = oms
        self.starting_equity = starting_equity
        self.knows = knows
        self.lot = lot
        self.max_targets = max_targets
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
            raise NotReady(oms.failed or "recovery has not finished", fix="wait for /readyz")
        signal = parse_signal(body, self.knows, self.max_targets)
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
        if not isinstance(body, dict):
            raise BadRequest(
                "the body must be a JSON object", "$", 'send {"state": "ACTIVE", "reason": "..."}', 400
            )
        for key in body:
            if key not in ("state", "reason"):
                raise BadRequest(f"unknown field {key[:40]!r}", key[:40], "use only state and reason")
        state, reason = body.get("state"), body.get("reason")
        if not isinstance(state, str):
            raise BadRequest("state is missing", "state", "give ACTIVE, REDUCING or HALTED")
        if not isinstance(reason, str):
            raise BadRequest("reason is missing", "reason", "say why the state changes")
        if not self.oms.ready:
            raise NotReady(self.oms.failed or "recovery has not finished", fix="wait for /readyz")
        try:
            event = await set_running(self.oms, state, reason)
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
            halt_reason=("; ".join(risk.describe().values()) or None)[:1024] if risk.conditions else None,
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
        )
        return status.model_dump(by_alias=True, exclude_none=True, mode="json")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, default=str))


def build_app(service: SignalService, token: str) -> web.Application:
    """The aiohttp application over ``service``, with bearer-token auth on every /v1 route."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/v1/"):
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return _json(
                    {
                        "error": "missing or wrong bearer token",
                        "field": "headers.Authorization",
                        "fix": "send Authorization: Bearer <token from the session's Secret>",
                    },
                    401,
                )
        return await handler(request)

    async def json_call(
        request: web.Request, call: Callable[[Any], Awaitable[tuple[dict[str, Any], int]]]
    ) -> web.Response:
        """Parse the JSON body, run ``call`` on it; a bad body is 400, a refused field 4xx, not ready 503."""
        try:
            body = parse_json(await request.read())
        except BadRequest as err:
            return _json(err.body(), err.status)
        try:
            answer, status = await call(body)
        except BadRequest as err:
            return _json(err.body(), err.status)
        except NotReady as err:
            return _json({"error": err.message, "field": "", "fix": err.fix or "retry later"}, 503)
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

    app = web.Application(middlewares=[auth])
    app.router.add_post("/v1/signals", post_signal)
    app.router.add_post("/v1/trading-state", post_trading_state)
    app.router.add_get("/v1/orders", get_orders)
    app.router.add_get("/v1/positions", get_positions)
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", get_metrics)
    return app


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start ``app`` on ``host:port`` (0 picks a free port); returns the runner and the bound port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # aiohttp exposes the bound sockets only here
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, int(bound)
