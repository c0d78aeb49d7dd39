"""KPS's Go test matrix (reference kps.md §4), over real loopback QUIC."""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from keywire.errors import Code, ConnectionClosed, DatagramTooLarge, PinMismatch, StreamError
from keywire.identity import Identity
from keywire.kps import KpsConnection, KpsSettings, dial

from .helpers import Collector, echo_handler, listening

pytestmark = pytest.mark.timeout(30)


async def test_echo() -> None:
    async with listening() as listener:
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        stream = await conn.open_stream()
        await stream.write(b"hello kps")
        await stream.close_write()
        assert await stream.read_all() == b"hello kps"
        assert conn.remote.certhash == listener.identity.certhash
        await conn.close()


async def test_certhash_mismatch_rejected_before_any_data() -> None:
    seen = Collector()
    other = Identity.generate()
    async with listening(seen) as listener:
        with pytest.raises(PinMismatch) as info:
            await dial("127.0.0.1", listener.port, other.certhash, KpsSettings())
        error = info.value
        assert error.expected == other.certhash
        assert error.actual == listener.identity.certhash
        assert other.certhash[:12] in str(error) and listener.identity.certhash[:12] in str(error)
        await asyncio.sleep(0.2)
        # the client aborted before its Finished: the server never completed a handshake
        assert seen.connections == []
        # and it said so (CONNECTION_CLOSE, crypto error bad_certificate): the half-open
        # connection is gone now, not at the server's handshake timeout
        assert listener.connections == []


async def test_eight_concurrent_streams() -> None:
    async with listening() as listener:
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())

        async def one(i: int) -> bytes:
            stream = await conn.open_stream()
            payload = os.urandom(50_000 + i)
            await stream.write(payload)
            await stream.close_write()
            assert await stream.read_all() == payload
            return payload

        results = await asyncio.gather(*(one(i) for i in range(8)))
        assert len({len(r) for r in results}) == 8
        await conn.close()


async def test_four_concurrent_connections() -> None:
    async with listening() as listener:

        async def one(i: int) -> None:
            conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
            stream = await conn.open_stream()
            await stream.write(f"conn {i}".encode())
            await stream.close_write()
            assert await stream.read_all() == f"conn {i}".encode()
            await conn.close()

        await asyncio.gather(*(one(i) for i in range(4)))


async def test_close_write_peer_sees_eof() -> None:
    seen = Collector()
    async with listening(seen) as listener:
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        stream = await conn.open_stream()
        await stream.write(b"last words")
        await stream.close_write()
        server = await seen.first()
        peer = await server.accept_stream()
        assert await peer.read_all() == b"last words"
        assert await peer.read() == b""  # EOF stays EOF
        # the other half is still open
        await peer.write(b"reply")
        await peer.close_write()
        assert await stream.read_all() == b"reply"
        await conn.close()


async def test_reset_peer_sees_the_code() -> None:
    seen = Collector()
    async with listening(seen) as listener:
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        stream = await conn.open_stream()
        await stream.write(b"partial")
        server = await seen.first()
        peer = await server.accept_stream()
        assert await peer.readexactly(7) == b"partial"
        stream.reset(42)
        with pytest.raises(StreamError) as info:
            await asyncio.wait_for(peer.read(), 5)
        assert info.value.wire_code == 42 and info.value.remote
        with pytest.raises(StreamError):
            await stream.write(b"more")
        await conn.close()


async def test_stop_sending_stops_the_peer_which_resets() -> None:
    seen = Collector()
    async with listening(seen) as listener:
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        stream = await conn.open_stream()
        await stream.write(b"x")
        server = await seen.first()
        peer = await server.accept_stream()
        await peer.readexactly(1)
        peer.stop_sending(Code.CANCELLED)
        with pytest.raises(StreamError) as local:
            await peer.read()
        assert local.value.code == Code.CANCELLED and not local.value.remote

        async def keep_writing() -> None:
            while True:
                await stream.write(b"y" * 4096)
                await asyncio.sleep(0.001)

        with pytest.raises(StreamError) as info:
            await asyncio.wait_for(keep_writing(), 5)
        assert info.value.code == Code.CANCELLED and info.value.remote
        # the stop only ended the client's sending half
        await peer.write(b"still here")
        await peer.close_write()
        assert await stream.read_all() == b"still here"
        await conn.close()


