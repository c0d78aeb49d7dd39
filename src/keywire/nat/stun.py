"""STUN Binding (RFC 5389/8489) for learning a public address: the shared encode/decode helpers,
the server's answer, and the client's transaction. Sans-IO: callers move the bytes.

The message parser is the WebRTC side's (``kps.webrtc.ice.parse_stun``), so keywire has one STUN
parser; this module adds what a plain Binding exchange needs and ICE does not: a request without
credentials, a response carrying XOR-MAPPED-ADDRESS (plus RFC 5780's RESPONSE-ORIGIN and
OTHER-ADDRESS, which tell the client where the answer came from and where else to ask), and
CHANGE-REQUEST "change port", which lets a relay with two STUN ports tell the client whether
unsolicited UDP from another port reaches it (filtering).
"""

from __future__ import annotations

import binascii
import ipaddress
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass, field

from ..kps.webrtc.ice import (
    ATTR_FINGERPRINT,
    ATTR_XOR_MAPPED_ADDRESS,
    BINDING_REQUEST,
    BINDING_SUCCESS,
    FINGERPRINT_XOR,
    MAGIC_COOKIE,
    StunError,
    StunMessage,
    check_fingerprint,
    looks_like_stun,
    parse_stun,
)

ATTR_MAPPED_ADDRESS = 0x0001
ATTR_CHANGE_REQUEST = 0x0003
ATTR_RESPONSE_ORIGIN = 0x802B
ATTR_OTHER_ADDRESS = 0x802C
ATTR_SOFTWARE = 0x8022
CHANGE_PORT = 0x02
CHANGE_IP = 0x04
BINDING_ERROR = 0x0111
SOFTWARE = b"keywire"
#: most requests one source may have answered per second (burst twice that): a response is
#: about three times a request's size, so an unbounded server is a small reflector
ANSWERS_PER_SECOND = 20.0

Address = tuple[str, int]

__all__ = [
    "BindingResult",
    "StunAnswer",
    "StunServerCore",
    "binding_request",
    "binding_response",
    "decode_address",
    "encode_address",
    "parse_binding_response",
]


def _header(kind: int, transaction_id: bytes, length: int) -> bytes:
    return struct.pack("!HHI", kind, length, MAGIC_COOKIE) + transaction_id


def _attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + bytes(-len(value) % 4)


