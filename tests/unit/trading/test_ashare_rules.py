"""China A-share rules (region cn): T+1, lots, price limits and sessions, in the risk engine and the paper venue."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kubequant.api.live import LiveTradingSessionSpec
from kubequant.api.risk import RiskPolicySpec
from kubequant.errors import DataError
from kubequant.workloads.trading.adapters.base import BrokerRejected, SubmitRequest
from kubequant.workloads.trading.adapters.paper.broker import PaperBroker
from kubequant.workloads.trading.adapters.paper.market import QlibMarket, read_st
from kubequant.workloads.trading.execution.reconcile import poll
from kubequant.workloads.trading.execution.recovery import recover
from kubequant.workloads.trading.model.domain import OrderIntent, PortfolioView, Side
from kubequant.workloads.trading.model.orders import OrderStatus
from kubequant.workloads.trading.risk import ashare
from kubequant.workloads.trading.risk.ashare import AShareRules, MarketFacts, Rule
from kubequant.workloads.trading.risk.engine import Reason, Reject, RiskEngine

pytestmark = pytest.mark.unit
SH = ashare.CN_TZ


def sh(y: int, m: int, d: int, hh: int, mm: int = 0) -> dt.datetime:
    """A Shanghai wall time, in UTC."""
    return dt.datetime(y, m, d, hh, mm, tzinfo=SH).astimezone(dt.UTC)


MON_10 = sh(2024, 3, 4, 10)
ALL_RULES = AShareRules()


class SetClock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def now(self) -> dt.datetime:
        return self.at


# --- the pure rules ---------------------------------------------------------------------------
def test_boards_and_their_limits() -> None:
    assert ashare.limit_fraction("SH600000") == Decimal("0.10")
    assert ashare.limit_fraction("SZ000001") == Decimal("0.10")
    assert ashare.limit_fraction("SZ300750") == Decimal("0.20")  # ChiNext
    assert ashare.limit_fraction("SZ301001") == Decimal("0.20")
    assert ashare.limit_fraction("SH688981") == Decimal("0.20")  # STAR
    assert ashare.limit_fraction("SH689009") == Decimal("0.20")
    assert ashare.limit_fraction("BJ430047") == Decimal("0.30")
    assert ashare.limit_fraction("SH600000", st=True) == Decimal("0.05")
    assert ashare.limit_fraction("SZ300750", st=True) == Decimal("0.20")  # growth boards: 20 % for ST too
    assert ashare.limit_fraction("SH601000") == Decimal("0.10")  # 601 is main board, not STAR


def test_the_band_is_rounded_to_the_cent_and_its_ends_are_inside() -> None:
    assert ashare.price_band(Decimal("10.05"), Decimal("0.10")) == (Decimal("9.05"), Decimal("11.06"))
    assert ashare.check_price("SH600000", Decimal("11.06"), Decimal("10.05")) is None
    assert ashare.check_price("SH600000", Decimal("9.05"), Decimal("10.05")) is None
    above = ashare.check_price("SH600000", Decimal("11.07"), Decimal("10.05"))
    assert above is not None and above.rule is Rule.PRICE_LIMIT and "9.05..11.06" in above.detail
    assert ashare.check_price("SH600000", Decimal("9.04"), Decimal("10.05")) is not None
    assert ashare.check_price("SH600000", Decimal("10.6"), Decimal("10"), st=True) is not None
    assert ashare.check_price("SZ300750", Decimal("12"), Decimal("10")) is None
    assert ashare.check_price("SH600000", Decimal("10"), None) is not None  # no reference: refused


def test_lots_buys_whole_lots_and_odd_shares_only_in_one_piece() -> None:
    lot = Decimal(100)
    assert ashare.check_lot(True, Decimal(300), lot, Decimal(0)) is None
    odd = ashare.check_lot(True, Decimal(250), lot, Decimal(0))
    assert odd is not None and odd.rule is Rule.ODD_LOT
    assert ashare.check_lot(False, Decimal(150), lot, Decimal(150)) is None  # the whole position
    assert ashare.check_lot(False, Decimal(50), lot, Decimal(150)) is None  # the odd remainder at once
    assert ashare.check_lot(False, Decimal(100), lot, Decimal(150)) is None  # whole lots
    assert ashare.check_lot(False, Decimal(30), lot, Decimal(150)) is not None
    assert ashare.check_lot(False, Decimal(250), lot, Decimal(300)) is not None
    assert ashare.check_lot(True, Decimal(7), Decimal(1), Decimal(0)) is None  # lot 1: anything


def test_sellable_is_what_was_not_bought_today_less_resting_sells() -> None:
    assert ashare.check_sellable("A", Decimal(500), Decimal(1000), Decimal(500), Decimal(0)) is None
    t1 = ashare.check_sellable("A", Decimal(600), Decimal(1000), Decimal(500), Decimal(0))
    assert t1 is not None and t1.rule is Rule.T_PLUS_ONE
    assert ashare.check_sellable("A", Decimal(500), Decimal(1000), Decimal(500), Decimal(100)) is not None
    assert ashare.sellable(Decimal(300), Decimal(500)) == 0  # sold the old shares already


def test_sessions_close_for_lunch_weekends_and_holidays() -> None:
    assert not ashare.in_session(sh(2024, 3, 4, 9, 29))
    assert ashare.in_session(sh(2024, 3, 4, 9, 30))
    assert ashare.in_session(sh(2024, 3, 4, 11, 29))
    assert not ashare.in_session(sh(2024, 3, 4, 11, 30))  # lunch
    assert not ashare.in_session(sh(2024, 3, 4, 12, 59))
    assert ashare.in_session(sh(2024, 3, 4, 13, 0))
    assert not ashare.in_session(sh(2024, 3, 4, 15, 0))
    assert not ashare.in_session(sh(2024, 3, 2, 10))  # Saturday
    holiday = dt.date(2024, 3, 4)
    assert not ashare.in_session(MON_10, lambda d: d != holiday)
    lunch = ashare.check_session(sh(2024, 3, 4, 12))
    assert lunch is not None and lunch.rule is Rule.MARKET_CLOSED and "lunch" in lunch.detail


def test_trading_time_skips_the_lunch_break() -> None:
    start = sh(2024, 3, 4, 11)
    assert ashare.trading_seconds_after(start, 1200) == sh(2024, 3, 4, 11, 20)
    assert ashare.trading_seconds_after(start, 3600) == sh(2024, 3, 4, 13, 30)
    assert ashare.trading_seconds_after(sh(2024, 3, 4, 9), 0) == sh(2024, 3, 4, 9, 30)
    assert ashare.trading_seconds_between(start, sh(2024, 3, 4, 12)) == 1800  # the break does not count
    assert ashare.trading_seconds_between(start, sh(2024, 3, 4, 13, 30)) == 3600
    for seconds in (0, 60, 1799, 1800, 1801, 5400, 9000):
        due = ashare.trading_seconds_after(start, seconds)
        assert ashare.in_session(due) or due >= sh(2024, 3, 4, 15)
        assert ashare.trading_seconds_between(start, due) == seconds


# --- the risk engine --------------------------------------------------------------------------
VIEW = PortfolioView(
    Decimal(10_000_000),
    {"SH600000": Decimal(1000)},
    {"SH600000": Decimal(10), "SZ300750": Decimal(100)},
    filled={"SH600000": Decimal(1000)},
)


def cn_spec(**extra: object) -> LiveTradingSessionSpec:
    return LiveTradingSessionSpec.model_validate({"account": "a", "riskPolicyRef": {"name": "p"}} | extra)


REAL = {
    "broker": {"type": "xueqiu", "credentialsSecretRef": {"name": "x"}},
    "universe": {"instruments": ["SH600000"]},
}


def cn_engine() -> RiskEngine:
    """A real broker's engine in region cn: the wall clock is the exchange's, so every rule binds."""
    return RiskEngine.for_session(RiskPolicySpec(), cn_spec(**REAL))


def verdict_reason(
    engine: RiskEngine,
    side: Side,
    qty: int,
    inst: str = "SH600000",
    limit: str | None = None,
    now: dt.datetime = MON_10,
    facts: MarketFacts | None = None,
) -> Reason | None:
    intent = OrderIntent(inst, side, Decimal(qty), "sig", inst, None if limit is None else Decimal(limit))
    verdict = engine.check(intent, VIEW, now, facts)
    return verdict.reason if isinstance(verdict, Reject) else None


def test_a_cn_session_gets_the_rules_and_other_regions_do_not() -> None:
    assert cn_engine().ashare == AShareRules()
    # Alpaca trades US stocks: the region (cn by default) does not make its venue Chinese.
    alpaca = cn_spec(
        broker={"type": "alpaca", "credentialsSecretRef": {"name": "k"}},
        universe={"instruments": ["AAPL"]},
        timezone="America/New_York",
    )
    assert RiskEngine.for_session(RiskPolicySpec(), alpaca).ashare is None
    # The paper venue trades historical bars round the clock: no session hours there, replay or not.
    assert RiskEngine.for_session(RiskPolicySpec(), cn_spec()).ashare == AShareRules(sessions=False)
    replay = cn_spec(replay={"period": "2021-01-04..2021-03-31"})
    assert RiskEngine.for_session(RiskPolicySpec(), replay).ashare == AShareRules(sessions=False)
    assert AShareRules.for_session(cn_spec(exchange={"tradeUnit": 200})) == AShareRules(
        sessions=False, lot=Decimal(200)
    )
    us = LiveTradingSessionSpec.model_validate(
        {
            "account": "a",
            "riskPolicyRef": {"name": "p"},
            "data": {"region": "us"},
            "timezone": "America/New_York",
        }
    )
    engine = RiskEngine.for_session(RiskPolicySpec(), us)
    assert engine.ashare is None
    # Today's behaviour outside cn: odd lots, the lunch hour, a sell of today's buys all pass.
    facts = MarketFacts(bought_today=Decimal(1000), previous_close=Decimal(10), limits_known=True)
    assert verdict_reason(engine, Side.BUY, 7, now=sh(2024, 3, 4, 12), facts=facts) is None
    assert verdict_reason(engine, Side.SELL, 1000, limit="20", facts=facts) is None


def test_engine_refuses_each_rule_with_its_reason() -> None:
    engine = cn_engine()
    known = MarketFacts(previous_close=Decimal(10), limits_known=True)
    assert verdict_reason(engine, Side.BUY, 100, facts=known) is None
    assert verdict_reason(engine, Side.BUY, 100, now=sh(2024, 3, 4, 12), facts=known) is Reason.MARKET_CLOSED
    assert verdict_reason(engine, Side.BUY, 150, facts=known) is Reason.ODD_LOT
    bought = MarketFacts(bought_today=Decimal(600), previous_close=Decimal(10), limits_known=True)
    assert verdict_reason(engine, Side.SELL, 400, facts=bought) is None
    assert verdict_reason(engine, Side.SELL, 500, facts=bought) is Reason.T_PLUS_ONE
    assert verdict_reason(engine, Side.BUY, 100, limit="11.01", facts=known) is Reason.PRICE_LIMIT
    assert verdict_reason(engine, Side.BUY, 100, limit="11.00", facts=known) is None
    st = MarketFacts(previous_close=Decimal(10), limits_known=True, st=True)
    assert verdict_reason(engine, Side.BUY, 100, limit="10.6", facts=st) is Reason.PRICE_LIMIT
    # A market order is checked at its reference price, the last price (20 % band on ChiNext).
    growth = MarketFacts(previous_close=Decimal(80), limits_known=True)
    assert verdict_reason(engine, Side.BUY, 100, "SZ300750", facts=growth) is Reason.PRICE_LIMIT
    assert (
        verdict_reason(engine, Side.BUY, 100, "SZ300750", facts=MarketFacts(Decimal(0), Decimal(85), True))
        is None
    )
    # A price source that cannot say the previous close leaves the limit to the venue.
    assert verdict_reason(engine, Side.BUY, 100, limit="50") is None
    # Each reason has the A-share rule's value (one enum for the parity report to import).
    assert {r.value for r in Rule} <= {r.value for r in Reason}


def test_switching_a_rule_off_lets_its_orders_through() -> None:
    engine = cn_engine()
    engine.ashare = AShareRules(sessions=False, lots=False)
    assert verdict_reason(engine, Side.BUY, 150, now=sh(2024, 3, 4, 12)) is None


# --- the OMS and the paper venue --------------------------------------------------------------
class IntradayVenue:
    """The paper market's prices as a venue that fills during the day would give them (no bar day).

    A real broker's session: its trading day is the session's calendar day, so a fill of this
    morning is today's whatever the bars do.
    """

    def __init__(self, broker: PaperBroker) -> None:
        self.broker = broker

    def last_price(self, instrument: str) -> Decimal | None:
        return self.broker.last_price(instrument)

    def previous_close(self, instrument: str) -> Decimal | None:
        return self.broker.previous_close(instrument)


def cn_session(open_session: Any, clock: SetClock, intraday: bool = True) -> tuple[Any, PaperBroker]:
    s = open_session()
    s.oms.risk.ashare = AShareRules()
    s.oms.clock = s.broker.clock = clock
    if intraday:
        s.oms.prices = IntradayVenue(s.broker)
    asyncio.run(recover(s.oms))
    assert s.oms.ready
    return s, s.broker


def submit(oms: object, side: Side, qty: int, sid: str, inst: str = "SYN0001", limit: Decimal | None = None):  # type: ignore[no-untyped-def]
    return asyncio.run(oms.submit(OrderIntent(inst, side, Decimal(qty), sid, inst, limit)))  # type: ignore[attr-defined]


def test_t_plus_one_from_the_journal_survives_a_restart_and_rolls_over(open_session: Any) -> None:
    clock = SetClock(MON_10)
    s, broker = cn_session(open_session, clock)
    oms = s.oms  # type: ignore[attr-defined]
    assert submit(oms, Side.BUY, 300, "b1").accepted
    broker.advance()
    asyncio.run(poll(oms))
    assert oms.state.position("SYN0001") == 300
    sell = submit(oms, Side.SELL, 100, "s1")
    assert not sell.accepted and sell.reason.startswith("T_PLUS_ONE")
    assert sell.order.reason.startswith("T_PLUS_ONE")
    s.close()  # type: ignore[attr-defined]

    # A restart on the same day: the journal's fills still say what was bought today.
    s2, _ = cn_session(open_session, clock)
    oms2 = s2.oms  # type: ignore[attr-defined]
    assert oms2.state.bought_since("SYN0001", ashare.day_start(dt.date(2024, 3, 4), SH)) == 300
    assert not submit(oms2, Side.SELL, 100, "s2").accepted
    # The next trading day everything bought before is sellable (in lots, or the odd rest at once).
    clock.at = sh(2024, 3, 5, 10)
    assert submit(oms2, Side.SELL, 100, "s3").accepted
    # A resting sell reserves its shares: 200 left, a second sell of 300 is refused.
    refused = submit(oms2, Side.SELL, 300, "s4")
    assert not refused.accepted and refused.reason.startswith("SHORT_SELLING")
    assert not submit(oms2, Side.SELL, 150, "s5").accepted  # odd lot, not the whole rest


def test_the_paper_venues_trading_day_is_its_bar(open_session: Any) -> None:
    """A paper fill is dealt at a bar's close; the next bar is the next trading day, whatever the wall clock says."""
    clock = SetClock(MON_10)
    s, broker = cn_session(open_session, clock, intraday=False)
    assert broker.trading_day_start(MON_10) is None  # nothing dealt yet: the calendar day
    assert submit(s.oms, Side.BUY, 300, "b1").accepted
    broker.advance()
    asyncio.run(poll(s.oms))
    began = broker.trading_day_start(MON_10)
    assert began is not None and began > MON_10  # just after the bar was dealt
    assert submit(s.oms, Side.SELL, 300, "s1").accepted  # the same wall instant, the next bar
    s.close()
    # The bar's start is in the venue's record: a restarted venue still knows it.
    _, broker2 = cn_session(open_session, clock, intraday=False)
    assert broker2.trading_day_start(MON_10) == began


