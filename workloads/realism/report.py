"""``kubequant trading report``: a session's journaled fills against the Backtest's exchange model.

Each fill in the journal is priced by the model a Backtest would have used for the same order
(qlib's Exchange with the session's ``spec.exchange``, and its impact model: ``ImpactExchange``),
at the fill's daily bar: the arrival (deal) price P, the bar's volume V and the daily volatility σ
come from that exchange, so the shortfall is measured the way the Backtest charges it. The report
gives, per fill and in total, the implementation shortfall against P (observed, and what the
model charges), the fees against the model's, and fits the impact coefficients to the fills
(``impact_fit``), printed as a ``spec.exchange.impact`` block for the next Backtest.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import yaml

from kubequant.api.backtest import ImpactModel
from kubequant.api.live import LiveTradingSession
from kubequant.errors import ConfigError
from kubequant.workloads.backtest.impact import ImpactParams, impact_fraction
from kubequant.workloads.realism.impact_fit import BPS, ImpactFit, fit_impact
from kubequant.workloads.realism.replay import SESSION_FILE
from kubequant.workloads.trading.model.domain import Fill, Side
from kubequant.workloads.trading.model.events import OrderFilled


@dataclass
class PricedFill:
    """One journaled fill beside the model's price of it."""

    day: dt.date
    instrument: str
    side: str
    quantity: float
    price: float
    fee: float
    arrival: float  # P, per share
    volume: float  # V, shares
    sigma: float
    participation: float
    shortfall_bps: float  # d·(fill/P − 1), observed
    model_bps: float  # what the session's impact model charges
    model_fee: float

    def to_json(self) -> dict[str, Any]:
        return {
            "day": str(self.day),
            "instrument": self.instrument,
            "side": self.side,
            "quantity": self.quantity,
            "price": self.price,
            "fee": self.fee,
            "arrivalPrice": round(self.arrival, 6),
            "volume": self.volume,
            "sigma": round(self.sigma, 6),
            "participation": round(self.participation, 8),
            "shortfallBps": round(self.shortfall_bps, 4),
            "modelBps": round(self.model_bps, 4),
            "modelFee": round(self.model_fee, 2),
        }


