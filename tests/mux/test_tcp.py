"""MuxConnection over a real TCP loopback pipe: echo, half-close, codes, backpressure, endings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random

import pytest

from keywire.errors import Code, ConnectionClosed, StreamError
from keywire.mux.connection import MuxConnection, MuxStream
from keywire.mux.frame import INITIAL_WINDOW, Flag, FrameType, encode_header
from keywire.mux.session import MuxConfig
from keywire.pipe import StreamPipe
from keywire.stream import Connection, Stream

from .conftest import TcpPair, open_pair

pytestmark = pytest.mark.timeout(30)


async def echo_stream(stream: Stream) -> None:
    try:
        async for chunk in stream:
            await stream.write(chunk)
        await stream.close_write()
    except StreamError:
        pass


async def serve_echo(conn: Connection) -> None:
    async with asyncio.TaskGroup() as group:
        async for stream in conn:
            group.create_task(echo_stream(stream))


@contextlib.asynccontextmanager
async def echoing(conn: Connection):  # type: ignore[no-untyped-def]
    task = asyncio.create_task(serve_echo(conn))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def round_trip(conn: Connection, payload: bytes) -> bytes:
    stream = await conn.open_stream()

    async def send() -> None:
        for i in range(0, len(payload), 70_000):
            await stream.write(payload[i : i + 70_000])
        await stream.close_write()

    sender = asyncio.create_task(send())
    got = await stream.read_all()
    await sender
    return got


async def test_100_concurrent_streams_echo_byte_exact(pair: TcpPair) -> None:
    rng = random.Random(7)
    payloads = [rng.randbytes(rng.choice([0, 1, 100, 5000, 70_000, 300_000])) for _ in range(97)]
    payloads += [os.urandom(2_500_000) for _ in range(3)]  # several windows each
    async with echoing(pair.server), asyncio.timeout(25):
        results = await asyncio.gather(*(round_trip(pair.client, p) for p in payloads))
    assert results == payloads
    await asyncio.sleep(0.05)
    assert pair.client.session.stream_count == 0
    assert pair.server.session.stream_count == 0


async def test_close_write_gives_eof_and_the_other_half_goes_on(pair: TcpPair) -> None:
    stream = await pair.client.open_stream()
    await stream.write(b"question")
    await stream.close_write()
    server_stream = await pair.server.accept_stream()
    assert await server_stream.read_all() == b"question"
    assert await server_stream.read() == b""  # EOF stays EOF
    await server_stream.write(b"answer after the peer's FIN")
    await server_stream.close_write()
    assert await stream.read_all() == b"answer after the peer's FIN"
    with pytest.raises(StreamError) as info:
        await stream.write(b"late")
    assert info.value.code == Code.CLOSED


@pytest.mark.parametrize(
    "code", [Code.NONE, Code.RESET, Code.PROTOCOL_ERROR, Code.INTERNAL_ERROR, 1000]
)
async def test_reset_code_reaches_the_readers_read(pair: TcpPair, code: int) -> None:
    stream = await pair.client.open_stream()
    await stream.write(b"partial")
    server_stream = await pair.server.accept_stream()
    assert await server_stream.readexactly(7) == b"partial"
    stream.reset(code)
    with pytest.raises(StreamError) as info:
        await server_stream.read()
    assert info.value.wire_code == code
    assert info.value.remote
    with pytest.raises(StreamError) as local:
        await stream.write(b"x")
    assert local.value.wire_code == code and not local.value.remote
    # QUIC semantics: the server's sending half is untouched
    await server_stream.write(b"still open")
    await server_stream.close_write()
    assert await stream.read_all() == b"still open"


async def test_stop_sending_fails_the_peers_write_and_it_resets(pair: TcpPair) -> None:
    stream = await pair.client.open_stream()
    await stream.write(b"hello")
    server_stream = await pair.server.accept_stream()
    await server_stream.readexactly(5)
    server_stream.stop_sending(Code.PERMISSION_DENIED)
    with pytest.raises(StreamError) as info:
        async with asyncio.timeout(5):
            while True:
                await stream.write(b"x" * 10_000)
    assert info.value.code == Code.PERMISSION_DENIED and info.value.remote
    # the stopper's read side fails locally with the same code
    with pytest.raises(StreamError) as read_info:
        await server_stream.read()
    assert read_info.value.code == Code.PERMISSION_DENIED
    # the writer answered with RST(code): once both halves end, both sides forget the stream
    await server_stream.close_write()
    assert await stream.read() == b""
    async with asyncio.timeout(5):
        while pair.client.session.stream_count or pair.server.session.stream_count:
            await asyncio.sleep(0.01)


async def test_a_receiver_that_does_not_read_blocks_the_writer(pair: TcpPair) -> None:
    window = pair.client.session.config.window
    payload = os.urandom(3 * window + 12345)
    stream = await pair.client.open_stream()
    writer = asyncio.create_task(stream.write(payload))
    server_stream = await pair.server.accept_stream()
    await asyncio.sleep(0.3)
    assert not writer.done()
    assert pair.client.session.send_window(stream.id) == 0
    assert isinstance(server_stream, MuxStream)
    assert server_stream._buffer.size == window  # one window buffered, no more
    got = await server_stream.readexactly(len(payload))
    await asyncio.wait_for(writer, 5)
    assert got == payload


async def test_close_with_code_6_is_seen_by_the_peer(pair: TcpPair) -> None:
    stream = await pair.client.open_stream()
    await stream.write(b"x")
    server_stream = await pair.server.accept_stream()
    await pair.client.close(Code.PROTOCOL_ERROR, "test says so")
    closed = await asyncio.wait_for(pair.server.wait_closed(), 5)
    assert closed.code == Code.PROTOCOL_ERROR and closed.remote
    assert pair.server.closed
    assert pair.server.close_error is closed
    with pytest.raises(ConnectionClosed) as info:
        await pair.server.accept_stream()
    assert info.value.code == Code.PROTOCOL_ERROR
    assert await server_stream.read() == b"x"  # what arrived is kept
    with pytest.raises(StreamError) as read_info:
        await server_stream.read()
    assert read_info.value.code == Code.PROTOCOL_ERROR
    with pytest.raises(ConnectionClosed):
        await pair.server.open_stream()
    local = pair.client.close_error
    assert local is not None and local.code == Code.PROTOCOL_ERROR and not local.remote


async def test_clean_close_finishes_every_stream_and_delivers_its_data(pair: TcpPair) -> None:
    """A graceful close FINs the streams still open for writing (docs/api.md)."""
    done = await pair.client.open_stream()
    await done.write(b"complete")
    await done.close_write()
    open_one = await pair.client.open_stream()
    await open_one.write(b"unfinished")
    first = await pair.server.accept_stream()
    second = await pair.server.accept_stream()
    await pair.client.close()
    closed = await asyncio.wait_for(pair.server.wait_closed(), 5)
    assert closed.code == Code.NONE
    assert await first.read_all() == b"complete"
    assert await second.read_all() == b"unfinished"


async def test_close_with_a_code_fails_unfinished_streams_after_their_data(pair: TcpPair) -> None:
    stream = await pair.client.open_stream()
    await stream.write(b"unfinished")
    peer = await pair.server.accept_stream()
    await pair.client.close(Code.CANCELLED)
    closed = await asyncio.wait_for(pair.server.wait_closed(), 5)
    assert closed.code == Code.CANCELLED and closed.remote
    assert await peer.read() == b"unfinished"
    with pytest.raises(StreamError) as info:
        await peer.read()
    assert info.value.code == Code.CANCELLED


async def test_streams_opened_before_close_can_still_be_accepted(pair: TcpPair) -> None:
    stream = await pair.client.open_stream()
    await stream.write(b"last words")
    await stream.close_write()
    await pair.client.close()
    await asyncio.wait_for(pair.server.wait_closed(), 5)
    accepted = await pair.server.accept_stream()
    assert await accepted.read_all() == b"last words"
    with pytest.raises(ConnectionClosed):
        await pair.server.accept_stream()


async def test_killed_pipe_fails_every_stream_with_network_error(pair: TcpPair) -> None:
    client_streams = [await pair.client.open_stream() for _ in range(5)]
    for s in client_streams:
        await s.write(b"ping")
    server_streams = [await pair.server.accept_stream() for _ in range(5)]
    for s in server_streams:
        await s.readexactly(4)
    pair.client_pipe.abort()
    for s in server_streams + client_streams:
        with pytest.raises(StreamError) as info:
            async with asyncio.timeout(5):
                await s.read()
        assert info.value.code == Code.NETWORK_ERROR
        with pytest.raises(StreamError) as write_info:
            await s.write(b"x")
        assert write_info.value.code == Code.NETWORK_ERROR
    for conn in (pair.client, pair.server):
        closed = await asyncio.wait_for(conn.wait_closed(), 5)
        assert closed.code == Code.NETWORK_ERROR


async def test_opener_waits_at_the_stream_limit() -> None:
    config = MuxConfig(max_streams=2, keepalive_interval=None)
    pair, server = await open_pair(config)
    try:
        first = await pair.client.open_stream()
        await pair.client.open_stream()
        third = asyncio.create_task(pair.client.open_stream())
        await asyncio.sleep(0.1)
        assert not third.done()
        peer = await pair.server.accept_stream()
        await first.close_write()
        await peer.close_write()
        async with asyncio.timeout(5):
            opened = await third
        assert opened.id == 5
    finally:
        await pair.client.close()
        await pair.server.close()
        server.close()


async def test_streams_over_the_peers_limit_are_refused() -> None:
    pair, server = await open_pair(
        MuxConfig(max_streams=10, keepalive_interval=None),
        MuxConfig(max_streams=2, keepalive_interval=None),
    )
    try:
        streams = [await pair.client.open_stream() for _ in range(3)]
        with pytest.raises(StreamError) as info:
            async with asyncio.timeout(5):
                await streams[2].read()
        assert info.value.code == Code.QUEUE_FULL and info.value.remote
        with pytest.raises(StreamError):
            await streams[2].write(b"x")
        await streams[0].write(b"fine")
        accepted = await pair.server.accept_stream()
        assert await accepted.read(4) == b"fine"
    finally:
        await pair.client.close()
        await pair.server.close()
        server.close()


async def test_both_sides_send_hard_at_once_without_deadlock(pair: TcpPair) -> None:
    size = 6_000_000

    async def blast(conn: Connection) -> bytes:
        stream = await conn.open_stream()
        await stream.write(bytes([stream.id % 256]) * size)
        await stream.close_write()
        return await stream.read_all()

    async def drain_back(conn: Connection) -> None:
        stream = await conn.accept_stream()
        data = await stream.read_all()
        await stream.write(data[:1000])
        await stream.close_write()

    async with asyncio.timeout(20):
        results = await asyncio.gather(
            blast(pair.client), blast(pair.server), drain_back(pair.client), drain_back(pair.server)
        )
    assert results[0] == bytes([1]) * 1000
    assert results[1] == bytes([2]) * 1000


async def test_connection_and_stream_context_managers(pair: TcpPair) -> None:
    async with echoing(pair.server), await pair.client.open_stream() as stream:
        await stream.write(b"abc")
        assert await stream.readexactly(3) == b"abc"
    async with pair.client:
        pass
    assert pair.client.closed
    closed = await asyncio.wait_for(pair.server.wait_closed(), 5)
    assert closed.code == Code.NONE


# -- a raw peer that speaks bytes ----------------------------------------------------------------
@contextlib.asynccontextmanager
async def raw_peer(config: MuxConfig | None = None):  # type: ignore[no-untyped-def]
    """A MuxConnection (client side) whose peer is a bare socket the test drives by hand."""
    accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
        asyncio.get_running_loop().create_future()
    )

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result((reader, writer))

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = MuxConnection(StreamPipe(reader, writer), client=True, config=config)
    raw = await accepted
    try:
        yield conn, raw[0], raw[1]
    finally:
        await conn.close()
        raw[1].close()
        server.close()


async def test_keepalive_timeout_against_a_silent_peer() -> None:
    config = MuxConfig(keepalive_interval=0.05, keepalive_timeout=0.2)
    async with raw_peer(config) as (conn, reader, _writer):
        closed = await asyncio.wait_for(conn.wait_closed(), 5)
        assert closed.code == Code.TIMEOUT
        wire = await asyncio.wait_for(reader.readexactly(24), 5)
        assert await asyncio.wait_for(reader.read(100), 5) == b""
        assert wire == (
            encode_header(FrameType.PING, Flag.SYN, 0, 1)
            + encode_header(FrameType.GO_AWAY, 0, 0, 0x104)
        )


async def test_keepalive_answered_keeps_the_connection() -> None:
    config = MuxConfig(keepalive_interval=0.05, keepalive_timeout=0.2)
    pair, server = await open_pair(config)
    try:
        await asyncio.sleep(0.5)
        assert not pair.client.closed and not pair.server.closed
        assert pair.client.session.rtt is not None
    finally:
        await pair.client.close()
        await pair.server.close()
        server.close()


async def test_garbage_gets_go_away_protocol_error() -> None:
    async with raw_peer(MuxConfig(keepalive_interval=None)) as (conn, reader, writer):
        stream = await conn.open_stream()
        start = await reader.readexactly(24)
        assert start == (
            encode_header(FrameType.PING, Flag.SYN, 0, 1)  # the round-trip probe
            + encode_header(FrameType.WINDOW_UPDATE, Flag.SYN, 1, 0)
        )
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        assert await asyncio.wait_for(reader.read(100), 5) == encode_header(
            FrameType.GO_AWAY, 0, 0, 1
        )
        assert await asyncio.wait_for(reader.read(100), 5) == b""  # then the pipe closes
        with pytest.raises(StreamError) as info:
            await stream.read()
        assert info.value.code == Code.PROTOCOL_ERROR
        closed = await conn.wait_closed()
        assert "unsupported yamux version 71" in str(closed)


async def test_a_peer_flooding_pings_without_reading_is_held_back() -> None:
    async with raw_peer(MuxConfig(keepalive_interval=None)) as (conn, _reader, writer):
        ping = encode_header(FrameType.PING, Flag.SYN, 0, 7)
        writer.write(ping * 1_000_000)  # 12 MB of pongs owed; we never read them
        drained = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.5):
                await writer.drain()
                drained = True
        # the mux stopped reading instead of queueing unbounded answers: our flood is stuck
        assert not drained
        assert conn.session.control_backlog <= 64 * 1024 + 256 * 1024
        assert conn.session.pending_output <= 64 * 1024 + 256 * 1024
        writer.transport.abort()
        closed = await asyncio.wait_for(conn.wait_closed(), 5)
        assert closed.code == Code.NETWORK_ERROR


async def test_bad_codes_are_refused_before_anything_is_sent(pair: TcpPair) -> None:
    stream = await pair.client.open_stream()
    with pytest.raises(ValueError, match="outside"):
        stream.reset(-3)
    with pytest.raises(ValueError, match="outside"):
        stream.stop_sending(1 << 40)
    await stream.write(b"fine")
    accepted = await pair.server.accept_stream()
    assert await accepted.read() == b"fine"


class DelayedPipe(StreamPipe):
    """Writes reach the socket ``delay`` seconds late: a link with a long round trip."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
    ) -> None:
        super().__init__(reader, writer)
        self._delay = delay

    async def write(self, data: bytes) -> None:
        asyncio.get_running_loop().call_later(self._delay, self._late, data)

    def _late(self, data: bytes) -> None:
        if not self._writer.transport.is_closing():
            self._writer.write(data)


