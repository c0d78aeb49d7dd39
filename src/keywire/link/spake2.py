"""SPAKE2 on P-256 (RFC 9382, SPAKE2-P256-SHA256-HKDF-HMAC): a sans-IO core.

Two parties who share a low-entropy password each send one point and end with the same key, and
an active attacker gets exactly one password guess per run. ``cryptography`` has no point
arithmetic, so pycryptodome's ``EccPoint`` does the sums; every point that arrives from the peer
is checked here first (exactly 65 bytes, uncompressed, on the curve, not the identity), because
pycryptodome's own decoder would take compressed points and read ``04‖0…0`` as the identity.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass
from enum import Enum
from typing import Any

from Crypto.PublicKey import ECC
from Crypto.PublicKey._point import EccPoint
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import HandshakeError

#: the P-256 group order
ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
#: the P-256 field prime
PRIME = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
POINT_SIZE = 65
_M_SEC1 = "02886e2f97ace46e55ba9dd7242579f2993b64e16ef3dcab95afd497333d8fa12f"
_N_SEC1 = "03d8bbd6c639c62937b04d997f38c3770719c629d7014d49a24b4f98baa1292b49"


class Spake2Error(HandshakeError):
    """A SPAKE2 run failed: a bad point from the peer, or the confirmations do not match."""


class Role(Enum):
    """RFC 9382's A (uses M) and B (uses N)."""

    A = "A"
    B = "B"


def _fixed_point(sec1_hex: str) -> Any:
    return ECC.import_key(bytes.fromhex(sec1_hex), curve_name="P-256").pointQ


_M = _fixed_point(_M_SEC1)
_N = _fixed_point(_N_SEC1)
_G = EccPoint(
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
    "P-256",
)


def encode_point(point: Any) -> bytes:
    """Uncompressed SEC1: ``04 ‖ x ‖ y``."""
    if point.is_point_at_infinity():
        raise Spake2Error("cannot encode the identity point")
    x, y = point.xy
    return b"\x04" + int(x).to_bytes(32, "big") + int(y).to_bytes(32, "big")


def decode_point(data: bytes) -> Any:
    """A peer's point, strictly: 65 bytes, ``04`` prefix, coordinates < p, on the curve."""
    if len(data) != POINT_SIZE:
        raise Spake2Error(f"a SPAKE2 share is {POINT_SIZE} bytes, got {len(data)}")
    if data[0] != 0x04:
        raise Spake2Error(f"a SPAKE2 share must be uncompressed (0x04), got 0x{data[0]:02x}")
    x = int.from_bytes(data[1:33], "big")
    y = int.from_bytes(data[33:], "big")
    if x >= PRIME or y >= PRIME:
        raise Spake2Error("a SPAKE2 share has a coordinate outside the field")
    if x == 0 and y == 0:
        raise Spake2Error("a SPAKE2 share is the identity point")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes(data))
    except ValueError:
        raise Spake2Error("a SPAKE2 share is not on the P-256 curve") from None
    return EccPoint(x, y, "P-256")


def random_scalar() -> int:
    """48 random bytes reduced mod n (bias below 2^-128), never zero."""
    while True:
        value = int.from_bytes(secrets.token_bytes(48), "big") % ORDER
        if value:
            return value


def scalar_from_password(ikm: bytes, info: bytes, length: int = 40) -> int:
    """``w``: HKDF-SHA256 output read big-endian, mod n; zero is refused."""
    okm = HKDF(hashes.SHA256(), length, salt=None, info=info).derive(ikm)
    w = int.from_bytes(okm, "big") % ORDER
    if w == 0:
        raise Spake2Error("the password maps to w = 0; choose another")
    return w


def _lv(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


@dataclass(frozen=True)
class Spake2Result:
    """Everything a finished run yields; ``Ke`` is the shared secret, the rest confirm it."""

    transcript: bytes
    ke: bytes
    ka: bytes
    kca: bytes
    kcb: bytes
    confirm_a: bytes
    confirm_b: bytes

    def own_confirmation(self, role: Role) -> bytes:
        return self.confirm_a if role is Role.A else self.confirm_b

    def check_peer_confirmation(self, role: Role, mac: bytes) -> None:
        """Raise unless ``mac`` is the peer's confirmation (constant-time compare)."""
        expected = self.confirm_b if role is Role.A else self.confirm_a
        if not hmac.compare_digest(expected, mac):
            raise Spake2Error("key confirmation failed: wrong code, or the exchange was tampered")


class Spake2:
    """One party of one run: ``share()`` to send, ``finish(peer_share)`` for the keys.

    ``scalar`` is injectable only so the RFC's vectors can be replayed.
    """

    def __init__(
        self,
        role: Role,
        w: int,
        id_a: bytes,
        id_b: bytes,
        aad: bytes = b"",
        scalar: int | None = None,
    ) -> None:
        if not 0 < w < ORDER:
            raise Spake2Error("w must be in 1..n-1")
        self.role = role
        self._w = w
        self._id_a = id_a
        self._id_b = id_b
        self._aad = aad
        self._scalar = scalar if scalar is not None else random_scalar()
        if not 0 < self._scalar < ORDER:
            raise Spake2Error("the secret scalar must be in 1..n-1")
        blind = _M if role is Role.A else _N
        self._share = encode_point(_G * self._scalar + blind * w)
        self.result: Spake2Result | None = None

    def share(self) -> bytes:
        """Our 65-byte message (pA for A, pB for B)."""
        return self._share

    def finish(self, peer_share: bytes) -> Spake2Result:
        """Combine the peer's share into K and derive every key of RFC 9382 §4."""
        if self.result is not None:
            raise Spake2Error("this SPAKE2 run is already finished")
        peer = decode_point(peer_share)
        unblind = _N if self.role is Role.A else _M
        k_point = (peer + (-(unblind * self._w))) * self._scalar
        if k_point.is_point_at_infinity():
            raise Spake2Error("the SPAKE2 shared point is the identity")
        k_bytes = encode_point(k_point)
        p_a, p_b = (self._share, peer_share) if self.role is Role.A else (peer_share, self._share)
        transcript = b"".join(
            _lv(part)
            for part in (
                self._id_a,
                self._id_b,
                p_a,
                bytes(p_b),
                k_bytes,
                self._w.to_bytes(32, "big"),
            )
        )
        digest = hashlib.sha256(transcript).digest()
        ke, ka = digest[:16], digest[16:]
        kc = HKDF(hashes.SHA256(), 32, salt=None, info=b"ConfirmationKeys" + self._aad).derive(ka)
        kca, kcb = kc[:16], kc[16:]
        self.result = Spake2Result(
            transcript=transcript,
            ke=ke,
            ka=ka,
            kca=kca,
            kcb=kcb,
            confirm_a=hmac.new(kca, transcript, hashlib.sha256).digest(),
            confirm_b=hmac.new(kcb, transcript, hashlib.sha256).digest(),
        )
        return self.result
