"""What a transport supplies to the shell: the ``Adapter`` protocol, and defaults for it.

An adapter owns one sans-IO core and its I/O (a pipe's reader and writer tasks, a UDP socket's
``send_many``, data-channel actions, store operations). It does three things only:

* feeds the core what its I/O delivered and then calls ``shell.update()``;
* hands the core's events to the shell in the ``keywire.events`` vocabulary (``next_event``),
  and the core's output to its I/O (``transmit``);
* forwards the shell's stream verbs to the core and says when output was delivered.

Everything else (waiters, buffers, backpressure, the timer, close and abort, errors) is the
shell's (``keywire.shell.CoreConnection``). The contract in full: docs/shell.md.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from .core import Core
from .errors import UnsupportedError
from .events import ConnectionTerminated, Event
from .stream import finished_future

if TYPE_CHECKING:
    from .shell import CoreConnection


class Adapter(Protocol):
    """The shell's view of one transport. Every verb acts at once and never blocks."""

    #: datagrams the shell queues before dropping the oldest; 0: the transport has none
    datagram_queue: int

    def attach(self, shell: CoreConnection) -> None:
        """Called once by the shell's constructor: start the I/O. From then on, call
        ``shell.update()`` after every input fed to the core (and after anything that may
        have produced events, e.g. output drained)."""

    def next_event(self) -> Event | None:
        """The core's next event in ``keywire.events`` terms; None when none is pending.
        Transport-only events (a QUIC connection id) are handled here and not returned."""

    def transmit(self) -> None:
        """Hand whatever the core queued to the I/O (write it, send the datagrams)."""

    def get_timer(self) -> float | None:
        """The core's next deadline (loop time); the shell keeps one ``call_at`` on it."""

    def handle_timer(self, now: float) -> None:
        """The deadline passed: run the core's timer. The shell calls ``update`` after."""

    def can_open_stream(self) -> bool:
        """Whether ``open_stream`` may be called now (the shell re-asks after every update)."""

    def open_stream(self) -> int:
        """Open an outgoing stream in the core; its id."""

    def accepted(self, stream_id: int) -> None:
        """The application took a peer stream from ``accept_stream`` (a backlog may free)."""

    def send(self, stream_id: int, data: memoryview, end: bool) -> int:
        """Queue up to ``len(data)`` bytes (read-only, may be kept without a copy); returns
        how many were taken, 0 when none may be queued now (then emit ``CreditAvailable``
        when they may). ``end`` (only ever with empty data) sends FIN and must not wait for
        credit. Raise ``StreamError`` when the stream can no longer send."""

    def reset(self, stream_id: int, code: int) -> None:
        """Abandon the sending half with ``code`` (``ValueError`` for a code it cannot carry)."""

    def stop_sending(self, stream_id: int, code: int) -> None:
        """Ask the peer to stop sending with ``code``."""

    def consumed(self, stream_id: int, n: int) -> None:
        """The application read (or dropped) ``n`` bytes of the stream: credit may advance
        (call ``shell.update_soon()`` if that queued output; the shell does not, reads are
        frequent and most grant nothing)."""

    def delivered(self) -> bool:
        """True when nothing written is still on its way to the peer. A graceful close waits
        (bounded) for it before ``close``; return True if the transport's own shutdown
        (``terminated``) delivers the rest after the close frame."""

    def close(self, code: int, reason: str) -> None:
        """End the core gracefully with ``code``; it must report ``ConnectionTerminated``."""

    def abort(self, code: int, reason: str) -> None:
        """End the core now (queued data dropped); it must report ``ConnectionTerminated``."""

    def terminated(self, event: ConnectionTerminated, *, aborting: bool) -> Awaitable[None]:
        """The core ended (either side): release the I/O, after flushing the close frame
        unless ``aborting``. The result is what ``close``/``abort`` await."""

    def abort_io(self) -> None:
        """Drop the I/O now (a graceful shutdown was cut short, or was never started)."""

    @property
    def max_datagram_size(self) -> int | None:
        """Largest datagram payload sendable now; None without datagrams."""

    def send_datagram(self, data: bytes) -> None:
        """Queue one datagram (``DatagramTooLarge`` if it does not fit)."""


