"""Probe resistance (issue 18): an HTTP/3 client without the certhash sees an HTTP/3 server.

The prober is aioquic's HTTP/3 stack (an independent implementation): it completes the QUIC
handshake without checking the certificate, as a prober that does not know the certhash must,
then sends a GET. It must get the server's control stream with SETTINGS and a valid HTTP/3
response, never its own bytes back; the application must never see the prober's stream; and a
real KPS dial on the same listener still echoes byte-exact, including a stream whose first
bytes are themselves an HTTP/3 HEADERS frame.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Any

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StopSendingReceived, StreamDataReceived

from keywire.kps import KpsConnection, KpsSettings, dial

from .helpers import echo_stream, listening

pytestmark = pytest.mark.timeout(60)


class H3Prober(QuicConnectionProtocol):
    """aioquic client protocol driving an ``H3Connection``; records everything it is sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.events: list[H3Event] = []
        self.raw: dict[int, bytearray] = {}
        self.stopped: dict[int, int] = {}
        self.changed = asyncio.Event()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StopSendingReceived):
            self.stopped[event.stream_id] = event.error_code
        if isinstance(event, StreamDataReceived):
            self.raw.setdefault(event.stream_id, bytearray()).extend(event.data)
        self.events.extend(self.h3.handle_event(event))
        self.changed.set()

    async def wait_for(self, check: Any, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()


def probe_configuration() -> QuicConfiguration:
    return QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE)


class Recorder:
    """Echoes KPS streams and records what the application was shown."""

    def __init__(self) -> None:
        self.streams = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def __call__(self, conn: KpsConnection) -> None:
        async def run() -> None:
            async for stream in conn:
                self.streams += 1
                self._spawn(echo_stream(stream))  # type: ignore[arg-type]

        self._spawn(run())


async def kps_echo(port: int, certhash: str, payload: bytes) -> bytes:
    conn = await dial("127.0.0.1", port, certhash, KpsSettings())
    try:
        stream = await conn.open_stream()
        writer = asyncio.ensure_future(stream.write(payload))
        await writer
        await stream.close_write()
        received = bytearray()
        while chunk := await stream.read():
            received += chunk
        return bytes(received)
    finally:
        await conn.close()


async def test_an_http3_probe_gets_settings_and_a_404_and_kps_still_works() -> None:
    recorder = Recorder()
    async with listening(recorder) as listener, asyncio.timeout(30):
        async with connect(
            "127.0.0.1",
            listener.port,
            configuration=probe_configuration(),
            create_protocol=H3Prober,
            wait_connected=True,
        ) as client:
            prober: H3Prober = client  # type: ignore[assignment]
            # the server opens its control stream with SETTINGS without being asked
            await prober.wait_for(lambda: prober.h3.received_settings is not None)
            stream_id = prober._quic.get_next_available_stream_id()
            request = [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", f"127.0.0.1:{listener.port}".encode()),
                (b":path", b"/"),
                (b"user-agent", b"probe"),
            ]
            prober.h3.send_headers(stream_id, request, end_stream=True)
            prober.transmit()

            def answered() -> bool:
                return any(
                    isinstance(e, HeadersReceived) and e.stream_id == stream_id and e.stream_ended
                    for e in prober.events
                )

            await prober.wait_for(answered)
            headers = next(e for e in prober.events if isinstance(e, HeadersReceived))
            assert dict(headers.headers)[b":status"] == b"404"
            assert not any(isinstance(e, DataReceived) for e in prober.events)
            # the request stream carries a HEADERS frame from the server, not the request echoed
            request_bytes = bytes(prober.raw[stream_id])
            assert b"probe" not in request_bytes and b"GET" not in request_bytes
            # a second request on the same connection is answered alike
            second = prober._quic.get_next_available_stream_id()
            prober.h3.send_headers(second, request, end_stream=True)
            prober.transmit()
            await prober.wait_for(
                lambda: sum(isinstance(e, HeadersReceived) for e in prober.events) == 2
            )
            # an upload that never ends: answered at once, and its body stopped (H3_NO_ERROR)
            upload = prober._quic.get_next_available_stream_id()
            prober.h3.send_headers(upload, [(b":method", b"POST"), *request[1:]])
            prober.h3.send_data(upload, b"body" * 1000, end_stream=False)
            prober.transmit()
            await prober.wait_for(
                lambda: (
                    prober.stopped.get(upload) == 0x100
                    and sum(isinstance(e, HeadersReceived) for e in prober.events) == 3
                )
            )
            # the KPS application never saw the prober's streams
            assert recorder.streams == 0

            # a real KPS client on the same listener, meanwhile: echo byte-exact, including a
            # stream that starts with what looks like an HTTP/3 HEADERS frame
            payload = os.urandom(1 << 20)
            assert await kps_echo(listener.port, listener.identity.certhash, payload) == payload
            lookalike = bytes(prober.raw[stream_id]) + os.urandom(1000)
            assert lookalike[0] == 0x01  # HTTP/3 HEADERS frame type
            assert await kps_echo(listener.port, listener.identity.certhash, lookalike) == lookalike
            assert recorder.streams == 2
        answered_total = sum(
            getattr(c.session.quic, "requests_answered", 0) for c in listener.connections
        )
        assert answered_total <= 3


async def test_a_kps_client_ignores_the_servers_http3_streams() -> None:
    """Many streams on one KPS connection still work with the server's three HTTP/3 streams."""
    async with listening() as listener, asyncio.timeout(30):
        conn = await dial("127.0.0.1", listener.port, listener.identity.certhash, KpsSettings())
        try:

            async def one(i: int) -> None:
                stream = await conn.open_stream()
                data = bytes([i]) * 10_000
                await stream.write(data)
                await stream.close_write()
                got = bytearray()
                while chunk := await stream.read():
                    got += chunk
                assert bytes(got) == data

            await asyncio.gather(*(one(i) for i in range(8)))
            server = listener.connections[0]
            quic = server.session.quic
            assert quic.h3_streams is not None  # type: ignore[attr-defined]  (opened, SETTINGS sent)
            assert quic.h3 is None  # type: ignore[attr-defined]  (no HTTP/3 state for a KPS client)
            assert not quic.is_http3  # type: ignore[attr-defined]
        finally:
            await conn.close()
