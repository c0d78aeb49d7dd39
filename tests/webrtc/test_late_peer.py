"""The Python dialer against a server that answers late, as KPS's servers do.

A libjuice/pion server leaves a new peer's first STUN check unanswered (it creates its agent on
it) and may miss the first DTLS flight; with aioice's 0.5 s and OpenSSL's 1 s retransmission
timers that made a dial take 1.5–2 s. The peer here is keywire's listener behind a UDP relay
that drops exactly those two packets; the dialer must still connect in ≤ 150 ms.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import pytest

from keywire.kps.webrtc.dialer import dial_webrtc
from keywire.kps.webrtc.ice import looks_like_stun
from keywire.options import Options

from .wrtc_helpers import Served

pytestmark = pytest.mark.timeout(60)


class _Side(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Any) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.on_datagram(data, addr)


class LateRelay:
    """A UDP relay for one dialer that drops its first STUN check and its first DTLS packet."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.client: tuple[Any, ...] | None = None
        self.dropped: list[str] = []
        self.front: _Side = _Side(self._from_client)
        self.back: _Side = _Side(self._from_server)

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self.front, local_addr=("127.0.0.1", 0))
        await loop.create_datagram_endpoint(lambda: self.back, local_addr=("127.0.0.1", 0))
        assert self.front.transport is not None
        return int(self.front.transport.get_extra_info("sockname")[1])

    def _from_client(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.client = addr
        if looks_like_stun(data) and data[:2] == b"\x00\x01" and "stun" not in self.dropped:
            self.dropped.append("stun")
            return
        if data and 20 <= data[0] <= 63 and "dtls" not in self.dropped:
            self.dropped.append("dtls")
            return
        assert self.back.transport is not None
        self.back.transport.sendto(data, self.server)

    def _from_server(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.client is not None and self.front.transport is not None:
            self.front.transport.sendto(data, self.client)

    def close(self) -> None:
        for side in (self.front, self.back):
            if side.transport is not None:
                side.transport.close()


@pytest.mark.parametrize("wire", [1, 2])
async def test_dialer_connects_fast_to_a_late_answering_peer(served: Served, wire: int) -> None:
    options = Options(timeout=10.0, extra={"webrtc.wire_version": wire})
    times = []
    for _ in range(5):
        relay = LateRelay(("127.0.0.1", served.port))
        port = await relay.start()
        try:
            started = time.perf_counter()
            conn = await dial_webrtc("127.0.0.1", port, served.certhash, options)
            times.append(time.perf_counter() - started)
            assert relay.dropped == ["stun", "dtls"]  # the peer really answered late
            server = await served.next_connection()
            stream = await conn.open_stream()
            await stream.write(b"late")
            await stream.close_write()
            peer = await server.accept_stream()
            assert await peer.read_all() == b"late"
            await conn.close()
        finally:
            relay.close()
    median = statistics.median(times)
    assert median <= 0.150, f"connect times {[round(t * 1000) for t in times]} ms"
