"""What the sans-IO core asks the shell to do (store operations) and tells it (events)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

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
@dataclass(frozen=True)
class DataReceived:
    data: bytes


@dataclass(frozen=True)
class EndReceived:
    pass


@dataclass(frozen=True)
class ReadFailed:
    error: StreamError
    discard: bool = False


@dataclass(frozen=True)
class WriteFailed:
    error: StreamError


@dataclass(frozen=True)
class FrameRejected:
    """A value read from the store was not a valid frame; the reason says why."""

    index: int
    reason: str


@dataclass(frozen=True)
class StoreTrouble:
    """A put or get failed at the store (it will be retried)."""

    what: str
    reason: str


Event = DataReceived | EndReceived | ReadFailed | WriteFailed | FrameRejected | StoreTrouble
