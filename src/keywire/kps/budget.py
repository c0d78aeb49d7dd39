"""A listener-wide budget for received-but-unread bytes, shared out as connection windows.

Every KPS connection may hold ``kps.connection_window`` (8 MiB) of received bytes its
application has not read, plus one stream window in flight: a peer that writes and never reads
the answers parks about 10 MiB on the server per connection, and ``kps.max_connections`` (1024)
of them would need 10 GiB. The budget bounds the sum instead of trusting every peer with the
full window: a new connection's receive window (QUIC ``initial_max_data`` and the gate on unread
bytes) is the smaller of the full window, the unclaimed budget, and a fair share of the budget
among the connections now open, but never less than ``floor``. So the listener's receive memory
stays below ``total + floor * max_connections``, the first connections on a quiet listener get
full windows, and a flood of hogs leaves later connections slower, never refused. Sans-IO.
"""

from __future__ import annotations

#: default listener-wide budget (``kps.receive_budget``)
DEFAULT_TOTAL = 256 << 20
#: no connection gets a smaller window than this (``kps.min_connection_window``)
DEFAULT_FLOOR = 256 << 10


class ReceiveBudget:
    """Grants connection windows out of ``total`` bytes; ``release`` gives a window back."""

    def __init__(
        self, *, total: int = DEFAULT_TOTAL, floor: int = DEFAULT_FLOOR, ceiling: int = 8 << 20
    ) -> None:
        if total <= 0 or floor <= 0 or ceiling <= 0:
            raise ValueError("receive budget, floor and ceiling must be positive")
        self.total = total
        self.floor = min(floor, ceiling)
        self.ceiling = ceiling
        self.committed = 0
        self.open = 0

    def grant(self) -> int:
        """The window for a new connection (committed until ``release``)."""
        remaining = self.total - self.committed
        share = self.total // (self.open + 1)
        window = max(self.floor, min(self.ceiling, remaining, share))
        window = _round_down_pow2(window) if window > self.floor else self.floor
        self.committed += window
        self.open += 1
        return window

    def release(self, window: int) -> None:
        self.committed = max(0, self.committed - window)
        self.open = max(0, self.open - 1)


def _round_down_pow2(n: int) -> int:
    """Windows come in powers of two, so a listener needs only a few QUIC configurations."""
    return 1 << (n.bit_length() - 1)
