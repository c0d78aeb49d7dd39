"""KPS over native QUIC on qh3: everything in ``kps`` that only the QUIC side uses.

The WebRTC side (``kps.webrtc``) and this package share ``kps.settings``, the UDP socket and
demultiplexer (``kps.udp``), the receive budget and the handler glue; those stay in ``kps``.
Layout:

* ``configuration`` — qh3 configurations, the pin, receive-credit gating;
* ``session`` — the sans-IO connection core (stream lifecycle, close codes, datagram sizing);
* ``router``, ``retry`` — sans-IO routing, admission and Retry of datagrams on a listener;
* ``probe`` — answering HTTP/3 probes; ``reclaim`` — giving memory back after big connections;
* ``connection``, ``listener``, ``dialer`` — the asyncio shells.

The qh3 configuration helpers are re-exported here, so ``keywire.kps.quic.client_configuration``
keeps working.
"""

from __future__ import annotations

from .configuration import GatedQuicConnection, client_configuration, server_configuration

__all__ = [
    "GatedQuicConnection",
    "client_configuration",
    "server_configuration",
]
