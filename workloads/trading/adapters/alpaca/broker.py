"""The Alpaca adapter: the Broker protocol over alpaca-py's TradingClient (US equities, REST).

alpaca-py's client is synchronous (``requests``); every call runs on the adapter's own small thread
pool, so the event loop never blocks and a hung broker cannot starve the loop's default executor.
Responses are read as raw JSON (``raw_data=True``) so quantities and prices go straight from
Alpaca's decimal strings to ``Decimal``, and a status alpaca-py's enums do not know yet cannot
stop reconciliation.

Two SDK defaults are changed because they contradict the OMS's rules: requests get a timeout
(``requests`` has none by default), and the SDK's own retry is off (it would re-POST an order
after a 429/504 and sleep seconds inside the call). Retrying belongs to the OMS, which knows which
calls are idempotent: a submit whose outcome is unknown surfaces as BrokerTimeout and is resolved
by a query by client order id. Only when that query answers 404 does the OMS send it once more
under the same id: Alpaca refuses a reused client order id (422 "client_order_id must be unique",
``DuplicateOrder`` here), so a first copy that did arrive can never become a second order.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import requests
from alpaca.common.enums import BaseURL, Sort
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import AssetClass, AssetStatus, OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    GetAssetsRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    OrderRequest,
)
from pydantic import ValidationError as PydanticValidationError
from urllib3.exceptions import NewConnectionError

from kubequant.api.broker_capabilities import BrokerCapabilities, capabilities_of
from kubequant.api.live import LiveTradingSession, SessionMode
from kubequant.errors import BrokerError, ConfigError
from kubequant.workloads.trading.adapters.base import (
    BrokerAccount,
    BrokerAck,
    BrokerBusy,
    BrokerDisconnected,
    BrokerFill,
    BrokerOrder,
    BrokerRejected,
    BrokerTimeout,
    DuplicateOrder,
    SubmitRequest,
)
from kubequant.workloads.trading.model.domain import ZERO, Clock, Fill, Side, WallClock, as_money
from kubequant.workloads.trading.model.orders import OrderStatus

log = logging.getLogger(__name__)

# Keys of the credentials Secret (mounted as files) and the environment variables that stand in for it.
SECRET_KEY_ID = "api-key-id"
SECRET_SECRET_KEY = "api-secret-key"
ENV_KEY_ID = "ALPACA_API_KEY_ID"
ENV_SECRET_KEY = "ALPACA_API_SECRET_KEY"

DEFAULT_TIMEOUT = (3.05, 10.0)  # (connect, read) seconds
ORDERS_PAGE = 500  # the documented maximum of GET /v2/orders
ACTIVITIES_PAGE = 100  # the documented maximum of GET /v2/account/activities without `date`
KNOWN_ORDERS = 20_000  # broker order id -> client order id entries kept for fills

# Alpaca's order statuses that are not terminal; anything unknown is treated the same (it may still fill).
_TERMINAL = {
    "filled": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELED,
    "replaced": OrderStatus.CANCELED,  # the OMS never replaces; a replaced order is done, its successor is new
    "expired": OrderStatus.EXPIRED,
    "rejected": OrderStatus.REJECTED,
}
_WORKING = {
    "new",
    "accepted",
    "pending_new",
    "accepted_for_bidding",
    "pending_review",
    "pending_replace",
    "partially_filled",
    "done_for_day",
    "stopped",
    "suspended",
    "calculated",
    "held",
}


class BrokerRateLimited(BrokerBusy):
    """Alpaca answered 429: the request was refused unprocessed, so it is safe to send again after a pause."""


def retry_after_seconds(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """How long a 429 asks to wait: ``Retry-After`` (seconds or an HTTP date), else ``X-RateLimit-Reset``
    (Alpaca's Unix time when the window resets); None when neither says."""
    if not headers:
        return None
    now = time.time() if now is None else now
    value = headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
            except (TypeError, ValueError):
                pass
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        try:
            return max(0.0, float(reset) - now)
        except ValueError:
            return None
    return None


class _NotFound(BrokerRejected):
    """Alpaca answered 404."""


@dataclass(frozen=True)
class AlpacaCredentials:
    """An API key pair and where it came from (for error messages); the secret never appears in a repr."""

    key_id: str
    secret_key: str = field(repr=False)
    source: str = "arguments"


def load_credentials(
    secrets_dir: Path | None, secret_name: str | None = None, env: Mapping[str, str] | None = None
) -> AlpacaCredentials:
    """The key pair from the mounted Secret (``api-key-id``, ``api-secret-key``), else from the environment."""
    env = os.environ if env is None else env
    where = f"Secret {secret_name}" if secret_name else "the credentials Secret"
    values: dict[str, str] = {}
    sources: list[str] = []
    for key, var in ((SECRET_KEY_ID, ENV_KEY_ID), (SECRET_SECRET_KEY, ENV_SECRET_KEY)):
        path = secrets_dir / key if secrets_dir is not None else None
        if path is not None and path.is_file():
            values[key] = path.read_text().strip()
            sources.append(str(path))
        elif env.get(var, "").strip():
            values[key] = env[var].strip()
            sources.append(f"${var}")
        if not values.get(key):
            mounted = f" (looked in {secrets_dir})" if secrets_dir is not None else ""
            raise ConfigError(
                f"the Alpaca credential {key!r} is missing{mounted}",
                where=f"spec.broker.credentialsSecretRef: {where} key {key}",
                fix=(
                    f"create the Secret with both keys: kubectl create secret generic {secret_name or 'NAME'}"
                    f" --from-literal={SECRET_KEY_ID}=... --from-literal={SECRET_SECRET_KEY}=..."
                    f" (locally: export {ENV_KEY_ID} and {ENV_SECRET_KEY})"
                ),
            )
    return AlpacaCredentials(values[SECRET_KEY_ID], values[SECRET_SECRET_KEY], ", ".join(sources))


def resolve_endpoint(mode: SessionMode, endpoint: str | None) -> tuple[bool, str | None]:
    """``(paper, url_override)`` for the session: Alpaca's paper API in paper mode, the live API in live mode.

    ``spec.broker.endpoint`` overrides the URL (a proxy, a test server), but never across the line
    between paper and real money: a paper session pointed at the live API is refused, and the reverse.
    """
    paper = mode == SessionMode.PAPER  # the model keeps enum values as plain strings
    if endpoint is None:
        return paper, None
    url = endpoint.rstrip("/").removesuffix("/v2")  # alpaca-py appends /v2 itself
    host = urlsplit(url).hostname or ""
    live_host, paper_host = (
        urlsplit(BaseURL.TRADING_LIVE.value).hostname,
        urlsplit(BaseURL.TRADING_PAPER.value).hostname,
    )
    if paper and host == live_host:
        raise ConfigError(
            f"mode paper but the endpoint {endpoint} is Alpaca's live (real money) API",
            where="spec.broker.endpoint",
            fix=f"use {BaseURL.TRADING_PAPER.value} (or remove endpoint), or set mode: live",
        )
    if not paper and host == paper_host:
        raise ConfigError(
            f"mode live but the endpoint {endpoint} is Alpaca's paper API",
            where="spec.broker.endpoint",
            fix="set mode: paper, or remove endpoint to trade live",
        )
    return paper, url


class _TimeoutSession(requests.Session):
    """A requests Session whose requests time out unless told otherwise."""

    def __init__(self, timeout: float | tuple[float, float]) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, *args, **kwargs)


