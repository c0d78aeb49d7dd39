"""Shared helpers for the KPS tests: a listener that runs a handler per connection, echo."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from keywire.identity import Identity
from keywire.kps import KpsConnection, KpsListener, KpsSettings, KpsStream

Handler = Callable[[KpsConnection], Awaitable[None]]


async def echo_stream(stream: KpsStream) -> None:
    """Echo until FIN, then FIN; a reset or stop ends it quietly."""
    with contextlib.suppress(Exception):
        while data := await stream.read():
            await stream.write(data)
        await stream.close_write()


async def echo_handler(conn: KpsConnection) -> None:
    """Echo every stream and every datagram of ``conn`` (runs in the background)."""
    tasks: set[asyncio.Task[None]] = set()

    async def streams() -> None:
        async for stream in conn:
            task = asyncio.ensure_future(echo_stream(stream))  # type: ignore[arg-type]
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def datagrams() -> None:
        with contextlib.suppress(Exception):
            while True:
                conn.send_datagram(await conn.receive_datagram())

    for coro in (streams(), datagrams()):
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)


@contextlib.asynccontextmanager
async def listening(
    handler: Handler = echo_handler,
    *,
    settings: KpsSettings | None = None,
    identity: Identity | None = None,
    host: str = "127.0.0.1",
    **overrides: Any,
) -> AsyncIterator[KpsListener]:
    """A started listener on ``host`` port 0; closed (connections aborted) on exit."""
    settings = settings or KpsSettings(**overrides)
    listener = KpsListener(identity or Identity.generate(), settings, handler)
    await listener.start(host, 0)
    try:
        yield listener
    finally:
        await listener.close(abort_connections=True)
        await listener.wait_closed(2.0)


class Collector:
    """A handler that keeps every accepted connection, for tests that drive the server side."""

    def __init__(self) -> None:
        self.connections: list[KpsConnection] = []
        self._arrived = asyncio.Event()

    async def __call__(self, conn: KpsConnection) -> None:
        self.connections.append(conn)
        self._arrived.set()

    async def nth(self, index: int, timeout: float = 5.0) -> KpsConnection:
        """The ``index``-th accepted connection (0 first), waiting for it to arrive."""
        async with asyncio.timeout(timeout):
            while len(self.connections) <= index:
                self._arrived.clear()
                await self._arrived.wait()
        return self.connections[index]

    async def first(self, timeout: float = 5.0) -> KpsConnection:
        return await self.nth(0, timeout)
