"""Shared pieces of the WebRTC tests (importable by name: tests/webrtc is on sys.path)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from keywire.identity import Identity
from keywire.kps.webrtc.connection import WebRTCConnection
from keywire.kps.webrtc.server import WebRTCListener


@dataclass
class Served:
    identity: Identity
    listener: WebRTCListener
    demux: Any
    accepted: asyncio.Queue[WebRTCConnection] = field(default_factory=asyncio.Queue)

    @property
    def port(self) -> int:
        return int(self.demux.local_address[1])

    @property
    def certhash(self) -> str:
        return self.identity.certhash

    async def next_connection(self, timeout: float = 10.0) -> WebRTCConnection:
        async with asyncio.timeout(timeout):
            return await self.accepted.get()
