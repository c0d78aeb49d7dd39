"""The Python WebRTC dialer against the keywire WebRTC listener, over real UDP on loopback.

KPS's WebRTC matrix (echo, FIN → EOF, reset and stop-sending codes, many streams, byte-exact
bulk both ways, datagrams, close codes, flow control, the pin) with aiortc on both ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from keywire.errors import Code, ConnectionClosed, DatagramTooLarge, PinMismatch, StreamError
from keywire.kps.webrtc.dialer import WebRTCDialError, dial_webrtc
from keywire.options import Options

from .wrtc_helpers import Served

pytestmark = pytest.mark.timeout(60)


async def test_echo(served: Served) -> None:
    client = await dial_webrtc("127.0.0.1", served.port, served.certhash)
    server = await served.next_connection()
    assert str(client.address) == f"kps:127.0.0.1:{served.port}:{served.certhash}"
    assert client.remote.certhash == served.certhash
    stream = await client.open_stream()
    await stream.write(b"hello")
    peer = await server.accept_stream()
    assert await peer.readexactly(5) == b"hello"
    await peer.write(b"HELLO")
    assert await stream.readexactly(5) == b"HELLO"
    assert stream.id % 2 == 0 and stream.id >= 2
    await client.close()
    assert (await server.wait_closed()).code == Code.NONE


async def test_close_write_gives_eof(served: Served) -> None:
    client = await dial_webrtc("127.0.0.1", served.port, served.certhash)
    server = await served.next_connection()
    stream = await client.open_stream()
    await stream.write(b"abc")
    await stream.close_write()
    peer = await server.accept_stream()
    assert await peer.read_all() == b"abc"
    assert await peer.read() == b""
    await peer.write(b"reply")
    await peer.close_write()
    assert await stream.read_all() == b"reply"
    await client.close()


async def test_reset_code_seen_on_both_sides(served: Served) -> None:
    client = await dial_webrtc("127.0.0.1", served.port, served.certhash)
    server = await served.next_connection()
    stream = await client.open_stream()
    await stream.write(b"x")
    peer = await server.accept_stream()
    await peer.readexactly(1)
    stream.reset(7)
    with pytest.raises(StreamError) as err:
        await peer.read()
    assert err.value.code == 7 and err.value.remote
    peer.reset(9)
    with pytest.raises(StreamError) as err2:
        await stream.read()
    assert err2.value.code == 9 and err2.value.remote
    await client.close()


async def test_stop_sending(served: Served) -> None:
    client = await dial_webrtc("127.0.0.1", served.port, served.certhash)
    server = await served.next_connection()
    stream = await client.open_stream()
    await stream.write(b"go")
    peer = await server.accept_stream()
    await peer.readexactly(2)
    stream.stop_sending(5)
    with pytest.raises(StreamError) as err:
        async with asyncio.timeout(10):
            while True:
                await peer.write(bytes(16384))
                await asyncio.sleep(0.01)
    assert err.value.code == 5 and err.value.remote
    with pytest.raises(StreamError) as local:
        await stream.read()
    assert local.value.code == 5 and not local.value.remote
    await client.close()


async def test_sixteen_concurrent_streams(served: Served) -> None:
    client = await dial_webrtc("127.0.0.1", served.port, served.certhash)
    server = await served.next_connection()

    async def echo_all() -> None:
        async for s in server:

            async def echo(s=s) -> None:  # type: ignore[no-untyped-def]
                await s.write(await s.read_all())
                await s.close_write()

            asyncio.get_running_loop().create_task(echo())

    task = asyncio.create_task(echo_all())

    async def one(n: int) -> None:
        s = await client.open_stream()
        payload = os.urandom(1000 + n * 997)
        await s.write(payload)
        await s.close_write()
        assert await s.read_all() == payload

    await asyncio.gather(*(one(n) for n in range(16)))
    await client.close()
    await asyncio.wait_for(task, 5)


async def test_eight_megabytes_each_way_byte_exact(served: Served) -> None:
    client = await dial_webrtc("127.0.0.1", served.port, served.certhash)
    server = await served.next_connection()
    up = os.urandom(8 << 20)
    down = os.urandom(8 << 20)
    stream = await client.open_stream()

    async def server_side() -> bytes:
        peer = await server.accept_stream()
        got = await peer.read_all()
        await peer.write(down)
        await peer.close_write()
        return got

    task = asyncio.create_task(server_side())
    await stream.write(up)
    await stream.close_write()
    received = await stream.read_all()
    got = await task
    assert hashlib.sha256(got).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(received).digest() == hashlib.sha256(down).digest()
    await client.close()


async def test_datagram_round_trip_and_too_large(served: Served) -> None:
    client = await dial_webrtc("127.0.0.1", served.port, served.certhash)
    server = await served.next_connection()
    assert client.max_datagram_size == 1200 == server.max_datagram_size
    got = None
    for _ in range(50):  # unreliable by design: retry like KPS's test (every 100 ms)
        client.send_datagram(b"ping")
        try:
            got = await asyncio.wait_for(server.receive_datagram(), 0.1)
            break
        except TimeoutError:
            continue
    assert got == b"ping"
    server.send_datagram(bytes(1200))
    assert len(await asyncio.wait_for(client.receive_datagram(), 5)) == 1200
    with pytest.raises(DatagramTooLarge) as err:
        client.send_datagram(bytes(1201))
    assert err.value.code == Code.TOO_LARGE and err.value.limit == 1200
    await client.close()


async def test_connection_close_code_seen_by_peer(served: Served) -> None:
    client = await dial_webrtc("127.0.0.1", served.port, served.certhash)
    server = await served.next_connection()
    stream = await client.open_stream()
    await stream.write(b"x")
    await server.close(6)
    closed = await asyncio.wait_for(client.wait_closed(), 5)
    assert closed.code == Code.PROTOCOL_ERROR and closed.remote
    with pytest.raises(StreamError) as err:
        await stream.read()
    assert err.value.code == 6
    with pytest.raises(ConnectionClosed):
        await client.open_stream()


async def test_wrong_certhash_fails_to_connect(served: Served) -> None:
    other = hashlib.sha256(b"someone else").digest()
    from keywire.identity import encode_certhash

    with pytest.raises(WebRTCDialError, match="no answer to ICE checks"):
        await dial_webrtc("127.0.0.1", served.port, encode_certhash(other), Options(timeout=1.5))
    assert not served.listener.peers  # the server allocated nothing and said nothing
    assert served.listener.gate.counters.get("integrity", 0) >= 1


async def test_dtls_pin_is_enforced(served: Served) -> None:
    """Right ICE password, wrong fingerprint: DTLS rejects the server's certificate."""
    with pytest.raises(PinMismatch) as err:
        await dial_webrtc(
            "127.0.0.1",
            served.port,
            served.certhash,
            Options(timeout=5),
            pin_digest=hashlib.sha256(b"not the server").digest(),
        )
    assert err.value.actual == served.certhash


