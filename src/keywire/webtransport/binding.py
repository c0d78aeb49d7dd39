"""The identity binding: the long-term Ed25519 key vouches for each short-lived certificate.

A WebTransport address names the identity key and the certificate hashes the client pins
(``serverCertificateHashes`` in a browser). TLS proves the server holds the key of *a* pinned
certificate; this record proves the identity approved that certificate. Byte layouts
(docs/webtransport.md has vectors):

signed message (per certificate)::

    CONTEXT (36 bytes, "keywire webtransport certificate v1" + 0x00)
    ‖ sha256(certificate DER) (32) ‖ not_before (u64 BE, Unix s) ‖ not_after (u64 BE)

record (the server's first unidirectional WebTransport stream, then FIN)::

    MAGIC "KWB1" (4) ‖ count (u8, 1..4) ‖ count × entry
    entry = sha256 (32) ‖ not_before (8) ‖ not_after (8) ‖ Ed25519 signature (64)

A client accepts the session only if **every** hash it pinned has an entry whose signature
verifies under the identity key it dialed (a browser cannot tell which pinned certificate TLS
matched, so an address mixing another key's certificate with the identity's is refused), and
a client that knows the presented certificate checks that entry's validity too. Sans-IO.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from ..errors import HandshakeError

CONTEXT = b"keywire webtransport certificate v1\x00"
MAGIC = b"KWB1"
ENTRY = struct.Struct(">32sQQ64s")
MAX_ENTRIES = 4
MAX_RECORD = len(MAGIC) + 1 + MAX_ENTRIES * ENTRY.size
#: browsers refuse certificates valid for longer; so does the binding
MAX_VALIDITY = 14 * 24 * 3600


class BindingError(HandshakeError):
    """The server's certificate is not vouched for by the identity key that was dialed."""

    permanent = True


@dataclass(frozen=True)
class CertBinding:
    """One signed entry: the certificate's hash, its validity, the identity's signature."""

    digest: bytes
    not_before: int
    not_after: int
    signature: bytes

    def encode(self) -> bytes:
        return ENTRY.pack(self.digest, self.not_before, self.not_after, self.signature)


def signed_message(digest: bytes, not_before: int, not_after: int) -> bytes:
    if len(digest) != 32:
        raise ValueError("a certificate digest is 32 bytes")
    return CONTEXT + digest + struct.pack(">QQ", not_before, not_after)


def sign_binding(
    key: ed25519.Ed25519PrivateKey, digest: bytes, not_before: int, not_after: int
) -> CertBinding:
    signature = key.sign(signed_message(digest, not_before, not_after))
    return CertBinding(digest, not_before, not_after, signature)


def encode_record(bindings: Sequence[CertBinding]) -> bytes:
    if not 1 <= len(bindings) <= MAX_ENTRIES:
        raise ValueError(f"a binding record holds 1 to {MAX_ENTRIES} entries")
    return MAGIC + bytes([len(bindings)]) + b"".join(b.encode() for b in bindings)


def decode_record(data: bytes) -> list[CertBinding]:
    """Parse a record strictly; ``BindingError`` names what is wrong."""
    if len(data) < 5 or data[:4] != MAGIC:
        raise BindingError("webtransport: the server's binding record has no KWB1 header")
    count = data[4]
    if not 1 <= count <= MAX_ENTRIES or len(data) != 5 + count * ENTRY.size:
        raise BindingError(
            f"webtransport: binding record of {len(data)} bytes does not hold {count} entries"
        )
    return [CertBinding(*ENTRY.unpack_from(data, 5 + i * ENTRY.size)) for i in range(count)]


def verify_record(
    data: bytes,
    public_key: bytes,
    pinned: Iterable[bytes],
    *,
    presented: bytes | None = None,
    now: float | None = None,
) -> list[CertBinding]:
    """Check a record against the identity key and the pinned digests; return its entries.

    Raises ``BindingError`` unless every pinned digest has an entry signed by ``public_key``
    with a validity of at most 14 days, and (when ``presented`` is known) the presented
    digest is pinned and ``now`` lies within its entry's validity.
    """
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise BindingError("webtransport: the identity key is not an Ed25519 key") from None
    good: dict[bytes, CertBinding] = {}
    for entry in decode_record(data):
        try:
            key.verify(
                entry.signature, signed_message(entry.digest, entry.not_before, entry.not_after)
            )
        except InvalidSignature:
            continue
        if 0 < entry.not_after - entry.not_before <= MAX_VALIDITY:
            good[entry.digest] = entry
    pins = list(pinned)
    missing = [p for p in pins if p not in good]
    if missing:
        raise BindingError(
            f"webtransport: certificate {missing[0].hex()[:16]}… is not signed by the identity "
            "key that was dialed"
        )
    if presented is not None:
        if presented not in pins:
            raise BindingError("webtransport: the presented certificate is not pinned")
        entry = good[presented]
        if now is not None and not entry.not_before <= now < entry.not_after:
            raise BindingError("webtransport: the presented certificate is outside its validity")
    return list(good.values())
