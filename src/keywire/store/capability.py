"""Per-address write capabilities for store streams (BACAP-style blinded Ed25519 keys).

Why: with a plain key-value store anyone who can write to it can overwrite a frame. Here the
store address of every frame is itself an Ed25519 public key, blinded per address from one
root key that both holders of the stream secret derive; every put carries a signature by the
matching blinded private scalar. A store that checks it (the map server) refuses any put
whose signature does not verify under the address, and, being write-once, refuses a second
put at an address: without the secret nobody can write, forge or pre-empt a frame.

The construction follows Katzenpost's BACAP (hpqc ``bacap``): box id ``M_i = f_i · A`` for a
root public key ``A = a · B`` and a per-index blinding scalar ``f_i``; the blinded private
scalar is ``s_i = f_i · a`` (so ``M_i = s_i · B``). It is keywire's own derivation from the
stream secret (HKDF-SHA256, BLAKE2b), not Katzenpost's byte format. A signature from a bare
scalar is built by hand from libsodium's scalar and point operations (there is no seed to
give ``crypto_sign``); any standard Ed25519 verifier checks it. See docs/store.md
"Write capabilities" for the exact steps and the vectors in tests/store/.

Sans-IO: pure functions and frozen values, no store and no clock.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl import bindings as sodium
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from .schedule import Role
from .secret import MIN_SECRET_BYTES, SecretError

#: HKDF salt of the capability keys: distinct from the frame schedule's salt
CAP_SALT = b"keywire store capability v1"
#: BLAKE2b personalisations (16 bytes at most)
BLIND_PERSON = b"kw-cap-blind"
NONCE_PERSON = b"kw-cap-nonce"
ADDRESS_SIZE = 32
SIGNATURE_SIZE = 64
SCALAR_SIZE = 32
#: a signed put is ``signature || payload``; the payload is at least one byte
MIN_SIGNED_PUT = SIGNATURE_SIZE + 1
_ZERO = bytes(SCALAR_SIZE)


class CapabilityError(ValueError):
    """A signed put that is malformed or whose signature does not verify under its address."""


def _reduce(wide: bytes) -> bytes:
    """A 64-byte string as a scalar mod L (uniform when the input is)."""
    return bytes(sodium.crypto_core_ed25519_scalar_reduce(wide))


def _keyed(key: bytes, person: bytes, data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=64, key=key, person=person).digest()


def _role_label(role: Role) -> bytes:
    return b"listener" if role is Role.LISTENER else b"dialer"


def signed_message(address: bytes, payload: bytes) -> bytes:
    """What a put's signature covers: the address (the public key) then the payload."""
    return address + payload


@dataclass(frozen=True)
class ReadCap:
    """Derives every address of one direction and verifies its puts; cannot sign."""

    root_public: bytes
    blind_key: bytes

    def blinding(self, index: int) -> bytes:
        """``f_i``: the scalar that blinds the root key for frame ``index``."""
        if not 0 <= index < 1 << 64:
            raise ValueError(f"frame index {index} out of range")
        factor = _reduce(_keyed(self.blind_key, BLIND_PERSON, struct.pack(">Q", index)))
        if factor == _ZERO:  # probability 2^-252; refuse rather than produce the identity
            raise ValueError(f"blinding factor of frame {index} is zero")
        return factor

    def address(self, index: int) -> bytes:
        """``M_i = f_i · A``: frame ``index``'s store address and verification key."""
        return bytes(
            sodium.crypto_scalarmult_ed25519_noclamp(self.blinding(index), self.root_public)
        )

    def verify(self, index: int, body: bytes) -> bytes:
        """The payload of a signed put for frame ``index``; ``CapabilityError`` otherwise."""
        return parse_signed_put(self.address(index), body)


@dataclass(frozen=True)
class WriteCap:
    """The read capability plus the root scalar and the nonce key: signs one direction."""

    read: ReadCap
    root_scalar: bytes
    nonce_key: bytes

    @classmethod
    def derive(cls, secret: bytes, role: Role, purpose: bytes = b"") -> WriteCap:
        """The capability of the direction ``role`` writes, from the stream secret;
        ``purpose`` (prefixed to the HKDF info) separates other uses of the same secret."""
        if len(secret) < MIN_SECRET_BYTES:
            raise SecretError(
                f"stream secret has {len(secret)} bytes; at least {MIN_SECRET_BYTES} are required"
            )
        material = HKDF(
            algorithm=hashes.SHA256(), length=96, salt=CAP_SALT, info=purpose + _role_label(role)
        ).derive(secret)
        seed, blind_key, nonce_key = material[:32], material[32:64], material[64:]
        scalar = _reduce(hashlib.sha512(seed).digest())
        if scalar == _ZERO:  # probability 2^-252
            raise ValueError("root scalar is zero")
        public = bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(scalar))
        return cls(ReadCap(public, blind_key), scalar, nonce_key)

    def address(self, index: int) -> bytes:
        """``M_i = s_i · B``: the same point as ``f_i · A`` (``s_i = f_i · a``), from a
        fixed-base multiplication, about five times cheaper than the reader's."""
        return bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(self.blinded_scalar(index)))

    def blinded_scalar(self, index: int) -> bytes:
        """``s_i = f_i · a mod L``, the private key of address ``index``."""
        return bytes(
            sodium.crypto_core_ed25519_scalar_mul(self.read.blinding(index), self.root_scalar)
        )

    def sign(self, index: int, payload: bytes, address: bytes | None = None) -> bytes:
        """The Ed25519 signature of frame ``index``'s put of ``payload``.

        Deterministic (the nonce is keyed by a secret and covers index and message), so a
        retransmission carries byte-identical bytes, as the stream requires. ``address``:
        ``self.address(index)`` if the caller has it already (it saves a multiplication).
        """
        scalar = self.blinded_scalar(index)
        if address is None:
            address = bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(scalar))
        message = signed_message(address, payload)
        nonce = _reduce(_keyed(self.nonce_key, NONCE_PERSON, struct.pack(">Q", index) + message))
        r_point = bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(nonce))
        challenge = _reduce(hashlib.sha512(r_point + address + message).digest())
        s = sodium.crypto_core_ed25519_scalar_add(
            nonce, sodium.crypto_core_ed25519_scalar_mul(challenge, scalar)
        )
        return r_point + bytes(s)

    def signed_put(self, index: int, payload: bytes) -> tuple[bytes, bytes]:
        """(address, body) of frame ``index``: the body is ``signature || payload``."""
        return self.address(index), self.sign(index, payload) + payload


