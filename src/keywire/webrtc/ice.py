"""ICE for KPS WebRTC-direct: the derived password, strict STUN checks, and the admission gate.

KPS has no signalling: the browser picks a random ufrag and derives the ICE password from the
server's certhash, so only someone who knows the address can produce a STUN check the server
accepts. ``StunGate`` verifies that (MESSAGE-INTEGRITY with the derived password, and the
FINGERPRINT) **before** anything is allocated for the sender, and bounds what a flood can cost:
a token bucket per source IP and a cap on concurrent peers. Rejected checks get no answer, so a
prober without the certhash learns nothing. Sans-IO: ``now`` is passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass, field

from ..errors import KeywireError

MAGIC_COOKIE = 0x2112A442
HEADER_SIZE = 20
BINDING_REQUEST = 0x0001
ATTR_USERNAME = 0x0006
ATTR_MESSAGE_INTEGRITY = 0x0008
ATTR_FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E
PASSWORD_LABEL = b"kps-ice-pwd-v1:"
#: RFC 8445 ice-char, and aioice's bounds for a ufrag
_UFRAG = re.compile(r"[A-Za-z0-9+/]{4,256}")
_HEADER = struct.Struct("!HHI12s")
_ATTR = struct.Struct("!HH")


class StunError(KeywireError):
    """A datagram that is not a well-formed STUN message."""


def derive_ice_password(digest: bytes, ufrag: str) -> str:
    """KPS: ``base64std_nopad(HMAC-SHA256(certhash digest, "kps-ice-pwd-v1:" || ufrag))``."""
    mac = hmac.new(digest, PASSWORD_LABEL + ufrag.encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode().rstrip("=")


def looks_like_stun(data: bytes) -> bool:
    """KPS §2.3's test: ≥ 20 bytes, top two bits of byte 0 clear, the magic cookie at 4..8."""
    return (len(data) >= HEADER_SIZE and data[0] & 0xC0 == 0
            and data[4:8] == b"\x21\x12\xa4\x42")


@dataclass(frozen=True)
class StunMessage:
    """A parsed STUN message: its type, transaction id and attributes (with their offsets)."""

    message_type: int
    transaction_id: bytes
    #: (type, value, offset of the attribute header) in wire order
    attributes: tuple[tuple[int, bytes, int], ...]

    def get(self, attr_type: int) -> bytes | None:
        for kind, value, _ in self.attributes:
            if kind == attr_type:
                return value
        return None

    def offset_of(self, attr_type: int) -> int | None:
        for kind, _, offset in self.attributes:
            if kind == attr_type:
                return offset
        return None

    @property
    def username(self) -> str | None:
        raw = self.get(ATTR_USERNAME)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise StunError("USERNAME is not UTF-8") from None


def parse_stun(data: bytes) -> StunMessage:
    """Parse one STUN message strictly; ``StunError`` says what is malformed."""
    if not looks_like_stun(data):
        raise StunError("not a STUN message (size, leading bits or magic cookie)")
    kind, length, _, txid = _HEADER.unpack_from(data)
    if length != len(data) - HEADER_SIZE or length % 4:
        raise StunError(f"STUN length field {length} does not match the "
                        f"{len(data) - HEADER_SIZE} bytes after the header")
    attrs: list[tuple[int, bytes, int]] = []
    pos = HEADER_SIZE
    while pos < len(data):
        if pos + 4 > len(data):
            raise StunError("truncated STUN attribute header")
        attr_type, attr_len = _ATTR.unpack_from(data, pos)
        end = pos + 4 + attr_len
        if end > len(data):
            raise StunError(f"STUN attribute 0x{attr_type:04x} runs past the message")
        attrs.append((attr_type, data[pos + 4:end], pos))
        pos = end + (-attr_len % 4)
    return StunMessage(kind, txid, tuple(attrs))


def _with_length(data: bytes, end: int) -> bytes:
    """The message up to ``end`` with its length field rewritten to cover exactly that much."""
    return data[:2] + struct.pack("!H", end - HEADER_SIZE) + data[4:end]


