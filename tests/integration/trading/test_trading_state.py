"""Clearing a latched halt: POST /v1/trading-state on a running runtime, ``kubequant trading resume`` on a stopped one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from kubequant.api.live import TradingState
from kubequant.cli import main as cli
from kubequant.workloads.trading.adapters.paper.market import QlibMarket
from kubequant.workloads.trading.execution.journal import Journal
from kubequant.workloads.trading.execution.reconcile import sync_risk_state
from kubequant.workloads.trading.node.runtime import RuntimeConfig, TradingRuntime, prepare, read_session
from kubequant.workloads.trading.node.signal_api import SignalService, build_app
from kubequant.workloads.trading.risk.trading_state import RuntimeLock, TradingStateSet

pytestmark = pytest.mark.integration

TOKEN = "state-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SESSION = """\
apiVersion: kubequant.io/v1alpha1
kind: LiveTradingSession
metadata: {{name: resume-test}}
spec:
  account: paper-resume
  riskPolicyRef: {{name: resume-test}}
  data: {{path: {bundle}}}
  startingCash: 2000000
  halted: {halted}
  replay: {{period: "2020-01-01..2020-06-30"}}
---
apiVersion: kubequant.io/v1alpha1
kind: RiskPolicy
metadata: {{name: resume-test}}
spec:
  breakers: {{maxDrawdown: 0.05, action: halt}}
"""


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory, trading_bundle: Path) -> QlibMarket:
    path = tmp_path_factory.mktemp("resume") / "session.yaml"
    path.write_text(SESSION.format(bundle=trading_bundle, halted="false"))
    session, _ = read_session(path)
    return prepare(RuntimeConfig(session=session, policy_path=path, state_dir=path.parent))


def session_file(tmp_path: Path, trading_bundle: Path, halted: bool = False) -> Path:
    path = tmp_path / ("halted.yaml" if halted else "session.yaml")
    path.write_text(SESSION.format(bundle=trading_bundle, halted=str(halted).lower()))
    return path


def runtime_for(path: Path, state: Path, market: QlibMarket) -> TradingRuntime:
    session, _ = read_session(path)
    return TradingRuntime(RuntimeConfig(session=session, policy_path=path, state_dir=state), market)


async def halt_on_drawdown(runtime: TradingRuntime) -> None:
    """Latch the drawdown breaker as a loss would: the peak is far above today's equity."""
    await runtime.start()
    account = runtime.oms.state.account
    assert account is not None
    runtime.risk.peak_equity = account.equity * 2
    runtime.risk.observe_equity(account.equity, runtime.oms.clock.now())
    await sync_risk_state(runtime.oms)
    assert runtime.risk.state is TradingState.HALTED


def with_api(runtime: TradingRuntime, scenario: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    async def main() -> None:
        await halt_on_drawdown(runtime)
        client = TestClient(TestServer(build_app(SignalService.for_runtime(runtime), TOKEN)))
        await client.start_server()
        try:
            await scenario(client)
        finally:
            await client.close()

    asyncio.run(main())


def test_post_trading_state_resumes_a_running_runtime_and_the_restart_keeps_it(
    tmp_path: Path, trading_bundle: Path, market: QlibMarket
) -> None:
    path, state = session_file(tmp_path, trading_bundle), tmp_path / "volume"
    runtime = runtime_for(path, state, market)

    async def scenario(client: TestClient[Any, Any]) -> None:
        body = {"state": "ACTIVE", "reason": "drawdown reviewed"}
        assert (await client.post("/v1/trading-state", json=body)).status == 401
        refused = await client.post(
            "/v1/signals",
            json={"id": "a", "targets": [{"instrument": "SYN0001", "quantity": 100}]},
            headers=AUTH,
        )
        assert (await refused.json())["orders"][0]["reason"] == "HALTED"
        resp = await client.post("/v1/trading-state", json=body, headers=AUTH)
        answer = await resp.json()
        assert resp.status == 200, answer
        assert (answer["previous"], answer["state"]) == ("HALTED", "ACTIVE")
        assert "max_drawdown" in answer["cleared"]
        ok = await client.post(
            "/v1/signals",
            json={"id": "b", "targets": [{"instrument": "SYN0001", "quantity": 100}]},
            headers=AUTH,
        )
        assert (await ok.json())["orders"][0]["accepted"] is True
        await runtime.tick()  # the breaker measures from the resumed equity: it does not latch again
        assert runtime.risk.state is TradingState.ACTIVE
        status = await (await client.get("/v1/status", headers=AUTH)).json()
        assert status["tradingState"] == "ACTIVE" and "haltReason" not in status

    with_api(runtime, scenario)
    runtime.close()
    events = Journal(state / "journal.sqlite").events()
    (resumed,) = [e for e in events if isinstance(e, TradingStateSet)]
    assert (resumed.state, resumed.reason, resumed.source) == ("ACTIVE", "drawdown reviewed", "api")

    again = runtime_for(path, state, market)
    asyncio.run(again.start())
    assert again.risk.state is TradingState.ACTIVE and again.oms.ready
    again.close()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"state": "PAUSED", "reason": "x"}, 422, "state"),
        ({"state": "ACTIVE"}, 422, "reason"),
        ({"state": "ACTIVE", "reason": "  "}, 422, "reason"),
        ({"state": "ACTIVE", "reason": "x", "force": True}, 422, "force"),
        ([1], 400, "$"),
    ],
)
def test_bad_trading_state_requests_name_the_field(
    tmp_path: Path, trading_bundle: Path, market: QlibMarket, body: Any, status: int, field: str
) -> None:
    runtime = runtime_for(session_file(tmp_path, trading_bundle), tmp_path / "volume", market)

    async def scenario(client: TestClient[Any, Any]) -> None:
        resp = await client.post("/v1/trading-state", json=body, headers=AUTH)
        answer = await resp.json()
        assert (resp.status, answer["field"]) == (status, field), answer
        assert answer["fix"]
        assert runtime.risk.state is TradingState.HALTED

    with_api(runtime, scenario)
    runtime.close()


