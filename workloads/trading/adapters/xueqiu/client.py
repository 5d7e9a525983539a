"""easytrader's XueQiuTrader, taken over: a timeout, TLS verification, errors that are not swallowed.

easytrader's ``XueQiuTrader`` speaks Xueqiu's web API with a ``requests.Session`` (``trader.s``) and
reads its URLs from a per-instance ``config`` dict (``easytrader/config/xq.json``). This module
keeps easytrader's calls and replaces three of its habits that contradict the OMS's rules:

- its session has no timeout and ``verify = False``: the replacement has a (connect, read) timeout
  and verifies TLS;
- ``adjust_weight`` catches every exception of the rebalance POST, logs it and returns None, the
  same None as a success: the replacement session records the failure of each request, and the
  client raises it after the call, so a timed-out rebalance is never mistaken for a placed one;
- HTTP error answers (Xueqiu sends ``{"error_code", "error_description"}`` with a 4xx) are raised
  at once as ``XueqiuHttpError``, with ``SessionExpired`` for the login errors.

``prepare()``/``autologin()`` are not called: they start a heartbeat thread that polls the balance
every 30 s for the life of the process. The account is set with the same two steps they run
(``_prepare_account`` and ``_set_cookies``).
The session also writes the adapter's marker into the rebalance's ``comment`` (easytrader sends an
empty one), which is how an order is found again without client order ids (see parsing.py).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import requests
from easytrader import exceptions as et_exceptions
from easytrader.xqtrader import XueQiuTrader
from urllib3.exceptions import NewConnectionError

from kubequant.errors import BrokerError
from kubequant.workloads.trading.adapters.base import BrokerDisconnected, BrokerRejected, BrokerTimeout
from kubequant.workloads.trading.adapters.xueqiu.config import (
    XUEQIU_BASE,
    XueqiuCookies,
    check_cookie_format,
    override_urls,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (3.05, 10.0)  # (connect, read) seconds
HISTORY_PAGE = 50  # rebalances per page of history.json
# Xueqiu's answer when the login cookie is missing or expired: 400016 "遇到错误，请刷新页面或者重新登录帐号后再试"
# (easytrader issue #88); 400017/401 are treated the same.
LOGIN_ERRORS = {"400016", "400017"}


class XueqiuHttpError(Exception):
    """Xueqiu answered with an HTTP error status."""

    def __init__(self, status: int, code: str, description: str, url: str) -> None:
        super().__init__(
            f"Xueqiu {status}{f' ({code})' if code else ''} on {urlsplit(url).path}: {description}"
        )
        self.status, self.code, self.description = status, code, description


class SessionExpired(XueqiuHttpError):
    """Xueqiu does not accept the login cookie (expired, logged out, or never valid)."""


def http_error(response: requests.Response) -> XueqiuHttpError:
    """The error answer as an exception, with Xueqiu's own code and description."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping):
        code = str(body.get("error_code") or "")
        description = str(body.get("error_description") or body.get("message") or "")
    else:
        code, description = "", response.text[:200].strip()
    cls = SessionExpired if code in LOGIN_ERRORS or response.status_code == 401 else XueqiuHttpError
    return cls(response.status_code, code, description or response.reason or "", response.url)


class _TakenOverSession(requests.Session):
    """easytrader's session, with a timeout, failures recorded per call, and the rebalance comment set."""

    def __init__(self, timeout: float | tuple[float, float]) -> None:
        super().__init__()
        self.timeout = timeout
        self.rebalance_url = ""
        self.comment: str | None = None
        self.failure: BaseException | None = None
        self.answer: requests.Response | None = None

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        if str(method).upper() == "POST" and url == self.rebalance_url and self.comment is not None:
            kwargs["data"] = dict(kwargs.get("data") or {}, comment=self.comment)
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.RequestException as err:
            self.failure = err
            raise
        if response.status_code >= 400:
            error = http_error(response)
            self.failure = error
            raise error
        self.answer = response
        return response


def never_sent(err: requests.exceptions.ConnectionError) -> bool:
    """Whether the connection failed before the request could leave (refused, DNS, TLS, connect timeout)."""
    if isinstance(err, requests.exceptions.ConnectTimeout | requests.exceptions.SSLError):
        return True
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(reason, NewConnectionError)


def broker_error(err: BaseException, what: str, *, submit: bool) -> BrokerError:
    """A failure of a Xueqiu call as one of the Broker errors.

    After a rebalance POST only a refusal (4xx) or a failure before sending proves nothing was
    placed; anything else may have been applied and is BrokerTimeout, settled by the history.
    """
    if isinstance(err, SessionExpired):
        return BrokerDisconnected(
            f"{what}: {err} — the login cookie has expired; refresh the Secret's cookies key"
        )
    if isinstance(err, XueqiuHttpError):
        if err.status >= 500:
            return BrokerTimeout(f"{what}: {err}")
        if err.status in (403, 429):
            # Xueqiu's rate limit and anti-crawler answers: refused unprocessed, safe to send again later.
            return BrokerDisconnected(f"{what}: {err} (refused by Xueqiu's rate limit; nothing was done)")
        return BrokerRejected(f"{what}: {err}")
    if isinstance(err, et_exceptions.TradeError):
        return BrokerRejected(f"{what}: easytrader refused the rebalance: {err}")
    if isinstance(err, requests.exceptions.ConnectionError):
        if never_sent(err):
            return BrokerDisconnected(f"{what}: cannot reach Xueqiu ({err})")
        return BrokerTimeout(f"{what}: connection lost before Xueqiu answered ({err})")
    if isinstance(err, requests.exceptions.Timeout):
        return BrokerTimeout(f"{what}: no answer from Xueqiu in time ({err})")
    # A garbled answer (an HTML page, a missing key): after a submit only the history can tell.
    return (BrokerTimeout if submit else BrokerError)(f"{what}: unreadable answer from Xueqiu ({err!r})")


