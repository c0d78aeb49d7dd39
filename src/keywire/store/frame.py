"""Frames: Katzenpost's CBOR ``{Type, Id, Ack, Payload}``, padded and sealed with secretbox.

The encoder writes what fxamacker/cbor writes for Katzenpost's Go struct (a 4-entry map with
text keys in declaration order, shortest integers), so Go can read our frames. The decoder is
our own, strict and small: it needs no general CBOR parser, and every malformed input becomes a
``FrameError`` naming the problem. Every sealed frame of a stream has the same length (the
plaintext is zero-padded to a constant size), so the store cannot tell data from acks or the
last partial frame from a full one.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import nacl.exceptions
from nacl.bindings import crypto_secretbox_easy, crypto_secretbox_open_easy

from .schedule import NONCE_SIZE, DirectionKeys

#: the "no acknowledgement yet" value of ``Ack`` (Katzenpost's ``no_ack``)
NO_ACK = (1 << 64) - 1
MAX_UINT64 = (1 << 64) - 1
TAG_SIZE = 16
#: a frame map with the largest integers, before the payload's byte-string header
_FIXED_OVERHEAD = 1 + 5 + 2 + 3 + 9 + 4 + 9 + 8
MIN_VALUE_SIZE = 128
MAX_VALUE_SIZE = 1 << 24


class FrameType(enum.IntEnum):
    """Katzenpost's types, plus keywire's extensions RESET, JUMP and STOP_SENDING."""

    START = 0
    DATA = 1
    END = 2
    #: keywire: the writer abandoned its direction; the payload is a 4-byte error code
    RESET = 3
    #: keywire: a writer restored from saved state continues at the index in the payload
    #: (8 bytes), past frames its previous run may have left behind a lost one
    JUMP = 4
    #: keywire: the sender's reader asks the peer to stop writing and to reset its direction
    #: with the 4-byte error code in the payload; it travels in the sender's own write
    #: direction, also after that direction's End or Reset
    STOP_SENDING = 5


#: frame types whose payload is not stream data
CONTROL_FRAMES = (FrameType.RESET, FrameType.JUMP, FrameType.STOP_SENDING)


class FrameError(ValueError):
    """A stored value that is not a valid frame for the index it was read at."""


@dataclass(frozen=True)
class Frame:
    type: FrameType
    id: int
    ack: int
    payload: bytes = b""

    @property
    def elicits_ack(self) -> bool:
        """Frames carrying data or an end must be acknowledged; bare acks need not be."""
        return bool(self.payload) or self.type in (
            FrameType.END,
            FrameType.RESET,
            FrameType.JUMP,
            FrameType.STOP_SENDING,
        )


def _head(major: int, value: int) -> bytes:
    top = major << 5
    if value < 24:
        return bytes([top | value])
    if value < 0x100:
        return bytes([top | 24, value])
    if value < 0x10000:
        return bytes([top | 25]) + struct.pack(">H", value)
    if value < 0x100000000:
        return bytes([top | 26]) + struct.pack(">I", value)
    return bytes([top | 27]) + struct.pack(">Q", value)


def _text(s: str) -> bytes:
    raw = s.encode("ascii")
    return _head(3, len(raw)) + raw


_K_TYPE, _K_ID, _K_ACK, _K_PAYLOAD = (_text(k) for k in ("Type", "Id", "Ack", "Payload"))


def encode_frame(frame: Frame, pad_to: int = 0) -> bytes:
    """CBOR of a frame, byte for byte as Katzenpost's Go encoder writes it, followed by zeros
    up to ``pad_to`` bytes (in the same allocation: frames are up to a value long)."""
    for name, value in (("Id", frame.id), ("Ack", frame.ack)):
        if not 0 <= value <= MAX_UINT64:
            raise ValueError(f"frame {name} {value} does not fit in 64 bits")
    head = b"".join(
        (
            b"\xa4",
            _K_TYPE,
            _head(0, int(frame.type)),
            _K_ID,
            _head(0, frame.id),
            _K_ACK,
            _head(0, frame.ack),
            _K_PAYLOAD,
            _head(2, len(frame.payload)),
        )
    )
    padding = pad_to - len(head) - len(frame.payload)
    if padding <= 0:
        return head + frame.payload
    return b"".join((head, frame.payload, bytes(padding)))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self, what: str) -> int:
        if self.pos >= len(self.data):
            raise FrameError(f"frame CBOR ends inside {what}")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise FrameError(f"frame CBOR ends inside {what} ({n} bytes announced)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def head(self, what: str) -> tuple[int, int]:
        """(major type, argument) of the next item; indefinite lengths are refused."""
        initial = self.byte(what)
        major, info = initial >> 5, initial & 0x1F
        if major == 7:
            return major, info
        if info < 24:
            return major, info
        if info > 27:
            raise FrameError(f"{what}: CBOR additional info {info} is not allowed in a frame")
        size = 1 << (info - 24)
        return major, int.from_bytes(self.take(size, what), "big")


def decode_frame(plaintext: bytes) -> Frame:
    """Parse a frame and check that only zero padding follows it."""
    r = _Reader(plaintext)
    major, count = r.head("the frame map")
    if major != 5:
        raise FrameError(f"frame is CBOR major type {major}, expected a map")
    if count != 4:
        raise FrameError(f"frame map has {count} entries, expected 4 (Type, Id, Ack, Payload)")
    fields: dict[str, object] = {}
    for _ in range(4):
        kmajor, klen = r.head("a frame key")
        if kmajor != 3 or klen > 16:
            raise FrameError("frame keys must be short text strings")
        key = r.take(klen, "a frame key").decode("ascii", errors="replace")
        if key not in ("Type", "Id", "Ack", "Payload"):
            raise FrameError(f"unknown frame field {key!r}")
        if key in fields:
            raise FrameError(f"frame field {key!r} appears twice")
        vmajor, varg = r.head(f"the value of {key}")
        if key == "Payload":
            if vmajor == 7 and varg == 22:
                fields[key] = b""
            elif vmajor == 2:
                fields[key] = r.take(varg, "the payload")
            else:
                raise FrameError(f"frame Payload is CBOR major type {vmajor}, expected bytes")
        else:
            if vmajor != 0:
                raise FrameError(f"frame {key} is CBOR major type {vmajor}, expected an integer")
            fields[key] = varg
    # compared against fresh zeros (a memcmp): the padding is most of a short frame, and
    # scanning it byte by byte (strip, count) costs far more
    padding = len(plaintext) - r.pos
    if padding and not plaintext.endswith(bytes(padding)):
        raise FrameError("non-zero bytes follow the frame (padding must be zeros)")
    type_value = fields["Type"]
    assert isinstance(type_value, int)
    try:
        ftype = FrameType(type_value)
    except ValueError:
        raise FrameError(f"unknown frame type {type_value}") from None
    frame_id, ack, payload = fields["Id"], fields["Ack"], fields["Payload"]
    assert isinstance(frame_id, int) and isinstance(ack, int) and isinstance(payload, bytes)
    if ftype is FrameType.STOP_SENDING and len(payload) != 4:
        raise FrameError(
            f"StopSending payload of {len(payload)} bytes, expected a 4-byte error code"
        )
    return Frame(ftype, frame_id, ack, payload)


@dataclass(frozen=True)
class Geometry:
    """Sizes that follow from the store's value size: every sealed frame is exactly that long."""

    value_size: int

    def __post_init__(self) -> None:
        if not MIN_VALUE_SIZE <= self.value_size <= MAX_VALUE_SIZE:
            raise ValueError(
                f"value size {self.value_size} is outside {MIN_VALUE_SIZE}..{MAX_VALUE_SIZE} bytes"
            )

    @property
    def plaintext_size(self) -> int:
        return self.value_size - TAG_SIZE

    @property
    def payload_capacity(self) -> int:
        """Most payload bytes one frame carries whatever its Id and Ack."""
        room = self.plaintext_size - _FIXED_OVERHEAD
        for header in (1, 2, 3, 5, 9):
            cap = room - header
            if len(_head(2, cap)) <= header:
                return cap
        raise AssertionError("unreachable")  # pragma: no cover


