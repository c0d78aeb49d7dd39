"""``KeepAlive``: a periodic action beside a core's own deadline, on the shell's one timer.

The shell keeps one timer per connection (``Adapter.get_timer``). A transport whose core does
not send keep-alives itself (qh3 has no PING timer) merges this deadline into the core's in
``get_timer`` and asks ``due`` in ``handle_timer``. Sans-IO: times are the caller's clock.
"""

from __future__ import annotations

__all__ = ["KeepAlive", "earliest"]

#: ``handle_timer`` may run a hair before the deadline (loop clock resolution)
SLACK = 0.001


def earliest(a: float | None, b: float | None) -> float | None:
    """The sooner of two optional deadlines."""
    if a is None:
        return b
    return a if b is None else min(a, b)


class KeepAlive:
    """Due every ``interval`` seconds from ``start`` until ``stop``; ``interval <= 0`` never."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        #: the next time it is due; None while stopped
        self.at: float | None = None

    def start(self, now: float) -> None:
        if self.interval > 0:
            self.at = now + self.interval

    def stop(self) -> None:
        self.at = None

    def merge(self, deadline: float | None) -> float | None:
        """The core's ``deadline`` or this one's, whichever is sooner."""
        return earliest(deadline, self.at)

    def due(self, now: float) -> bool:
        """True (and the next one scheduled) if the action is due at ``now``."""
        if self.at is None or now < self.at - SLACK:
            return False
        self.at = now + self.interval
        return True
