"""Long-poll gets on the map server against clients that go away or pipeline.

Why: a stream cancels its outstanding gets when it ends (and a crashed client just closes),
so a server that only noticed at the end of the wait would hold a waiter and a connection
per abandoned get for up to ``MAX_WAIT`` seconds, and run into its connection limits.
"""

from __future__ import annotations

import asyncio

from keywire.store import HttpStore, MapServer

ADDRESS = bytes(range(32))


async def _request(
    server: MapServer, text: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(text.encode())
    await writer.drain()
    return reader, writer


async def test_a_client_closing_mid_poll_frees_its_waiter_at_once() -> None:
    async with MapServer() as server, asyncio.timeout(10):
        writers = []
        for _ in range(20):
            _, writer = await _request(
                server, f"GET /v1/{ADDRESS.hex()}?wait=30 HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            writers.append(writer)
        while server.table.waiting < 20:
            await asyncio.sleep(0.01)
        for writer in writers:
            writer.close()
        loop = asyncio.get_running_loop()
        start = loop.time()
        while server.table.waiting or server._connections:
            assert loop.time() - start < 2, "abandoned long polls still held after 2 s"
            await asyncio.sleep(0.01)


async def test_a_pipelined_request_does_not_end_the_poll_early() -> None:
    async with MapServer() as server, asyncio.timeout(10):
        other = bytes(32).hex()
        reader, writer = await _request(
            server,
            f"GET /v1/{ADDRESS.hex()}?wait=5 HTTP/1.1\r\nHost: x\r\n\r\n"
            f"GET /v1/{other} HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        await asyncio.sleep(0.3)
        assert server.table.waiting == 1  # still waiting, though the next request arrived
        store = HttpStore(server.url)
        await store.put(ADDRESS, b"late value")
        await store.close()
        first = await reader.readuntil(b"late value")
        assert first.startswith(b"HTTP/1.1 200")
        second = await reader.readuntil(b"\r\n\r\n")
        assert second.startswith(b"HTTP/1.1 404")  # the pipelined request is served after it
        writer.close()
