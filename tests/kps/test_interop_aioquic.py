"""Interop with an independent QUIC stack (aioquic): ALPN h3, pin by hash, streams + datagrams."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ssl
from typing import Any

import pytest
from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import (
    DatagramFrameReceived,
    HandshakeCompleted,
    QuicEvent,
    StreamDataReceived,
)
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from keywire.errors import PinMismatch
from keywire.identity import Identity
from keywire.kps import KpsSettings, dial

from .helpers import listening

pytestmark = pytest.mark.timeout(30)


class RecordingProtocol(QuicConnectionProtocol):
    """aioquic client side: collects stream bytes and datagrams."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams: dict[int, bytearray] = {}
        self.finished: dict[int, asyncio.Event] = {}
        self.datagrams: asyncio.Queue[bytes] = asyncio.Queue()
        self.alpn: str | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.alpn = event.alpn_protocol
        elif isinstance(event, StreamDataReceived):
            self.streams.setdefault(event.stream_id, bytearray()).extend(event.data)
            done = self.finished.setdefault(event.stream_id, asyncio.Event())
            if event.end_stream:
                done.set()
        elif isinstance(event, DatagramFrameReceived):
            self.datagrams.put_nowait(event.data)
        if not isinstance(event, StreamDataReceived):
            super().quic_event_received(event)


class EchoProtocol(QuicConnectionProtocol):
    """aioquic server side: echoes stream data (FIN included) and datagrams."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ended: set[int] = set()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            if event.stream_id in self.ended:
                return
            if event.end_stream:
                self.ended.add(event.stream_id)
            self._quic.send_stream_data(event.stream_id, event.data, event.end_stream)
            self.transmit()
        elif isinstance(event, DatagramFrameReceived):
            self._quic.send_datagram_frame(event.data)
            self.transmit()
        else:
            # not for stream events: aioquic's default makes a StreamWriter whose garbage
            # collection sends FIN on the stream
            super().quic_event_received(event)


def presented_digest(protocol: QuicConnectionProtocol) -> bytes:
    certificate = protocol._quic.tls._peer_certificate
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()


async def test_aioquic_client_to_keywire_server() -> None:
    async with listening() as listener:
        config = QuicConfiguration(
            is_client=True,
            alpn_protocols=["h3"],
            verify_mode=ssl.CERT_NONE,
            max_datagram_frame_size=65536,
        )
        async with connect(
            "127.0.0.1", listener.port, configuration=config, create_protocol=RecordingProtocol
        ) as client:
            assert isinstance(client, RecordingProtocol)
            # the pin: checked right after the handshake, before any application data
            assert hmac.compare_digest(presented_digest(client), listener.identity.cert_digest)
            assert client.alpn == "h3"
            quic = client._quic
            for size in (5, 300_000):
                stream_id = quic.get_next_available_stream_id()
                payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
                client.finished[stream_id] = asyncio.Event()
                quic.send_stream_data(stream_id, payload, end_stream=True)
                client.transmit()
                await asyncio.wait_for(client.finished[stream_id].wait(), 10)
                assert bytes(client.streams[stream_id]) == payload
            got = b""
            for _ in range(30):
                quic.send_datagram_frame(b"datagram from aioquic")
                client.transmit()
                with contextlib.suppress(TimeoutError):
                    got = await asyncio.wait_for(client.datagrams.get(), 0.1)
                    break
            assert got == b"datagram from aioquic"


@contextlib.asynccontextmanager
async def aioquic_server(identity: Identity):  # type: ignore[no-untyped-def]
    config = QuicConfiguration(
        is_client=False, alpn_protocols=["h3"], max_datagram_frame_size=65536
    )
    config.certificate = x509.load_der_x509_certificate(identity.certificate_der)
    config.private_key = identity.p256_key
    server = await serve("127.0.0.1", 0, configuration=config, create_protocol=EchoProtocol)
    try:
        yield server._transport.get_extra_info("sockname")[1]
    finally:
        server.close()


async def test_keywire_client_to_aioquic_server() -> None:
    identity = Identity.generate()
    async with aioquic_server(identity) as port:
        conn = await dial("127.0.0.1", port, identity.certhash, KpsSettings())
        streams = [await conn.open_stream() for _ in range(3)]
        payloads = [b"a" * 10, b"b" * 200_000, b"c"]
        for stream, payload in zip(streams, payloads, strict=True):
            await stream.write(payload)
            await stream.close_write()
        for stream, payload in zip(streams, payloads, strict=True):
            got = await asyncio.wait_for(stream.read_all(), 10)
            assert len(got) == len(payload) and got == payload
        got = b""
        for _ in range(30):
            conn.send_datagram(b"datagram from keywire")
            with contextlib.suppress(TimeoutError):
                got = await asyncio.wait_for(conn.receive_datagram(), 0.1)
                break
        assert got == b"datagram from keywire"
        await conn.close()


async def test_keywire_client_rejects_an_aioquic_server_with_another_certificate() -> None:
    identity = Identity.generate()
    wrong = Identity.generate()
    async with aioquic_server(identity) as port:
        with pytest.raises(PinMismatch) as info:
            await dial("127.0.0.1", port, wrong.certhash, KpsSettings())
        assert info.value.actual == identity.certhash


async def test_the_server_requires_alpn_h3() -> None:
    async with listening() as listener:
        config = QuicConfiguration(
            is_client=True, alpn_protocols=["kps/1"], verify_mode=ssl.CERT_NONE
        )
        with pytest.raises(ConnectionError):
            async with (
                asyncio.timeout(5),
                connect("127.0.0.1", listener.port, configuration=config),
            ):
                pass
        await asyncio.sleep(0.1)
        assert all(not c.session.handshake_done for c in listener.connections)
