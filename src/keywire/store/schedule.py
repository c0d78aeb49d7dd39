"""Katzenpost's stream key schedule, exactly, so frames interoperate with its Go code.

``HKDF-SHA256(secret, salt)`` gives a listener sub-secret and a dialer sub-secret; each expands
(same salt) into a frame-key base and a frame-id base for the direction it writes. Frame ``i``
is stored at ``SHA256(IDBase || BE64(i))`` and sealed with key ``SHA256(KeyBase || BE64(i))``
and nonce ``id[:24]``: an address and key used for one frame only, so nothing on the wire
carries a nonce and a retransmission rewrites identical bytes.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .secret import MIN_SECRET_BYTES, SecretError

SALT = b"stream_reader_writer_keymaterial"
KEY_SIZE = 32
#: a store address (a frame id or a session slot): what every backend and the map server key on
ADDRESS_SIZE = 32
NONCE_SIZE = 24


class Role(enum.Enum):
    """Katzenpost's two ends: the listener (``Initiator=true``: Listen/NewStream) and dialer."""

    LISTENER = "listener"
    DIALER = "dialer"


def _hkdf64(ikm: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=2 * KEY_SIZE, salt=SALT, info=None).derive(ikm)


def check_secret(secret: bytes) -> None:
    """``SecretError`` for a stream secret too short to derive keys from."""
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretError(
            f"stream secret has {len(secret)} bytes; at least {MIN_SECRET_BYTES} are required"
        )


def split_secret(secret: bytes) -> tuple[bytes, bytes]:
    """(listener sub-secret, dialer sub-secret) from the shared secret."""
    check_secret(secret)
    material = _hkdf64(secret)
    return material[:KEY_SIZE], material[KEY_SIZE:]


@dataclass(frozen=True)
class DirectionKeys:
    """Key base and id base of the frames one side writes."""

    key_base: bytes
    id_base: bytes

    @classmethod
    def from_material(cls, material: bytes) -> DirectionKeys:
        """From 64 bytes of key material: the key base, then the id base."""
        return cls(material[:KEY_SIZE], material[KEY_SIZE:])

    @classmethod
    def from_subsecret(cls, subsecret: bytes) -> DirectionKeys:
        return cls.from_material(_hkdf64(subsecret))

    def frame_id(self, index: int) -> bytes:
        """The 32-byte store address of frame ``index``."""
        return hashlib.sha256(self.id_base + struct.pack(">Q", index)).digest()

    def frame_key(self, index: int) -> bytes:
        """The secretbox key of frame ``index``."""
        return hashlib.sha256(self.key_base + struct.pack(">Q", index)).digest()


@dataclass(frozen=True)
class KeySchedule:
    """Both directions as seen from one role."""

    role: Role
    write: DirectionKeys
    read: DirectionKeys

    @classmethod
    def derive(cls, secret: bytes, role: Role) -> KeySchedule:
        listener, dialer = split_secret(secret)
        lkeys = DirectionKeys.from_subsecret(listener)
        dkeys = DirectionKeys.from_subsecret(dialer)
        if role is Role.LISTENER:
            return cls(role, write=lkeys, read=dkeys)
        return cls(role, write=dkeys, read=lkeys)