def test_the_kill_switch_is_never_resumed_over_the_api(
    tmp_path: Path, trading_bundle: Path, market: QlibMarket
) -> None:
    runtime = runtime_for(session_file(tmp_path, trading_bundle, halted=True), tmp_path / "volume", market)

    async def scenario(client: TestClient[Any, Any]) -> None:
        resp = await client.post("/v1/trading-state", json={"state": "ACTIVE", "reason": "go"}, headers=AUTH)
        answer = await resp.json()
        assert resp.status == 409 and answer["field"] == "spec.halted", answer
        assert "spec.halted: false" in answer["fix"]
        assert runtime.risk.state is TradingState.HALTED

    with_api(runtime, scenario)
    runtime.close()


def test_a_manual_halt_over_the_api_cancels_and_holds(
    tmp_path: Path, trading_bundle: Path, market: QlibMarket
) -> None:
    path, state = session_file(tmp_path, trading_bundle), tmp_path / "volume"
    runtime = runtime_for(path, state, market)

    async def scenario(client: TestClient[Any, Any]) -> None:
        await client.post("/v1/trading-state", json={"state": "ACTIVE", "reason": "ok"}, headers=AUTH)
        resp = await client.post(
            "/v1/trading-state", json={"state": "HALTED", "reason": "news"}, headers=AUTH
        )
        assert (await resp.json())["state"] == "HALTED"

    with_api(runtime, scenario)
    runtime.close()
    again = runtime_for(path, state, market)
    asyncio.run(again.start())
    assert again.risk.state is TradingState.HALTED and "manual" in again.risk.conditions  # survives a restart
    again.close()


def stopped_halted(tmp_path: Path, trading_bundle: Path, market: QlibMarket, halted: bool = False) -> Path:
    path, state = session_file(tmp_path, trading_bundle, halted), tmp_path / "volume"
    runtime = runtime_for(path, state, market)
    asyncio.run(halt_on_drawdown(runtime))
    runtime.close()
    return state


@pytest.mark.parametrize("to", ["ACTIVE", "REDUCING"])
def test_trading_resume_on_a_stopped_runtime_sets_the_next_start(
    tmp_path: Path, trading_bundle: Path, market: QlibMarket, to: str
) -> None:
    state = stopped_halted(tmp_path, trading_bundle, market)
    path = session_file(tmp_path, trading_bundle)
    args = ["trading", "resume", "--state-dir", str(state), "--reason", "loss reviewed", "--to", to]
    done = CliRunner().invoke(cli, [*args, "--session", str(path)])
    assert done.exit_code == 0, done.output
    assert f"HALTED -> {to} at the next start" in done.output and "max_drawdown" in done.output
    again = runtime_for(path, state, market)
    asyncio.run(again.start())
    assert again.risk.state is TradingState(to) and again.oms.ready
    asyncio.run(again.tick())  # the drawdown is measured from the resumed equity: no new latch
    assert again.risk.state is TradingState(to)
    again.close()


def test_trading_resume_refuses_the_kill_switch_a_running_runtime_and_a_missing_journal(
    tmp_path: Path, trading_bundle: Path, market: QlibMarket
) -> None:
    state = stopped_halted(tmp_path, trading_bundle, market)
    base = ["trading", "resume", "--state-dir", str(state), "--reason", "go"]
    halted = session_file(tmp_path, trading_bundle, halted=True)
    done = CliRunner().invoke(cli, [*base, "--session", str(halted)])
    assert done.exit_code == 2 and "spec.halted" in done.output and "fix:" in done.output, done.output

    with RuntimeLock(state):  # a runtime is running on the volume
        done = CliRunner().invoke(cli, base)
        assert done.exit_code == 2 and "POST /v1/trading-state" in done.output, done.output

    done = CliRunner().invoke(
        cli, ["trading", "resume", "--state-dir", str(tmp_path / "nope"), "--reason", "x"]
    )
    assert done.exit_code == 2 and "journal.sqlite" in done.output and "--state-dir" in done.output

    done = CliRunner().invoke(cli, [*base, "--to", "HALTED"])
    assert done.exit_code == 2 and "--to" in done.output
    # Nothing was written by the refusals: the next start is still halted.
    assert not [e for e in Journal(state / "journal.sqlite").events() if isinstance(e, TradingStateSet)]


def test_trading_resume_without_a_session_reads_the_kill_switch_from_the_journal(
    tmp_path: Path, trading_bundle: Path, market: QlibMarket
) -> None:
    state = stopped_halted(tmp_path, trading_bundle, market, halted=True)
    done = CliRunner().invoke(cli, ["trading", "resume", "--state-dir", str(state), "--reason", "go"])
    assert done.exit_code == 2 and "spec.halted" in done.output and "--session" in done.output, done.output
