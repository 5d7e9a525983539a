"""What stands in front of the signal API's routes, over a real server on loopback: the bearer token
(compared in constant time, never logged), the per-client rate limit (429 with Retry-After), and the
body size limit (413 before the body is read)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kubequant.workloads.trading.adapters.paper.market import QlibMarket
from kubequant.workloads.trading.node import signal_api
from kubequant.workloads.trading.node.runtime import RuntimeConfig, TradingRuntime, prepare, read_session
from kubequant.workloads.trading.node.signal_api import (
    MAX_BODY_BYTES,
    SignalService,
    build_app,
    load_token,
    serve,
)

pytestmark = pytest.mark.integration

TOKEN = "guard-token-5a1f0c9e7d3b"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SESSION = """\
apiVersion: kubequant.io/v1alpha1
kind: LiveTradingSession
metadata: {{name: guard-test}}
spec:
  account: paper-guard
  riskPolicyRef: {{name: guard-test}}
  data: {{path: {bundle}}}
  startingCash: 2000000
  replay: {{period: "2020-01-01..2020-06-30"}}
  strategy:
    signalApi: {{rateLimit: {{requestsPerSecond: {rate}, burst: {burst}}}}}
---
apiVersion: kubequant.io/v1alpha1
kind: RiskPolicy
metadata: {{name: guard-test}}
spec:
  limits: {{maxOrderQuantity: 20000}}
