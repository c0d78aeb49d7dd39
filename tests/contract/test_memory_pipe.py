"""``memory_pipe_pair``: bounded buffers with backpressure, FIN, close and abort semantics."""

from __future__ import annotations

import asyncio

import pytest

from keywire.errors import Code, StreamError
from keywire.testing import memory_pipe_pair

pytestmark = pytest.mark.timeout(10)


async def test_bytes_flow_both_ways_and_fin_reads_as_eof() -> None:
    a, b = memory_pipe_pair()
    await a.write(b"ping")
    assert await b.readexactly(4) == b"ping"
    await b.write(b"pong")
    await b.close_write()
    assert await a.readexactly(4) == b"pong"
    assert await a.read() == b"" and await a.read() == b""
    await a.write(b"still open")  # half-close: the other direction goes on
    assert await b.readexactly(10) == b"still open"
    assert a.eof_is_authenticated and a.supports_half_close
    assert a.peer == "memory:b" and b.peer == "memory:a"


async def test_writer_waits_at_capacity_and_resumes_when_the_peer_reads() -> None:
    a, b = memory_pipe_pair(capacity=1000)
    writer = asyncio.ensure_future(a.write(bytes(2500)))
    await asyncio.sleep(0.05)
    assert not writer.done()
    assert a.unacknowledged() == 1000  # type: ignore[attr-defined]
    got = b""
    while len(got) < 2500:
        got += await b.read(700)
    await asyncio.wait_for(writer, 1)
    assert got == bytes(2500) and a.unacknowledged() == 0  # type: ignore[attr-defined]


async def test_close_delivers_what_is_buffered_then_eof() -> None:
    a, b = memory_pipe_pair()
    await a.write(b"last words")
    await a.close()
    assert await b.readexactly(10) == b"last words"
    assert await b.read() == b""
    with pytest.raises(StreamError) as info:  # the closer reads no more
        await b.write(b"too late")
    assert info.value.code == Code.NETWORK_ERROR


async def test_abort_breaks_both_directions_with_network_error() -> None:
    a, b = memory_pipe_pair()
    await a.write(b"lost")
    pending = asyncio.ensure_future(a.read())
    await asyncio.sleep(0)
    a.abort()
    for call in (pending, b.read(), b.write(b"x"), a.write(b"y")):
        with pytest.raises(StreamError) as info:
            await call
        assert info.value.code == Code.NETWORK_ERROR
    assert a.unacknowledged() is None  # type: ignore[attr-defined]


async def test_write_after_close_write_and_bad_sizes_are_refused() -> None:
    a, b = memory_pipe_pair()
    await a.close_write()
    with pytest.raises(StreamError, match="after close_write"):
        await a.write(b"x")
    with pytest.raises(ValueError):
        await b.read(0)
    with pytest.raises(ValueError):
        memory_pipe_pair(capacity=0)