def test_the_oms_checks_the_price_limit_against_the_paper_previous_close(
    open_session: Any,
) -> None:
    clock = SetClock(MON_10)
    s, broker = cn_session(open_session, clock)
    previous = broker.previous_close("SYN0001")
    assert previous is not None and previous == broker.last_price("SYN0001")
    high = ashare.price_band(previous, Decimal("0.10"))[1]
    assert submit(s.oms, Side.BUY, 100, "in", limit=high).accepted  # type: ignore[attr-defined]
    out = submit(s.oms, Side.BUY, 100, "out", limit=high + Decimal("0.01"))  # type: ignore[attr-defined]
    assert not out.accepted and out.reason.startswith("PRICE_LIMIT")
    lunch = SetClock(sh(2024, 3, 4, 12))
    s.oms.clock = lunch  # type: ignore[attr-defined]
    closed = submit(s.oms, Side.BUY, 100, "lunch")  # type: ignore[attr-defined]
    assert not closed.accepted and closed.reason.startswith("MARKET_CLOSED")


def venue(
    market: QlibMarket, tmp_path: Path, clock: SetClock, rules: AShareRules | None = ALL_RULES
) -> PaperBroker:
    return PaperBroker(
        market, tmp_path / "venue.sqlite", starting_cash=Decimal(1_000_000), clock=clock, ashare_rules=rules
    )