"""


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory, trading_bundle: Path) -> QlibMarket:
    path = tmp_path_factory.mktemp("guard") / "session.yaml"
    path.write_text(SESSION.format(bundle=trading_bundle, rate=5000, burst=5000))
    session, _ = read_session(path)
    return prepare(RuntimeConfig(session=session, policy_path=path, state_dir=path.parent))


@asynccontextmanager
async def live(
    tmp_path: Path, trading_bundle: Path, market: QlibMarket, rate: int = 5000, burst: int = 5000
) -> AsyncIterator[str]:
    """A recovered paper session served on 127.0.0.1 by the production server; yields its URL."""
    path = tmp_path / "session.yaml"
    path.write_text(SESSION.format(bundle=trading_bundle, rate=rate, burst=burst))
    session, _ = read_session(path)
    runtime = TradingRuntime(
        RuntimeConfig(session=session, policy_path=path, state_dir=tmp_path / "v"), market
    )
    runner, port = await serve(build_app(SignalService.for_runtime(runtime), TOKEN), "127.0.0.1", 0)
    try:
        await runtime.start()
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        runtime.close()


async def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes no HTTP client would (a header that is not UTF-8, a body shorter than announced)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


def test_every_token_is_compared_in_constant_time(
    tmp_path: Path, trading_bundle: Path, market: QlibMarket, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(given: bytes, expected: bytes) -> bool:
        compared.append((given, expected))
        return real(given, expected)

    monkeypatch.setattr(signal_api.hmac, "compare_digest", recording)

    async def scenario() -> None:
        async with live(tmp_path, trading_bundle, market) as url, aiohttp.ClientSession(url) as client:
            sent = [{}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}, AUTH]
            statuses = [(await client.get("/v1/orders", headers=h)).status for h in sent]
            assert statuses == [401, 401, 401, 200]
            # The scheme is case-insensitive (RFC 7235), the token is not.
            assert (
                await client.get("/v1/orders", headers={"Authorization": f"bearer {TOKEN}"})
            ).status == 200
            upper = {"Authorization": f"Bearer {TOKEN.upper()}"}
            assert (await client.get("/v1/orders", headers=upper)).status == 401
            # Not UTF-8: refused like any wrong token (not a 500 from decoding it).
            status, _ = await raw_request(
                url, b"GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n"
            )
            assert status == 401

    asyncio.run(scenario())
    assert len(compared) == 7  # every request on a /v1 route, accepted or not, went through compare_digest
    assert {expected for _, expected in compared} == {TOKEN.encode()}
    assert [given for given, _ in compared][:4] == [b"", b"nope", b"", TOKEN.encode()]


def test_the_token_is_never_logged_nor_echoed(
    tmp_path: Path, trading_bundle: Path, market: QlibMarket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    guess = "Bearer guess-7f3e9a0b1c2d"
    bodies: list[str] = []

    async def scenario() -> None:
        async with live(tmp_path, trading_bundle, market) as url, aiohttp.ClientSession(url) as client:
            for headers in (AUTH, {"Authorization": guess}):
                for method, route in [("GET", "/v1/status"), ("POST", "/v1/signals")]:
                    resp = await client.request(
                        method, route, headers=headers, json={"id": "t", "targets": [{"instrument": "X"}]}
                    )
                    bodies.append(await resp.text())
            # A header the HTTP parser refuses: aiohttp logs the parser's error, which quotes the line.
            status, _ = await raw_request(
                url,
                f"GET /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\x00\r\n\r\n".encode(),
            )
            assert status == 400

    asyncio.run(scenario())
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert load_token(token_file) == TOKEN
    assert load_token(env={"KUBEQUANT_SIGNAL_TOKEN": TOKEN}) == TOKEN
    assert any(r.name == signal_api.SERVER_LOG.name for r in caplog.records), (
        "the check below would be vacuous"
    )
    logged = caplog.text  # messages and tracebacks, as a handler writes them
    assert TOKEN not in logged and "guess-7f3e9a0b1c2d" not in logged
    assert "[REDACTED]" in logged
    assert not any(TOKEN in b or "guess-7f3e9a0b1c2d" in b for b in bodies), bodies


def test_a_client_over_its_rate_gets_429_with_retry_after_and_others_do_not(
    tmp_path: Path, trading_bundle: Path, market: QlibMarket
) -> None:
    async def scenario() -> None:
        async with live(tmp_path, trading_bundle, market, rate=2, burst=3) as url:
            async with aiohttp.ClientSession(url, headers=AUTH) as client:
                answers = [await client.get("/v1/orders") for _ in range(4)]
                assert [a.status for a in answers] == [200, 200, 200, 429]
                refused = answers[-1]
                assert refused.headers["Retry-After"] == "1"
                assert (await refused.json())["field"] == "$"
                # A token guess is throttled like any request (the limit comes before the token).
                assert (await client.get("/v1/orders", headers={"Authorization": "Bearer x"})).status == 429
                # Probes and metrics are not the API's operations: never throttled.
                assert {(await client.get("/healthz")).status for _ in range(5)} == {200}
                # Another client (by address: 127.0.0.2 is loopback too) has its own allowance.
                other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
                async with aiohttp.ClientSession(url, headers=AUTH, connector=other) as second:
                    assert (await second.get("/v1/orders")).status == 200
                await asyncio.sleep(1.1)  # two requests' worth refilled
                assert (await client.get("/v1/orders")).status == 200

    asyncio.run(scenario())


def test_an_oversized_body_is_refused_before_it_is_read(
    tmp_path: Path, trading_bundle: Path, market: QlibMarket
) -> None:
    async def scenario() -> None:
        async with live(tmp_path, trading_bundle, market) as url:
            # Announces 2 MiB, sends 16 bytes: the answer comes without the rest ever being sent.
            head = (
                f"POST /v1/signals HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {2 * MAX_BODY_BYTES}\r\n\r\n"
            ).encode()
            status, body = await raw_request(url, head, b'{"id": "big", "t')
            assert status == 413 and b'"field": "$"' in body, body

            async def chunks() -> AsyncIterator[
                bytes
            ]:  # no Content-Length: read until the limit, then refused
                yield b'{"id": "big", "targets": ['
                for _ in range(MAX_BODY_BYTES // 40_000 + 1):
                    yield b'{"instrument": "SYN0001", "quantity": 1},' * 1000
                yield b"]}"

            async with aiohttp.ClientSession(url, headers=AUTH) as client:
                resp = await client.post(
                    "/v1/signals", data=chunks(), headers={"Content-Type": "application/json"}
                )
                answer: dict[str, Any] = await resp.json()
                assert (resp.status, answer["field"]) == (413, "$"), answer
                orders = await (await client.get("/v1/orders")).json()
                assert orders == {"orders": []}

    asyncio.run(scenario())


def test_every_answer_on_a_v1_route_is_counted_by_route_template_and_status(
    tmp_path: Path, trading_bundle: Path, market: QlibMarket
) -> None:
    from kubequant.workloads.trading.node.metrics import SIGNAL_API_ANSWERS

    def counts() -> dict[tuple[str, str], float]:
        return {
            (s.labels["route"], s.labels["code"]): s.value
            for m in SIGNAL_API_ANSWERS.collect()
            for s in m.samples
            if s.name.endswith("_total")
        }

    before = counts()

    async def scenario() -> None:
        async with live(tmp_path, trading_bundle, market) as url, aiohttp.ClientSession(url) as client:
            assert (await client.get("/v1/orders", headers=AUTH)).status == 200
            assert (await client.get("/v1/orders")).status == 401
            assert (await client.get("/v1/no-such-route/123", headers=AUTH)).status == 404
            assert (await client.get("/v1/signals", headers=AUTH)).status == 405
            assert (await client.post("/v1/signals", headers=AUTH, json={"id": "c-1"})).status == 422
            assert (await client.get("/healthz")).status == 200  # not an operation of the API: not counted

    asyncio.run(scenario())
    grown = {k: v - before.get(k, 0) for k, v in counts().items() if v != before.get(k, 0)}
    assert grown == {
        ("/v1/orders", "200"): 1,
        ("/v1/orders", "401"): 1,
        ("unmatched", "404"): 1,  # no route for the method and path: one label, whatever the path
        ("unmatched", "405"): 1,
        ("/v1/signals", "422"): 1,
    }
