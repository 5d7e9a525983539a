"""The scheduled strategy's pure parts: qlib's TopkDropout selection, its sizing, TWAP slices, the score book."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kubequant.api.backtest import TopkDropout
from kubequant.workloads.trading.node.scheduled import (
    ScoreBook,
    plan_parents,
    slice_quantity,
    topk_dropout,
    wall_rebalance,
)

pytestmark = pytest.mark.unit
NAMES = [f"S{i:02d}" for i in range(12)]


def qlib_selection(
    scores: dict[str, float], held: list[str], topk: int, n_drop: int
) -> tuple[list[str], list[str]]:
    """The lines of qlib's TopkDropoutStrategy.generate_trade_decision that pick sells and buys (not only_tradable)."""
    pred_score = pd.Series(scores, dtype=float)
    last = pred_score.reindex(held).sort_values(ascending=False, kind="stable").index
    today = list(pred_score[~pred_score.index.isin(last)].sort_values(ascending=False, kind="stable").index)[
        : n_drop + topk - len(last)
    ]
    comb = pred_score.reindex(last.union(pd.Index(today))).sort_values(ascending=False, kind="stable").index
    sell = last[last.isin(list(comb)[-n_drop:])]
    buy = today[: len(sell) + topk - len(last)]
    return list(sell), list(buy)


@settings(max_examples=300, deadline=None)
@given(
    scores=st.lists(st.integers(-1000, 1000), min_size=len(NAMES), max_size=len(NAMES), unique=True),
    held=st.sets(st.sampled_from(NAMES), max_size=8),
    topk=st.integers(2, 8),
    n_drop=st.integers(1, 3),
)
def test_selection_is_qlibs(scores: list[int], held: set[str], topk: int, n_drop: int) -> None:
    # TopkDropout never holds more than topk; beyond it qlib's slices go negative (and it sells at random).
    assume(len(held) <= topk)
    book = {k: float(v) for k, v in zip(NAMES, scores, strict=True)}
    mine = topk_dropout(book, sorted(held), topk, n_drop)
    theirs = qlib_selection(book, sorted(held), topk, n_drop)
    assert (sorted(mine[0]), mine[1]) == (sorted(theirs[0]), theirs[1])


def test_selection_keeps_good_holdings_and_drops_the_unscored_first() -> None:
    scores = {"A": 5.0, "B": 4.0, "C": 3.0, "D": 2.0, "E": 1.0}
    assert topk_dropout(scores, [], 3, 1) == ([], ["A", "B", "C"])
    # Held C, D, X (X has no score today): X goes first, then the worst, never selling high to buy low.
    sell, buy = topk_dropout(scores, ["C", "D", "X"], 3, 2)
    assert set(sell) == {"X", "D"} and buy == ["A", "B"]
    assert topk_dropout(scores, ["A", "B", "C"], 3, 1) == ([], [])  # nothing beats a held name
    assert topk_dropout(scores, ["A", "B", "C"], 3, 0) == ([], [])  # qlib's get_last_n(…, 0) would sell all


def test_sizing_sells_whole_and_splits_the_cash_over_the_buys_in_lots() -> None:
    rule = TopkDropout(topk=2, n_drop=1, risk_degree=0.9)
    scores = {"A": 3.0, "B": 2.0, "C": 1.0}
    marks = {"A": Decimal(10), "B": Decimal(20), "C": Decimal(5)}
    out = plan_parents(scores, {"C": Decimal(1000)}, marks, Decimal(100_000), rule, lot=Decimal(100))
    # C is sold whole; its proceeds join the cash, times 0.9, split over the two buys (A and B)
    assert out["C"] == Decimal(-1000)
    assert all(q % 100 == 0 for q in out.values())
    value = (Decimal(100_000) + Decimal(5000)) * Decimal("0.9") / (len(out) - 1)
    assert set(out) == {"A", "B", "C"}
    assert out["A"] == (value / 10 / 100).to_integral_value(rounding="ROUND_DOWN") * 100
    held_once = plan_parents(
        scores,
        {"C": Decimal(1000)},
        marks,
        Decimal(100_000),
        TopkDropout(topk=2, n_drop=1, hold_thresh=3),
        days_held=lambda _: 1,
    )
    assert "C" not in held_once  # held fewer than holdThresh rebalances: kept
    untradable = plan_parents(scores, {}, marks, Decimal(100_000), rule, tradable=lambda k: k != "A")
    assert "A" not in untradable and "B" in untradable


@given(parent=st.integers(-100_000, 100_000), slices=st.integers(1, 50), lot=st.sampled_from([1, 100]))
def test_slices_add_up_to_the_parent_in_whole_lots(parent: int, slices: int, lot: int) -> None:
    children = [slice_quantity(Decimal(parent), k, slices, Decimal(lot)) for k in range(slices)]
    assert sum(children) == parent
    assert all(c * parent >= 0 for c in children)  # every child goes the parent's way
    assert all(c % lot == 0 for c in children[:-1])
    if parent % lot == 0 and abs(parent) >= slices * lot:
        assert max(abs(c) for c in children) - min(abs(c) for c in children) <= lot  # TWAP: equal shares


def test_the_score_book_trades_yesterdays_scores() -> None:
    book = ScoreBook({dt.date(2022, 1, 4): {"A": 1.0}, dt.date(2022, 1, 6): {"A": 2.0}})
    assert book.latest_before(dt.date(2022, 1, 4)) is None
    assert book.latest_before(dt.date(2022, 1, 5)) == (dt.date(2022, 1, 4), {"A": 1.0})
    assert book.latest_before(dt.date(2022, 1, 6)) == (dt.date(2022, 1, 4), {"A": 1.0})
    assert book.latest_before(dt.date(2022, 1, 7))[0] == dt.date(2022, 1, 6)  # type: ignore[index]


def test_the_wall_clock_rebalances_on_weekdays_at_rebalance_at() -> None:
    monday = dt.datetime(2024, 3, 4, 1, 0, tzinfo=dt.UTC)  # 09:00 in Shanghai
    day, start = wall_rebalance(monday, "Asia/Shanghai", "09:35")  # type: ignore[misc]
    assert day == dt.date(2024, 3, 4) and start == dt.datetime(2024, 3, 4, 1, 35, tzinfo=dt.UTC)
    assert wall_rebalance(monday + dt.timedelta(days=5), "Asia/Shanghai", "09:35") is None  # Saturday
