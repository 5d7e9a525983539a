"""The scheduled strategy on a real runtime: TopkDropout from a scores file, sliced children, a restart mid-rebalance."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from kubequant.cli import main as cli
from kubequant.workloads.trading.execution.journal import Journal
from kubequant.workloads.trading.node.replay import BarClock
from kubequant.workloads.trading.node.runtime import RuntimeConfig, TradingRuntime, prepare, read_session
from kubequant.workloads.trading.node.scheduled import RebalancePlanned, load_scores

pytestmark = pytest.mark.integration

SESSION = """\
apiVersion: kubequant.io/v1alpha1
kind: LiveTradingSession
metadata: {{name: scheduled-test}}
spec:
  account: paper-scheduled
  riskPolicyRef: {{name: scheduled-test}}
  data: {{path: {bundle}}}
  startingCash: 2000000
  strategy:
    scheduled:
      signal: {signal}
      topkDropout: {{topk: 3, nDrop: 1}}
      rebalanceAt: "09:35"
      slices: 4
      sliceIntervalSeconds: 60
  replay: {{period: "2020-02-03..2020-03-31"}}
---
apiVersion: kubequant.io/v1alpha1
kind: RiskPolicy
metadata: {{name: scheduled-test}}
spec:
  limits: {{maxConcentration: 0.5}}
