"""The Xueqiu adapter: the Broker protocol over a Xueqiu (雪球) simulated portfolio, through easytrader.

A Xueqiu portfolio is rebalanced to weights, at Xueqiu's price when the rebalance executes (at once
during A-share trading hours, else ``pending`` until the next open). A share order becomes one
rebalance of one holding:

    target weight = (shares held ± quantity) × current price / equity × 100 %

rounded to Xueqiu's 0.01 % towards fewer shares traded (down for a buy, up for a sell), so a rebalance
never trades more than was asked at the price it was computed with. What executed is read back from
the rebalance history (``volume`` before and after, see parsing.py); the part the rounding left out
is reported canceled. Limit orders, cancels and short sales do not exist at Xueqiu and are refused.

Xueqiu has no client order ids. Idempotency comes from the marker the adapter writes into the
rebalance's comment: ``get_order`` finds a rebalance by it, and ``submit`` looks for it first, so a
submit whose answer was lost is answered with DuplicateOrder, never placed twice. A submit whose
outcome is unknown (a timeout, a 5xx, a garbled answer) is BrokerTimeout and is settled by
``get_order`` like any other venue's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from kubequant.api.broker_capabilities import BrokerCapabilities, capabilities_of
from kubequant.api.live import LiveTradingSession
from kubequant.errors import BrokerError, ConfigError
from kubequant.workloads.trading.adapters.base import (
    BrokerAccount,
    BrokerAck,
    BrokerDisconnected,
    BrokerFill,
    BrokerOrder,
    BrokerRejected,
    DuplicateOrder,
    SubmitRequest,
)
from kubequant.workloads.trading.adapters.xueqiu import parsing
from kubequant.workloads.trading.adapters.xueqiu.client import (
    DEFAULT_TIMEOUT,
    HISTORY_PAGE,
    SessionExpired,
    XueqiuClient,
    broker_error,
)
from kubequant.workloads.trading.adapters.xueqiu.config import (
    SECRET_COOKIES,
    base_url,
    check_portfolio_code,
    cookie_fix,
    cookie_reloader,
    initial_assets,
    load_cookies,
)
from kubequant.workloads.trading.model.domain import ZERO, Clock, Side, WallClock, as_money

log = logging.getLogger(__name__)
T = TypeVar("T")

HISTORY_PAGES = 40  # how far back (pages of 50 rebalances) orders and fills are looked for
DUPLICATE_PAGES = 2  # the newest 100 rebalances are searched for a client order id before a submit
FULL = Decimal(100)


class XueqiuBroker:
    """A Broker on one Xueqiu portfolio (``spec.account``). Its client's calls run on its own threads."""

    capabilities: ClassVar[BrokerCapabilities] = capabilities_of("xueqiu")

    def __init__(
        self,
        client: XueqiuClient,
        *,
        clock: Clock | None = None,
        secret_name: str | None = None,
        universe: tuple[str, ...] = (),
    ) -> None:
        self.client = client
        self.multiple = client.multiple
        self.clock = clock or WallClock()
        self.secret_name = secret_name
        self.universe = universe
        # One worker: easytrader's session is not shared between concurrent calls.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xueqiu")
        self._connected = False
        self._expired = False
        self._probe: asyncio.Task[bool] | None = None

    @classmethod
    def from_session(
        cls,
        session: LiveTradingSession,
        secrets_dir: Path | None,
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        clock: Clock | None = None,
    ) -> XueqiuBroker:
        """The adapter a LiveTradingSession describes: cookie from its Secret, portfolio from spec.account."""
        spec = session.spec
        if str(spec.mode) != "paper":
            raise ConfigError(
                "a Xueqiu portfolio is simulated: it trades no real money",
                where="spec.mode",
                fix="set mode: paper for broker.type xueqiu",
            )
        ref = spec.broker.credentials_secret_ref
        secret = ref.name if ref else None
        cookies = load_cookies(secrets_dir, secret, env)
        code = check_portfolio_code(spec.account)
        base = base_url(spec.broker.endpoint)
        multiple = initial_assets(spec.starting_cash)
        log.info(
            "Xueqiu portfolio %s at %s (cookie from %s, net value 1.0 = %s)",
            code,
            base,
            cookies.source,
            multiple,
        )
        client = XueqiuClient(
            cookies,
            code,
            multiple=multiple,
            base=base,
            timeout=timeout,
            reload_cookies=cookie_reloader(secrets_dir, secret, env),
        )
        return cls(client, clock=clock, secret_name=secret, universe=tuple(spec.universe.instruments or ()))

    # --- calls ---------------------------------------------------------------------------------
    async def _call(self, what: str, fn: Callable[[], T], *, submit: bool = False) -> T:
        """Run blocking client work on the pool; map its failure onto the Broker errors."""
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._pool, fn)
        except BrokerError:
            self._connected = True  # raised by the adapter's own checks, after Xueqiu answered
            raise
        except SessionExpired as err:
            self._expired = True
            self._connected = False
            if await loop.run_in_executor(self._pool, self._reload_cookies):
                self._expired = False  # the next call uses the new cookie
            else:
                log.error("Xueqiu login cookie expired; fix: %s", cookie_fix(self.secret_name))
            raise broker_error(err, what, submit=submit) from err
        except Exception as err:
            mapped = broker_error(err, what, submit=submit)
            if isinstance(mapped, BrokerDisconnected):
                self._connected = False
            elif isinstance(mapped, BrokerRejected):
                self._connected = True  # Xueqiu answered
            raise mapped from err
        self._connected = True
        self._expired = False
        return result

    def _reload_cookies(self) -> bool:
        """Read the Secret's cookie again; False if it is unchanged, missing or malformed (logged)."""
        try:
            return self.client.refresh_cookies()
        except ConfigError as err:
            log.error("cannot reload the Xueqiu cookie: %s", err.one_line())
            return False

    # --- connection ----------------------------------------------------------------------------
    def is_connected(self) -> bool:
        """The state the last call left (no I/O); while down, a background probe is started."""
        if not self._connected and (self._probe is None or self._probe.done()):
            try:
                self._probe = asyncio.get_running_loop().create_task(self.check_connection())
            except RuntimeError:
                pass
        return self._connected

    async def check_connection(self) -> bool:
        """Probe with the portfolio read; True if Xueqiu answered with the cookie accepted."""
        try:
            await self._call("portfolio", self.client.portfolio)
        except BrokerError as err:
            log.warning("Xueqiu connectivity probe failed: %s", err)
        return self._connected

    async def connect(self, account: str | None = None) -> BrokerAccount:
        """Check the cookie against the portfolio (``spec.account``); the account in money."""
        if account is not None and account != self.client.portfolio_code:
            raise ConfigError(
                f"the adapter trades portfolio {self.client.portfolio_code}, not {account}",
                where="spec.account",
                fix="set spec.account to the Xueqiu portfolio code (ZH...)",
            )
        try:
            raw = await self._call("portfolio", self.client.portfolio)
        except BrokerDisconnected as err:
            if self._expired:
                raise ConfigError(
                    str(err),
                    where=f"spec.broker.credentialsSecretRef: key {SECRET_COOKIES}",
                    fix=cookie_fix(self.secret_name),
                ) from err
            raise
        except BrokerRejected as err:
            raise ConfigError(
                f"Xueqiu refused to show portfolio {self.client.portfolio_code}: {err}",
                where="spec.account",
                fix="check the portfolio code, and that the cookie is of the account that owns it",
            ) from err
        return self._account(raw)

    async def listed_instruments(self) -> frozenset[str]:
        """The universe's instruments Xueqiu's search knows (Xueqiu lists nothing itself)."""
        if not self.universe:
            raise ConfigError(
                "Xueqiu cannot list what a portfolio may trade",
                where="spec.universe.instruments",
                fix="list the instruments the session trades (e.g. [SH600519, SZ000001])",
            )

        def known() -> frozenset[str]:
            return frozenset(s for s in self.universe if self.client.search(s) is not None)

        return await self._call("search", known)

    # --- orders --------------------------------------------------------------------------------
    def _history(
        self, pages: int, stop: Callable[[list[dict[str, Any]]], bool] | None = None
    ) -> list[dict[str, Any]]:
        """Rebalances newest first, page by page, until ``stop(page)`` or the end."""
        out: list[dict[str, Any]] = []
        for page in range(1, pages + 1):
            rows, total = self.client.history_page(page)
            out += rows
            if stop is not None and stop(rows):
                return out
            if len(rows) < HISTORY_PAGE or (total is not None and len(out) >= total):
                return out
        log.warning("Xueqiu history read up to %d rebalances; older ones were not looked at", len(out))
        return out

    def _find(self, client_order_id: str, pages: int) -> dict[str, Any] | None:
        hit: list[dict[str, Any]] = []

        def found(rows: list[dict[str, Any]]) -> bool:
            for rb in rows:
                marker = parsing.read_marker(rb.get("comment"))
                if marker is not None and marker.client_order_id == client_order_id:
                    hit.append(rb)
                    return True
            return False

        self._history(pages, found)
        return hit[0] if hit else None

    def _submit(self, request: SubmitRequest) -> dict[str, Any]:
        cid = request.client_order_id
        if self._find(cid, DUPLICATE_PAGES) is not None:
            raise DuplicateOrder(f"submit {cid}: a rebalance with this client order id exists at Xueqiu")
        portfolio = self.client.portfolio()
        last = portfolio.get("last_rb")
        if isinstance(last, Mapping) and last.get("status") == "pending":
            raise BrokerRejected(
                f"submit {cid}: rebalance {last.get('id')} is still pending at Xueqiu (it executes at the next open)"
            )
        stock = self.client.search(request.instrument)
        if stock is None:
            raise BrokerRejected(f"submit {cid}: Xueqiu does not know {request.instrument}")
        if stock.get("flag") != 1:
            raise BrokerRejected(
                f"submit {cid}: Xueqiu does not trade {request.instrument} now (flag {stock.get('flag')}:"
                " not listed, suspended, at a price limit or delisted)"
            )
        price = parsing.dec(stock.get("current"))
        equity = parsing.equity(portfolio, self.multiple)
        if price <= 0 or equity <= 0:
            raise BrokerRejected(f"submit {cid}: no price or no equity at Xueqiu ({price}, {equity})")
        held = parsing.holdings(portfolio, self.multiple).get(request.instrument, ZERO)
        if request.side is Side.SELL and request.quantity > held:
            raise BrokerRejected(
                f"submit {cid}: sells {request.quantity} {request.instrument} but the portfolio holds {held};"
                " a Xueqiu portfolio cannot sell short"
            )
        target_shares = held + request.quantity if request.side is Side.BUY else held - request.quantity
        rounding = ROUND_DOWN if request.side is Side.BUY else ROUND_UP
        target = (target_shares * price / equity * FULL).quantize(parsing.WEIGHT_STEP, rounding)
        current = held * price / equity * FULL
        if target_shares == 0:
            target = ZERO
        elif (target <= current) if request.side is Side.BUY else (target >= current):
            raise BrokerRejected(
                f"submit {cid}: {request.quantity} {request.instrument} is less than Xueqiu's smallest step"
                f" of {parsing.WEIGHT_STEP} % of the portfolio ({equity * parsing.WEIGHT_STEP / FULL:.2f})"
            )
        others = sum(
            (
                parsing.dec(h.get("weight"))
                for h in (last.get("holdings") or [] if isinstance(last, Mapping) else [])
                if str(h.get("stock_symbol")) != request.instrument
            ),
            ZERO,
        )
        if others + target > FULL:
            raise BrokerRejected(
                f"submit {cid}: not enough cash: {request.instrument} at {target} % with {others} % in other holdings"
            )
        marker = parsing.Marker(cid, request.side, request.quantity, request.instrument)
        log.info("Xueqiu rebalance %s: %s %s -> %s %%", cid, request.instrument, f"{current:.2f}", target)
        return self.client.rebalance(request.instrument, target, marker.text())

    async def submit(self, request: SubmitRequest) -> BrokerAck:
        """Rebalance the instrument's weight by the order's quantity; an unknown outcome is BrokerTimeout."""
        what = f"submit {request.client_order_id}"
        if request.quantity <= 0:
            raise BrokerRejected(f"{what}: the quantity must be positive")
        if request.limit_price is not None:
            raise BrokerRejected(
                f"{what}: Xueqiu rebalances at its market price; limit orders do not exist there"
            )
        answer = await self._call(what, lambda: self._submit(request), submit=True)
        return BrokerAck(
            request.client_order_id,
            parsing.broker_order_id(answer["id"], request.instrument),
            self.clock.now(),
        )

    async def cancel(self, broker_order_id: str) -> None:
        """Refused: easytrader has no cancel of a rebalance (a pending one executes at the next open)."""
        raise BrokerRejected(
            f"cancel {broker_order_id}: Xueqiu rebalances cannot be canceled through easytrader;"
            " a pending rebalance executes at the next open"
        )

    async def get_order(self, client_order_id: str) -> BrokerOrder | None:
        """The rebalance carrying the client order id's marker (or an ``xq-`` id's rebalance); None if none."""
        if not client_order_id:
            return None
        external = parsing.read_external_id(client_order_id)

        def lookup() -> BrokerOrder | None:
            if external is not None:
                rb_id, instrument = external
                rows = self._history(HISTORY_PAGES, lambda page: any(str(r.get("id")) == rb_id for r in page))
                rb = next((r for r in rows if str(r.get("id")) == rb_id), None)
                return None if rb is None else parsing.report(rb, instrument, self.multiple)
            rb = self._find(client_order_id, HISTORY_PAGES)
            marker = parsing.read_marker(rb.get("comment")) if rb is not None else None
            if rb is None or marker is None:
                return None
            return parsing.report(rb, marker.instrument, self.multiple)

        return await self._call(f"get order {client_order_id}", lookup)

    async def open_orders(self) -> list[BrokerOrder]:
        """The pending rebalances (they execute at the next open), as orders per instrument."""

        def pending() -> list[BrokerOrder]:
            rows, _ = self.client.history_page(1)
            return [
                o for rb in rows if rb.get("status") == "pending" for o in parsing.reports(rb, self.multiple)
            ]

        return await self._call("open orders", pending)

    async def fills_since(self, cursor: str | None) -> list[BrokerFill]:
        """Executed rebalance entries after the entry id ``cursor``, oldest first."""
        after = int(cursor) if cursor else -1

        def read() -> list[BrokerFill]:
            def older(page: list[dict[str, Any]]) -> bool:
                ids = [int(e["id"]) for rb in page for e in parsing.entries(rb) if "id" in e]
                return bool(ids) and min(ids) <= after

            rows = self._history(HISTORY_PAGES, older if after >= 0 else None)
            fills = [f for rb in rows for f in parsing.fills_of(rb, self.multiple) if int(f.fill_id) > after]
            fills.sort(key=lambda f: int(f.fill_id))
            return [BrokerFill(f, f.fill_id) for f in fills]

        return await self._call("fills", read)

    async def positions(self) -> dict[str, Decimal]:
        """Shares by instrument: each holding's volume × initial assets (never negative: no short sales)."""
        raw = await self._call("positions", self.client.portfolio)
        return parsing.holdings(raw, self.multiple)

    async def account(self) -> BrokerAccount:
        """Equity (net value × initial assets) and cash (its cash weight)."""
        return self._account(await self._call("account", self.client.portfolio))

    def _account(self, raw: Mapping[str, Any]) -> BrokerAccount:
        try:
            cash, equity = parsing.cash(raw, self.multiple), parsing.equity(raw, self.multiple)
        except (KeyError, TypeError) as err:
            raise BrokerError(f"Xueqiu's portfolio answer is unreadable ({err!r})") from err
        return BrokerAccount(as_money(cash), as_money(equity), self.clock.now())

    def close(self) -> None:
        """Stop the pool and close the HTTP connections."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
