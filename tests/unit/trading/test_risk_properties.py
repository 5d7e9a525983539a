"""Property tests of the risk engine: random orders, portfolios and policies against an independent oracle.

The oracle below re-derives every limit in exact rational arithmetic (``Fraction``), lists every
limit an order breaks, and the tests demand: an order the oracle finds in breach is rejected
(with the first reason in the engine's documented order), and an order the engine accepts
breaks nothing. 10,000 cases come from a seeded generator tuned so that every reason code and
acceptance are common (hypothesis draws the seeds); 2,000 more are hypothesis' own shrinkable data.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import deque
from decimal import Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kubequant.api.live import TradingState
from kubequant.api.risk import RiskPolicySpec
from kubequant.workloads.trading.model.domain import OrderIntent, PortfolioView, Side
from kubequant.workloads.trading.risk.engine import Accept, Counters, Reject, RiskEngine

pytestmark = pytest.mark.unit

INSTRUMENTS = ["AAA", "BBB", "CCC", "DDD"]
ZONES = ["Asia/Shanghai", "America/New_York", "UTC"]
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
ORDER = [
    "KILL_SWITCH",
    "HALTED",
    "INSTRUMENT_BLOCKED",
    "INSTRUMENT_NOT_ALLOWED",
    "OUTSIDE_TRADING_WINDOW",
    "NO_PRICE",
    "STALE_PRICE",
    "REDUCE_ONLY",
    "SHORT_SELLING",
    "ORDER_QUANTITY",
    "ORDER_NOTIONAL",
    "PRICE_BAND",
    "ORDER_RATE",
    "DAILY_TRADES",
    "DAILY_TURNOVER",
    "CONCENTRATION",
    "GROSS_EXPOSURE",
]
SETTINGS = settings(
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Small grids make the boundaries (quantity == cap, value == cap * equity) common, not just possible.
money = st.integers(min_value=1, max_value=400).map(lambda n: Decimal(n) * 25)
prices = st.integers(min_value=1, max_value=200).map(lambda n: Decimal(n) / 4)
quantities = st.integers(min_value=1, max_value=40).map(lambda n: Decimal(n * 50))
fractions_ = st.integers(min_value=1, max_value=20).map(lambda n: n / 20)


@st.composite
def windows(draw: st.DrawFn) -> dict[str, Any]:
    a = draw(st.integers(0, 23 * 60 + 58))
    b = draw(st.integers(a + 1, 23 * 60 + 59))
    a, b = (f"{m // 60:02d}:{m % 60:02d}" for m in (a, b))
    return {
        "start": a,
        "end": b,
        "weekdays": draw(st.lists(st.sampled_from(DAYS), min_size=1, max_size=7, unique=True)),
    }


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    limits = {
        "max_order_notional": draw(maybe(money.map(float))),
        "max_order_quantity": draw(maybe(quantities.map(float))),
        "max_daily_trades": draw(maybe(st.integers(min_value=1, max_value=6))),
        "max_daily_turnover": draw(maybe(money.map(lambda m: float(m * 4)))),
        "max_concentration": draw(maybe(fractions_)),
        "max_gross_exposure": draw(maybe(st.integers(min_value=1, max_value=60).map(lambda n: n / 20))),
        "price_band": draw(maybe(fractions_.map(lambda f: f / 4))),
        "order_rate": draw(
            maybe(
                st.builds(dict, max_orders=st.integers(1, 4), per_seconds=st.sampled_from([0.5, 1.0, 10.0]))
            )
        ),
    }
    allowed = draw(maybe(st.lists(st.sampled_from(INSTRUMENTS), max_size=4, unique=True)))
    blocked = draw(maybe(st.lists(st.sampled_from(INSTRUMENTS), max_size=2, unique=True)))
    if allowed and blocked:
        blocked = [b for b in blocked if b not in allowed] or None
    return {
        "limits": limits,
        "trading_windows": draw(maybe(st.lists(windows(), min_size=1, max_size=3))),
        "timezone": draw(st.sampled_from(ZONES)),
        "instruments": {"allowed": allowed, "blocked": blocked},
    }


@st.composite
def cases(draw: st.DrawFn, active: bool = False) -> dict[str, Any]:
    policy = draw(policies())
    if active:
        policy["trading_windows"] = None
    now = dt.datetime(2024, 3, 4, tzinfo=dt.UTC) + dt.timedelta(seconds=draw(st.integers(0, 7 * 86400)))
    lots = draw(st.lists(st.integers(-40, 40), min_size=4, max_size=4))
    held = {i: Decimal(n * 50) for i, n in zip(INSTRUMENTS, lots, strict=True) if n}
    present = draw(st.integers(0, 15))  # which instruments have a last price (held ones always do)
    marks = {
        i: Decimal(n) / 4
        for k, (i, n) in enumerate(
            zip(INSTRUMENTS, draw(st.lists(st.integers(1, 200), min_size=4, max_size=4)), strict=True)
        )
        if present >> k & 1 or i in held
    }
    inst = draw(st.sampled_from(INSTRUMENTS))
    if draw(st.booleans()):
        marks.pop(inst, None)  # an instrument with no last price
    ages = draw(st.lists(st.sampled_from([0, 0.2, 0.5, 0.7, 1.0, 3, 9.9, 10, 20]), max_size=5))
    local_day = now.astimezone(ZoneInfo(policy["timezone"])).date()
    state = TradingState.ACTIVE if active else draw(st.sampled_from([*TradingState, TradingState.ACTIVE]))
    return with_book(
        draw(st.integers(0, 2**32)),
        {
            "policy": policy,
            "state": state,
            "kill": not active and draw(st.integers(0, 19)) == 0,
            "now": now,
            "view": PortfolioView(
                draw(st.sampled_from([Decimal(0), Decimal(-100)]) | money.map(lambda m: m * 20)), held, marks
            ),
            "intent": OrderIntent(
                inst, draw(st.sampled_from(list(Side))), draw(quantities), "sig", inst, draw(maybe(prices))
            ),
            "counters": Counters(
                day=local_day - dt.timedelta(days=draw(st.integers(0, 1))),
                trades=draw(st.integers(0, 6)),
                turnover=draw(money) * 2,
                recent=deque(sorted(now - dt.timedelta(seconds=a) for a in ages)),
            ),
        },
    )


def random_case(seed: int) -> dict[str, Any]:
    """A case from a seeded generator: cheap, and tuned so that every reason code and acceptance are common."""
    r = random.Random(seed)

    def some(p: float, make: Any) -> Any:
        return make() if r.random() < p else None

    limits = {
        "max_order_notional": some(0.5, lambda: float(r.randint(1, 400) * 25)),
        "max_order_quantity": some(0.5, lambda: float(r.randint(1, 40) * 50)),
        "max_daily_trades": some(0.3, lambda: r.randint(1, 8)),
        "max_daily_turnover": some(0.4, lambda: float(r.randint(1, 400) * 100)),
        "max_concentration": some(0.5, lambda: r.randint(1, 20) / 20),
        "max_gross_exposure": some(0.5, lambda: r.randint(1, 60) / 20),
        "price_band": some(0.4, lambda: r.randint(1, 20) / 80),
        "order_rate": some(
            0.3, lambda: {"max_orders": r.randint(1, 5), "per_seconds": r.choice([0.5, 1.0, 10.0])}
        ),
    }
    allowed = some(0.15, lambda: r.sample(INSTRUMENTS, r.randint(1, 4)))
    blocked = some(
        0.15,
        lambda: (
            [i for i in r.sample(INSTRUMENTS, r.randint(1, 2)) if not allowed or i not in allowed] or None
        ),
    )
    windows = some(0.15, lambda: [_window(r) for _ in range(r.randint(1, 3))])
    policy = {
        "limits": limits,
        "trading_windows": windows,
        "timezone": r.choice(ZONES),
        "instruments": {"allowed": allowed, "blocked": blocked},
    }
    now = dt.datetime(2024, 3, 4, tzinfo=dt.UTC) + dt.timedelta(seconds=r.randint(0, 7 * 86400))
    held = {i: Decimal(r.randint(-40, 40) * 50) for i in INSTRUMENTS if r.random() < 0.5}
    held = {i: q for i, q in held.items() if q}
    marks = {i: Decimal(r.randint(1, 200)) / 4 for i in INSTRUMENTS if i in held or r.random() < 0.8}
    inst = r.choice(INSTRUMENTS)
    if r.random() < 0.1:
        marks.pop(inst, None)
    ages = [r.choice([0, 0.2, 0.5, 0.7, 1.0, 3, 9.9, 10, 20]) for _ in range(r.randint(0, 5))]
    local_day = now.astimezone(ZoneInfo(policy["timezone"])).date()
    side, qty = r.choice(list(Side)), Decimal(r.randint(1, 40) * 50)
    if inst in held and r.random() < 0.3:
        # The edges of "adds exposure": closing exactly, and flipping to the mirror position.
        side = Side.SELL if held[inst] > 0 else Side.BUY
        qty = abs(held[inst]) * r.choice([1, 2])
    return with_book(
        r.randrange(2**32),
        {
            "policy": policy,
            "state": r.choices(list(TradingState), weights=[8, 2, 1])[0],
            "kill": r.random() < 0.03,
            "now": now,
            "view": PortfolioView(
                r.choice([Decimal(0), Decimal(-100)])
                if r.random() < 0.05
                else Decimal(r.randint(1, 400) * 500),
                held,
                marks,
            ),
            "intent": OrderIntent(
                inst, side, qty, "sig", inst, Decimal(r.randint(1, 200)) / 4 if r.random() < 0.4 else None
            ),
            "counters": Counters(
                day=local_day - dt.timedelta(days=r.randint(0, 1)),
                trades=r.randint(0, 8),
                turnover=Decimal(r.randint(0, 400) * 50),
                recent=deque(sorted(now - dt.timedelta(seconds=a) for a in ages)),
            ),
        },
    )


def with_book(seed: int, c: dict[str, Any]) -> dict[str, Any]:
    """The case with what stands behind its projected position: the filled quantity and the resting
    orders of the order's instrument, the price's age, the session's exchange zone and shorting, the
    policy's longOnly and maxPriceAgeSeconds; the counters' day in the exchange's zone."""
    r = random.Random(seed)
    view, intent, policy = c["view"], c["intent"], c["policy"]
    inst = intent.instrument
    projected = view.positions.get(inst, Decimal(0))
    buys, sells = (Decimal(r.choice([0, 0, 50, 100, 500])) for _ in range(2))
    filled = projected - buys + sells
    if filled and r.random() < 0.4:
        # The edges of "reduces": exactly what the resting orders left, and one lot more.
        claimed = sells if filled > 0 else buys
        qty = abs(filled) - claimed + r.choice([Decimal(0), Decimal(50)])
        if qty > 0:
            side = Side.SELL if filled > 0 else Side.BUY
            intent = OrderIntent(inst, side, qty, intent.signal_id, intent.leg, intent.limit_price)
    ages = {}
    if inst in view.marks and r.random() < 0.7:
        ages[inst] = r.choice([0.0, 5.0, 10.0, 30.0, 60.0, 61.0, 3600.0])
    policy["limits"]["max_price_age_seconds"] = r.choice([None, None, 10.0, 60.0])
    policy["limits"]["long_only"] = r.choice([None, True, False])
    c["exchange_tz"] = r.choice(ZONES)
    c["short_selling"] = r.random() < 0.5
    c["view"] = PortfolioView(
        view.equity, view.positions, view.marks, {inst: filled}, {inst: (buys, sells)}, ages
    )
    c["intent"] = intent
    c["counters"].day = c["now"].astimezone(ZoneInfo(c["exchange_tz"])).date() - dt.timedelta(
        days=r.randint(0, 1)
    )
    return c


