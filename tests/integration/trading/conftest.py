"""Fixtures of the trading integration tests: a synthetic bundle and a session manifest over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubequant.workloads.data.sample import SampleSpec, write_sample_bundle

SAMPLE = SampleSpec(instruments=8, start="2019-01-01", end="2023-12-31", seed=11)

SESSION = """\
apiVersion: kubequant.io/v1alpha1
kind: LiveTradingSession
metadata:
  name: crash-test
spec:
  account: paper-crash
  riskPolicyRef: {{name: crash-test}}
  data: {{path: {bundle}}}
  startingCash: 2000000
  exchange: {{openCost: 0.0005, closeCost: 0.0015, minCost: 5}}
---
apiVersion: kubequant.io/v1alpha1
kind: RiskPolicy
metadata:
  name: crash-test
spec:
  limits:
    maxOrderQuantity: 900
    maxConcentration: 0.5
    maxDailyTrades: 100000
"""


@pytest.fixture(scope="session")
def trading_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five years of eight synthetic stocks (enough bars that the crash test never runs out)."""
    out = tmp_path_factory.mktemp("trading-bundle") / "bundle"
    write_sample_bundle(out, SAMPLE)
    return out


@pytest.fixture
def session_file(tmp_path: Path, trading_bundle: Path) -> Path:
    """A paper LiveTradingSession and its RiskPolicy in one manifest file."""
    path = tmp_path / "session.yaml"
    path.write_text(SESSION.format(bundle=trading_bundle))
    return path
