"""KPS §4's adversarial rows against the real listener, and bad input on its UDP socket.

A scripted peer drives a real aiortc link (ICE, DTLS, SCTP) but writes raw wire-v1 bytes, so the
server's reaction to each violation is observed on the wire: the CONNECTION_CLOSE code it sends.
"""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from aiortc import RTCCertificate

from keywire.errors import Code
from keywire.kps.webrtc import frames as f
from keywire.kps.webrtc.aiortc_engine import AiortcLink, DialerIce, RemoteDescription
from keywire.kps.webrtc.dialer import dial_webrtc
from keywire.kps.webrtc.ice import derive_ice_password
from keywire.kps.webrtc.sdp import random_ufrag, server_answer

from .wrtc_helpers import Served

pytestmark = pytest.mark.timeout(60)

HELLO = f.encode_hello(f.Hello(1, 1 << 20, 8 << 20, 100))


class ScriptedPeer:
    """Records what the server sends; the test writes raw messages through ``link``."""

    def __init__(self) -> None:
        self.control: list[bytes] = []
        self.opened = asyncio.Event()
        self.changed = asyncio.Event()
        self.lost: str | None = None

    def on_control_open(self) -> None:
        self.opened.set()

    def on_control_message(self, data: bytes) -> None:
        self.control.append(data)
        self.changed.set()

    def on_datagram(self, data: bytes) -> None:
        pass

    def on_channel_open(self, channel: int) -> None:
        pass

    def on_channel_message(self, channel: int, data: bytes) -> None:
        pass

    def on_channel_closed(self, channel: int) -> None:
        pass

    def on_lost(self, reason: str) -> None:
        self.lost = reason
        self.changed.set()

    def on_violation(self, reason: str) -> None:
        self.lost = reason
        self.changed.set()

    def on_activity(self) -> None:
        pass

    async def close_code(self, timeout: float = 10.0) -> int:
        """The code of the CONNECTION_CLOSE the server sent."""
        async with asyncio.timeout(timeout):
            while True:
                for message in self.control:
                    decoded = f.decode_control(message)
                    if isinstance(decoded, f.ConnectionClose):
                        return decoded.code
                self.changed.clear()
                await self.changed.wait()


async def scripted(served: Served) -> tuple[AiortcLink, ScriptedPeer]:
    ufrag = random_ufrag()
    password = derive_ice_password(served.identity.cert_digest, ufrag)
    answer = RemoteDescription(
        server_answer("127.0.0.1", served.port, ufrag, password, served.identity.cert_digest)
    )
    link = AiortcLink(
        DialerIce(ufrag=ufrag, password=password, server_ip="127.0.0.1"),
        RTCCertificate.generateCertificate(),
        server=False,
    )
    peer = ScriptedPeer()
    link.events = peer
    async with asyncio.timeout(10):
        await link.start(answer)
        await peer.opened.wait()
    return link, peer


async def test_server_hello_is_first(served: Served) -> None:
    link, peer = await scripted(served)
    async with asyncio.timeout(5):
        while not peer.control:
            await peer.changed.wait()
    hello = f.decode_control(peer.control[0])
    assert hello == f.Hello(1, 1 << 20, 8 << 20, 100)
    await link.close(flush=False)


async def test_bad_hello_version_closes_unsupported(served: Served) -> None:
    link, peer = await scripted(served)
    link.send(0, bytes([1, 2]) + bytes(24))
    assert await peer.close_code() == Code.UNSUPPORTED
    await link.close(flush=False)
    assert served.accepted.empty()
    await asyncio.sleep(0.1)
    assert not served.listener.peers  # the refused peer is forgotten


async def test_max_data_before_hello(served: Served) -> None:
    link, peer = await scripted(served)
    link.send(0, f.encode_max_data(1 << 30))
    assert await peer.close_code() == Code.PROTOCOL_ERROR
    await link.close(flush=False)
    await asyncio.sleep(0.1)
    assert not served.listener.peers


