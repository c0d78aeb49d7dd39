"""ICE for KPS WebRTC-direct: the derived passwords, strict STUN checks, and the admission gate.

KPS has no signalling: the dialer derives the server's ICE password from the certhash, so only
someone who knows the address can produce a STUN check the server accepts. Two credential
schemes share one port (``docs/webrtc.md``, "Wire v2"):

* **wire v1** (KPS SPEC v0.2.1): one random ufrag on both sides, both passwords derived from it;
  a browser must munge its own offer. Its checks carry ``USERNAME = u:u``.
* **wire v2** (keywire): the browser keeps its own ufrag and password; the server's ufrag is an
  AES-GCM box, under a key derived from the certhash, holding the browser's password. Its checks
  carry ``USERNAME = server-ufrag:client-ufrag`` with the two halves different.

``StunGate`` verifies a check (the v2 box opens, MESSAGE-INTEGRITY with the derived password,
FINGERPRINT) **before** anything is allocated for the sender, and bounds what a flood can cost:
a token bucket per source (IPv4 address, IPv6 /64) and a cap on established peers. Rejected
checks get no answer, so a prober without the certhash learns nothing. A valid check is answered
statelessly (``binding_success``): the listener makes a peer only once a DTLS ClientHello comes
from an answered address (``server.py``), because the certhash, and so a valid check, is public.
Sans-IO: ``now`` is passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import re
import struct
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ...errors import KeywireError

MAGIC_COOKIE = 0x2112A442
HEADER_SIZE = 20
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_USERNAME = 0x0006
ATTR_MESSAGE_INTEGRITY = 0x0008
ATTR_FINGERPRINT = 0x8028
ATTR_USE_CANDIDATE = 0x0025
FINGERPRINT_XOR = 0x5354554E
PASSWORD_LABEL = b"kps-ice-pwd-v1:"
#: wire v2: HMAC labels for the box key and the server's password, and the box's AAD prefix
V2_KEY_LABEL = b"keywire-ice-v2-key"
V2_PASSWORD_LABEL = b"keywire-ice-pwd-v2:"
V2_AAD_LABEL = b"keywire-ice-v2:"
V2_NONCE_SIZE = 12
V2_TAG_SIZE = 16
#: RFC 8445 ice-char, and aioice's bounds for a ufrag
_UFRAG = re.compile(r"[A-Za-z0-9+/]{4,256}")
#: a client password a v2 box may carry: RFC 8839's 22..256 ice-chars, capped at 128 so the
#: server ufrag stays within 256 characters
_PASSWORD = re.compile(r"[A-Za-z0-9+/]{22,128}")
_HEADER = struct.Struct("!HHI12s")
_ATTR = struct.Struct("!HH")


class StunError(KeywireError):
    """A datagram that is not a well-formed STUN message."""


def derive_ice_password(digest: bytes, ufrag: str) -> str:
    """KPS: ``base64std_nopad(HMAC-SHA256(certhash digest, "kps-ice-pwd-v1:" || ufrag))``."""
    mac = hmac.new(digest, PASSWORD_LABEL + ufrag.encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode().rstrip("=")


def v2_key(digest: bytes) -> bytes:
    """Wire v2: the AES-256-GCM key of the server-ufrag box, ``HMAC-SHA256(digest, label)``."""
    return hmac.new(digest, V2_KEY_LABEL, hashlib.sha256).digest()


def derive_ice_password_v2(digest: bytes, server_ufrag: str) -> str:
    """Wire v2: the server's password, ``b64nopad(HMAC(digest, label || server_ufrag))``."""
    mac = hmac.new(digest, V2_PASSWORD_LABEL + server_ufrag.encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode().rstrip("=")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def seal_server_ufrag(
    digest: bytes, client_ufrag: str, client_password: str, nonce: bytes | None = None
) -> str:
    """Wire v2: the server ufrag a dialer puts in its synthesized answer.

    ``b64nopad(nonce || AES-256-GCM(v2_key, nonce, client_password, aad=label || client_ufrag))``;
    ``nonce`` is 12 random bytes unless given (test vectors only).
    """
    if not _UFRAG.fullmatch(client_ufrag) or not _PASSWORD.fullmatch(client_password):
        raise ValueError("wire v2 needs a 4..256 ice-char ufrag and a 22..128 ice-char password")
    nonce = os.urandom(V2_NONCE_SIZE) if nonce is None else nonce
    if len(nonce) != V2_NONCE_SIZE:
        raise ValueError(f"the wire v2 nonce is {V2_NONCE_SIZE} bytes")
    box = AESGCM(v2_key(digest)).encrypt(
        nonce, client_password.encode(), V2_AAD_LABEL + client_ufrag.encode()
    )
    return _b64(nonce + box)


def open_server_ufrag(box: AESGCM, server_ufrag: str, client_ufrag: str) -> str | None:
    """The client password inside a v2 server ufrag, or None if it is not a valid box for
    ``client_ufrag`` under this key (``box = AESGCM(v2_key(digest))``)."""
    if len(server_ufrag) % 4 == 1:
        return None
    try:
        raw = base64.b64decode(server_ufrag + "=" * (-len(server_ufrag) % 4), validate=True)
    except binascii.Error:
        return None
    if len(raw) < V2_NONCE_SIZE + V2_TAG_SIZE + 22 or _b64(raw) != server_ufrag:
        return None  # too short to hold a password, or a non-canonical encoding
    try:
        plain = box.decrypt(
            raw[:V2_NONCE_SIZE], raw[V2_NONCE_SIZE:], V2_AAD_LABEL + client_ufrag.encode()
        )
    except InvalidTag:
        return None
    password = plain.decode("ascii", "replace")
    return password if _PASSWORD.fullmatch(password) else None


def looks_like_stun(data: bytes) -> bool:
    """KPS §2.3's test: ≥ 20 bytes, top two bits of byte 0 clear, the magic cookie at 4..8."""
    return len(data) >= HEADER_SIZE and data[0] & 0xC0 == 0 and data[4:8] == b"\x21\x12\xa4\x42"


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
        raise StunError(
            f"STUN length field {length} does not match the "
            f"{len(data) - HEADER_SIZE} bytes after the header"
        )
    attrs: list[tuple[int, bytes, int]] = []
    pos = HEADER_SIZE
    while pos < len(data):
        if pos + 4 > len(data):
            raise StunError("truncated STUN attribute header")
        attr_type, attr_len = _ATTR.unpack_from(data, pos)
        end = pos + 4 + attr_len
        if end > len(data):
            raise StunError(f"STUN attribute 0x{attr_type:04x} runs past the message")
        attrs.append((attr_type, data[pos + 4 : end], pos))
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
    #: new-peer STUN checks per second per source (token refill rate)
    rate: float = 50.0
    #: how many such checks one source may send at once
    burst: int = 100
    #: sources whose buckets are remembered (least recently seen are forgotten)
    max_sources: int = 4096
    #: peers that have not finished DTLS, at most; a newcomer evicts the oldest of them
    max_pending: int = 64
    #: seconds a peer may take from its ClientHello to a finished DTLS handshake
    pending_timeout: float = 5.0
    #: the part of ``max_peers`` one source (IPv4 address, IPv6 /64) may hold; unfinished peers
    #: have no share of their own: a full ``max_pending`` evicts the busiest source's oldest,
    #: so one page may open many connections at once while a flood only churns itself
    source_share: float = 0.25
    #: answered addresses remembered (waiting for their ClientHello), and for how long
    max_answered: int = 4096
    answered_ttl: float = 10.0

    def __post_init__(self) -> None:
        if (
            self.max_peers < 1
            or self.rate <= 0
            or self.burst < 1
            or self.max_sources < 1
            or self.max_pending < 1
            or self.pending_timeout <= 0
            or not 0 < self.source_share <= 1
            or self.max_answered < 1
            or self.answered_ttl <= 0
        ):
            raise ValueError("webrtc gate settings must be positive")

    def share(self, cap: int) -> int:
        """What one source may hold of ``cap``."""
        return max(1, int(cap * self.source_share))


def source_key(host: str) -> str:
    """The unit of per-source limits: an IPv4 address, or an IPv6 address's /64 (one host
    usually owns a whole /64, so per-address limits would not bound it)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def is_dtls_client_hello(data: bytes) -> bool:
    """A DTLS record (RFC 7983: first byte 20..63) carrying a ClientHello in epoch 0:
    content type 22 (handshake), handshake type 1 at byte 13."""
    return len(data) > 25 and data[0] == 22 and data[3:5] == b"\x00\x00" and data[13] == 1


@dataclass(frozen=True)
class Admission:
    """The gate's verdict: ``ufrag`` is set iff the check may create (or reach) a peer.

    ``ufrag`` is the server's (local) ufrag, which names the peer; an admitted check also says
    which wire it spoke and the four ICE credentials the server's agent needs.
    """

    ufrag: str | None
    reason: str = ""
    version: int = field(default=0, compare=False)
    password: str = field(default="", compare=False)
    remote_ufrag: str = field(default="", compare=False)
    remote_password: str = field(default="", compare=False)
    #: the check's transaction id, and whether it nominates the pair (USE-CANDIDATE)
    transaction_id: bytes = field(default=b"", compare=False)
    nominates: bool = field(default=False, compare=False)


def binding_success(admission: Admission, addr: tuple[str, int]) -> bytes:
    """The Binding success response to an admitted check, made without any peer state
    (RFC 8489: XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY with the server's password,
    FINGERPRINT), as the peer's ICE agent would answer it."""
    family, packed = _xor_address(addr, admission.transaction_id)
    body = struct.pack("!BBH", 0, family, addr[1] ^ (MAGIC_COOKIE >> 16)) + packed
    message = _stun_header(BINDING_SUCCESS, admission.transaction_id, 0)
    message += struct.pack("!HH", ATTR_XOR_MAPPED_ADDRESS, len(body)) + body
    with_mi = _with_length(message + bytes(24), len(message) + 24)[: len(message)]
    integrity = hmac.new(admission.password.encode(), with_mi, hashlib.sha1).digest()
    message = with_mi + struct.pack("!HH", ATTR_MESSAGE_INTEGRITY, 20) + integrity
    covered = _with_length(message + bytes(8), len(message) + 8)[: len(message)]
    crc = binascii.crc32(covered) ^ FINGERPRINT_XOR
    return covered + struct.pack("!HHI", ATTR_FINGERPRINT, 4, crc)


def _stun_header(kind: int, transaction_id: bytes, length: int) -> bytes:
    return struct.pack("!HHI", kind, length, MAGIC_COOKIE) + transaction_id


def _xor_address(addr: tuple[str, int], transaction_id: bytes) -> tuple[int, bytes]:
    """RFC 8489 §14.2: the address XORed with the cookie (and, for IPv6, the transaction id)."""
    ip = ipaddress.ip_address(addr[0])
    mask = struct.pack("!I", MAGIC_COOKIE) + (transaction_id if ip.version == 6 else b"")
    raw = bytes(x ^ y for x, y in zip(ip.packed, mask, strict=True))
    return (0x01 if ip.version == 4 else 0x02), raw


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
    _box: AESGCM = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._box = AESGCM(v2_key(self.digest))

    def admit(
        self, data: bytes, host: str, now: float, *, peers: int, existing: Container[str] = ()
    ) -> Admission:
        """Verify one check. ``peers`` is how many peers exist; ``existing`` their ufrags."""
        if not self._take_token(source_key(host), now):
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
        ufrag, _, remote = username.partition(":")
        if not _UFRAG.fullmatch(ufrag) or not _UFRAG.fullmatch(remote):
            return self._reject("bad-ufrag")
        if ufrag == remote:  # wire v1: the dialer uses the server's ufrag and password
            version, password = 1, derive_ice_password(self.digest, ufrag)
            remote_password = password
        else:  # wire v2: the server ufrag is a box holding the dialer's own password
            opened = open_server_ufrag(self._box, ufrag, remote)
            if opened is None:
                return self._reject("v2-ufrag")
            version, password = 2, derive_ice_password_v2(self.digest, ufrag)
            remote_password = opened
        if not check_integrity(data, message, password):
            return self._reject("integrity")
        if not check_fingerprint(data, message):
            return self._reject("fingerprint")
        if ufrag not in existing and peers >= self.settings.max_peers:
            return self._reject("peer-cap")
        self.counters["admitted"] = self.counters.get("admitted", 0) + 1
        self.counters[f"admitted-v{version}"] = self.counters.get(f"admitted-v{version}", 0) + 1
        return Admission(
            ufrag,
            version=version,
            password=password,
            remote_ufrag=remote,
            remote_password=remote_password,
            transaction_id=message.transaction_id,
            nominates=message.offset_of(ATTR_USE_CANDIDATE) is not None,
        )

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
