"""Moving a sans-IO WebSocket's output to its TCP transport, for the relay and its node links."""

from __future__ import annotations

import asyncio

from websockets.protocol import Protocol


def flush_ws(ws: Protocol, transport: asyncio.Transport | None) -> bool:
    """Write what ``ws`` has queued to ``transport`` (nothing once it is closing). True when
    ``ws`` asked for the TCP connection to end (websockets says so with an empty chunk, its
    last); the caller decides whether to close it."""
    if transport is None or transport.is_closing():
        return False
    for chunk in ws.data_to_send():
        if not chunk:
            return True
        transport.write(chunk)
    return False