@pytest.mark.parametrize("closer", ["client", "server"])
async def test_connection_close_with_code_6_is_seen_by_the_peer(closer: str) -> None:
    seen = Collector()
    async with listening(seen) as listener:
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        server = await seen.first()
        pending = await conn.open_stream()
        await pending.write(b"x")
        closing, observer = (conn, server) if closer == "client" else (server, conn)
        await closing.close(Code.PROTOCOL_ERROR, "bad peer")
        error = await asyncio.wait_for(observer.wait_closed(), 5)
        assert isinstance(error, ConnectionClosed)
        assert error.code == Code.PROTOCOL_ERROR and error.remote
        assert observer.close_error is error
        assert closing.close_error is not None and not closing.close_error.remote
        with pytest.raises(ConnectionClosed):
            await observer.open_stream()


async def test_clean_close_flushes_written_data() -> None:
    seen = Collector()
    async with listening(seen) as listener:
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        stream = await conn.open_stream()
        payload = os.urandom(3 << 20)
        await stream.write(payload)
        await stream.close_write()
        await conn.close()  # code 0 lingers until the data is acknowledged
        server = await seen.first()
        peer = await server.accept_stream()
        assert await peer.read_all() == payload
        error = await asyncio.wait_for(server.wait_closed(), 5)
        assert error.code == Code.NONE and error.remote


async def test_datagram_round_trip() -> None:
    async with listening() as listener:
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        assert conn.max_datagram_size is not None and conn.max_datagram_size >= 1100
        got = b""
        for _ in range(30):  # datagrams are unreliable: retry every 100 ms
            conn.send_datagram(b"ping")
            with contextlib.suppress(TimeoutError):
                got = await asyncio.wait_for(conn.receive_datagram(), 0.1)
                break
        assert got == b"ping"
        await conn.close()


async def test_a_datagram_of_exactly_max_datagram_size_arrives() -> None:
    seen = Collector()
    async with listening(seen) as listener:
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        server = await seen.first()
        for sender, receiver in ((conn, server), (server, conn)):
            limit = sender.max_datagram_size
            assert limit is not None
            biggest = bytes([limit % 251]) * limit
            sender.send_datagram(biggest)
            assert await asyncio.wait_for(receiver.receive_datagram(), 5) == biggest
        await conn.close()


async def test_too_large_datagram_fails_and_later_ones_still_flow() -> None:
    async with listening() as listener:
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        limit = conn.max_datagram_size
        assert limit is not None
        for size in (limit + 1, 2000, 65536):
            with pytest.raises(DatagramTooLarge) as info:
                conn.send_datagram(b"z" * size)
            assert info.value.code == Code.TOO_LARGE and info.value.limit == limit
        conn.send_datagram(b"after")
        assert await asyncio.wait_for(conn.receive_datagram(), 5) == b"after"
        stream = await conn.open_stream()
        await stream.write(b"still fine")
        await stream.close_write()
        assert await stream.read_all() == b"still fine"
        await conn.close()


async def test_datagram_receive_queue_is_bounded_and_drops_oldest() -> None:
    seen = Collector()
    async with listening(seen, datagram_queue=4) as listener:
        conn = await dial(
            "127.0.0.1", listener.port, listener.identity.certhash, KpsSettings(datagram_queue=4)
        )
        server = await seen.first()
        for i in range(10):
            conn.send_datagram(bytes([i]))
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        got = [await server.receive_datagram() for _ in range(4)]
        assert got == [bytes([i]) for i in range(6, 10)]
        assert server.datagrams_dropped == 6
        await conn.close()


async def test_ipv6_over_loopback_on_a_dual_stack_listener() -> None:
    seen = Collector()

    async def echo_and_keep(conn: KpsConnection) -> None:
        await seen(conn)
        await echo_handler(conn)

    async with listening(echo_and_keep, host="::") as listener:
        for i, host in enumerate(("::1", "127.0.0.1")):
            conn = await dial(host, listener.port, listener.identity.certhash, KpsSettings())
            stream = await conn.open_stream()
            await stream.write(host.encode())
            await stream.close_write()
            assert await stream.read_all() == host.encode()
            server = await seen.nth(i)
            # the v4 client arrives v4-mapped on the dual-stack socket and is reported as v4
            assert server.remote_address is not None and server.remote_address[0] == host
            await conn.close()


