"""KPS WebRTC-direct: browsers (and a Python dialer) reach a KPS listener over data channels.

Layout (sans-IO cores first, then the asyncio shells):

* ``frames`` — wire v1 byte layouts; ``wire`` — the framing, credit and lifecycle engine;
* ``ice`` — the derived ICE password, strict STUN checks, the admission gate;
* ``sdp`` — the SDP both sides synthesize (KPS §2.5); ``settings`` — ``webrtc.*`` options;
* ``engine`` — the channel interface an engine provides; ``aiortc_engine`` — aiortc + aioice;
* ``connection`` — keywire's Connection/Stream over the engine; ``server`` — the listener hook
  for the shared UDP socket; ``dialer`` — the Python WebRTC dialer; ``demo`` — the demo page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .connection import WebRTCConnection
    from .dialer import dial_webrtc
    from .server import WebRTCListener
    from .settings import WebRTCSettings

__all__ = ["WebRTCConnection", "WebRTCListener", "WebRTCSettings", "dial_webrtc"]


def __getattr__(name: str) -> Any:
    """Import aiortc only when the WebRTC path is actually used (it is a heavy import)."""
    if name == "dial_webrtc":
        from .dialer import dial_webrtc

        return dial_webrtc
    if name == "WebRTCListener":
        from .server import WebRTCListener

        return WebRTCListener
    if name == "WebRTCSettings":
        from .settings import WebRTCSettings

        return WebRTCSettings
    if name == "WebRTCConnection":
        from .connection import WebRTCConnection

        return WebRTCConnection
    raise AttributeError(name)