def take_over(client: Any, timeout: float | tuple[float, float]) -> None:
    """Give an alpaca-py client (made with ``raw_data=True``) a timeout and no retry of its own.

    alpaca-py exposes neither setting: its Session and retry counter are attributes of RESTClient.
    requests has no default timeout, and the SDK's retry would re-send a POST after a 429 or 504
    and sleep inside the call; the adapters decide what is retried.
    """
    if not getattr(client, "_use_raw_data", False):
        raise ValueError(f"the Alpaca adapters need a {type(client).__name__} made with raw_data=True")
    client._session = _TimeoutSession(timeout)
    client._retry = 0


def _dec(value: object) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise BrokerError(f"Alpaca sent {value!r} where a number belongs") from None


def _ts(value: object) -> dt.datetime:
    # Python 3.11 reads Alpaca's RFC 3339 times, nanoseconds and 'Z' included.
    ts = dt.datetime.fromisoformat(str(value))
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=dt.UTC)


def _never_sent(err: requests.exceptions.ConnectionError) -> bool:
    """Whether the connection failed before the request could leave (refused, DNS, TLS, connect timeout)."""
    if isinstance(err, requests.exceptions.ConnectTimeout | requests.exceptions.SSLError):
        return True
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(reason, NewConnectionError)


def _api_error(err: APIError, what: str, *, submit: bool) -> BrokerError:
    """Alpaca's HTTP error as one of the Broker errors, with Alpaca's own message."""
    status = err.status_code or 0
    text = str(err)
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    message = str(body.get("message", text)) if isinstance(body, dict) else text
    code = body.get("code") if isinstance(body, dict) else None
    detail = f"Alpaca {status}{f' ({code})' if code else ''}: {message}"
    if status == 404:
        return _NotFound(f"{what}: {detail}")
    if (
        status == 422
        and "client_order_id" in message
        and any(w in message for w in ("unique", "exist", "duplicate"))
    ):
        return DuplicateOrder(f"{what}: {detail}")
    if status == 429:
        response = err.response
        wait = retry_after_seconds(getattr(response, "headers", None))
        return BrokerRateLimited(f"{what}: {detail}", retry_after=wait)
    if status >= 500:
        # The venue failed while handling it: an order may or may not have been placed.
        return BrokerTimeout(f"{what}: {detail}")
    if status == 401:
        return BrokerRejected(
            f"{what}: {detail} — the API key was refused; check the credentials Secret and paper vs live keys"
        )
    if 400 <= status < 500:
        return BrokerRejected(f"{what}: {detail}")
    return (BrokerTimeout if submit else BrokerError)(f"{what}: unexpected answer {detail}")


