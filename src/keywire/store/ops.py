"""What the sans-IO core asks the shell to do (store operations), and its store-only events."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .. import events as ev
from ..errors import StreamError


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
# The core reports in ``keywire.events`` terms (``StreamData``, ``StreamReset``,
# ``StopSendingReceived``, ``ConnectionTerminated`` for a fatal error; stream id 0) wherever the
# shared vocabulary has the meaning; these three are what it has no member for.


@dataclass(frozen=True)
class ReadFailed:
    """Reads fail with ``error`` without a peer's bare Reset: our own StopSending (reported
    after a restore or a recovery, ``discard``), or the peer's close(code) (a Reset after its
    StopSending with the same code), after which the bytes before it stay readable."""

    error: StreamError
    discard: bool = False


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


Event = ev.Event | ReadFailed | FrameRejected | StoreTrouble
