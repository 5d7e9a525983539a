"""China A-share trading rules as pure functions, shared by the risk engine and the paper venue.

The rules a Shanghai/Shenzhen/Beijing venue applies to an order, so a session in region ``cn``
refuses before the broker does (the risk engine) and a paper session behaves as the live account
would (the paper broker):

- T+1: shares bought on a trading day are not sellable that day (``sellable``);
- lots: buys in whole lots of ``trade_unit`` shares (100); an odd remainder only sold in one piece
  (``check_lot``);
- price limits: a price outside the day's band around the previous close (±10 %, ±20 % for ChiNext
  and STAR, ±30 % for the Beijing exchange, ±5 % for main-board ST names) is refused
  (``price_band``, ``check_price``);
- sessions: continuous trading 09:30-11:30 and 13:00-15:00 Asia/Shanghai on trading days, the lunch
  break closed (``in_session``, ``trading_seconds_after``).

Each refusal names its rule with a ``Rule`` value; the risk engine's ``Reason`` carries the same
values, so a journaled rejection reads the same whoever refused.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

from kubequant.api.live import BrokerType, LiveTradingSessionSpec

CN_TZ = ZoneInfo("Asia/Shanghai")
LOT = Decimal(100)
TICK = Decimal("0.01")
# Continuous trading sessions, start inclusive, end exclusive (the close auction ends at 15:00).
SESSIONS = ((dt.time(9, 30), dt.time(11, 30)), (dt.time(13, 0), dt.time(15, 0)))
MAIN_LIMIT = Decimal("0.10")
GROWTH_LIMIT = Decimal("0.20")  # ChiNext (SZ300/301) and STAR (SH688/689), ST names included
BSE_LIMIT = Decimal("0.30")
ST_LIMIT = Decimal("0.05")  # main-board ST and *ST names


class Rule(StrEnum):
    """The A-share rule an order breaks (the same values are in the risk engine's ``Reason``)."""

    T_PLUS_ONE = "T_PLUS_ONE"
    ODD_LOT = "ODD_LOT"
    PRICE_LIMIT = "PRICE_LIMIT"
    MARKET_CLOSED = "MARKET_CLOSED"


@dataclass(frozen=True, slots=True)
class Violation:
    """An order a venue would refuse: the rule and why."""

    rule: Rule
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


@dataclass(frozen=True, slots=True)
class AShareRules:
    """Which A-share rules apply (all of them for a session in region cn) and the lot size."""

    t_plus_one: bool = True
    lots: bool = True
    price_limits: bool = True
    sessions: bool = True
    lot: Decimal = LOT

    @classmethod
    def for_region(cls, region: str, lot: int | None = None) -> AShareRules | None:
        """All the rules for region ``cn`` (``lot`` the exchange's trade unit when set); None elsewhere."""
        if region != "cn":
            return None
        return cls(lot=LOT if lot is None else Decimal(lot))

    @classmethod
    def for_session(cls, spec: LiveTradingSessionSpec) -> AShareRules | None:
        """The rules of a session: all of them in region cn, None elsewhere and on Alpaca (US stocks).

        The session hours bind where the session's clock is the exchange's: a real broker's (the
        wall clock). The paper broker trades a historical bundle's bars round the clock (on a timer,
        or a replay's bar clock, which keeps to the sessions by itself: it sends at ``rebalanceAt``
        on trading time and deals the bar at 15:00), so a paper session keeps T+1, lots and price
        limits only. A test or a tool that wants a paper venue with hours passes the rules itself.
        """
        if spec.broker.type == BrokerType.ALPACA:
            return None  # a US venue: ``data.region`` (cn by default) describes the bundle, not it
        rules = cls.for_region(spec.data.region, spec.exchange.trade_unit)
        if rules is None or spec.broker.type != BrokerType.PAPER:
            return rules
        return dataclasses.replace(rules, sessions=False)


@dataclass(frozen=True, slots=True)
class MarketFacts:
    """What the A-share checks of one order need to know beyond the portfolio view.

    ``bought_today``: shares of the instrument bought (filled) on the current trading day.
    ``previous_close``: the reference of the day's price band; ``limits_known`` False when the price
    source cannot say (the check is then left to the venue). ``st``: the bundle marks the name ST.
    ``trading_day``: the exchange calendar (None: every weekday trades).
    """

    bought_today: Decimal = Decimal(0)
    previous_close: Decimal | None = None
    limits_known: bool = False
    st: bool = False
    trading_day: Callable[[dt.date], bool] | None = None


# --- boards and price limits ------------------------------------------------------------------
def board(instrument: str) -> str:
    """The board of a qlib code (SH600000, SZ300750, BJ430047): main, chinext, star or bse."""
    code = instrument.upper()
    exchange, digits = code[:2], code[2:]
    if exchange == "SZ" and digits.startswith(("300", "301")):
        return "chinext"
    if exchange == "SH" and digits.startswith(("688", "689")):
        return "star"
    if exchange == "BJ" or (exchange not in ("SH", "SZ") and digits.startswith(("43", "83", "87", "92"))):
        return "bse"
    return "main"


def limit_fraction(instrument: str, st: bool = False) -> Decimal:
    """The daily price limit of ``instrument`` as a fraction of the previous close."""
    kind = board(instrument)
    if kind in ("chinext", "star"):
        return GROWTH_LIMIT
    if kind == "bse":
        return BSE_LIMIT
    return ST_LIMIT if st else MAIN_LIMIT


def price_band(previous_close: Decimal, fraction: Decimal) -> tuple[Decimal, Decimal]:
    """The day's (limit-down, limit-up) prices: the previous close ± ``fraction``, rounded to the cent."""
    low = (previous_close * (1 - fraction)).quantize(TICK, ROUND_HALF_UP)
    high = (previous_close * (1 + fraction)).quantize(TICK, ROUND_HALF_UP)
    return low, high


def check_price(
    instrument: str, price: Decimal, previous_close: Decimal | None, st: bool = False
) -> Violation | None:
    """PRICE_LIMIT when ``price`` lies outside the day's band (the limit prices themselves are inside)."""
    if previous_close is None or previous_close <= 0:
        return Violation(Rule.PRICE_LIMIT, f"no previous close of {instrument} to check the price limit")
    fraction = limit_fraction(instrument, st)
    low, high = price_band(previous_close, fraction)
    if low <= price <= high:
        return None
    name = f"{instrument}{' (ST)' if st else ''}"
    return Violation(
        Rule.PRICE_LIMIT,
        f"{price} is outside {name}'s band {low}..{high} (±{fraction:%} of the previous close {previous_close})",
    )


# --- lots -------------------------------------------------------------------------------------
def check_lot(buy: bool, quantity: Decimal, lot: Decimal, position: Decimal) -> Violation | None:
    """ODD_LOT unless a buy is whole lots, or a sell is whole lots or takes the position's odd remainder in one piece.

    Exchange rule: the part of a holding below one lot can only be sold all at once, so a sell of
    150 out of 150 (the whole position), or 50 out of 150, passes; 30 out of 150 does not.
    """
    if lot <= 1 or quantity % lot == 0:
        return None
    if buy:
        return Violation(Rule.ODD_LOT, f"a buy of {quantity} is not in lots of {lot}")
    odd = position % lot if position > 0 else Decimal(0)
    if quantity % lot == odd and quantity <= position:
        return None
    return Violation(
        Rule.ODD_LOT,
        f"a sell of {quantity} is not in lots of {lot} and does not sell the odd {odd} of the position "
        f"{position} in one piece",
    )


# --- T+1 --------------------------------------------------------------------------------------
def day_start(day: dt.date, tz: dt.tzinfo) -> dt.datetime:
    """Midnight starting ``day`` in ``tz``, in UTC."""
    return dt.datetime.combine(day, dt.time(0), tz).astimezone(dt.UTC)


def sellable(position: Decimal, bought_today: Decimal) -> Decimal:
    """Shares of a long position that may be sold today: what was not bought today (never below 0).

    Sells today take the older shares first, so ``position - bought_today`` is what is left of them.
    """
    return max(Decimal(0), position - bought_today)


def check_sellable(
    instrument: str, quantity: Decimal, position: Decimal, bought_today: Decimal, resting_sells: Decimal
) -> Violation | None:
    """T_PLUS_ONE when a sell needs shares bought today (resting sells already reserve their part)."""
    free = sellable(position, bought_today) - resting_sells
    if quantity <= free:
        return None
    return Violation(
        Rule.T_PLUS_ONE,
        f"selling {quantity} {instrument}: {max(free, Decimal(0))} sellable today (position {position}, "
        f"bought today {bought_today}, resting sells {resting_sells})",
    )


# --- sessions ---------------------------------------------------------------------------------
def in_session(now: dt.datetime, trading_day: Callable[[dt.date], bool] | None = None) -> bool:
    """Whether ``now`` lies in continuous trading (09:30-11:30, 13:00-15:00 Shanghai) on a trading day.

    ``trading_day`` says whether a date is an exchange trading day; without one every weekday is.
    """
    local = now.astimezone(CN_TZ)
    day = local.date()
    if not (trading_day(day) if trading_day is not None else local.weekday() < 5):
        return False
    clock = local.time()
    return any(start <= clock < end for start, end in SESSIONS)


def check_session(now: dt.datetime, trading_day: Callable[[dt.date], bool] | None = None) -> Violation | None:
    """MARKET_CLOSED outside the sessions (the lunch break included) or on a day the exchange is shut."""
    if in_session(now, trading_day):
        return None
    local = now.astimezone(CN_TZ)
    lunch = SESSIONS[0][1] <= local.time() < SESSIONS[1][0]
    why = "the lunch break (11:30-13:00)" if lunch else "outside 09:30-11:30 and 13:00-15:00"
    return Violation(
        Rule.MARKET_CLOSED, f"{local:%a %Y-%m-%d %H:%M} Asia/Shanghai is {why} or not a trading day"
    )


def _windows(day: dt.date) -> Iterable[tuple[dt.datetime, dt.datetime]]:
    for start, end in SESSIONS:
        yield (
            dt.datetime.combine(day, start, CN_TZ).astimezone(dt.UTC),
            dt.datetime.combine(day, end, CN_TZ).astimezone(dt.UTC),
        )


def trading_seconds_after(start: dt.datetime, seconds: float) -> dt.datetime:
    """The moment ``seconds`` of trading time after ``start`` on ``start``'s Shanghai day, the lunch break skipped.

    A start before a session opens counts from the opening; time past 15:00 runs on after the close
    (the caller's orders are then refused as MARKET_CLOSED rather than moved to another day).
    """
    left = dt.timedelta(seconds=seconds)
    cursor = start.astimezone(dt.UTC)
    windows = list(_windows(start.astimezone(CN_TZ).date()))
    for open_, close in windows:
        if cursor >= close:
            continue
        cursor = max(cursor, open_)
        if cursor + left < close or (close == windows[-1][1]):
            return cursor + left
        left -= close - cursor
        cursor = close
    return cursor + left


def trading_seconds_between(start: dt.datetime, now: dt.datetime) -> float:
    """Seconds of trading time from ``start`` to ``now`` on ``start``'s Shanghai day (the inverse of ``trading_seconds_after``)."""
    begin, end = start.astimezone(dt.UTC), now.astimezone(dt.UTC)
    if end <= begin:
        return (end - begin).total_seconds()
    windows = list(_windows(begin.astimezone(CN_TZ).date()))
    total = 0.0
    cursor = begin
    for i, (open_, close) in enumerate(windows):
        last = i == len(windows) - 1
        lo = max(cursor, open_)
        hi = end if last else min(end, close)
        if hi > lo:
            total += (hi - lo).total_seconds()
        cursor = max(cursor, close)
        if end <= close:
            break
    return total
