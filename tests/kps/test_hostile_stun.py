"""WebRTC STUN admission under a flood of *valid* checks (issue 18, item 6). Known to fail today.

The ICE password derives from the public certhash (KPS wire v1), so anyone with the address can
send checks that pass MESSAGE-INTEGRITY. Each check from a new source address spawns a peer
(aiortc ICE/DTLS state) that lives until the WebRTC handshake timeout (15 s). 200 checks/s from
fresh ports on 64 loopback IPs fill the 256-peer cap in about 1.3 s and keep it full, and a
legitimate dial times out. The per-IP token bucket (50/s) does not help against many sources.

This test states the requirement (a real dial succeeds during the flood) and is marked
``xfail(strict=True)`` until browser admission is redesigned in ``webrtc/ice.py`` and
``webrtc/server.py`` (engineer G, wire v2): then it passes, the strict marker fails the run,
and the marker must be removed.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path

import pytest

from keywire.kps.webrtc.dialer import WebRTCDialError, dial_webrtc
from keywire.kps.webrtc.settings import WebRTCSettings

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]

SERVER = """
import asyncio, contextlib, json, sys
from keywire.identity import Identity
from keywire.kps.webrtc.server import listen_webrtc

async def echo(conn):
    async for stream in conn:
        with contextlib.suppress(Exception):
            while data := await stream.read(65536):
                await stream.write(data)
            await stream.close_write()

async def main():
    identity = Identity.generate()
    listener, demux = await listen_webrtc(identity, echo, host="127.0.0.1")
    print(json.dumps({"port": demux.local_address[1], "certhash": identity.certhash}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():
        print(json.dumps({"peers": len(listener.peers), "gate": listener.gate.counters}),
              flush=True)

asyncio.run(main())
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def valid_check(digest: bytes) -> bytes:
    """A wire v1 Binding request that passes integrity: the password is public (certhash)."""
    from aioice import stun

    from keywire.kps.webrtc.ice import derive_ice_password

    ufrag = secrets.token_hex(8)
    message = stun.Message(message_method=stun.Method.BINDING,
                           message_class=stun.Class.REQUEST)
    message.attributes["USERNAME"] = f"{ufrag}:{ufrag}"
    message.attributes["PRIORITY"] = 1853824767
    message.attributes["ICE-CONTROLLING"] = 1
    message.attributes["USE-CANDIDATE"] = None
    message.add_message_integrity(derive_ice_password(digest, ufrag).encode())
    message.add_fingerprint()
    return bytes(message)


def flood(port: int, certhash: str, rate: int, seconds: float, ips: int = 64) -> int:
    """``rate`` valid checks per second, each from a fresh port on one of ``ips`` addresses."""
    from keywire.identity import decode_certhash

    digest = decode_certhash(certhash)
    sockets: list[socket.socket] = []
    sent = 0
    print("flooding", flush=True)
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        while sent < int(elapsed * rate):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((f"127.0.3.{sent % ips + 1}", 0))
            sock.sendto(valid_check(digest), ("127.0.0.1", port))
            sockets.append(sock)
            if len(sockets) > 1000:
                sockets.pop(0).close()
            sent += 1
        time.sleep(0.005)
    for sock in sockets:
        sock.close()
    return sent


@pytest.mark.xfail(strict=True, raises=WebRTCDialError,
                   reason="STUN admission: a flood of valid checks fills the peer cap "
                   "(webrtc/ice.py, webrtc/server.py; see the KPS report)")
async def test_a_browser_dial_gets_through_a_flood_of_valid_stun_checks() -> None:
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env())
    flooder = None
    try:
        assert server.stdout is not None and server.stdin is not None
        hello = json.loads(await asyncio.wait_for(server.stdout.readline(), 20))
        port, certhash = hello["port"], hello["certhash"]
        flooder = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "flood", str(port), certhash, "200", "25",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env())
        assert flooder.stdout is not None
        assert await asyncio.wait_for(flooder.stdout.readline(), 20) == b"flooding\n"
        # wait until the flood has filled the cap, so the outcome does not hang on timing
        stats: dict[str, object] = {}
        for _ in range(30):
            server.stdin.write(b"stats\n")
            await server.stdin.drain()
            stats = json.loads(await asyncio.wait_for(server.stdout.readline(), 10))
            if int(str(stats["peers"])) >= 256:
                break
            await asyncio.sleep(0.5)
        print("during the flood:", stats)
        conn = await dial_webrtc("127.0.0.1", port, certhash,
                                 settings=WebRTCSettings(handshake_timeout=8))
        try:
            stream = await conn.open_stream()
            await stream.write(b"x" * 1000)
            await stream.close_write()
            assert await stream.read_all() == b"x" * 1000
        finally:
            await conn.close()
    finally:
        for proc in (flooder, server):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 10)


if __name__ == "__main__" and sys.argv[1:2] == ["flood"]:
    print(flood(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