def _window(r: random.Random) -> dict[str, Any]:
    a = r.randint(0, 23 * 60 + 58)
    b = r.randint(a + 1, 23 * 60 + 59)
    days = r.sample(DAYS, r.randint(1, 7))
    return {"start": f"{a // 60:02d}:{a % 60:02d}", "end": f"{b // 60:02d}:{b % 60:02d}", "weekdays": days}


def F(x: Any) -> Fraction:
    """Exact value; floats of the policy mean the decimal they are written as."""
    return Fraction(repr(x)) if isinstance(x, float) else Fraction(x)


def breaches(c: dict[str, Any]) -> list[str]:
    """Every limit the order breaks, derived from the policy on its own terms."""
    p, view, intent, now, counters = c["policy"], c["view"], c["intent"], c["now"], c["counters"]
    lim, out = p["limits"], []
    inst, qty = intent.instrument, F(intent.quantity)
    if c["kill"]:
        out.append("KILL_SWITCH")
    if c["kill"] or c["state"] is TradingState.HALTED:
        out.append("HALTED")
    if p["instruments"]["blocked"] and inst in p["instruments"]["blocked"]:
        out.append("INSTRUMENT_BLOCKED")
    if p["instruments"]["allowed"] is not None and inst not in p["instruments"]["allowed"]:
        out.append("INSTRUMENT_NOT_ALLOWED")
    if p["trading_windows"]:
        local = now.astimezone(ZoneInfo(p["timezone"]))
        minute = local.hour * 60 + local.minute + Fraction(local.second, 60)
        open_ = [
            w
            for w in p["trading_windows"]
            if DAYS[local.weekday()] in w["weekdays"]
            and int(w["start"][:2]) * 60 + int(w["start"][3:])
            <= minute
            < int(w["end"][:2]) * 60 + int(w["end"][3:])
        ]
        if not open_:
            out.append("OUTSIDE_TRADING_WINDOW")
    last = F(view.marks[inst]) if inst in view.marks else None
    limit = F(intent.limit_price) if intent.limit_price is not None else None
    filled = F(view.filled.get(inst, 0))
    buys, sells = (F(x) for x in view.resting.get(inst, (0, 0)))
    if intent.side is Side.SELL:
        reduces = filled > 0 and qty <= filled - sells
    else:
        reduces = filled < 0 and qty <= -filled - buys
    if last is None and (limit is None or not reduces):
        return [*out, "NO_PRICE"]  # nothing priced can be checked: the order must be refused
    age, max_age = view.ages.get(inst), lim.get("max_price_age_seconds")
    if not reduces and age is not None and max_age is not None and age > max_age:
        out.append("STALE_PRICE")
    ref = last if limit is None else limit if last is None else max(limit, last)
    before = F(view.positions.get(inst, 0))
    after = before + (qty if intent.side is Side.BUY else -qty)
    if c["state"] is TradingState.REDUCING and not reduces:
        out.append("REDUCE_ONLY")
    long_only = lim.get("long_only")
    long_only = not c["short_selling"] if long_only is None else long_only
    if long_only and intent.side is Side.SELL and qty > filled - sells:
        out.append("SHORT_SELLING")
    if lim["max_order_quantity"] is not None and qty > F(lim["max_order_quantity"]):
        out.append("ORDER_QUANTITY")
    notional = qty * ref
    if lim["max_order_notional"] is not None and notional > F(lim["max_order_notional"]):
        out.append("ORDER_NOTIONAL")
    if lim["price_band"] is not None and limit is not None:
        if last is None or abs(limit - last) / last > F(lim["price_band"]):
            out.append("PRICE_BAND")
    if lim["order_rate"] is not None:
        window = dt.timedelta(seconds=lim["order_rate"]["per_seconds"])
        if sum(1 for t in counters.recent if now - window < t <= now) >= lim["order_rate"]["max_orders"]:
            out.append("ORDER_RATE")
    today = counters.day == now.astimezone(ZoneInfo(c["exchange_tz"])).date()
    trades, turnover = (counters.trades, F(counters.turnover)) if today else (0, Fraction(0))
    if lim["max_daily_trades"] is not None and trades >= lim["max_daily_trades"]:
        out.append("DAILY_TRADES")
    if lim["max_daily_turnover"] is not None and turnover + notional > F(lim["max_daily_turnover"]):
        out.append("DAILY_TURNOVER")
    equity, price = F(view.equity), last if last is not None else ref
    if lim["max_concentration"] is not None and abs(after) > abs(before):
        if equity <= 0 or abs(after) * price / equity > F(lim["max_concentration"]):
            out.append("CONCENTRATION")
    if lim["max_gross_exposure"] is not None:
        others = [(i, F(q)) for i, q in view.positions.items() if i != inst and q]
        if any(i not in view.marks for i, _ in others):
            out.append("GROSS_EXPOSURE")
        else:
            rest = sum((abs(q) * F(view.marks[i]) for i, q in others), Fraction(0))
            g_before, g_after = rest + abs(before) * price, rest + abs(after) * price
            if g_after > g_before and (equity <= 0 or g_after / equity > F(lim["max_gross_exposure"])):
                out.append("GROSS_EXPOSURE")
    return out


