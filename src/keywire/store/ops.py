"""What the sans-IO core asks the shell to do (store operations), and its store-only events."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .. import events as ev


class Purpose(enum.Enum):
    READ = "read"  # the peer's next frames
    VERIFY = "verify"  # read back one of our own frames that nobody acknowledges
    RECOVER = "recover"  # after a restore: did our previous run put this frame?
    PROBE = "probe"  # is the oldest unacknowledged frame really in the store?


@dataclass(eq=False)
class PutOp:
    index: int
    address: bytes
    value: bytes


@dataclass(eq=False)
class GetOp:
    index: int
    address: bytes
    wait: float
    purpose: Purpose


Op = PutOp | GetOp


# -- events for the shell ------------------------------------------------------------------------
# The core reports in ``keywire.events`` terms (``StreamData``, ``StreamReset``, ``ReadsFailed``,
# ``StopSendingReceived``, ``ConnectionTerminated`` for a fatal error; stream id 0); these two
# are diagnostics, not stream semantics, which no other shell would handle.


@dataclass(frozen=True)
class FrameRejected:
    """A value read from the store was not a valid frame; the reason says why (diagnostics)."""

    index: int
    reason: str


@dataclass(frozen=True)
class StoreTrouble:
    """A put or get failed at the store (it will be retried; diagnostics)."""

    what: str
    reason: str


Event = ev.Event | FrameRejected | StoreTrouble
