"""Mux connections over a real TCP loopback socket pair (``asyncio.start_server`` + StreamPipe)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from keywire.mux.connection import MuxConnection
from keywire.mux.session import MuxConfig
from keywire.pipe import StreamPipe


@dataclass
class TcpPair:
    """A dialer-side and a listener-side MuxConnection, plus the raw client pipe to kill."""

    client: MuxConnection
    server: MuxConnection
    client_pipe: StreamPipe
    server_pipe: StreamPipe


async def open_pair(
    config: MuxConfig | None = None, server_config: MuxConfig | None = None
) -> tuple[TcpPair, asyncio.Server]:
    accepted: asyncio.Future[StreamPipe] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(StreamPipe(reader, writer, "net:client"))

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client_pipe = StreamPipe(reader, writer, f"net:127.0.0.1:{port}")
    server_pipe = await asyncio.wait_for(accepted, 5)
    client = MuxConnection(client_pipe, client=True, config=config, address="client~mux")
    srv = MuxConnection(
        server_pipe, client=False, config=server_config or config, address="server~mux"
    )
    return TcpPair(client, srv, client_pipe, server_pipe), server


@pytest.fixture
async def pair() -> AsyncIterator[TcpPair]:
    p, server = await open_pair()
    try:
        yield p
    finally:
        await p.client.close()
        await p.server.close()
        server.close()
        await server.wait_closed()