def order_status(raw_status: str, filled: Decimal, quantity: Decimal | None) -> OrderStatus:
    """Alpaca's order status in the OMS's vocabulary."""
    if raw_status in _TERMINAL:
        return _TERMINAL[raw_status]
    if raw_status == "pending_cancel":
        return OrderStatus.PENDING_CANCEL
    if raw_status not in _WORKING:
        log.warning("unknown Alpaca order status %r; treating the order as working", raw_status)
    if quantity is not None and quantity > 0 and filled >= quantity:
        return OrderStatus.FILLED
    return OrderStatus.PARTIALLY_FILLED if filled > 0 else OrderStatus.ACCEPTED


def _side(value: object) -> Side:
    # Activities may say sell_short; the OMS knows only the direction.
    return Side.SELL if str(value).lower().startswith("sell") else Side.BUY


class AlpacaBroker:
    """A Broker on Alpaca's Trading API. Takes over ``client``: sets its timeout and turns its retry off."""

    capabilities: ClassVar[BrokerCapabilities] = capabilities_of("alpaca")

    def __init__(
        self,
        client: TradingClient,
        *,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        clock: Clock | None = None,
        workers: int = 4,
    ) -> None:
        take_over(client, timeout)
        self.client = client
        self.clock = clock or WallClock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="alpaca")
        self._connected = False
        self._probe: asyncio.Task[bool] | None = None
        self._client_ids: dict[str, str] = {}

    @classmethod
    def create(
        cls,
        credentials: AlpacaCredentials,
        *,
        paper: bool,
        url_override: str | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        clock: Clock | None = None,
    ) -> AlpacaBroker:
        """An adapter on a new TradingClient (Alpaca's paper or live API, or ``url_override``)."""
        client = TradingClient(
            api_key=credentials.key_id,
            secret_key=credentials.secret_key,
            paper=paper,
            raw_data=True,
            url_override=url_override,
        )
        return cls(client, timeout=timeout, clock=clock)

    @classmethod
    def from_session(
        cls,
        session: LiveTradingSession,
        secrets_dir: Path | None,
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        clock: Clock | None = None,
    ) -> AlpacaBroker:
        """The adapter a LiveTradingSession describes: credentials from its Secret, endpoint from mode/endpoint."""
        spec = session.spec
        ref = spec.broker.credentials_secret_ref
        credentials = load_credentials(secrets_dir, ref.name if ref else None, env)
        paper, url = resolve_endpoint(spec.mode, spec.broker.endpoint)
        log.info(
            "Alpaca %s API at %s (key %s… from %s)",
            "paper" if paper else "LIVE",
            url or (BaseURL.TRADING_PAPER if paper else BaseURL.TRADING_LIVE).value,
            credentials.key_id[:4],
            credentials.source,
        )
        return cls.create(credentials, paper=paper, url_override=url, timeout=timeout, clock=clock)

    # --- calls ---------------------------------------------------------------------------------
    async def _call(self, what: str, fn: Callable[..., Any], *args: Any, submit: bool = False) -> Any:
        """Run one SDK call on the pool; map its failure onto the Broker errors and track connectivity."""
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._pool, lambda: fn(*args))
        except APIError as err:
            self._connected = True  # an HTTP answer is a working connection
            raise _api_error(err, what, submit=submit) from err
        except requests.exceptions.ConnectionError as err:
            if _never_sent(err):
                self._connected = False
                raise BrokerDisconnected(f"{what}: cannot reach Alpaca ({err})") from err
            # Sent, then the connection broke: the request may have been processed.
            raise BrokerTimeout(f"{what}: connection lost before Alpaca answered ({err})") from err
        except requests.exceptions.Timeout as err:
            raise BrokerTimeout(f"{what}: no answer from Alpaca in time ({err})") from err
        except (requests.exceptions.RequestException, ValueError) as err:
            # A garbled answer (not JSON, a redirect): after a submit, only a query can tell what happened.
            cls = BrokerTimeout if submit else BrokerError
            raise cls(f"{what}: unreadable answer from Alpaca ({err})") from err
        self._connected = True
        return result

    def _report(self, raw: Mapping[str, Any]) -> BrokerOrder:
        """An order object of the Trading API as a BrokerOrder (and remember its ids for the fills)."""
        filled = _dec(raw.get("filled_qty")) or ZERO
        quantity = _dec(raw.get("qty"))
        status = order_status(str(raw.get("status", "")), filled, quantity)
        reason = ""
        if raw.get("status") == "replaced":
            reason = f"replaced at Alpaca by {raw.get('replaced_by')}"
        elif status in (OrderStatus.REJECTED, OrderStatus.CANCELED, OrderStatus.EXPIRED):
            reason = f"{raw.get('status')} at Alpaca"
        report = BrokerOrder(
            client_order_id=str(raw.get("client_order_id") or ""),
            broker_order_id=str(raw["id"]),
            instrument=str(raw.get("symbol") or "").strip(),
            side=_side(raw.get("side")),
            # A notional (dollar) order has no qty until it fills; what filled is all that is known.
            quantity=quantity if quantity is not None else filled,
            filled_quantity=filled,
            status=status,
            limit_price=_dec(raw.get("limit_price")),
            reason=reason,
        )
        self._remember(report.broker_order_id, report.client_order_id)
        return report

    def _remember(self, broker_id: str, client_id: str) -> None:
        if not client_id:
            return
        self._client_ids[broker_id] = client_id
        while len(self._client_ids) > KNOWN_ORDERS:
            del self._client_ids[next(iter(self._client_ids))]

    # --- the Broker protocol -------------------------------------------------------------------
    def is_connected(self) -> bool:
        """The state the last call left (no I/O); while down, a background get_clock probe is started."""
        if not self._connected and (self._probe is None or self._probe.done()):
            try:
                self._probe = asyncio.get_running_loop().create_task(self.check_connection())
            except RuntimeError:
                pass  # no running loop: the next call tells
        return self._connected

    async def check_connection(self) -> bool:
        """Probe with the cheapest call (the market clock); True if Alpaca answered."""
        try:
            await self._call("clock", self.client.get_clock)
        except BrokerError as err:
            log.warning("Alpaca connectivity probe failed: %s", err)
        return self._connected

    async def connect(self, account: str | None = None) -> BrokerAccount:
        """Check the key and, if given, that it belongs to ``account`` (spec.account); the account."""
        try:
            raw = await self._call("account", self.client.get_account)
        except BrokerRejected as err:
            raise ConfigError(
                str(err),
                where="spec.broker.credentialsSecretRef",
                fix="use a key pair of this account, paper keys for mode paper and live keys for mode live",
            ) from err
        if account is not None and account not in (str(raw.get("account_number")), str(raw.get("id"))):
            raise ConfigError(
                f"the API key belongs to Alpaca account {raw.get('account_number')}, not {account}",
                where="spec.account",
                fix="set spec.account to the key's account number, or mount that account's key",
            )
        return self._account(raw)

    async def listed_instruments(self) -> frozenset[str]:
        """The symbols Alpaca lets this account trade: active US equities marked tradable (GET /v2/assets)."""
        request = GetAssetsRequest(status=AssetStatus.ACTIVE, asset_class=AssetClass.US_EQUITY)
        raw = await self._call("assets", self.client.get_all_assets, request)
        return frozenset(
            str(a["symbol"]).strip()
            for a in raw
            if isinstance(a, Mapping) and a.get("tradable") and a.get("symbol")
        )

    def _order_request(self, request: SubmitRequest) -> OrderRequest:
        if request.quantity <= 0 or (request.limit_price is not None and request.limit_price <= 0):
            raise BrokerRejected(
                f"submit {request.client_order_id}: quantity and limit price must be positive"
            )
        common = {
            "symbol": request.instrument,
            "qty": request.quantity,
            "side": OrderSide.BUY if request.side is Side.BUY else OrderSide.SELL,
            "time_in_force": TimeInForce.DAY,  # the Broker protocol's orders are day orders
            "client_order_id": request.client_order_id,
        }
        try:
            if request.limit_price is None:
                return MarketOrderRequest(**common)
            return LimitOrderRequest(**common, limit_price=request.limit_price)
        except PydanticValidationError as err:
            raise BrokerRejected(
                f"submit {request.client_order_id}: alpaca-py refused the order: {err}"
            ) from err

    async def submit(self, request: SubmitRequest) -> BrokerAck:
        """POST /v2/orders with the client order id; an unknown outcome is BrokerTimeout, never a resend."""
        what = f"submit {request.client_order_id}"
        order = self._order_request(request)
        raw = await self._call(what, self.client.submit_order, order, submit=True)
        try:
            report = self._report(raw)
        except (KeyError, TypeError, ValueError, BrokerError) as err:
            raise BrokerTimeout(f"{what}: Alpaca's answer is unreadable ({err}); query the order") from err
        return BrokerAck(request.client_order_id, report.broker_order_id, self.clock.now())

    async def cancel(self, broker_order_id: str) -> None:
        """DELETE /v2/orders/{id}; a closed or unknown order is BrokerRejected (the status settles it)."""
        try:
            await self._call(f"cancel {broker_order_id}", self.client.cancel_order_by_id, broker_order_id)
        except _NotFound as err:
            raise BrokerRejected(str(err)) from err

    async def get_order(self, client_order_id: str) -> BrokerOrder | None:
        """GET /v2/orders:by_client_order_id; None on 404 (the broker never received it)."""
        if not client_order_id:
            return None
        try:
            raw = await self._call(
                f"get order {client_order_id}", self.client.get_order_by_client_id, client_order_id
            )
        except _NotFound:
            return None
        return self._report(raw)

    async def open_orders(self) -> list[BrokerOrder]:
        """GET /v2/orders?status=open, oldest first, every page."""
        seen: dict[str, Mapping[str, Any]] = {}
        after: dt.datetime | None = None
        while True:
            query = GetOrdersRequest(
                status=QueryOrderStatus.OPEN, limit=ORDERS_PAGE, direction=Sort.ASC, nested=False, after=after
            )
            page = await self._call("open orders", self.client.get_orders, query)
            fresh = [o for o in page if str(o["id"]) not in seen]
            seen.update((str(o["id"]), o) for o in fresh)
            if len(page) < ORDERS_PAGE or not fresh:
                break
            last = page[-1]
            # `after` is exclusive: step back a microsecond so orders sharing the boundary time are not skipped.
            after = _ts(last.get("submitted_at") or last["created_at"]) - dt.timedelta(microseconds=1)
        return [self._report(o) for o in seen.values()]

    async def fills_since(self, cursor: str | None) -> list[BrokerFill]:
        """GET /v2/account/activities/FILL in ascending order after the activity id ``cursor``, every page."""
        activities: list[Mapping[str, Any]] = []
        token = cursor
        while True:
            params: dict[str, Any] = {"direction": "asc", "page_size": ACTIVITIES_PAGE}
            if token:
                params["page_token"] = token
            page = await self._call("fills", self.client.get, "/account/activities/FILL", params)
            activities += [a for a in page if a.get("activity_type", "FILL") == "FILL"]
            if len(page) < ACTIVITIES_PAGE:
                break
            token = str(page[-1]["id"])
        # An activity names the broker's order id only; the OMS keys orders by client order id.
        for order_id in dict.fromkeys(str(a["order_id"]) for a in activities):
            if order_id not in self._client_ids:
                await self._lookup(order_id)
        return [self._fill(a) for a in activities]

    async def _lookup(self, order_id: str) -> None:
        try:
            self._report(await self._call(f"get order {order_id}", self.client.get_order_by_id, order_id))
        except _NotFound:
            log.warning("Alpaca reports fills of order %s but cannot describe the order", order_id)

    def _fill(self, a: Mapping[str, Any]) -> BrokerFill:
        order_id = str(a["order_id"])
        fill = Fill(
            fill_id=str(a["id"]),
            client_order_id=self._client_ids.get(order_id, ""),
            broker_order_id=order_id,
            instrument=str(a["symbol"]).strip(),
            side=_side(a["side"]),
            quantity=_dec(a["qty"]) or ZERO,
            price=_dec(a["price"]) or ZERO,
            # Alpaca's equity trades carry no commission; regulatory fees come as separate FEE activities.
            fee=ZERO,
            ts=_ts(a["transaction_time"]),
        )
        return BrokerFill(fill, str(a["id"]))

    async def positions(self) -> dict[str, Decimal]:
        """GET /v2/positions: signed quantity by symbol (short positions negative)."""
        out: dict[str, Decimal] = {}
        for p in await self._call("positions", self.client.get_all_positions):
            qty = abs(_dec(p.get("qty")) or ZERO)
            if qty:
                out[str(p["symbol"]).strip()] = -qty if p.get("side") == "short" else qty
        return out

    async def account(self) -> BrokerAccount:
        """GET /v2/account: cash and equity."""
        return self._account(await self._call("account", self.client.get_account))

    def _account(self, raw: Mapping[str, Any]) -> BrokerAccount:
        cash, equity = _dec(raw.get("cash")), _dec(raw.get("equity"))
        if cash is None or equity is None:
            raise BrokerError("Alpaca's account has no cash or equity")
        return BrokerAccount(as_money(cash), as_money(equity), self.clock.now())

    def close(self) -> None:
        """Stop the pool and close the HTTP connections."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client._session.close()