def stream_caps(secret: bytes, role: Role) -> tuple[WriteCap, ReadCap]:
    """(our direction's write capability, the peer direction's read capability)."""
    peer = Role.DIALER if role is Role.LISTENER else Role.LISTENER
    return WriteCap.derive(secret, role), WriteCap.derive(secret, peer).read


def parse_signed_put(address: bytes, body: bytes) -> bytes:
    """The payload of a put of ``body`` at ``address`` if its signature verifies under the
    address; ``CapabilityError`` saying why otherwise. What a store checks before a put."""
    if len(address) != ADDRESS_SIZE:
        raise CapabilityError(f"address must be {ADDRESS_SIZE} bytes, got {len(address)}")
    if len(body) < MIN_SIGNED_PUT:
        raise CapabilityError(
            f"signed put of {len(body)} bytes: a {SIGNATURE_SIZE}-byte signature and at least "
            "one byte of payload are required"
        )
    if not sodium.crypto_core_ed25519_is_valid_point(address):
        raise CapabilityError("address is not a valid Ed25519 public key")
    return _verified_payload(address, body)


def _verified_payload(address: bytes, body: bytes) -> bytes:
    """The payload of ``body`` if its signature verifies under ``address`` (a point known
    to be valid: checked, or derived by the reader itself)."""
    if len(body) < MIN_SIGNED_PUT:
        raise CapabilityError(f"signed put of {len(body)} bytes is shorter than a signature")
    signature, payload = body[:SIGNATURE_SIZE], body[SIGNATURE_SIZE:]
    try:
        VerifyKey(address).verify(signed_message(address, payload), signature)
    except BadSignatureError:
        raise CapabilityError("signature does not verify under the address") from None
    return payload


class FrameSigner:
    """What a stream shell does with capabilities on a store that takes signed puts: frame
    ``i`` of a direction lives at that direction's blinded key ``M_i`` (instead of the
    schedule's hash address), its body is ``signature || sealed frame``, and a value read
    back is used only if its signature verifies under the address it was read from.

    Why in the shell: the core's ops carry the frame index, and a get's purpose says whose
    direction it reads (``READ``: the peer's; the others: our own), so the core, its frames
    and its saved state stay as they are.
    """

    def __init__(self, secret: bytes, role: Role) -> None:
        self.write, self.peer = stream_caps(secret, role)
        # both ends hold the secret, so the peer's addresses come from its blinded scalars
        # too (a fixed-base multiplication instead of a variable-base one)
        peer_role = Role.DIALER if role is Role.LISTENER else Role.LISTENER
        self._peer_write = WriteCap.derive(secret, peer_role)
        self._addresses: dict[tuple[bool, int], bytes] = {}

    def _address(self, ours: bool, index: int) -> bytes:
        key = (ours, index)
        address = self._addresses.get(key)
        if address is None:
            if len(self._addresses) >= 4096:  # a window's worth is plenty; keep it bounded
                self._addresses.clear()
            cap = self.write if ours else self._peer_write
            address = self._addresses[key] = cap.address(index)
        return address

    def put(self, index: int, value: bytes) -> tuple[bytes, bytes]:
        """(address, body) of our frame ``index``."""
        address = self._address(True, index)
        return address, self.write.sign(index, value, address) + value

    def get_address(self, index: int, peer: bool) -> bytes:
        """Where frame ``index`` of the peer's (``peer``) or our own direction lives."""
        return self._address(not peer, index)

    def open(self, index: int, peer: bool, body: bytes) -> bytes:
        """The sealed frame in ``body`` read for frame ``index``; ``CapabilityError`` if its
        signature does not verify under the address."""
        return _verified_payload(self._address(not peer, index), body)


#: HKDF info prefix of the session rendezvous records' capabilities (``rendezvous.py``)
SESSION_PURPOSE = b"session "


class SlotSigner:
    """Capabilities for the session rendezvous on a store that takes signed puts: the dial
    record of slot ``e`` lives at the blinded key ``e`` of the "dial" capability, the claim
    record at that of the "claim" capability, both derived from the address secret with
    their own HKDF info, so they never meet a stream's frames."""

    def __init__(self, secret: bytes) -> None:
        self.dial = WriteCap.derive(secret, Role.DIALER, SESSION_PURPOSE)
        self.claim = WriteCap.derive(secret, Role.LISTENER, SESSION_PURPOSE)

    def _cap(self, claim: bool) -> WriteCap:
        return self.claim if claim else self.dial

    def address(self, claim: bool, slot: int) -> bytes:
        return self._cap(claim).address(slot)

    def put(self, claim: bool, slot: int, record: bytes) -> tuple[bytes, bytes]:
        """(address, signature || record) of a dial (or claim) record in ``slot``."""
        return self._cap(claim).signed_put(slot, record)

    def open(self, claim: bool, slot: int, body: bytes) -> bytes:
        """The record in ``body``; ``CapabilityError`` if its signature does not verify."""
        return parse_signed_put(self.address(claim, slot), body)
