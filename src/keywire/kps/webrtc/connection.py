"""The WebRTC adapter: ``WireEngine`` over data channels (``PeerLink``), driven by the shared shell.

All protocol decisions are the engine's and all waiting, buffering and closing the shell's
(``keywire.shell``); this file feeds the channel layer's events to the engine and carries out the
engine's actions on the channels (the engine speaks ``keywire.events`` itself). The server and
the dialer share it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ... import events as ev
from ...adapter import BaseAdapter
from ...errors import Code, StreamError
from ...shell import CoreConnection, CoreStream
from ...stream import RemoteIdentity
from . import wire as w
from .engine import BUFFER_HIGH, PeerLink


class WebRTCStream(CoreStream):
    """One KPS stream: a DCEP data channel carrying 1-byte-type frames."""


def _fed(verb: str) -> Callable[..., None]:
    """A ``ChannelEvents`` method: the engine's ``verb`` with the same arguments, then update."""

    def feed(self: WebRTCAdapter, *args: Any) -> None:
        getattr(self.engine, verb)(*args)
        self.shell.update()

    return feed


class WebRTCAdapter(BaseAdapter):
    """The shell's verbs on a ``WireEngine``; also the ``ChannelEvents`` of its ``PeerLink``."""

    datagram_queue = 256

    def __init__(self, link: PeerLink, engine: w.WireEngine) -> None:
        self.link, self.engine = link, engine
        self.events: deque[ev.Event] = deque()
        #: a stream opened to answer ``can_open_stream`` (the engine opens or says no at once)
        self._spare: w.WireStream | None = None
        self._teardown: asyncio.Task[None] | None = None
        self._draining: dict[int, asyncio.Task[None]] = {}
        self._delivery: asyncio.Task[None] | None = None
        self._all_delivered = False

    def attach(self, shell: CoreConnection) -> None:
        super().attach(shell)
        self.link.events = self

    # -- ChannelEvents: each feeds the engine, then the shell updates ---------------------
    on_control_open = _fed("control_opened")
    on_control_message = _fed("control_received")
    on_datagram = _fed("datagram_received")
    on_channel_open = _fed("channel_opened")
    on_channel_message = _fed("channel_message")
    on_channel_closed = _fed("channel_closed")
    on_lost = _fed("transport_lost")
    on_violation = _fed("violation")

    def on_activity(self) -> None:
        self.engine.activity(self.loop.time())

    # -- the engine's output -----------------------------------------------------------------
    def next_event(self) -> ev.Event | None:
        if self.events:
            return self.events.popleft()
        self.transmit()  # actions first, as the engine queued them (a flushing teardown)
        return self.engine.next_event()

    def transmit(self) -> None:
        link = self.link
        for action in self.engine.pop_actions():
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
                        self._teardown = self.loop.create_task(link.close(flush=flush))

    def get_timer(self) -> float | None:
        return self.engine.get_timer()

    def handle_timer(self, now: float) -> None:
        self.engine.handle_timer(now)

    # -- the shell's verbs -------------------------------------------------------------------
    def can_open_stream(self) -> bool:
        engine = self.engine
        if engine.error is not None or not engine.handshake_complete:
            return True  # open_stream raises the reason
        if self._spare is None:
            self._spare = engine.open_stream()
        return self._spare is not None

    def open_stream(self) -> int:
        state, self._spare = self._spare or self.engine.open_stream(), None
        if state is None:
            raise StreamError(Code.QUEUE_FULL, "the peer's stream limit is reached")
        return state.id

    def send(self, stream_id: int, data: memoryview, end: bool) -> int:
        state = self.engine.streams.get(stream_id)
        if state is None:  # both halves ended and the channel closed: the engine forgot it
            raise StreamError(Code.CLOSED, f"stream {stream_id} is closed")
        if end:
            self.engine.close_write(state)
            return 0
        if self.link.buffered_amount(stream_id) > BUFFER_HIGH:
            if stream_id not in self._draining:
                self._draining[stream_id] = self.loop.create_task(self._drain(stream_id))
            return 0
        taken = self.engine.send(state, data)  # raises StreamError when it must
        self.transmit()  # onto the channel now, so its buffered amount counts it
        return taken

    async def _drain(self, stream_id: int) -> None:
        try:
            await self.link.wait_buffered_low(stream_id)
        finally:
            self._draining.pop(stream_id, None)
        self.events.append(ev.CreditAvailable(stream_id))
        self.shell.update()

    def reset(self, stream_id: int, code: int) -> None:
        if (state := self.engine.streams.get(stream_id)) is not None:
            self.engine.reset(state, _u32(code))

    def stop_sending(self, stream_id: int, code: int) -> None:
        if (state := self.engine.streams.get(stream_id)) is not None:
            self.engine.stop_sending(state, _u32(code))

    def consumed(self, stream_id: int, n: int) -> None:
        if (state := self.engine.streams.get(stream_id)) is not None:
            self.engine.consumed(state, n)
            self.shell.update_soon()

    @property
    def max_datagram_size(self) -> int | None:
        return w.MAX_DATAGRAM_SIZE

    def send_datagram(self, data: bytes) -> None:
        self.engine.send_datagram(data)

    # -- closing -----------------------------------------------------------------------------
    def delivered(self) -> bool:
        """SCTP acknowledged everything queued (asked only by a graceful close)."""
        if self._all_delivered or not self.engine.handshake_complete:
            return True
        if self._delivery is None:
            self._delivery = self.loop.create_task(self._wait_delivered())
        return False

    async def _wait_delivered(self) -> None:
        with contextlib.suppress(Exception):
            await self.link.wait_delivered()
        self._all_delivered = True
        self.shell.update()

    def close(self, code: int, reason: str) -> None:
        self.engine.close(code, reason)

    def abort(self, code: int, reason: str) -> None:
        self.engine.close(code, reason)  # CONNECTION_CLOSE still goes out, flushed briefly

    def terminated(self, event: ev.ConnectionTerminated, *, aborting: bool) -> Awaitable[None]:
        self.abort_io()
        assert self._teardown is not None
        return self.loop.create_task(_quietly(self._teardown))

    def abort_io(self) -> None:
        for task in [self._delivery, *self._draining.values()]:
            if task is not None:
                task.cancel()
        if self._teardown is None:
            self._teardown = self.loop.create_task(self.link.close(flush=False))