async def test_window_grows_on_a_long_link_with_a_fast_reader() -> None:
    accepted: asyncio.Future[MuxConnection] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(MuxConnection(StreamPipe(reader, writer), client=False))

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    client = MuxConnection(DelayedPipe(reader, writer, 0.02), client=True)
    receiver = await accepted
    try:
        stream = await client.open_stream()
        sending = asyncio.create_task(stream.write(os.urandom(6_000_000)))
        peer = await receiver.accept_stream()
        got = 0
        async with asyncio.timeout(20):
            while got < 6_000_000:
                got += len(await peer.read())
            await sending
        assert receiver.session.rtt is not None and receiver.session.rtt >= 0.02
        assert receiver.session.receive_window(peer.id) >= 4 * INITIAL_WINDOW
    finally:
        await client.close()
        await receiver.close()
        server.close()


async def test_several_tasks_may_accept_at_once(pair: TcpPair) -> None:
    acceptors = [asyncio.create_task(pair.server.accept_stream()) for _ in range(3)]
    await asyncio.sleep(0.01)
    for _ in range(3):
        await (await pair.client.open_stream()).write(b"x")
    streams = await asyncio.wait_for(asyncio.gather(*acceptors), 5)
    assert sorted(s.id for s in streams) == [1, 3, 5]
    waiting = asyncio.create_task(pair.server.accept_stream())
    await asyncio.sleep(0.01)
    await pair.client.close(Code.CANCELLED)
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(waiting, 5)
    assert info.value.code == Code.CANCELLED
