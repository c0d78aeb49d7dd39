"""Secret handshake (shs1) and box-stream, byte-exact with npm secret-handshake / pull-box-stream.

``steps`` holds the handshake's cryptographic steps as pure functions, ``handshake`` the sans-IO
client and server machines built from them, ``boxstream`` the sans-IO frame encoder/decoder, and
``transform`` the asyncio shell that plugs ``shs`` into address chains.
"""

from __future__ import annotations

from .boxstream import BoxStreamDecoder, BoxStreamEncoder
from .handshake import SessionKeys, ShsClient, ShsHandshakeError, ShsServer

__all__ = [
    "BoxStreamDecoder",
    "BoxStreamEncoder",
    "SessionKeys",
    "ShsClient",
    "ShsHandshakeError",
    "ShsServer",
]
