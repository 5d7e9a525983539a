"""The signal API over a real runtime (paper broker, SQLite journal, small bundle) through aiohttp's test client."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from kubequant.workloads.trading.adapters.paper.market import QlibMarket
from kubequant.workloads.trading.node.runtime import RuntimeConfig, TradingRuntime, prepare, read_session
from kubequant.workloads.trading.node.signal_api import SignalService, build_app

pytestmark = pytest.mark.integration

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

SESSION = """\
apiVersion: kubequant.io/v1alpha1
kind: LiveTradingSession
metadata:
  name: api-test
spec:
  account: paper-api
  riskPolicyRef: {{name: api-test}}
  data: {{path: {bundle}}}
  startingCash: 2000000
  replay: {{period: "2020-01-01..2020-06-30"}}
---
apiVersion: kubequant.io/v1alpha1
kind: RiskPolicy
metadata:
  name: api-test
spec:
  limits:
    maxOrderQuantity: 20000
"""


@pytest.fixture(scope="module")
def api_session(tmp_path_factory: pytest.TempPathFactory, trading_bundle: Path) -> tuple[Path, QlibMarket]:
    path = tmp_path_factory.mktemp("signal-api") / "session.yaml"
    path.write_text(SESSION.format(bundle=trading_bundle))
    session, _ = read_session(path)
    market = prepare(RuntimeConfig(session=session, policy_path=path, state_dir=path.parent))
    return path, market


Scenario = Callable[[TestClient[Any, Any], TradingRuntime], Awaitable[None]]


@asynccontextmanager
async def api(
    tmp_path: Path, api_session: tuple[Path, QlibMarket], recover: bool = True
) -> AsyncIterator[tuple[TestClient[Any, Any], TradingRuntime]]:
    path, market = api_session
    session, _ = read_session(path)
    runtime = TradingRuntime(
        RuntimeConfig(session=session, policy_path=path, state_dir=tmp_path / "volume"), market
    )
    client = TestClient(TestServer(build_app(SignalService.for_runtime(runtime), TOKEN)))
    await client.start_server()
    try:
        if recover:
            await runtime.start()
        yield client, runtime
    finally:
        await client.close()
        runtime.close()


def run(
    tmp_path: Path, api_session: tuple[Path, QlibMarket], scenario: Scenario, recover: bool = True
) -> None:
    async def main() -> None:
        async with api(tmp_path, api_session, recover) as (client, runtime):
            await scenario(client, runtime)

    asyncio.run(main())


def signal(sid: str, **target: Any) -> dict[str, Any]:
    return {"id": sid, "targets": [{"instrument": "SYN0001", **target}]}


def test_readyz_only_after_recovery(tmp_path: Path, api_session: tuple[Path, QlibMarket]) -> None:
    async def scenario(client: TestClient[Any, Any], runtime: TradingRuntime) -> None:
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 503
        refused = await client.post("/v1/signals", json=signal("early", quantity=100), headers=AUTH)
        assert refused.status == 503
        assert (await (await client.get("/v1/status", headers=AUTH)).json())["phase"] == "Reconciling"
        await runtime.start()
        assert (await client.get("/readyz")).status == 200
        assert (await (await client.get("/v1/status", headers=AUTH)).json())["phase"] == "Trading"

    run(tmp_path, api_session, scenario, recover=False)


def test_bearer_token_on_every_v1_route(tmp_path: Path, api_session: tuple[Path, QlibMarket]) -> None:
    async def scenario(client: TestClient[Any, Any], runtime: TradingRuntime) -> None:
        routes = [
            ("GET", "/v1/orders"),
            ("GET", "/v1/positions"),
            ("GET", "/v1/status"),
            ("POST", "/v1/signals"),
        ]
        for method, route in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                resp = await client.request(method, route, headers=headers, json=signal("a", quantity=100))
                assert resp.status == 401, (route, headers)
                assert (await resp.json())["field"] == "headers.Authorization"
        assert (await client.get("/v1/orders", headers=AUTH)).status == 200
        assert not runtime.oms.state.orders  # the refused POSTs created nothing
        metrics = await client.get("/metrics")  # scraped without a token, like /healthz
        assert metrics.status == 200
        assert "kubequant_signal_to_submit_seconds" in await metrics.text()

    run(tmp_path, api_session, scenario)


def test_the_same_id_twice_makes_one_order(tmp_path: Path, api_session: tuple[Path, QlibMarket]) -> None:
    async def scenario(client: TestClient[Any, Any], runtime: TradingRuntime) -> None:
        body = {
            "id": "sig-1",
            "targets": [
                {"instrument": "SYN0001", "quantity": 500},
                {"instrument": "SYN0002", "weight": 0.05},
            ],
        }
        first = await client.post("/v1/signals", json=body, headers=AUTH)
        assert first.status == 202
        one = await first.json()
        assert one["duplicate"] is False and len(one["orders"]) == 2
        assert all(o["accepted"] and o["reason"] is None for o in one["orders"]), one
        again = await client.post("/v1/signals", json=body, headers=AUTH)
        assert again.status == 200
        two = await again.json()
        assert two["duplicate"] is True
        assert [o["clientOrderId"] for o in two["orders"]] == [o["clientOrderId"] for o in one["orders"]]
        assert len((await (await client.get("/v1/orders", headers=AUTH)).json())["orders"]) == 2
        venue = sqlite3.connect(runtime.cfg.broker_path)
        assert venue.execute("SELECT COUNT(*) FROM submissions").fetchone()[0] == 2

    run(tmp_path, api_session, scenario)


BAD = [
    (b"{not json", 400, "$"),
    (b"[1, 2]", 400, "$"),
    ({"targets": [{"instrument": "SYN0001", "quantity": 1}]}, 422, "id"),
    ({"id": "x", "targets": []}, 422, "targets"),
    (
        signal("x", quantity=1) | {"targets": [{"instrument": "SYN 0001!", "quantity": 1}]},
        422,
        "targets[0].instrument",
    ),
    (
        signal("x", quantity=1) | {"targets": [{"instrument": "NOPE9999", "quantity": 1}]},
        422,
        "targets[0].instrument",
    ),
    (signal("x", weight=1.5), 422, "targets[0].weight"),
    (signal("x", weight=-2), 422, "targets[0].weight"),
    (signal("x", weight=0.1, quantity=100), 422, "targets[0]"),
    (signal("x"), 422, "targets[0]"),
    (signal("x", quantity="lots"), 422, "targets[0].quantity"),
    (signal("x", quantity=100) | {"limitPrices": {"SYN0001": -3}}, 422, "limitPrices.SYN0001"),
    (signal("x", quantity=100) | {"extra": 1}, 422, "extra"),
    # Deeply nested JSON: refused as a bad body, never a 500 (RecursionError) or a huge echo.
    (b"[" * 100_000 + b"]" * 100_000, 400, "$"),
    (b'{"id": "x", "targets": ' + b"[" * 40 + b"]" * 40 + b"}", 400, "$"),
    ({"id": "x", "targets": [{"instrument": [[[["deep"]]]], "quantity": 1}]}, 422, "targets[0].instrument"),
    (signal("x", quantity="1e999999999"), 422, "targets[0].quantity"),
    # More targets than a signal may carry (spec.strategy.signalApi.maxTargets, 500 by default).
    (
        {"id": "x", "targets": [{"instrument": f"SYN{k:04d}", "quantity": 100} for k in range(501)]},
        422,
        "targets",
    ),
]


def test_bad_requests_name_the_field(tmp_path: Path, api_session: tuple[Path, QlibMarket]) -> None:
    async def scenario(client: TestClient[Any, Any], runtime: TradingRuntime) -> None:
        for body, status, field in BAD:
            kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
            resp = await client.post("/v1/signals", headers=AUTH, **kwargs)
            answer = await resp.json()
            assert (resp.status, answer["field"]) == (status, field), (body, answer)
            assert answer["error"] and answer["fix"]
        assert not runtime.oms.state.orders

    run(tmp_path, api_session, scenario)


def test_status_and_positions_after_a_fill(tmp_path: Path, api_session: tuple[Path, QlibMarket]) -> None:
    async def scenario(client: TestClient[Any, Any], runtime: TradingRuntime) -> None:
        ok = await client.post("/v1/signals", json=signal("buy", quantity=500), headers=AUTH)
        assert ok.status == 202
        too_big = await (
            await client.post("/v1/signals", json=signal("big", quantity=50000), headers=AUTH)
        ).json()
        assert too_big["orders"][0]["accepted"] is False
        assert too_big["orders"][0]["reason"] == "ORDER_QUANTITY"
        runtime.broker.advance()  # the paper market deals the open order at the next bar
        await runtime.tick()
        positions = (await (await client.get("/v1/positions", headers=AUTH)).json())["positions"]
        assert [(p["instrument"], p["quantity"]) for p in positions] == [("SYN0001", "500.000000")]
        status = await (await client.get("/v1/status", headers=AUTH)).json()
        assert status["tradingState"] == "ACTIVE" and status["brokerConnected"] is True
        assert (status["ordersToday"], status["fillsToday"], status["rejectionsToday"]) == (1, 1, 1)
        assert status["positions"] == 1 and status["equity"] > 0 and "pnl" in status
        orders = (await (await client.get("/v1/orders", headers=AUTH)).json())["orders"]
        assert {o["status"] for o in orders} == {"filled", "rejected"}

    run(tmp_path, api_session, scenario)


def test_the_same_id_at_the_same_time_answers_with_the_orders(
    tmp_path: Path, api_session: tuple[Path, QlibMarket]
) -> None:
    async def scenario(client: TestClient[Any, Any], runtime: TradingRuntime) -> None:
        body = {
            "id": "twice-at-once",
            "targets": [
                {"instrument": "SYN0001", "quantity": 300},
                {"instrument": "SYN0002", "quantity": 200},
            ],
        }
        first, second = await asyncio.gather(
            client.post("/v1/signals", json=body, headers=AUTH),
            client.post("/v1/signals", json=body, headers=AUTH),
        )
        answers = sorted([(first.status, await first.json()), (second.status, await second.json())])
        assert [status for status, _ in answers] == [200, 202]
        duplicate, original = answers[0][1], answers[1][1]
        assert duplicate["duplicate"] is True and original["duplicate"] is False
        ids = [o["clientOrderId"] for o in original["orders"]]
        assert len(ids) == 2 and [o["clientOrderId"] for o in duplicate["orders"]] == ids
        venue = sqlite3.connect(runtime.cfg.broker_path)
        assert venue.execute("SELECT COUNT(*) FROM submissions").fetchone()[0] == 2

    run(tmp_path, api_session, scenario)


def test_a_weight_without_a_price_is_refused_naming_the_target(
    tmp_path: Path, api_session: tuple[Path, QlibMarket]
) -> None:
    async def scenario(client: TestClient[Any, Any], runtime: TradingRuntime) -> None:
        priced = runtime.oms.view

        def unpriced(*instruments: str) -> Any:  # a venue that has no trade for SYN0002 yet
            view = priced(*instruments)
            return dataclasses.replace(view, marks={k: v for k, v in view.marks.items() if k != "SYN0002"})

        runtime.oms.view = unpriced  # type: ignore[method-assign]
        body = {
            "id": "no-price",
            "targets": [
                {"instrument": "SYN0001", "quantity": 100},
                {"instrument": "SYN0002", "weight": 0.02},
            ],
        }
        refused = await client.post("/v1/signals", json=body, headers=AUTH)
        assert refused.status == 422
        error = await refused.json()
        assert error["field"] == "targets[1].weight" and "SYN0002" in error["error"], error
        assert not runtime.oms.state.orders  # nothing of the signal was sent
        runtime.oms.view = priced  # type: ignore[method-assign]
        accepted = await client.post("/v1/signals", json=body, headers=AUTH)  # the same id, once priced
        assert accepted.status == 202 and len((await accepted.json())["orders"]) == 2

    run(tmp_path, api_session, scenario)


def test_the_same_id_with_another_payload_is_refused_and_a_no_order_signal_is_remembered(
    tmp_path: Path, api_session: tuple[Path, QlibMarket]
) -> None:
    async def first_life(client: TestClient[Any, Any], runtime: TradingRuntime) -> None:
        ok = await client.post("/v1/signals", json=signal("sig-1", quantity=500), headers=AUTH)
        assert ok.status == 202
        other = await client.post("/v1/signals", json=signal("sig-1", quantity=900), headers=AUTH)
        assert other.status == 409, await other.text()
        answer = await other.json()
        assert answer["field"] == "id" and "different payload" in answer["error"]
        same = await client.post("/v1/signals", json=signal("sig-1", quantity=500.0), headers=AUTH)
        assert same.status == 200 and (await same.json())["duplicate"] is True  # 500.0 is 500
        # A target equal to the projected position needs no order; it is journaled all the same.
        nothing = await client.post("/v1/signals", json=signal("sig-2", quantity=500), headers=AUTH)
        assert nothing.status == 202 and (await nothing.json())["orders"] == []

    run(tmp_path, api_session, first_life)

    async def after_restart(client: TestClient[Any, Any], runtime: TradingRuntime) -> None:
        # The process went away: sig-2 made no order, and must still not trade when retried.
        again = await client.post("/v1/signals", json=signal("sig-2", quantity=500), headers=AUTH)
        assert again.status == 200 and (await again.json())["duplicate"] is True
        moved = await client.post("/v1/signals", json=signal("sig-2", quantity=800), headers=AUTH)
        assert moved.status == 409
        assert len(runtime.oms.state.orders) == 1  # only sig-1's order, ever

    run(tmp_path, api_session, after_restart)


def test_quantities_are_whole_lots(tmp_path: Path, api_session: tuple[Path, QlibMarket]) -> None:
    async def scenario(client: TestClient[Any, Any], runtime: TradingRuntime) -> None:
        assert runtime.lot() == 100  # the paper market's trade unit (qlib's, region cn)
        tiny = await client.post("/v1/signals", json=signal("tiny", quantity="1E-20"), headers=AUTH)
        assert tiny.status == 202 and (await tiny.json())["orders"] == []  # less than a lot: no order
        odd = await (
            await client.post("/v1/signals", json=signal("odd", quantity=250.7), headers=AUTH)
        ).json()
        assert [o["quantity"] for o in odd["orders"]] == ["200"]
        assert not runtime.oms.state.orders or all(
            o.quantity % 100 == 0 for o in runtime.oms.state.orders.values()
        )

    run(tmp_path, api_session, scenario)


def test_reads_show_only_what_is_on_disk(tmp_path: Path, api_session: tuple[Path, QlibMarket]) -> None:
    async def scenario(client: TestClient[Any, Any], runtime: TradingRuntime) -> None:
        journal = runtime.journal
        with journal._db_lock:  # the writer is stuck in an fsync: the signal's events are not on disk yet
            sent = asyncio.create_task(
                client.post("/v1/signals", json=signal("s", quantity=300), headers=AUTH)
            )
            for _ in range(50):
                await asyncio.sleep(0.01)
                if runtime.oms.state.orders:
                    break
            assert runtime.oms.state.orders  # applied in memory ...
            read = asyncio.create_task(client.get("/v1/orders", headers=AUTH))
            await asyncio.sleep(0.2)
            assert not read.done()  # ... but not shown before the disk has it
        answer = await read
        assert answer.headers["Kubequant-Journal"] == "durable"
        orders = (await answer.json())["orders"]
        on_disk = {e.client_order_id for e in journal.events() if hasattr(e, "client_order_id")}
        assert {o["clientOrderId"] for o in orders} <= on_disk
        assert (await sent).status == 202

    run(tmp_path, api_session, scenario)
