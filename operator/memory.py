"""The operator's resident memory follows its live heap: glibc is asked to return freed memory regularly.

Measured (benchmarks/operator_faults.py, tracemalloc in the operator): after an API server restart every
watch re-lists at once, the operator's Python heap grows by nothing, yet its resident set stepped up by
8-25 MiB per restart and stayed there: memory glibc keeps after the burst is freed. ``malloc_trim(0)``
gave it back (149.2 -> 137.7 MiB after three restarts). A daemon thread calls it every minute; it takes
milliseconds and releases the GIL (ctypes). Elsewhere than glibc (musl, macOS) there is nothing to call.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)
TRIM_INTERVAL_SECONDS = 60.0


def libc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def start_trimming(
    interval: float = TRIM_INTERVAL_SECONDS, trim: Callable[[int], int] | None = None
) -> threading.Thread | None:
    """Return freed memory to the system every ``interval`` seconds, from a daemon thread; the thread,
    or None when there is no ``malloc_trim``."""
    trim = trim or libc_trim()
    if trim is None:
        log.info("no malloc_trim in this C library: freed memory is left to the allocator")
        return None
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            trim(0)

    thread = threading.Thread(target=loop, name="kubequant-malloc-trim", daemon=True)
    thread.start()
    return thread
