"""The gateway program (``kubequant gateway``): the desktop client's trading, over HTTPS, for the trading pod.

It runs on the Windows machine next to Tonghuashun's universal client or miniQMT and wraps
easytrader's client object (``easytrader.use('universal_client')`` / ``'miniqmt'``). Every call to
the client goes through one worker thread: a desktop client is driven one window at a time.

Idempotency: a submit carries the pod's client order id. Before the client is asked, the id is
written to a small SQLite file as *pending*; the client's entrust number (or its refusal) is
written after. A retried submit with the same id returns the first answer and never places a
second order. An entry left pending (the gateway died, or the client call failed, between the
request and the answer) is settled from the day's entrusts: exactly one unclaimed entrust with the
same code, side, quantity and price is that order; none means it was never placed; more than one
stays unknown (``UNKNOWN_OUTCOME``) until someone looks.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import logging
import sqlite3
import ssl
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from kubequant.errors import ConfigError
from kubequant.workloads.trading.adapters.gateway import rows
from kubequant.workloads.trading.adapters.gateway.protocol import (
    HTTP_STATUS,
    PREFIX,
    PROTOCOL_VERSION,
    ErrorCode,
    to_instrument,
    to_security,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
CLIENTS = ("universal", "miniqmt")
EASYTRADER_NAMES = {"universal": "universal_client", "miniqmt": "miniqmt"}


class GatewayError(Exception):
    """An answer with an error code (see protocol.ErrorCode)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- the durable record ---------------------------------------------------------------------------
SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    client_order_id TEXT PRIMARY KEY,
    instrument TEXT NOT NULL,
    side TEXT NOT NULL,
    quantity TEXT NOT NULL,
    limit_price TEXT,
    day TEXT NOT NULL,
    state TEXT NOT NULL,          -- pending, placed, rejected
    entrust_no TEXT UNIQUE,
    message TEXT NOT NULL DEFAULT '',
    filled TEXT NOT NULL DEFAULT '0',
    status TEXT NOT NULL DEFAULT 'accepted'
);
CREATE TABLE IF NOT EXISTS fills (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    entrust_no TEXT NOT NULL,
    instrument TEXT NOT NULL,
    side TEXT NOT NULL,
    quantity TEXT NOT NULL,
    price TEXT NOT NULL,
    ts TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class OrderRow:
    client_order_id: str
    instrument: str
    side: str
    quantity: Decimal
    limit_price: Decimal | None
    day: str
    state: str
    entrust_no: str | None
    message: str
    filled: Decimal
    status: str


class Store:
    """The gateway's SQLite file: client order id → entrust number, and every fill seen, numbered."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "PRAGMA synchronous=FULL"
        )  # an entry must survive a power cut before the client is asked
        self.db.executescript(SCHEMA)

    def order(self, cid: str) -> OrderRow | None:
        row = self.db.execute("SELECT * FROM orders WHERE client_order_id = ?", (cid,)).fetchone()
        return _order_row(row) if row else None

    def by_entrust(self, entrust_no: str) -> OrderRow | None:
        row = self.db.execute("SELECT * FROM orders WHERE entrust_no = ?", (entrust_no,)).fetchone()
        return _order_row(row) if row else None

    def pending(self) -> list[OrderRow]:
        return [_order_row(r) for r in self.db.execute("SELECT * FROM orders WHERE state = 'pending'")]

    def claimed(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT entrust_no FROM orders WHERE entrust_no IS NOT NULL")}

    def insert_pending(
        self, cid: str, instrument: str, side: str, qty: Decimal, limit: Decimal | None, day: str
    ) -> None:
        self.db.execute(
            "INSERT INTO orders (client_order_id, instrument, side, quantity, limit_price, day, state)"
            " VALUES (?, ?, ?, ?, ?, ?, 'pending')",
            (cid, instrument, side, str(qty), None if limit is None else str(limit), day),
        )

    def settle(self, cid: str, state: str, entrust_no: str | None = None, message: str = "") -> None:
        status = "rejected" if state == "rejected" else "accepted"
        self.db.execute(
            "UPDATE orders SET state = ?, entrust_no = ?, message = ?, status = ? WHERE client_order_id = ?",
            (state, entrust_no, message, status, cid),
        )

    def observe(self, cid: str, filled: Decimal, status: str) -> None:
        self.db.execute(
            "UPDATE orders SET filled = ?, status = ? WHERE client_order_id = ?", (str(filled), status, cid)
        )

    def add_fill(self, t: rows.Trade) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO fills (key, entrust_no, instrument, side, quantity, price, ts)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (t.key, t.entrust_no, t.instrument, t.side, str(t.quantity), str(t.price), t.ts.isoformat()),
        )

    def fills_after(self, seq: int, limit: int) -> list[tuple[Any, ...]]:
        return list(
            self.db.execute(
                "SELECT seq, key, entrust_no, instrument, side, quantity, price, ts FROM fills"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            )
        )

    def close(self) -> None:
        self.db.close()


def _order_row(r: tuple[Any, ...]) -> OrderRow:
    return OrderRow(
        client_order_id=r[0],
        instrument=r[1],
        side=r[2],
        quantity=Decimal(r[3]),
        limit_price=None if r[4] is None else Decimal(r[4]),
        day=r[5],
        state=r[6],
        entrust_no=r[7],
        message=r[8],
        filled=Decimal(r[9]),
        status=r[10],
    )


# --- the gateway ----------------------------------------------------------------------------------
FILLS_PAGE = 500


class Gateway:
    """The protocol's operations over one easytrader client object."""

    def __init__(
        self,
        client: Any,
        kind: str,
        store: Store,
        *,
        account: str,
        today: Callable[[], dt.date] | None = None,
    ) -> None:
        if kind not in CLIENTS:
            raise ConfigError(
                f"unknown client {kind!r}", where="--client", fix=f"use one of {', '.join(CLIENTS)}"
            )
        self.client = client
        self.kind = kind
        self.store = store
        self.account = account
        self.today = today or (lambda: dt.datetime.now(rows.CHINA).date())
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="desktop-client")
        self._submit_lock = asyncio.Lock()
        self._in_flight: set[str] = set()

    async def _client(self, what: str, fn: Callable[[], T]) -> T:
        """One client call on the client's thread; a failure is UNAVAILABLE (nothing was changed)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        except GatewayError:
            raise
        except Exception as err:
            log.warning("the %s client failed to %s: %r", self.kind, what, err)
            raise GatewayError(
                ErrorCode.UNAVAILABLE, f"the {self.kind} client failed to {what}: {err}"
            ) from err

    async def entrusts(self) -> list[rows.Entrust]:
        raw = await self._client("list the day's entrusts", lambda: list(self.client.today_entrusts))
        return [e for e in (rows.entrust(r) for r in raw) if e is not None]

    # --- submit -----------------------------------------------------------------------------------
    async def submit(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Place an order once per client order id: (the order, whether this answer is a replay)."""
        cid, instrument, side, qty, limit = _parse_submit(body)
        security = to_security(instrument)
        async with self._submit_lock:
            known = self.store.order(cid)
            if known is not None:
                if (known.instrument, known.side, known.quantity, known.limit_price) != (
                    instrument,
                    side,
                    qty,
                    limit,
                ):
                    raise GatewayError(
                        ErrorCode.DUPLICATE_ORDER,
                        f"client order id {cid} is already {known.side} {known.quantity} {known.instrument}"
                        f" (entrust {known.entrust_no}); nothing was placed",
                    )
                if known.state == "pending":
                    known = await self._resolve(known)
                return self._answer(known), True
            self.store.insert_pending(cid, instrument, side, qty, limit, self.today().isoformat())
            self._in_flight.add(cid)
            try:
                result = await asyncio.get_running_loop().run_in_executor(
                    self._pool, lambda: self._place(security, side, qty, limit)
                )
            except Exception as err:
                # The click may or may not have reached the client: settled from the entrusts later.
                log.error("submit %s: the client failed mid-order (%r); the outcome is unknown", cid, err)
                raise GatewayError(
                    ErrorCode.UNKNOWN_OUTCOME,
                    f"submit {cid}: the client failed mid-order ({err}); query the order",
                ) from err
            finally:
                self._in_flight.discard(cid)
            entrust_no = _entrust_no(result)
            if entrust_no is None:
                message = _message(result)
                self.store.settle(cid, "rejected", message=message)
                log.warning("submit %s refused by the client: %s", cid, message)
            else:
                self.store.settle(cid, "placed", entrust_no)
                log.info("submit %s placed as entrust %s", cid, entrust_no)
            row = self.store.order(cid)
            assert row is not None
            return self._answer(row), False

    def _place(self, security: str, side: str, qty: Decimal, limit: Decimal | None) -> Any:
        amount = int(qty)
        if limit is None:
            call = self.client.market_buy if side == "BUY" else self.client.market_sell
            return call(security, amount)
        call = self.client.buy if side == "BUY" else self.client.sell
        return call(security, float(limit), amount)

    def _answer(self, row: OrderRow) -> dict[str, Any]:
        if row.state == "rejected":
            raise GatewayError(ErrorCode.REJECTED, f"submit {row.client_order_id}: {row.message}")
        if row.state == "pending":
            raise GatewayError(
                ErrorCode.UNKNOWN_OUTCOME,
                f"submit {row.client_order_id}: the client has not answered yet; query the order",
            )
        return _report(row)

    async def _resolve(self, row: OrderRow) -> OrderRow:
        """Settle an entry left pending from the day's entrusts (see the module docstring)."""
        if row.client_order_id in self._in_flight:
            return row
        today = self.today().isoformat()
        claimed = self.store.claimed()
        matches = [
            e
            for e in await self.entrusts()
            if e.entrust_no not in claimed
            and (e.instrument, e.side, e.quantity) == (row.instrument, row.side, row.quantity)
            and (row.limit_price is None or e.price == row.limit_price)
        ]
        if len(matches) == 1:
            self.store.settle(row.client_order_id, "placed", matches[0].entrust_no)
            log.warning("pending %s settled as entrust %s", row.client_order_id, matches[0].entrust_no)
        elif not matches and row.day == today:
            self.store.settle(
                row.client_order_id, "rejected", message="never placed: no such entrust in the client"
            )
            log.warning("pending %s settled as never placed", row.client_order_id)
        elif not matches:
            self.store.settle(
                row.client_order_id, "rejected", message="never placed (a previous day's entry)"
            )
        else:
            log.error("pending %s matches %d entrusts; resolve it by hand", row.client_order_id, len(matches))
        found = self.store.order(row.client_order_id)
        assert found is not None
        return found

    async def resolve_pending(self) -> int:
        """Settle every entry left pending (at start-up); how many stay unknown."""
        left = 0
        for row in self.store.pending():
            left += (await self._resolve(row)).state == "pending"
        return left

    # --- queries ----------------------------------------------------------------------------------
    async def _refresh(self) -> dict[str, rows.Entrust]:
        """The day's entrusts by number; the store's last view of each known order is updated."""
        by_no = {e.entrust_no: e for e in await self.entrusts()}
        for e in by_no.values():
            row = self.store.by_entrust(e.entrust_no)
            if row is not None and (row.filled, row.status) != (e.filled, e.status):
                self.store.observe(row.client_order_id, e.filled, e.status)
        return by_no

    async def order(self, cid: str) -> dict[str, Any]:
        row = self.store.order(cid)
        if row is None:
            raise GatewayError(ErrorCode.NOT_FOUND, f"no order with client order id {cid}")
        if row.state == "pending":
            row = await self._resolve(row)
        if row.state == "pending":
            self._answer(row)  # raises UNKNOWN_OUTCOME
        if row.state == "placed":
            await self._refresh()
            row = self.store.order(cid) or row
            if (
                row.status in ("accepted", "partially_filled", "pending_cancel")
                and row.day != self.today().isoformat()
            ):
                # A day order the client no longer lists: it expired at the close.
                self.store.observe(cid, row.filled, "expired")
                row = self.store.order(cid) or row
        return _report(row)

    async def open_orders(self) -> list[dict[str, Any]]:
        out = []
        for e in (await self._refresh()).values():
            if e.status not in ("accepted", "partially_filled", "pending_cancel"):
                continue
            row = self.store.by_entrust(e.entrust_no)
            if row is not None:
                out.append(_report(row))
            else:  # placed outside this gateway (by hand in the client)
                out.append(
                    {
                        "clientOrderId": "",
                        "entrustNo": e.entrust_no,
                        "instrument": e.instrument,
                        "side": e.side or "BUY",
                        "quantity": str(e.quantity),
                        "filledQuantity": str(e.filled),
                        "limitPrice": None if e.price is None else str(e.price),
                        "status": e.status,
                        "reason": e.raw_status,
                    }
                )
        return out

    async def cancel(self, entrust_no: str) -> None:
        by_no = await self._refresh()
        found = by_no.get(entrust_no)
        if found is None:
            raise GatewayError(ErrorCode.NOT_FOUND, f"no entrust {entrust_no} today")
        if found.status not in ("accepted", "partially_filled"):
            raise GatewayError(
                ErrorCode.REJECTED, f"entrust {entrust_no} is {found.status}; it cannot be canceled"
            )
        result = await self._client(f"cancel {entrust_no}", lambda: self.client.cancel_entrust(entrust_no))
        if isinstance(result, dict) and result.get("success") is False:
            raise GatewayError(ErrorCode.REJECTED, f"cancel {entrust_no}: {_message(result)}")

    async def fills(self, after: int, limit: int = FILLS_PAGE) -> list[dict[str, Any]]:
        today = self.today()
        raw = await self._client("list the day's trades", lambda: list(self.client.today_trades))
        for t in (rows.trade(r, today) for r in raw):
            if t is not None:
                self.store.add_fill(t)
        out = []
        for seq, key, entrust_no, instrument, side, qty, price, ts in self.store.fills_after(after, limit):
            row = self.store.by_entrust(entrust_no) if entrust_no else None
            out.append(
                {
                    "cursor": str(seq),
                    "fillId": key,
                    "clientOrderId": row.client_order_id if row else "",
                    "entrustNo": entrust_no,
                    "instrument": instrument,
                    "side": side,
                    "quantity": qty,
                    "price": price,
                    "ts": ts,
                }
            )
        return out

    async def positions(self) -> list[dict[str, Any]]:
        raw = await self._client("list the positions", lambda: list(self.client.position))
        return [
            {
                "instrument": h.instrument,
                "quantity": str(h.quantity),
                "sellable": str(h.sellable),
                "price": None if h.price is None else str(h.price),
            }
            for h in (rows.holding(r) for r in raw)
            if h is not None and h.quantity
        ]

    async def balance(self) -> dict[str, Any]:
        raw = await self._client("read the balance", lambda: self.client.balance)
        try:
            cash, equity, account = rows.balance(raw)
        except ValueError as err:
            raise GatewayError(ErrorCode.UNAVAILABLE, str(err)) from err
        return {"account": account or self.account, "cash": str(cash), "equity": str(equity)}

    async def quotes(self, symbols: list[str]) -> dict[str, str]:
        """Last prices the client shows: the positions' market prices (the clients have no quote call)."""
        wanted = set(symbols)
        return {
            p["instrument"]: p["price"]
            for p in await self.positions()
            if p["price"] is not None and (not wanted or p["instrument"] in wanted)
        }

    def health(self) -> dict[str, Any]:
        return {"protocol": PROTOCOL_VERSION, "client": self.kind, "account": self.account, "status": "ok"}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.store.close()


