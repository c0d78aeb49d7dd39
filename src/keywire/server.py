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

from .address import Alternative, MultiAddress, Scope, Section, parse, redacted
from .chain import Listening, Options, registry, with_timeout
from .dial import make_options
from .errors import Code, ConnectionClosed, KeywireError, UnsupportedError
from .pipe import Pipe, SingleStreamConnection
from .stream import Connection

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

    def __init__(self, specs: Sequence[str] | str, options: Options | None = None, *,
                 handler: Handler | None = None, queue_size: int = 128,
                 **overrides: Any) -> None:
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
        self._closed = asyncio.Event()
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> Server:
        """Bind every listen spec; on any failure nothing stays bound."""
        if self._started:
            return self
        self._started = True
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
        transport = registry.transports[alt.transport.name]

        async def on_pipe(pipe: Pipe) -> None:
            await self._accept_pipe(alt, pipe)

        listening = await transport.listen(alt.transport, self.options, on_pipe)
        self._listeners.append((alt, listening, False))

    async def __aenter__(self) -> Server:
        return await self.start()

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
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

    async def _close_listeners(self) -> None:
        for _, listening, _ in self._listeners:
            with contextlib.suppress(Exception):
                await listening.close()

    @staticmethod
    async def _close_quietly(conn: Connection, code: int) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(code, "server shutting down"), 2.0)

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
                    registry.transforms[s.name].announce(s, self.options) for s in alt.transforms
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

    async def _accept_pipe(self, alt: Alternative, pipe: Pipe) -> None:
        if self._closing or self._full():
            self.stats.refused += 1
            pipe.abort()
            return
        self._pending += 1
        self._handshaking.add(pipe)
        self._no_handshakes.clear()
        try:
            conn = await with_timeout(self._compose(alt, pipe), self.options.timeout,
                                      f"server handshake with {pipe.peer}")
        except Exception as exc:
            reason = type(exc).__name__
            self.stats.fail(reason)
            log.debug("handshake from %s failed: %s", pipe.peer, exc)
            pipe.abort()
            return
        finally:
            self._pending -= 1
            self._handshaking.discard(pipe)
            if not self._handshaking:
                self._no_handshakes.set()
        await self._accept_connection(conn)

    async def _compose(self, alt: Alternative, pipe: Pipe) -> Connection:
        """The server side of each transform; the address names what the peer proved."""
        result: Pipe | Connection = pipe
        address = pipe.peer
        for section in alt.transforms:
            if not isinstance(result, Pipe):
                raise KeywireError(f"{section.name!r} cannot follow a multiplexing section")
            transform = registry.transforms[section.name]
            before = result
            result = await transform.server(result, section, self.options,
                                            f"{address}~{section.name}")
            key = result.remote.public_key if isinstance(result, Pipe) else None
            if key is not None and key != before.remote.public_key:
                address = f"{address}~{Section(section.name, (result.remote.shs_id or '',))}"
            else:
                address = f"{address}~{transform.announce(section, self.options)}"
        if isinstance(result, Pipe):
            return SingleStreamConnection(result, address)
        return result

    async def _accept_connection(self, conn: Connection) -> None:
        if self._closing or len(self._connections) >= self.options.max_connections:
            self.stats.refused += 1
            await self._close_quietly(conn, Code.QUEUE_FULL)
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
            await self._close_quietly(conn, Code.QUEUE_FULL)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, conn: Connection) -> None:
        with contextlib.suppress(UnsupportedError, asyncio.CancelledError):
            await conn.wait_closed()
            self._connections.discard(conn)

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
            self._connections.discard(conn)

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
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Connection]:
        while True:
            try:
                yield await self.accept()
            except ConnectionClosed:
                return

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


async def listen(specs: Sequence[str] | str, handler: Handler | None = None,
                 options: Options | None = None, **overrides: Any) -> Server:
    """Start a server (``await listen(specs)``); with ``handler`` connections go to it."""
    return await Server(specs, options, handler=handler, **overrides).start()
