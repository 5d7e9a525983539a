"""The status a trading pod reports: the policy generation it enforces, the bar's gaps, the live rank IC."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from pathlib import Path

import pytest

from kubequant.workloads.trading.node.replay import BarClock
from kubequant.workloads.trading.node.runtime import RuntimeConfig, TradingRuntime, prepare, read_session
from kubequant.workloads.trading.node.scheduled import load_scores
from kubequant.workloads.trading.node.signal_api import SignalService

pytestmark = pytest.mark.integration

SESSION = """\
apiVersion: kubequant.io/v1alpha1
kind: LiveTradingSession
metadata: {{name: status-fields}}
spec:
  account: paper-status
  riskPolicyRef: {{name: status-fields}}
  data: {{path: {bundle}}}
  strategy:
    scheduled:
      signal: {{file: {{path: {scores}}}}}
      topkDropout: {{topk: 3, nDrop: 1}}
      slices: 1
  replay: {{period: "2020-02-03..2020-03-31"}}
---
apiVersion: kubequant.io/v1alpha1
kind: RiskPolicy
metadata: {{name: status-fields, generation: 7}}
spec:
  limits: {{maxConcentration: 0.5}}
"""


def test_status_reports_the_policy_generation_data_quality_and_live_rank_ic(
    tmp_path: Path, trading_bundle: Path
) -> None:
    rng = random.Random(11)
    rows = ["datetime,instrument,score"]
    day = dt.date(2020, 1, 1)
    while day <= dt.date(2020, 4, 30):
        if day.weekday() < 5:
            rows += [f"{day},SYN{i:04d},{rng.gauss(0, 1):.6f}" for i in range(1, 9)]
        day += dt.timedelta(days=1)
    scores_path = tmp_path / "scores.csv"
    scores_path.write_text("\n".join(rows) + "\n")
    path = tmp_path / "session.yaml"
    path.write_text(SESSION.format(bundle=trading_bundle, scores=scores_path))
    session, _ = read_session(path)
    cfg = RuntimeConfig(session=session, policy_path=path, state_dir=tmp_path / "volume")
    market = prepare(cfg)
    book = load_scores(
        session.spec.strategy.scheduled.signal, market.instruments, ("2020-02-03", "2020-03-31"), print
    )  # type: ignore[union-attr]

    async def run() -> dict:
        runtime = TradingRuntime(cfg, market)
        clock = BarClock(market, runtime.broker, session.spec.timezone)
        runtime.oms.clock = runtime.broker.clock = clock
        try:
            await runtime.start()
            await runtime.policy.started()
            service = SignalService.for_runtime(runtime)
            before = service.status()
            assert "liveRankIc" not in before  # no day has closed yet
            for _ in range(4):  # four trading days: three daily ICs
                clock.set(clock.at("09:30"))
                runtime.observe_day(clock.day(), book)
                runtime.broker.advance()
                await runtime.tick()
            return service.status()
        finally:
            runtime.close()

    status = asyncio.run(run())
    assert status["appliedPolicyGeneration"] == 7
    quality = status["dataQuality"]
    assert quality["instruments"] == len(market.instruments) == 8
    assert set(quality["missingRatio"]) == {"close", "volume"}
    assert all(0.0 <= v <= 1.0 for v in quality["missingRatio"].values())
    assert -1.0 <= status["liveRankIc"] <= 1.0
