"""Nested execution through `kubequant run`: day decisions executed by 30-minute and 1-minute levels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KUBEQUANT = str(Path(sys.executable).parent / "kubequant")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("minute") / "bundle"
    spec = SampleSpec(
        instruments=20,
        start="2020-01-01",
        end="2020-12-31",
        seed=3,
        freqs=("day", "1min"),
        minute_instruments=8,
        minute_days=12,
    )
    write_sample_bundle(path, spec)
    return path


def _random_scores(bundle: Path, tmp: Path, seed: int) -> Path:
    """Random scores for the minute instruments over the last days: a signal with no edge."""
    codes = [
        line.split("\t")[0] for line in (bundle / "instruments" / "intraday.txt").read_text().splitlines()
    ]
    days = (bundle / "calendars" / "day.txt").read_text().split()[-14:]
    rng = np.random.default_rng(seed)
    path = tmp / "scores.csv"
    rows = [(d, c, rng.normal()) for d in days for c in codes]
    pd.DataFrame(rows, columns=["datetime", "instrument", "score"]).to_csv(path, index=False)
    return path


def _manifest(bundle: Path, scores: Path, name: str, levels: list[dict[str, Any]] | None) -> dict[str, Any]:
    days = [d for d in (bundle / "calendars" / "day.txt").read_text().split()]
    spec: dict[str, Any] = {
        "data": {"path": str(bundle)},
        "universe": {"market": "intraday"},
        "period": {"start": days[-11], "end": days[-2]},
        "account": 5_000_000,
        "signal": {"file": {"path": str(scores)}},
        "strategy": {"topkDropout": {"topk": 4, "nDrop": 1}},
    }
    if levels:
        spec["executor"] = {"frequency": "day", "levels": levels}
    return {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "Backtest",
        "metadata": {"name": name},
        "spec": spec,
    }


def _run(doc: dict[str, Any], tmp: Path) -> dict[str, Any]:
    manifest = tmp / f"{doc['metadata']['name']}.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    proc = subprocess.run(
        [
            KUBEQUANT,
            "run",
            "-f",
            str(manifest),
            "-o",
            "json",
            "--report-dir",
            str(tmp / doc["metadata"]["name"]),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_nested_levels_trade_intraday(bundle: Path, tmp_path: Path) -> None:
    scores = _random_scores(bundle, tmp_path, seed=5)
    single = _run(_manifest(bundle, scores, "single", None), tmp_path)
    nested = _run(
        _manifest(
            bundle,
            scores,
            "nested",
            [
                {"frequency": "30min", "strategy": {"sbbEma": {}}},
                {"frequency": "1min", "strategy": {"twap": {}}},
            ],
        ),
        tmp_path,
    )
    assert single["days"] == nested["days"] == 10
    # Execution quality per level, outermost first, and the single-level comparison on the same signal.
    levels = nested["execution"]["levels"]
    assert [lv["frequency"] for lv in levels] == ["day", "30min", "1min"]
    assert all(0 < lv["fillRate"] <= 1 for lv in levels)
    assert nested["execution"]["fillsPerOrder"] > 5
    assert 0 < nested["execution"]["participation"] < 1
    assert nested["singleLevel"]["trades"] == single["trades"]
    assert nested["singleLevel"]["annualizedReturn"] == pytest.approx(single["annualizedReturn"])
    assert [lv["frequency"] for lv in single["execution"]["levels"]] == [
        "day"
    ] and "singleLevel" not in single
    # Orders are split into many intraday fills, each one at a minute bar's price.
    assert nested["trades"] > 5 * single["trades"] > 0
    trades = pd.read_csv(tmp_path / "nested" / "trades.csv", parse_dates=["datetime"])
    assert (trades["datetime"].dt.time != pd.Timestamp("00:00").time()).all()
    assert trades["datetime"].dt.strftime("%H:%M").between("09:30", "15:00").all()
    # The last day trades too (its minutes are loaded through 15:00, not cut at midnight).
    last = (bundle / "calendars" / "day.txt").read_text().split()[-2]
    assert (trades["datetime"].dt.strftime("%Y-%m-%d") == last).any()


def test_nested_without_minute_bars_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "daily"
    write_sample_bundle(path, SampleSpec(instruments=5, start="2020-01-01", end="2020-03-31"))
    scores = tmp_path / "s.csv"
    scores.write_text("datetime,instrument,score\n2020-03-02,SYN0001,1\n")
    doc = _manifest(path, scores, "nominutes", [{"frequency": "1min", "strategy": {"twap": {}}}])
    doc["spec"]["universe"] = {"market": "all"}
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    proc = subprocess.run(
        [KUBEQUANT, "run", "-f", str(manifest)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "spec.executor.levels" in proc.stderr and "1-minute bars" in proc.stderr


def test_vwap_follows_the_intraday_volume_profile(bundle: Path, tmp_path: Path) -> None:
    """VWAP puts more of each order into the busy first and last half hours than TWAP does."""
    scores = _random_scores(bundle, tmp_path, seed=9)
    shares = {}
    for kind in ("twap", "vwap"):
        doc = _manifest(bundle, scores, kind, [{"frequency": "1min", "strategy": {kind: {}}}])
        result = _run(doc, tmp_path)
        assert result["trades"] > 0
        trades = pd.read_csv(tmp_path / kind / "trades.csv", parse_dates=["datetime"])
        clock = trades["datetime"].dt.strftime("%H:%M")
        edges = (clock < "10:00") | (clock >= "14:30")
        value = trades["amount"] * trades["price"]
        shares[kind] = value[edges].sum() / value.sum()
    print(f"share of traded value in 09:30–10:00 and 14:30–15:00: {shares}")
    # A TWAP day spends 60 of its 240 minutes in those windows (25 %); the U-shaped volume pulls VWAP above it.
    assert shares["twap"] == pytest.approx(0.25, abs=0.05)
    assert shares["vwap"] > shares["twap"] + 0.05, shares


def test_capped_slices_carry_or_expire(bundle: Path, tmp_path: Path) -> None:
    """With a tight participation cap, carry makes up unfilled slices later; expire gives them up."""
    scores = _random_scores(bundle, tmp_path, seed=11)
    traded = {}
    for on_cap in ("carry", "expire"):
        doc = _manifest(bundle, scores, on_cap, [{"frequency": "1min", "strategy": {"twap": {}}}])
        doc["spec"]["account"] = 50_000_000  # large orders, so the cap binds
        doc["spec"]["exchange"] = {
            "impact": {
                "permanent": 0,
                "temporary": 0,
                "slippageBps": 0,
                "maxParticipation": 0.02,
                "onCap": on_cap,
            }
        }
        result = _run(doc, tmp_path)
        trades = pd.read_csv(tmp_path / on_cap / "trades.csv")
        traded[on_cap] = float((trades["amount"] * trades["price"]).sum())
        assert result["execution"]["participation"] <= 0.02 + 1e-9
    print(f"traded value with a 2 % cap: {traded}")
    assert traded["expire"] < 0.95 * traded["carry"], traded
