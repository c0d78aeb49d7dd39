"""net / unix / ws / onion transports, dialing with fallback, and the server object."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import pytest

import keywire
from keywire import Code, ConnectionClosed, DialError, Scope, UnsupportedError
from keywire.netinfo import classify, interface_addresses
from keywire.options import Options
from keywire.stream import Connection

from .socks5 import Socks5Server


async def echo(conn: Connection) -> None:
    async for stream in conn:
        while chunk := await stream.read():
            await stream.write(chunk)
        await stream.close_write()


async def roundtrip(address: str, payload: bytes, **kw: object) -> bytes:
    conn = await keywire.dial(address, **kw)  # type: ignore[arg-type]
    try:
        stream = await conn.open_stream()
        await stream.write(payload)
        if address.startswith("ws"):
            got = await stream.readexactly(len(payload))  # ws has no half-close
        else:
            await stream.close_write()
            got = await stream.read_all()
        return got
    finally:
        await conn.close()


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "spec",
    [
        "net:127.0.0.1:0~noauth",
        "net:::1:0~noauth",
        "ws://127.0.0.1:0~noauth",
        "ws://127.0.0.1:0/any/path~noauth",
    ],
)
async def test_echo_over_transport(spec: str) -> None:
    payload = os.urandom(300_000)
    async with keywire.Server([spec], handler=echo) as server:
        address = server.address()
        assert await roundtrip(address, payload) == payload


@pytest.mark.timeout(20)
async def test_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "kw.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a crashed server's leftover: nobody listens
    stale.close()
    async with keywire.Server([f"unix:{path}~noauth"], handler=echo) as server:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert server.address() == f"unix:{path}~noauth"
        assert server.address(Scope.PUBLIC) == ""
        assert await roundtrip(server.address(), b"over unix") == b"over unix"
        with pytest.raises(OSError, match="another server"):
            await keywire.Server([f"unix:{path}~noauth"]).start()
    assert not path.exists()


@pytest.mark.timeout(20)
async def test_onion_goes_through_socks5_in_order() -> None:
    socks = await Socks5Server().start()
    try:
        async with keywire.Server(["net:127.0.0.1:0~noauth"], handler=echo) as server:
            port = server.address().split(":")[2].split("~")[0]
            dead = socket.socket()
            dead.bind(("127.0.0.1", 0))
            dead_port = dead.getsockname()[1]
            dead.close()
            opts = Options(socks_proxies=(("127.0.0.1", dead_port), ("127.0.0.1", socks.port)))
            onion = f"onion:abcdefghijklmnop.onion:{port}~noauth"
            got = await roundtrip(onion, b"tor", options=opts)
            assert got == b"tor"
            assert socks.requests == [("abcdefghijklmnop.onion", int(port))]
            with pytest.raises(UnsupportedError):
                await keywire.Server(["onion:0.0.0.0:0~noauth"]).start()
    finally:
        await socks.close()


@pytest.mark.timeout(20)
async def test_onion_without_proxy_is_a_clear_error() -> None:
    opts = Options(socks_proxies=(("127.0.0.1", 1),))
    with pytest.raises(DialError, match="through Tor"):
        await keywire.dial("onion:x.onion:80~noauth", options=opts)


@pytest.mark.timeout(20)
async def test_dial_skips_unknown_and_falls_back() -> None:
    async with keywire.Server(["net:127.0.0.1:0~noauth"], handler=echo) as server:
        refused = socket.socket()
        refused.bind(("127.0.0.1", 0))
        port = refused.getsockname()[1]
        refused.close()
        address = f"fake:peer~nul:x;net:127.0.0.1:{port}~noauth;{server.address()}"
        assert await roundtrip(address, b"third time") == b"third time"


@pytest.mark.timeout(20)
async def test_dial_error_lists_every_attempt() -> None:
    with pytest.raises(DialError) as info:
        await keywire.dial("fake:x;net:127.0.0.1:1~noauth;net:127.0.0.1:2~zzz")
    reasons = [(a.address, a.reason) for a in info.value.attempts]
    assert reasons[0] == ("fake:x", "unknown transport 'fake'")
    assert "cannot connect to 127.0.0.1:1" in reasons[1][1]
    assert reasons[2][1] == "unknown transform 'zzz'"
    assert "3 alternative" in str(info.value)


@pytest.mark.timeout(20)
async def test_dial_timeout_is_per_alternative() -> None:
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        async with keywire.Server(["net:127.0.0.1:0~noauth"], handler=echo) as server:
            # ws handshake against a TCP server that never answers: bounded by timeout
            addr = f"ws://127.0.0.1:{port}~noauth;{server.address()}"
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            assert await roundtrip(addr, b"x", timeout=0.5) == b"x"
            assert loop.time() - t0 < 3
    finally:
        silent.close()


@pytest.mark.timeout(20)
async def test_single_stream_connection_rules() -> None:
    async with keywire.Server(["net:127.0.0.1:0~noauth"]) as server:
        conn = await keywire.dial(server.address())
        served = await server.accept()
        stream = await conn.open_stream()
        with pytest.raises(UnsupportedError, match="add ~mux"):
            await conn.open_stream()
        assert conn.max_datagram_size is None
        with pytest.raises(UnsupportedError, match="no datagrams"):
            conn.send_datagram(b"x")
        theirs = await served.accept_stream()
        await stream.write(b"ping")
        assert await theirs.readexactly(4) == b"ping"
        await stream.close_write()
        assert await theirs.read() == b""
        await theirs.close_write()
        assert await stream.read() == b""
        await conn.close()
        await served.close()


@pytest.mark.timeout(20)
async def test_server_announces_per_scope() -> None:
    async with keywire.Server(["net:0.0.0.0:0~noauth", "ws://0.0.0.0:0~noauth"]) as server:
        device = server.address(Scope.DEVICE)
        alts = device.split(";")
        assert alts[0].startswith("net:127.0.0.1:") and alts[1].startswith("ws://127.0.0.1:")
        assert all(a.endswith("~noauth") for a in alts)
        for scope in (Scope.PRIVATE, Scope.PUBLIC):
            for alt in server.addresses(scope):
                host = (
                    alt.transport.url_host_port()[0]
                    if alt.transport.is_url
                    else alt.transport.args[0]
                )
                assert not host.startswith("127.")
        private = server.addresses(Scope.PRIVATE)
        hosts = [
            h for _, h in interface_addresses() if classify(h) is Scope.PRIVATE and ":" not in h
        ]
        assert len(private) == (2 if hosts else 0)


@pytest.mark.timeout(20)
async def test_max_connections_refuses_extra() -> None:
    async with keywire.Server(["net:127.0.0.1:0~noauth"], max_connections=2) as server:
        conns = [await keywire.dial(server.address()) for _ in range(2)]
        accepted = [await server.accept() for _ in range(2)]
        extra = await keywire.dial(server.address())
        stream = await extra.open_stream()
        assert await asyncio.wait_for(stream.read(), 5) == b""  # closed by the server
        assert server.stats.refused >= 1
        for c in conns + accepted + [extra]:
            await c.close()


@pytest.mark.timeout(20)
async def test_graceful_shutdown() -> None:
    server = await keywire.Server(["net:127.0.0.1:0~noauth"]).start()
    conn = await keywire.dial(server.address())
    served = await server.accept()
    waiter = asyncio.ensure_future(server.accept())
    await server.close()
    with pytest.raises(ConnectionClosed):
        await waiter
    assert served.closed
    stream = await conn.open_stream()
    assert await asyncio.wait_for(stream.read(), 5) == b""
    with pytest.raises(DialError):
        await keywire.dial(server.address() or "net:127.0.0.1:1")
    await conn.close()


@pytest.mark.timeout(30)
async def test_garbage_clients_leave_server_serving() -> None:
    async with keywire.Server(["net:127.0.0.1:0~noauth"], handler=echo) as server:
        host, port = "127.0.0.1", int(server.address().split(":")[2].split("~")[0])
        for _ in range(200):
            _, w = await asyncio.open_connection(host, port)
            w.write(os.urandom(64))
            w.close()
        assert await roundtrip(server.address(), b"still here") == b"still here"


async def test_close_code_registry() -> None:
    assert Code.from_wire(6) is Code.PROTOCOL_ERROR
    assert Code.from_wire(999) is Code.INTERNAL_ERROR
    assert Code.TOO_LARGE.label == "too-large"