def engine_for(c: dict[str, Any]) -> RiskEngine:
    engine = RiskEngine(
        RiskPolicySpec.model_validate(c["policy"]),
        kill_switch=c["kill"],
        exchange_tz=c["exchange_tz"],
        short_selling=c["short_selling"],
    )
    if c["state"] is not TradingState.ACTIVE:
        engine.set_condition("test", c["state"], "set by the test")
    engine.counters = c["counters"]
    return engine


def check_case(c: dict[str, Any]) -> None:
    engine = engine_for(c)
    verdict = engine.check(c["intent"], c["view"], c["now"])
    expected = breaches(c)
    event(f"expected {min(expected, key=ORDER.index) if expected else 'accept'}")
    if expected:
        assert isinstance(verdict, Reject), f"breaches {expected} but accepted"
        assert verdict.reason.value == min(expected, key=ORDER.index), (verdict, expected)
    else:
        assert isinstance(verdict, Accept), f"breaks nothing but rejected: {verdict}"
        intent, last = c["intent"], c["view"].marks.get(c["intent"].instrument)
        prices = [p for p in (intent.limit_price, last) if p is not None]
        assert verdict.notional == intent.quantity * max(prices)  # valued conservatively


@settings(SETTINGS, max_examples=10_000)
@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_no_breaching_order_passes_and_every_accepted_order_respects_every_limit(seed: int) -> None:
    """10,000 random policies, portfolios, states, clocks and orders."""
    check_case(random_case(seed))


