"""``SendBudget``: how much unsent data a core that keeps everything it is given may hold.

A QUIC core (qh3) queues every byte handed to it until it is acknowledged and has no limit of
its own, so an adapter must refuse writes past a per-stream and a per-connection bound. A
writer refused once stays refused until its stream is down to half a buffer (and the
connection below its own mark): it then gets ``CreditAvailable`` and resumes with a large
chunk instead of waking for every packet sent. Sans-IO: the adapter's ``send`` verb is the
budget's ``send`` (or asks ``grant`` itself), it calls ``drained`` after every transmit and
serves ``next_event`` first in its own.
"""

from __future__ import annotations

from typing import Protocol

from .events import CreditAvailable

__all__ = ["Budgeted", "Buffered", "SendBudget"]


class Buffered(Protocol):
    """What the budget reads of the core: bytes queued and not yet sent once."""

    def send_buffered(self, stream_id: int) -> int: ...
    def send_buffered_total(self) -> int: ...


class Budgeted(Buffered, Protocol):
    """A core whose send verb the budget gates (``SendBudget.send``)."""

    def send(self, stream_id: int, data: bytes | memoryview, fin: bool = False, /) -> int: ...


class SendBudget[C: Buffered]:
    """Per-stream and per-connection send buffers with half-buffer hysteresis."""

    def __init__(self, core: C, per_stream: int, per_connection: int) -> None:
        if per_stream <= 0 or per_connection <= 0:
            raise ValueError("send buffers must be positive")
        self.core = core
        self.per_stream = per_stream
        self.per_connection = per_connection
        #: a refused stream gets credit again at or below this many unsent bytes ...
        self.stream_low = per_stream // 2
        #: ... while the connection holds at most this many
        self.connection_low = per_connection - min(self.stream_low, per_connection // 2)
        #: streams refused credit and not yet told they have it again (a dict as an ordered
        #: set: an empty dict is 64 bytes, an empty set 216, and most connections never block)
        self.blocked: dict[int, None] = {}
        self._credit: list[CreditAvailable] = []  # (a list: an empty deque is 760 bytes)

    def grant(self, stream_id: int, want: int) -> int:
        """How many of ``want`` bytes ``stream_id`` may queue now; 0 refuses it (then
        ``CreditAvailable`` for it comes from ``next_event`` once it drained to half)."""
        if stream_id in self.blocked:
            return 0
        core = self.core
        room = min(
            self.per_stream - core.send_buffered(stream_id),
            self.per_connection - core.send_buffered_total(),
        )
        if room <= 0:
            self.blocked[stream_id] = None
            return 0
        return min(room, want)

    def send[B: Budgeted](self: SendBudget[B], stream_id: int, data: memoryview, end: bool) -> int:
        """The adapter's ``send`` verb: FIN at once (it needs no credit), else as much of
        ``data`` as ``grant`` allows; returns how many bytes the core took."""
        if end:
            self.core.send(stream_id, b"", True)
            return 0
        if taken := self.grant(stream_id, len(data)):
            self.core.send(stream_id, data[:taken])
        return taken

    def drained(self) -> None:
        """The core sent (or dropped) queued bytes: credit for refused streams now low enough."""
        if not self.blocked or self.core.send_buffered_total() > self.connection_low:
            return
        buffered, low = self.core.send_buffered, self.stream_low
        for stream_id in [s for s in self.blocked if buffered(s) <= low]:
            del self.blocked[stream_id]
            self._credit.append(CreditAvailable(stream_id))

    def next_event(self) -> CreditAvailable | None:
        """The next credit granted by ``drained``, to hand to the shell before core events."""
        return self._credit.pop(0) if self._credit else None

    def clear(self) -> None:
        """The connection ended: nobody waits for credit any more."""
        self.blocked.clear()
        self._credit.clear()
