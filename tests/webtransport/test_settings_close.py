"""``webtransport.*`` settings, the close capsule over a lossy path, and the demo's module route."""

from __future__ import annotations

import asyncio
import base64
import socket

import pytest

import keywire
from keywire.address import parse
from keywire.errors import ConnectionClosed
from keywire.identity import Identity
from keywire.kps.settings import KpsSettings
from keywire.kps.webrtc.demo import serve_demo, web_dir
from keywire.options import Options
from keywire.stream import Connection
from keywire.webtransport.address import dial_target
from keywire.webtransport.dialer import dial_webtransport
from keywire.webtransport.listener import WebTransportListener
from keywire.webtransport.settings import WtSettings

from ..kps.udp_proxy import UdpProxy

pytestmark = pytest.mark.timeout(60)


def _address(listener: WebTransportListener, identity: Identity, port: int | None = None) -> str:
    key = base64.b64encode(identity.public_key).decode()
    hashes = ":".join(c.certhash for c in listener.certs.pair())
    return f"webtransport:127.0.0.1:{port or listener.port}:{key}:{hashes}"


def test_settings_are_read_under_their_own_prefix() -> None:
    options = Options(
        handshake_timeout=7,
        extra={
            "webtransport.idle_timeout": "4",
            "webtransport.max_streams": 12,
            "webtransport.datagram_queue": 9,
            "webtransport.close_linger": 0.5,
            "kps.idle_timeout": 99,  # kps's own: no longer borrowed
        },
    )
    wt = WtSettings.from_options(options)
    assert wt.quic.idle_timeout == 4.0 and wt.quic.max_streams == 12
    assert wt.quic.datagram_queue == 9 and wt.close_linger == 0.5
    assert wt.quic.handshake_timeout == 7.0
    assert WtSettings.from_options(Options()).quic == KpsSettings()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"webtransport.max_stream": 1}, "unknown setting 'webtransport.max_stream'"),
        ({"webtransport.idle_timeout": 0}, "webtransport.idle_timeout must be positive"),
        ({"webtransport.max_streams": 1.5}, "webtransport.max_streams must be a whole number"),
        ({"webtransport.close_linger": "soon"}, "webtransport.close_linger must be a number"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        WtSettings.from_options(Options(extra=extra))
    if "unknown" in message:
        assert "webtransport.close_linger" in str(caught.value)
        assert "webtransport.handshake_timeout" in str(caught.value)


async def test_a_misspelt_key_is_refused_by_dial_and_server_before_anything_opens() -> None:
    address = "webtransport:127.0.0.1:9:" + "A" * 43 + "=:uEiA" + "A" * 42
    options = Options(extra={"webtransport.idle_timout": 5})
    async with asyncio.timeout(10):
        with pytest.raises(ValueError, match=r"known: .*webtransport\.idle_timeout"):
            await keywire.dial(address, options)
        with pytest.raises(ValueError, match=r"unknown setting 'webtransport\.idle_timout'"):
            async with keywire.Server(["webtransport:127.0.0.1:0"], options):
                pass


async def test_the_handshake_timeout_setting_bounds_a_dial() -> None:
    """A port that never answers: the dial gives up after ``webtransport.handshake_timeout``."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        owner = Identity.generate()
        listener = WebTransportListener(owner, KpsSettings(), lambda conn: asyncio.sleep(0))
        address = _address(listener, owner, port=silent.getsockname()[1])
        options = Options(extra={"webtransport.handshake_timeout": 0.4})
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(keywire.DialError, match="timed out"):
            await asyncio.wait_for(keywire.dial(address, options), 10)
        assert loop.time() - started < 2.5  # not the 5 s default
    finally:
        silent.close()


@pytest.mark.parametrize("graceful", [True, False])
async def test_a_lost_close_capsule_is_retransmitted_and_the_code_arrives(graceful: bool) -> None:
    """Everything the server sends right after ``close(6)`` is dropped for 0.2 s: the first
    CLOSE_WEBTRANSPORT_SESSION is lost. The server keeps the connection driven until the capsule
    is acknowledged, so the client still ends with code 6 from the peer, long before its idle
    timeout (20 s)."""
    owner = Identity.generate()
    accepted: asyncio.Queue[Connection] = asyncio.Queue()

    async def on_connection(conn: Connection) -> None:
        await accepted.put(conn)

    settings = KpsSettings(idle_timeout=20, keepalive=0)
    listener = WebTransportListener(owner, settings, on_connection)
    await listener.start("127.0.0.1", 0)
    try:
        async with asyncio.timeout(30), UdpProxy(("127.0.0.1", listener.port)) as proxy:
            target = dial_target(
                parse(_address(listener, owner, proxy.port)).alternatives[0].transport
            )
            client = await dial_webtransport(target, settings)
            server = await accepted.get()
            stream = await client.open_stream()
            await stream.write(b"ping")
            incoming = await server.accept_stream()
            assert await incoming.read(4) == b"ping"
            await asyncio.sleep(0.1)  # everything acknowledged: the next loss is the capsule's
            dropped = proxy.counters.dropped
            proxy.faults.blackhole = True
            if graceful:
                await server.close(6, "bye")
            else:
                server.abort(6, "bye")
            assert server.closed
            await asyncio.sleep(0.2)
            assert proxy.counters.dropped > dropped  # the capsule's first flight was lost
            proxy.faults.blackhole = False
            started = asyncio.get_running_loop().time()
            ended = await asyncio.wait_for(client.wait_closed(), 5)
            assert isinstance(ended, ConnectionClosed)
            assert ended.code == 6 and ended.remote
            assert asyncio.get_running_loop().time() - started < 3
    finally:
        await listener.close(abort_connections=True)


async def _get(port: int, path: str) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return lines[0], {k.lower(): v for k, v in headers.items()}, body


async def test_the_demo_page_serves_webtransport_js_beside_keywire_js() -> None:
    demo = await serve_demo("127.0.0.1", 0, "kps:127.0.0.1:1:x")
    try:
        async with asyncio.timeout(10):
            status, headers, body = await _get(demo.port, "/webtransport.js")
            assert status.endswith("200 OK")
            assert "javascript" in headers["content-type"]
            assert body == (web_dir() / "webtransport.js").read_bytes()
            assert b"verifyBinding" in body
            status, _, keywire_js = await _get(demo.port, "/keywire.js")
            assert status.endswith("200 OK") and b"./webtransport.js" in keywire_js
    finally:
        await demo.close()
