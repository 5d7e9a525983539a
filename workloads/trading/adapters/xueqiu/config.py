"""A Xueqiu session's settings: the login cookie from the mounted Secret, the portfolio code, the endpoint.

Xueqiu (雪球) has no API keys: easytrader signs in with the cookie string of a logged-in browser
session (``xq_a_token=...; u=...``), which Xueqiu expires after some weeks. The cookie is read
from the Secret's ``cookies`` key each time the adapter finds it expired, so refreshing the Secret
(Kubernetes updates the mounted file in place) brings the session back without a restart.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

from kubequant.errors import ConfigError

SECRET_COOKIES = "cookies"
ENV_COOKIES = "XUEQIU_COOKIES"
XUEQIU_BASE = "https://xueqiu.com"
# A Xueqiu portfolio ("cube") code: ZH and digits (SP for the real-money ones, which easytrader cannot trade).
PORTFOLIO_CODE = re.compile(r"^ZH\d{4,10}$")
# The easytrader config keys that hold xueqiu.com URLs (easytrader/config/xq.json).
URL_KEYS = (
    "login_api",
    "prefix",
    "portfolio_url",
    "search_stock_url",
    "rebalance_url",
    "history_url",
    "portfolio_url_new",
    "portfolio_quote",
)

COOKIE_FIX = (
    "log in at https://xueqiu.com in a browser, copy the request's Cookie header (it holds xq_a_token)"
    " and update the Secret: kubectl create secret generic {secret} --from-literal=cookies='xq_a_token=...; u=...'"
    " --dry-run=client -o yaml | kubectl apply -f - (locally: export XUEQIU_COOKIES)"
)


@dataclass(frozen=True)
class XueqiuCookies:
    """The login cookie string and where it came from; the value never appears in a repr or a log."""

    value: str = field(repr=False)
    source: str = "arguments"


def cookie_fix(secret_name: str | None) -> str:
    """The fix for a missing or expired cookie, naming the Secret."""
    return COOKIE_FIX.format(secret=secret_name or "NAME")


def load_cookies(
    secrets_dir: Path | None, secret_name: str | None = None, env: Mapping[str, str] | None = None
) -> XueqiuCookies:
    """The cookie string from the mounted Secret's ``cookies`` key, else ``$XUEQIU_COOKIES``."""
    env = os.environ if env is None else env
    path = secrets_dir / SECRET_COOKIES if secrets_dir is not None else None
    where = f"Secret {secret_name}" if secret_name else "the credentials Secret"
    if path is not None and path.is_file() and path.read_text().strip():
        value, source = path.read_text().strip(), str(path)
    elif env.get(ENV_COOKIES, "").strip():
        value, source = env[ENV_COOKIES].strip(), f"${ENV_COOKIES}"
    else:
        mounted = f" (looked in {secrets_dir})" if secrets_dir is not None else ""
        raise ConfigError(
            f"the Xueqiu credential {SECRET_COOKIES!r} is missing{mounted}",
            where=f"spec.broker.credentialsSecretRef: {where} key {SECRET_COOKIES}",
            fix=cookie_fix(secret_name),
        )
    check_cookie_format(value, source, secret_name)
    return XueqiuCookies(value, source)


def check_cookie_format(value: str, source: str, secret_name: str | None) -> None:
    """Refuse what easytrader cannot parse (``k=v; k=v``) before it fails with a bare ValueError."""
    records = [r.strip() for r in value.split(";") if r.strip()]
    if not records or any("=" not in r for r in records):
        raise ConfigError(
            f"the Xueqiu cookie from {source} is not a Cookie header ('name=value; name=value')",
            where=f"spec.broker.credentialsSecretRef: key {SECRET_COOKIES}",
            fix=cookie_fix(secret_name),
        )


def cookie_reloader(
    secrets_dir: Path | None, secret_name: str | None, env: Mapping[str, str] | None = None
) -> Callable[[], XueqiuCookies]:
    """A function that reads the cookie again (after Xueqiu said it expired)."""
    return lambda: load_cookies(secrets_dir, secret_name, env)


def check_portfolio_code(code: str) -> str:
    """``spec.account`` as a Xueqiu portfolio code (``ZH`` and digits)."""
    if not PORTFOLIO_CODE.match(code):
        raise ConfigError(
            f"{code!r} is not a Xueqiu portfolio code",
            where="spec.account",
            fix="set spec.account to the portfolio's code, as in https://xueqiu.com/P/ZH1234567 (ZH and digits)",
        )
    return code


def base_url(endpoint: str | None) -> str:
    """``spec.broker.endpoint`` (a proxy, a test server) or https://xueqiu.com, without a trailing slash."""
    if endpoint is None:
        return XUEQIU_BASE
    url = endpoint.rstrip("/")
    parts = urlsplit(url)
    if parts.path or parts.query:
        raise ConfigError(
            f"the Xueqiu endpoint {endpoint} has a path; easytrader's URLs are all under the site's root",
            where="spec.broker.endpoint",
            fix="give scheme, host and port only (e.g. http://127.0.0.1:8080), or remove endpoint",
        )
    return url


def override_urls(config: dict[str, object], base: str) -> None:
    """Point easytrader's xueqiu.com URLs (its per-instance ``config``) at ``base``."""
    if base == XUEQIU_BASE:
        return
    for key in URL_KEYS:
        url = config.get(key)
        if isinstance(url, str) and url.startswith(XUEQIU_BASE):
            config[key] = base + url[len(XUEQIU_BASE) :]


def initial_assets(starting_cash: float) -> Decimal:
    """The money net value 1.0 stands for (``spec.startingCash``): easytrader's ``initial_assets``."""
    value = Decimal(repr(starting_cash))
    if value < 1000:
        raise ConfigError(
            f"startingCash {starting_cash} is below easytrader's minimum of 1000 for a Xueqiu portfolio",
            where="spec.startingCash",
            fix="set spec.startingCash to the money the portfolio's net value 1.0 stands for (e.g. 1000000)",
        )
    return value
