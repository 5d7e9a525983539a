"""An Alpaca session in the pod program, end to end, against a fake Alpaca on 127.0.0.1.

The fake (``tests/unit/trading/alpaca_fake.py``) answers the Trading API and the market data API's
latest trades with Alpaca's documented payloads; ``spec.broker.endpoint`` and
``spec.broker.marketDataEndpoint`` point alpaca-py's clients at it. Nothing here talks to Alpaca.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("alpaca.trading.client")

from test_pod_process import TOKEN, Pod

from kubequant.errors import BrokerError, ConfigError, ValidationError
from kubequant.workloads.trading.model.domain import client_order_id
from kubequant.workloads.trading.node.runtime import RuntimeConfig, TradingRuntime, parse_args, read_session
from kubequant.workloads.trading.risk.trading_state import adopt_stopped

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _load_fake() -> Any:
    if "alpaca_fake" not in sys.modules:
        path = Path(__file__).parents[2] / "unit" / "trading" / "alpaca_fake.py"
        spec = importlib.util.spec_from_file_location("alpaca_fake", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["alpaca_fake"] = module
        spec.loader.exec_module(module)
    return sys.modules["alpaca_fake"]


fake_alpaca = _load_fake()

SESSION = """\
apiVersion: kubequant.io/v1alpha1
kind: LiveTradingSession
metadata: {{name: alpaca-pod}}
spec:
  mode: paper
  account: "{account}"
  broker:
    type: alpaca
    credentialsSecretRef: {{name: alpaca-keys}}
    endpoint: {url}
    marketDataEndpoint: {url}
  riskPolicyRef: {{name: alpaca-pod}}
  universe: {{instruments: [AAPL, MSFT, TSLA]}}
  timezone: America/New_York
  strategy: {{signalApi: {{}}}}
---
apiVersion: kubequant.io/v1alpha1
kind: RiskPolicy
metadata: {{name: alpaca-pod}}
spec:
  limits: {{maxOrderQuantity: 1000, maxOrderNotional: 50000}}
