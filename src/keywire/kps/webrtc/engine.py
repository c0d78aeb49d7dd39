"""The small interface between the KPS wire layer and a WebRTC engine.

An engine turns one ICE + DTLS + SCTP peer connection into numbered data channels. The wire
shell (``connection.py``) needs only what is below, so aiortc today and a native engine
(libdatachannel once its Python binding is safe under churn) later are interchangeable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

#: a writer waits once this much is queued locally on its channel (KPS: 1 MiB) …
BUFFER_HIGH = 1 << 20
#: … until the queue drains to this much
BUFFER_LOW = 256 << 10


class ChannelEvents(Protocol):
    """What an engine reports; implemented by the connection shell. Called on the loop thread."""

    def on_control_open(self) -> None:
        """Channel 0 (``_kps_control``) is open: HELLO may be sent."""

    def on_control_message(self, data: bytes) -> None: ...

    def on_datagram(self, data: bytes) -> None: ...

    def on_channel_open(self, channel: int) -> None:
        """The peer opened DCEP channel ``channel``."""

    def on_channel_message(self, channel: int, data: bytes) -> None: ...

    def on_channel_closed(self, channel: int) -> None:
        """Channel ``channel`` finished closing (either side asked)."""

    def on_lost(self, reason: str) -> None:
        """ICE, DTLS or SCTP ended underneath."""

    def on_activity(self) -> None:
        """A packet arrived from the peer (called per packet: must be cheap)."""

    def on_violation(self, reason: str) -> None:
        """The peer broke a rule below the frames (a text message, a DCEP OPEN on an id in use)."""


class PeerLink(ABC):
    """One established peer connection seen as data channels."""

    #: Set by the shell before any event can fire.
    events: ChannelEvents

    @abstractmethod
    def send(self, channel: int, data: bytes) -> None:
        """Queue one binary message on ``channel`` (0 = control); never blocks."""

    @abstractmethod
    def open_channel(self, channel: int) -> None:
        """Open a reliable, ordered DCEP channel with this id (messages may follow at once)."""

    @abstractmethod
    def close_channel(self, channel: int) -> None:
        """Close the channel (SCTP stream reset)."""

    @abstractmethod
    def send_datagram(self, data: bytes) -> None:
        """One message on channel 1 (unordered, no retransmissions)."""

    @abstractmethod
    def buffered_amount(self, channel: int) -> int:
        """Bytes queued locally on ``channel`` and not yet handed to SCTP."""

    @abstractmethod
    async def wait_buffered_low(self, channel: int) -> None:
        """Return once ``channel``'s buffer is at or below the low-water mark (or it closed)."""

    @abstractmethod
    async def wait_delivered(self) -> None:
        """Until everything queued on every channel was acknowledged by the peer (or the link
        ended); the caller bounds the wait."""

    @abstractmethod
    async def close(self, *, flush: bool) -> None:
        """Tear down; with ``flush``, first give channel 0 up to 250 ms to deliver."""

    @property
    @abstractmethod
    def remote_address(self) -> tuple[str, int] | None:
        """The peer's selected ICE address, if known."""
