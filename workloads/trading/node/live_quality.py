"""A live session's data quality and the rolling rank IC of its scores, measured off the signal path.

Both are O(universe), so neither runs per signal or per tick: the bar check runs once per new bar
(the paper market's next bar) or per refresh of a venue's prices, on a worker thread; the rank IC
once per trading day, when that day's rebalance starts.

- Bar quality: among the universe's instruments, the fraction without a value of each field the
  session trades on (the paper market: the bar's close and volume through qlib's Exchange, as a
  fill reads them; a venue: its last trade price, missing once older than the feed's maximum age),
  and how many instruments have none of them.
- Rolling rank IC: the Spearman correlation between the scores a day's rebalance traded on and the
  return each scored instrument made until the next day's rebalance (prices from the session's own
  price source at both starts), averaged over the last ``window`` days.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
from scipy.stats import spearmanr

# Trading days the live rank IC averages over (about a month).
IC_WINDOW = 20
# Fewer scored instruments with a return on both days than this: no IC that day (too noisy to mean anything).
MIN_IC_INSTRUMENTS = 5


@dataclass(frozen=True)
class BarQuality:
    """The missing-value ratio by field, and the instruments with no value in any field."""

    missing_ratio: Mapping[str, float]
    instruments: int
    instruments_missing: int


def paper_bar_quality(exchange: Any, instruments: Sequence[str], t: Any) -> BarQuality:
    """The bar at ``t`` of qlib's Exchange for ``instruments``: close and volume, as a fill reads them."""
    fields: dict[str, Callable[[str], Any]] = {
        "close": lambda inst: exchange.get_close(inst, t, t),
        "volume": lambda inst: exchange.get_volume(inst, t, t),
    }
    return _quality(instruments, fields)


def feed_quality(last_price: Callable[[str], Decimal | None], instruments: Sequence[str]) -> BarQuality:
    """A venue's last trade prices for ``instruments`` (None: never printed, or older than the feed allows)."""
    return _quality(instruments, {"price": last_price})


def _quality(instruments: Sequence[str], fields: Mapping[str, Callable[[str], Any]]) -> BarQuality:
    missing = dict.fromkeys(fields, 0)
    none = 0
    for inst in instruments:
        seen = False
        for name, read in fields.items():
            try:
                value = read(inst)
            except (KeyError, IndexError, ValueError):  # qlib raises for an instrument it has no row for
                value = None
            if value is None or (isinstance(value, float) and math.isnan(value)):
                missing[name] += 1
            else:
                seen = True
        none += not seen
    n = len(instruments)
    return BarQuality({k: (v / n if n else 0.0) for k, v in missing.items()}, n, none)


@dataclass
class LiveQuality:
    """The latest measurements, shared by the runtime (which writes them) and the status (which reads)."""

    bar: BarQuality | None = None
    rank_ic: float | None = None

    def status(self) -> dict[str, Any]:
        """The status fields (snake_case, as LiveTradingSessionStatus takes them); absent ones left out."""
        out: dict[str, Any] = {}
        if self.bar is not None:
            out["data_quality"] = {
                "missing_ratio": {k: round(v, 6) for k, v in self.bar.missing_ratio.items()},
                "instruments": self.bar.instruments,
                "instruments_missing": self.bar.instruments_missing,
            }
        if self.rank_ic is not None:
            out["live_rank_ic"] = round(self.rank_ic, 6)
        return out


class RollingRankIc:
    """Spearman IC of each day's scores against the returns until the next day's start, rolling."""

    def __init__(self, window: int = IC_WINDOW, min_instruments: int = MIN_IC_INSTRUMENTS) -> None:
        self.window = window
        self.min_instruments = min_instruments
        self.daily: deque[tuple[dt.date, float]] = deque(maxlen=window)
        self._open: tuple[dt.date, dict[str, float], dict[str, float]] | None = None

    def observe(
        self, day: dt.date, scores: Mapping[str, float], price: Callable[[str], Decimal | None]
    ) -> float | None:
        """Day ``day`` starts with ``scores``: close the previous day's IC, open this one; the rolling mean.

        A day seen again (the loop runs every second) changes nothing. Returns None until one IC exists.
        """
        if self._open is not None and self._open[0] >= day:
            return self.value
        now = _prices(price, self._open[1] if self._open else {})
        if self._open is not None:
            _, before_scores, before = self._open
            ic = self.rank_ic(before_scores, before, now)
            if ic is not None:
                self.daily.append((self._open[0], ic))
        self._open = (day, dict(scores), _prices(price, scores))
        return self.value

    def rank_ic(
        self, scores: Mapping[str, float], before: Mapping[str, float], after: Mapping[str, float]
    ) -> float | None:
        """Spearman correlation of ``scores`` with ``after / before - 1`` over the instruments having all three."""
        common = [i for i in scores if i in before and i in after and before[i] > 0]
        if len(common) < self.min_instruments:
            return None
        s = np.array([scores[i] for i in common], dtype=float)
        r = np.array([after[i] / before[i] - 1.0 for i in common], dtype=float)
        if np.ptp(s) == 0 or np.ptp(r) == 0:
            return None  # a constant side has no ranking
        value = float(spearmanr(s, r).statistic)
        return value if math.isfinite(value) else None

    @property
    def value(self) -> float | None:
        """The mean of the last ``window`` daily ICs; None before the first."""
        if not self.daily:
            return None
        return sum(ic for _, ic in self.daily) / len(self.daily)


def _prices(price: Callable[[str], Decimal | None], instruments: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for inst in instruments:
        p = price(inst)
        if p is not None:
            out[inst] = float(p)
    return out
