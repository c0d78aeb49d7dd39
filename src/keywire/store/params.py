"""Settings of a store stream: its mode and the tuning every limit and timer comes from."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .frame import Geometry

DEFAULT_VALUE_SIZE = 16384


class Mode(enum.Enum):
    DUPLEX = "duplex"
    #: one writer (the listener role), any number of readers (the dialer role); no acks
    MULTICAST = "multicast"


@dataclass(frozen=True)
class StoreParams:
    """Tuning of one stream; every limit has a default that works on a LAN store."""

    #: frames that may await an acknowledgement (and gets that run ahead of the reader)
    window: int = 8
    #: length of every stored value; must not exceed the store's limit
    value_size: int = DEFAULT_VALUE_SIZE
    rto_initial: float = 1.0
    rto_min: float = 0.2
    rto_max: float = 30.0
    #: acknowledge after this many ack-eliciting frames (0: half the window, at least 1) ...
    ack_every: int = 0
    #: ... or this long after the first unacknowledged one
    ack_delay: float = 0.005
    #: how soon a frame nobody acknowledges (a bare ack, a multicast frame) is read back
    verify_delay: float = 0.005
    #: long-poll time of one get
    get_wait: float = 20.0
    #: backoff after a store error, from min doubling to max
    retry_min: float = 0.02
    retry_max: float = 2.0
    #: rejected values read at one index before the stream fails
    bad_frame_tries: int = 6
    #: bytes accepted from the application before ``write`` waits (0: window × frame)
    max_write_buffer: int = 0
    #: received bytes the application has not read before gets pause (0: 4 × window × frame)
    max_read_buffer: int = 0
    #: seed of the retransmission jitter (None: from the OS)
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.window <= 1024:
            raise ValueError(f"window {self.window} is outside 1..1024")
        Geometry(self.value_size)
        if not 0 < self.rto_min <= self.rto_initial <= self.rto_max:
            raise ValueError("need 0 < rto_min <= rto_initial <= rto_max")
        if self.bad_frame_tries < 1:
            raise ValueError("bad_frame_tries must be at least 1")