@settings(SETTINGS, max_examples=2000)
@given(cases(active=True))
def test_active_sessions_only_the_limits_decide(c: dict[str, Any]) -> None:
    """The same oracle on hypothesis' own (shrinkable) data, where only the limits decide."""
    check_case(c)


def test_the_orders_reaching_the_counters_cannot_exceed_the_daily_limits() -> None:
    """Recording every accepted order: the day's count and turnover stop exactly at the caps."""
    engine = RiskEngine(
        RiskPolicySpec.model_validate({"limits": {"max_daily_trades": 5, "max_daily_turnover": 2000.0}})
    )
    now = dt.datetime(2024, 3, 4, 2, tzinfo=dt.UTC)
    view = PortfolioView(Decimal(10**6), {}, {"AAA": Decimal(10)})
    accepted = 0
    for i in range(20):
        verdict = engine.check(OrderIntent("AAA", Side.BUY, Decimal(30), f"s{i}", "AAA"), view, now)
        if isinstance(verdict, Accept):
            engine.record(verdict.notional, now)
            accepted += 1
    assert accepted == 5 and engine.counters.turnover == Decimal(1500)
    later = now + dt.timedelta(days=1)
    assert isinstance(
        engine.check(OrderIntent("AAA", Side.BUY, Decimal(30), "s", "AAA"), view, later), Accept
    )
