"""A fake Xueqiu (雪球) on 127.0.0.1: the web API routes easytrader's XueQiuTrader calls, with its payloads.

Routes (easytrader/config/xq.json): ``/cubes/rebalancing/current.json`` (``last_rb``,
``last_success_rb``), ``/cubes/quote.json`` (``net_value``), ``/stock/p/search.json`` (``stocks``),
``/cubes/rebalancing/create.json`` (the rebalance POST, a form with ``cash``, ``holdings`` as a JSON
string, ``cube_symbol``, ``segment``, ``comment``) and ``/cubes/rebalancing/history.json`` (pages of
rebalances, newest first, each with its ``rebalancing_histories`` entries). Field names follow
easytrader's code and the entries Xueqiu's history returns (e.g. ``prev_weight_adjusted``,
``prev_volume``, ``target_weight``, millisecond ``updated_at``).

The portfolio is kept the way Xueqiu keeps a cube: net value 1.0 at the start, holdings as
``volume`` (shares per unit of starting value) and a cash value; a rebalance to weight ``w`` sets
``volume = w/100 × net value / price`` (8 decimals, as Xueqiu prints it). Holdings a rebalance
does not mark ``proactive`` keep their volume.

Faults: ``expire()`` (every route answers 400016, Xueqiu's login error), ``script`` (a route's next
answers replaced, or a float: the rebalance is applied and the answer comes that many seconds late),
``fail_next`` (the next rebalance is created with status failed), ``market_open = False`` (rebalances
stay pending until ``execute_pending()``).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import ROUND_HALF_EVEN, Decimal
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CODE = "ZH1000001"
TOKEN = "tok-0001"
COOKIES = f"xq_a_token={TOKEN}; u=8000001; device_id=abc"
VOLUME_STEP = Decimal("0.00000001")
WEIGHT_STEP = Decimal("0.01")
LOGIN_ERROR = {
    "error_code": "400016",
    "error_description": "遇到错误，请刷新页面或者重新登录帐号后再试",
}


def num(value: Decimal) -> float:
    return float(value)


class FakeXueqiu:
    """One cube (``CODE``), the stocks search knows, and the rebalance history."""

    def __init__(self) -> None:
        self.token = TOKEN
        # symbol -> stock as search.json returns it (flag 1: tradable)
        self.stocks: dict[str, dict[str, Any]] = {}
        for i, (symbol, name, price) in enumerate(
            [
                ("SH600519", "贵州茅台", "1500"),
                ("SZ000001", "平安银行", "12.34"),
                ("SH601318", "中国平安", "40"),
            ]
        ):
            self.add_stock(symbol, name, price, stock_id=1000000 + i)
        self.cash_value = Decimal(1)
        self.volumes: dict[str, Decimal] = {}
        self.rebalances: list[dict[str, Any]] = []  # oldest first
        self.next_rb = 90_000_001
        self.next_entry = 230_000_001
        self.market_open = True
        self.fail_next: str | None = None
        self.requests: Counter[tuple[str, str]] = Counter()
        self.forms: list[dict[str, Any]] = []
        self.cookies_seen: list[str] = []
        self.script: dict[tuple[str, str], list[tuple[int, Any] | float]] = {}
        self.ms = 1_733_100_000_000
        self.lock = threading.Lock()
        self.url = ""

    # --- state ---------------------------------------------------------------------------------
    def add_stock(self, symbol: str, name: str, price: str, *, stock_id: int, flag: int = 1) -> None:
        self.stocks[symbol] = {
            "code": symbol,
            "name": name,
            "enName": "",
            "hasexist": "false",
            "flag": flag,
            "type": 11,
            "current": float(price),
            "chg": 0.0,
            "percent": 0.0,
            "stock_id": stock_id,
            "ind_id": 100001,
            "ind_name": "行业",
            "ind_color": "#ffffff",
        }

    def price(self, symbol: str) -> Decimal:
        return Decimal(str(self.stocks[symbol]["current"]))

    def set_price(self, symbol: str, price: str) -> None:
        self.stocks[symbol]["current"] = float(price)

    def net_value(self) -> Decimal:
        return self.cash_value + sum((v * self.price(s) for s, v in self.volumes.items()), Decimal(0))

    def weight(self, symbol: str) -> Decimal:
        return (self.volumes.get(symbol, Decimal(0)) * self.price(symbol) / self.net_value() * 100).quantize(
            WEIGHT_STEP
        )

    def tick(self) -> int:
        self.ms += 1000
        return self.ms

    def expire(self) -> None:
        """Xueqiu stops accepting the cookie."""
        self.token = "expired-" + self.token

    @property
    def posts(self) -> int:
        return self.requests["POST", "/cubes/rebalancing/create.json"]

    def by_comment(self, text: str) -> dict[str, Any] | None:
        return next((rb for rb in self.rebalances if text in (rb.get("comment") or "")), None)

    def holdings_view(self, volumes: dict[str, Decimal]) -> list[dict[str, Any]]:
        net = self.net_value()
        return [
            {
                "stock_id": self.stocks[s]["stock_id"],
                "weight": num((v * self.price(s) / net * 100).quantize(WEIGHT_STEP)),
                "segment_name": self.stocks[s]["ind_name"],
                "segment_id": self.stocks[s]["ind_id"],
                "stock_name": self.stocks[s]["name"],
                "stock_symbol": s,
                "segment_color": self.stocks[s]["ind_color"],
                "proactive": False,
                "volume": num(v),
            }
            for s, v in volumes.items()
            if v
        ]

    def cash_weight(self) -> Decimal:
        return (self.cash_value / self.net_value() * 100).quantize(WEIGHT_STEP)

    # --- rebalancing ---------------------------------------------------------------------------
    def rebalance(
        self, holdings: list[dict[str, Any]], comment: str, *, category: str = "user_rebalancing"
    ) -> dict[str, Any]:
        """Create a rebalance to ``holdings`` (each with stock_id, weight, proactive), as the POST does."""
        by_id = {s["stock_id"]: sym for sym, s in self.stocks.items()}
        targets: dict[str, tuple[Decimal, bool]] = {}
        for h in holdings:
            symbol = by_id[h["stock_id"]]
            targets[symbol] = (Decimal(str(h["weight"])), bool(h.get("proactive")))
        for symbol in self.volumes:  # a holding left out of the list is sold
            targets.setdefault(symbol, (Decimal(0), True))
        now = self.tick()
        rb: dict[str, Any] = {
            "id": self.next_rb,
            "status": "pending",
            "cube_id": 1000001,
            "prev_bebalancing_id": self.rebalances[-1]["id"] if self.rebalances else None,
            "category": category,
            "exe_strategy": "intraday_all",
            "created_at": now,
            "updated_at": now,
            "cash_value": None,
            "cash": None,
            "error_code": None,
            "error_message": None,
            "error_status": None,
            "holdings": None,
            "rebalancing_histories": [],
            "comment": comment,
            "diff": 0.0,
            "new_buy_count": 0,
        }
        self.next_rb += 1
        for symbol, (weight, proactive) in targets.items():
            if not proactive:
                continue
            rb["rebalancing_histories"].append(
                {
                    "id": self.next_entry,
                    "rebalancing_id": rb["id"],
                    "stock_id": self.stocks[symbol]["stock_id"],
                    "stock_name": self.stocks[symbol]["name"],
                    "stock_symbol": symbol,
                    "volume": None,
                    "price": None,
                    "net_value": None,
                    "weight": None,
                    "target_weight": num(weight),
                    "prev_weight": num(self.weight(symbol)) if symbol in self.volumes else None,
                    "prev_target_weight": None,
                    "prev_weight_adjusted": num(self.weight(symbol)) if symbol in self.volumes else None,
                    "prev_volume": num(self.volumes[symbol]) if symbol in self.volumes else None,
                    "prev_price": None,
                    "prev_net_value": None,
                    "proactive": True,
                    "created_at": now,
                    "updated_at": now,
                    "target_volume": None,
                    "prev_target_volume": None,
                }
            )
            self.next_entry += 1
        self.rebalances.append(rb)
        if self.fail_next is not None:
            rb.update(status="failed", error_code="50012", error_message=self.fail_next, error_status=1)
            self.fail_next = None
        elif self.market_open:
            self.execute(rb)
        return rb

    def execute(self, rb: dict[str, Any]) -> None:
        """Apply a rebalance at the current prices: volumes, cash, and the entries' executed fields."""
        net = self.net_value()
        now = self.tick()
        for entry in rb["rebalancing_histories"]:
            symbol = entry["stock_symbol"]
            price = self.price(symbol)
            target = Decimal(str(entry["target_weight"]))
            before = self.volumes.get(symbol, Decimal(0))
            after = (target / 100 * net / price).quantize(VOLUME_STEP, ROUND_HALF_EVEN)
            self.cash_value -= (after - before) * price
            if after:
                self.volumes[symbol] = after
            else:
                self.volumes.pop(symbol, None)
            entry.update(
                volume=num(after),
                price=num(price),
                net_value=num(after * price),
                weight=num(target),
                prev_volume=num(before),
                prev_price=num(price),
                prev_net_value=num(before * price),
                target_volume=num(after),
                updated_at=now,
            )
        rb.update(
            status="success",
            updated_at=now,
            cash_value=num(self.cash_value),
            cash=num(self.cash_weight()),
        )

    def execute_pending(self) -> None:
        """The market opens: pending rebalances execute in order."""
        for rb in self.rebalances:
            if rb["status"] == "pending":
                self.execute(rb)

    def rebalance_on_the_website(self, symbol: str, weight: str) -> dict[str, Any]:
        """A rebalance the owner makes by hand (no comment marker)."""
        holdings = self.holdings_view(self.volumes)
        holdings = [h for h in holdings if h["stock_symbol"] != symbol]
        holdings.append(
            {"stock_id": self.stocks[symbol]["stock_id"], "weight": float(weight), "proactive": True}
        )
        return self.rebalance(holdings, "看好白酒")

    # --- the routes ----------------------------------------------------------------------------
    def current(self) -> dict[str, Any]:
        executed = self.holdings_view(self.volumes)
        success = next((rb for rb in reversed(self.rebalances) if rb["status"] == "success"), None)
        base = {"id": success["id"] if success else 0, "status": "success", "cube_id": 1000001}
        last_success = base | {"cash": num(self.cash_weight()), "holdings": executed}
        last = self.rebalances[-1] if self.rebalances else None
        if last is None or last["status"] == "success":
            last_rb = last_success
        else:
            # Not executed: last_rb shows the rebalance's targets.
            targets = {e["stock_symbol"]: e["target_weight"] for e in last["rebalancing_histories"]}
            view = [h | {"weight": targets.pop(h["stock_symbol"], h["weight"])} for h in executed]
            view += [
                {"stock_id": self.stocks[s]["stock_id"], "stock_symbol": s, "weight": w, "volume": 0.0}
                for s, w in targets.items()
            ]
            last_rb = {
                "id": last["id"],
                "status": last["status"],
                "cube_id": 1000001,
                "cash": 0.0,
                "holdings": view,
            }
        return {"last_rb": last_rb, "last_success_rb": last_success}

    def handle(
        self, method: str, path: str, query: dict[str, str], form: dict[str, str], cookie: str
    ) -> tuple[int, Any]:
        with self.lock:
            self.requests[method, path] += 1
            self.cookies_seen.append(cookie)
            steps = self.script.get((method, path), [])
            step = steps.pop(0) if steps else None
        if cookie != self.token:
            return 400, LOGIN_ERROR | {"error_uri": path}
        delay = 0.0
        if isinstance(step, float):
            delay = step
        elif step is not None:
            return step
        with self.lock:
            answer = self.answer(method, path, query, form)
        if delay:
            time.sleep(delay)  # applied; only the answer is late
        return answer

    def answer(self, method: str, path: str, query: dict[str, str], form: dict[str, str]) -> tuple[int, Any]:
        if (method, path) == ("GET", "/cubes/rebalancing/current.json"):
            assert query["cube_symbol"] == CODE, query
            return 200, self.current()
        if (method, path) == ("GET", "/cubes/quote.json"):
            code = query["code"]
            if code != CODE:
                return 200, {}
            return 200, {
                CODE: {
                    "symbol": CODE,
                    "name": "测试组合",
                    "net_value": num(self.net_value().quantize(Decimal("0.0001"))),
                }
            }
        if (method, path) == ("GET", "/stock/p/search.json"):
            assert query["market"] == "cn" and query["size"] == "300", query
            code = query["code"].upper()
            return 200, {"stocks": [dict(self.stocks[code])] if code in self.stocks else []}
        if (method, path) == ("POST", "/cubes/rebalancing/create.json"):
            assert form["cube_symbol"] == CODE, form
            holdings = json.loads(form["holdings"])
            self.forms.append(form | {"holdings": holdings})
            total = sum(Decimal(str(h["weight"])) for h in holdings)
            if total > 100:
                return 400, {"error_code": "20113", "error_description": "仓位总和不能超过100%"}
            rb = self.rebalance(holdings, form.get("comment", ""))
            return 200, rb
        if (method, path) == ("GET", "/cubes/rebalancing/history.json"):
            assert query["cube_symbol"] == CODE, query
            count, page = int(query["count"]), int(query["page"])
            newest = list(reversed(self.rebalances))
            rows = newest[(page - 1) * count : page * count]
            pages = max(1, -(-len(newest) // count))
            return 200, {
                "count": count,
                "page": page,
                "totalCount": len(newest),
                "maxPage": pages,
                "list": rows,
            }
        return 404, {"error_code": "404", "error_description": f"no route {method} {path}"}


def _handler(api: FakeXueqiu) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if length else ""
            form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
            jar: SimpleCookie = SimpleCookie()
            jar.load(self.headers.get("Cookie") or "")
            token = jar["xq_a_token"].value if "xq_a_token" in jar else ""
            status, answer = api.handle(self.command, url.path, query, form, token)
            data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json;charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        do_GET = do_POST = _serve

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def serve(fake: FakeXueqiu) -> Iterator[FakeXueqiu]:
    """Serve ``fake`` on a free loopback port (``fake.url``) until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