def seal_frame(keys: DirectionKeys, frame: Frame, geometry: Geometry) -> tuple[bytes, bytes]:
    """(store address, sealed value) of ``frame`` written with ``keys``."""
    if len(frame.payload) > geometry.payload_capacity:
        raise ValueError(
            f"payload of {len(frame.payload)} bytes exceeds the frame capacity "
            f"of {geometry.payload_capacity}"
        )
    address = keys.frame_id(frame.id)
    plain = encode_frame(frame, geometry.plaintext_size)
    # secretbox (XSalsa20-Poly1305) through libsodium's easy API: tag || ciphertext, exactly
    # what ``SecretBox.encrypt(...).ciphertext`` gives, without its wrapper objects
    return address, crypto_secretbox_easy(plain, address[:NONCE_SIZE], keys.frame_key(frame.id))


def open_frame(keys: DirectionKeys, index: int, value: bytes, max_value: int) -> Frame:
    """Decrypt and parse the value read at frame ``index``; ``FrameError`` says what is wrong."""
    if len(value) > max_value:
        raise FrameError(
            f"frame {index}: value of {len(value)} bytes exceeds the limit of {max_value}"
        )
    if len(value) < TAG_SIZE:
        raise FrameError(f"frame {index}: value of {len(value)} bytes is shorter than a tag")
    try:
        plain = crypto_secretbox_open_easy(
            value, keys.frame_id(index)[:NONCE_SIZE], keys.frame_key(index)
        )
    except nacl.exceptions.CryptoError:
        raise FrameError(
            f"frame {index}: failed to decrypt (wrong secret or a forged or corrupted value)"
        ) from None
    try:
        frame = decode_frame(plain)
    except FrameError as exc:
        raise FrameError(f"frame {index}: {exc}") from None
    if frame.id != index:
        raise FrameError(f"frame {index}: decoded Id is {frame.id}, not the index it was stored at")
    return frame
