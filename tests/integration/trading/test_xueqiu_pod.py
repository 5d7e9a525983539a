"""A Xueqiu session in the pod program, end to end, against the fake Xueqiu on 127.0.0.1.

The fake (``tests/unit/trading/xueqiu_fake.py``) answers the routes easytrader's XueQiuTrader calls;
``spec.broker.endpoint`` points easytrader's URLs at it and the login cookie comes from a mounted
Secret folder (``--secrets-dir``). Nothing here talks to Xueqiu.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("easytrader.xqtrader")

from test_pod_process import TOKEN, Pod

from kubequant.errors import ConfigError
from kubequant.workloads.trading.model.domain import client_order_id
from kubequant.workloads.trading.node.runtime import RuntimeConfig, TradingRuntime, read_session

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _load_fake() -> Any:
    if "xueqiu_fake" not in sys.modules:
        path = Path(__file__).parents[2] / "unit" / "trading" / "xueqiu_fake.py"
        spec = importlib.util.spec_from_file_location("xueqiu_fake", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["xueqiu_fake"] = module
        spec.loader.exec_module(module)
    return sys.modules["xueqiu_fake"]


fake_xueqiu = _load_fake()

# The A-share session hours (09:30-11:30, 13:00-15:00 Shanghai) would refuse these orders at whatever
# time the test runs, so the bundle's region is us; the A-share rules have their own tests.
SESSION = """\
apiVersion: kubequant.io/v1alpha1
kind: LiveTradingSession
metadata: {{name: xueqiu-pod}}
spec:
  mode: paper
  account: "{account}"
  startingCash: 1000000
  broker:
    type: xueqiu
    credentialsSecretRef: {{name: xueqiu}}
    endpoint: {url}
  data: {{region: us}}
  riskPolicyRef: {{name: xueqiu-pod}}
  universe: {{instruments: [SH600519, SZ000001, SH601318]}}
  timezone: Asia/Shanghai
  strategy: {{signalApi: {{}}}}
---
apiVersion: kubequant.io/v1alpha1
kind: RiskPolicy
metadata: {{name: xueqiu-pod}}
spec:
  limits: {{maxOrderQuantity: 100000, maxOrderNotional: 500000}}
"""


@pytest.fixture
def fake() -> Iterator[Any]:
    with fake_xueqiu.serve(fake_xueqiu.FakeXueqiu()) as api:
        yield api


def write_session(folder: Path, url: str, account: str = fake_xueqiu.CODE) -> Path:
    path = folder / "session.yaml"
    path.write_text(SESSION.format(url=url, account=account))
    return path


def write_secret(folder: Path, cookies: str = fake_xueqiu.COOKIES) -> Path:
    secret = folder / "xueqiu"
    secret.mkdir(exist_ok=True)
    (secret / "cookies").write_text(cookies + "\n")
    return secret


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    started: list[Pod] = []
    yield started
    for pod in started:
        if pod.proc.poll() is None:
            pod.proc.kill()
            pod.proc.wait(30)


def wait_for(what: str, check: Any, pod: Pod, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} never happened:\n{pod.output()}")


def positions(pod: Pod) -> dict[str, Decimal]:
    rows = pod.call("GET", "/v1/positions")[1]["positions"]
    return {p["instrument"]: Decimal(p["quantity"]) for p in rows}


def test_a_xueqiu_session_rebalances_and_restarts_without_a_second_rebalance(
    fake: Any, tmp_path: Path, pods: list[Pod]
) -> None:
    session, secrets, state = write_session(tmp_path, fake.url), write_secret(tmp_path), tmp_path / "volume"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    args = ("--secrets-dir", str(secrets))

    pod = Pod(session, state, token_file, *args)
    pods.append(pod)
    pod.wait_ready()
    assert fake.requests["GET", "/cubes/quote.json"] >= 1  # connect read the portfolio with the cookie
    assert fake_xueqiu.COOKIES not in pod.output() and fake_xueqiu.TOKEN not in pod.output()

    # 100 shares of SH600519 at 1500 of 1,000,000: one rebalance to 15 %, marked with the client order id.
    moutai = client_order_id("xueqiu-pod", "sig-1", "SH600519")
    body = {"id": "sig-1", "targets": [{"instrument": "SH600519", "quantity": 100}]}
    code, answer = pod.call("POST", "/v1/signals", body)
    assert code == 202 and answer["orders"][0]["accepted"], answer
    assert fake.posts == 1 and fake.forms[0]["comment"] == f"kq:{moutai}:buy:100:SH600519"
    wait_for("the SH600519 fill", lambda: positions(pod) == {"SH600519": Decimal(100)}, pod)

    # After hours: the next rebalance stays pending at Xueqiu; the pod stops before it executes.
    fake.market_open = False
    code, answer = pod.call(
        "POST", "/v1/signals", {"id": "sig-2", "targets": [{"instrument": "SH601318", "quantity": 500}]}
    )
    assert code == 202 and answer["orders"][0]["accepted"], answer
    pingan = answer["orders"][0]["clientOrderId"]
    assert pod.terminate() == 0, pod.output()
    with fake.lock:
        fake.execute_pending()  # the market opens while the pod is down
    posts = fake.posts

    pod = Pod(session, state, token_file, *args)
    pods.append(pod)
    pod.wait_ready()
    assert positions(pod) == {"SH600519": Decimal(100), "SH601318": Decimal(500)}, pod.output()
    orders = {o["clientOrderId"]: o["status"] for o in pod.call("GET", "/v1/orders")[1]["orders"]}
    assert orders[moutai] == orders[pingan] == "filled", orders
    code, again = pod.call("POST", "/v1/signals", body)
    assert code == 200 and again["duplicate"] is True
    assert fake.posts == posts == 2  # the restart reconciled from the history; nothing was sent again
    assert pod.terminate() == 0, pod.output()


def config(session: Path, tmp_path: Path, secrets: Path | None) -> RuntimeConfig:
    lts, _ = read_session(session)
    return RuntimeConfig(session=lts, policy_path=session, state_dir=tmp_path / "volume", secrets_dir=secrets)


def test_an_expired_cookie_stops_the_start_naming_the_secret_key(fake: Any, tmp_path: Path) -> None:
    fake.expire()
    runtime = TradingRuntime(config(write_session(tmp_path, fake.url), tmp_path, write_secret(tmp_path)))
    try:
        with pytest.raises(ConfigError) as err:
            asyncio.run(runtime.start())
    finally:
        runtime.close()
    assert (
        "key cookies" in str(err.value.where)
        and "kubectl create secret generic xueqiu" in err.value.one_line()
    )
    assert not runtime.oms.ready and fake.posts == 0


def test_the_runtime_prices_the_universe_from_xueqiu(fake: Any, tmp_path: Path) -> None:
    runtime = TradingRuntime(config(write_session(tmp_path, fake.url), tmp_path, write_secret(tmp_path)))
    try:
        asyncio.run(runtime.start())
        assert runtime.oms.ready
        knows = runtime.knows()
        assert knows("SH600519") and not knows("SH688999")
        assert runtime.prices.last_price("SZ000001") == Decimal("12.34")
    finally:
        runtime.close()