def _parse_submit(body: dict[str, Any]) -> tuple[str, str, str, Decimal, Decimal | None]:
    try:
        cid = str(body["clientOrderId"])
        instrument = to_instrument(str(body["instrument"]))
        side = str(body["side"]).upper()
        qty = Decimal(str(body["quantity"]))
        limit = None if body.get("limitPrice") is None else Decimal(str(body["limitPrice"]))
    except (KeyError, InvalidOperation, ValueError) as err:
        raise GatewayError(
            ErrorCode.BAD_REQUEST, f"a submit needs clientOrderId, instrument, side, quantity: {err}"
        ) from err
    if not cid or len(cid) > 64:
        raise GatewayError(ErrorCode.BAD_REQUEST, "clientOrderId must be 1-64 characters")
    if side not in ("BUY", "SELL"):
        raise GatewayError(ErrorCode.BAD_REQUEST, f"side must be BUY or SELL, not {side!r}")
    if qty <= 0 or qty != qty.to_integral_value():
        raise GatewayError(
            ErrorCode.REJECTED, f"quantity must be a positive whole number of shares, not {qty}"
        )
    if limit is not None and limit <= 0:
        raise GatewayError(ErrorCode.REJECTED, f"limitPrice must be positive, not {limit}")
    try:
        to_security(instrument)
    except ValueError as err:
        raise GatewayError(ErrorCode.REJECTED, str(err)) from err
    return cid, instrument, side, qty, limit


