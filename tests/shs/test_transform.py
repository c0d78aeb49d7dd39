"""``~shs`` in address chains: keywire client and server over real TCP and WebSocket."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
from collections.abc import AsyncIterator

import pytest

import keywire
from keywire import Code, DialError, Identity, StreamError
from keywire.address import Section
from keywire.errors import AddressError, HandshakeError
from keywire.options import Options
from keywire.pipe import StreamPipe
from keywire.shs.steps import keypair_from_seed
from keywire.shs.transform import (
    BoxStreamPipe,
    ShsTransform,
    app_key_bytes,
    client_handshake,
    parse_section,
    server_handshake,
)
from keywire.stream import Connection

APP = hashlib.sha256(b"keywire shs tests").digest()


async def echo(conn: Connection) -> None:
    async for stream in conn:
        while chunk := await stream.read():
            await stream.write(chunk)
        await stream.close_write()


def server_options(**kw: object) -> Options:
    return Options(identity=Identity.generate(), app_key=APP, **kw)  # type: ignore[arg-type]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("spec", ["net:127.0.0.1:0~shs", "ws://127.0.0.1:0~shs"])
async def test_echo_and_identities(spec: str) -> None:
    options = server_options()
    client = Identity.generate()
    seen: list[bytes | None] = []

    async def handler(conn: Connection) -> None:
        seen.append(conn.remote.public_key)
        await echo(conn)

    payload = os.urandom(200_000)
    async with keywire.Server([spec], options, handler=handler) as server:
        address = server.address()
        assert address.endswith(f"~shs:{options.need_identity().shs_id}")
        conn = await keywire.dial(address, identity=client, app_key=base64.b64encode(APP).decode())
        try:
            assert conn.remote.public_key == options.need_identity().public_key
            stream = await conn.open_stream()
            await stream.write(payload)
            # close_write sends the goodbye; over ws the socket stays open for the reply
            await stream.close_write()
            assert await stream.read_all() == payload
        finally:
            await conn.close()
    assert seen == [client.public_key]


@pytest.mark.timeout(20)
async def test_invite_seed_authenticates_as_the_seed() -> None:
    options = server_options()
    invite = os.urandom(32)
    seen: list[bytes | None] = []

    async def handler(conn: Connection) -> None:
        seen.append(conn.remote.public_key)
        await echo(conn)

    async with keywire.Server("net:127.0.0.1:0~shs", options, handler=handler) as server:
        address = f"{server.address()}:{base64.b64encode(invite).decode()}"
        conn = await keywire.dial(address, app_key=APP)  # no identity needed with a seed
        stream = await conn.open_stream()
        await stream.write(b"hi")
        await stream.close_write()
        assert await stream.read_all() == b"hi"
        await conn.close()
    assert seen == [keypair_from_seed(invite)[0]]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("asynchronous", [False, True])
async def test_authorize_refuses(asynchronous: bool, caplog: pytest.LogCaptureFixture) -> None:
    allowed = Identity.generate()
    asked: list[bytes] = []

    def decide(key: bytes) -> bool:
        asked.append(key)
        return key == allowed.public_key

    async def decide_later(key: bytes) -> bool:
        await asyncio.sleep(0)
        return decide(key)

    options = server_options(authorize=decide_later if asynchronous else decide)
    caplog.set_level(logging.DEBUG, logger="keywire")
    async with keywire.Server("net:127.0.0.1:0~shs", options, handler=echo) as server:
        with pytest.raises(DialError, match=r"phase 3.*does not authorize us"):
            await keywire.dial(server.address(), identity=Identity.generate(), app_key=APP)
        conn = await keywire.dial(server.address(), identity=allowed, app_key=APP)
        await conn.close()
    assert len(asked) == 2
    assert "is not authorized" in caplog.text


@pytest.mark.timeout(20)
async def test_authorize_that_raises_refuses() -> None:
    def broken(key: bytes) -> bool:
        raise RuntimeError("database down")

    async with keywire.Server(
        "net:127.0.0.1:0~shs", server_options(authorize=broken), handler=echo
    ) as server:
        with pytest.raises(DialError, match="phase 3"):
            await keywire.dial(server.address(), identity=Identity.generate(), app_key=APP)
        assert server.stats.failed_handshakes == 1


@pytest.mark.timeout(20)
async def test_wrong_app_key_and_wrong_server_key() -> None:
    async with keywire.Server("net:127.0.0.1:0~shs", server_options(), handler=echo) as server:
        address = server.address()
        with pytest.raises(DialError, match=r"phase 1.*application cap"):
            await keywire.dial(address, identity=Identity.generate(), app_key=os.urandom(32))
        other = Identity.generate().shs_id
        wrong = address.rsplit(":", 1)[0] + ":" + other
        with pytest.raises(DialError, match=r"phase 3.*wrong server key"):
            await keywire.dial(wrong, identity=Identity.generate(), app_key=APP)
        assert server.stats.failed_handshakes == 2


def test_section_parsing() -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    seed = os.urandom(32)
    assert parse_section(Section("shs", (key,)))[1] is None
    assert parse_section(Section("shs", (key, base64.b64encode(seed).decode())))[1] == seed
    with pytest.raises(AddressError, match="KEY"):
        parse_section(Section("shs", ()))
    with pytest.raises(AddressError, match="not base64"):
        parse_section(Section("shs", ("not*base64",)))
    with pytest.raises(AddressError, match="32 bytes, got 31"):
        parse_section(Section("shs", (base64.b64encode(bytes(31)).decode(),)))
    with pytest.raises(AddressError, match="seed"):
        parse_section(Section("shs", (key, "AAAA")))
    assert app_key_bytes(keywire.SSB_APP_KEY).hex().startswith("d4a1cb88")
    with pytest.raises(ValueError, match="app key"):
        app_key_bytes(b"short")
    with pytest.raises(ValueError, match="app key"):
        app_key_bytes("bm90IDMyIGJ5dGVz")


def test_announce() -> None:
    options = server_options()
    own = options.need_identity().shs_id
    assert ShsTransform().announce(Section("shs"), options) == Section("shs", (own,))
    assert ShsTransform().announce(Section("shs", (own,)), options) == Section("shs", (own,))
    with pytest.raises(AddressError, match="this identity's key"):
        ShsTransform().announce(Section("shs", (Identity.generate().shs_id,)), options)


@pytest.mark.timeout(20)
async def test_bad_key_in_a_dialed_address() -> None:
    async with keywire.Server("net:127.0.0.1:0~shs", server_options(), handler=echo) as server:
        transport = server.address().split("~")[0]
        with pytest.raises(DialError, match=r"base64 public key of 32 bytes.*got 3 bytes"):
            await keywire.dial(f"{transport}~shs:nope", app_key=APP)


# -- the shell over raw TCP -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[StreamPipe, StreamPipe]]:
    accepted: asyncio.Queue[StreamPipe] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(StreamPipe(reader, writer, "server-side"))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = StreamPipe(reader, writer, "client-side")
    served = await accepted.get()
    try:
        yield client, served
    finally:
        client.abort()
        served.abort()
        server.close()
        await server.wait_closed()


async def shs_pair(client: StreamPipe, served: StreamPipe) -> tuple[BoxStreamPipe, BoxStreamPipe]:
    seed = os.urandom(32)
    server_pk = keypair_from_seed(seed)[0]
    (ck, cearly), (sk, searly) = await asyncio.gather(
        client_handshake(client, APP, os.urandom(32), server_pk),
        server_handshake(served, APP, seed),
    )
    return BoxStreamPipe(client, ck, cearly), BoxStreamPipe(served, sk, searly)


@pytest.mark.timeout(10)
async def test_hangup_without_goodbye_is_an_error() -> None:
    async with tcp_pair() as (client, served):
        a, b = await shs_pair(client, served)
        await b.write(b"last words")
        await served.close_write()  # a TCP FIN, but no goodbye
        assert await a.read() == b"last words"
        with pytest.raises(StreamError, match="unexpected hangup") as info:
            await a.read()
        assert info.value.code == Code.NETWORK_ERROR
        assert a.eof_is_authenticated


@pytest.mark.timeout(10)
async def test_goodbye_half_close_and_small_reads() -> None:
    async with tcp_pair() as (client, served):
        a, b = await shs_pair(client, served)
        assert a.remote.public_key == b.keys.local_public_key
        await a.write(b"0123456789" * 1000)
        await a.close_write()
        with pytest.raises(StreamError, match="after close_write"):
            await a.write(b"late")
        got = bytearray()
        while chunk := await b.read(7):
            assert len(chunk) <= 7
            got += chunk
        assert bytes(got) == b"0123456789" * 1000
        await b.write(b"reply after their goodbye")
        await b.close_write()
        assert await a.readexactly(25) == b"reply after their goodbye"
        assert await a.read() == b""


@pytest.mark.timeout(10)
async def test_forged_frame_aborts_the_connection() -> None:
    async with tcp_pair() as (client, served):
        a, b = await shs_pair(client, served)
        await b.write(b"genuine")
        # a man in the middle cannot forge: write raw bytes that look like a frame
        await served.write(os.urandom(34 + 10))
        assert await a.read() == b"genuine"
        with pytest.raises(StreamError, match="invalid header") as info:
            await a.read()
        assert info.value.code == Code.PROTOCOL_ERROR


@pytest.mark.timeout(10)
async def test_silent_client_is_dropped_at_the_handshake_timeout() -> None:
    async with tcp_pair() as (client, served):
        task = asyncio.ensure_future(server_handshake(served, APP, os.urandom(32), timeout=0.3))
        start = asyncio.get_running_loop().time()
        assert await client.read() == b""  # the server hung up without sending anything
        assert asyncio.get_running_loop().time() - start < 2
        with pytest.raises(HandshakeError, match=r"timed out after 0.3 s.*challenge"):
            await task


@pytest.mark.timeout(10)
async def test_client_handshake_timeout() -> None:
    async with tcp_pair() as (client, _served):
        with pytest.raises(HandshakeError, match=r"timed out after 0.2 s.*server's challenge"):
            await client_handshake(client, APP, os.urandom(32), os.urandom(32), timeout=0.2)


@pytest.mark.timeout(20)
async def test_server_survives_garbage_and_keeps_serving() -> None:
    options = server_options(handshake_timeout=1.0)
    async with keywire.Server("net:127.0.0.1:0~shs", options, handler=echo) as server:
        port = int(server.address().split("~")[0].rsplit(":", 1)[1])
        for size in (0, 10, 64, 64 + 112, 5000):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(os.urandom(size))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
                async with asyncio.timeout(5):
                    assert await reader.read() == b""  # hung up, nothing sent
            writer.close()
        conn = await keywire.dial(server.address(), identity=Identity.generate(), app_key=APP)
        stream = await conn.open_stream()
        await stream.write(b"still here")
        await stream.close_write()
        assert await stream.read_all() == b"still here"
        await conn.close()
