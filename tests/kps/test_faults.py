"""Faults between client and server: loss, reordering, duplication, a dead path."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

from keywire.errors import Code, ConnectionClosed
from keywire.kps import KpsSettings, dial

from .helpers import Collector, listening
from .udp_proxy import Faults, UdpProxy

pytestmark = pytest.mark.timeout(60)


async def test_32_mb_arrive_byte_exact_through_loss_reordering_and_duplication() -> None:
    payload = os.urandom(32 << 20)
    seen = Collector()
    async with (
        listening(seen) as listener,
        UdpProxy(
            ("127.0.0.1", listener.port), Faults(drop=0.05, reorder=0.05, duplicate=0.05, seed=7)
        ) as proxy,
    ):
        conn = await dial(
            "127.0.0.1", proxy.port, listener.identity.certhash, KpsSettings(handshake_timeout=10)
        )
        stream = await conn.open_stream()

        async def send() -> None:
            await stream.write(payload)
            await stream.close_write()

        sender = asyncio.ensure_future(send())
        server = await seen.first(10)
        peer = await server.accept_stream()
        digest = hashlib.sha256()
        received = 0
        async with asyncio.timeout(45):
            while chunk := await peer.read():
                digest.update(chunk)
                received += len(chunk)
            await sender
        assert received == len(payload)
        assert digest.digest() == hashlib.sha256(payload).digest()
        counters = proxy.counters
        assert counters.dropped > 100 and counters.duplicated > 100 and counters.reordered > 100
        await conn.close()


async def test_a_proxy_that_stops_forwarding_fails_both_sides_with_timeout() -> None:
    idle = 1.5
    settings = KpsSettings(idle_timeout=idle)
    seen = Collector()
    async with (
        listening(seen, settings=settings) as listener,
        UdpProxy(("127.0.0.1", listener.port)) as proxy,
    ):
        conn = await dial("127.0.0.1", proxy.port, listener.identity.certhash, settings)
        stream = await conn.open_stream()
        await stream.write(b"before")
        server = await seen.first()
        peer = await server.accept_stream()
        assert await peer.readexactly(6) == b"before"
        proxy.faults.blackhole = True
        started = time.monotonic()
        await stream.write(b"into the void")
        client_error, server_error = await asyncio.wait_for(
            asyncio.gather(conn.wait_closed(), server.wait_closed()), idle * 3
        )
        elapsed = time.monotonic() - started
        for error in (client_error, server_error):
            assert isinstance(error, ConnectionClosed)
            assert error.code == Code.TIMEOUT and not error.remote
        assert elapsed <= idle * 2.5
        with pytest.raises(Exception) as info:
            await peer.read()
        assert getattr(info.value, "code", None) == Code.TIMEOUT
