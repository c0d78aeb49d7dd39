"""The asyncio shell around ``KpsSession``: ``KpsConnection`` and ``KpsStream``.

The shell only moves things: datagrams from the socket into the session and back out, the
session's deadline onto the loop's clock, session events into stream buffers and waiters.
Every decision (what a reset means, when credit advances, whether a datagram fits) is the
session's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from ..errors import Code, ConnectionClosed, StreamError
from ..stream import (
    Connection,
    DatagramQueue,
    ReceiveBuffer,
    RemoteIdentity,
    Stream,
    finished_future,
)
from .session import (
    Address,
    Closed,
    ConnectionIdChanged,
    DatagramReceived,
    HandshakeDone,
    KpsSession,
    StopSending,
    StreamData,
    StreamOpened,
    StreamReset,
)
from .settings import KpsSettings

log = logging.getLogger("keywire.kps")

SendMany = Callable[[list[bytes], Address], None]


def fresh[E: BaseException](error: E) -> E:
    """A copy of a stored error to raise: raising the stored object itself would attach the
    raiser's traceback to it, and its frames (holding the connection, the stream and the data
    being written) would live as long as the connection keeps the error."""
    clone = type(error).__new__(type(error))
    clone.args = error.args
    clone.__dict__.update(error.__dict__)
    return clone


class KpsStream(Stream):
    """One bidirectional QUIC stream with KPS's lifecycle (see ``session`` for the mapping)."""

    def __init__(self, conn: KpsConnection, stream_id: int) -> None:
        self.id = stream_id
        self._conn = conn
        self._recv = ReceiveBuffer(on_consumed=conn._consumed)
        self._write_error: StreamError | None = None
        self._write_closed = False
        self._writable: asyncio.Future[None] | None = None

    # -- reading ----------------------------------------------------------------------------------
    async def read(self, n: int = -1) -> bytes:
        try:
            return await self._recv.read(n)
        except StreamError as exc:
            error = _detach(exc)
        raise error

    async def readexactly(self, n: int) -> bytes:
        try:
            return await self._recv.readexactly(n)
        except StreamError as exc:
            error = _detach(exc)
        raise error

    # -- writing ----------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self._write_error is not None:
            raise fresh(self._write_error)
        if self._write_closed:
            raise StreamError(Code.CLOSED, "write after close_write")
        error = self._conn.close_error
        if error is not None:
            raise self._conn._stream_error(error)

    async def write(self, data: bytes) -> None:
        """Queue ``data``, waiting while ``kps.send_buffer`` bytes of this stream, or
        ``kps.connection_send_buffer`` bytes of the whole connection, are unsent."""
        view = memoryview(data).cast("B")
        session = self._conn.session
        limit = self._conn.settings.send_buffer
        total = self._conn.settings.connection_send_buffer
        while True:
            self._check_writable()
            if not view:
                return
            room = min(
                limit - session.send_buffered(self.id), total - session.send_buffered_total()
            )
            if room <= 0:
                await self._wait_writable()
                continue
            chunk = view[:room]
            try:
                session.send(self.id, chunk)
            except StreamError:
                # the session may know of a peer stop the shell has not applied yet
                self._conn._process()
                self._check_writable()
                raise
            view = view[len(chunk) :]
            self._conn._kick()

    async def _wait_writable(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()
        self._conn._writers.add(self)
        try:
            await self._writable
        finally:
            self._writable = None
            self._conn._writers.discard(self)

    def _wake_writer(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    async def close_write(self) -> None:
        if self._write_closed or self._write_error is not None:
            return
        self._check_writable()
        self._finish()

    def _finish(self) -> None:
        self._write_closed = True
        self._conn.session.send(self.id, b"", fin=True)
        self._conn._forget(self.id)
        self._conn._kick()

    def reset(self, code: int = Code.RESET) -> None:
        if self._write_error is None:
            self._write_error = StreamError(code, "stream was reset locally")
        if self._conn.close_error is None and self._conn.session.reset(self.id, code):
            self._conn._forget(self.id)
            self._conn._kick()
        self._wake_writer()

    def stop_sending(self, code: int = Code.CANCELLED) -> None:
        if self._conn.close_error is None and self._conn.session.stop_sending(self.id, code):
            self._conn._kick()
        self._recv.fail(StreamError(code, "reading was stopped locally"))

    # -- fed by the connection ----------------------------------------------------------------
    def _on_peer_stop(self, code: int) -> None:
        if self._write_error is None and not self._write_closed:
            self._write_error = StreamError(code, "peer asked to stop sending", remote=True)
        self._wake_writer()

    def _on_connection_closed(self, error: StreamError) -> None:
        # bytes that arrived stay readable; the error comes after them (and never after FIN)
        if not self._recv.ended:
            self._recv.fail(error, discard=False)
        if self._write_error is None and not self._write_closed:
            self._write_error = error
        self._wake_writer()

    def __repr__(self) -> str:
        return f"<KpsStream {self.id} of {self._conn.address or 'kps'}>"


class KpsConnection(Connection):
    """A KPS connection: drives one ``KpsSession`` on the event loop."""

    def __init__(
        self,
        session: KpsSession,
        send_many: SendMany,
        settings: KpsSettings,
        *,
        address: str = "",
        remote: RemoteIdentity | None = None,
        on_cid: Callable[[KpsConnection, bytes, bool], None] | None = None,
        on_finished: Callable[[KpsConnection], None] | None = None,
        released: asyncio.Future[None] | None = None,
    ) -> None:
        self.session = session
        #: done once the connection's own resources (a dialer's socket) are gone
        self._released = released
        self.settings = settings
        self.close_timeout = settings.close_timeout
        self.address = address
        self.remote = remote if remote is not None else RemoteIdentity()
        self._send_many = send_many
        self._on_cid = on_cid
        self._on_finished = on_finished
        self._loop = asyncio.get_running_loop()
        self._table: dict[int, KpsStream] = {}
        self._maybe_done: set[int] = set()
        self._incoming: deque[KpsStream] = deque()
        #: ``accept_stream`` callers waiting, first come first served
        self._acceptors: deque[asyncio.Future[None]] = deque()
        self._open_waiters: list[asyncio.Future[None]] = []
        self._writers: set[KpsStream] = set()
        self._drained: asyncio.Event = asyncio.Event()
        self._lingering = False
        self._datagrams = DatagramQueue(settings.datagram_queue)
        self._closed: ConnectionClosed | None = None
        self._closed_event = asyncio.Event()
        self.handshake: asyncio.Future[None] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._kicked = False
        self._keepalive: asyncio.TimerHandle | None = None
        self._finished = False
        self._finished_event = asyncio.Event()
        self.remote_address: Address | None = None

    # -- driving the session ----------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.datagrams_received([data], addr)

    def datagrams_received(self, datagrams: list[bytes], addr: Address) -> None:
        """A burst from the socket: all of it into the session, then one transmit."""
        self.session.receive_datagrams(datagrams, addr, self._loop.time())
        self._process()
        self._transmit()

    def start_client(self, addr: Address) -> None:
        self.remote_address = addr
        self.session.connect(addr, self._loop.time())
        self._process()
        self._transmit()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.session.handle_timer(self._loop.time())
        self._process()
        self._transmit()

    def _kick(self) -> None:
        """Send soon: writes in the same loop iteration share one transmit."""
        if not self._kicked:
            self._kicked = True
            self._loop.call_soon(self._kicked_transmit)

    def _kicked_transmit(self) -> None:
        self._kicked = False
        self._process()
        self._transmit()

    def _consumed(self, n: int) -> None:
        was_gated = self.session.gated
        self.session.consumed(n)
        if was_gated and not self.session.gated:
            self._kick()

    def _transmit(self) -> None:
        session = self.session
        burst: list[bytes] = []
        to: Address | None = None
        for data, addr in session.datagrams_to_send(self._loop.time()):
            if burst and addr != to:
                self._send_many(burst, to)  # type: ignore[arg-type]
                burst = []
            burst.append(data)
            to = addr
        if burst:
            self._send_many(burst, to)  # type: ignore[arg-type]
        # a finished connection keeps no timer: its handle would keep it alive for the
        # draining period after the application dropped it
        deadline = None if self._finished else session.deadline()
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None if deadline is None else self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline
        self._wake_writers()
        if session.closed is not None:
            self._check_finished()

    def _wake_writers(self) -> None:
        if self._writers:
            # wake a writer once it has room for half a stream buffer again, on its stream and
            # within the connection's budget
            settings = self.settings
            low = settings.send_buffer // 2
            total = settings.connection_send_buffer
            if self.session.send_buffered_total() <= total - min(low, total // 2):
                for stream in list(self._writers):
                    if self.session.send_buffered(stream.id) <= low:
                        stream._wake_writer()
        if self._open_waiters and self.session.can_open_stream():
            waiters, self._open_waiters = self._open_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        if self._lingering and self.session.all_acknowledged():
            self._drained.set()

    def _forget(self, stream_id: int) -> None:
        """Mark a stream whose table entry may go once no event for it is pending."""
        self._maybe_done.add(stream_id)

    def _process(self) -> None:
        session = self.session
        while True:
            event = session.next_event()
            if event is None:
                break
            stream_id = getattr(event, "stream_id", None)
            self._dispatch(event)
            if stream_id is not None:
                self._maybe_done.add(stream_id)
        if self._maybe_done:
            # every pending event is delivered: streams both of whose halves ended can go
            for stream_id in self._maybe_done:
                if not session.tracks(stream_id):
                    self._table.pop(stream_id, None)
            self._maybe_done.clear()

    def _dispatch(self, event: object) -> None:
        if isinstance(event, StreamData):
            stream = self._table.get(event.stream_id)
            if stream is not None:
                stream._recv.feed(event.data)
                if event.fin:
                    stream._recv.feed_eof()
        elif isinstance(event, StreamOpened):
            stream = KpsStream(self, event.stream_id)
            self._table[event.stream_id] = stream
            self._incoming.append(stream)
            self._wake_acceptor()
        elif isinstance(event, StreamReset):
            stream = self._table.get(event.stream_id)
            if stream is not None:
                stream._recv.fail(StreamError(event.code, "peer reset the stream", remote=True))
        elif isinstance(event, StopSending):
            stream = self._table.get(event.stream_id)
            if stream is not None:
                stream._on_peer_stop(event.code)
        elif isinstance(event, DatagramReceived):
            self._datagrams.push(event.data)
        elif isinstance(event, HandshakeDone):
            if not self.handshake.done():
                self.handshake.set_result(None)
            self._start_keepalive()
        elif isinstance(event, ConnectionIdChanged):
            if self._on_cid is not None:
                self._on_cid(self, event.cid, event.added)
        elif isinstance(event, Closed):
            self._on_closed(event.error)

    def _wake_acceptor(self) -> None:
        """A stream arrived: the longest-waiting ``accept_stream`` takes it."""
        while self._acceptors:
            waiter = self._acceptors.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _start_keepalive(self) -> None:
        interval = self.settings.ping_interval
        if interval > 0 and self._keepalive is None:
            self._keepalive = self._loop.call_later(interval, self._ping)

    def _ping(self) -> None:
        self._keepalive = None
        if self._closed is None:
            self.session.ping()
            self._transmit()
            self._start_keepalive()

    def _stream_error(self, error: ConnectionClosed) -> StreamError:
        """What a stream's pending read or write fails with when its connection ends."""
        if not error.remote and error.code in (Code.NONE, Code.CLOSED):
            return StreamError(Code.CLOSED, "connection closed locally")
        code = error.wire_code if error.code != Code.NONE else Code.CLOSED
        return StreamError(code, f"connection ended: {error}", remote=error.remote)

    def _on_closed(self, error: ConnectionClosed) -> None:
        if self._closed is not None:
            return
        self._closed = error
        self._closed_event.set()
        if not self.handshake.done():
            self.handshake.set_exception(fresh(error))
            self.handshake.exception()  # retrieved: a failed dial reports it elsewhere
        stream_error = self._stream_error(error)
        for stream in self._table.values():
            stream._on_connection_closed(stream_error)
        for stream in self._incoming:
            stream._on_connection_closed(stream_error)
        self._datagrams.fail(error)
        acceptors, self._acceptors = self._acceptors, deque()
        for waiter in acceptors:
            if not waiter.done():
                waiter.set_result(None)
        for waiter in self._open_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drained.set()
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if error.remote or error.code == Code.TIMEOUT:
            # draining (the peer closed) or timed out: nothing more will be sent, so the
            # state and a dialer's socket can go now rather than after the draining period
            self._finish_now()

    @property
    def finished(self) -> bool:
        """True once the connection's state is released (no timer, out of the listener)."""
        return self._finished

    def _check_finished(self) -> None:
        core = self.session.quic._core
        if core is None or core.state == "terminated" or self.session.deadline() is None:
            self._finish_now()

    def _finish_now(self) -> None:
        """Release the connection's state: no timer, out of the listener's table."""
        if self._finished or self._closed is None:
            return
        self._finished = True
        self._finished_event.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = None
        # no event comes any more: the table (and its cycle with the streams) can go, so
        # reference counting frees a finished connection as soon as the application drops it;
        # streams not accepted yet stay for ``accept_stream`` (their bytes are still readable)
        self._table = {}
        self._maybe_done.clear()
        self._writers.clear()
        if self._on_finished is not None:
            self._on_finished(self)

    def abort(self, code: int = Code.CANCELLED, reason: str = "") -> Awaitable[None]:
        """CONNECTION_CLOSE now: queued stream data is dropped (also used by listeners on
        shutdown and timeouts)."""
        self.session.close(code, reason or "aborted locally")
        self._process()
        self._transmit()
        return finished_future()

    # -- the Connection API -----------------------------------------------------------------------
    async def open_stream(self) -> KpsStream:
        while True:
            if self._closed is not None:
                raise fresh(self._closed)
            if self.session.can_open_stream():
                stream_id = self.session.open_stream()
                stream = KpsStream(self, stream_id)
                self._table[stream_id] = stream
                return stream
            waiter = self._loop.create_future()
            self._open_waiters.append(waiter)
            await waiter

    async def accept_stream(self) -> KpsStream:
        """The next stream the peer opened; concurrent callers are served in order, and all
        of them raise ``ConnectionClosed`` once the connection ends with no stream left."""
        while not self._incoming:
            if self._closed is not None:
                raise fresh(self._closed)
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
                    self._acceptors.remove(waiter)
        self.session.accepted()
        if not self.session.gated:
            self._kick()
        return self._incoming.popleft()

    async def close(self, code: int = Code.NONE, reason: str = "") -> None:
        """Graceful: FIN every stream still open for writing (with code 0), wait until every
        stream's data is acknowledged (at most ``kps.close_timeout``), then CONNECTION_CLOSE.

        Nothing is waited for when nothing is queued.
        """
        if self._closed is not None:
            return
        try:
            self._end_streams(finish=code == Code.NONE)
            # send now: a FIN alone counts neither as queued nor (until sent) as in flight
            self._process()
            self._transmit()
            if not self.session.all_acknowledged():
                self._drained.clear()
                self._lingering = True
                self._wake_writers()
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.close_timeout):
                            await self._drained.wait()
                finally:
                    self._lingering = False
        except asyncio.CancelledError:
            self.abort(Code.CANCELLED, "close cancelled")
            raise
        if self._closed is None:
            self.session.close(code, reason)
            self._process()
            self._transmit()
        # everything was acknowledged before CONNECTION_CLOSE went out, so the closing period
        # (re-sending it to late packets) is not waited for: the state and a dialer's socket
        # go now
        self._finish_now()
        if self._released is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._released), 1.0)

    def _end_streams(self, *, finish: bool) -> None:
        """Before a graceful close: a write still waiting can no longer complete, so its stream
        is reset (never a clean EOF after a truncated write); with ``finish`` every other stream
        still open for writing gets FIN after its queued bytes."""
        for stream in list(self._table.values()):
            if stream._write_closed or stream._write_error is not None:
                continue
            if stream._writable is not None:
                stream.reset(Code.CLOSED)
            elif finish:
                with contextlib.suppress(StreamError):
                    stream._finish()
        self._kick()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def close_error(self) -> ConnectionClosed | None:
        return self._closed

    async def wait_closed(self) -> ConnectionClosed:
        await self._closed_event.wait()
        assert self._closed is not None
        return self._closed

    @property
    def max_datagram_size(self) -> int | None:
        return self.session.max_datagram_size

    def send_datagram(self, data: bytes) -> None:
        if self._closed is not None:
            raise fresh(self._closed)
        self.session.send_datagram(bytes(data))
        self._kick()

    async def receive_datagram(self) -> bytes:
        try:
            return await self._datagrams.get()
        except ConnectionClosed as exc:
            error = _detach(exc)
        raise error

    @property
    def datagrams_dropped(self) -> int:
        """Datagrams dropped because the receive queue was full (oldest first)."""
        return self._datagrams.dropped

    @property
    def transport_name(self) -> str:
        return "kps"

    def __repr__(self) -> str:
        state = "open" if self._closed is None else f"closed ({self._closed})"
        return f"<KpsConnection {self.address or self.remote_address} {state}>"


def _detach[E: BaseException](stored: E) -> E:
    """A stored error a shared buffer raised: its traceback (this frame and the buffer's) is
    dropped from the stored object, and a fresh copy is raised in its place."""
    stored.__traceback__ = None
    return fresh(stored)
