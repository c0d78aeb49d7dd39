"""``keywire.dial`` and ``keywire.Server`` with the kps handler registered."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import keywire
from keywire.kps import KpsHandler
from keywire.registry import registry

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def kps_registered() -> Iterator[None]:
    """Register the handler if the built-in plugin list does not (yet) include it."""
    registry.load()
    added = not any(isinstance(h, KpsHandler) for h in registry.handlers)
    handler = KpsHandler()
    if added:
        registry.add_handler(handler)
    yield
    if added:
        registry.handlers.remove(handler)


@pytest.mark.usefixtures("kps_registered")
async def test_server_and_dial_speak_kps() -> None:
    async def echo(conn: keywire.Connection) -> None:
        async for stream in conn:
            while data := await stream.read():
                await stream.write(data)
            await stream.close_write()

    async with keywire.Server(["kps:0.0.0.0:0"], handler=echo) as server:
        await server.start()
        address = server.address("device")
        assert address.startswith("kps:127.0.0.1:")
        certhash = address.rsplit(":", 1)[1]
        conn = await keywire.dial(address)
        assert conn.remote.certhash == certhash
        stream = await conn.open_stream()
        await stream.write(b"through the public API")
        await stream.close_write()
        assert await asyncio.wait_for(stream.read_all(), 5) == b"through the public API"
        # the bare KPS form of the same address
        bare = address.removeprefix("kps:")
        conn2 = await keywire.dial(bare)
        await conn2.close()
        await conn.close()
