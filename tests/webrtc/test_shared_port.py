"""QUIC and WebRTC on one UDP port: a KPS listener with the WebRTC hook attached to its socket."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from keywire.identity import Identity
from keywire.kps.quic.dialer import dial as dial_quic
from keywire.kps.quic.listener import KpsListener
from keywire.kps.settings import KpsSettings
from keywire.kps.webrtc.dialer import dial_webrtc
from keywire.kps.webrtc.server import attach
from keywire.stream import Connection

pytestmark = pytest.mark.timeout(60)


async def _echo(conn: Connection) -> None:
    async def one(stream) -> None:  # type: ignore[no-untyped-def]
        while chunk := await stream.read():
            await stream.write(chunk)
        await stream.close_write()

    async for stream in conn:
        asyncio.get_running_loop().create_task(one(stream))


async def _round_trip(conn: Connection, size: int) -> bool:
    payload = os.urandom(size)
    stream = await conn.open_stream()

    async def send() -> None:
        await stream.write(payload)
        await stream.close_write()

    sender = asyncio.create_task(send())
    got = await stream.read_all()
    await sender
    return hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


async def test_quic_and_webrtc_clients_at_once() -> None:
    identity = Identity.generate()
    settings = KpsSettings()
    tasks: set[asyncio.Task[None]] = set()

    async def on_connection(conn: Connection) -> None:
        task = asyncio.create_task(_echo(conn))
        tasks.add(task)

    listener = KpsListener(identity, settings, on_connection)
    await listener.start("127.0.0.1", 0)
    assert listener.demux is not None
    webrtc = attach(listener.demux, identity, on_connection)
    port = listener.port
    try:
        quic_conn = await dial_quic("127.0.0.1", port, identity.certhash, settings)
        web_conn = await dial_webrtc("127.0.0.1", port, identity.certhash)
        assert str(web_conn.address) == f"kps:127.0.0.1:{port}:{identity.certhash}"
        results = await asyncio.gather(
            _round_trip(quic_conn, 4 << 20), _round_trip(web_conn, 4 << 20)
        )
        assert list(results) == [True, True]
        assert listener.demux.counts["webrtc"] > 0 and listener.demux.counts["quic"] > 0
        await web_conn.close()
        await quic_conn.close()
    finally:
        await webrtc.close()
        await listener.close(abort_connections=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