@dataclass
class TradingReport:
    """What the report found."""

    session: str
    state_dir: str
    fills: list[PricedFill]
    impact: ImpactModel | None  # the session's own model (None: none configured)
    fit: ImpactFit | None
    skipped: dict[str, int] = field(default_factory=dict)

    def totals(self) -> dict[str, Any]:
        value = sum(f.quantity * f.arrival for f in self.fills)

        def weighted(attr: str) -> float | None:
            if not value:
                return None
            return float(sum(getattr(f, attr) * f.quantity * f.arrival for f in self.fills)) / value

        observed, model = weighted("shortfall_bps"), weighted("model_bps")
        return {
            "fills": len(self.fills),
            "value": round(value, 2),
            "shortfallBps": None if observed is None else round(observed, 4),
            "modelShortfallBps": None if model is None else round(model, 4),
            "shortfallVsModelBps": None if observed is None or model is None else round(observed - model, 4),
            "medianShortfallBps": round(statistics.median(f.shortfall_bps for f in self.fills), 4)
            if self.fills
            else None,
            "fees": round(sum(f.fee for f in self.fills), 2),
            "modelFees": round(sum(f.model_fee for f in self.fills), 2),
        }

    def impact_block(self) -> dict[str, Any] | None:
        """The fitted ``spec.exchange.impact`` (the session's slippage, cap and window kept)."""
        if self.fit is None:
            return None
        base = self.impact or ImpactModel()
        fitted = base.model_copy(
            update={
                "temporary": _sig(self.fit.temporary),
                "permanent": _sig(self.fit.permanent),
                "beta": _sig(self.fit.beta),
            }
        )
        return fitted.model_dump(by_alias=True, exclude_none=True, mode="json")

    def yaml_block(self) -> str | None:
        """The block to paste under a Backtest's ``spec.exchange``."""
        block = self.impact_block()
        if block is None:
            return None
        return yaml.safe_dump({"spec": {"exchange": {"impact": block}}}, sort_keys=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "stateDir": self.state_dir,
            "totals": self.totals(),
            "sessionImpact": None
            if self.impact is None
            else self.impact.model_dump(by_alias=True, exclude_none=True, mode="json"),
            "fit": None
            if self.fit is None
            else {
                "temporary": self.fit.temporary,
                "permanent": self.fit.permanent,
                "beta": self.fit.beta,
                "rmseBps": round(self.fit.rmse_bps, 4),
                "fills": self.fit.fills,
            },
            "impact": self.impact_block(),
            "skipped": self.skipped,
            "fills": [f.to_json() for f in self.fills],
        }

    def describe(self) -> list[str]:
        t = self.totals()

        def bps(v: float | None) -> str:
            return "-" if v is None else f"{v:+.2f} bp"

        lines = [
            f"Trading report {self.session} ({self.state_dir})",
            f"  {'Fills':<30} {t['fills']}  (value {t['value']:,.0f})",
            f"  {'Shortfall vs arrival':<30} {bps(t['shortfallBps'])} (value-weighted; median {bps(t['medianShortfallBps'])})",
            f"  {'Model shortfall':<30} {bps(t['modelShortfallBps'])}"
            + ("" if self.impact else " (the session has no impact model)"),
            f"  {'Shortfall vs model':<30} {bps(t['shortfallVsModelBps'])}",
            f"  {'Fees (fills / model)':<30} {t['fees']:,.2f} / {t['modelFees']:,.2f}",
        ]
        if self.skipped:
            lines.append(f"  {'Not priced':<30} " + ", ".join(f"{k} {v}" for k, v in self.skipped.items()))
        if self.fit is None:
            lines.append(
                f"  {'Impact fit':<30} not enough fills with volume (at least 6, of 3 sizes or more)"
            )
        else:
            lines += [
                f"  {'Impact fit':<30} temporary {self.fit.temporary:.4g}, permanent {self.fit.permanent:.4g}, "
                f"beta {self.fit.beta:.4g} (RMS {self.fit.rmse_bps:.3f} bp over {self.fit.fills} fills)",
                "  Paste into the next Backtest:",
                *("    " + line for line in (self.yaml_block() or "").splitlines()),
            ]
        return lines


def _sig(value: float) -> float:
    """Four significant digits (the fit is not more precise than that)."""
    return float(f"{value:.4g}")


def read_fills(state_dir: Path) -> list[Fill]:
    """Every fill the session journaled, oldest first."""
    from kubequant.workloads.trading.execution.journal import Journal

    path = state_dir / "journal.sqlite"
    if not path.is_file():
        raise ConfigError(
            f"no journal at {path}",
            where="--state-dir",
            fix="give the session's volume (the folder with journal.sqlite)",
        )
    journal = Journal(path)
    try:
        seen: set[str] = set()
        fills = []
        for _, event in journal.replay():
            if isinstance(event, OrderFilled) and event.fill is not None and event.fill.fill_id not in seen:
                seen.add(event.fill.fill_id)
                fills.append(event.fill)
        return fills
    finally:
        journal.close()


def session_of(state_dir: Path, session_file: Path | None) -> LiveTradingSession:
    """The session's manifest: ``--session``, else ``<state-dir>/session.yaml``."""
    from kubequant.workloads.trading.node.runtime import read_session

    path = session_file or state_dir / SESSION_FILE
    if not path.is_file():
        raise ConfigError(
            f"no session manifest at {path}",
            where="--session",
            fix="pass --session FILE (the LiveTradingSession whose volume --state-dir is)",
        )
    session: LiveTradingSession = read_session(path)[0]
    return session