async def test_duplicate_hello(served: Served) -> None:
    link, peer = await scripted(served)
    link.send(0, HELLO)
    link.send(0, HELLO)
    assert await peer.close_code() == Code.PROTOCOL_ERROR
    await link.close(flush=False)


async def test_stream_credit_overrun(served: Served) -> None:
    link, peer = await scripted(served)
    link.send(0, HELLO)
    link.open_channel(2)
    chunk = f.encode_data(bytes(f.MAX_DATA_PAYLOAD))
    for _ in range((1 << 20) // f.MAX_DATA_PAYLOAD + 1):
        link.send(2, chunk)
    assert await peer.close_code() == Code.PROTOCOL_ERROR
    conn = await served.next_connection()
    closed = await asyncio.wait_for(conn.wait_closed(), 5)
    assert closed.code == Code.PROTOCOL_ERROR and "stream credit" in str(closed)
    await link.close(flush=False)


async def test_data_after_fin(served: Served) -> None:
    link, peer = await scripted(served)
    link.send(0, HELLO)
    link.open_channel(2)
    link.send(2, f.encode_data(b"x"))
    link.send(2, f.encode_fin())
    link.send(2, f.encode_data(b"late"))
    assert await peer.close_code() == Code.PROTOCOL_ERROR
    await link.close(flush=False)


async def test_wrong_parity_stream(served: Served) -> None:
    link, peer = await scripted(served)
    link.send(0, HELLO)
    link.open_channel(3)  # odd ids are the server's
    assert await peer.close_code() == Code.PROTOCOL_ERROR
    await link.close(flush=False)


async def test_reserved_channel_loss(served: Served) -> None:
    link, peer = await scripted(served)
    link.send(0, HELLO)
    conn = await served.next_connection()
    link.close_channel(1)
    assert await peer.close_code() == Code.PROTOCOL_ERROR
    closed = await asyncio.wait_for(conn.wait_closed(), 5)
    assert "reserved channel 1" in str(closed)
    await link.close(flush=False)


async def test_no_hello_times_out(served: Served) -> None:
    served.listener.settings = type(served.listener.settings)(handshake_timeout=1.0)
    link, peer = await scripted(served)
    assert await peer.close_code(timeout=5) == Code.TIMEOUT
    await link.close(flush=False)


# -- bad input on the socket -------------------------------------------------------------------
def _stun_request(ufrag: str, password: str) -> bytes:
    from aioice import stun

    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    msg.attributes["USERNAME"] = f"{ufrag}:{ufrag}"
    msg.attributes["PRIORITY"] = 1
    msg.attributes["ICE-CONTROLLING"] = 1
    msg.add_message_integrity(password.encode())
    msg.add_fingerprint()
    return bytes(msg)


async def test_stun_flood_with_random_ufrags_allocates_nothing(served: Served) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        for _ in range(300):
            ufrag = os.urandom(9).hex()
            sock.sendto(
                _stun_request(ufrag, derive_ice_password(os.urandom(32), ufrag)),
                ("127.0.0.1", served.port),
            )
        await asyncio.sleep(0.5)
        assert not served.listener.peers
        with pytest.raises(BlockingIOError):
            sock.recv(2048)  # not one answer
        counters = served.listener.gate.counters
        assert counters.get("admitted", 0) == 0
        assert counters.get("integrity", 0) + counters.get("rate", 0) == 300
    finally:
        sock.close()
    client = await dial_webrtc("127.0.0.1", served.port, served.certhash)
    await client.close()


async def test_random_datagrams_leave_server_serving(served: Served) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        cookie = b"\x21\x12\xa4\x42"
        for n in range(1000):
            body = os.urandom(n % 300)
            if n % 3 == 0:  # STUN-shaped garbage
                body = bytes([n % 4, 1]) + len(body).to_bytes(2, "big") + cookie + bytes(12) + body
            elif n % 3 == 1:  # DTLS-looking garbage
                body = bytes([22, 254, 253]) + body
            sock.sendto(body, ("127.0.0.1", served.port))
            if n % 100 == 0:
                await asyncio.sleep(0)
    finally:
        sock.close()
    await asyncio.sleep(0.3)
    assert not served.listener.peers
    client = await dial_webrtc("127.0.0.1", served.port, served.certhash)
    server = await served.next_connection()
    stream = await client.open_stream()
    await stream.write(b"still here")
    await stream.close_write()
    assert await (await server.accept_stream()).read_all() == b"still here"
    await client.close()


async def test_peer_cap(served: Served) -> None:
    served.listener.gate.settings = type(served.listener.gate.settings)(max_peers=1)
    first = await dial_webrtc("127.0.0.1", served.port, served.certhash)
    from keywire.kps.webrtc.dialer import WebRTCDialError
    from keywire.options import Options

    with pytest.raises(WebRTCDialError):
        await dial_webrtc("127.0.0.1", served.port, served.certhash, Options(timeout=1.0))
    assert served.listener.gate.counters.get("peer-cap", 0) >= 1
    await first.close()


async def test_half_open_peer_is_dropped_after_handshake_timeout(served: Served) -> None:
    import dataclasses

    gate = served.listener.gate
    gate.settings = dataclasses.replace(gate.settings, pending_timeout=1.0)
    ufrag = os.urandom(9).hex()
    password = derive_ice_password(served.identity.cert_digest, ufrag)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    try:
        sock.sendto(_stun_request(ufrag, password), ("127.0.0.1", served.port))
        recv = asyncio.get_running_loop().run_in_executor
        challenge = await recv(None, sock.recv, 2048)
        assert challenge[:2] == b"\x00\x01"  # first the listener's own check (the cookie)
        assert not served.listener.peers and not served.listener.knows(sock.getsockname())
        echo = b"\x01\x01\x00\x00\x21\x12\xa4\x42" + challenge[8:20]  # as an ICE agent answers
        sock.sendto(echo, ("127.0.0.1", served.port))
        answer = await recv(None, sock.recv, 2048)
        assert answer[:2] == b"\x01\x01"  # a Binding success response: the check was right
        assert not served.listener.peers  # answered statelessly: nothing allocated yet
        # a DTLS ClientHello (record type 22, epoch 0, handshake type 1) from that address
        hello = bytes([22, 0xFE, 0xFD]) + bytes(8) + (100).to_bytes(2, "big") + b"\x01"
        sock.sendto(hello + os.urandom(99), ("127.0.0.1", served.port))
        await asyncio.sleep(0.3)
        assert list(served.listener.peers) == [ufrag]
        await asyncio.sleep(1.5)  # its DTLS never finishes: gone after pending_timeout
        assert not served.listener.peers  # no DTLS ever came: the peer was torn down
        assert not served.listener.knows(sock.getsockname())
    finally:
        sock.close()


async def test_connect_close_cycles_leave_nothing_behind(served: Served) -> None:
    client = await dial_webrtc("127.0.0.1", served.port, served.certhash)  # warm up imports
    await client.close()
    await asyncio.wait_for((await served.next_connection()).wait_closed(), 5)
    await asyncio.sleep(0.2)
    before = len(asyncio.all_tasks())
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        client = await dial_webrtc("127.0.0.1", served.port, served.certhash)
        server = await served.next_connection()
        stream = await client.open_stream()
        await stream.write(b"x")
        await client.close()
        await asyncio.wait_for(server.wait_closed(), 5)
    await asyncio.sleep(0.5)
    assert not served.listener.peers
    assert not served.listener._by_addr
    assert len(asyncio.all_tasks()) <= before + 2
    assert len(os.listdir("/proc/self/fd")) <= fds + 2  # every dialer socket was closed
