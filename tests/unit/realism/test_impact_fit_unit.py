"""The impact fit: recovers known coefficients from exact and from noisy fills, refuses too few."""

from __future__ import annotations

import numpy as np
import pytest

from kubequant.workloads.realism.impact_fit import fit_impact

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("true", [(0.3, 0.02, 0.5), (0.8, 0.0, 1.0), (0.1, 0.05, 0.7)])
def test_recovers_known_coefficients(true: tuple[float, float, float]) -> None:
    rng = np.random.default_rng(5)
    p = np.exp(rng.uniform(np.log(0.001), np.log(0.2), 80))
    s = rng.uniform(0.01, 0.04, 80)
    temp, perm, beta = true
    observed = 2e-4 + temp * s * p**beta + perm * p + rng.normal(0, 2e-6, 80)
    fit = fit_impact(p, s, observed, slippage_bps=2.0)
    assert fit is not None and fit.fills == 80
    assert fit.temporary == pytest.approx(temp, rel=0.05)
    assert fit.beta == pytest.approx(beta, rel=0.05)
    assert fit.permanent == pytest.approx(perm, abs=0.003)
    assert fit.rmse_bps < 0.1


def test_too_few_fills_or_sizes_give_no_fit() -> None:
    assert fit_impact([0.01] * 20, [0.02] * 20, [0.001] * 20) is None  # one size
    assert fit_impact([0.01, 0.02, 0.03], [0.02] * 3, [0.001] * 3) is None  # three fills
