"""A gateway session in the pod program, end to end: the pod process talks to the gateway program on 127.0.0.1.

The gateway runs in this test's process (a thread with its own event loop) over the fake
easytrader client of tests/unit/trading/test_gateway_server.py, the only fake: there is no Windows
desktop client here. The pod is the real ``python -m kubequant.workloads.trading.node.runtime``.
The session is in region us so the A-share trading hours (tested with the risk engine) do not
make this test depend on the time of day it runs.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from test_pod_process import TOKEN, Pod

from kubequant.workloads.trading.model.domain import client_order_id

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _load(name: str) -> Any:
    if name not in sys.modules:
        path = Path(__file__).parents[2] / "unit" / "trading" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


fake = _load("test_gateway_server")

SESSION = """\
apiVersion: kubequant.io/v1alpha1
kind: LiveTradingSession
metadata: {{name: gateway-pod}}
spec:
  mode: live
  account: "{account}"
  broker:
    type: gateway
    credentialsSecretRef: {{name: gateway-credentials}}
    endpoint: {url}
  riskPolicyRef: {{name: gateway-pod}}
  universe: {{instruments: [SH600000, SZ000001]}}
  data: {{region: us}}
  strategy: {{signalApi: {{}}}}
---
apiVersion: kubequant.io/v1alpha1
kind: RiskPolicy
metadata: {{name: gateway-pod}}
spec:
  limits: {{maxOrderQuantity: 10000, maxOrderNotional: 500000}}
"""


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    started: list[Pod] = []
    yield started
    for pod in started:
        if pod.proc.poll() is None:
            pod.proc.kill()
            pod.proc.wait(30)


def wait_for(what: str, check: Any, pod: Pod, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} never happened:\n{pod.output()}")


def positions(pod: Pod) -> dict[str, Decimal]:
    return {p["instrument"]: Decimal(p["quantity"]) for p in pod.call("GET", "/v1/positions")[1]["positions"]}


def test_a_gateway_session_fails_closed_trades_once_and_reconciles_after_a_restart(
    tmp_path: Path, pods: list[Pod]
) -> None:
    client = fake.FakeClient(holdings={"600000": (1000, "10.50")})
    state = tmp_path / "volume"
    secret = tmp_path / "gateway-credentials"
    secret.mkdir()
    (secret / "token").write_text(fake.TOKEN + "\n")
    token_file = tmp_path / "signal-token"
    token_file.write_text(TOKEN)
    with fake.served(client, tmp_path / "gateway.sqlite") as gw:
        session = tmp_path / "session.yaml"
        session.write_text(SESSION.format(url=gw.url, account=fake.ACCOUNT))
        args = ("--secrets-dir", str(secret))

        # An empty journal on an account that holds a position: the pod fails closed and sends nothing.
        pod = Pod(session, state, token_file, *args)
        pods.append(pod)
        assert pod.proc.wait(60) == 3, pod.output()
        assert "kubequant trading adopt" in pod.output() and client.placed == 0
        adopt = [
            str(Path(sys.executable).parent / "kubequant"),
            "trading",
            "adopt",
            "--state-dir",
            str(state),
        ]
        done = subprocess.run(
            [*adopt, "--reason", "new session on this account"], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr

        pod = Pod(session, state, token_file, *args)
        pods.append(pod)
        pod.wait_ready()
        assert positions(pod) == {"SH600000": 1000}

        # A quantity target of a held name (the client shows its price): one order, under the session's id.
        cid = client_order_id("gateway-pod", "sig-1", "SH600000")
        body = {"id": "sig-1", "targets": [{"instrument": "SH600000", "quantity": 1200}]}
        code, answer = pod.call("POST", "/v1/signals", body)
        assert code == 202 and answer["orders"][0]["accepted"], answer
        assert answer["orders"][0]["clientOrderId"] == cid and client.placed == 1
        entrust = gw.gateway.store.order(cid).entrust_no
        assert client.by_no(entrust)["委托数量"] == 200 and client.by_no(entrust)["操作"] == "买入"

        # A name the client shows no price for: refused before the gateway sees it.
        code, answer = pod.call(
            "POST", "/v1/signals", {"id": "sig-2", "targets": [{"instrument": "SZ000001", "quantity": 100}]}
        )
        assert code == 202 and answer["orders"][0]["reason"] == "NO_PRICE", answer
        assert client.placed == 1

        with client.lock:
            client.fill(entrust, 100, "10.55")
        wait_for("the first fill", lambda: positions(pod).get("SH600000") == 1100, pod)
        assert pod.call("POST", "/v1/signals", body)[1]["duplicate"] is True
        assert pod.terminate() == 0, pod.output()

        # While the pod is down, the rest of the order fills.
        with client.lock:
            client.fill(entrust, 100, "10.56")

        pod = Pod(session, state, token_file, *args)
        pods.append(pod)
        pod.wait_ready()
        assert positions(pod) == {"SH600000": 1200}, pod.output()
        orders = {o["clientOrderId"]: o["status"] for o in pod.call("GET", "/v1/orders")[1]["orders"]}
        assert orders[cid] == "filled", orders
        code, again = pod.call("POST", "/v1/signals", body)
        assert code == 200 and again["duplicate"] is True
        assert client.placed == 1  # the restart reconciled; nothing was sent again
        assert pod.terminate() == 0, pod.output()

        # A position the journal cannot explain (bought by hand in the client) stops the next start.
        client.holdings["000001"] = [300, 300, Decimal("12.00")]
        pod = Pod(session, state, token_file, *args)
        pods.append(pod)
        assert pod.proc.wait(60) == 3, pod.output()  # recovery failed closed: nothing trades
        assert "positions differ after reconciliation" in pod.output() and "SZ000001" in pod.output()
    assert client.placed == 1
