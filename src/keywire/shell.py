"""The one asyncio shell: ``CoreConnection``/``CoreStream`` around any sans-IO core.

Waiters, receive buffers, write backpressure, the timer, concurrent ``accept_stream``, graceful
close and abort, datagrams and the mapping of endings to errors live here once. A transport
supplies an ``Adapter`` (``keywire.adapter``): it moves the core's bytes or datagrams to its
I/O and hands the core's events over in the ``keywire.events`` vocabulary. The shell drives it
the way aioquic's asyncio protocol drives ``QuicConnection``: after every input or local verb,
``update()`` drains events, transmits, and re-arms one ``loop.call_at`` timer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

from . import events as ev
from .adapter import Adapter
from .corestream import CoreStream
from .errors import Code, ConnectionClosed, StreamError, UnsupportedError
from .stream import (
    AddressLike,
    Connection,
    DatagramQueue,
    RemoteIdentity,
    finished_future,
    fresh,
)

__all__ = ["CoreConnection", "CoreStream", "OneStreamConnection"]


class CoreConnection(Connection):
    """A ``Connection`` driving one adapter; transports subclass it only to name it and to keep
    their constructor."""

    stream_class: type[CoreStream] = CoreStream
    #: the transport's name in errors and logs (None: the address's transport)
    transport_label: str | None = None

    def __init__(
        self, adapter: Adapter, *, address: AddressLike = None, remote: RemoteIdentity | None = None
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._adapter = adapter
        self.address = address
        self.remote = remote if remote is not None else RemoteIdentity()
        self._table: dict[int, CoreStream] = {}
        # short queues as lists, the datagram queue and the linger event made when first
        # needed, the ending a future: an idle connection holds no 760-byte empty deque
        # (asyncio.Event and DatagramQueue each have one; issue 17)
        self._incoming: list[CoreStream] = []
        self._acceptors: list[asyncio.Future[None]] = []
        self._open_waiters: list[asyncio.Future[None]] = []
        #: streams waiting for credit, as a dict used as an ordered set (an empty set is 216
        #: bytes, an empty dict 64: most connections never block)
        self._blocked: dict[CoreStream, None] = {}
        self._datagrams: DatagramQueue | None = None
        self._error: ConnectionClosed | None = None
        self._done: asyncio.Future[None] | None = None  # made by the first ``wait_closed``
        self._delivered: asyncio.Event | None = None
        self._lingering = False
        self._aborting = False
        self._released: Awaitable[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._kicked = False
        self._updated: list[asyncio.Future[None]] | None = None  # ``next_update`` waiters
        #: True once the adapter released the transport (``forget``): no timer, no table
        self.finished = False
        #: resolves when the handshake completes; fails with the ending if it never does
        self.handshake: asyncio.Future[None] = self._loop.create_future()
        adapter.attach(self)

    def __repr__(self) -> str:
        state = "open" if self._error is None else f"closed ({self._error})"
        return f"<{type(self).__name__} {self.address or '?'} {state}>"

    @property
    def transport_name(self) -> str:
        return self.transport_label or super().transport_name

    # -- driving --------------------------------------------------------------------------------
    def update(self) -> None:
        """Deliver the core's events, transmit its output, re-arm the timer, wake waiters.

        Adapters call it after feeding the core input; the shell after every local verb."""
        adapter = self._adapter
        dispatch = self._dispatch
        while (event := adapter.next_event()) is not None:
            dispatch(event)
        adapter.transmit()
        while (event := adapter.next_event()) is not None:
            dispatch(event)
        deadline = None if self.finished else adapter.get_timer()
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = None if deadline is None else self._loop.call_at(deadline, self._on_timer)
        if self._open_waiters and (self._error is not None or adapter.can_open_stream()):
            self._wake_all(self._open_waiters)
        if self._lingering and adapter.delivered() and self._delivered is not None:
            self._delivered.set()
        if self._updated:
            self._wake_all(self._updated)

    async def next_update(self) -> None:
        """Wait for the next ``update`` (an input fed, a deadline, a local verb): for callers
        that wait on a state of the core rather than on a stream (a store stream's ``sync``)."""
        waiter = self._loop.create_future()
        if self._updated is None:
            self._updated = []
        self._updated.append(waiter)
        await waiter

    def update_soon(self) -> None:
        """Update soon: verbs in the same loop iteration share one transmit."""
        if not self._kicked:
            self._kicked = True
            self._loop.call_soon(self._soon_update)

    def _soon_update(self) -> None:
        self._kicked = False
        self.update()

    def forget(self) -> None:
        """The adapter released the transport after the ending: no timer any more, and no
        stream table (no event comes, and dropping it breaks the cycle with the streams so a
        finished connection is freed as soon as the application drops it). Streams not yet
        accepted stay for ``accept_stream``: their bytes are still readable."""
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = None
        self._table = {}
        self._blocked.clear()

    def _consumed(self, stream_id: int, n: int) -> None:
        if self._error is None:
            self._adapter.consumed(stream_id, n)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._adapter.handle_timer(self._loop.time())
        self.update()

    def _dispatch(self, event: ev.Event) -> None:
        if isinstance(event, ev.StreamData):
            stream = self._table.get(event.stream_id)
            if stream is not None:
                stream._recv.feed(event.data)
                if event.fin:
                    stream._recv.feed_eof()
        elif isinstance(event, ev.CreditAvailable):
            if event.stream_id is None:
                for blocked in list(self._blocked):
                    blocked._wake_writer()
            elif (stream := self._table.get(event.stream_id)) is not None:
                stream._wake_writer()
        elif isinstance(event, ev.StreamOpened):
            stream = self.stream_class(self, event.stream_id)
            self._table[event.stream_id] = stream
            self._incoming.append(stream)
            self._wake_acceptor()
        elif isinstance(event, ev.StreamReset):
            stream = self._table.get(event.stream_id)
            if stream is not None:
                stream._recv.fail(StreamError(event.code, "peer reset the stream", remote=True))
        elif isinstance(event, ev.ReadsFailed):
            stream = self._table.get(event.stream_id)
            if stream is not None:
                error = StreamError(event.code, event.reason, remote=event.remote)
                stream._recv.fail(error, discard=event.discard)
        elif isinstance(event, ev.StopSendingReceived):
            stream = self._table.get(event.stream_id)
            if stream is not None:
                text = "the peer ended our sending half (stop-sending or reset)"
                stream._fail_writes(StreamError(event.code, text, remote=True))
        elif isinstance(event, ev.StreamClosed):
            self._table.pop(event.stream_id, None)
        elif isinstance(event, ev.DatagramReceived):
            self._datagram_queue().push(event.data)
        elif isinstance(event, ev.HandshakeCompleted):
            if not self.handshake.done():
                self.handshake.set_result(None)
        elif isinstance(event, ev.ConnectionTerminated):
            self._terminated(event)

    def _terminated(self, event: ev.ConnectionTerminated) -> None:
        if self._error is not None:
            return
        self._error = error = event.error()
        if self._done is not None:
            self._done.set_result(None)
        if not self.handshake.done():
            self.handshake.set_exception(fresh(error))
            self.handshake.exception()  # retrieved: a failed dial reports it elsewhere
        stream_error = self._stream_error()
        for stream in [*self._table.values(), *self._incoming]:
            stream._connection_ended(stream_error)
        self._table.clear()
        self._blocked.clear()
        if self._datagrams is not None:
            self._datagrams.fail(error)
        self._wake_all(self._acceptors)
        self._wake_all(self._open_waiters)
        if self._delivered is not None:
            self._delivered.set()
        self._released = self._adapter.terminated(event, aborting=self._aborting)

    def _stream_error(self) -> StreamError:
        """What a stream's pending read or write fails with once the connection ended:
        ``closed`` for a clean ending, else the connection's code."""
        error = self._error
        assert error is not None
        if not error.remote and error.code in (Code.NONE, Code.CLOSED):
            return StreamError(Code.CLOSED, "connection closed locally")
        code = Code.CLOSED if error.wire_code == Code.NONE else error.wire_code
        return StreamError(code, f"connection ended: {error}", remote=error.remote)

    @staticmethod
    def _wake_all(waiters: list[asyncio.Future[None]]) -> None:
        pending = list(waiters)
        waiters.clear()
        for waiter in pending:
            if not waiter.done():
                waiter.set_result(None)

    def _wake_acceptor(self) -> None:
        """A stream arrived: the longest-waiting ``accept_stream`` takes it."""
        while self._acceptors:
            waiter = self._acceptors.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- streams --------------------------------------------------------------------------------
    async def open_stream(self) -> CoreStream:
        """A new stream; waits while the stream limit is reached."""
        while True:
            if self._error is not None:
                raise fresh(self._error)
            if self._adapter.can_open_stream():
                stream_id = self._adapter.open_stream()
                stream = self.stream_class(self, stream_id)
                self._table[stream_id] = stream
                self.update_soon()
                return stream
            waiter = self._loop.create_future()
            self._open_waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._open_waiters.remove(waiter)

    async def accept_stream(self) -> CoreStream:
        """The next stream the peer opened; concurrent callers are served first come first
        served, and all raise ``ConnectionClosed`` once the connection ended with none left."""
        while not self._incoming:
            if self._error is not None:
                raise fresh(self._error)
            waiter = self._loop.create_future()
            self._acceptors.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and self._incoming:
                    self._wake_acceptor()  # woken for a stream, then cancelled: pass it on
                raise
            finally:
                if not waiter.done():
                    waiter.cancel()
                    with contextlib.suppress(ValueError):
                        self._acceptors.remove(waiter)
        stream = self._incoming.pop(0)
        if self._error is None:
            self._adapter.accepted(stream.id)
            self.update_soon()
        return stream

    # -- closing --------------------------------------------------------------------------------
    async def close(self, code: int = Code.NONE, reason: str = "") -> None:
        """Graceful: FIN every stream still open for writing (with code 0; a write in progress
        resets its stream), wait until the adapter says everything written was delivered, then
        end the core and wait for the adapter to release its I/O; bounded by ``close_timeout``,
        aborted if cancelled. Returns at once when nothing is queued."""
        deadline = self._loop.time() + self.close_timeout
        try:
            if self._error is None:
                for stream in list(self._table.values()):
                    stream._end_for_close(finish=code == Code.NONE)
                self.update()
                if not self._adapter.delivered():
                    self._delivered = delivered = asyncio.Event()
                    self._lingering = True
                    try:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout_at(deadline):
                                await delivered.wait()
                    finally:
                        self._lingering = False
                if self._error is None:
                    self._adapter.close(code, reason)
                    self.update()
            if self._released is not None:
                await asyncio.shield(self._released)
        except asyncio.CancelledError:
            self.abort(Code.CANCELLED, "close cancelled")
            raise

    def abort(self, code: int = Code.CANCELLED, reason: str = "") -> Awaitable[None]:
        """Now: queued data is dropped, the core's close frame is given a moment, the I/O goes."""
        if self._error is None:
            self._aborting = True
            self._adapter.abort(code, reason or "aborted locally")
            self.update()
        elif not self._aborting:  # a graceful close in progress is cut short
            self._aborting = True
            self._adapter.abort_io()
        if self._released is None:
            self._adapter.abort_io()
            return finished_future()
        return asyncio.shield(self._released)

    @property
    def closed(self) -> bool:
        return self._error is not None

    @property
    def close_error(self) -> ConnectionClosed | None:
        return self._error

    async def wait_closed(self) -> ConnectionClosed:
        await self._ended()
        assert self._error is not None
        return self._error

    async def _ended(self) -> None:
        """Wait until the connection ended (the future is made on first need: an idle
        connection nobody waits on holds none)."""
        if self._error is not None:
            return
        if self._done is None:
            self._done = self._loop.create_future()
        await asyncio.shield(self._done)

    # -- datagrams ------------------------------------------------------------------------------
    @property
    def max_datagram_size(self) -> int | None:
        return self._adapter.max_datagram_size

    def send_datagram(self, data: bytes) -> None:
        if self._adapter.datagram_queue <= 0:
            super().send_datagram(data)
        if self._error is not None:
            raise fresh(self._error)
        self._adapter.send_datagram(bytes(data))
        self.update_soon()

    async def receive_datagram(self) -> bytes:
        if self._adapter.datagram_queue <= 0:
            return await super().receive_datagram()
        return await self._datagram_queue().get()

    @property
    def datagrams_dropped(self) -> int:
        """Datagrams dropped because the receive queue was full (oldest first)."""
        return 0 if self._datagrams is None else self._datagrams.dropped

    def _datagram_queue(self) -> DatagramQueue:
        """The receive queue, made on the first datagram or ``receive_datagram``."""
        queue = self._datagrams
        if queue is None:
            self._datagrams = queue = DatagramQueue(max(1, self._adapter.datagram_queue))
            if self._error is not None:
                queue.fail(self._error)
        return queue


class OneStreamConnection(CoreConnection):
    """A connection that carries exactly one stream, id 0 (a chain without ``~mux``, a store
    stream). The stream exists from the start: whichever of ``open_stream``/``accept_stream``
    comes first gets it; a second ``open_stream`` is unsupported, and a second
    ``accept_stream`` waits for the end, since no other stream will come. The adapter never
    reports ``StreamOpened``; it ends the connection (``ConnectionTerminated``) once the
    stream is over, with ``Code.NONE`` and "stream ended" when that was a clean end."""

    #: how errors name a connection without an address, and what they advise
    unnamed = "this chain"
    advice = ""

    def __init__(
        self, adapter: Adapter, *, address: AddressLike = None, remote: RemoteIdentity | None = None
    ) -> None:
        super().__init__(adapter, address=address, remote=remote)
        self._one = self.stream_class(self, 0)
        self._table[0] = self._one
        self._taken = False

    def _take(self) -> CoreStream:
        if self._error is not None:
            raise fresh(self._error)
        if self._taken:
            raise UnsupportedError(
                f"{self.address or self.unnamed} carries one stream{self.advice}"
            )
        self._taken = True
        return self._one

    async def open_stream(self) -> CoreStream:
        return self._take()

    async def accept_stream(self) -> CoreStream:
        if self._taken:
            await self._ended()
            assert self._error is not None
            raise fresh(self._error)
        return self._take()
