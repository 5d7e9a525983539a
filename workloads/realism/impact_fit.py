"""Fitting the Almgren–Chriss impact model of ``workloads/backtest/impact.py`` to observed fills.

For a fill of q shares in a bar of volume V (participation p = q/V), arrival price P and daily
volatility σ, the model's fill is P·(1 + d·f) with f = slippageBps/1e4 + temporary·σ·p^β +
permanent·p. Each fill gives the observed f, d·(fill/P − 1); with the slippage held at the
session's, (temporary, permanent, β) are the nonlinear least-squares fit (scipy's
``least_squares``, residuals in basis points, bounded to the API's ranges) of
temporary·σ·p^β + permanent·p to f − slippage, started from a few β and the best kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

BPS = 1e4
BETA_BOUNDS = (0.05, 2.0)  # the API takes β in (0, 2]
MIN_FILLS = 6


@dataclass(frozen=True)
class ImpactFit:
    """The fitted coefficients and how well they fit (residual RMS in bp)."""

    temporary: float
    permanent: float
    beta: float
    rmse_bps: float
    fills: int


def model_fraction(
    params: npt.NDArray[np.float64], sigma: npt.NDArray[np.float64], p: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """temporary·σ·p^β + permanent·p for params = (temporary, permanent, β)."""
    temporary, permanent, beta = params
    out: npt.NDArray[np.float64] = temporary * sigma * np.power(p, beta) + permanent * p
    return out


def fit_impact(
    participation: npt.ArrayLike,
    sigma: npt.ArrayLike,
    observed: npt.ArrayLike,
    slippage_bps: float = 0.0,
) -> ImpactFit | None:
    """Fit (temporary, permanent, β) to observed impact fractions; None with too few usable fills."""
    from scipy.optimize import least_squares

    p = np.asarray(participation, dtype=np.float64)
    s = np.asarray(sigma, dtype=np.float64)
    y = np.asarray(observed, dtype=np.float64) - slippage_bps / BPS
    ok = np.isfinite(p) & np.isfinite(s) & np.isfinite(y) & (p > 0)
    p, s, y = p[ok], s[ok], y[ok]
    if len(p) < MIN_FILLS or len(np.unique(np.round(p, 6))) < 3:
        return None

    def residuals(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        out: npt.NDArray[np.float64] = (model_fraction(x, s, p) - y) * BPS
        return out

    best = None
    for beta0 in (0.3, 0.5, 1.0, 1.5):
        # The temporary coefficient that fits alone at this β, as a start.
        basis = s * np.power(p, beta0)
        temp0 = max(float(np.dot(basis, y) / max(float(np.dot(basis, basis)), 1e-30)), 1e-6)
        result = least_squares(
            residuals,
            x0=np.array([temp0, 1e-4, beta0]),
            bounds=([0.0, 0.0, BETA_BOUNDS[0]], [np.inf, np.inf, BETA_BOUNDS[1]]),
            x_scale=np.array([max(temp0, 1e-3), 1e-2, 0.5]),
            xtol=1e-12,
            ftol=1e-12,
            gtol=1e-12,
            max_nfev=2000,
        )
        if best is None or result.cost < best.cost:
            best = result
    assert best is not None
    rmse = float(np.sqrt(np.mean(np.square(best.fun))))
    temporary, permanent, beta = (float(v) for v in best.x)
    return ImpactFit(temporary, permanent, beta, rmse, len(p))