def _u32(code: int) -> int:
    """A code the wire can carry (checked before the engine changes any state)."""
    if not 0 <= code <= 0xFFFFFFFF:
        raise ValueError(f"error code {code} is outside 0..{0xFFFFFFFF}")
    return code


async def _quietly(teardown: asyncio.Task[None]) -> None:
    with contextlib.suppress(Exception):
        await asyncio.shield(teardown)


class WebRTCConnection(CoreConnection):
    """A KPS connection over WebRTC data channels (either side)."""

    stream_class = WebRTCStream
    transport_label = "kps-webrtc"

    def __init__(
        self,
        link: PeerLink,
        *,
        is_client: bool,
        address: str,
        remote: RemoteIdentity | None = None,
        settings: w.WireSettings | None = None,
    ) -> None:
        now = asyncio.get_running_loop().time()
        self._engine = w.WireEngine(is_client=is_client, now=now, settings=settings)
        self._link = link
        super().__init__(WebRTCAdapter(link, self._engine), address=address, remote=remote)
        self.update()  # arms the HELLO timeout

    async def wait_ready(self) -> None:
        """Until HELLO has been both sent and received (raises ``ConnectionClosed`` if not)."""
        await asyncio.shield(self.handshake)

    @property
    def remote_address(self) -> tuple[str, int] | None:
        return self._link.remote_address

    @property
    def engine(self) -> w.WireEngine:
        """The wire engine (for diagnostics and tests)."""
        return self._engine
