"""KPS (Key Pinned Streams) over native QUIC on qh3.

``kps:HOST:PORT:CERTHASH`` (or the bare ``IP:PORT:CERTHASH``) dials a QUIC server whose
certificate must hash to CERTHASH; a listener serves QUIC on one UDP socket that the WebRTC side
can share (``KpsListener.demux.webrtc``). Layout:

* ``settings`` — the ``kps.*`` limits and timers;
* ``udp`` — the socket owner, the QUIC/WebRTC demultiplexer and name resolution;
* ``budget`` — the listener-wide receive budget (sans-IO);
* ``handler`` — the plugin, dialing and listening on either side;
* ``quic`` — the native QUIC side on qh3 (configurations and the pin, the sans-IO session and
  router, the ``connection``/``listener``/``dialer`` shells);
* ``webrtc`` — the browser WebRTC side on the same port.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING

from .handler import KpsHandler, KpsListening
from .quic.connection import KpsConnection, KpsStream
from .quic.dialer import dial
from .quic.listener import KpsListener
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