"""


@pytest.fixture
def fake() -> Iterator[Any]:
    with fake_alpaca.serve(fake_alpaca.FakeAlpaca()) as api:
        # The account holds the documented position (5 AAPL); TSLA has no trade at the market data API.
        api.last_trades = {"AAPL": Decimal("172.78"), "MSFT": Decimal("410.10")}
        yield api


def write_session(folder: Path, url: str, account: str = "010203ABCD") -> Path:
    path = folder / "session.yaml"
    path.write_text(SESSION.format(url=url, account=account))
    return path


def write_secret(folder: Path) -> Path:
    secret = folder / "alpaca-keys"
    secret.mkdir()
    (secret / "api-key-id").write_text(fake_alpaca.KEY + "\n")
    (secret / "api-secret-key").write_text(fake_alpaca.SECRET + "\n")
    return secret


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    """Pods started by a test; any still running when it ends (a failed assertion) are killed."""
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


def positions(pod: Pod) -> dict[str, tuple[Decimal, Decimal]]:
    rows = pod.call("GET", "/v1/positions")[1]["positions"]
    return {p["instrument"]: (Decimal(p["quantity"]), Decimal(p["averagePrice"])) for p in rows}


def test_an_alpaca_session_trades_fills_and_restarts_without_a_second_order(
    fake: Any, tmp_path: Path, pods: list[Pod]
) -> None:
    session, secrets, state = write_session(tmp_path, fake.url), write_secret(tmp_path), tmp_path / "volume"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    args = ("--secrets-dir", str(secrets))

    # An empty journal on an account that holds a position: a lost journal volume looks the same,
    # so the pod fails closed (exit 3), says how to adopt, and sends nothing.
    pod = Pod(session, state, token_file, *args)
    pods.append(pod)
    assert pod.proc.wait(60) == 3, pod.output()
    assert "1 positions (AAPL)" in pod.output() and "kubequant trading adopt" in pod.output()
    assert fake.posts == 0
    adopt = [str(Path(sys.executable).parent / "kubequant"), "trading", "adopt", "--state-dir", str(state)]
    done = subprocess.run([*adopt, "--reason", "new session on this account"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    pod = Pod(session, state, token_file, *args)
    pods.append(pod)
    pod.wait_ready()
    assert fake.requests["GET", "/v2/account"] >= 1  # connect checked the key and the account
    assert positions(pod) == {"AAPL": (5, 0)}  # the adopted journal starts from Alpaca's positions

    # A quantity target: the order reaches Alpaca once, under the deterministic client order id.
    msft = client_order_id("alpaca-pod", "sig-1", "MSFT")
    body = {"id": "sig-1", "targets": [{"instrument": "MSFT", "quantity": 10}]}
    code, answer = pod.call("POST", "/v1/signals", body)
    assert code == 202 and answer["orders"][0]["accepted"], answer
    assert answer["orders"][0]["clientOrderId"] == msft
    assert [b["client_order_id"] for b in fake.bodies] == [msft]
    assert fake.bodies[0] | {"qty": None} == {
        "symbol": "MSFT",
        "qty": None,
        "side": "buy",
        "type": "market",
        "time_in_force": "day",
        "client_order_id": msft,
    }

    # A weight target is sized at Alpaca's last trade: 1% of 103820.56 at 172.78 is 6 shares, 5 are held.
    code, answer = pod.call(
        "POST", "/v1/signals", {"id": "sig-2", "targets": [{"instrument": "AAPL", "weight": 0.01}]}
    )
    assert code == 202 and answer["orders"][0]["quantity"] == "1", answer
    aapl = answer["orders"][0]["clientOrderId"]

    # A symbol without a last trade: a market order for it is refused before Alpaca sees it.
    code, answer = pod.call(
        "POST", "/v1/signals", {"id": "sig-3", "targets": [{"instrument": "TSLA", "quantity": 5}]}
    )
    assert code == 202 and answer["orders"][0]["reason"] == "NO_PRICE", answer
    assert "TSLA" in answer["orders"][0]["detail"]
    assert fake.posts == 2

    # Alpaca fills the MSFT order; the FILL activity reaches the positions through housekeeping.
    with fake.lock:
        fake.fill(fake.by_client_id(msft), "10", "410.05")
    wait_for("the MSFT fill", lambda: positions(pod).get("MSFT") == (10, Decimal("410.05")), pod)
    status = pod.call("GET", "/v1/status")[1]
    assert status["brokerConnected"] is True and status["tradingState"] == "ACTIVE", status
    assert pod.call("POST", "/v1/signals", body)[1]["duplicate"] is True
    assert pod.terminate() == 0, pod.output()
    assert "stopped; journal closed" in pod.output()

    # While the pod is down, Alpaca fills the AAPL order.
    with fake.lock:
        fake.fill(fake.by_client_id(aapl), "1", "173.00")
    posts = fake.posts

    pod = Pod(session, state, token_file, *args)
    pods.append(pod)
    pod.wait_ready()
    held = positions(pod)
    assert held["MSFT"] == (10, Decimal("410.05")) and held["AAPL"][0] == 6, pod.output()
    orders = {o["clientOrderId"]: o["status"] for o in pod.call("GET", "/v1/orders")[1]["orders"]}
    assert orders[msft] == orders[aapl] == "filled", orders
    code, again = pod.call("POST", "/v1/signals", body)
    assert code == 200 and again["duplicate"] is True
    assert fake.posts == posts == 2  # the restart reconciled; nothing was sent again
    assert pod.terminate() == 0, pod.output()


def test_a_key_of_another_account_stops_the_pod_naming_the_field(fake: Any, tmp_path: Path) -> None:
    session = write_session(tmp_path, fake.url, account="999999ZZZZ")
    cmd = [sys.executable, "-m", "kubequant.workloads.trading.node.runtime", "--session", str(session)]
    cmd += ["--state-dir", str(tmp_path / "volume"), "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--secrets-dir", str(write_secret(tmp_path))]
    env = {**os.environ, "KUBEQUANT_SIGNAL_TOKEN": TOKEN}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    assert "spec.account: the API key belongs to Alpaca account 010203ABCD, not 999999ZZZZ" in done.stderr
    assert fake.posts == 0


def config(session: Path, tmp_path: Path, secrets: Path | None) -> RuntimeConfig:
    lts, _ = read_session(session)
    return RuntimeConfig(session=lts, policy_path=session, state_dir=tmp_path / "volume", secrets_dir=secrets)


def test_missing_credentials_name_the_secret_key_and_the_fix(
    fake: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ALPACA_API_KEY_ID", raising=False)
    monkeypatch.delenv("ALPACA_API_SECRET_KEY", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError) as err:
        TradingRuntime(config(write_session(tmp_path, fake.url), tmp_path, empty))
    assert "Secret alpaca-keys key api-key-id" in err.value.one_line()
    assert "kubectl create secret generic alpaca-keys" in err.value.one_line()


def test_an_unreachable_broker_fails_the_start_naming_the_endpoint(tmp_path: Path) -> None:
    with fake_alpaca.serve(fake_alpaca.FakeAlpaca()) as gone:
        url = gone.url  # nothing listens there once the block ends
    runtime = TradingRuntime(config(write_session(tmp_path, url), tmp_path, write_secret(tmp_path)))
    try:
        with pytest.raises(BrokerError) as err:
            asyncio.run(runtime.start())
    finally:
        runtime.close()
    assert err.value.where == "spec.broker.endpoint" and "cannot connect to the alpaca broker" in str(
        err.value
    )
    assert not runtime.oms.ready


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("  replay: {speed: 1}\n", "spec.replay"),
        ("  strategy: {scheduled: {signal: {file: {path: /data/scores.csv}}}}\n", "spec.strategy.scheduled"),
    ],
)
def test_paper_only_features_are_refused_for_alpaca(
    fake: Any, tmp_path: Path, extra: str, field: str
) -> None:
    session = write_session(tmp_path, fake.url)
    text = session.read_text().replace("  strategy: {signalApi: {}}\n", "")
    session.write_text(
        text.replace("  timezone: America/New_York\n", "  timezone: America/New_York\n" + extra)
    )
    # replay is refused by the manifest's own rule (validate, the API server); scheduled at start.
    with pytest.raises((ConfigError, ValidationError)) as err:
        TradingRuntime(config(session, tmp_path, write_secret(tmp_path)))
    assert str(err.value.where).endswith(field)
    with pytest.raises(ConfigError) as err:
        parse_args(
            ["--session", str(write_session(tmp_path, fake.url)), "--state-dir", "x", "--signals", "3"]
        )
    assert err.value.where == "--signals"


def test_the_example_session_recovers_against_the_fake_alpaca(fake: Any, tmp_path: Path) -> None:
    example = Path(__file__).parents[3] / "examples" / "live-alpaca-paper.yaml"
    text = example.read_text().replace('"PA0000000000"', '"010203ABCD"')
    text = text.replace("https://paper-api.alpaca.markets", fake.url)
    text = text.replace(
        "# marketDataEndpoint: https://data.alpaca.markets", f"marketDataEndpoint: {fake.url}"
    )
    session = tmp_path / "example.yaml"
    session.write_text(text)
    adopt_stopped(tmp_path / "volume", "the fake account holds AAPL")
    runtime = TradingRuntime(config(session, tmp_path, write_secret(tmp_path)))
    try:
        asyncio.run(runtime.start())
        assert runtime.oms.ready
        knows = runtime.knows()
        assert knows("BRK.B") and not knows("TSLA")  # the universe is the signal API's instrument list
        assert runtime.prices.last_price("AAPL") == Decimal("172.78")
    finally:
        runtime.close()


def test_without_a_universe_only_what_alpaca_lists_as_tradable_is_accepted(fake: Any, tmp_path: Path) -> None:
    session = write_session(tmp_path, fake.url)
    session.write_text(session.read_text().replace("  universe: {instruments: [AAPL, MSFT, TSLA]}\n", ""))
    fake.assets["TSLA"] = False  # listed, not tradable at Alpaca
    adopt_stopped(tmp_path / "volume", "the fake account holds AAPL")
    runtime = TradingRuntime(config(session, tmp_path, write_secret(tmp_path)))
    try:
        knows = runtime.knows()
        assert not knows("AAPL")  # nothing is known before the start has read Alpaca's list
        asyncio.run(runtime.start())
        assert fake.requests["GET", "/v2/assets"] == 1
        assert knows("AAPL") and knows("BRK.B") and not knows("TSLA") and not knows("ZZZZ")
    finally:
        runtime.close()
