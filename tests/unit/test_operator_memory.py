"""The operator hands freed memory back to the system regularly (operator/memory.py)."""

from __future__ import annotations

import threading
import time

import pytest

from kubequant.operator import memory

pytestmark = pytest.mark.unit


def test_glibc_s_malloc_trim_is_found_and_callable() -> None:
    trim = memory.libc_trim()
    assert trim is not None, "this machine's C library is glibc"
    assert trim(0) in (0, 1)  # 1: memory was released, 0: there was none to release


def test_the_trimming_thread_calls_trim_every_interval() -> None:
    calls: list[int] = []
    called = threading.Event()

    def trim(pad: int) -> int:
        calls.append(pad)
        if len(calls) >= 3:
            called.set()
        return 0

    thread = memory.start_trimming(interval=0.01, trim=trim)
    assert thread is not None and thread.daemon
    assert called.wait(5), f"trim called {len(calls)} times in 5 s"
    assert set(calls) == {0}


def test_without_malloc_trim_nothing_is_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "libc_trim", lambda: None)
    before = threading.active_count()
    assert memory.start_trimming(interval=0.01) is None
    time.sleep(0.05)
    assert threading.active_count() == before
