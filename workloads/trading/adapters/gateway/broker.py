"""The gateway adapter: the Broker protocol over the gateway program's HTTPS API (``kubequant gateway``).

The trading pod talks to a gateway next to a Windows desktop client (Tonghuashun's universal
client, miniQMT). ``spec.broker.endpoint`` is the gateway's URL; the credentials Secret (mounted as
files) holds either a bearer ``token``, or a client certificate for mutual TLS (``tls.crt``,
``tls.key``) and the CA that signed the gateway's certificate (``ca.crt``).

Errors: the gateway's JSON error codes map onto the Broker errors (protocol.ErrorCode); a refused
connection is BrokerDisconnected; a submit that gets no answer in time, or a broken answer, is
BrokerTimeout and is resolved by a query by client order id (the gateway's durable map), never
resent. The gateway itself never places an id twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, ClassVar

import aiohttp

from kubequant.api.broker_capabilities import BrokerCapabilities, capabilities_of
from kubequant.api.live import BrokerType, LiveTradingSession
from kubequant.errors import BrokerError, ConfigError
from kubequant.workloads.trading.adapters.base import (
    BrokerAccount,
    BrokerAck,
    BrokerDisconnected,
    BrokerFill,
    BrokerOrder,
    BrokerRejected,
    BrokerTimeout,
    DuplicateOrder,
    SubmitRequest,
)
from kubequant.workloads.trading.adapters.gateway.protocol import (
    PREFIX,
    PROTOCOL_VERSION,
    ErrorCode,
    to_security,
)
from kubequant.workloads.trading.model.domain import ZERO, Clock, Fill, Side, WallClock, as_money
from kubequant.workloads.trading.model.orders import OrderStatus

log = logging.getLogger(__name__)

SECRET_TOKEN = "token"
SECRET_CERT = "tls.crt"
SECRET_KEY = "tls.key"
SECRET_CA = "ca.crt"
DEFAULT_TIMEOUT = 10.0  # seconds for one call: a desktop client answers in about a second per window

_STATUS = {
    "accepted": OrderStatus.ACCEPTED,
    "partially_filled": OrderStatus.PARTIALLY_FILLED,
    "filled": OrderStatus.FILLED,
    "pending_cancel": OrderStatus.PENDING_CANCEL,
    "canceled": OrderStatus.CANCELED,
    "rejected": OrderStatus.REJECTED,
    "expired": OrderStatus.EXPIRED,
}


class _NotFound(BrokerRejected):
    """The gateway answered NOT_FOUND."""


@dataclass(frozen=True)
class GatewayCredentials:
    """A bearer token or a client certificate (mutual TLS), and the CA of the gateway's certificate."""

    token: str | None = field(default=None, repr=False)
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    source: str = "arguments"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client's TLS context: the gateway's certificate checked against ``ca``, ours presented."""
        if self.ca is None and self.cert is None:
            return None
        context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert is not None and self.key is not None:
            context.load_cert_chain(self.cert, self.key)
        return context


def load_credentials(secrets_dir: Path | None, secret_name: str | None = None) -> GatewayCredentials:
    """The mounted Secret's ``token``, or ``tls.crt`` + ``tls.key`` (+ ``ca.crt``); both may be given."""
    where = f"spec.broker.credentialsSecretRef: Secret {secret_name or 'NAME'}"
    fix = (
        f"kubectl create secret generic {secret_name or 'NAME'} --from-file=token=./gateway-token, or for mutual TLS"
        f" --from-file=tls.crt=./pod.crt --from-file=tls.key=./pod.key --from-file=ca.crt=./gateway-ca.crt"
    )
    if secrets_dir is None or not secrets_dir.is_dir():
        raise ConfigError("the gateway's credentials Secret is not mounted", where=where, fix=fix)

    def path(key: str) -> Path | None:
        p = secrets_dir / key
        return p if p.is_file() else None

    token_path, cert, key, ca = path(SECRET_TOKEN), path(SECRET_CERT), path(SECRET_KEY), path(SECRET_CA)
    token = token_path.read_text().strip() if token_path else None
    if (cert is None) != (key is None):
        missing = SECRET_KEY if key is None else SECRET_CERT
        raise ConfigError(
            f"the client certificate needs {missing!r} too", where=f"{where} key {missing}", fix=fix
        )
    if not token and cert is None:
        raise ConfigError(
            f"the Secret has neither {SECRET_TOKEN!r} nor {SECRET_CERT!r}/{SECRET_KEY!r} (looked in {secrets_dir})",
            where=where,
            fix=fix,
        )
    return GatewayCredentials(token or None, cert, key, ca, str(secrets_dir))


