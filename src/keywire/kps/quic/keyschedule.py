"""qh3's TLS 1.3 key schedule on one-shot HMAC (issue 17: connect time).

qh3 2.1 runs TLS in Python and derives every secret and packet key with HKDF-Expand-Label
(RFC 8446 §7.1), building an ``hmac.HMAC`` object and three ``update`` calls per output block:
~19 µs a call, about 20 calls per handshake on each side. ``hmac.digest`` (OpenSSL's one-shot
HMAC) computes the same bytes in well under half that. ``install`` swaps qh3's two module
functions (and the name ``qh3.quic.crypto`` imported) for these; the outputs are identical,
which tests/kps/test_keyschedule.py checks against qh3's own functions and RFC test vectors.
"""

from __future__ import annotations

import hmac
import struct
from functools import lru_cache

import qh3.quic.crypto as _qh3_crypto
import qh3.tls as _qh3_tls

#: qh3's originals, kept for the equality test
ORIGINAL_EXPAND_LABEL = _qh3_tls.hkdf_expand_label
ORIGINAL_EXTRACT = _qh3_tls.hkdf_extract


@lru_cache(maxsize=64)
def _label_prefix(label: bytes, length: int) -> bytes:
    """``HkdfLabel`` up to its context: length, then "tls13 " + label (RFC 8446 §7.1)."""
    full = b"tls13 " + label
    return struct.pack("!HB", length, len(full)) + full


def hkdf_expand_label(
    algorithm: int, secret: bytes, label: bytes, hash_value: bytes, length: int
) -> bytes:
    """HKDF-Expand-Label with SHA-``algorithm``; qh3's signature, keyword names included."""
    info = _label_prefix(label, length) + bytes((len(hash_value),)) + hash_value
    name = f"sha{algorithm}"
    block = hmac.digest(secret, info + b"\x01", name)
    if len(block) >= length:
        return block[:length]
    out, counter = [block], 1
    while len(block) * len(out) < length:
        counter += 1
        block = hmac.digest(secret, block + info + bytes((counter,)), name)
        out.append(block)
    return b"".join(out)[:length]


def hkdf_extract(algorithm: int, salt: bytes, key_material: bytes) -> bytes:
    """HKDF-Extract with SHA-``algorithm``; qh3's signature."""
    return hmac.digest(salt, key_material, f"sha{algorithm}")


def install() -> None:
    """Make qh3 derive its keys with the functions above (idempotent)."""
    _qh3_tls.hkdf_expand_label = hkdf_expand_label
    _qh3_tls.hkdf_extract = hkdf_extract
    # (imported by name there)
    _qh3_crypto.hkdf_expand_label = hkdf_expand_label  # type: ignore[attr-defined]