async def test_non_reading_receiver_blocks_the_writer_after_the_window() -> None:
    window = 256 << 10
    settings = KpsSettings(stream_window=window, connection_window=4 * window, send_buffer=window)
    seen = Collector()
    async with listening(seen, settings=settings) as listener:
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, settings)
        stream = await conn.open_stream()
        payload = os.urandom(8 << 20)
        writer = asyncio.ensure_future(stream.write(payload))
        server = await seen.first()
        peer = await server.accept_stream()
        await asyncio.sleep(1.0)
        assert not writer.done(), "the writer should be blocked by the receive window"
        # unread data is bounded by the connection budget plus one stream window
        assert server.session.unread <= 4 * window + window
        assert server.session.gated
        got = bytearray()
        while len(got) < len(payload):
            got += await asyncio.wait_for(peer.read(), 10)
        await asyncio.wait_for(writer, 10)
        assert bytes(got) == payload
        await conn.close()


async def test_the_101st_stream_waits_until_one_retires() -> None:
    seen = Collector()
    async with listening(seen) as listener:
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        streams = []
        for i in range(100):
            stream = await asyncio.wait_for(conn.open_stream(), 5)
            await stream.write(bytes([i]))
            streams.append(stream)
        server = await seen.first()
        peers = [await asyncio.wait_for(server.accept_stream(), 5) for _ in range(100)]
        blocked = asyncio.ensure_future(conn.open_stream())
        await asyncio.sleep(0.5)
        assert not blocked.done(), "the 101st stream must wait for the peer's limit"
        # retire one stream: both halves end on the wire
        await streams[0].close_write()
        assert await peers[0].read_all() == b"\x00"
        await peers[0].close_write()
        assert await streams[0].read_all() == b""
        extra = await asyncio.wait_for(blocked, 5)
        await extra.write(b"101")
        await extra.close_write()
        assert await (await asyncio.wait_for(server.accept_stream(), 5)).read_all() == b"101"
        await conn.close()


async def test_finished_streams_leave_no_state_behind() -> None:
    seen = Collector()
    async with listening(seen) as listener:
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        server = await seen.first()

        async def serve() -> None:
            async for stream in server:
                data = await stream.read_all()
                await stream.write(data)
                await stream.close_write()

        server_task = asyncio.ensure_future(serve())

        async def one(i: int) -> None:
            stream = await conn.open_stream()
            await stream.write(str(i).encode())
            await stream.close_write()
            assert await stream.read_all() == str(i).encode()

        await asyncio.gather(*(one(i) for i in range(300)))
        await asyncio.sleep(0.1)
        for side in (conn, server):
            assert side._table == {} and side.session._streams == {}
        await conn.close()
        server_task.cancel()


async def test_stream_close_maps_to_stop_sending_and_fin_or_reset() -> None:
    seen = Collector()
    async with listening(seen) as listener:
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        clean = await conn.open_stream()
        await clean.write(b"bye")
        abrupt = await conn.open_stream()
        await abrupt.write(b"oops")
        server = await seen.first()
        peer_clean = await server.accept_stream()
        peer_abrupt = await server.accept_stream()
        assert await peer_clean.readexactly(3) == b"bye"
        assert await peer_abrupt.readexactly(4) == b"oops"

        await clean.close()  # STOP_SENDING(2) + FIN
        assert await asyncio.wait_for(peer_clean.read(), 5) == b""
        with pytest.raises(StreamError) as stopped:
            async with asyncio.timeout(5):
                while True:
                    await peer_clean.write(b"z" * 1024)
                    await asyncio.sleep(0.01)
        assert stopped.value.code == Code.CLOSED and stopped.value.remote

        await abrupt.close(Code.TIMEOUT)  # STOP_SENDING(4) + RESET_STREAM(4)
        with pytest.raises(StreamError) as reset:
            await asyncio.wait_for(peer_abrupt.read(), 5)
        assert reset.value.code == Code.TIMEOUT and reset.value.remote
        await conn.close()
