"""The submit path's shortcuts change nothing: the same projected positions, the same prices.

The journal text of every event is checked in test_journal.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from decimal import Decimal
from pathlib import Path

import pytest

from kubequant.workloads.trading.adapters.paper.broker import PaperBroker
from kubequant.workloads.trading.adapters.paper.market import QlibMarket
from kubequant.workloads.trading.execution.oms import Marks
from kubequant.workloads.trading.model.domain import ZERO, Fill, Side
from kubequant.workloads.trading.model.events import (
    OrderAccepted,
    OrderCanceled,
    OrderCreated,
    OrderFilled,
    OrderRejected,
    OrderSubmitted,
    PositionSnapshot,
)
from kubequant.workloads.trading.model.state import OmsState

pytestmark = pytest.mark.unit
T0 = dt.datetime(2024, 3, 4, 2, 0, 0, 123456, tzinfo=dt.UTC)
FILL = Fill("f1", "c1", "b1", "SYN0001", Side.BUY, Decimal("300"), Decimal("11.7257"), Decimal("5.00"), T0)


def naive_projected(state: OmsState) -> dict[str, Decimal]:
    out = state.position_quantities()
    for order in state.live_orders():
        out[order.instrument] = out.get(order.instrument, ZERO) + order.remaining * order.side.sign
    return out


@pytest.mark.parametrize("seed", range(5))
def test_projected_positions_equal_a_full_recount_after_every_event(seed: int) -> None:
    rng = random.Random(seed)
    state = OmsState()
    state.apply(PositionSnapshot(T0, {"A": Decimal("300"), "B": Decimal("-1.500000")}, baseline=True))
    live: list[str] = []
    fills = 0
    for k in range(400):
        roll = rng.random()
        if roll < 0.4 or not live:
            cid = f"c{k}"
            qty = Decimal(rng.choice(["100", "250.5", "1E+2", "0.000001", "7"]))
            inst, side = rng.choice("ABC"), rng.choice([Side.BUY, Side.SELL])
            state.apply(OrderCreated(T0, cid, inst, side, qty, f"s{k}", inst))
            if rng.random() < 0.1:
                state.apply(OrderRejected(T0, cid, reason="RISK"))
                continue
            state.apply(OrderSubmitted(T0, cid))
            if rng.random() < 0.7:
                state.apply(OrderAccepted(T0, cid, f"b{k}"))
            live.append(cid)
        else:
            cid = rng.choice(live)
            order = state.orders[cid]
            if roll < 0.85:
                part = (
                    order.remaining
                    if rng.random() < 0.5
                    else (order.remaining / 2).quantize(Decimal("0.000001"))
                )
                if part <= 0:
                    part = order.remaining
                fills += 1
                fill = Fill(
                    f"f{fills}", cid, f"b{k}", order.instrument, order.side, part, Decimal("10"), ZERO, T0
                )
                state.apply(OrderFilled(T0, cid, fill))
            else:
                state.apply(OrderCanceled(T0, cid, "test"))
            if not state.orders[cid].is_live:
                live.remove(cid)
        got, want = state.projected(), naive_projected(state)
        # Equal as numbers and as text (the quantities planned from them are journaled and sent).
        assert {k: str(v) for k, v in got.items()} == {k: str(v) for k, v in want.items()}
        # The risk view's live mapping reads the same, key by key, in the same order.
        view = state.projected_view()
        assert list(view) == list(got) and len(view) == len(got)
        assert {k: str(view[k]) for k in view} == {k: str(v) for k, v in got.items()}
        assert all((k in view) == (k in got) for k in ("A", "B", "C", "D", "nowhere"))
        assert view.get("nowhere") is None and view.get("nowhere", ZERO) == ZERO


def test_the_paper_brokers_last_prices_follow_the_bar(market: QlibMarket, tmp_path: Path) -> None:
    broker = PaperBroker(market, tmp_path / "broker.sqlite", starting_cash=Decimal(1_000_000))

    def walked(inst: str) -> Decimal | None:
        for index in range(broker.bar - 1, -1, -1):
            if (price := market.close(inst, index)) is not None:
                return price
        return None

    for _ in range(4):
        assert {i: broker.last_price(i) for i in market.instruments} == {
            i: walked(i) for i in market.instruments
        }
        broker.advance()
    bar = broker.bar
    broker.close()
    reopened = PaperBroker(market, tmp_path / "broker.sqlite", starting_cash=Decimal(1_000_000))
    assert reopened.bar == bar  # the bar lives in the record, not only in memory
    assert asyncio.run(reopened.positions()) == {}
    reopened.close()


def test_the_views_marks_hold_the_same_prices_as_a_dict_built_for_the_book_and_the_instruments_asked() -> (
    None
):
    prices = {"A": Decimal("10.5"), "B": None, "C": Decimal("3"), "D": Decimal("7"), "E": Decimal("1")}
    calls: list[str] = []

    def last_price(inst: str) -> Decimal | None:
        calls.append(inst)
        return prices.get(inst)

    book = {"A": Decimal(100), "B": Decimal(-5), "C": ZERO}
    marks = Marks(last_price, book, frozenset({"D", "B", "X"}))
    built = {i: p for i in {*book, "D", "B", "X"} if (p := prices.get(i)) is not None}
    assert dict(marks) == built and len(marks) == len(built)
    assert marks.get("E") is None  # neither held nor asked: absent, as from the built dict
    assert "B" not in marks and marks.get("X") is None
    calls.clear()
    assert marks["A"] == Decimal("10.5") and calls == ["A"]  # one price read per instrument read
