"""The asyncio shell around ``MuxSession``: one reader task, one writer task, one timer.

The reader feeds the pipe's bytes to the session and hands the resulting events to streams; the
writer sends whatever the session queued, so frames queued while a write is in flight go out
together in the next one (coalescing). Writers wait for the stream's send window and, when the
pipe is slower than the application, for the queued output to drain, so memory stays bounded by
the windows. The reader pauses while answers to the peer (pongs, ACKs) pile up unsent, so a peer
that sends but never reads cannot grow our buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from ..errors import Code, ConnectionClosed, StreamError
from ..pipe import ACK_POLL, Pipe, unacknowledged
from ..stream import Connection, ReceiveBuffer, Stream, finished_future
from .frame import check_code
from .session import (
    ConnectionTerminated,
    DataReceived,
    Event,
    MuxConfig,
    MuxSession,
    SendingStopped,
    SendWindowIncreased,
    StreamClosed,
    StreamFinished,
    StreamOpened,
    StreamReset,
)

log = logging.getLogger(__name__)

#: bytes asked of the pipe per read
READ_SIZE = 256 * 1024
#: writers wait while more than this is queued and not yet handed to the pipe
OUTPUT_HIGH_WATER = 1024 * 1024
#: the reader pauses while more than this many bytes of answers wait to be sent
CONTROL_HIGH_WATER = 64 * 1024
#: how long ``abort`` gives the GoAway to reach the pipe before the pipe is torn down
ABORT_FLUSH = 0.5
#: how long a close waits for the peer's end once the peer's kernel acknowledged all we sent
PEER_END_GRACE = 1.0


class MuxStream(Stream):
    """One multiplexed stream; reads come from a ``ReceiveBuffer`` fed by the reader task."""

    def __init__(self, connection: MuxConnection, stream_id: int) -> None:
        self.id = stream_id
        self._conn = connection
        self._buffer = ReceiveBuffer(on_consumed=self._consumed)
        self._write_lock = asyncio.Lock()
        self._write_closed = False
        self._write_error: StreamError | None = None
        self._credit: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<MuxStream {self.id}>"

    # -- read side ------------------------------------------------------------------------------
    async def read(self, n: int = -1) -> bytes:
        return await self._buffer.read(n)

    async def readexactly(self, n: int) -> bytes:
        return await self._buffer.readexactly(n)

    def _consumed(self, n: int) -> None:
        self._conn._consumed(self.id, n)

    def stop_sending(self, code: int = Code.CANCELLED) -> None:
        check_code(code)
        self._conn._session_call(lambda s: s.stop_sending(self.id, code))
        self._buffer.fail(StreamError(code, "reading was stopped locally"))

    # -- write side -----------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self._write_error is not None:
            raise self._write_error
        if self._write_closed:
            raise StreamError(Code.CLOSED, "write after close_write")

    async def write(self, data: bytes) -> None:
        async with self._write_lock:
            self._check_writable()
            # an immutable copy lets the session queue slices of it without copying again
            view = memoryview(data if isinstance(data, bytes) else bytes(data))
            conn = self._conn
            while view:
                self._check_writable()
                sent = conn._send(self.id, view)
                if sent:
                    view = view[sent:]
                    if conn._output_backlog() > OUTPUT_HIGH_WATER:
                        await conn._wait_output_drained()
                else:
                    await self._wait_credit()

    async def _wait_credit(self) -> None:
        self._credit = asyncio.get_running_loop().create_future()
        try:
            await self._credit
        finally:
            self._credit = None

    def _wake_writer(self) -> None:
        if self._credit is not None and not self._credit.done():
            self._credit.set_result(None)

    def _fail_writes(self, error: StreamError) -> None:
        if self._write_error is None and not self._write_closed:
            self._write_error = error
        self._wake_writer()

    async def close_write(self) -> None:
        async with self._write_lock:
            if self._write_closed:
                return
            self._check_writable()
            self._finish()

    def _finish(self) -> None:
        self._conn._session_call(lambda s: s.close_write(self.id))
        self._write_closed = True

    def _end_for_close(self, *, finish: bool) -> None:
        """The connection closes gracefully: a write still in progress cannot complete, so its
        stream is reset (a truncated stream never reads as EOF); otherwise FIN (``finish``)."""
        if self._write_closed or self._write_error is not None:
            return
        if self._write_lock.locked():
            self.reset(Code.CLOSED)
        elif finish:
            self._finish()

    def reset(self, code: int = Code.RESET) -> None:
        check_code(code)
        if self._write_closed or self._write_error is not None:
            return
        self._conn._session_call(lambda s: s.reset(self.id, code))
        self._write_error = StreamError(code, "stream was reset locally")
        self._wake_writer()

    # -- connection end -------------------------------------------------------------------------
    def _connection_ended(self, error: StreamError) -> None:
        if not self._buffer.ended:
            self._buffer.fail(error, discard=False)
        self._fail_writes(error)


class MuxConnection(Connection):
    """Many streams over one pipe. The dialer is the yamux client (odd stream ids)."""

    def __init__(
        self, pipe: Pipe, *, client: bool, config: MuxConfig | None = None, address: str = ""
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._pipe = pipe
        self._session = MuxSession(client=client, config=config, now=self._loop.time())
        self.address = address
        self.remote = pipe.remote
        self._by_id: dict[int, MuxStream] = {}
        self._accepted: deque[MuxStream] = deque()
        self._accept_waiters: deque[asyncio.Future[None]] = deque()
        self._open_waiters: deque[asyncio.Future[None]] = deque()
        self._error: ConnectionClosed | None = None
        self._done = asyncio.Event()
        self._output_ready = asyncio.Event()
        self._output_idle = asyncio.Event()
        self._output_idle.set()
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._pipe_dead = False
        #: ``abort`` was called: the pipe goes without waiting for the peer
        self._aborting = False
        self._peer_eof = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._shutdown: asyncio.Task[None] | None = None
        self._reader = self._loop.create_task(self._read_loop())
        self._writer = self._loop.create_task(self._write_loop())
        self._pump()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._by_id)} streams"
        return f"<MuxConnection {self.address or '?'} {state}>"

    @property
    def session(self) -> MuxSession:
        """The protocol core (for inspection: windows, rtt, stream count)."""
        return self._session

    # -- streams --------------------------------------------------------------------------------
    async def open_stream(self) -> Stream:
        while not self._session.can_open_stream:
            if self._error is not None:
                raise self._error
            waiter = self._loop.create_future()
            self._open_waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._open_waiters.remove(waiter)
        stream_id = self._session.open_stream()
        stream = MuxStream(self, stream_id)
        self._by_id[stream_id] = stream
        self._pump()
        return stream

    async def accept_stream(self) -> Stream:
        while not self._accepted:
            if self._error is not None:
                raise self._error
            waiter = self._loop.create_future()
            self._accept_waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._accept_waiters.remove(waiter)
        return self._accepted.popleft()

    # -- closing --------------------------------------------------------------------------------
    async def close(self, code: int = Code.NONE, reason: str = "") -> None:
        """Graceful: FIN the streams still open for writing (code 0), GoAway after every queued
        frame, flush it all into the pipe, end the pipe's writing half and wait (at most
        ``close_timeout``) for the peer to end its half, so nothing is cut off on the wire."""
        if self._error is None:
            for stream in list(self._by_id.values()):
                stream._end_for_close(finish=code == Code.NONE)
            self._session.close(code, reason)
            self._pump()
        if self._shutdown is not None:
            try:
                await asyncio.shield(self._shutdown)
            except asyncio.CancelledError:
                self._pipe.abort()
                raise

    def abort(self, code: int = Code.CANCELLED, reason: str = "") -> Awaitable[None]:
        """Now: queued frames are dropped, GoAway(code) is given a moment, the pipe goes."""
        if self._error is None:
            self._aborting = True
            self._session.abort(code, reason)
            self._pump()
        elif not self._aborting:  # a graceful close in progress is cut short
            self._aborting = True
            self._pipe.abort()
        if self._shutdown is None:
            self._pipe.abort()
            return finished_future()
        return asyncio.shield(self._shutdown)

    @property
    def closed(self) -> bool:
        return self._error is not None

    @property
    def close_error(self) -> ConnectionClosed | None:
        return self._error

    async def wait_closed(self) -> ConnectionClosed:
        await self._done.wait()
        assert self._error is not None
        return self._error

    # -- called by streams ----------------------------------------------------------------------
    def _session_call(self, op: Callable[[MuxSession], None]) -> None:
        """Run a local stream operation on the session (a no-op once the connection ended)."""
        if self._error is not None:
            return
        op(self._session)
        self._pump()

    def _send(self, stream_id: int, data: memoryview) -> int:
        if self._error is not None:
            raise StreamError(
                self._stream_code(self._error), str(self._error), remote=self._error.remote
            )
        sent = self._session.send(stream_id, data)
        if sent:
            self._pump()
        return sent

    def _consumed(self, stream_id: int, n: int) -> None:
        if self._error is None:
            self._session.consumed(stream_id, n, self._loop.time())
            self._pump()

    def _output_backlog(self) -> int:
        return self._session.pending_output

    async def _wait_output_drained(self) -> None:
        """Until the writer has taken what is queued (or the connection ended)."""
        while self._session.pending_output > OUTPUT_HIGH_WATER and self._error is None:
            await self._wait_drained()

    async def _wait_drained(self) -> None:
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def _wake_drained(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- event handling -------------------------------------------------------------------------
    def _pump(self) -> None:
        """Deliver the session's events, wake the writer, re-arm the timer."""
        session = self._session
        for event in session.events():
            self._dispatch(event)
        if session.pending_output:
            self._output_idle.clear()
            self._output_ready.set()
        deadline = session.next_deadline()
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = None if deadline is None else self._loop.call_at(deadline, self._on_timer)

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, DataReceived):
            stream = self._by_id.get(event.stream_id)
            if stream is not None:
                stream._buffer.feed(event.data)
        elif isinstance(event, SendWindowIncreased):
            stream = self._by_id.get(event.stream_id)
            if stream is not None:
                stream._wake_writer()
        elif isinstance(event, StreamOpened):
            stream = MuxStream(self, event.stream_id)
            self._by_id[event.stream_id] = stream
            self._accepted.append(stream)
            self._wake_one(self._accept_waiters)
        elif isinstance(event, StreamFinished):
            stream = self._by_id.get(event.stream_id)
            if stream is not None:
                stream._buffer.feed_eof()
        elif isinstance(event, StreamReset):
            stream = self._by_id.get(event.stream_id)
            if stream is not None:
                error = StreamError(event.code, "stream was reset by the peer", remote=True)
                stream._buffer.fail(error)
                if event.whole:
                    stream._fail_writes(error)
        elif isinstance(event, SendingStopped):
            stream = self._by_id.get(event.stream_id)
            if stream is not None:
                stream._fail_writes(
                    StreamError(event.code, "the peer stopped reading (stop-sending)", remote=True)
                )
        elif isinstance(event, StreamClosed):
            self._by_id.pop(event.stream_id, None)
            self._wake_one(self._open_waiters)
        elif isinstance(event, ConnectionTerminated):
            self._terminated(event)

    @staticmethod
    def _wake_one(waiters: deque[asyncio.Future[None]]) -> None:
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    @staticmethod
    def _wake_all(waiters: deque[asyncio.Future[None]]) -> None:
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    @staticmethod
    def _stream_code(error: ConnectionClosed) -> int:
        """What a stream's error says when its connection ends: ``closed`` for a clean close."""
        return Code.CLOSED if error.wire_code == Code.NONE else error.wire_code

    def _terminated(self, event: ConnectionTerminated) -> None:
        self._error = event.error()
        stream_error = StreamError(
            self._stream_code(self._error), f"connection ended: {event.reason}", remote=event.remote
        )
        for stream in list(self._by_id.values()):
            stream._connection_ended(stream_error)
        self._by_id.clear()
        self._wake_all(self._accept_waiters)
        self._wake_all(self._open_waiters)
        self._wake_drained()
        self._done.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._shutdown is None:
            self._shutdown = self._loop.create_task(self._close_pipe())

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._session.handle_timer(self._loop.time())
        self._pump()

    # -- tasks ----------------------------------------------------------------------------------
    def _pipe_failed(self, exc: StreamError | OSError | EOFError) -> None:
        """The pipe broke under the reader or the writer: the session ends with its code."""
        self._pipe_dead = True
        if isinstance(exc, StreamError):
            self._session.connection_lost(exc.wire_code, f"the pipe failed: {exc}")
        else:
            self._session.connection_lost(Code.NETWORK_ERROR, f"the pipe failed: {exc!r}")
        self._pump()

    async def _read_loop(self) -> None:
        session = self._session
        try:
            while True:  # after the session ended: drained until the peer's end (see close)
                data = await self._pipe.read(READ_SIZE)
                if not data:
                    self._peer_eof = True
                    session.receive_eof()
                    self._pump()
                    return
                session.receive_data(data, self._loop.time())
                self._pump()
                while session.control_backlog > CONTROL_HIGH_WATER and not session.closed:
                    await self._wait_drained()
        except (StreamError, OSError, EOFError) as exc:
            self._pipe_failed(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must end this connection, not the server
            log.exception("mux reader failed")
            session.close(Code.INTERNAL_ERROR, f"internal error: {exc!r}")
            self._pump()

    async def _write_loop(self) -> None:
        session = self._session
        try:
            while True:
                await self._output_ready.wait()
                self._output_ready.clear()
                data = session.data_to_send()
                self._wake_drained()
                if data:
                    await self._pipe.write(data)
                if not session.pending_output:
                    self._output_idle.set()
        except (StreamError, OSError, EOFError) as exc:
            self._pipe_failed(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("mux writer failed")
            self._pipe_dead = True
            session.connection_lost(Code.INTERNAL_ERROR, f"internal error: {exc!r}")
            self._pump()
        finally:
            self._output_idle.set()

    async def _await_peer_end(self) -> None:
        """Until the reader sees the peer's end of the pipe. A keywire peer ends its half as
        soon as it reads our GoAway; a plain yamux peer may never do so, so once the kernel
        says the peer has everything (``SIOCOUTQ`` 0) the wait is cut to ``PEER_END_GRACE``."""
        loop = self._loop
        acked_at: float | None = None
        poll = ACK_POLL / 8
        while not self._reader.done():
            pending = unacknowledged(self._pipe)
            if pending == 0:
                acked_at = loop.time() if acked_at is None else acked_at
                if loop.time() - acked_at >= PEER_END_GRACE:
                    return
            await asyncio.wait({self._reader}, timeout=None if pending is None else poll)
            poll = min(poll * 2, ACK_POLL)

    async def _close_pipe(self) -> None:
        """After the session ended: flush what is queued (the GoAway last), end our half of the
        pipe and wait for the peer's end, then close the pipe; bounded by ``close_timeout``.

        Closing a socket while the peer still sends makes the kernel answer with RST, which
        can destroy our last bytes in the peer's receive buffer; waiting for the peer's end
        (which a keywire peer sends as soon as it sees the GoAway) avoids that. A pipe that
        cannot take the flush in time is aborted.
        """
        loop = self._loop
        deadline = loop.time() + (ABORT_FLUSH if self._aborting else self.close_timeout)
        try:
            flushed = False
            if not self._pipe_dead:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self._output_idle.wait()
                        flushed = not self._pipe_dead
            self._writer.cancel()
            if flushed and not self._aborting:
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._pipe.close_write()
                        if not self._peer_eof:
                            await self._await_peer_end()
                except (TimeoutError, StreamError, OSError):
                    flushed = False
            self._reader.cancel()
            if not flushed or self._aborting:
                self._pipe.abort()
            else:
                try:
                    async with asyncio.timeout(max(1.0, deadline - loop.time())):
                        await self._pipe.close()
                except (TimeoutError, StreamError, OSError):
                    self._pipe.abort()
            for task in (self._writer, self._reader):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        except asyncio.CancelledError:
            self._pipe.abort()
            raise
        except Exception:  # never leave a failed task behind: the pipe just goes
            log.exception("mux shutdown failed")
            self._pipe.abort()