def _with_fingerprint(kind: int, transaction_id: bytes, body: bytes) -> bytes:
    """Header + attributes + FINGERPRINT (RFC 8489 §14.7), the length covering all of it."""
    head = _header(kind, transaction_id, len(body) + 8)
    crc = (binascii.crc32(head + body) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    return head + body + struct.pack("!HHI", ATTR_FINGERPRINT, 4, crc)


def encode_address(addr: Address, transaction_id: bytes | None = None) -> bytes:
    """The value of an address attribute; XORed (RFC 8489 §14.2) when ``transaction_id`` is
    given, plain (MAPPED-ADDRESS, OTHER-ADDRESS, RESPONSE-ORIGIN) otherwise."""
    ip = ipaddress.ip_address(addr[0])
    family = 0x01 if ip.version == 4 else 0x02
    port, raw = addr[1], ip.packed
    if transaction_id is not None:
        mask = struct.pack("!I", MAGIC_COOKIE) + (transaction_id if ip.version == 6 else b"")
        raw = bytes(x ^ y for x, y in zip(raw, mask, strict=True))
        port ^= MAGIC_COOKIE >> 16
    return struct.pack("!BBH", 0, family, port) + raw


def decode_address(value: bytes, transaction_id: bytes | None = None) -> Address:
    """The inverse of ``encode_address``; ``StunError`` on a malformed value."""
    if len(value) < 4:
        raise StunError("STUN address attribute too short")
    _, family, port = struct.unpack_from("!BBH", value)
    size = {0x01: 4, 0x02: 16}.get(family)
    if size is None or len(value) != 4 + size:
        raise StunError(f"STUN address attribute: bad family {family} or length {len(value)}")
    raw = value[4:]
    if transaction_id is not None:
        mask = struct.pack("!I", MAGIC_COOKIE) + (transaction_id if size == 16 else b"")
        raw = bytes(x ^ y for x, y in zip(raw, mask, strict=True))
        port ^= MAGIC_COOKIE >> 16
    host = str(ipaddress.IPv4Address(raw) if size == 4 else ipaddress.IPv6Address(raw))
    return host, port


def binding_request(transaction_id: bytes | None = None, *, change_port: bool = False) -> bytes:
    """A Binding request (FINGERPRINT, and CHANGE-REQUEST if asked) with a random 96-bit id."""
    txid = os.urandom(12) if transaction_id is None else transaction_id
    if len(txid) != 12:
        raise ValueError("a STUN transaction id is 12 bytes")
    body = b""
    if change_port:
        body = _attribute(ATTR_CHANGE_REQUEST, struct.pack("!I", CHANGE_PORT))
    return _with_fingerprint(BINDING_REQUEST, txid, body)


def binding_response(
    transaction_id: bytes,
    mapped: Address,
    *,
    origin: Address | None = None,
    other: Address | None = None,
) -> bytes:
    """A Binding success: XOR-MAPPED-ADDRESS, optional RESPONSE-ORIGIN/OTHER-ADDRESS,
    SOFTWARE and FINGERPRINT."""
    body = _attribute(ATTR_XOR_MAPPED_ADDRESS, encode_address(mapped, transaction_id))
    if origin is not None:
        body += _attribute(ATTR_RESPONSE_ORIGIN, encode_address(origin))
    if other is not None:
        body += _attribute(ATTR_OTHER_ADDRESS, encode_address(other))
    body += _attribute(ATTR_SOFTWARE, SOFTWARE)
    return _with_fingerprint(BINDING_SUCCESS, transaction_id, body)


@dataclass(frozen=True)
class BindingResult:
    """What a Binding success said: the mapped address and, if given, where it came from."""

    transaction_id: bytes
    mapped: Address
    origin: Address | None = None
    other: Address | None = None


def parse_binding_response(data: bytes) -> BindingResult:
    """Decode a Binding success (XOR-MAPPED-ADDRESS, else the legacy MAPPED-ADDRESS);
    ``StunError`` for anything else, including an error response."""
    message: StunMessage = parse_stun(data)
    if message.message_type == BINDING_ERROR:
        raise StunError("the STUN server answered with an error response")
    if message.message_type != BINDING_SUCCESS:
        raise StunError(f"not a Binding success (type 0x{message.message_type:04x})")
    if not check_fingerprint(data, message):
        raise StunError("STUN FINGERPRINT does not match")
    txid = message.transaction_id
    xored = message.get(ATTR_XOR_MAPPED_ADDRESS)
    if xored is not None:
        mapped = decode_address(xored, txid)
    else:
        plain = message.get(ATTR_MAPPED_ADDRESS)
        if plain is None:
            raise StunError("Binding success without a mapped address")
        mapped = decode_address(plain)
    origin = message.get(ATTR_RESPONSE_ORIGIN)
    other = message.get(ATTR_OTHER_ADDRESS)
    return BindingResult(
        txid,
        mapped,
        decode_address(origin) if origin is not None else None,
        decode_address(other) if other is not None else None,
    )


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return True


@dataclass(frozen=True)
class StunAnswer:
    """Send ``data`` to ``to`` from the server socket numbered ``via`` (0 = where it came)."""

    data: bytes
    to: Address
    via: int = 0


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class StunServerCore:
    """Answers Binding requests arriving on one of the server's sockets (``local[i]``).

    A request with CHANGE-REQUEST "change port" is answered from the other socket when there
    is one (RFC 5780 §7.2; "change IP" is not offered and is answered as if unset, which a
    client reads as "no answer" only if it insists on it). Anything that is not a
    well-formed Binding request gets no answer. Answers are rate-limited per source address.
    """

    local: list[Address]
    rate: float = ANSWERS_PER_SECOND
    max_sources: int = 4096
    counters: dict[str, int] = field(default_factory=dict)
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)

    def datagram(self, data: bytes, source: Address, via: int, now: float) -> StunAnswer | None:
        """The answer to one datagram received on socket ``via`` from ``source``, if any."""
        if not looks_like_stun(data):
            return self._drop("not-stun")
        try:
            message = parse_stun(data)
        except StunError:
            return self._drop("malformed")
        if message.message_type != BINDING_REQUEST or not check_fingerprint(data, message):
            return self._drop("not-binding")
        if not self._take(source[0], now):
            return self._drop("rate")
        answer_via = via
        change = message.get(ATTR_CHANGE_REQUEST)
        if (
            change is not None
            and len(change) == 4
            and len(self.local) > 1
            and struct.unpack("!I", change)[0] & CHANGE_PORT
        ):
            answer_via = (via + 1) % len(self.local)
        other = self.local[(via + 1) % len(self.local)] if len(self.local) > 1 else None
        origin: Address | None = self.local[answer_via]
        if _unspecified(self.local[answer_via][0]):  # a wildcard bind: no address to name
            origin = other = None
        response = binding_response(message.transaction_id, source, origin=origin, other=other)
        self.counters["answered"] = self.counters.get("answered", 0) + 1
        return StunAnswer(response, source, answer_via)

    def _drop(self, reason: str) -> StunAnswer | None:
        self.counters[reason] = self.counters.get(reason, 0) + 1
        return None

    def _take(self, host: str, now: float) -> bool:
        bucket = self._buckets.get(host)
        burst = 2.0 * self.rate
        if bucket is None:
            bucket = _Bucket(burst, now)
            self._buckets[host] = bucket
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(host)
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True
