"""Stateless QUIC address validation (RFC 9000 §8.1.2): Retry tokens, sans-IO.

A listener under load answers a token-less Initial with a Retry carrying a token, and creates
connection state only for an Initial that brings a valid token back. Nothing is stored between
the two: the token carries what the server needs (the client's original destination connection
id and when the token was minted) and a MAC that binds it to the client's address and to the
Retry's source connection id (which the client must use as its new destination id).

Token layout (``FORMAT`` first)::

    format(1) | minted_ms(8, big-endian) | odcid_len(1) | odcid | mac(16)

``mac`` = HMAC-SHA256(key, label | format | minted_ms | odcid_len | odcid | retry_scid | address)
truncated to 16 bytes. The key is random per ``RetryTokens`` instance (so per listener process):
tokens never outlive the process that minted them, and the clock is the caller's monotonic one.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import struct
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from qh3.quic.packet import encode_quic_retry

FORMAT = 1
LABEL = b"keywire-kps-retry"
MAC_SIZE = 16
#: RFC 9000: connection ids are at most 20 bytes
MAX_CID = 20
#: seconds a token stays valid: one round trip is all a client needs; this allows slow paths
DEFAULT_LIFETIME = 10.0
#: bytes of a Retry's source connection id (the client's next destination id); the listener's
#: own connection ids are 8 bytes, and a Retry id is looked up like any other
RETRY_CID_LENGTH = 8
_HEAD = struct.Struct("!BQB")


def encode_address(addr: tuple[Any, ...]) -> bytes:
    """The packed IP and port; a host that is not an IP literal is bound as text."""
    host, port = addr[0], int(addr[1])
    try:
        packed = ipaddress.ip_address(host).packed
    except ValueError:
        packed = str(host).encode()
    return bytes([len(packed)]) + packed + port.to_bytes(2, "big")


@dataclass(frozen=True)
class Validated:
    """What a valid token vouches for: the ids the server must echo in its transport
    parameters (``original_destination_connection_id``, ``retry_source_connection_id``)."""

    original_dcid: bytes
    retry_scid: bytes


class TokenError(ValueError):
    """A token that is malformed, forged, bound to another address or id, or expired."""


class RetryTokens:
    """Mints and checks Retry tokens with a per-instance random key; no state per client."""

    def __init__(self, *, lifetime: float = DEFAULT_LIFETIME, key: bytes | None = None) -> None:
        self.lifetime = lifetime
        self._key = key if key is not None else os.urandom(32)

    def _mac(self, head: bytes, odcid: bytes, retry_scid: bytes, addr: tuple[Any, ...]) -> bytes:
        message = (
            LABEL + head + odcid + bytes([len(retry_scid)]) + retry_scid + encode_address(addr)
        )
        return hmac.new(self._key, message, sha256).digest()[:MAC_SIZE]

    def mint(
        self, addr: tuple[Any, ...], original_dcid: bytes, retry_scid: bytes, now: float
    ) -> bytes:
        if len(original_dcid) > MAX_CID:
            raise ValueError("connection id longer than 20 bytes")
        head = _HEAD.pack(FORMAT, max(0, int(now * 1000)), len(original_dcid))
        return head + original_dcid + self._mac(head, original_dcid, retry_scid, addr)

    def validate(self, token: bytes, addr: tuple[Any, ...], dcid: bytes, now: float) -> Validated:
        """Check a token from an Initial sent to ``dcid`` from ``addr``; raise ``TokenError``."""
        if len(token) < _HEAD.size + MAC_SIZE:
            raise TokenError("token too short")
        fmt, minted_ms, odcid_len = _HEAD.unpack_from(token)
        if fmt != FORMAT or odcid_len > MAX_CID or len(token) != _HEAD.size + odcid_len + MAC_SIZE:
            raise TokenError("not a token of this format")
        head = token[: _HEAD.size]
        odcid = token[_HEAD.size : _HEAD.size + odcid_len]
        expected = self._mac(head, odcid, dcid, addr)
        if not hmac.compare_digest(expected, token[-MAC_SIZE:]):
            raise TokenError("token MAC does not match (forged, other address or other id)")
        age = now - minted_ms / 1000
        if age < -1.0 or age > self.lifetime:
            raise TokenError(f"token expired ({age:.1f} s old)")
        return Validated(original_dcid=odcid, retry_scid=dcid)

    def retry_packet(
        self,
        *,
        version: int,
        addr: tuple[Any, ...],
        client_scid: bytes,
        original_dcid: bytes,
        now: float,
        retry_scid: bytes | None = None,
    ) -> bytes:
        """A complete Retry datagram for a token-less Initial (integrity tag included)."""
        scid = retry_scid if retry_scid is not None else os.urandom(RETRY_CID_LENGTH)
        token = self.mint(addr, original_dcid, scid, now)
        return encode_quic_retry(
            version=version,
            source_cid=scid,
            destination_cid=client_scid,
            original_destination_cid=original_dcid,
            retry_token=token,
        )
