"""Real browsers against keywire's KPS listener: the matrix in three configurations.

Debian's Chromium with default field trials (``chromium``), the same with
``WebRTC-NoSdpMangleUfrag`` forced on (``chromium-nomangle``: setLocalDescription refuses an
edited offer, so only wire v2 can work), and Debian's firefox-esr over WebDriver BiDi
(``firefox``). ``KEYWIRE_BROWSERS=chromium,firefox`` narrows the set. One browser and one
listener (QUIC and WebRTC on one UDP port, on 127.0.0.1 for every browser: Firefox gets a
loopback candidate because its profile grants the test page a media permission, see
web/README.md) serve each configuration; each test runs a scenario from web/test/scenarios.js
in the page and checks both sides.
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
from keywire.kps.quic.dialer import dial as dial_quic
from keywire.kps.quic.listener import KpsListener
from keywire.kps.settings import KpsSettings
from keywire.kps.webrtc.demo import DemoServer, serve_demo
from keywire.kps.webrtc.server import WebRTCListener, attach
from keywire.stream import Connection

from .wrtc_browser import KINDS, WEB, Browser, CommandApp, pattern

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]
SELECTED = [k for k in os.environ.get("KEYWIRE_BROWSERS", ",".join(KINDS)).split(",") if k]


@dataclass
class Rig:
    browser: Browser
    app: CommandApp
    listener: KpsListener
    webrtc: WebRTCListener
    demo: DemoServer
    identity: Identity
    host: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.listener.port}:{self.identity.certhash}"


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=SELECTED)
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    identity = Identity.generate()
    app = CommandApp()

    async def on_connection(conn: Connection) -> None:
        await app.handle(conn)

    host = "127.0.0.1"  # every browser; Firefox too, as Browser.launch grants demo.url
    listener = KpsListener(identity, KpsSettings(), on_connection)
    await listener.start(host, 0)
    assert listener.demux is not None
    webrtc = attach(listener.demux, identity, on_connection)
    address = f"kps:{host}:{listener.port}:{identity.certhash}"
    demo = await serve_demo(
        "127.0.0.1", 0, address, extra={"/test/scenarios.js": WEB / "test" / "scenarios.js"}
    )
    browser: Browser | None = None
    try:
        browser = await Browser.launch(request.param, demo.url)
        await browser.goto(demo.url)
        yield Rig(browser, app, listener, webrtc, demo, identity, host)
    finally:
        if browser is not None:
            await browser.close()
        await demo.close()
        await webrtc.close()
        await app.close()
        await listener.close(abort_connections=True)


async def test_echo(rig: Rig) -> None:
    before = rig.webrtc.gate.counters.get("admitted-v2", 0)
    assert await rig.browser.run("echo", rig.address) == "hello"
    assert rig.webrtc.gate.counters.get("admitted-v2", 0) > before  # wire v2 by default


async def test_local_sdp_is_create_offers_output(rig: Rig) -> None:
    """keywire.js hands setLocalDescription exactly what createOffer returned (wire v2)."""
    result = await rig.browser.run("sdpUntouched", rig.address, None)
    assert result == {"offers": 1, "set": 1, "equal": True, "echoed": "same sdp", "error": None}


async def test_wire_v1_munging(rig: Rig) -> None:
    """KPS wire v1 (``{wire: 1}``) edits the offer: it works until the browser forbids that."""
    result = await rig.browser.run("sdpUntouched", rig.address, 1)
    assert result["offers"] == 1 and result["set"] == 1 and result["equal"] is False
    if rig.browser.kind == "chromium-nomangle":
        assert result["echoed"] is None
        assert "SDP is modified in a non-acceptable way" in result["error"], result
    else:
        assert result == {**result, "echoed": "same sdp", "error": None}


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
    assert result == {
        "echoed": "ping",
        "tooLarge": {"code": 8, "limit": 1200},
        "max": 1200,
        "full": 1200,
    }


async def test_close_code_seen_by_browser(rig: Rig) -> None:
    result = await rig.browser.run("closeCode", rig.address)
    assert result == {"code": 6, "remote": True, "closeCode": 6}


async def test_wrong_certhash_fails(rig: Rig) -> None:
    wrong = encode_certhash(hashlib.sha256(b"another server").digest())
    before = rig.webrtc.gate.counters.get("v2-ufrag", 0)
    result = await rig.browser.run("wrongCerthash", f"{rig.host}:{rig.listener.port}:{wrong}")
    assert result["connected"] is False and result["name"] == "DialError"
    assert "timed out" in result["message"]
    # the v2 box did not open under this listener's key: checked, never answered
    assert rig.webrtc.gate.counters.get("v2-ufrag", 0) > before


async def test_browser_and_quic_client_on_one_port(rig: Rig) -> None:
    size = 4 << 20
    quic = await dial_quic(rig.host, rig.listener.port, rig.identity.certhash, KpsSettings())
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
        quic_round_trip(),
    )
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
    # every browser, Firefox included, reached the listener from loopback and nothing else
    sources = {host for peer in rig.webrtc.peers.values() for host, _ in peer.addresses}
    assert sources and all(host.startswith("127.") for host in sources), sources


async def _page_state(rig: Rig) -> dict[str, object]:
    return dict(
        await rig.browser._call(
            {
                "eval": """({
        status: document.getElementById('status').textContent,
        echoDisabled: document.getElementById('echo-send').disabled,
        chatDisabled: document.getElementById('chat-send').disabled,
        reconnectHidden: document.getElementById('reconnect').hidden,
        log: document.getElementById('log').textContent})"""
            }
        )
    )


async def _wait_state(rig: Rig, prefix: str, seconds: float = 15.0) -> dict[str, object]:
    state: dict[str, object] = {}
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        state = await _page_state(rig)
        if str(state["status"]).startswith(prefix):
            return state
        await asyncio.sleep(0.1)
    raise AssertionError(f"the demo page never showed {prefix!r}: {state}")


async def test_demo_page_shows_lost_connection_and_reconnects(rig: Rig) -> None:
    await rig.browser.goto(rig.demo.url)
    state = await _wait_state(rig, "connected")
    assert (state["echoDisabled"], state["chatDisabled"], state["reconnectHidden"]) == (
        False,
        False,
        True,
    )
    for peer in list(rig.webrtc.peers.values()):  # the server drops the page's connection
        await peer.conn.close(2)
    state = await _wait_state(rig, "connection lost")
    assert (state["echoDisabled"], state["chatDisabled"], state["reconnectHidden"]) == (
        True,
        True,
        False,
    ), state
    await rig.browser._call({"eval": "document.getElementById('reconnect').click()"})
    state = await _wait_state(rig, "connected")
    assert (state["echoDisabled"], state["reconnectHidden"]) == (False, True)
    await rig.browser._call({"eval": "document.getElementById('echo-send').click()"})
    async with asyncio.timeout(10):
        while "echo: hello keywire" not in str(state["log"]):
            await asyncio.sleep(0.1)
            state = await _page_state(rig)


async def test_module_vectors_and_address_checks(rig: Rig) -> None:
    result = await rig.browser.run("vectors")
    assert result == {
        "pwd": "dn9pWWCBP6fiDbQLjNcQVFAYWVSdPNzYf5JQ8JzVSso",
        "bad": [],
        "host": "::1",
        "port": 9,
        "first": 1,
    }
    from .test_wire_v2 import SERVER_PASSWORD, SERVER_UFRAG

    assert await rig.browser.run("vectorsV2") == {
        "ufrag": SERVER_UFRAG,
        "pwd": SERVER_PASSWORD,
        "freshDiffers": True,
        "creds": {"ufrag": "Ab+/", "pwd": "0123456789abcdef012345"},
    }


@pytest.mark.parametrize(
    "kind", ["data-after-fin", "overrun", "bad-control", "max-stream-data-huge"]
)
async def test_browser_closes_on_server_violation(rig: Rig, kind: str) -> None:
    result = await rig.browser.run("serverViolation", rig.address, kind)
    assert result["code"] == 6 and result["remote"] is False, result
    for _ in range(50):
        if any(s[0] == "poisoned" and s[1][0] == kind for s in rig.app.seen):
            break
        await asyncio.sleep(0.05)
    ((_, (_, code, remote)),) = [s for s in rig.app.seen if s[0] == "poisoned" and s[1][0] == kind]
    assert (code, remote) == (6, True)  # the browser told the server why


async def test_stream_limit_in_browser(rig: Rig) -> None:
    result = await rig.browser.run("streamLimit", rig.address)
    assert result == {"blocked": True, "echoed": "q", "opened": True, "after": "after"}