async def test_non_reading_receiver_blocks_writer(served: Served) -> None:
    client = await dial_webrtc("127.0.0.1", served.port, served.certhash)
    server = await served.next_connection()
    stream = await client.open_stream()
    writer = asyncio.create_task(stream.write(bytes((1 << 20) + (64 << 10))))
    await asyncio.sleep(1.0)
    assert not writer.done()  # 1 MiB of stream credit, then it waits
    peer = await server.accept_stream()
    assert len(await peer.readexactly((1 << 20) + (64 << 10))) == (1 << 20) + (64 << 10)
    await asyncio.wait_for(writer, 5)
    await client.close()


async def test_stream_limit_waits_for_retirement(served: Served) -> None:
    client = await dial_webrtc("127.0.0.1", served.port, served.certhash)
    server = await served.next_connection()
    streams = [await client.open_stream() for _ in range(100)]
    extra = asyncio.create_task(client.open_stream())
    await asyncio.sleep(0.5)
    assert not extra.done()  # the 101st waits for MAX_STREAMS
    first = streams[0]
    await first.write(b"q")
    await first.close_write()
    peer = await server.accept_stream()
    assert await peer.read_all() == b"q"
    await peer.close_write()
    assert await first.read_all() == b""
    new = await asyncio.wait_for(extra, 5)
    await new.write(b"after")
    await new.close_write()
    # a WebRTC stream appears at the peer when its channel opens: skip the 99 idle ones
    peer = await server.accept_stream()
    while peer.id != new.id:
        peer = await server.accept_stream()
    assert await peer.read_all() == b"after"
    await client.close()


async def test_many_sequential_dials(served: Served) -> None:
    for _ in range(5):
        client = await dial_webrtc("127.0.0.1", served.port, served.certhash)
        server = await served.next_connection()
        s = await client.open_stream()
        await s.write(b"x")
        await s.close_write()
        peer = await server.accept_stream()
        assert await peer.read_all() == b"x"
        await client.close()
        await asyncio.wait_for(server.wait_closed(), 5)
    await asyncio.sleep(0.2)
    assert not served.listener.peers


async def test_ipv6_loopback() -> None:
    from keywire.identity import Identity
    from keywire.kps.webrtc.server import listen_webrtc

    identity = Identity.generate()
    accepted: asyncio.Queue[object] = asyncio.Queue()

    async def on_connection(conn: object) -> None:
        await accepted.put(conn)

    listener, demux = await listen_webrtc(identity, on_connection, host="::1")
    try:
        port = demux.local_address[1]
        assert listener.address == f"kps:[::1]:{port}:{identity.certhash}"
        client = await dial_webrtc("::1", port, identity.certhash)
        assert str(client.address) == f"kps:[::1]:{port}:{identity.certhash}"
        server = await asyncio.wait_for(accepted.get(), 5)
        stream = await client.open_stream()
        await stream.write(b"v6")
        await stream.close_write()
        assert await (await server.accept_stream()).read_all() == b"v6"  # type: ignore[attr-defined]
        await client.close()
    finally:
        await listener.close()
        demux.close()


async def test_dual_stack_listener_serves_ipv4_client() -> None:
    from keywire.identity import Identity
    from keywire.kps.webrtc.server import listen_webrtc

    identity = Identity.generate()
    listener, demux = await listen_webrtc(identity, _noop, host="0.0.0.0")
    try:
        client = await dial_webrtc("127.0.0.1", demux.local_address[1], identity.certhash)
        await client.close()
        client6 = await dial_webrtc("::1", demux.local_address[1], identity.certhash)
        await client6.close()
    finally:
        await listener.close()
        demux.close()


async def _noop(conn: object) -> None:
    return None
