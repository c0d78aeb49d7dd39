"""Bad clients against a real net~shs server: it keeps serving, sheds them, and stays flat."""

from __future__ import annotations

import asyncio
import os
import random

import pytest

import keywire
from keywire.stream import Connection

from .churn_util import collected_rss_kib


async def echo(conn: Connection) -> None:
    async for stream in conn:
        while chunk := await stream.read():
            await stream.write(chunk)
        await stream.close_write()


def port_of(address: str) -> int:
    return int(address.split("~")[0].rsplit(":", 1)[1])


async def check_serving(address: str) -> None:
    conn = await keywire.dial(address)
    stream = await conn.open_stream()
    await stream.write(b"still serving")
    await stream.close_write()
    assert await stream.read_all() == b"still serving"
    await conn.close()


@pytest.mark.timeout(120)
async def test_thousand_garbage_connections_leave_server_flat() -> None:
    rng = random.Random(7)
    async with keywire.Server(
        ["net:127.0.0.1:0~shs"], handler=echo, handshake_timeout=1.0
    ) as server:
        address = server.address()
        port = port_of(address)

        async def garbage(i: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            kind = i % 4
            if kind == 0:
                writer.write(os.urandom(64))  # a wrong-HMAC msg1: silent hang-up
            elif kind == 1:
                writer.write(os.urandom(rng.randrange(1, 64)))  # truncated msg1
            elif kind == 2:
                writer.write(os.urandom(rng.randrange(65, 4000)))  # oversized
            writer.close()
            await reader.read()
            await writer.wait_closed()

        async def batch(start: int, count: int) -> None:
            for group in range(start, start + count, 25):
                await asyncio.gather(*(garbage(i) for i in range(group, group + 25)))

        await batch(0, 200)  # warm up allocator and caches
        await asyncio.sleep(0.5)
        before = collected_rss_kib()
        tasks_before = len(asyncio.all_tasks())
        await batch(200, 800)
        await check_serving(address)
        await asyncio.sleep(1.5)  # let handshake timeouts of half-open pipes fire
        growth = collected_rss_kib() - before
        assert growth < 8 * 1024, f"RSS grew by {growth} KiB over 800 garbage connections"
        assert len(asyncio.all_tasks()) <= tasks_before + 2
        assert server.stats.failed_handshakes >= 990


@pytest.mark.timeout(30)
async def test_silent_client_is_dropped_at_the_handshake_timeout() -> None:
    async with keywire.Server(
        ["net:127.0.0.1:0~shs"], handler=echo, handshake_timeout=0.5
    ) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server.address()))
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # hung up, having sent nothing
        assert 0.4 < loop.time() - start < 3
        writer.close()
        await check_serving(server.address())
