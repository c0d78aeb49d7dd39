"""The WebRTC gate's limits as ``webrtc.*`` settings: ``max_pending``, ``pending_timeout`` and
``source_share`` are read through the one settings reader (a misspelt key is refused naming the
known ones) and take effect in a real listener: sources that prove they receive (they echo the
return-routability cookie, as a dialer's ICE agent does) and then send a ClientHello make
unfinished peers, which the configured cap, deadline and share bound."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import keywire
from keywire.identity import Identity
from keywire.kps.webrtc.server import WebRTCListener, listen_webrtc
from keywire.kps.webrtc.settings import WebRTCSettings
from keywire.options import Options
from keywire.server import Server
from tests.kps.test_hostile_stun import CLIENT_HELLO, valid_check

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("key", ["webrtc.max_pendng", "webrtc.pending_timout", "webrtc.share"])
async def test_a_misspelt_gate_setting_is_refused_naming_the_known_ones(key: str) -> None:
    with pytest.raises(ValueError, match=rf"unknown setting '{key}'") as caught:
        WebRTCSettings.from_options(Options(extra={key: 1}))
    for known in ("webrtc.max_pending", "webrtc.pending_timeout", "webrtc.source_share"):
        assert known in str(caught.value)
    with pytest.raises(ValueError, match=rf"unknown setting '{key}'.*webrtc.max_pending"):
        await keywire.dial("net:127.0.0.1:9~noauth", extra={key: 1}, timeout=1)
    server = Server("kps:127.0.0.1:0", Options(identity=Identity.generate(), extra={key: 1}))
    with pytest.raises(ValueError, match=rf"unknown setting '{key}'.*webrtc.source_share"):
        await server.start()
    await server.close()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"webrtc.max_pending": 0}, "webrtc.max_pending must be at least 1"),
        ({"webrtc.max_pending": "many"}, "webrtc.max_pending must be a whole number"),
        ({"webrtc.pending_timeout": "-1"}, "webrtc.pending_timeout must be positive"),
        ({"webrtc.pending_timeout": float("nan")}, "webrtc.pending_timeout must be positive"),
        ({"webrtc.source_share": 1.5}, r"webrtc.source_share must be in \(0, 1\]"),
        ({"webrtc.source_share": True}, "webrtc.source_share must be a number"),
    ],
)
def test_bad_gate_values_are_refused(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WebRTCSettings.from_options(Options(extra=extra))


def test_gate_values_reach_the_gate() -> None:
    settings = WebRTCSettings.from_options(
        Options(
            extra={
                "webrtc.max_pending": "3",
                "webrtc.pending_timeout": "1.5",
                "webrtc.source_share": 0.5,
            }
        )
    )
    gate = settings.gate
    assert (gate.max_pending, gate.pending_timeout, gate.source_share) == (3, 1.5, 0.5)
    assert WebRTCSettings().gate.max_pending == 64  # the defaults are unchanged


class ProvenDialer:
    """A UDP source that sends a valid check, echoes the listener's challenge (a Binding
    success with the challenge's transaction id, as an ICE agent answers), then sends a
    ClientHello-shaped record: the listener makes an unfinished peer for it."""

    def __init__(self, ip: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.sock.setblocking(False)

    async def start(self, port: int, digest: bytes) -> None:
        loop = asyncio.get_running_loop()
        target = ("127.0.0.1", port)
        await loop.sock_sendto(self.sock, valid_check(digest), target)
        async with asyncio.timeout(5):
            while True:
                data = await loop.sock_recv(self.sock, 2048)
                if data[:2] == b"\x00\x01":  # the challenge: a Binding request
                    break
        echo = struct.pack("!HHI", 0x0101, 0, 0x2112A442) + data[8:20]
        await loop.sock_sendto(self.sock, echo, target)
        async with asyncio.timeout(5):
            while (await loop.sock_recv(self.sock, 2048))[:2] != b"\x01\x01":
                pass  # the answer to the check, sent once the echo proved the address
        await loop.sock_sendto(self.sock, CLIENT_HELLO, target)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def identity() -> AsyncIterator[Identity]:
    yield Identity.generate()


async def open_listener(identity: Identity, extra: dict[str, Any]) -> tuple[WebRTCListener, Any]:
    async def ignore(_conn: object) -> None:
        return None

    return await listen_webrtc(identity, ignore, options=Options(extra=extra))


async def settle(listener: WebRTCListener, count: int, within: float = 3.0) -> int:
    deadline = time.monotonic() + within
    while len(listener.peers) != count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return len(listener.peers)


async def test_max_pending_and_pending_timeout_take_effect(identity: Identity) -> None:
    listener, demux = await open_listener(
        identity, {"webrtc.max_pending": 2, "webrtc.pending_timeout": 1.0}
    )
    dialers = [ProvenDialer(f"127.0.12.{n}") for n in range(1, 5)]
    try:
        for dialer in dialers:
            await dialer.start(demux.local_address[1], identity.cert_digest)
            await asyncio.sleep(0.05)
            assert len(listener.peers) <= 2  # the cap of 2
        assert listener.gate.counters.get("evicted", 0) >= 1
        assert listener.gate.counters.get("proven", 0) == 4
        started = time.monotonic()
        assert await settle(listener, 0, within=4.0) == 0  # never finished DTLS
        assert time.monotonic() - started < 2.0  # ended at the 1 s pending deadline
    finally:
        for dialer in dialers:
            dialer.close()
        await listener.close()
        demux.close()


async def test_source_share_takes_effect(identity: Identity) -> None:
    # max_peers 8 × share 0.25 = 2 peers per source; 4 from one IP keep only 2
    listener, demux = await open_listener(
        identity, {"webrtc.max_peers": 8, "webrtc.source_share": 0.25}
    )
    dialers = [ProvenDialer("127.0.13.1") for _ in range(4)] + [ProvenDialer("127.0.13.2")]
    try:
        for dialer in dialers:
            await dialer.start(demux.local_address[1], identity.cert_digest)
        assert await settle(listener, 3) == 3  # two from the crowded source, one from the other
        sources = sorted(peer.source for peer in listener.peers.values())
        assert sources == ["127.0.13.1", "127.0.13.1", "127.0.13.2"]
    finally:
        for dialer in dialers:
            dialer.close()
        await listener.close()
        demux.close()


def test_the_challenge_is_a_check_a_dialer_accepts() -> None:
    """USERNAME ``dialer:server`` (v1: the same ufrag twice), the cookie as transaction id,
    integrity with the dialer's password, a valid FINGERPRINT, ICE-CONTROLLED."""
    from aioice import stun

    from keywire.kps.webrtc.challenge import challenge_request, is_binding_success
    from keywire.kps.webrtc.ice import StunGate, check_fingerprint, check_integrity, parse_stun

    identity = Identity.generate()
    verdict = StunGate(identity.cert_digest).admit(
        valid_check(identity.cert_digest), "127.0.0.1", 0.0, peers=0
    )
    assert verdict.ufrag is not None
    raw = challenge_request(verdict, b"cookie-12byt", 7)
    message = stun.parse_message(raw)
    assert (message.message_method, message.message_class) == (
        stun.Method.BINDING,
        stun.Class.REQUEST,
    )
    assert message.transaction_id == b"cookie-12byt"
    assert message.attributes["USERNAME"] == f"{verdict.remote_ufrag}:{verdict.ufrag}"
    assert message.attributes["ICE-CONTROLLED"] == 7
    parsed = parse_stun(raw)
    assert check_integrity(raw, parsed, verdict.remote_password)
    assert check_fingerprint(raw, parsed)
    assert not is_binding_success(raw)
    assert is_binding_success(struct.pack("!HHI", 0x0101, 0, 0x2112A442) + bytes(12))