def send(
    broker: PaperBroker, cid: str, side: Side, qty: int, limit: Decimal | None = None, inst: str = "SYN0001"
) -> None:
    asyncio.run(broker.submit(SubmitRequest(cid, inst, side, Decimal(qty), limit)))


def test_the_paper_venue_refuses_what_slipped_past_the_oms(market: QlibMarket, tmp_path: Path) -> None:
    clock = SetClock(MON_10)
    broker = venue(market, tmp_path, clock)
    with pytest.raises(BrokerRejected, match="ODD_LOT"):
        send(broker, "odd", Side.BUY, 250)
    send(broker, "buy", Side.BUY, 300)
    broker.advance()
    assert broker.record_positions() == {"SYN0001": 300}
    clock.at = sh(2024, 3, 4, 12)
    with pytest.raises(BrokerRejected, match="MARKET_CLOSED"):
        send(broker, "lunch", Side.BUY, 100)
    clock.at = sh(2024, 3, 4, 13, 5)
    send(broker, "next-bar", Side.SELL, 200)  # bought at the last bar's close: sellable at this one
    with pytest.raises(BrokerRejected, match="T_PLUS_ONE"):  # 200 of 300 reserved by the open sell
        send(broker, "too-many", Side.SELL, 200)
    with pytest.raises(BrokerRejected, match="T_PLUS_ONE"):  # nothing held: nothing sellable
        send(broker, "none-held", Side.SELL, 100, inst="SYN0002")
    previous = broker.previous_close("SYN0001")
    assert previous is not None
    with pytest.raises(BrokerRejected, match="PRICE_LIMIT"):
        send(broker, "far", Side.BUY, 100, limit=previous * Decimal("1.2"))
    rejected = asyncio.run(broker.get_order("far"))
    assert (
        rejected is not None and rejected.status is OrderStatus.REJECTED and "PRICE_LIMIT" in rejected.reason
    )
    broker.close()


