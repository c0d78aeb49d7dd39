"""One echo round trip through a store-stream ``keywire.Server``: listen, dial, echo, close."""

from __future__ import annotations

import asyncio

import keywire
from keywire.options import Options


async def echo_through_server(spec: str, options: Options, payload: bytes) -> str:
    """Serve ``spec`` (no secret), dial the announced address, echo ``payload``; the address."""
    server = keywire.Server([spec], options)
    await server.start()
    try:
        address = server.address()

        async def echo() -> None:
            conn = await server.__aiter__().__anext__()
            stream = await conn.accept_stream()
            await stream.write(await stream.read_all())
            await stream.close_write()
            await conn.close()

        serving = asyncio.ensure_future(echo())
        async with asyncio.timeout(20):
            conn = await keywire.dial(address, options)
            stream = await conn.open_stream()
            await stream.write(payload)
            await stream.close_write()
            assert await stream.read_all() == payload
            await conn.close()
            await serving
        return address
    finally:
        await server.close()
