"""A fake Alpaca on 127.0.0.1: the Trading API and the market data API's latest trades, as documented.

It answers with the reference's example objects (``alpaca_responses/``, see its README) and keeps
orders, fill activities and positions the way the API describes them, so alpaca-py's real clients
run over real HTTP. Shared by the adapter's unit tests, the price source's tests and the pod's
end-to-end test (``tests/integration/trading/test_alpaca_pod.py``, which loads this file by path).
For the broker fault tests (``tests/integration/trading/test_broker_faults.py``,
``benchmarks/broker_faults.py``) it can also answer a seeded fraction of requests with a 5xx or a
429 with Retry-After (``set_faults``) and execute market orders as they are placed.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

RESPONSES = Path(__file__).parent / "alpaca_responses"
KEY, SECRET = "PKTEST0000000000", "secret-for-tests"


def payload(name: str) -> Any:
    return json.loads((RESPONSES / f"{name}.json").read_text())


def iso(ts: dt.datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


class FakeAlpaca:
    """The Trading API's orders, activities, positions and account, served as the reference shows them."""

    def __init__(self) -> None:
        self.orders: dict[str, dict[str, Any]] = {}
        self.activities: list[dict[str, Any]] = []
        self.positions: list[dict[str, Any]] = [payload("position")]
        self.account = payload("account")
        self.last_trades: dict[str, Decimal] = {}  # symbol -> price of its latest trade (market data API)
        # symbol -> tradable, the active US equities GET /v2/assets lists
        self.assets: dict[str, bool] = {s: True for s in ("AAPL", "MSFT", "TSLA", "BRK.B", "SPY")}
        self.requests: Counter[tuple[str, str]] = Counter()
        self.bodies: list[dict[str, Any]] = []
        # (method, route) -> steps run before the real answer: (status, body) answers instead; a float sleeps;
        # a string is one of the HTTP faults of set_faults ("503", "504", "429") for that request.
        self.script: dict[tuple[str, str], list[tuple[int, Any] | float | str]] = {}
        self.clock = dt.datetime(2024, 3, 1, 14, 30, tzinfo=dt.UTC)
        self.lock = threading.Lock()
        self.url = ""
        # HTTP-level faults (a TCP fault proxy cannot make them), drawn per request: see set_faults.
        self.server_error_rate = 0.0
        self.rate_limit_rate = 0.0
        self.retry_after = 1  # seconds, the Retry-After header of a 429
        self.fault_rng = random.Random(0)
        self.injected: Counter[tuple[str, str, str]] = Counter()  # (fault, method, route) -> count
        # A market order is executed in full at the symbol's last trade as it is placed (a liquid venue).
        self.fill_market_orders = False
        self.default_price = Decimal("100")
        # client order id -> time.monotonic() when the POST that placed it arrived (latency measurements).
        self.placed_at: dict[str, float] = {}

    def set_faults(self, server_errors: float = 0.0, rate_limits: float = 0.0, seed: int = 0) -> None:
        """Answer a fraction of requests with a 5xx or a 429 (Retry-After), drawn from a seeded generator.

        Half of the 5xx are answered before the request is processed (503: nothing was done), half
        after (504: the order is placed, only the answer is an error), as a gateway in front of a
        venue fails both ways. A 429 is answered before anything is done.
        """
        with self.lock:
            self.server_error_rate, self.rate_limit_rate = server_errors, rate_limits
            self.fault_rng = random.Random(seed)

    def _draw_fault(self) -> str | None:
        """The HTTP fault this request gets (holding the lock): '503', '504', '429' or None."""
        if not (self.server_error_rate or self.rate_limit_rate):
            return None
        draw = self.fault_rng.random()
        if draw < self.server_error_rate:
            return "503" if self.fault_rng.random() < 0.5 else "504"
        if draw < self.server_error_rate + self.rate_limit_rate:
            return "429"
        return None

    def tick(self) -> dt.datetime:
        self.clock += dt.timedelta(seconds=1)
        return self.clock

    @property
    def posts(self) -> int:
        return self.requests["POST", "/v2/orders"]

    def add_order(
        self, client_order_id: str, symbol: str, qty: str, side: str, **fields: Any
    ) -> dict[str, Any]:
        now = iso(self.tick())
        order = copy.deepcopy(payload("order")) | {
            "id": str(uuid.uuid4()),
            "client_order_id": client_order_id,
            "created_at": now,
            "updated_at": now,
            "submitted_at": now,
            "symbol": symbol,
            "notional": None,
            "qty": qty,
            "side": side,
            "status": "accepted",
        }
        order.update(fields)
        self.orders[order["id"]] = order
        return order

    def fill(self, order: dict[str, Any], qty: str, price: str) -> dict[str, Any]:
        """Execute part of an order: a FILL activity, the order's filled quantity and status."""
        ts = self.tick()
        cum = Decimal(order["filled_qty"]) + Decimal(qty)
        leaves = Decimal(order["qty"]) - cum
        order["filled_qty"] = str(cum)
        order["status"] = "filled" if leaves == 0 else "partially_filled"
        activity = payload("activity_fill") | {
            "id": f"{ts:%Y%m%d%H%M%S}{ts.microsecond // 1000:03d}::{uuid.uuid4()}",
            "cum_qty": str(cum),
            "leaves_qty": str(leaves),
            "price": price,
            "qty": qty,
            "side": order["side"],
            "symbol": order["symbol"],
            "transaction_time": iso(ts),
            "order_id": order["id"],
            "type": "fill" if leaves == 0 else "partial_fill",
        }
        self.activities.append(activity)
        self.move_position(order["symbol"], Decimal(qty) if order["side"] == "buy" else -Decimal(qty))
        return activity

    def move_position(self, symbol: str, delta: Decimal) -> None:
        """Change a position by a signed quantity, keeping the documented Position object's fields."""
        held = next((p for p in self.positions if p["symbol"].strip() == symbol), None)
        signed = Decimal(0)
        if held is not None:
            signed = Decimal(held["qty"]) * (-1 if held["side"] == "short" else 1)
            self.positions.remove(held)
        signed += delta
        if signed:
            qty = str(abs(signed))
            position = copy.deepcopy(payload("position")) | {
                "symbol": symbol,
                "qty": qty,
                "qty_available": qty,
            }
            self.positions.append(position | {"side": "long" if signed > 0 else "short"})

    def by_client_id(self, cid: str) -> dict[str, Any] | None:
        return next((o for o in self.orders.values() if o["client_order_id"] == cid), None)

    # --- the routes -----------------------------------------------------------------------------
    def handle(
        self, method: str, path: str, query: dict[str, str], body: dict[str, Any] | None
    ) -> tuple[int, Any]:
        route = "/v2/orders/{id}" if path.startswith("/v2/orders/") else path
        with self.lock:
            self.requests[method, route] += 1
            steps = self.script.get((method, route), [])
            step = steps.pop(0) if steps else None
            fault = step if isinstance(step, str) else self._draw_fault() if step is None else None
            if fault is not None:
                self.injected[fault, method, route] += 1
        if fault == "429":
            return 429, {"code": 42910000, "message": "rate limit exceeded"}
        if fault == "503":
            return 503, {"code": 50310000, "message": "service unavailable"}
        delay = 0.0
        if isinstance(step, float):
            delay = step
        elif isinstance(step, tuple):
            return step
        with self.lock:
            answer = self.answer(method, route, path, query, body)
        if delay:
            time.sleep(delay)  # the order is placed; only the answer is late
        if fault == "504":  # processed (an order placed), but the gateway answers an error
            return 504, {"code": 50410000, "message": "gateway timeout"}
        return answer

    def answer(
        self, method: str, route: str, path: str, query: dict[str, str], body: dict[str, Any] | None
    ) -> tuple[int, Any]:
        not_found = (404, payload("error_order_not_found"))
        if (method, route) == ("POST", "/v2/orders"):
            assert body is not None
            self.bodies.append(body)
            if self.by_client_id(body["client_order_id"]) is not None:
                return 422, payload("error_duplicate_client_order_id")
            order = self.add_order(
                body["client_order_id"],
                body["symbol"],
                str(body["qty"]),
                body["side"],
                type=body["type"],
                order_type=body["type"],
                time_in_force=body["time_in_force"],
                limit_price=None if body.get("limit_price") is None else str(body["limit_price"]),
            )
            self.placed_at[order["client_order_id"]] = time.monotonic()
            if self.fill_market_orders and body["type"] == "market":
                price = self.last_trades.get(body["symbol"], self.default_price)
                self.fill(order, order["qty"], str(price))
            return 200, order
        if (method, route) == ("GET", "/v2/orders:by_client_order_id"):
            order = self.by_client_id(query["client_order_id"])
            return (200, order) if order else not_found
        if route == "/v2/orders/{id}":
            order = self.orders.get(path.rsplit("/", 1)[1])
            if order is None:
                return not_found
            if method == "DELETE":
                if order["status"] in ("filled", "canceled", "expired", "rejected"):
                    return 422, payload("error_not_cancelable")
                order["status"] = "pending_cancel"
                return 204, None
            return 200, order
        if (method, route) == ("GET", "/v2/orders"):
            assert query["status"] == "open" and query["direction"] == "asc"
            after = dt.datetime.fromisoformat(query["after"]) if "after" in query else None
            rows = [
                o
                for o in sorted(self.orders.values(), key=lambda o: o["submitted_at"])
                if o["status"] not in ("filled", "canceled", "expired", "rejected", "replaced")
                and (after is None or dt.datetime.fromisoformat(o["submitted_at"]) > after)
            ]
            return 200, rows[: int(query["limit"])]
        if (method, route) == ("GET", "/v2/account/activities/FILL"):
            assert query["direction"] == "asc"
            rows = self.activities
            if "page_token" in query:
                ids = [a["id"] for a in rows]
                rows = rows[ids.index(query["page_token"]) + 1 :]
            return 200, rows[: int(query["page_size"])]
        if (method, route) == ("GET", "/v2/positions"):
            return 200, self.positions
        if (method, route) == ("GET", "/v2/account"):
            return 200, self.account
        if (method, route) == ("GET", "/v2/assets"):
            assert query.get("status") == "active" and query.get("asset_class") == "us_equity", query
            example = payload("asset")
            return 200, [
                example
                | {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, s)), "symbol": s, "name": s, "tradable": t}
                for s, t in self.assets.items()
            ]
        if (method, route) == ("GET", "/v2/clock"):
            return 200, payload("clock")
        if (method, route) == ("GET", "/v2/stocks/trades/latest"):
            # The market data API: symbols it has no trade for are left out of the answer.
            example = payload("latest_trades")["trades"]["AAPL"]
            trades = {
                s: example | {"p": float(self.last_trades[s]), "t": iso(self.clock)}
                for s in query["symbols"].split(",")
                if s in self.last_trades
            }
            return 200, {"trades": trades}
        return 404, {"code": 40410000, "message": f"no route {method} {path}"}


def _handler(api: FakeAlpaca) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            if (
                self.headers.get("APCA-API-KEY-ID") != KEY
                or self.headers.get("APCA-API-SECRET-KEY") != SECRET
            ):
                status, answer = 401, payload("error_unauthorized")
            else:
                status, answer = api.handle(self.command, url.path, query, body)
            data = b"" if answer is None else json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", str(api.retry_after))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (the timeout tests)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args: object) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client (or a fault proxy) that resets the connection mid-request is not the fake's error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def serve(fake: FakeAlpaca) -> Iterator[FakeAlpaca]:
    """Serve ``fake`` on a free loopback port (``fake.url``) until the block ends."""
    server = _Server(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