class XueqiuClient:
    """One portfolio through easytrader's XueQiuTrader; blocking calls, one at a time (run them on a thread)."""

    def __init__(
        self,
        cookies: XueqiuCookies,
        portfolio_code: str,
        *,
        multiple: Decimal,
        base: str = XUEQIU_BASE,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        reload_cookies: Callable[[], XueqiuCookies] | None = None,
    ) -> None:
        self.portfolio_code = portfolio_code
        self.multiple = multiple
        self.reload_cookies = reload_cookies
        self.trader = XueQiuTrader(initial_assets=float(multiple))
        session = _TakenOverSession(timeout)
        session.headers.update(self.trader.s.headers)  # easytrader's browser-like headers
        if base != XUEQIU_BASE:
            # easytrader pins Host and Referer to xueqiu.com; another endpoint gets its own Host.
            for header in ("Host", "Referer"):
                session.headers.pop(header, None)
        self.trader.s.close()
        self.trader.s = session  # verify stays True: easytrader turns TLS verification off
        override_urls(self.trader.config, base)
        session.rebalance_url = str(self.trader.config["rebalance_url"])
        self.session = session
        self._lock = threading.Lock()  # the session's failure/answer belong to one call at a time
        self._cookies = cookies
        self.trader._prepare_account(
            cookies=cookies.value, portfolio_code=portfolio_code, portfolio_market="cn"
        )
        self.trader._set_cookies(cookies.value)

    # --- plumbing ------------------------------------------------------------------------------
    def _run(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            self.session.failure = None
            self.session.answer = None
            return fn()

    def refresh_cookies(self) -> bool:
        """Read the cookie again (the Secret may have been updated); True if it changed."""
        if self.reload_cookies is None:
            return False
        fresh = self.reload_cookies()
        if fresh.value == self._cookies.value:
            return False
        check_cookie_format(fresh.value, fresh.source, None)
        with self._lock:
            self.session.cookies.clear()
            self.trader._set_cookies(fresh.value)
            self.trader.account_config["cookies"] = fresh.value
            self._cookies = fresh
        log.info("Xueqiu login cookie reloaded from %s", fresh.source)
        return True

    # --- reads ---------------------------------------------------------------------------------
    def portfolio(self) -> dict[str, Any]:
        """current.json (``last_rb``, ``last_success_rb``) with quote.json's ``net_value`` (easytrader's call)."""
        info = self._run(lambda: self.trader._get_portfolio_info(self.portfolio_code))
        if not isinstance(info, dict):
            raise ValueError(f"portfolio info is {type(info).__name__}")
        return info

    def history_page(self, page: int, count: int = HISTORY_PAGE) -> tuple[list[dict[str, Any]], int | None]:
        """One page of history.json, newest first, and the total count if Xueqiu says it."""

        def get() -> Any:
            params = {"cube_symbol": self.portfolio_code, "count": count, "page": page}
            return self.trader.s.get(self.trader.config["history_url"], params=params).json()

        body = self._run(get)
        if isinstance(body, Mapping) and isinstance(body.get("data"), Mapping):
            body = body["data"]  # some answers wrap the page in "data"
        if not isinstance(body, Mapping) or not isinstance(body.get("list"), list):
            raise ValueError("history.json has no list")
        total = body.get("totalCount")
        return [r for r in body["list"] if isinstance(r, dict)], int(total) if total is not None else None

    def search(self, instrument: str) -> dict[str, Any] | None:
        """search.json's first stock for ``instrument`` (code, stock_id, flag, current price), or None."""
        stock = self._run(lambda: self.trader._search_stock_info(instrument))
        if stock is not None and str(stock.get("code", "")).upper() != instrument.upper():
            return None  # the search matched something else: the instrument is unknown
        return stock if isinstance(stock, dict) else None

    # --- the rebalance -------------------------------------------------------------------------
    def rebalance(self, instrument: str, weight: Decimal, comment: str) -> dict[str, Any]:
        """easytrader's ``adjust_weight(instrument, weight)`` with ``comment``; Xueqiu's answer (the rebalance).

        Raises the request's own failure where easytrader would swallow it.
        """

        def call() -> Any:
            self.session.comment = comment
            try:
                result = self.trader.adjust_weight(instrument, float(weight))
            finally:
                self.session.comment = None
            if self.session.failure is not None:
                raise self.session.failure
            if result:  # [{"error_no", "error_info"}]: Xueqiu refused it
                raise XueqiuHttpError(
                    400, str(result[0].get("error_no")), str(result[0].get("error_info")), ""
                )
            if self.session.answer is None:
                raise ValueError("easytrader sent no rebalance")
            return json.loads(self.session.answer.text)

        answer = self._run(call)
        if not isinstance(answer, dict) or "id" not in answer:
            raise ValueError(f"the rebalance answer has no id: {str(answer)[:200]}")
        return answer

    def close(self) -> None:
        """Close the HTTP connections."""
        self.session.close()
