"""A server that listens on several listen specs at once and yields secure connections.

```python
async with keywire.Server(["net:0.0.0.0:0~shs~mux", "kps:0.0.0.0:0"]) as server:
    print(server.address())            # the dialable multiaddress (device scope)
    async for conn in server:          # or: await server.serve(handler)
        ...
```
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from .address import Alternative, MultiAddress, Scope, parse, redacted
from .admission import (
    LimitLog,
    ensure_fd_room,
    per_ip_share,
    quiet_accept_exhaustion,
    source_ip,
)
from .compose import Side, compose
from .errors import Code, ConnectionClosed, KeywireError, UnsupportedError
from .options import Options, make_options
from .pipe import Pipe
from .plugin import Listening
from .registry import registry
from .stream import Connection, until_closed
from .timeouts import with_timeout

log = logging.getLogger("keywire.server")

Handler = Callable[[Connection], Awaitable[None]]


@dataclass
class ServerStats:
    """Counters a server keeps for status output and tests."""

    accepted: int = 0
    refused: int = 0
    failed_handshakes: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        self.failed_handshakes += 1
        self.failures[reason] = self.failures.get(reason, 0) + 1


class Server:
    """Listens on every spec, runs the server side of each chain, and hands out connections."""

    def __init__(
        self,
        specs: Sequence[str] | str,
        options: Options | None = None,
        *,
        handler: Handler | None = None,
        queue_size: int = 128,
        max_connections_per_ip: int | None = None,
        **overrides: Any,
    ) -> None:
        self.specs = [specs] if isinstance(specs, str) else list(specs)
        self.options = make_options(options, overrides)
        self.stats = ServerStats()
        self._handler = handler
        self._listeners: list[tuple[Alternative, Listening, bool]] = []
        self._queue: asyncio.Queue[Connection] = asyncio.Queue(queue_size)
        self._connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending = 0
        #: pipes whose handshake is running: close() aborts them rather than let each hold
        #: its socket and task until its handshake timeout, after the server is gone
        self._handshaking: set[Pipe] = set()
        self._no_handshakes = asyncio.Event()
        self._no_handshakes.set()
        self._closing = False
        #: False after ``stop_listening()``: nothing new is admitted
        self._accepting = True
        self._closed = asyncio.Event()
        self._started = False
        #: one source IP's share of ``max_connections`` (handshaking and established together)
        self.max_connections_per_ip = (
            max_connections_per_ip
            if max_connections_per_ip
            else per_ip_share(self.options.max_connections)
        )
        self._per_ip: dict[str, int] = {}
        self._conn_ip: dict[Connection, str] = {}
        self._limits = LimitLog(log)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> Server:
        """Bind every listen spec; on any failure nothing stays bound."""
        if self._started:
            return self
        self._started = True
        registry.check_settings(self.options)
        quiet_accept_exhaustion(asyncio.get_running_loop(), self._limits)
        # each connection may need two descriptors (a socket, a pipe to a child); the cap
        # should be what refuses a flood, not EMFILE in accept()
        ensure_fd_room(2 * self.options.max_connections + 256)
        try:
            for spec in self.specs:
                for alt in parse(spec).alternatives:
                    await self._listen(alt)
        except BaseException:
            await self._close_listeners()
            raise
        return self

    async def _listen(self, alt: Alternative) -> None:
        handler = registry.handler_for(alt)
        if handler is not None:
            listening = await handler.listen(alt, self.options, self._accept_connection)
            self._listeners.append((alt, listening, True))
            return
        why = registry.understands(alt)
        if why is not None:
            raise KeywireError(f"cannot listen on {redacted(alt)}: {why}")
        transport = registry.transport(alt.transport.name)

        async def on_pipe(pipe: Pipe) -> None:
            await self._accept_pipe(alt, pipe)

        listening = await transport.listen(alt.transport, self.options, on_pipe)
        self._listeners.append((alt, listening, False))

    async def __aenter__(self) -> Server:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self, code: int = Code.NONE, grace: float = 5.0) -> None:
        """Stop listening, close every connection with ``code``, wait ``grace`` for handlers."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        await self._close_listeners()
        for pipe in list(self._handshaking):
            pipe.abort()
        with contextlib.suppress(TimeoutError):  # each aborted handshake fails at once
            await asyncio.wait_for(self._no_handshakes.wait(), grace)
        while not self._queue.empty():
            self._connections.add(self._queue.get_nowait())
        conns = list(self._connections)
        await asyncio.gather(*(self._close_quietly(c, code) for c in conns))
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        self._closed.set()

    async def stop_listening(self) -> None:
        """Admit no new connection but keep the established ones (a one-session server such
        as ``keywire listen --stdio``), so later dialers fail fast instead of waiting.

        Socket listeners (``net``, ``ws``, ``unix``) close, so the OS refuses new dialers.
        Chain handlers (``kps``, Link, store streams) keep listening, since their listener may
        carry the kept connections (Link's host, kps's WebRTC side) or would leave a dialer
        unanswered (kps drops a closed listener's Initials); what they still deliver, and what
        is queued for ``accept()``, is closed at once with ``queue-full``. ``close()`` ends the
        rest as usual.
        """
        if not self._accepting:
            return
        self._accepting = False
        for _, listening, whole in self._listeners:
            if not whole:
                with contextlib.suppress(Exception):
                    await listening.close()
        for pipe in list(self._handshaking):
            pipe.abort()
        queued: list[Connection] = []
        while not self._queue.empty():  # accepted but not taken: refused like later ones
            queued.append(self._queue.get_nowait())
        for conn in queued:
            self.stats.refused += 1
            self._forget(conn)
        await asyncio.gather(
            *(self._close_quietly(c, Code.QUEUE_FULL, self._refusal()) for c in queued)
        )

    def _refusal(self) -> str:
        if self._closing:
            return "server shutting down"
        if not self._accepting:
            return "not accepting connections"
        return "too many connections"

    async def _close_listeners(self) -> None:
        for _, listening, _ in self._listeners:
            with contextlib.suppress(Exception):
                await listening.close()

    @staticmethod
    async def _close_quietly(
        conn: Connection, code: int, reason: str = "server shutting down"
    ) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(code, reason), 2.0)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # -- addresses ------------------------------------------------------------------------------
    def addresses(self, scope: Scope | str = Scope.DEVICE) -> MultiAddress:
        """What dialers should use to reach this server in ``scope``."""
        scope = Scope(scope)
        out: list[Alternative] = []
        for alt, listening, whole in self._listeners:
            for base in listening.announce(scope):
                if whole:
                    out.append(base)
                    continue
                tail = tuple(
                    registry.transform(s.name).announce(s, self.options) for s in alt.transforms
                )
                out.append(Alternative(base.sections + tail))
        unique: dict[str, Alternative] = {}
        for alt in out:
            unique.setdefault(str(alt), alt)
        return MultiAddress(tuple(unique.values()))

    def address(self, scope: Scope | str | Sequence[Scope | str] = Scope.DEVICE) -> str:
        """The announced multiaddress as text; a list of scopes joins them in that order."""
        scopes = [scope] if isinstance(scope, str) else list(scope)
        alts: list[Alternative] = []
        for s in scopes:
            for alt in self.addresses(s).alternatives:
                if alt not in alts:
                    alts.append(alt)
        return str(MultiAddress(tuple(alts)))

    # -- accepting ------------------------------------------------------------------------------
    def _full(self) -> bool:
        return len(self._connections) + self._pending >= self.options.max_connections

    def _take_share(self, ip: str | None) -> bool:
        if ip is None:
            return True
        if self._per_ip.get(ip, 0) >= self.max_connections_per_ip:
            return False
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        return True

    def _give_share(self, ip: str | None) -> None:
        if ip is None:
            return
        left = self._per_ip.get(ip, 0) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)

    def _forget(self, conn: Connection) -> None:
        """``conn`` is no longer served: its slot and its source's share are free again."""
        self._connections.discard(conn)
        self._give_share(self._conn_ip.pop(conn, None))

    async def _accept_pipe(self, alt: Alternative, pipe: Pipe) -> None:
        if self._closing or not self._accepting or self._full():
            self.stats.refused += 1
            if not self._closing and self._accepting:
                self._limits.hit(
                    f"{self.options.max_connections} connections", source_ip(pipe.peer)
                )
            pipe.abort()
            return
        ip = source_ip(pipe.peer)
        if not self._take_share(ip):
            self.stats.refused += 1
            self._limits.hit(f"{self.max_connections_per_ip} connections from one IP", ip)
            pipe.abort()
            return
        self._pending += 1
        self._handshaking.add(pipe)
        self._no_handshakes.clear()
        try:
            conn = await with_timeout(
                compose(alt, pipe, self.options, Side.SERVER),
                self.options.timeout,
                f"server handshake with {pipe.peer}",
            )
        except Exception as exc:
            reason = type(exc).__name__
            self.stats.fail(reason)
            log.debug("handshake from %s failed: %s", pipe.peer, exc)
            pipe.abort()
            self._give_share(ip)
            return
        except BaseException:
            self._give_share(ip)
            raise
        finally:
            self._pending -= 1
            self._handshaking.discard(pipe)
            if not self._handshaking:
                self._no_handshakes.set()
        if ip is not None:
            self._conn_ip[conn] = ip
        await self._accept_connection(conn)

    async def _accept_connection(self, conn: Connection) -> None:
        if (
            self._closing
            or not self._accepting
            or len(self._connections) >= self.options.max_connections
        ):
            self.stats.refused += 1
            self._forget(conn)
            await self._close_quietly(conn, Code.QUEUE_FULL, self._refusal())
            return
        self.stats.accepted += 1
        self._connections.add(conn)
        self._spawn(self._watch(conn))
        if self._handler is not None:
            self._spawn(self._run_handler(self._handler, conn))
            return
        try:
            self._queue.put_nowait(conn)
        except asyncio.QueueFull:
            self.stats.refused += 1
            self._forget(conn)
            await self._close_quietly(conn, Code.QUEUE_FULL, "accept queue full")

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, conn: Connection) -> None:
        with contextlib.suppress(UnsupportedError, asyncio.CancelledError):
            await conn.wait_closed()
            self._forget(conn)

    async def _run_handler(self, handler: Handler, conn: Connection) -> None:
        code = Code.NONE
        try:
            await handler(conn)
        except asyncio.CancelledError:
            code = Code.CANCELLED
        except ConnectionClosed:
            pass
        except Exception as exc:
            code = Code.INTERNAL_ERROR
            log.warning("handler failed for %s: %s", conn.address, exc, exc_info=exc)
        finally:
            await self._close_quietly(conn, code)
            self._forget(conn)

    # -- consuming ------------------------------------------------------------------------------
    async def accept(self) -> Connection:
        """The next connection; ``ConnectionClosed`` once the server is closed."""
        if self._handler is not None:
            raise RuntimeError("this server was given a handler; it does not queue connections")
        if not self._started:
            await self.start()
        getter = asyncio.ensure_future(self._queue.get())
        closer = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({getter, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closer.cancel()
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        raise ConnectionClosed(Code.CLOSED, "server closed")

    def __aiter__(self) -> AsyncIterator[Connection]:
        return until_closed(self.accept)

    async def serve(self, handler: Handler | None = None) -> None:
        """Run ``handler`` for every connection until the server is closed (or cancelled)."""
        if handler is not None:
            self._handler = handler
        if self._handler is None:
            raise RuntimeError("serve() needs a handler")
        await self.start()
        try:
            await self._closed.wait()
        finally:
            if not self._closing:
                await self.close(Code.CANCELLED)


async def listen(
    specs: Sequence[str] | str,
    handler: Handler | None = None,
    options: Options | None = None,
    **overrides: Any,
) -> Server:
    """Start a server (``await listen(specs)``); with ``handler`` connections go to it."""
    return await Server(specs, options, handler=handler, **overrides).start()
