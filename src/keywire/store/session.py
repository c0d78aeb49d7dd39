"""Sessions, sans-IO: one address, any number of dials, each with a key schedule of its own.

A stream's frames live at addresses derived from its secret, and a store keeps them for its
TTL. Were every dial of one ``…~stream:SECRET`` address to use the secret's key schedule as it
is, a second dial would read the first session's frames (a replay), and its own writes would
reuse the first session's keys and nonces with other contents. So each dial starts a
*session*: the dialer picks a random 32-byte session id and announces it in the first free
*slot* ``e`` (the epoch); the listener takes the announcement, records a claim in the same
slot, and both run Katzenpost's schedule on ``HKDF(secret, "session" ‖ BE64(e) ‖ id)``.

Slot ``e`` has two records, each at ``SHA256(IDBase ‖ BE64(e))`` of its own key material
(``HKDF(secret, salt=SESSION_SALT, info="dial"|"claim")``), sealed with secretbox under
``SHA256(KeyBase ‖ BE64(e))`` and a random nonce stored in front (two dialers racing for one
slot must not reuse a nonce). The plaintext is ``MAGIC ‖ BE64(e) ‖ id``: a record copied to
another slot does not open there, and one from an earlier epoch names another epoch.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

import nacl.exceptions
import nacl.secret
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .schedule import KEY_SIZE, NONCE_SIZE, DirectionKeys, check_secret

SESSION_SALT = b"keywire store sessions v1"
MAGIC = b"KWS1"
SESSION_ID_SIZE = 32
#: the shortest record (no padding); records are padded to the stream's value size, so the
#: store sees values of one length only, and a put of one proves that a frame fits
RECORD_SIZE = NONCE_SIZE + 16 + len(MAGIC) + 8 + SESSION_ID_SIZE
MAX_RECORD = 1 << 24
#: a search never probes more slots than this (2 × 64 covers every 64-bit epoch)
MAX_PROBES = 130


class RecordError(ValueError):
    """A value in a session slot that is not a record of this secret and epoch."""


def _hkdf(secret: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=SESSION_SALT, info=info).derive(
        secret
    )


@dataclass(frozen=True)
class SessionKeys:
    """Where and under which keys the dial and claim records of each slot live."""

    dial: DirectionKeys
    claim: DirectionKeys

    @classmethod
    def derive(cls, secret: bytes) -> SessionKeys:
        check_secret(secret)
        return cls(
            DirectionKeys.from_material(_hkdf(secret, b"dial", 2 * KEY_SIZE)),
            DirectionKeys.from_material(_hkdf(secret, b"claim", 2 * KEY_SIZE)),
        )


@dataclass(frozen=True)
class Session:
    """One dial's session: its slot, its random id, and the secret its stream runs on."""

    epoch: int
    session_id: bytes
    secret: bytes


def new_session(secret: bytes, epoch: int, session_id: bytes | None = None) -> Session:
    """A session in slot ``epoch`` (a fresh random id unless given)."""
    sid = os.urandom(SESSION_ID_SIZE) if session_id is None else session_id
    if len(sid) != SESSION_ID_SIZE:
        raise ValueError(f"a session id has {SESSION_ID_SIZE} bytes")
    derived = _hkdf(secret, b"session" + struct.pack(">Q", epoch) + sid, KEY_SIZE)
    return Session(epoch, sid, derived)


def seal_record(
    keys: DirectionKeys, epoch: int, session_id: bytes, size: int = RECORD_SIZE
) -> tuple[bytes, bytes]:
    """(store address, value) of a dial or claim record naming ``session_id`` in ``epoch``,
    zero-padded to ``size`` bytes in all."""
    if not RECORD_SIZE <= size <= MAX_RECORD:
        raise ValueError(f"a session record has {RECORD_SIZE}..{MAX_RECORD} bytes")
    nonce = os.urandom(NONCE_SIZE)
    plain = MAGIC + struct.pack(">Q", epoch) + session_id
    plain += bytes(size - RECORD_SIZE)
    box = nacl.secret.SecretBox(keys.frame_key(epoch))
    return keys.frame_id(epoch), nonce + box.encrypt(plain, nonce).ciphertext


def open_record(keys: DirectionKeys, epoch: int, value: bytes) -> bytes:
    """The session id in a record read at ``epoch``; ``RecordError`` says what is wrong."""
    if not RECORD_SIZE <= len(value) <= MAX_RECORD:
        raise RecordError(
            f"session slot {epoch}: value of {len(value)} bytes, expected "
            f"{RECORD_SIZE}..{MAX_RECORD}"
        )
    box = nacl.secret.SecretBox(keys.frame_key(epoch))
    try:
        plain = box.decrypt(value[NONCE_SIZE:], value[:NONCE_SIZE])
    except nacl.exceptions.CryptoError:
        raise RecordError(
            f"session slot {epoch}: record does not open (another secret, or "
            "copied from another slot)"
        ) from None
    if plain[: len(MAGIC)] != MAGIC:
        raise RecordError(f"session slot {epoch}: not a session record")
    named = struct.unpack(">Q", plain[len(MAGIC) : len(MAGIC) + 8])[0]
    if named != epoch:
        raise RecordError(f"session slot {epoch}: record of epoch {named}")
    start = len(MAGIC) + 8
    if plain[start + SESSION_ID_SIZE :].strip(b"\x00"):
        raise RecordError(f"session slot {epoch}: padding is not zeros")
    return plain[start : start + SESSION_ID_SIZE]


def record_digest(value: bytes) -> bytes:
    """A short fingerprint of a record, for logs."""
    return hashlib.sha256(value).digest()[:6]


class SlotSearch:
    """The first free slot at or after ``start``, in O(log n) probes: gallop forward over used
    slots (``start+1``, ``+3``, ``+7`` …), then bisect between the last used and the first
    free one. Slots are used in order, so the used ones form a prefix; should a hole exist
    (a record expired, a put was lost), the search returns some free slot, never a used one.

    ``probe()`` gives the slot to look at next (None once ``result`` is known), and
    ``answer(slot, used)`` reports what was found there.
    """

    def __init__(self, start: int = 0) -> None:
        self._lo = start - 1  # highest slot known used (start - 1: none yet)
        self._hi: int | None = None  # lowest slot known free
        self._step = 1
        self._next: int | None = start
        self.probes = 0
        self.result: int | None = None

    def probe(self) -> int | None:
        return self._next

    def answer(self, slot: int, used: bool) -> None:
        if slot != self._next:
            raise ValueError(f"answer for slot {slot}, but slot {self._next} was asked")
        self.probes += 1
        if self.probes > MAX_PROBES:
            raise RecordError("session slot search does not end")
        if self._hi is None:
            if used:
                self._lo = slot
                self._next = slot + self._step
                self._step *= 2
                return
            self._hi = slot
        elif used:
            self._lo = slot
        else:
            self._hi = slot
        if self._hi - self._lo <= 1:
            self.result, self._next = self._hi, None
        else:
            self._next = (self._lo + self._hi) // 2
