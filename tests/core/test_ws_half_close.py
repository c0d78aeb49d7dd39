"""Half-close over ``ws``: keywire's extension (an empty binary message is FIN), seen from a
plain WebSocket peer as a multiserver (pull-ws) peer would be, and the safety rule for pipes that
cannot half-close at all (a read after our own ``close_write`` never returns a clean EOF)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection, connect

import keywire
from keywire.errors import Code, StreamError
from keywire.identity import Identity
from keywire.options import Options
from keywire.pipe import Pipe
from keywire.pipeconn import SingleStreamConnection
from keywire.stream import Connection, Stream
from keywire.testing import memory_pipe_pair


@contextlib.asynccontextmanager
async def raw_client() -> AsyncIterator[tuple[ClientConnection, Stream, Connection]]:
    """A ``ws~noauth`` listener and a plain WebSocket client (no keywire) connected to it."""
    async with asyncio.timeout(20):
        async with keywire.Server(
            ["ws://127.0.0.1:0~noauth"], Options(identity=Identity.generate())
        ) as server:
            url = server.address().split("~", 1)[0]
            async with connect(url, compression=None) as ws:
                conn = await server.accept()
                stream = await conn.accept_stream()
                try:
                    yield ws, stream, conn
                finally:
                    await conn.abort()


async def test_close_write_keeps_the_other_direction_open() -> None:
    """Our FIN is one empty message; the peer can still send, and its close reads as EOF."""
    async with raw_client() as (ws, stream, _):
        await ws.send(b"hello")
        assert await stream.readexactly(5) == b"hello"
        await stream.write(b"reply")
        await stream.close_write()
        assert await ws.recv() == b"reply"
        assert await ws.recv() == b""  # FIN: a multiserver peer's stream skips the empty chunk
        await ws.send(b"after our FIN")
        assert await stream.readexactly(13) == b"after our FIN"
        await ws.close(1000)  # a multiserver peer ends its direction this way
        assert await stream.read() == b""


async def test_the_socket_closes_once_both_directions_ended() -> None:
    async with raw_client() as (ws, stream, _):
        await ws.send(b"")  # the peer's FIN
        assert await stream.read() == b""
        await stream.write(b"last")
        await stream.close_write()
        assert await ws.recv() == b"last"
        assert await ws.recv() == b""
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1000


async def test_a_lost_socket_after_our_fin_is_not_eof() -> None:
    """The truncation case: our stdin ended first, then the peer vanished mid-transfer."""
    async with raw_client() as (ws, stream, _):
        await stream.close_write()
        await ws.send(b"part of")
        assert await stream.readexactly(7) == b"part of"
        ws.transport.abort()
        with pytest.raises(StreamError) as caught:
            await stream.read()
        assert caught.value.code == Code.NETWORK_ERROR


async def test_close_with_a_code_returns_at_once() -> None:
    async with raw_client() as (_, stream, conn):
        await stream.write(b"x")
        started = time.monotonic()
        await conn.close(Code.PERMISSION_DENIED)
        assert time.monotonic() - started < 1.0


class _NoHalfClose(Pipe):
    """A carrier whose ``close_write`` ends both directions, the peer's reading as EOF."""

    supports_half_close = False

    def __init__(self, inner: Pipe) -> None:
        self._inner = inner
        self._ended = False

    async def read(self, max_bytes: int = 65536) -> bytes:
        return b"" if self._ended else await self._inner.read(max_bytes)

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)

    async def close_write(self) -> None:
        self._ended = True
        await self._inner.close_write()

    def abort(self) -> None:
        self._inner.abort()


async def test_a_pipe_without_half_close_never_reads_a_clean_eof_after_our_fin() -> None:
    async with asyncio.timeout(5):
        ours, theirs = memory_pipe_pair()
        conn = SingleStreamConnection(_NoHalfClose(ours), "test")
        stream = await conn.open_stream()
        await theirs.write(b"cut short")
        await stream.close_write()
        with pytest.raises(StreamError) as caught:
            await stream.read()
        assert caught.value.code == Code.NETWORK_ERROR
        assert await theirs.read() == b""
        await conn.abort()