def trading_report(
    state_dir: Path, session_file: Path | None = None, data_path: Path | None = None
) -> TradingReport:
    """Price every journaled fill with the session's exchange model and fit the impact coefficients."""
    session = session_of(state_dir, session_file)
    fills = read_fills(state_dir)
    spec = session.spec
    impact = spec.exchange.impact
    tz = ZoneInfo(spec.timezone)
    if not fills:
        return TradingReport(session.metadata.name, str(state_dir), [], impact, None)
    import qlib

    from kubequant.workloads.backtest import qlib_compat
    from kubequant.workloads.data.bars import DATASET_PROVIDER
    from kubequant.workloads.trading.node.runtime import bundle_path

    qlib_compat.apply()
    qlib.init(
        provider_uri=str(bundle_path(session, data_path)),
        region=spec.data.region,
        kernels=1,
        logging_level=logging.WARNING,
        expression_cache=None,
        dataset_cache=None,
        # raw fields (the Exchange's quote, the bars) read straight from the .bin files: same frames
        dataset_provider=DATASET_PROVIDER,
    )
    days = sorted({f.ts.astimezone(tz).date() for f in fills})
    exchange = _model_exchange(session, sorted({f.instrument for f in fills}), days[0], days[-1])
    params = _params(impact)
    priced: list[PricedFill] = []
    skipped: dict[str, int] = {}
    for fill in fills:
        row = _price(exchange, fill, fill.ts.astimezone(tz).date(), params, spec.exchange)
        if isinstance(row, str):
            skipped[row] = skipped.get(row, 0) + 1
        else:
            priced.append(row)
    fit = fit_impact(
        [f.participation for f in priced],
        [f.sigma for f in priced],
        [f.shortfall_bps / BPS for f in priced],
        slippage_bps=params.slippage_bps,
    )
    return TradingReport(session.metadata.name, str(state_dir), priced, impact, fit, skipped)


def _params(impact: ImpactModel | None) -> ImpactParams:
    if impact is None:
        return ImpactParams()
    return ImpactParams(
        permanent=impact.permanent,
        temporary=impact.temporary,
        beta=impact.beta,
        slippage_bps=impact.slippage_bps,
        max_participation=impact.max_participation,
    )


def _model_exchange(session: LiveTradingSession, codes: list[str], first: dt.date, last: dt.date) -> Any:
    """The Backtest's exchange for the session's ``spec.exchange`` (with σ: always the ImpactExchange)."""
    from qlib.backtest import get_exchange

    from kubequant.workloads.trading.adapters.paper.market import exchange_config

    ex = session.spec.exchange
    if ex.impact is None:  # the model charges no impact; the exchange still measures σ and V
        ex = ex.model_copy(update={"impact": ImpactModel(), "impact_cost": 0.0})
    kwargs = exchange_config(ex, codes, str(first), str(last))
    return get_exchange(**kwargs)


def _price(exchange: Any, fill: Fill, day: dt.date, params: ImpactParams, ex: Any) -> PricedFill | str:
    """The model's view of one fill, or why it cannot be priced."""
    import pandas as pd
    from qlib.backtest.decision import OrderDir

    t = pd.Timestamp(day)
    inst = fill.instrument
    if inst not in exchange.quote.get_all_stock():
        return "instrument not in the bundle"
    direction = OrderDir.BUY if fill.side is Side.BUY else OrderDir.SELL
    try:
        arrival = exchange.get_deal_price(inst, t, t, direction)
        volume = exchange.get_volume(inst, t, t)
    except (KeyError, IndexError, ValueError):
        return "no bar on the fill's day"
    if (
        arrival is None
        or volume is None
        or not np.isfinite(arrival)
        or not np.isfinite(volume)
        or volume <= 0
    ):
        return "no bar on the fill's day"
    factor = exchange.get_factor(inst, t, t)
    factor = 1.0 if factor is None or not np.isfinite(factor) else float(factor)
    sigma = exchange.get_sigma(inst, t, t)
    quantity, price, fee = float(fill.quantity), float(fill.price), float(fill.fee)
    arrival_px = float(arrival) / factor
    shares_volume = float(volume) * factor
    p = quantity / shares_volume
    d = 1.0 if fill.side is Side.BUY else -1.0
    shortfall = d * (price / arrival_px - 1.0) * BPS
    model = float(impact_fraction(p, sigma, params)) * BPS
    model_price = arrival_px * (1 + d * model / BPS)
    rate = ex.open_cost if fill.side is Side.BUY else ex.close_cost
    model_fee = max(quantity * model_price * rate, ex.min_cost)
    if math.isnan(shortfall):
        return "no arrival price"
    return PricedFill(
        day,
        inst,
        fill.side.value,
        quantity,
        price,
        fee,
        arrival_px,
        shares_volume,
        sigma,
        p,
        shortfall,
        model,
        model_fee,
    )
