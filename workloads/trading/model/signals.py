"""Signals (targets per instrument under one idempotency key) and the orders that reach them."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from kubequant.workloads.trading.model.domain import ZERO, OrderIntent, Side


@dataclass(frozen=True, slots=True)
class Target:
    """A target position in one instrument: a signed quantity, or a weight of equity."""

    instrument: str
    quantity: Decimal | None = None
    weight: Decimal | None = None
    limit_price: Decimal | None = None

    def __post_init__(self) -> None:
        if (self.quantity is None) == (self.weight is None):
            raise ValueError(f"{self.instrument}: set exactly one of quantity and weight")


@dataclass(frozen=True, slots=True)
class Signal:
    """Targets under one idempotency key: sending the same signal twice never makes a second order."""

    signal_id: str
    targets: tuple[Target, ...]


def plan_orders(
    signal: Signal,
    positions: Mapping[str, Decimal],
    marks: Mapping[str, Decimal],
    equity: Decimal,
    lot: Decimal = Decimal(1),
) -> list[OrderIntent]:
    """The intents that move ``positions`` (live orders included) to the targets; one leg per instrument.

    Targets are whole numbers of the venue's lots, rounded towards zero (a weight becomes a
    quantity at the mark first), and so is every order; only closing a position out (a target of
    0) sells an odd lot whole. A change of less than a lot makes no order; a target with a weight and no mark is
    skipped (the risk engine would refuse it anyway).
    """
    intents = []
    for t in signal.targets:
        held = positions.get(t.instrument, ZERO)
        if t.quantity is not None:
            goal = t.quantity
        else:
            mark = marks.get(t.instrument)
            if mark is None or mark <= 0 or t.weight is None:
                continue
            goal = t.weight * equity / mark
        goal = (goal / lot).to_integral_value(ROUND_DOWN) * lot
        diff = goal - held
        if goal != 0:  # an odd lot held: trade whole lots around it
            diff = (diff / lot).to_integral_value(ROUND_DOWN) * lot
        if diff == 0:
            continue
        side = Side.BUY if diff > 0 else Side.SELL
        intents.append(
            OrderIntent(t.instrument, side, abs(diff), signal.signal_id, t.instrument, t.limit_price)
        )
    return intents


class SyntheticSignals:
    """A deterministic stream of signals: signal k is the same on every run with the same seed."""

    def __init__(self, instruments: Sequence[str], seed: int, lot: int = 100, max_lots: int = 10) -> None:
        self.instruments = list(instruments)
        self.seed = seed
        self.lot = lot
        self.max_lots = max_lots

    @staticmethod
    def signal_id(k: int) -> str:
        """The id of signal ``k``."""
        return f"syn-{k:08d}"

    @staticmethod
    def index(signal_id: str) -> int | None:
        """``k`` of a synthetic signal id, else None."""
        return int(signal_id[4:]) if signal_id.startswith("syn-") and signal_id[4:].isdigit() else None

    def signal(self, k: int) -> Signal:
        """Signal ``k``: a target of 0..max_lots lots in one instrument."""
        rng = random.Random(self.seed * 1_000_003 + k)
        inst = rng.choice(self.instruments)
        qty = Decimal(rng.randint(0, self.max_lots) * self.lot)
        return Signal(self.signal_id(k), (Target(inst, quantity=qty),))
