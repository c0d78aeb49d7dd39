"""A WebRTC listener on loopback whose accepted connections the test drives itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from keywire.identity import Identity
from keywire.kps.webrtc.connection import WebRTCConnection
from keywire.kps.webrtc.server import listen_webrtc

from .wrtc_helpers import Served


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    identity = Identity.generate()
    accepted: asyncio.Queue[WebRTCConnection] = asyncio.Queue()

    async def on_connection(conn: WebRTCConnection) -> None:
        await accepted.put(conn)

    listener, demux = await listen_webrtc(identity, on_connection)
    yield Served(identity, listener, demux, accepted)
    await listener.close()
    demux.close()
