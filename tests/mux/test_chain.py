"""``net:127.0.0.1:0~shs~mux`` end to end through ``keywire.dial`` and ``keywire.Server``."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator

import pytest

import keywire
from keywire.errors import Code, ConnectionClosed, StreamError
from keywire.mux.connection import MuxConnection

from .test_tcp import echo_stream, round_trip

pytestmark = pytest.mark.timeout(60)

SPEC = "net:127.0.0.1:0~shs~mux"


@pytest.fixture
async def server() -> AsyncIterator[keywire.Server]:
    async with keywire.Server([SPEC]) as srv:
        yield srv


async def connect(server: keywire.Server) -> tuple[keywire.Connection, keywire.Connection]:
    dialed = asyncio.create_task(keywire.dial(server.address()))
    accepted = await asyncio.wait_for(server.accept(), 10)
    return await dialed, accepted


async def test_the_chain_gives_mux_connections_with_the_shs_identity(
    server: keywire.Server,
) -> None:
    address = server.address()
    assert address.startswith("net:127.0.0.1:") and address.endswith("~mux")
    client, accepted = await connect(server)
    assert isinstance(client, MuxConnection) and isinstance(accepted, MuxConnection)
    assert str(client.address) == address
    assert client.remote.public_key is not None
    assert f"shs:{client.remote.shs_id}" in address
    await client.close()


async def test_100_concurrent_streams_over_shs(server: keywire.Server) -> None:
    async def handler(conn: keywire.Connection) -> None:
        async with asyncio.TaskGroup() as group:
            async for stream in conn:
                group.create_task(echo_stream(stream))

    serving = asyncio.create_task(server.serve(handler))
    try:
        rng = random.Random(11)
        payloads = [rng.randbytes(rng.choice([0, 10, 4000, 65_000, 200_000])) for _ in range(99)]
        payloads.append(os.urandom(3_000_000))
        async with asyncio.timeout(40):
            client = await keywire.dial(server.address())
            results = await asyncio.gather(*(round_trip(client, p) for p in payloads))
        assert results == payloads
        await client.close()
    finally:
        serving.cancel()


async def test_fin_and_reset_codes_over_shs(server: keywire.Server) -> None:
    client, accepted = await connect(server)
    a = await client.open_stream()
    await a.write(b"one")
    await a.close_write()
    b = await client.open_stream()
    await b.write(b"two")
    peer_a = await accepted.accept_stream()
    peer_b = await accepted.accept_stream()
    assert await peer_a.read_all() == b"one"
    assert await peer_b.readexactly(3) == b"two"
    b.reset(Code.TOO_LARGE)
    with pytest.raises(StreamError) as info:
        await peer_b.read()
    assert info.value.code == Code.TOO_LARGE and info.value.remote
    peer_b.stop_sending(Code.CANCELLED)
    await peer_a.write(b"reply")
    await peer_a.close_write()
    assert await a.read_all() == b"reply"
    await client.close(Code.PERMISSION_DENIED)
    closed = await asyncio.wait_for(accepted.wait_closed(), 5)
    assert closed.code == Code.PERMISSION_DENIED and closed.remote
    with pytest.raises(ConnectionClosed):
        await accepted.accept_stream()


async def test_stop_sending_over_shs(server: keywire.Server) -> None:
    client, accepted = await connect(server)
    stream = await client.open_stream()
    await stream.write(b"start")
    peer = await accepted.accept_stream()
    await peer.readexactly(5)
    peer.stop_sending(Code.QUEUE_FULL)
    with pytest.raises(StreamError) as info:
        async with asyncio.timeout(10):
            while True:
                await stream.write(bytes(50_000))
    assert info.value.code == Code.QUEUE_FULL and info.value.remote
    await client.close()


async def test_backpressure_over_shs(server: keywire.Server) -> None:
    client, accepted = await connect(server)
    assert isinstance(client, MuxConnection)
    window = client.session.config.window
    payload = os.urandom(2 * window + 999)
    stream = await client.open_stream()
    writer = asyncio.create_task(stream.write(payload))
    peer = await accepted.accept_stream()
    await asyncio.sleep(0.3)
    assert not writer.done()
    assert client.session.send_window(stream.id) == 0
    assert await peer.readexactly(len(payload)) == payload
    await asyncio.wait_for(writer, 10)
    await client.close()


async def test_server_close_reaches_the_dialer_with_its_code(server: keywire.Server) -> None:
    client, accepted = await connect(server)
    stream = await client.open_stream()
    await stream.write(b"x")
    await server.close(Code.TIMEOUT)
    closed = await asyncio.wait_for(client.wait_closed(), 5)
    assert closed.code == Code.TIMEOUT and closed.remote
    with pytest.raises(StreamError) as info:
        await stream.read()
    assert info.value.code == Code.TIMEOUT
    assert accepted.closed
