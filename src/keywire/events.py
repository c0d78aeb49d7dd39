"""The one event vocabulary every sans-IO core reports to the shell.

A core (mux, KPS/QUIC, WebRTC, store) queues these as things happen and the shell takes them
with ``next_event()`` (see ``keywire.core.Core``). Naming follows aioquic's ``quic.events`` so a
reader who knows QUIC knows these; the fields are the same on every transport, which is what lets
one shell (``keywire.shell``) hold the waiters, buffers and close logic for all of them.

Order matters and is kept: a stream's ``StreamData`` events come in byte order, ``StreamClosed``
after the last event of its stream, ``ConnectionTerminated`` last of all.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConnectionClosed


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened a stream; the shell queues it for ``accept_stream``."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamData:
    """Bytes of a stream in order; ``fin``: the peer's sending half ended after them (EOF)."""

    stream_id: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer abandoned its sending half with ``code``: our reads fail with it."""

    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class ReadsFailed:
    """Our reads of the stream fail with ``code`` for a reason ``StreamReset`` does not cover:
    with ``discard=False`` the bytes already received stay readable first (QUIC's
    RESET_STREAM_AT; a store peer's close(code)), and ``remote=False`` reports a stop of our
    own the core learned of by itself (a store stream restored after its StopSending)."""

    stream_id: int
    code: int
    reason: str
    remote: bool = True
    discard: bool = True


@dataclass(frozen=True, slots=True)
class StopSendingReceived:
    """Our sending half is over because of the peer (STOP_SENDING, or a reset that kills both
    halves): writes fail with ``code``. The core has already answered on the wire."""

    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class CreditAvailable:
    """Writers may try again: on ``stream_id``, or on every stream when it is None (output
    drained, a connection-wide budget freed)."""

    stream_id: int | None = None


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """Both halves of the stream ended and the core forgot it (a stream slot may be free)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class DatagramReceived:
    """One unreliable datagram."""

    data: bytes


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """The secure handshake finished (``alpn`` where the transport negotiates one)."""

    alpn: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The connection is over. ``remote``: the peer ended it (its code); otherwise we did, or
    the path failed. ``kind`` is the transport's own class of ending (QUIC: application,
    transport or timeout)."""

    code: int
    reason: str
    remote: bool
    kind: str = "application"

    def error(self) -> ConnectionClosed:
        """The error ``wait_closed``/``accept_stream`` report for this ending."""
        return ConnectionClosed(self.code, self.reason, remote=self.remote)


Event = (
    StreamOpened
    | StreamData
    | StreamReset
    | ReadsFailed
    | StopSendingReceived
    | CreditAvailable
    | StreamClosed
    | DatagramReceived
    | HandshakeCompleted
    | ConnectionTerminated
)
