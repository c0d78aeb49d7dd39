"""The yamux frame header, and how keywire's error codes ride in its length field.

Every frame starts with 12 bytes, big-endian: version (u8, always 0), type (u8), flags (u16),
stream id (u32), length (u32). Only Data frames carry a payload (``length`` bytes); for the other
types the length field *is* the value: a window delta, a ping's opaque value, a GoAway code.

Decoding is strict because a byte-stream peer that gets the framing wrong has lost sync for
good: an unknown version or type, or a Data length no window could allow, is a
``MuxProtocolError`` that names the field. Unknown flag bits are ignored, as yamux does, which
is what lets keywire add STOP_SENDING without breaking plain yamux peers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from ..errors import Code, KeywireError

VERSION = 0
HEADER_SIZE = 12
#: the window every stream starts with, in both directions (yamux spec)
INITIAL_WINDOW = 256 * 1024
MAX_UINT32 = 0xFFFF_FFFF

HEADER = struct.Struct(">BBHII")


class FrameType(IntEnum):
    DATA = 0
    WINDOW_UPDATE = 1
    PING = 2
    GO_AWAY = 3


class Flag(IntFlag):
    SYN = 0x1
    ACK = 0x2
    FIN = 0x4
    RST = 0x8
    #: keywire extension, on a WindowUpdate: "stop sending", length = code field
    STOP_SENDING = 0x10


class GoAwayCode(IntEnum):
    """The three GoAway values plain yamux defines."""

    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


#: a code field at or above this value carries keywire code ``value - CODE_BASE``; values below
#: it keep their plain yamux meaning (a plain RST has length 0; GoAway has 0, 1 and 2)
CODE_BASE = 0x100
#: largest code keywire puts on the wire (the field must stay a small, readable number)
MAX_SEND_CODE = 0xFFFF
#: the largest code field we send, so the largest window a plain peer may wrongly add
MAX_CODE_FIELD = CODE_BASE + MAX_SEND_CODE


class MuxProtocolError(KeywireError):
    """The peer broke the mux protocol; the session answers with GoAway(protocol error)."""

    code = Code.PROTOCOL_ERROR


@dataclass(frozen=True, slots=True)
class Header:
    type: FrameType
    flags: int
    stream_id: int
    length: int

    def encode(self) -> bytes:
        return encode_header(self.type, self.flags, self.stream_id, self.length)


def encode_header(frame_type: int, flags: int, stream_id: int, length: int) -> bytes:
    """The 12 header bytes; raises ValueError for fields that do not fit their width."""
    if not 0 <= flags <= 0xFFFF:
        raise ValueError(f"flags {flags:#x} do not fit 16 bits")
    if not 0 <= stream_id <= MAX_UINT32:
        raise ValueError(f"stream id {stream_id} does not fit 32 bits")
    if not 0 <= length <= MAX_UINT32:
        raise ValueError(f"length {length} does not fit 32 bits")
    return HEADER.pack(VERSION, frame_type, flags, stream_id, length)


def decode_header(
    data: bytes | bytearray | memoryview, offset: int = 0, *, max_data: int = MAX_UINT32
) -> Header:
    """Parse the header at ``offset``; ``max_data`` bounds a Data frame's payload length."""
    if len(data) - offset < HEADER_SIZE:
        got = max(0, len(data) - offset)
        raise MuxProtocolError(f"truncated frame header: {got} of {HEADER_SIZE} bytes")
    version, frame_type, flags, stream_id, length = HEADER.unpack_from(data, offset)
    if version != VERSION:
        raise MuxProtocolError(f"unsupported yamux version {version} (only {VERSION} exists)")
    if frame_type > FrameType.GO_AWAY:
        raise MuxProtocolError(f"unknown frame type {frame_type} (0-3 are defined)")
    if frame_type == FrameType.DATA and length > max_data:
        raise MuxProtocolError(
            f"data frame of {length} bytes on stream {stream_id} exceeds the limit of {max_data}"
        )
    return Header(FrameType(frame_type), flags, stream_id, length)


def check_code(code: int) -> int:
    """A code we may send: 0..MAX_SEND_CODE (the registry is 0-11; larger ones are private)."""
    if not 0 <= int(code) <= MAX_SEND_CODE:
        raise ValueError(f"error code {code} is outside 0..{MAX_SEND_CODE}")
    return int(code)


def encode_code(code: int) -> int:
    """The length field of a coded RST or STOP_SENDING."""
    return CODE_BASE + check_code(code)


def decode_code(value: int) -> int | None:
    """The keywire code in a length field, or None if it is a plain yamux value."""
    return value - CODE_BASE if value >= CODE_BASE else None


def encode_go_away(code: int) -> int:
    """GoAway's field: yamux's own values where they mean the same, else a coded field."""
    code = check_code(code)
    if code == Code.NONE:
        return GoAwayCode.NORMAL
    if code == Code.PROTOCOL_ERROR:
        return GoAwayCode.PROTOCOL_ERROR
    if code == Code.INTERNAL_ERROR:
        return GoAwayCode.INTERNAL_ERROR
    return CODE_BASE + code


def decode_go_away(value: int) -> int:
    """The keywire code of a GoAway field (an unknown plain value counts as internal-error)."""
    coded = decode_code(value)
    if coded is not None:
        return coded
    if value == GoAwayCode.NORMAL:
        return Code.NONE
    if value == GoAwayCode.PROTOCOL_ERROR:
        return Code.PROTOCOL_ERROR
    return Code.INTERNAL_ERROR
