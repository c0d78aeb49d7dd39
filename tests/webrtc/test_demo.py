"""Settings parsing, the demo HTTP server, and the demo's echo/chat handler over WebRTC."""

from __future__ import annotations

import asyncio
import json

import pytest

from keywire.identity import Identity
from keywire.kps.webrtc.demo import DemoApp, serve_demo
from keywire.kps.webrtc.dialer import dial_webrtc
from keywire.kps.webrtc.server import listen_webrtc
from keywire.kps.webrtc.settings import WebRTCSettings
from keywire.options import Options

pytestmark = pytest.mark.timeout(30)


def test_the_browser_module_ships_as_package_data() -> None:
    """An installed keywire (a wheel, not this checkout) must still serve keywire.js."""
    import tomllib
    from pathlib import Path

    from keywire.kps.webrtc.demo import web_dir

    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    shipped = config["tool"]["setuptools"]["package-data"]["keywire"]
    package = root / "src" / "keywire"
    for name in ("keywire.js", "demo.html"):
        assert f"web/{name}" in shipped
        assert (package / "web" / name).is_file()
    assert web_dir() == package / "web"


def test_settings_from_options() -> None:
    settings = WebRTCSettings.from_options(
        Options(extra={"webrtc.max_peers": "7", "webrtc.dial": "true", "kps.idle_timeout": 3})
    )
    assert settings.max_peers == 7 and settings.dial is True
    assert settings.wire.initial_max_streams == 100
    with pytest.raises(ValueError, match=r"unknown setting 'webrtc\.nope'"):
        WebRTCSettings.from_options(Options(extra={"webrtc.nope": 1}))
    with pytest.raises(ValueError, match="max_peers"):
        WebRTCSettings(max_peers=0)


async def _get(port: int, request: bytes) -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), body


async def test_demo_http_server() -> None:
    address = "kps:127.0.0.1:1:uEiAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHw"
    demo = await serve_demo("127.0.0.1", 0, address)
    try:
        assert demo.url == f"http://127.0.0.1:{demo.port}/"
        status, body = await _get(demo.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == "HTTP/1.1 200 OK" and b"keywire" in body
        status, body = await _get(demo.port, b"GET /config.json HTTP/1.1\r\n\r\n")
        assert json.loads(body)["address"].startswith("kps:127.0.0.1:1:")
        status, body = await _get(demo.port, b"GET /keywire.js?v=1 HTTP/1.1\r\n\r\n")
        assert status.endswith("200 OK") and b"export async function dial" in body
        status, _ = await _get(demo.port, b"GET /../../etc/passwd HTTP/1.1\r\n\r\n")
        assert status.endswith("404 Not Found")
        status, _ = await _get(demo.port, b"POST / HTTP/1.1\r\n\r\n")
        assert status.endswith("405 Method Not Allowed")
        status, _ = await _get(demo.port, b"\xff\xfe\r\n\r\n")
        assert status.endswith("400 Bad Request")
        status, _ = await _get(demo.port, b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n")
        assert status == ""  # an oversized request is dropped
    finally:
        await demo.close()


async def test_demo_app_echo_and_chat() -> None:
    identity = Identity.generate()
    app = DemoApp()
    listener, demux = await listen_webrtc(identity, app.handle)
    port = demux.local_address[1]
    try:
        a = await dial_webrtc("127.0.0.1", port, identity.certhash)
        b = await dial_webrtc("127.0.0.1", port, identity.certhash)
        echo = await a.open_stream()
        await echo.write(b"ping")
        await echo.close_write()
        assert await echo.read_all() == b"ping"
        chat_a = await a.open_stream()
        chat_b = await b.open_stream()
        await chat_a.write(b"chat\n")
        await chat_b.write(b"chat\n")
        while len(app.members) < 2:
            await asyncio.sleep(0.01)
        await chat_a.write(b"hi from a\n")
        assert await chat_b.readexactly(10) == b"hi from a\n"
        assert await chat_a.readexactly(10) == b"hi from a\n"
        a.send_datagram(b"dg")
        assert await asyncio.wait_for(a.receive_datagram(), 5) == b"dg"
        await a.close()
        await b.close()
    finally:
        await listener.close()
        demux.close()


async def test_demo_http_client_cap() -> None:
    from keywire.kps.webrtc import demo as demo_module

    demo = await serve_demo("127.0.0.1", 0, "kps:127.0.0.1:1:x")
    idle = []
    try:
        for _ in range(demo_module.MAX_HTTP_CLIENTS):
            idle.append(await asyncio.open_connection("127.0.0.1", demo.port))
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", demo.port)
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed without an answer
        writer.close()
        for _, w in idle[:1]:
            w.close()
        await asyncio.sleep(0.1)
        status, _ = await _get(demo.port, b"GET / HTTP/1.1\r\n\r\n")
        assert status.endswith("200 OK")  # a slot freed up
    finally:
        for _, w in idle:
            w.close()
        await demo.close()