"""


def write_scores(path: Path) -> Path:
    rng = random.Random(5)
    rows = ["datetime,instrument,score"]
    day = dt.date(2020, 1, 1)
    while day <= dt.date(2020, 4, 30):
        if day.weekday() < 5:
            rows += [f"{day},SYN{i:04d},{rng.gauss(0, 1):.6f}" for i in range(1, 9)]
        day += dt.timedelta(days=1)
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def scheduled_session(tmp_path: Path, trading_bundle: Path) -> Path:
    scores = write_scores(tmp_path / "scores.csv")
    path = tmp_path / "session.yaml"
    path.write_text(SESSION.format(bundle=trading_bundle, signal=f"{{file: {{path: {scores}}}}}"))
    return path


def test_children_are_sliced_over_time_and_a_restart_sends_each_once(
    tmp_path: Path, scheduled_session: Path
) -> None:
    session, _ = read_session(scheduled_session)
    cfg = RuntimeConfig(session=session, policy_path=scheduled_session, state_dir=tmp_path / "volume")
    market = prepare(cfg)
    book = load_scores(
        session.spec.strategy.scheduled.signal, market.instruments, ("2020-02-03", "2020-03-31"), print
    )  # type: ignore[union-attr]
    minute = dt.timedelta(seconds=60)

    async def life(until: int) -> list[str]:
        """Start (recover), and send every child due ``until`` minutes after the rebalance starts."""
        runtime = TradingRuntime(cfg, market)
        clock = BarClock(market, runtime.broker, session.spec.timezone)
        runtime.oms.clock = runtime.broker.clock = clock
        try:
            await runtime.start()
            rebalancer = runtime.rebalancer(book)
            assert rebalancer is not None
            day, start = clock.day(), clock.at("09:35")
            sent = []
            for k in range(until + 1):
                clock.set(start + k * minute)
                sent += [
                    o.order.client_order_id for o in await rebalancer.run_due(day, start, start + k * minute)
                ]
            return sent
        finally:
            runtime.close()

    first = asyncio.run(life(1))  # children 0 and 1, then the process goes away
    events = Journal(cfg.journal_path).events()
    (plan,) = [e for e in events if isinstance(e, RebalancePlanned)]
    assert plan.slices == 4 and plan.interval_seconds == 60 and len(plan.orders) == 3  # topk 3 from nothing
    scores = book.latest_before(dt.date.fromisoformat(plan.day))
    assert scores is not None and plan.scores_day == scores[0].isoformat() < plan.day
    best = sorted(scores[1], key=lambda k: -scores[1][k])[:3]
    assert sorted(plan.orders) == sorted(best) and all(q > 0 and q % 100 == 0 for q in plan.orders.values())
    assert len(first) == 2 * 3

    second = asyncio.run(
        life(5)
    )  # after a restart: children 0 and 1 are known from the journal, 2 and 3 go out
    assert len(second) == 2 * 3 and not set(second) & set(first)

    state = Journal(cfg.journal_path)
    from kubequant.workloads.trading.model.state import OmsState

    orders = list(OmsState.rebuild(state.events()).orders.values())
    state.close()
    assert len(orders) == 12
    per_child = Counter(o.signal_id for o in orders)
    assert per_child == {f"rebalance-{plan.day}/{k:03d}": 3 for k in range(1, 5)}
    for inst, parent in plan.orders.items():
        assert sum(o.quantity for o in orders if o.instrument == inst) == parent
        sizes = [o.quantity for o in orders if o.instrument == inst]
        assert max(sizes) - min(sizes) <= 100  # equal slices, in lots
    venue = sqlite3.connect(cfg.broker_path)
    counts = dict(venue.execute("SELECT client_order_id, COUNT(*) FROM submissions GROUP BY client_order_id"))
    venue.close()
    assert len(counts) == 12 and set(counts.values()) == {1}


def test_replay_trades_the_scheduled_strategy(tmp_path: Path, scheduled_session: Path) -> None:
    done = CliRunner().invoke(
        cli, ["run", "-f", str(scheduled_session), "--report-dir", str(tmp_path / "out"), "-o", "json"]
    )
    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout)
    summary = out["replay"]
    assert (
        summary["strategy"].startswith("scheduled (scores from")
        and "4 slices every 60s" in summary["strategy"]
    )
    assert summary["orders"] > 0 and summary["fills"] > 0
    with Journal(tmp_path / "out" / "state" / "journal.sqlite") as journal:
        events = journal.events()
    plans = [e for e in events if isinstance(e, RebalancePlanned)]
    assert len(plans) == summary["bars"]
    # Child k goes out k slice intervals after rebalanceAt on the replay's clock.
    from kubequant.workloads.trading.model.events import OrderCreated

    created = [e for e in events if isinstance(e, OrderCreated)]
    first = [e for e in created if e.signal_id.startswith(plans[0].rebalance_id)]
    times = sorted({e.ts for e in first})
    assert [t - times[0] for t in times] == [dt.timedelta(seconds=60 * k) for k in range(4)]
    assert times[0].astimezone(dt.timezone(dt.timedelta(hours=8))).time() == dt.time(9, 35)
    # Off the signal path, once per bar and once per day: the data quality and the live rank IC.
    from prometheus_client import REGISTRY

    live_ic = REGISTRY.get_sample_value("kubequant_live_rolling_rank_ic")
    assert live_ic is not None and -1.0 <= live_ic <= 1.0
    for field in ("close", "volume"):
        ratio = REGISTRY.get_sample_value("kubequant_data_missing_ratio", {"field": field})
        assert ratio is not None and 0.0 <= ratio < 0.5
    assert REGISTRY.get_sample_value("kubequant_data_instruments_missing") is not None


def test_replay_refuses_a_missing_scores_file_and_a_model_ref(tmp_path: Path, trading_bundle: Path) -> None:
    path = tmp_path / "session.yaml"
    path.write_text(
        SESSION.format(bundle=trading_bundle, signal=f"{{file: {{path: {tmp_path / 'nope.csv'}}}}}")
    )
    done = CliRunner().invoke(cli, ["run", "-f", str(path), "--report-dir", str(tmp_path / "out")])
    assert done.exit_code == 2 and "spec.strategy.scheduled.signal.file.path" in done.output, done.output
    path.write_text(SESSION.format(bundle=trading_bundle, signal="{modelRef: {name: lgb}}"))
    done = CliRunner().invoke(cli, ["run", "-f", str(path), "--report-dir", str(tmp_path / "out")])
    assert done.exit_code == 2 and "spec.strategy.scheduled.signal.modelRef" in done.output, done.output


def test_replay_refuses_scores_outside_the_period(tmp_path: Path, scheduled_session: Path) -> None:
    args = ["run", "-f", str(scheduled_session), "--replay", "2021-02-01..2021-03-01"]
    done = CliRunner().invoke(cli, [*args, "--report-dir", str(tmp_path / "out")])
    assert done.exit_code == 2 and "spec.strategy.scheduled.signal" in done.output and "fix:" in done.output
