"""The trading pod's collector policy: survivors frozen each tick, cycles that died frozen freed now and then."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from kubequant.workloads.trading.node.collector import SurvivorFreezer


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # leave the process as it was for the other tests


def _cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_a_cycle_that_dies_after_a_tick_stays_until_the_next_full_collection() -> None:
    clock = Clock()
    freezer = SurvivorFreezer(quiet_every_s=3600, every_s=6 * 3600, clock=clock)
    alive = _cycle()  # its only references are each other's: garbage at once, but not yet collected
    freezer.tick(in_window=True)  # frozen before the collector saw it
    gc.collect()
    assert alive() is not None, "a frozen cycle is invisible to gc.collect()"

    clock.now = 3599
    assert freezer.tick(in_window=False) is None  # not due yet
    assert alive() is not None

    clock.now = 3600
    collected = freezer.tick(in_window=False)  # outside the window, an hour later: everything collected
    assert collected is not None and collected >= 2
    assert alive() is None
    assert freezer.full_collections == 1 and gc.get_freeze_count() > 0  # the survivors frozen again


def test_inside_the_trading_window_it_waits_for_the_longer_period() -> None:
    clock = Clock()
    freezer = SurvivorFreezer(quiet_every_s=10, every_s=100, clock=clock)
    clock.now = 50
    assert not freezer.due(in_window=True) and freezer.due(in_window=False)
    assert freezer.tick(in_window=True) is None
    clock.now = 100
    assert freezer.due(in_window=True)
    alive = _cycle()
    freezer.tick(in_window=True)
    assert alive() is None and freezer.last_full == 100
    assert not freezer.due(in_window=False)  # the clock restarts from the last full collection
