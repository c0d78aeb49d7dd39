"""A transport that brings its own streams, added as the shell asks: a sans-IO core, one
adapter, one registry line; then the whole conformance suite runs on it.

``toycore:NAME`` connects two cores in process memory. The core is deliberately small (frames
are tuples, a fixed per-stream window granted back as the application reads), but it is a
real protocol core: flow control, FIN, reset and stop-sending codes both ways, a coded close.
Everything else a connection does (waiters, buffers, backpressure, accept order, graceful
close, errors) comes from ``keywire.shell``; if the shell broke a rule of the contract, this
toy would show it with none of a real transport's own code in the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import pytest

import keywire
from keywire import events as ev
from keywire.adapter import CoreAdapter
from keywire.address import Alternative, Scope, Section
from keywire.errors import Code, StreamError
from keywire.identity import Identity
from keywire.options import Options
from keywire.plugin import ChainHandler, ConnectionHandler, Listening
from keywire.registry import registry
from keywire.shell import CoreConnection
from keywire.stream import Connection
from keywire.testing import CHECKS, Capabilities, MakePair

WINDOW = 64 * 1024
#: what the toy declares: everything the suite knows, except datagrams
CAPABILITIES = Capabilities(timeout=10.0)

Frame = tuple[object, ...]


@dataclass
class _Half:
    """One stream's state in one core."""

    credit: int = WINDOW  # bytes we may still send
    unread: int = 0  # bytes received and not yet consumed
    send_done: bool = False  # FIN or reset sent, or the peer stopped us
    recv_done: bool = False  # FIN or reset received
    closed: bool = False


class ToyCore:
    """The sans-IO core: ``receive_frame`` in, ``next_event``/``frames_to_send`` out."""

    def __init__(self, *, client: bool) -> None:
        self._next_id = 1 if client else 2
        self._streams: dict[int, _Half] = {}
        self._events: deque[ev.Event] = deque()
        self._out: list[Frame] = []
        self.ended = False

    # -- the peer's frames ---------------------------------------------------------------
    def receive_frame(self, frame: Frame) -> None:
        """Apply one frame from the peer; the caller then drains ``next_event``."""
        if self.ended:
            return
        kind = frame[0]
        if kind == "close":
            code, reason = frame[1], frame[2]
            assert isinstance(code, int) and isinstance(reason, str)
            self._terminate(code, reason, remote=True)
            return
        sid = frame[1]
        assert isinstance(sid, int)
        half = self._streams.get(sid)
        if half is None:
            if sid % 2 == self._next_id % 2:
                return  # a late frame for one of ours we already forgot
            half = self._streams[sid] = _Half()
            self._events.append(ev.StreamOpened(sid))
        if kind == "data":
            data, fin = frame[2], frame[3]
            assert isinstance(data, bytes) and isinstance(fin, bool)
            half.unread += len(data)
            half.recv_done = half.recv_done or fin
            self._events.append(ev.StreamData(sid, data, fin=fin))
        elif kind == "reset":
            assert isinstance(frame[2], int)
            half.recv_done = True
            self._events.append(ev.StreamReset(sid, frame[2]))
        elif kind == "stop":
            assert isinstance(frame[2], int)
            if not half.send_done:
                half.send_done = True
                self._out.append(("reset", sid, frame[2]))
            self._events.append(ev.StopSendingReceived(sid, frame[2]))
        elif kind == "credit":
            assert isinstance(frame[2], int)
            half.credit += frame[2]
            self._events.append(ev.CreditAvailable(sid))
        self._maybe_closed(sid, half)

    # -- the application's verbs ------------------------------------------------------------
    def open_stream(self) -> int:
        sid, self._next_id = self._next_id, self._next_id + 2
        self._streams[sid] = _Half()
        return sid

    def send(self, sid: int, data: memoryview, end: bool) -> int:
        """Queue what the window allows; 0 means wait for ``CreditAvailable``."""
        half = self._streams[sid]
        if half.send_done:
            raise StreamError(Code.CLOSED, "the sending half is over")
        if end:
            half.send_done = True
            self._out.append(("data", sid, b"", True))
            self._maybe_closed(sid, half)
            return 0
        taken = min(len(data), half.credit)
        if taken:
            half.credit -= taken
            self._out.append(("data", sid, bytes(data[:taken]), False))
        return taken

    def reset(self, sid: int, code: int) -> None:
        half = self._streams.get(sid)
        if half is not None and not half.send_done:
            half.send_done = True
            self._out.append(("reset", sid, code))
            self._maybe_closed(sid, half)

    def stop_sending(self, sid: int, code: int) -> None:
        half = self._streams.get(sid)
        if half is not None and not half.recv_done:
            self._out.append(("stop", sid, code))

    def consumed(self, sid: int, n: int) -> None:
        """The application read ``n`` bytes: grant them back to the peer."""
        half = self._streams.get(sid)
        if half is not None and n:
            half.unread -= n
            if not half.recv_done:
                self._out.append(("credit", sid, n))

    def close(self, code: int, reason: str, *, drop_queued: bool = False) -> None:
        if drop_queued:
            self._out.clear()
        self._out.append(("close", code, reason))
        self._terminate(code, reason, remote=False)

    # -- output -------------------------------------------------------------------------
    def next_event(self) -> ev.Event | None:
        return self._events.popleft() if self._events else None

    def frames_to_send(self) -> list[Frame]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        return None  # frames are never lost in memory: nothing to retransmit

    def handle_timer(self, now: float) -> None:
        return None

    def can_open_stream(self) -> bool:
        return not self.ended

    def _maybe_closed(self, sid: int, half: _Half) -> None:
        if half.send_done and half.recv_done and not half.closed:
            half.closed = True
            del self._streams[sid]
            self._events.append(ev.StreamClosed(sid))

    def _terminate(self, code: int, reason: str, *, remote: bool) -> None:
        if not self.ended:
            self.ended = True
            self._events.append(ev.ConnectionTerminated(code, reason, remote))