def _entrust_no(result: Any) -> str | None:
    """The entrust number of a placed order (easytrader: ``{'entrust_no': ...}``; miniQMT: -1 on failure)."""
    if not isinstance(result, dict) or result.get("entrust_no") in (None, ""):
        return None
    no = result["entrust_no"]
    if isinstance(no, int) and no <= 0:
        return None
    return str(no).strip()


def _message(result: Any) -> str:
    if isinstance(result, dict):
        return str(result.get("message") or result.get("msg") or result)
    return f"the client answered {result!r}"


def _report(row: OrderRow) -> dict[str, Any]:
    return {
        "clientOrderId": row.client_order_id,
        "entrustNo": row.entrust_no or "",
        "instrument": row.instrument,
        "side": row.side,
        "quantity": str(row.quantity),
        "filledQuantity": str(row.filled),
        "limitPrice": None if row.limit_price is None else str(row.limit_price),
        "status": row.status,
        "reason": row.message,
    }


# --- HTTP -----------------------------------------------------------------------------------------
def error_response(code: ErrorCode, message: str) -> web.Response:
    return web.json_response({"error": {"code": code.value, "message": message}}, status=HTTP_STATUS[code])


@dataclass(frozen=True)
class Auth:
    """A bearer token, a TLS context requiring client certificates, or both."""

    token: str | None = None
    ssl_context: ssl.SSLContext | None = None