class BaseAdapter:
    """Defaults for the parts of ``Adapter`` most transports share (the shell and the loop
    kept by ``attach``, no datagrams, no backlog, nothing to wait for on close, nothing to
    release)."""

    datagram_queue = 0
    #: hold the shell by weak reference: for a transport whose ended connections must be
    #: freed by reference counting alone (KPS under churn), with no shell-adapter cycle
    weak_shell = False
    #: the running loop, from ``attach``
    loop: asyncio.AbstractEventLoop
    _shell_ref: Callable[[], CoreConnection | None]

    def attach(self, shell: CoreConnection) -> None:
        """Keep the shell and the loop; a subclass starts its I/O after calling this."""
        self.loop = asyncio.get_running_loop()
        self.shell = shell

    @property
    def shell(self) -> CoreConnection:
        """The connection this adapter drives (set by ``attach``)."""
        shell = self._shell_ref()
        assert shell is not None, "the connection is gone"
        return shell

    @shell.setter
    def shell(self, shell: CoreConnection) -> None:
        self._shell_ref = weakref.ref(shell) if self.weak_shell else (lambda: shell)

    def accepted(self, stream_id: int) -> None:
        return None

    def delivered(self) -> bool:
        return True

    def terminated(self, event: ConnectionTerminated, *, aborting: bool) -> Awaitable[None]:
        return finished_future()

    def abort_io(self) -> None:
        return None

    @property
    def max_datagram_size(self) -> int | None:
        return None

    def send_datagram(self, data: bytes) -> None:
        raise NotImplementedError("this transport has no datagrams")


class OneStreamVerbs:
    """The stream verbs of an adapter under ``OneStreamConnection``: its one stream (id 0)
    exists from the start, so none is ever opened through the adapter."""

    def can_open_stream(self) -> bool:
        return False

    def open_stream(self) -> int:
        raise UnsupportedError("this connection carries one stream")


class DatagramSender(Protocol):
    """A core that carries datagrams itself (QUIC's DATAGRAM frames)."""

    @property
    def max_datagram_size(self) -> int | None: ...
    def send_datagram(self, data: bytes) -> None: ...


class DatagramVerbs:
    """The datagram verbs of an adapter whose core carries datagrams itself: forwarded as
    they are (the core's own ``DatagramTooLarge`` reaches the application)."""

    core: DatagramSender

    @property
    def max_datagram_size(self) -> int | None:
        return self.core.max_datagram_size

    def send_datagram(self, data: bytes) -> None:
        self.core.send_datagram(data)


class CoreAdapter(BaseAdapter):
    """An adapter for a core with the ``keywire.core.Core`` verbs: every shell verb that maps
    to a core verb one to one is forwarded, so a subclass writes only its I/O and whatever
    its transport does differently (an abort that is not a close, credit of its own)."""

    core: Core

    def next_event(self) -> Event | None:
        return self.core.next_event()

    def get_timer(self) -> float | None:
        return self.core.get_timer()

    def handle_timer(self, now: float) -> None:
        self.core.handle_timer(now)

    def can_open_stream(self) -> bool:
        return self.core.can_open_stream()

    def open_stream(self) -> int:
        return self.core.open_stream()

    def send(self, stream_id: int, data: memoryview, end: bool) -> int:
        return self.core.send(stream_id, data, end)

    def reset(self, stream_id: int, code: int) -> None:
        self.core.reset(stream_id, code)

    def stop_sending(self, stream_id: int, code: int) -> None:
        self.core.stop_sending(stream_id, code)

    def consumed(self, stream_id: int, n: int) -> None:
        self.core.consumed(stream_id, n)
        self.shell.update_soon()  # a window update may be queued

    def close(self, code: int, reason: str) -> None:
        self.core.close(code, reason)

    def abort(self, code: int, reason: str) -> None:
        self.core.close(code, reason)  # the core's close frame is still given a moment
