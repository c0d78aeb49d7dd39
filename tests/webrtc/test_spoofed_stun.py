"""Chromium dials through a flood of valid STUN checks from forged source addresses (issue 18).

The flooder sends wire v1 checks that pass MESSAGE-INTEGRITY (the password derives from the
public certhash), each followed by a DTLS ClientHello-shaped record, from a fresh source
address of 127.0.0.0/8 every time, and never reads: what a blind spoofer can do. The
listener's return-routability check (``kps/webrtc/challenge.py``) must keep every such source
from holding state: no answered entry, no peer, nothing but the fixed slot table, while a real
Chromium page dials and moves 1 MiB each way byte-exact during and after the flood.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from keywire.identity import Identity, decode_certhash
from keywire.kps.quic.listener import KpsListener
from keywire.kps.settings import KpsSettings
from keywire.kps.webrtc.demo import DemoServer, serve_demo
from keywire.kps.webrtc.server import WebRTCListener, attach
from keywire.stream import Connection

from .wrtc_browser import WEB, Browser, CommandApp, pattern, require_browser

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]
ROOT = Path(__file__).resolve().parents[2]
SIZE = 1 << 20
RATE = 1000  # forged checks per second (and as many ClientHellos)


def forged_flood(port: int, certhash: str, rate: int, seconds: float) -> int:
    """Send ``rate`` checks/s, each from a new random 127.x.y.z:port that is closed at once."""
    from tests.kps.test_hostile_stun import CLIENT_HELLO, valid_check

    digest = decode_certhash(certhash)
    rng = random.Random(18)
    sent = 0
    print("flooding", flush=True)
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        while sent < int(elapsed * rate):
            source = f"127.{rng.randrange(16, 250)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                try:
                    sock.bind((source, 0))
                    sock.sendto(valid_check(digest), ("127.0.0.1", port))
                    sock.sendto(CLIENT_HELLO, ("127.0.0.1", port))
                except OSError:
                    continue
            sent += 1
        time.sleep(0.002)
    return sent


@dataclass
class Rig:
    browser: Browser
    listener: KpsListener
    webrtc: WebRTCListener
    identity: Identity

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.port}:{self.identity.certhash}"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig() -> AsyncIterator[Rig]:
    require_browser("chromium")
    identity = Identity.generate()
    app = CommandApp()

    async def on_connection(conn: Connection) -> None:
        await app.handle(conn)

    listener = KpsListener(identity, KpsSettings(), on_connection)
    await listener.start("127.0.0.1", 0)
    assert listener.demux is not None
    webrtc = attach(listener.demux, identity, on_connection)
    address = f"kps:127.0.0.1:{listener.port}:{identity.certhash}"
    demo: DemoServer = await serve_demo(
        "127.0.0.1", 0, address, extra={"/test/scenarios.js": WEB / "test" / "scenarios.js"}
    )
    browser: Browser | None = None
    try:
        browser = await Browser.launch("chromium", demo.url)
        await browser.goto(demo.url)
        yield Rig(browser, listener, webrtc, identity)
    finally:
        if browser is not None:
            await browser.close()
        await demo.close()
        await webrtc.close()
        await app.close()
        await listener.close(abort_connections=True)


async def both_ways(rig: Rig, seed: int) -> float:
    """Chromium dials, uploads 1 MiB and downloads 1 MiB, both byte-exact; seconds taken."""
    started = time.monotonic()
    up = await rig.browser.run("upload", rig.address, SIZE, seed, timeout=40)
    assert (
        up["serverDigest"] == up["localDigest"] == hashlib.sha256(pattern(SIZE, seed)).hexdigest()
    )
    down = await rig.browser.run("download", rig.address, SIZE, seed + 1, timeout=40)
    assert down["length"] == SIZE
    assert down["digest"] == hashlib.sha256(pattern(SIZE, seed + 1)).hexdigest()
    return time.monotonic() - started


async def test_chromium_dials_through_a_forged_source_flood(rig: Rig) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    flooder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from tests.webrtc.test_spoofed_stun import forged_flood as f; "
        "print(f(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))",
        str(rig.listener.port),
        rig.identity.certhash,
        str(RATE),
        "20",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(ROOT),
    )
    counters = rig.webrtc.gate.counters
    try:
        assert flooder.stdout is not None
        assert await asyncio.wait_for(flooder.stdout.readline(), 20) == b"flooding\n"
        async with asyncio.timeout(20):
            while counters.get("challenged", 0) < RATE * 2:
                await asyncio.sleep(0.1)
        proven_before = counters.get("proven", 0)
        during = [await both_ways(rig, 10 + 2 * n) for n in range(3)]
        # the flood held nothing: only the browser's own addresses were ever proven, every
        # answered entry and peer is the browser's, and the forged ClientHellos made no peer
        assert counters.get("proven", 0) > proven_before
        assert {addr[0] for addr in rig.webrtc._proven} <= {"127.0.0.1"}
        assert {addr[0] for addr in rig.webrtc._answered} <= {"127.0.0.1"}
        assert len(rig.webrtc._unproven) <= rig.webrtc.gate.settings.max_answered
        assert {a[0] for p in rig.webrtc.peers.values() for a in p.addresses} <= {"127.0.0.1"}
        assert counters.get("evicted", 0) == 0
        out, err = await asyncio.wait_for(flooder.communicate(), 40)
        assert flooder.returncode == 0, err.decode()
        sent = int(out.split()[-1])
    finally:
        if flooder.returncode is None:
            flooder.kill()
            await flooder.wait()
    after = await both_ways(rig, 40)
    print(
        f"forged checks {sent}, challenged {counters.get('challenged')}, "
        f"proven {counters.get('proven')}, dial+2 MiB during {during} s, after {after:.2f} s"
    )
    assert sent >= RATE * 10
    assert counters.get("challenged", 0) >= sent * 0.9