class ToyAdapter(CoreAdapter):
    """The whole transport-specific shell: frames cross to the peer on the next loop turn
    (``CoreAdapter`` forwards every other verb to the core)."""

    core: ToyCore

    def __init__(self, core: ToyCore) -> None:
        self.core = core
        self.peer: ToyAdapter | None = None
        self._in_flight = 0

    def _arrive(self, frames: list[Frame]) -> None:
        for frame in frames:
            self.core.receive_frame(frame)
        self.shell.update()

    def _delivered_one(self, peer: ToyAdapter, frames: list[Frame]) -> None:
        self._in_flight -= 1
        peer._arrive(frames)
        self.shell.update()

    def transmit(self) -> None:
        frames = self.core.frames_to_send()
        if frames and self.peer is not None:
            self._in_flight += 1
            asyncio.get_running_loop().call_soon(self._delivered_one, self.peer, frames)

    def delivered(self) -> bool:
        return self._in_flight == 0

    def abort(self, code: int, reason: str) -> None:
        self.core.close(code, reason, drop_queued=True)

    def terminated(self, event: ev.ConnectionTerminated, *, aborting: bool) -> Awaitable[None]:
        self.transmit()  # the close frame
        self.peer = None
        return super().terminated(event, aborting=aborting)


class ToyCoreConnection(CoreConnection):
    """A connection of the toy transport: the shell over the toy adapter, nothing more."""


class ToyCoreHandler(ChainHandler):
    """``toycore:NAME``: dial pairs two adapters in memory, one per side."""

    name = "toycore"

    def __init__(self) -> None:
        self._listeners: dict[str, ConnectionHandler] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def claims(self, alt: Alternative) -> bool:
        return alt.transport.name == "toycore"

    async def dial(self, alt: Alternative, options: Options) -> Connection:
        name = ":".join(alt.transport.args)
        on_connection = self._listeners.get(name)
        if on_connection is None:
            raise StreamError(Code.NETWORK_ERROR, f"nobody listens on toycore:{name}")
        ours, theirs = ToyAdapter(ToyCore(client=True)), ToyAdapter(ToyCore(client=False))
        ours.peer, theirs.peer = theirs, ours
        client = ToyCoreConnection(ours, address=str(alt))
        server = ToyCoreConnection(theirs, address=str(alt))
        task = asyncio.ensure_future(on_connection(server))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return client

    async def listen(
        self, alt: Alternative, options: Options, on_connection: ConnectionHandler
    ) -> Listening:
        name = ":".join(alt.transport.args)
        self._listeners[name] = on_connection
        return _ToyCoreListening(self, name)


class _ToyCoreListening(Listening):
    def __init__(self, handler: ToyCoreHandler, name: str) -> None:
        self._handler = handler
        self._name = name

    def announce(self, scope: Scope) -> list[Alternative]:
        return [Alternative((Section("toycore", (self._name,)),))]

    async def close(self) -> None:
        self._handler._listeners.pop(self._name, None)


# the registry line
if "toycore" not in {handler.name for handler in registry.handlers}:
    registry.add_handler(ToyCoreHandler())

_names = itertools.count()


@contextlib.asynccontextmanager
async def toy_core_server() -> AsyncIterator[MakePair]:
    spec = f"toycore:c{next(_names)}"
    async with keywire.Server([spec], Options(identity=Identity.generate())) as server:
        address = server.address()

        @contextlib.asynccontextmanager
        async def make_pair() -> AsyncIterator[tuple[Connection, Connection]]:
            client = await keywire.dial(address, Options(identity=Identity.generate()))
            accepted = await asyncio.wait_for(server.accept(), 5)
            try:
                yield client, accepted
            finally:
                for conn in (client, accepted):
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.abort(), 3)

        yield make_pair


@pytest.mark.timeout(60)
@pytest.mark.parametrize("check", list(CHECKS))
async def test_toy_core_passes_the_suite(check: str) -> None:
    async with toy_core_server() as make_pair:
        await CHECKS[check](make_pair, CAPABILITIES)
