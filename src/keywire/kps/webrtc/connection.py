"""The asyncio shell around ``WireEngine``: keywire's Connection and Stream over data channels.

All protocol decisions are the engine's; this file only moves bytes between the engine, the
engine's channel layer (``PeerLink``) and the application, and turns the engine's events into
woken readers, writers and acceptors. The same shell serves the server and the dialer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable

from ...errors import Code, ConnectionClosed, StreamError
from ...stream import (
    Connection,
    DatagramQueue,
    ReceiveBuffer,
    RemoteIdentity,
    Stream,
    finished_future,
)
from . import wire as w
from .engine import BUFFER_HIGH, PeerLink


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class WebRTCStream(Stream):
    """One KPS stream: a DCEP data channel carrying 1-byte-type frames."""

    def __init__(self, conn: WebRTCConnection, state: w.WireStream) -> None:
        self.id = state.id
        self._conn = conn
        self._state = state
        self._buffer = ReceiveBuffer(on_consumed=self._consumed)
        self._writer: asyncio.Future[None] | None = None
        self._writing = False

    def _consumed(self, n: int) -> None:
        self._conn._engine.consumed(self._state, n)
        self._conn._pump()

    async def read(self, n: int = -1) -> bytes:
        return await self._buffer.read(n)

    async def write(self, data: bytes) -> None:
        self._writing = True
        try:
            await self._write(memoryview(data).cast("B"))
        finally:
            self._writing = False

    async def _write(self, view: memoryview) -> None:
        conn = self._conn
        while len(view):
            taken = conn._engine.send(self._state, view)  # raises StreamError when it must
            conn._pump()
            if taken:
                view = view[taken:]
                if conn._link.buffered_amount(self.id) > BUFFER_HIGH:
                    await conn._link.wait_buffered_low(self.id)
            else:
                self._writer = asyncio.get_running_loop().create_future()
                try:
                    await self._writer
                finally:
                    self._writer = None

    async def close_write(self) -> None:
        self._conn._engine.close_write(self._state)
        self._conn._pump()

    def _end_for_close(self, *, finish: bool) -> None:
        """The connection closes gracefully: a write still in progress cannot complete, so its
        stream is reset (a truncated stream never reads as EOF); otherwise FIN (``finish``)."""
        state = self._state
        if state.send_end is not None or state.stop_code is not None or state.retired:
            return
        if self._writing:
            self.reset(Code.CLOSED)
        elif finish:
            self._conn._engine.close_write(state)

    def reset(self, code: int = Code.RESET) -> None:
        self._conn._engine.reset(self._state, code)
        self._conn._pump()
        _wake(self._writer)

    def stop_sending(self, code: int = Code.CANCELLED) -> None:
        self._conn._engine.stop_sending(self._state, code)
        self._buffer.fail(StreamError(code, "reading was stopped locally"))
        self._conn._pump()

    # -- fed by the connection -------------------------------------------------------------
    def _wake_writer(self) -> None:
        _wake(self._writer)


class WebRTCConnection(Connection):
    """A KPS connection over WebRTC data channels (either side)."""

    def __init__(
        self,
        link: PeerLink,
        *,
        is_client: bool,
        address: str,
        remote: RemoteIdentity | None = None,
        settings: w.WireSettings | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._engine = w.WireEngine(is_client=is_client, now=self._loop.time(), settings=settings)
        self._link = link
        self.address = address
        self.remote = remote or RemoteIdentity()
        self._by_id: dict[int, WebRTCStream] = {}
        self._incoming: deque[WebRTCStream] = deque()
        #: waiting accept_stream calls, oldest first; each stream wakes one, the end all
        self._accept_waiters: deque[asyncio.Future[None]] = deque()
        self._open_waiters: list[asyncio.Future[None]] = []
        self._datagrams = DatagramQueue()
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._ended = asyncio.Event()
        self._error: ConnectionClosed | None = None
        self._local_close = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._teardown: asyncio.Task[None] | None = None
        self._pumping = False
        self._again = False
        link.events = self
        self._arm_timer()

    # -- ChannelEvents ---------------------------------------------------------------------
    def on_control_open(self) -> None:
        self._engine.control_opened()
        self._pump()

    def on_control_message(self, data: bytes) -> None:
        self._engine.control_received(data)
        self._pump()

    def on_datagram(self, data: bytes) -> None:
        self._engine.datagram_received(data)
        self._pump()

    def on_channel_open(self, channel: int) -> None:
        self._engine.channel_opened(channel)
        self._pump()

    def on_channel_message(self, channel: int, data: bytes) -> None:
        self._engine.channel_message(channel, data)
        self._pump()

    def on_channel_closed(self, channel: int) -> None:
        self._engine.channel_closed(channel)
        self._pump()

    def on_lost(self, reason: str) -> None:
        self._engine.transport_lost(reason)
        self._pump()

    def on_activity(self) -> None:
        self._engine.activity(self._loop.time())

    def on_violation(self, reason: str) -> None:
        self._engine.violation(reason)
        self._pump()

    # -- the pump --------------------------------------------------------------------------
    def _pump(self) -> None:
        """Carry out the engine's actions and deliver its events (re-entrant calls coalesce)."""
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            self._again = True
            while self._again:
                self._again = False
                for action in self._engine.pop_actions():
                    self._act(action)
                for event in self._engine.pop_events():
                    self._deliver(event)
        finally:
            self._pumping = False
        self._arm_timer()

    def _act(self, action: w.Action) -> None:
        link = self._link
        match action:
            case w.SendMessage(channel, data):
                link.send(channel, data)
            case w.OpenChannel(channel):
                link.open_channel(channel)
            case w.CloseChannel(channel):
                link.close_channel(channel)
            case w.SendDatagram(data):
                link.send_datagram(data)
            case w.CloseTransport(_, flush):
                if self._teardown is None:
                    self._teardown = self._loop.create_task(link.close(flush=flush))

    def _deliver(self, event: w.Event) -> None:
        match event:
            case w.HandshakeComplete():
                if not self._ready.done():
                    self._ready.set_result(None)
            case w.StreamOpened(channel):
                stream = WebRTCStream(self, self._engine.streams[channel])
                self._by_id[channel] = stream
                self._incoming.append(stream)
                self._wake_acceptor()
            case w.StreamData(channel, data):
                self._by_id[channel]._buffer.feed(data)
            case w.StreamFinished(channel):
                self._by_id[channel]._buffer.feed_eof()
            case w.StreamReset(channel, code):
                self._by_id[channel]._buffer.fail(
                    StreamError(code, "the peer reset the stream", remote=True)
                )
            case w.StopSendingReceived(channel, _):
                self._by_id[channel]._wake_writer()
            case w.CreditAvailable(None):
                for stream in self._by_id.values():
                    stream._wake_writer()
            case w.CreditAvailable(channel):
                if channel in self._by_id:
                    self._by_id[channel]._wake_writer()
            case w.StreamsAvailable():
                self._wake_openers()
            case w.DatagramReceived(data):
                self._datagrams.push(data)
            case w.Terminated(error):
                self._on_terminated(error)
            case _:
                pass

    def _on_terminated(self, error: ConnectionClosed) -> None:
        self._error = error
        if self._local_close or error.code == Code.NONE:
            code: int = Code.CLOSED
        else:
            code = error.code
        for stream in self._by_id.values():
            stream._buffer.fail(
                StreamError(code, f"connection ended: {error}", remote=error.remote), discard=False
            )
            stream._wake_writer()
        waiters, self._accept_waiters = self._accept_waiters, deque()
        for waiter in waiters:
            _wake(waiter)
        self._wake_openers()
        self._datagrams.fail(error)
        if not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()  # retrieved: an unawaited handshake must not log
        self._ended.set()

    def _wake_acceptor(self) -> None:
        """Hand a new stream's wake-up to the oldest accept_stream still waiting."""
        while self._accept_waiters:
            waiter = self._accept_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _wake_openers(self) -> None:
        waiters, self._open_waiters = self._open_waiters, []
        for waiter in waiters:
            _wake(waiter)

    def _arm_timer(self) -> None:
        deadline = self._engine.get_timer()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._engine.handle_timer(self._loop.time())
        self._pump()

    # -- Connection ------------------------------------------------------------------------
    async def wait_ready(self) -> None:
        """Until HELLO has been both sent and received (raises ``ConnectionClosed`` if not)."""
        await asyncio.shield(self._ready)

    async def open_stream(self) -> Stream:
        while True:
            state = self._engine.open_stream()  # raises ConnectionClosed once closed
            self._pump()
            if state is not None:
                stream = WebRTCStream(self, state)
                self._by_id[state.id] = stream
                return stream
            waiter = self._loop.create_future()
            self._open_waiters.append(waiter)
            await waiter

    async def accept_stream(self) -> Stream:
        while not self._incoming:
            if self._error is not None:
                raise self._error
            waiter = self._loop.create_future()
            self._accept_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if self._incoming:  # we may have been woken for it: pass the wake-up on
                    self._wake_acceptor()
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._accept_waiters.remove(waiter)
        return self._incoming.popleft()

    async def close(self, code: int = Code.NONE, reason: str = "") -> None:
        """Graceful: FIN the streams still open for writing (code 0), wait until SCTP has every
        queued message acknowledged (at most ``close_timeout``), then CONNECTION_CLOSE and the
        teardown of the association; returns as soon as that is done."""
        if self._error is None:
            try:
                if self._engine.handshake_complete:
                    for stream in list(self._by_id.values()):
                        stream._end_for_close(finish=code == Code.NONE)
                    self._pump()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.close_timeout):
                            await self._link.wait_delivered()
            except asyncio.CancelledError:
                self.abort(Code.CANCELLED, "close cancelled")
                raise
        if self._error is None:
            self._local_close = True
            self._engine.close(code, reason)
            self._pump()
        if self._teardown is None:
            self._teardown = self._loop.create_task(self._link.close(flush=False))
        with contextlib.suppress(Exception):
            await asyncio.shield(self._teardown)
        if self._timer is not None:
            self._timer.cancel()

    def abort(self, code: int = Code.CANCELLED, reason: str = "") -> Awaitable[None]:
        """Now: streams are not finished and nothing is waited for, but CONNECTION_CLOSE(code)
        goes out first, as for ``close(code)`` (the engine's teardown gives channel 0 at most
        ``CLOSE_FLUSH`` to deliver it), so the peer sees the code, not the association's end."""
        if self._error is None:
            self._local_close = True
            self._engine.close(code, reason or "aborted locally")
            self._pump()  # queues CONNECTION_CLOSE, then starts the flushing teardown
        if self._teardown is None:
            self._teardown = self._loop.create_task(self._link.close(flush=False))
        if self._timer is not None:
            self._timer.cancel()
        teardown = self._teardown
        teardown.add_done_callback(lambda t: t.cancelled() or t.exception())
        return asyncio.shield(teardown) if not teardown.done() else finished_future()

    @property
    def closed(self) -> bool:
        return self._error is not None

    @property
    def close_error(self) -> ConnectionClosed | None:
        return self._error

    async def wait_closed(self) -> ConnectionClosed:
        await self._ended.wait()
        assert self._error is not None
        return self._error

    @property
    def max_datagram_size(self) -> int | None:
        return w.MAX_DATAGRAM_SIZE

    def send_datagram(self, data: bytes) -> None:
        self._engine.send_datagram(data)
        self._pump()

    async def receive_datagram(self) -> bytes:
        return await self._datagrams.get()

    @property
    def transport_name(self) -> str:
        return "kps-webrtc"

    @property
    def remote_address(self) -> tuple[str, int] | None:
        return self._link.remote_address

    @property
    def engine(self) -> w.WireEngine:
        """The wire engine (for diagnostics and tests)."""
        return self._engine
