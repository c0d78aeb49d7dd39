"""keywire: secure byte streams to a peer named by its key.

The public API in one place: ``dial`` an address, run a ``Server`` on listen specs, and use the
``Connection`` / ``Stream`` contract that every transport shares.
"""

from __future__ import annotations

from .address import Alternative, MultiAddress, Scope, Section, parse
from .dial import dial, open_stream
from .errors import (
    AddressError,
    Attempt,
    Code,
    CodedError,
    ConnectionClosed,
    DatagramTooLarge,
    DialError,
    HandshakeError,
    IdentityError,
    KeywireError,
    PinMismatch,
    StreamError,
    UnsupportedError,
)
from .identity import Identity, decode_certhash, encode_certhash
from .options import SSB_APP_KEY, Options
from .server import Server, listen
from .stream import Connection, RemoteIdentity, Stream

__version__ = "0.1.0"

__all__ = [
    "SSB_APP_KEY",
    "AddressError",
    "Alternative",
    "Attempt",
    "Code",
    "CodedError",
    "Connection",
    "ConnectionClosed",
    "DatagramTooLarge",
    "DialError",
    "HandshakeError",
    "Identity",
    "IdentityError",
    "KeywireError",
    "MultiAddress",
    "Options",
    "PinMismatch",
    "RemoteIdentity",
    "Scope",
    "Section",
    "Server",
    "Stream",
    "StreamError",
    "UnsupportedError",
    "decode_certhash",
    "dial",
    "encode_certhash",
    "listen",
    "open_stream",
    "parse",
]
