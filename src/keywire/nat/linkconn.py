"""One ``Connection`` over two paths: the relayed Link session and, once punched, a direct KPS
connection to the same peer (docs/nat.md, "Link with a direct path").

Streams opened while the direct path is up go over it; otherwise over the relay. Streams the
peer opens come from either path. Without resume a stream stays on the path it was opened on;
with resume negotiated (``resume``, set before the direct path is attached) a stream opened on
the direct path continues over the relay when that path dies (``keywire.nat.resumeio``). The
resume handshake needs a relayed stream the acceptor can tell from the application's: before
opening it the opener sends an envelope naming its ordinal among the relayed streams it opened
(``announce``), and both sides count relayed opens (one lock keeps the count in open order). The
connection lives as long as the relayed session: that is the one both sides authenticated
and the one that carries the control messages; the direct path is an add-on it may gain and
lose any number of times.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from ..errors import Code, ConnectionClosed, StreamError
from ..stream import Connection, Stream, fresh
from .resumeio import ResumeLayer

__all__ = ["PathConnection", "PathListener"]

#: called with ("relay", None) or ("direct", "IP:PORT") when new streams change path
PathListener = Callable[[str, str | None], None]


class PathConnection(Connection):
    """The relayed connection, with new streams moved to a direct one while it is up."""

    def __init__(self, relay: Connection) -> None:
        self.relay = relay
        self.address = relay.address
        self.remote = relay.remote
        self.direct: Connection | None = None
        self.direct_remote: str | None = None
        self._listeners: list[PathListener] = []
        self._incoming: asyncio.Queue[Stream] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._error: ConnectionClosed | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._closing = False
        #: both ends agreed on resumable streams (set by linkdirect before ``attach``)
        self.resume = False
        #: sends the "your relayed stream number K from me is a resume" envelope
        self.announce: Callable[[int], Awaitable[None]] | None = None
        self._relay_lock = asyncio.Lock()
        self._relay_opened = 0
        self._relay_accepted = 0
        self._expected: set[int] = set()
        self.layer = ResumeLayer(self._open_relay, self._spawn, self._deliver)
        self._pump(relay, relayed=True)
        #: called once the relayed session ends (the direct path goes with it)
        self.on_end: list[Callable[[], None]] = []
        #: set once no more punch exchanges will run on this connection
        self.settled = asyncio.Event()
        #: set once the first punch exchange has ended, direct or not (``keywire dial`` waits
        #: for it before opening its one stream)
        self.first_exchange_done = asyncio.Event()

    # -- the path ---------------------------------------------------------------------------
    @property
    def path(self) -> str:
        """``relay`` or ``direct IP:PORT``: where the next ``open_stream`` goes."""
        if self.direct is not None and not self.direct.closed:
            return f"direct {self.direct_remote}" if self.direct_remote else "direct"
        return "relay"

    def add_path_listener(self, listener: PathListener) -> None:
        self._listeners.append(listener)

    def _tell(self) -> None:
        kind = "direct" if self.direct is not None else "relay"
        for listener in list(self._listeners):
            with contextlib.suppress(Exception):
                listener(kind, self.direct_remote if self.direct is not None else None)

    def attach(self, direct: Connection, remote: str | None) -> None:
        """Move new streams to ``direct`` (a connection to the same, authenticated peer)."""
        if self._error is not None:
            direct.abort(Code.CANCELLED, "the relayed session ended")
            return
        old = self.direct
        self.direct, self.direct_remote = direct, remote
        if old is not None and old is not direct:
            old.abort(Code.CANCELLED, "replaced by a newer direct path")
        if self.resume:
            self.layer.attach(direct)
        self._pump(direct, relayed=False)
        self._tell()

    def _detach(self, direct: Connection) -> None:
        if not self._closing and self._error is None:
            self.layer.path_died(direct)
        if self.direct is direct:
            self.direct, self.direct_remote = None, None
            if self._error is None and not self._closing:
                self._tell()

    def _pump(self, conn: Connection, *, relayed: bool) -> None:
        self._spawn(self._accepting(conn, relayed))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _deliver(self, stream: Stream) -> None:
        self._incoming.put_nowait(stream)
        self._wake.set()

    def expect_resume(self, ordinal: int) -> None:
        """The peer's relayed stream number ``ordinal`` (from 1) carries a resume request."""
        if ordinal > self._relay_accepted and len(self._expected) < 65536:
            self._expected.add(ordinal)

    async def _open_relay(self, resume: bool) -> Stream:
        async with self._relay_lock:
            ordinal = self._relay_opened + 1
            if resume:
                if self.announce is None:
                    raise StreamError(Code.UNSUPPORTED, "no way to announce a resume")
                await self.announce(ordinal)
            # counted once announced: the mux queues the SYN at once, and an open that fails
            # means the relayed session (and both counts with it) is over
            self._relay_opened = ordinal
            return await self.relay.open_stream()

    async def _accepting(self, conn: Connection, relayed: bool) -> None:
        try:
            while True:
                stream = await conn.accept_stream()
                if relayed:
                    self._relay_accepted += 1
                    if self._relay_accepted in self._expected:
                        self._expected.discard(self._relay_accepted)
                        self._spawn(self.layer.answer(stream))
                        continue
                elif self.resume:
                    wrapped = await self.layer.accepted(conn, stream)
                    if wrapped is None:
                        continue
                    stream = wrapped
                self._deliver(stream)
        except (ConnectionClosed, StreamError) as exc:
            if relayed:
                self._end(exc)
            else:
                self._detach(conn)
        except asyncio.CancelledError:
            if relayed:
                self._end(ConnectionClosed(Code.CANCELLED, "aborted"))
            raise

    def _end(self, exc: ConnectionClosed | StreamError) -> None:
        if self._error is not None:
            return
        self._error = (
            exc
            if isinstance(exc, ConnectionClosed)
            else ConnectionClosed(exc.code, str(exc) or "the relayed session ended")
        )
        self._wake.set()
        self.layer.end(StreamError(self._error.code, f"the relayed session ended: {self._error}"))
        direct, self.direct = self.direct, None
        if direct is not None and not direct.closed:
            direct.abort(Code.CANCELLED, "the relayed session ended")
        for callback in list(self.on_end):
            with contextlib.suppress(Exception):
                callback()

    # -- Connection ---------------------------------------------------------------------------
    async def open_stream(self) -> Stream:
        direct = self.direct
        if direct is not None and not direct.closed:
            try:
                inner = await direct.open_stream()
                return await self.layer.opened(direct, inner) if self.resume else inner
            except (ConnectionClosed, StreamError):
                self._detach(direct)  # it died under us: this stream takes the relay
        return await self._open_relay(False)

    async def accept_stream(self) -> Stream:
        while True:
            if not self._incoming.empty():
                return self._incoming.get_nowait()
            if self._error is not None:
                raise fresh(self._error)
            self._wake.clear()
            await self._wake.wait()

    async def close(self, code: int = Code.NONE, reason: str = "") -> None:
        # the direct path first: its streams' bytes must arrive before the relayed session
        # ends, since the peer drops its direct path when that session does
        self._closing = True  # the direct path ending now is no change of path to report
        self.layer.closing = True
        direct = self.direct
        if direct is not None:
            with contextlib.suppress(Exception):
                await direct.close(code, reason)
        await self.relay.close(code, reason)

    def abort(self, code: int = Code.CANCELLED, reason: str = "") -> Awaitable[None]:
        self.layer.closing = True
        waits: list[Awaitable[None]] = []
        if self.direct is not None:
            waits.append(self.direct.abort(code, reason))
        waits.append(self.relay.abort(code, reason))
        return asyncio.ensure_future(_all(waits))

    @property
    def closed(self) -> bool:
        return self.relay.closed

    @property
    def close_error(self) -> ConnectionClosed | None:
        return self.relay.close_error

    async def wait_closed(self) -> ConnectionClosed:
        return await self.relay.wait_closed()

    @property
    def transport_name(self) -> str:
        return self.relay.transport_name

    def __repr__(self) -> str:
        return f"<PathConnection {self.address} path={self.path}>"


async def _all(waits: list[Awaitable[None]]) -> None:
    await asyncio.gather(*waits, return_exceptions=True)