def server_tls(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The server's TLS context; with ``client_ca``, a client certificate signed by it is required (mTLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def make_app(gateway: Gateway, auth: Auth) -> web.Application:
    """The aiohttp application serving the protocol's /v1 routes."""
    if auth.token is None and (auth.ssl_context is None or auth.ssl_context.verify_mode != ssl.CERT_REQUIRED):
        raise ConfigError(
            "the gateway needs client authentication",
            where="--token-file / --client-ca",
            fix="give --token-file, or --tls-cert, --tls-key and --client-ca",
        )
    expected = f"Bearer {auth.token}".encode() if auth.token else None

    @web.middleware
    async def authenticate(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if expected is not None:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return error_response(ErrorCode.UNAUTHORIZED, "missing or wrong bearer token")
        try:
            return await handler(request)
        except GatewayError as err:
            return error_response(err.code, str(err))

    async def body(request: web.Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise GatewayError(ErrorCode.BAD_REQUEST, f"the body is not JSON: {err}") from err
        if not isinstance(data, dict):
            raise GatewayError(ErrorCode.BAD_REQUEST, "the body must be a JSON object")
        return data

    async def health(_: web.Request) -> web.Response:
        return web.json_response(gateway.health())

    async def submit(request: web.Request) -> web.Response:
        order, replayed = await gateway.submit(await body(request))
        return web.json_response({"order": order, "replayed": replayed}, status=200 if replayed else 201)

    async def order(request: web.Request) -> web.Response:
        return web.json_response({"order": await gateway.order(request.match_info["cid"])})

    async def open_orders(_: web.Request) -> web.Response:
        return web.json_response({"orders": await gateway.open_orders()})

    async def cancel(request: web.Request) -> web.Response:
        await gateway.cancel(request.match_info["entrust_no"])
        return web.json_response({"entrustNo": request.match_info["entrust_no"]}, status=202)

    async def fills(request: web.Request) -> web.Response:
        after = request.query.get("after", "0") or "0"
        if not after.isdigit():
            raise GatewayError(ErrorCode.BAD_REQUEST, f"after must be a cursor from a fill, not {after!r}")
        return web.json_response({"fills": await gateway.fills(int(after))})

    async def positions(_: web.Request) -> web.Response:
        return web.json_response({"positions": await gateway.positions()})

    async def balance(_: web.Request) -> web.Response:
        return web.json_response(await gateway.balance())

    async def quotes(request: web.Request) -> web.Response:
        symbols = [s for s in request.query.get("symbols", "").split(",") if s]
        return web.json_response({"quotes": await gateway.quotes(symbols)})

    app = web.Application(middlewares=[authenticate], client_max_size=64 * 1024)
    app.router.add_get(f"{PREFIX}/health", health)
    app.router.add_post(f"{PREFIX}/orders", submit)
    app.router.add_get(f"{PREFIX}/orders", open_orders)
    app.router.add_get(f"{PREFIX}/orders/by-client-id/{{cid}}", order)
    app.router.add_delete(f"{PREFIX}/orders/{{entrust_no}}", cancel)
    app.router.add_get(f"{PREFIX}/fills", fills)
    app.router.add_get(f"{PREFIX}/positions", positions)
    app.router.add_get(f"{PREFIX}/balance", balance)
    app.router.add_get(f"{PREFIX}/quotes", quotes)
    return app


async def start(gateway: Gateway, auth: Auth, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Settle pending entries, then listen; (the runner, the bound port)."""
    unknown = await gateway.resolve_pending()
    if unknown:
        log.error("%d submits stay unknown: check the client's entrusts by hand", unknown)
    runner = web.AppRunner(make_app(gateway, auth), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=auth.ssl_context)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    log.info("gateway protocol v%d for the %s client on %s:%d", PROTOCOL_VERSION, gateway.kind, host, bound)
    return runner, bound


def connect_client(kind: str, client_path: str | None, account: str) -> Any:
    """easytrader's client object for ``kind``, connected to the running desktop client (Windows only)."""
    try:
        import easytrader  # type: ignore[import-not-found,unused-ignore]
    except ImportError as err:
        raise ConfigError(
            f"the gateway needs easytrader ({err})",
            where="--client",
            fix="pip install 'kubequant[cn]' on the Windows machine",
        ) from err
    client = easytrader.use(EASYTRADER_NAMES[kind])
    try:
        if kind == "miniqmt":
            client.connect(miniqmt_path=client_path, stock_account=account)
        else:
            client.connect(client_path)
    except Exception as err:
        raise ConfigError(
            f"cannot connect to the {kind} client: {err}",
            where="--client-path",
            fix="start and log in to the desktop client first, and give its path (xiadan.exe, or miniQMT's userdata_mini)",
        ) from err
    return client


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(
            f"--listen {listen!r} is not HOST:PORT", where="--listen", fix="e.g. --listen 0.0.0.0:8443"
        )
    return host.strip("[]"), int(port)


def load_auth(token_file: Path | None, cert: Path | None, key: Path | None, client_ca: Path | None) -> Auth:
    """The gateway's authentication from the command line's files."""
    if (cert is None) != (key is None):
        raise ConfigError(
            "--tls-cert and --tls-key go together", where="--tls-cert", fix="give both, or neither"
        )
    if client_ca is not None and cert is None:
        raise ConfigError(
            "--client-ca needs the server's --tls-cert and --tls-key",
            where="--client-ca",
            fix="give all three",
        )
    token = None
    if token_file is not None:
        token = token_file.read_text().strip()
        if len(token) < 16:
            raise ConfigError(
                "the token is shorter than 16 characters",
                where="--token-file",
                fix="use e.g. `openssl rand -hex 32`",
            )
    context = server_tls(cert, key, client_ca) if cert is not None and key is not None else None
    auth = Auth(token, context)
    if token is None and client_ca is None:
        raise ConfigError(
            "the gateway needs client authentication",
            where="--token-file / --client-ca",
            fix="give --token-file, or --tls-cert, --tls-key and --client-ca",
        )
    return auth


async def serve_forever(gateway: Gateway, auth: Auth, host: str, port: int) -> None:
    runner, _ = await start(gateway, auth, host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        gateway.close()


def run_gateway(
    *,
    client: str,
    account: str,
    listen: str,
    state: Path,
    client_path: str | None,
    token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    client_ca: Path | None,
    client_object: Any = None,
) -> None:
    """``kubequant gateway``: check the options, connect the desktop client, serve until interrupted.

    ``client_object`` replaces the easytrader client (the tests' fake; there is no Windows here).
    """
    host, port = parse_listen(listen)
    auth = load_auth(token_file, tls_cert, tls_key, client_ca)
    if auth.ssl_context is None and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("serving the bearer token over plain HTTP on %s: give --tls-cert and --tls-key", host)
    obj = client_object if client_object is not None else connect_client(client, client_path, account)
    gateway = Gateway(obj, client, Store(state), account=account)
    try:
        asyncio.run(serve_forever(gateway, auth, host, port))
    except KeyboardInterrupt:
        log.info("gateway stopped")