def test_without_rules_the_paper_venue_keeps_todays_behaviour(market: QlibMarket, tmp_path: Path) -> None:
    clock = SetClock(sh(2024, 3, 2, 12))  # a Saturday lunch hour
    broker = venue(market, tmp_path, clock, rules=None)
    send(broker, "odd", Side.BUY, 250)  # qlib rounds it down to a lot when dealing
    broker.advance()
    send(broker, "same-day", Side.SELL, 200)
    broker.advance()
    assert broker.record_positions() == {}
    broker.close()


def test_st_names_come_from_the_bundle_and_get_five_percent(market: QlibMarket, tmp_path: Path) -> None:
    listing = tmp_path / "instruments" / "st.txt"
    listing.parent.mkdir()
    listing.write_text("SYN0002\t2021-01-01\t2021-01-31\nsyn0003\t2020-01-01\t2020-12-31\n")
    spans = read_st(listing)
    assert spans == {
        "SYN0002": [(dt.date(2021, 1, 1), dt.date(2021, 1, 31))],
        "SYN0003": [(dt.date(2020, 1, 1), dt.date(2020, 12, 31))],
    }
    assert read_st(tmp_path / "missing.txt") == {}
    st_market = QlibMarket(market.exchange, market.calendar, st=spans)
    broker = venue(st_market, tmp_path, SetClock(MON_10))
    assert broker.is_st("SYN0002") and not broker.is_st("SYN0003") and not broker.is_st("SYN0001")
    previous = broker.previous_close("SYN0002")
    assert previous is not None
    with pytest.raises(BrokerRejected, match=r"PRICE_LIMIT.*\(ST\)"):
        send(broker, "st", Side.BUY, 100, limit=previous * Decimal("1.07"), inst="SYN0002")
    other = broker.previous_close("SYN0001")
    assert other is not None
    send(broker, "main", Side.BUY, 100, limit=(other * Decimal("1.07")).quantize(Decimal("0.01")))
    broker.close()
    listing.write_text("SYN0002 2021-01-01\n")
    with pytest.raises(DataError, match=r"st\.txt:1"):
        read_st(listing)


