"""WebTransport over HTTP/3 by certificate hash, bound to the keywire identity.

See docs/webtransport.md.

* ``certs`` — short-lived P-256 certificates, rotation, storage beside the identity file;
* ``binding`` — the identity's signature over each certificate (sans-IO);
* ``wire`` — WebTransport stream headers, error-code mapping, capsules (sans-IO);
* ``adapter`` — WebTransport on qh3's HTTP/3 layer, presented to keywire's stream core;
* ``address`` — the ``webtransport:`` grammar; ``dialer``, ``listener`` — the shells;
  ``handler`` — the plugin; ``settings`` — ``webtransport.*``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .handler import WebTransportHandler, WebTransportListening
from .settings import KNOWN, WtSettings

if TYPE_CHECKING:
    from ..registry import Registry

__all__ = ["WebTransportHandler", "WebTransportListening", "WtSettings", "register"]


def register(registry: Registry) -> None:
    registry.add_handler(WebTransportHandler())
    registry.declare_settings("webtransport", KNOWN)