def check_integrity(data: bytes, message: StunMessage, password: str) -> bool:
    """RFC 8489 §14.5 MESSAGE-INTEGRITY (HMAC-SHA1, short-term credentials)."""
    offset = message.offset_of(ATTR_MESSAGE_INTEGRITY)
    value = message.get(ATTR_MESSAGE_INTEGRITY)
    if offset is None or value is None or len(value) != 20:
        return False
    covered = _with_length(data, offset + 24)[:offset]
    expected = hmac.new(password.encode(), covered, hashlib.sha1).digest()
    return hmac.compare_digest(expected, value)


def check_fingerprint(data: bytes, message: StunMessage) -> bool:
    """RFC 8489 §14.7 FINGERPRINT; when present it must be last and match."""
    offset = message.offset_of(ATTR_FINGERPRINT)
    if offset is None:
        return True
    value = message.get(ATTR_FINGERPRINT)
    if value is None or len(value) != 4 or offset + 8 != len(data):
        return False
    crc = binascii.crc32(_with_length(data, offset + 8)[:offset]) ^ FINGERPRINT_XOR
    return struct.pack("!I", crc & 0xFFFFFFFF) == value


@dataclass(frozen=True)
class GateSettings:
    """Admission limits for new WebRTC peers (settings ``webrtc.max_peers`` etc.)."""

    #: concurrent WebRTC peers (in handshake or open) this listener holds at most
    max_peers: int = 256
    #: new-peer STUN checks per second per source IP (token refill rate)
    rate: float = 50.0
    #: how many such checks one source IP may send at once
    burst: int = 100
    #: source IPs whose buckets are remembered (least recently seen are forgotten)
    max_sources: int = 4096

    def __post_init__(self) -> None:
        if self.max_peers < 1 or self.rate <= 0 or self.burst < 1 or self.max_sources < 1:
            raise ValueError("webrtc gate settings must be positive")


@dataclass(frozen=True)
class Admission:
    """The gate's verdict: ``ufrag`` is set iff the check may create (or reach) a peer."""

    ufrag: str | None
    reason: str = ""


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class StunGate:
    """Decides whether a STUN check from an unknown source may reach a WebRTC peer."""

    digest: bytes
    settings: GateSettings = field(default_factory=GateSettings)
    counters: dict[str, int] = field(default_factory=dict)
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)

    def admit(self, data: bytes, host: str, now: float, *, peers: int,
              existing: Container[str] = ()) -> Admission:
        """Verify one check. ``peers`` is how many peers exist; ``existing`` their ufrags."""
        if not self._take_token(host, now):
            return self._reject("rate")
        try:
            message = parse_stun(data)
            if message.message_type != BINDING_REQUEST:
                return self._reject("not-binding")
            username = message.username
        except StunError:
            return self._reject("malformed")
        if username is None or ":" not in username:
            return self._reject("no-username")
        ufrag = username.split(":", 1)[0]
        if not _UFRAG.fullmatch(ufrag):
            return self._reject("bad-ufrag")
        if not check_integrity(data, message, derive_ice_password(self.digest, ufrag)):
            return self._reject("integrity")
        if not check_fingerprint(data, message):
            return self._reject("fingerprint")
        if ufrag not in existing and peers >= self.settings.max_peers:
            return self._reject("peer-cap")
        self.counters["admitted"] = self.counters.get("admitted", 0) + 1
        return Admission(ufrag)

    def _reject(self, reason: str) -> Admission:
        self.counters[reason] = self.counters.get(reason, 0) + 1
        return Admission(None, reason)

    def _take_token(self, host: str, now: float) -> bool:
        s = self.settings
        bucket = self._buckets.get(host)
        if bucket is None:
            bucket = _Bucket(float(s.burst), now)
            self._buckets[host] = bucket
            while len(self._buckets) > s.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(host)
            bucket.tokens = min(float(s.burst), bucket.tokens + (now - bucket.stamp) * s.rate)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True
