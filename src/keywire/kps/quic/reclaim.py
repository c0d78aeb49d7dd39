"""Giving memory back after large connections end (a listener helper, sans-IO decisions).

Two things keep a closed connection's buffers in the process (measured with tracemalloc and
``gc.DEBUG_SAVEALL``, docs/kps.md "Memory per connection"): reference cycles (stored exceptions
whose tracebacks hold the frames that raised them, the connection <-> stream tables, qh3's
connection <-> TLS bridge), which only the cyclic collector frees, and glibc's heap, which keeps
freed ~24 KiB chunks (qh3's received stream data) mapped until ``malloc_trim``. The listener
notes how many bytes each finished connection held; once enough has been freed it runs one
collection and one trim, at most once per ``interval`` seconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable

#: freed bytes worth a collection (a full collection costs milliseconds, so not for small fry)
DEFAULT_THRESHOLD = 32 << 20
#: seconds between two reclaims at most
DEFAULT_INTERVAL = 5.0


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None elsewhere: musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class Reclaimer:
    """Counts freed bytes; ``due(now)`` says when to run ``reclaim``."""

    def __init__(
        self, *, threshold: int = DEFAULT_THRESHOLD, interval: float = DEFAULT_INTERVAL
    ) -> None:
        self.threshold = threshold
        self.interval = interval
        self.pending = 0
        self.runs = 0
        #: seconds the last reclaim took (the event loop stands still meanwhile)
        self.last_duration = 0.0
        self._last: float | None = None
        self._trim = _load_malloc_trim()

    def freed(self, nbytes: int) -> None:
        self.pending += max(0, nbytes)

    def due(self, now: float) -> bool:
        if self.pending < self.threshold:
            return False
        return self._last is None or now - self._last >= self.interval

    def next_at(self, now: float) -> float:
        """When a pending reclaim may run."""
        return now if self._last is None else max(now, self._last + self.interval)

    def reclaim(self, now: float) -> None:
        self.pending = 0
        self._last = now
        self.runs += 1
        started = time.perf_counter()
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        self.last_duration = time.perf_counter() - started