def _dec(value: Any, what: str) -> Decimal:
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise BrokerError(f"the gateway sent {value!r} as {what}") from None


class GatewayBroker:
    """A Broker on a kubequant gateway (protocol v1)."""

    capabilities: ClassVar[BrokerCapabilities] = capabilities_of(BrokerType.GATEWAY)

    def __init__(
        self,
        endpoint: str,
        credentials: GatewayCredentials,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Clock | None = None,
        universe: Iterable[str] = (),
    ) -> None:
        self.universe = frozenset(universe)
        self.endpoint = endpoint.rstrip("/").removesuffix(PREFIX)
        self.credentials = credentials
        self.timeout = timeout
        self.clock = clock or WallClock()
        self._session: aiohttp.ClientSession | None = None
        self._connected = False
        self._ssl = credentials.ssl_context()

    @classmethod
    def from_session(
        cls, session: LiveTradingSession, secrets_dir: Path | None, **kwargs: Any
    ) -> GatewayBroker:
        """The adapter a session describes: ``spec.broker.endpoint`` and its credentials Secret."""
        spec = session.spec
        if spec.broker.endpoint is None:
            raise ConfigError(
                "broker type gateway needs the gateway's URL",
                where="spec.broker.endpoint",
                fix="set spec.broker.endpoint to https://HOST:PORT of `kubequant gateway`",
            )
        ref = spec.broker.credentials_secret_ref
        credentials = load_credentials(secrets_dir, ref.name if ref else None)
        log.info("gateway at %s (credentials from %s)", spec.broker.endpoint, credentials.source)
        kwargs.setdefault("universe", spec.universe.instruments or ())
        return cls(spec.broker.endpoint, credentials, **kwargs)

    # --- HTTP -------------------------------------------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self.credentials.token}"} if self.credentials.token else {}
            self._session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True, limit=8),
            )
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        submit: bool = False,
    ) -> Any:
        """One request; its failure as a Broker error, connectivity tracked."""
        try:
            async with self._http().request(
                method, f"{self.endpoint}{PREFIX}{path}", json=json, params=params
            ) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError as err:
                    raise (BrokerTimeout if submit else BrokerError)(
                        f"{what}: the gateway's answer is not JSON ({err})"
                    ) from err
                status = response.status
        except aiohttp.ClientConnectorError as err:  # refused, DNS, TLS handshake: nothing was sent
            self._connected = False
            raise BrokerDisconnected(f"{what}: cannot reach the gateway at {self.endpoint} ({err})") from err
        except TimeoutError as err:
            raise BrokerTimeout(f"{what}: no answer from the gateway in {self.timeout:g}s") from err
        except aiohttp.ClientError as err:  # sent, then the connection broke
            raise BrokerTimeout(f"{what}: connection lost before the gateway answered ({err})") from err
        self._connected = True
        if status < 400:
            return body
        error = body.get("error", {}) if isinstance(body, dict) else {}
        code, message = str(error.get("code", "")), str(error.get("message", body))
        detail = f"{what}: gateway {status} {code}: {message}"
        if code == ErrorCode.NOT_FOUND:
            raise _NotFound(detail)
        if code == ErrorCode.DUPLICATE_ORDER:
            raise DuplicateOrder(detail)
        if code == ErrorCode.UNAVAILABLE:
            raise BrokerDisconnected(detail)
        if code == ErrorCode.UNKNOWN_OUTCOME or status >= 500:
            raise BrokerTimeout(detail)
        raise BrokerRejected(detail)

    def _report(self, raw: Mapping[str, Any]) -> BrokerOrder:
        status = _STATUS.get(str(raw.get("status")))
        if status is None:
            log.warning("unknown gateway order status %r; treating the order as working", raw.get("status"))
            status = OrderStatus.ACCEPTED
        limit = raw.get("limitPrice")
        return BrokerOrder(
            client_order_id=str(raw.get("clientOrderId") or ""),
            broker_order_id=str(raw["entrustNo"]),
            instrument=str(raw["instrument"]),
            side=Side.SELL if raw.get("side") == "SELL" else Side.BUY,
            quantity=_dec(raw["quantity"], "a quantity"),
            filled_quantity=_dec(raw.get("filledQuantity", "0"), "a quantity"),
            status=status,
            limit_price=None if limit is None else _dec(limit, "a price"),
            reason=str(raw.get("reason") or ""),
        )

    # --- the Broker protocol ----------------------------------------------------------------------
    def is_connected(self) -> bool:
        """The state the last call left (no I/O)."""
        return self._connected

    async def connect(self, account: str | None = None) -> BrokerAccount:
        """Check the protocol version, the credentials, and that the gateway trades ``account`` (spec.account)."""
        try:
            health = await self._call("GET", "/health", "health")
        except BrokerRejected as err:
            raise ConfigError(
                str(err),
                where="spec.broker.credentialsSecretRef",
                fix="mount the gateway's token, or a client certificate its --client-ca signed",
            ) from err
        if health.get("protocol") != PROTOCOL_VERSION:
            raise ConfigError(
                f"the gateway speaks protocol {health.get('protocol')}, this pod speaks {PROTOCOL_VERSION}",
                where="spec.broker.endpoint",
                fix="run the gateway of the same kubequant version as the pod's image",
            )
        if account is not None and str(health.get("account")) != account:
            raise ConfigError(
                f"the gateway trades account {health.get('account')}, not {account}",
                where="spec.account",
                fix="set spec.account to the gateway's --account, or point spec.broker.endpoint at that account's gateway",
            )
        return await self.account()

    async def listed_instruments(self) -> frozenset[str]:
        """The session's universe: the desktop clients do not list what an account may trade."""
        if not self.universe:
            raise ConfigError(
                "the desktop clients cannot list what an account may trade",
                where="spec.universe.instruments",
                fix="list the instruments the session trades (e.g. [SH600519, SZ000001])",
            )
        for instrument in self.universe:
            try:
                to_security(instrument)
            except ValueError as err:
                raise ConfigError(
                    str(err), where="spec.universe.instruments", fix="use A-share codes"
                ) from err
        return self.universe

    async def submit(self, request: SubmitRequest) -> BrokerAck:
        """POST /v1/orders; a replayed id returns the first answer; an unknown outcome is BrokerTimeout."""
        what = f"submit {request.client_order_id}"
        body = {
            "clientOrderId": request.client_order_id,
            "instrument": request.instrument,
            "side": request.side.value,
            "quantity": str(request.quantity),
            "limitPrice": None if request.limit_price is None else str(request.limit_price),
        }
        raw = await self._call("POST", "/orders", what, json=body, submit=True)
        try:
            report = self._report(raw["order"])
        except (KeyError, TypeError, BrokerError) as err:
            raise BrokerTimeout(
                f"{what}: the gateway's answer is unreadable ({err}); query the order"
            ) from err
        return BrokerAck(request.client_order_id, report.broker_order_id, self.clock.now())

    async def cancel(self, broker_order_id: str) -> None:
        """DELETE /v1/orders/{entrust number}; a closed or unknown order is BrokerRejected."""
        try:
            await self._call("DELETE", f"/orders/{broker_order_id}", f"cancel {broker_order_id}")
        except _NotFound as err:
            raise BrokerRejected(str(err)) from err

    async def get_order(self, client_order_id: str) -> BrokerOrder | None:
        """GET /v1/orders/by-client-id/{id}; None if the gateway never received it."""
        if not client_order_id:
            return None
        try:
            raw = await self._call(
                "GET", f"/orders/by-client-id/{client_order_id}", f"get order {client_order_id}"
            )
        except _NotFound:
            return None
        return self._report(raw["order"])

    async def open_orders(self) -> list[BrokerOrder]:
        """GET /v1/orders: the day's working entrusts, including ones entered by hand in the client."""
        return [self._report(o) for o in (await self._call("GET", "/orders", "open orders"))["orders"]]

    async def fills_since(self, cursor: str | None) -> list[BrokerFill]:
        """GET /v1/fills?after=cursor, every page (the gateway numbers each trade it sees once)."""
        out: list[BrokerFill] = []
        after = cursor or "0"
        while True:
            page = (await self._call("GET", "/fills", "fills", params={"after": after}))["fills"]
            for f in page:
                fill = Fill(
                    fill_id=str(f["fillId"]),
                    client_order_id=str(f.get("clientOrderId") or ""),
                    broker_order_id=str(f.get("entrustNo") or ""),
                    instrument=str(f["instrument"]),
                    side=Side.SELL if f["side"] == "SELL" else Side.BUY,
                    quantity=_dec(f["quantity"], "a quantity"),
                    price=_dec(f["price"], "a price"),
                    fee=ZERO,  # the clients' trade grids do not split fees per trade reliably
                    ts=dt.datetime.fromisoformat(str(f["ts"])),
                )
                out.append(BrokerFill(fill, str(f["cursor"])))
            if not page or len(page) < 500:
                return out
            after = str(page[-1]["cursor"])

    async def positions(self) -> dict[str, Decimal]:
        """GET /v1/positions: quantity by instrument (A-share cash accounts hold no shorts)."""
        rows = (await self._call("GET", "/positions", "positions"))["positions"]
        return {
            str(p["instrument"]): _dec(p["quantity"], "a quantity")
            for p in rows
            if _dec(p["quantity"], "a quantity")
        }

    async def account(self) -> BrokerAccount:
        """GET /v1/balance: cash and total assets."""
        raw = await self._call("GET", "/balance", "balance")
        return BrokerAccount(
            as_money(_dec(raw["cash"], "cash")), as_money(_dec(raw["equity"], "equity")), self.clock.now()
        )

    async def quotes(self, symbols: Iterable[str]) -> dict[str, Decimal]:
        """GET /v1/quotes: the last prices the client shows (its positions' market prices)."""
        raw = await self._call("GET", "/quotes", "quotes", params={"symbols": ",".join(sorted(symbols))})
        return {str(k): _dec(v, "a price") for k, v in raw["quotes"].items()}

    def close(self) -> None:
        """Close the HTTP connections (from a running loop, or a new one)."""
        session, self._session = self._session, None
        if session is None or session.closed:
            return
        try:
            asyncio.get_running_loop().create_task(session.close())
        except RuntimeError:  # no running loop: the runtime's loop has ended
            try:
                asyncio.run(session.close())
            except RuntimeError as err:  # the session's own loop is closed: its sockets went with it
                log.debug("gateway session closed with its loop (%s)", err)


class GatewayPrices:
    """A RefreshedPrices over the gateway's quotes: a cache the runtime's housekeeping refreshes."""

    def __init__(self, broker: GatewayBroker, *, symbols: Iterable[str] = (), max_age: float = 60.0) -> None:
        self.broker = broker
        self.max_age = max_age
        self._watched: dict[str, None] = dict.fromkeys(symbols)
        self._prices: dict[str, tuple[Decimal, float]] = {}
        self._task: asyncio.Task[int] | None = None

    def watch(self, *symbols: str) -> None:
        self._watched.update(dict.fromkeys(symbols))

    def last_price(self, instrument: str) -> Decimal | None:
        quote = self._prices.get(instrument)
        if quote is None:
            self.watch(instrument)
            return None
        if time.monotonic() - quote[1] > self.max_age:
            return None  # refreshes have been failing: a stale price must not pass the price checks
        return quote[0]

    async def refresh(self) -> int:
        try:
            got = await self.broker.quotes(self._watched)
        except BrokerError as err:
            log.warning("gateway quotes failed: %s", err)
            return 0
        now = time.monotonic()
        for symbol, price in got.items():
            self._prices[symbol] = (price, now)
        return len(got)

    def refresh_soon(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.refresh())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
