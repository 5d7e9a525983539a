"""`kubequant trading report` on a paper session whose exchange has known impact parameters.

Orders of varied size (0.1 % to 15 % of the day's volume, buys and later sells, several
instruments and days) go through the runtime (OMS → risk engine → paper broker → journal); the
report prices every journaled fill with the Backtest's exchange model and fits the impact
coefficients, which must come back within 10 % of the session's.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from kubequant.api.backtest import BacktestSpec
from kubequant.cli import main
from kubequant.workloads.realism.decisions import BacktestOrder, BacktestRun
from kubequant.workloads.realism.replay import permissive_policy, replay_decisions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IMPACT = {"temporary": 0.25, "permanent": 0.03, "beta": 0.6, "slippageBps": 1.0}
DAYS = ("2022-03-01", "2022-03-11")
INSTRUMENTS = [f"SYN{n:04d}" for n in range(1, 13)]


def _orders(days: list[dt.date]) -> list[BacktestOrder]:
    """Buys of 0.1 %-15 % of the day's volume on the first days, sells of part of them later."""
    from qlib.data import D

    volume = D.features(INSTRUMENTS, ["$volume", "$factor"], start_time=DAYS[0], end_time=DAYS[1])
    rng = np.random.default_rng(3)
    held: dict[str, float] = {}
    orders: list[BacktestOrder] = []
    for k, day in enumerate(days):
        seq = 0
        for inst in INSTRUMENTS:
            row = volume.loc[(inst, pd.Timestamp(day))]
            shares_volume = float(row["$volume"]) * float(row["$factor"])
            frac = float(np.exp(rng.uniform(np.log(0.001), np.log(0.15))))
            if k >= 3 and held.get(inst, 0) > 0 and rng.random() < 0.5:
                side, shares = "sell", min(held[inst], np.floor(frac * shares_volume / 100) * 100)
            else:
                side, shares = "buy", np.floor(frac * shares_volume / 100) * 100
            if shares <= 0:
                continue
            held[inst] = held.get(inst, 0.0) + (shares if side == "buy" else -shares)
            orders.append(
                BacktestOrder(day, seq, inst, side, float(shares), 1.0, 0.0, float("nan"), 0.0, 0.0)
            )
            seq += 1
    return orders


@pytest.fixture(scope="module")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qlib.data import D

    from kubequant.workloads.backtest.runner import init_qlib
    from kubequant.workloads.data.bundle import resolve_bundle

    spec = BacktestSpec.model_validate(
        {
            "data": {"sample": {}},
            "period": {"start": DAYS[0], "end": DAYS[1]},
            "account": 1e10,
            "signal": {"file": {"path": __file__}},
            "exchange": {"impact": IMPACT},
        }
    )
    out = tmp_path_factory.mktemp("impact-session")
    init_qlib(resolve_bundle(spec.data, None), "cn", out / "mlruns")
    days = [t.date() for t in D.calendar(start_time=DAYS[0], end_time=DAYS[1])]
    run = BacktestRun(
        "day", _orders(days), pd.DataFrame({"account": 0.0}, index=pd.DatetimeIndex(days)), 1e10
    )
    replayed = replay_decisions(spec, run, "impact", permissive_policy("Asia/Shanghai"), out)
    assert sum(1 for o in replayed.orders if o.quantity > 0) >= 80
    return Path(replayed.state_dir)


def test_fit_recovers_the_sessions_impact_within_10_percent(session_dir: Path) -> None:
    result = CliRunner().invoke(main, ["trading", "report", "--state-dir", str(session_dir), "-o", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    fit = doc["fit"]
    assert fit is not None and fit["fills"] >= 80
    for key in ("temporary", "permanent", "beta"):
        assert fit[key] == pytest.approx(IMPACT[key], rel=0.10), (key, fit)
    # The model charges what the paper broker charged: the same exchange, so shortfall vs model is ~0.
    assert abs(doc["totals"]["shortfallVsModelBps"]) < 0.05
    assert doc["totals"]["shortfallBps"] > 1.0
    assert doc["totals"]["fees"] == pytest.approx(doc["totals"]["modelFees"], rel=1e-4)
    assert doc["impact"]["slippageBps"] == IMPACT["slippageBps"]


def test_table_prints_a_block_to_paste(session_dir: Path) -> None:
    result = CliRunner().invoke(main, ["trading", "report", "--state-dir", str(session_dir)])
    assert result.exit_code == 0, result.output
    assert "Paste into the next Backtest:" in result.output
    block = result.output.split("Paste into the next Backtest:", 1)[1]
    pasted = yaml.safe_load("\n".join(line[4:] for line in block.splitlines()))
    impact = BacktestSpec.model_validate(
        {
            "period": {"start": DAYS[0], "end": DAYS[1]},
            "signal": {"file": {"path": __file__}},
            **pasted["spec"],
        }
    ).exchange.impact
    assert impact is not None and impact.temporary == pytest.approx(IMPACT["temporary"], rel=0.10)


def test_missing_session_names_the_flag(tmp_path: Path, session_dir: Path) -> None:
    (tmp_path / "journal.sqlite").write_bytes((session_dir / "journal.sqlite").read_bytes())
    result = CliRunner().invoke(main, ["trading", "report", "--state-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "--session" in result.output
