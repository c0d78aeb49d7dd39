"""KPS (Key Pinned Streams) over native QUIC on qh3.

``kps:HOST:PORT:CERTHASH`` (or the bare ``IP:PORT:CERTHASH``) dials a QUIC server whose
certificate must hash to CERTHASH; a listener serves QUIC on one UDP socket that the WebRTC side
can share (``KpsListener.demux.webrtc``). Layout:

* ``settings`` — the ``kps.*`` limits and timers;
* ``quic`` — qh3 configurations, the pin, receive-credit gating;
* ``session`` — the sans-IO connection core (stream lifecycle, close codes, datagram sizing);
* ``router`` — sans-IO routing and admission of datagrams on a listener;
* ``udp`` — the socket owner and the QUIC/WebRTC demultiplexer;
* ``connection``, ``listener``, ``dialer`` — the asyncio shells; ``handler`` — the plugin.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING

from .connection import KpsConnection, KpsStream
from .dialer import dial
from .handler import KpsHandler, KpsListening
from .listener import KpsListener
from .settings import KpsSettings
from .webrtc.settings import WebRTCSettings

if TYPE_CHECKING:
    from ..registry import Registry

__all__ = [
    "KpsConnection",
    "KpsHandler",
    "KpsListener",
    "KpsListening",
    "KpsSettings",
    "KpsStream",
    "dial",
    "register",
]


def register(registry: Registry) -> None:
    registry.add_handler(KpsHandler())
    registry.declare_settings("kps", (f.name for f in fields(KpsSettings)))
    registry.declare_settings("webrtc", (f.name for f in fields(WebRTCSettings)))
