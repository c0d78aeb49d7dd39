"""Real browsers against the WebTransport listener, through keywire.js's ``dial()``.

Debian's Chromium and firefox-esr (``KEYWIRE_BROWSERS`` narrows the set) load the demo page's
HTTP server with this directory's scenarios.js; each scenario dials a multiaddress offering
both ``kps:`` (WebRTC) and ``webtransport:``, so ``dial()`` must pick WebTransport.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from keywire.identity import Identity
from keywire.kps.quic.listener import KpsListener
from keywire.kps.settings import KpsSettings
from keywire.kps.webrtc.demo import DemoServer, serve_demo
from keywire.kps.webrtc.server import attach
from keywire.stream import Connection
from keywire.webtransport.certs import CertStore
from keywire.webtransport.listener import WebTransportListener

from ..webrtc.wrtc_browser import Browser, CommandApp, pattern

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]
HERE = Path(__file__).resolve().parent
WEB = HERE.parents[1] / "src" / "keywire" / "web"
KINDS = ("chromium", "firefox")
SELECTED = [k for k in os.environ.get("KEYWIRE_BROWSERS", ",".join(KINDS)).split(",") if k in KINDS]


@dataclass
class Rig:
    browser: Browser
    app: CommandApp
    address: str
    identity: Identity
    wt: WebTransportListener


def wt_address(listener: WebTransportListener, identity: Identity) -> str:
    current, following = listener.certs.pair()
    key = base64.b64encode(identity.public_key).decode()
    return f"webtransport:127.0.0.1:{listener.port}:{key}:{current.certhash}:{following.certhash}"


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=SELECTED)
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    identity = Identity.generate()
    app = CommandApp()

    async def on_connection(conn: Connection) -> None:
        await app.handle(conn)

    kps = KpsListener(identity, KpsSettings(), on_connection)
    await kps.start("127.0.0.1", 0)
    assert kps.demux is not None
    webrtc = attach(kps.demux, identity, on_connection)
    wt = WebTransportListener(identity, KpsSettings(), on_connection)
    await wt.start("127.0.0.1", 0)
    address = f"kps:127.0.0.1:{kps.port}:{identity.certhash};{wt_address(wt, identity)}"
    demo: DemoServer = await serve_demo(
        "127.0.0.1",
        0,
        address,
        extra={
            "/test/scenarios.js": HERE / "scenarios.js",
            "/test/shared.js": HERE.parents[1] / "web" / "test" / "scenarios.js",
            "/webtransport.js": WEB / "webtransport.js",
        },
    )
    browser: Browser | None = None
    try:
        browser = await Browser.launch(request.param, demo.url)
        await browser.goto(demo.url)
        yield Rig(browser, app, address, identity, wt)
    finally:
        if browser is not None:
            await browser.close()
        await demo.close()
        await webrtc.close()
        await wt.close(abort_connections=True)
        await kps.close(abort_connections=True)
        await app.close()


async def test_dial_picks_webtransport_and_echoes(rig: Rig) -> None:
    result = await rig.browser.run("dialEcho", rig.address, 1 << 20)
    assert result == {
        "kind": "WebTransportConnection",
        "same": True,
        "length": 1 << 20,
        "dg": "ping",
    }


async def test_plain_webtransport_without_keywire_js_reaches_the_listener(rig: Rig) -> None:
    """The browser's own API alone (``new WebTransport(url, {serverCertificateHashes})``): the
    listener is a standard WebTransport server (a stream without a command line is echoed)."""
    digests = [base64.b64encode(c.cert_digest).decode() for c in rig.wt.certs.pair()]
    url = f"https://127.0.0.1:{rig.wt.port}/keywire"
    assert await rig.browser.run("rawEcho", url, digests) == "hello"


async def test_stream_codes_cross_both_ways(rig: Rig) -> None:
    """The page's reset(7) reaches the server as 7; the server's reset(9) reaches Chromium as
    9. Firefox 153 errors a reset stream's reader with a bare ``TypeError`` ("Error in input
    stream", no ``streamErrorCode``), so there the page can only report ``network-error``."""
    result = await rig.browser.run("resetCodes", rig.address)
    assert result["seen"] == "reset-seen 7 True"
    if rig.browser.kind == "firefox":
        assert result["got"].startswith("StreamError 5 true (network-error"), result
        assert "Error in input stream" in result["got"]
    else:
        assert result["got"] == "StreamError 9 true"


