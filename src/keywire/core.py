"""The verbs every sans-IO protocol core exposes, on the model of aioquic's ``QuicConnection``.

A core never touches a socket, a task or the clock: the caller passes ``now`` (the loop's
monotonic time, seconds) into every verb that needs time. After **any** verb the caller must
drain ``next_event()`` until it returns None, then take the output (``data_to_send`` or
``datagrams_to_send``) and re-arm its one timer from ``get_timer()``; the shell
(``keywire.shell``) does exactly that in ``CoreConnection.update``. Nothing else is needed to
drive a core, so each one is testable by moving bytes between two instances by hand.

Errors: a verb that cannot act on a stream raises ``StreamError``; a verb on a connection that
ended raises ``ConnectionClosed``. A protocol violation by the peer never raises: the core ends
the connection and reports ``ConnectionTerminated``.
"""

from __future__ import annotations

from typing import Any, Protocol

from .events import Event

#: where a datagram came from or goes to (an IP/port tuple for UDP)
Address = tuple[Any, ...]


class Core(Protocol):
    """What every core offers the shell, whatever carries its bytes."""

    def next_event(self) -> Event | None:
        """The oldest unreported event (``keywire.events``), None when there is none.

        Call it until None after every other verb; events are in the order they happened.
        """

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next be called (loop time), None for no timer.

        Re-read after every verb: a verb may move, add or remove the deadline.
        """

    def handle_timer(self, now: float, /) -> None:
        """The deadline from ``get_timer`` passed: retransmit, ping, time out.

        Then drain events, send output and re-arm the timer.
        """

    def open_stream(self) -> int:
        """A new outgoing stream id (check ``can_open_stream`` first); its opening is queued.

        Then send output: the peer learns of the stream from it.
        """

    def can_open_stream(self) -> bool:
        """False while the peer's (or our) stream limit is reached; a ``StreamClosed`` or
        ``CreditAvailable`` event says when to ask again."""

    def send(self, stream_id: int, data: bytes | memoryview, end: bool = False, /) -> int:
        """Queue up to ``len(data)`` bytes, and FIN after them with ``end``; returns how many
        were taken (0: no credit now, wait for ``CreditAvailable``; FIN goes only when all of
        ``data`` was taken). Read-only data may be queued without a copy, so it must not change.

        Then send output.
        """

    def reset(self, stream_id: int, code: int, /) -> bool | None:
        """Abandon our sending half with ``code`` (queued bytes are dropped); a no-op once the
        half ended (a core may return whether it acted). Then send output."""

    def stop_sending(self, stream_id: int, code: int, /) -> bool | None:
        """Ask the peer to stop sending with ``code``; what still arrives is dropped (a core may
        return whether it acted). Then send output.
        """

    def consumed(self, stream_id: int, n: int, /) -> None:
        """The application took ``n`` received bytes of the stream: receive credit may advance.

        Then send output (it may carry a window update).
        """

    def close(self, code: int, reason: str, /) -> None:
        """End the connection with an application ``code`` after what is queued; the core
        reports ``ConnectionTerminated`` (``remote`` False). Then send output (the close frame)."""


class ByteCore(Core, Protocol):
    """A core over a reliable byte pipe (mux over TCP/shs, store)."""

    def receive_data(self, data: bytes, now: float, /) -> None:
        """Bytes the pipe delivered. Then drain events and send output."""

    def receive_eof(self) -> None:
        """The pipe ended; the core reports how the connection ended."""

    def data_to_send(self) -> bytes:
        """Everything queued for the pipe (b"" when nothing), in order; write it out."""


class DatagramCore(Core, Protocol):
    """A core over datagrams (QUIC)."""

    def receive_datagrams(self, datagrams: list[bytes], addr: Address, now: float, /) -> None:
        """A burst from one source. Then drain events and send output."""

    def datagrams_to_send(self, now: float, /) -> list[tuple[bytes, Address]]:
        """Datagrams to send now, with their destinations, in order."""