def test_the_paper_calendar_is_the_exchange_calendar(market: QlibMarket) -> None:
    first, holiday = market.calendar[0], market.calendar[3]
    assert market.is_trading_day(first.date())
    shut = QlibMarket(market.exchange, [t for t in market.calendar if t != holiday])
    assert not shut.is_trading_day(holiday.date())
    assert shut.is_trading_day(first.date())
    assert market.is_trading_day(dt.date(2030, 1, 7))  # past the bundle: weekdays
    assert not market.is_trading_day(dt.date(2030, 1, 5))


def test_a_bundle_marks_st_names_in_instruments_st_txt(
    tmp_path: Path, bundle: Path, market: QlibMarket
) -> None:
    import logging
    import shutil

    import qlib

    from kubequant.api.backtest import Exchange

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    (copy / "instruments" / "st.txt").write_text("SYN0002\t2021-02-01\t2021-12-31\n")
    start, end = str(market.calendar[0].date()), str(market.calendar[-1].date())
    qlib.init(provider_uri=str(copy), region="cn", kernels=1, logging_level=logging.WARNING)
    try:
        loaded = QlibMarket.load(Exchange(), "all", start, end)
    finally:  # the other tests' bundle again
        qlib.init(provider_uri=str(bundle), region="cn", kernels=1, logging_level=logging.WARNING)
    assert loaded.is_st("SYN0002", dt.date(2021, 2, 1)) and loaded.is_st("syn0002", dt.date(2021, 3, 31))
    assert not loaded.is_st("SYN0002", dt.date(2021, 1, 29)) and not loaded.is_st(
        "SYN0001", dt.date(2021, 2, 1)
    )
    assert QlibMarket.load(Exchange(), "all", start, end).st == {}  # the shared bundle marks none
