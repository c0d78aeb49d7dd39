"""Real Chromium (Debian's, driven by playwright-core) against keywire's KPS listener.

One browser and one listener (QUIC and WebRTC on one UDP port) serve the whole module; each
test runs a scenario from web/test/scenarios.js in the page and checks both sides.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from keywire.identity import Identity, encode_certhash
from keywire.kps.dialer import dial as dial_quic
from keywire.kps.listener import KpsListener
from keywire.kps.settings import KpsSettings
from keywire.stream import Connection
from keywire.webrtc.demo import DemoServer, serve_demo
from keywire.webrtc.server import WebRTCListener, attach

from .wrtc_browser import WEB, Browser, CommandApp, pattern

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


@dataclass
class Rig:
    browser: Browser
    app: CommandApp
    listener: KpsListener
    webrtc: WebRTCListener
    demo: DemoServer
    identity: Identity

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.port}:{self.identity.certhash}"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig() -> AsyncIterator[Rig]:
    identity = Identity.generate()
    app = CommandApp()

    async def on_connection(conn: Connection) -> None:
        await app.handle(conn)

    listener = KpsListener(identity, KpsSettings(), on_connection)
    await listener.start("127.0.0.1", 0)
    assert listener.demux is not None
    webrtc = attach(listener.demux, identity, on_connection)
    address = f"kps:127.0.0.1:{listener.port}:{identity.certhash}"
    demo = await serve_demo("127.0.0.1", 0, address,
                            extra={"/test/scenarios.js": WEB / "test" / "scenarios.js"})
    browser = await Browser.launch()
    await browser.goto(demo.url)
    yield Rig(browser, app, listener, webrtc, demo, identity)
    await browser.close()
    await demo.close()
    await webrtc.close()
    await app.close()
    await listener.close(abort_connections=True)


async def test_echo(rig: Rig) -> None:
    assert await rig.browser.run("echo", rig.address) == "hello"


async def test_kps_prefixed_address(rig: Rig) -> None:
    assert await rig.browser.run("echo", "kps:" + rig.address) == "hello"


async def test_close_write_gives_eof(rig: Rig) -> None:
    assert await rig.browser.run("closeWriteEof", rig.address) == {"text": "abc", "eof": True}


async def test_reset_code_from_server(rig: Rig) -> None:
    result = await rig.browser.run("resetFromServer", rig.address)
    assert result == {"name": "StreamError", "code": 9, "remote": True}


async def test_reset_code_from_browser(rig: Rig) -> None:
    assert await rig.browser.run("resetFromBrowser", rig.address) == "reset-seen 7 True"
    assert ("expect-reset", (7, True)) in rig.app.seen


async def test_stop_sending(rig: Rig) -> None:
    result = await rig.browser.run("stopSending", rig.address)
    assert result == {"seen": "write-failed 5 True", "local": 5}


async def test_sixteen_concurrent_streams(rig: Rig) -> None:
    assert await rig.browser.run("streams16", rig.address) == 16


async def test_eight_megabytes_up_byte_exact(rig: Rig) -> None:
    size = 8 << 20
    result = await rig.browser.run("upload", rig.address, size, 1)
    expected = hashlib.sha256(pattern(size, 1)).hexdigest()
    assert result["localDigest"] == expected
    assert result["serverDigest"] == expected
    assert ("sink", size) in rig.app.seen


async def test_eight_megabytes_down_byte_exact(rig: Rig) -> None:
    size = 8 << 20
    result = await rig.browser.run("download", rig.address, size, 2)
    assert result["length"] == size
    assert result["digest"] == hashlib.sha256(pattern(size, 2)).hexdigest()


async def test_datagrams_and_too_large(rig: Rig) -> None:
    result = await rig.browser.run("datagrams", rig.address)
    assert result == {"echoed": "ping", "tooLarge": {"code": 8, "limit": 1200}, "max": 1200,
                      "full": 1200}


async def test_close_code_seen_by_browser(rig: Rig) -> None:
    result = await rig.browser.run("closeCode", rig.address)
    assert result == {"code": 6, "remote": True, "closeCode": 6}


async def test_wrong_certhash_fails(rig: Rig) -> None:
    wrong = encode_certhash(hashlib.sha256(b"another server").digest())
    before = rig.webrtc.gate.counters.get("integrity", 0)
    result = await rig.browser.run("wrongCerthash", f"127.0.0.1:{rig.listener.port}:{wrong}")
    assert result["connected"] is False and result["name"] == "DialError"
    assert "timed out" in result["message"]
    assert rig.webrtc.gate.counters.get("integrity", 0) > before  # checked, never answered


async def test_browser_and_quic_client_on_one_port(rig: Rig) -> None:
    size = 4 << 20
    quic = await dial_quic("127.0.0.1", rig.listener.port, rig.identity.certhash, KpsSettings())
    payload = os.urandom(size)

    async def quic_round_trip() -> bool:
        stream = await quic.open_stream()
        await stream.write(b"echo\n")

        async def send() -> None:
            await stream.write(payload)
            await stream.close_write()

        sender = asyncio.create_task(send())
        got = await stream.read_all()
        await sender
        return got == payload

    browser_up, browser_down, quic_ok = await asyncio.gather(
        rig.browser.run("upload", rig.address, size, 3),
        rig.browser.run("download", rig.address, size, 4),
        quic_round_trip())
    await quic.close()
    assert quic_ok
    assert browser_up["serverDigest"] == hashlib.sha256(pattern(size, 3)).hexdigest()
    assert browser_down["digest"] == hashlib.sha256(pattern(size, 4)).hexdigest()
    assert rig.listener.demux is not None
    assert rig.listener.demux.counts["quic"] > 0 and rig.listener.demux.counts["webrtc"] > 0


async def test_demo_page_connects(rig: Rig) -> None:
    await rig.browser.goto(rig.demo.url)
    status = ""
    for _ in range(100):
        status = await rig.browser._call({"eval": "document.getElementById('status').textContent"})
        if status.startswith(("connected", "failed", "closed")):
            break
        await asyncio.sleep(0.1)
    assert status.startswith("connected"), status


async def test_module_vectors_and_address_checks(rig: Rig) -> None:
    result = await rig.browser.run("vectors")
    assert result == {"pwd": "dn9pWWCBP6fiDbQLjNcQVFAYWVSdPNzYf5JQ8JzVSso", "bad": [],
                      "host": "::1", "port": 9, "first": 1}


@pytest.mark.parametrize("kind", ["data-after-fin", "overrun", "bad-control",
                                  "max-stream-data-huge"])
async def test_browser_closes_on_server_violation(rig: Rig, kind: str) -> None:
    result = await rig.browser.run("serverViolation", rig.address, kind)
    assert result["code"] == 6 and result["remote"] is False, result
    for _ in range(50):
        if any(s[0] == "poisoned" and s[1][0] == kind for s in rig.app.seen):
            break
        await asyncio.sleep(0.05)
    (_, (_, code, remote)), = [s for s in rig.app.seen if s[0] == "poisoned" and s[1][0] == kind]
    assert (code, remote) == (6, True)  # the browser told the server why


async def test_stream_limit_in_browser(rig: Rig) -> None:
    result = await rig.browser.run("streamLimit", rig.address)
    assert result == {"blocked": True, "echoed": "q", "opened": True, "after": "after"}