async def test_certificate_signed_by_another_key_is_refused(rig: Rig) -> None:
    """A listener whose certificates another identity signed, dialed with ``rig.identity``'s
    key: TLS matches a pinned hash, the binding does not verify, ``dial()`` rejects."""
    impostor = Identity.generate()

    async def on_connection(conn: Connection) -> None:
        await rig.app.handle(conn)

    listener = WebTransportListener(impostor, KpsSettings(), on_connection, CertStore(impostor))
    await listener.start("127.0.0.1", 0)
    try:
        forged = wt_address(listener, impostor).replace(
            base64.b64encode(impostor.public_key).decode(),
            base64.b64encode(rig.identity.public_key).decode(),
        )
        result = await rig.browser.run("refused", forged)
    finally:
        await listener.close(abort_connections=True)
    assert result.startswith("DialError: webtransport: certificate "), result
    assert "not signed by the identity key" in result


async def test_the_page_checks_the_binding_vectors(rig: Rig) -> None:
    vectors = json.loads((HERE / "vectors.json").read_text())
    result = await rig.browser.run(
        "vectors",
        vectors["record"],
        vectors["record_first_entry_signed_by_other"],
        vectors["identity_public_key"],
        [e["sha256"] for e in vectors["entries"]],
    )
    assert result["genuine"] == "ok"
    assert result["forged"].startswith("webtransport: certificate 8a4fa5ac8e2a88c4… is not signed")


async def test_the_servers_close_code_reaches_the_page(rig: Rig) -> None:
    """``conn.close(6)`` on the server: CLOSE_WEBTRANSPORT_SESSION(6) reaches the page before
    the QUIC connection ends, so ``conn.closed`` gives code 6 from the peer."""
    result = await rig.browser.run("closedByServer", rig.address)
    assert (result["code"], result["remote"]) == (6, True), result


# -- the WebRTC browser matrix (web/test/scenarios.js) over WebTransport ---------------------------


async def test_matrix_echo_and_eof(rig: Rig) -> None:
    assert await rig.browser.run("echo", rig.address) == "hello"
    assert await rig.browser.run("closeWriteEof", rig.address) == {"text": "abc", "eof": True}


async def test_matrix_reset_codes(rig: Rig) -> None:
    result = await rig.browser.run("resetFromServer", rig.address)
    code = 5 if rig.browser.kind == "firefox" else 9  # see test_stream_codes_cross_both_ways
    assert result == {"name": "StreamError", "code": code, "remote": True}
    assert await rig.browser.run("resetFromBrowser", rig.address) == "reset-seen 7 True"
    assert ("expect-reset", (7, True)) in rig.app.seen


async def test_matrix_stop_sending(rig: Rig) -> None:
    """Chromium: the server's writes fail with the page's code (STOP_SENDING(5)). Firefox 153
    sends no STOP_SENDING when the page cancels a reader (the server keeps writing; its
    streams are reset with a code outside WebTransport's range only when the session
    ends), so there ``stopSending`` acts locally: the page's reads still fail with the code."""
    if rig.browser.kind != "firefox":
        result = await rig.browser.run("stopSending", rig.address)
        assert result == {"seen": "write-failed 5 True", "local": 5}
        return
    before = len(rig.app.seen)
    assert await rig.browser.run("stopSendingThenWait", rig.address) == {"local": 5}
    floods = [s for s in rig.app.seen[before:] if s[0] == "flood"]
    assert all(code != 5 for _, (code, _remote) in floods), floods


async def test_matrix_sixteen_concurrent_streams(rig: Rig) -> None:
    assert await rig.browser.run("streams16", rig.address) == 16


async def test_matrix_eight_megabytes_each_way_byte_exact(rig: Rig) -> None:
    size = 8 << 20
    up = await rig.browser.run("upload", rig.address, size, 1)
    expected = hashlib.sha256(pattern(size, 1)).hexdigest()
    assert up["localDigest"] == expected and up["serverDigest"] == expected
    down = await rig.browser.run("download", rig.address, size, 2)
    assert down["length"] == size
    assert down["digest"] == hashlib.sha256(pattern(size, 2)).hexdigest()


async def test_matrix_close_code_seen_by_browser(rig: Rig) -> None:
    result = await rig.browser.run("closeCode", rig.address)
    assert result == {"code": 6, "remote": True, "closeCode": 6}
