"""WebTransport over HTTP/3 wire details, sans-IO: stream headers, error codes, capsules.

From draft-ietf-webtrans-http3: a bidirectional WebTransport stream starts with the
WEBTRANSPORT_STREAM signal (varint 0x41) and the session id (varint); a unidirectional one
with the stream type 0x54 and the session id. A datagram starts with the quarter stream id
(session id / 4). Application error codes (32 bits) travel in RESET_STREAM and STOP_SENDING
mapped into the HTTP/3 range starting at ``0x52e4a40fa8db``, skipping HTTP/3's reserved
(GREASE) codepoints ``0x1f * N + 0x21``. A session ends with the CLOSE_WEBTRANSPORT_SESSION
capsule (type 0x2843: u32 code, UTF-8 reason) on the CONNECT stream.
"""

from __future__ import annotations

import struct

BIDI_SIGNAL = 0x41
UNI_TYPE = 0x54
FIRST_CODE = 0x52E4A40FA8DB
LAST_CODE = 0x52E5AC983162
CLOSE_SESSION = 0x2843
#: the path a keywire WebTransport server answers on (other paths get 404)
PATH = "/keywire"


def encode_varint(value: int) -> bytes:
    """QUIC variable-length integer (RFC 9000 §16)."""
    if value < 0x40:
        return bytes([value])
    if value < 0x4000:
        return struct.pack(">H", value | 0x4000)
    if value < 0x40000000:
        return struct.pack(">I", value | 0x80000000)
    if value < 0x4000000000000000:
        return struct.pack(">Q", value | 0xC000000000000000)
    raise ValueError(f"{value} does not fit a QUIC varint")


def decode_varint(data: bytes | bytearray, offset: int = 0) -> tuple[int, int] | None:
    """``(value, next offset)``, or None if ``data`` ends inside the varint."""
    if offset >= len(data):
        return None
    length = 1 << (data[offset] >> 6)
    if offset + length > len(data):
        return None
    value = data[offset] & 0x3F
    for byte in data[offset + 1 : offset + length]:
        value = (value << 8) | byte
    return value, offset + length


def to_http_code(code: int) -> int:
    """A WebTransport application error code (u32) as the HTTP/3 code on the wire."""
    if not 0 <= code <= 0xFFFFFFFF:
        raise ValueError(f"WebTransport error codes are 32-bit, got {code}")
    return FIRST_CODE + code + code // 0x1E


def from_http_code(http_code: int) -> int | None:
    """The WebTransport code an HTTP/3 error code carries, or None if it carries none."""
    if not FIRST_CODE <= http_code <= LAST_CODE or (http_code - 0x21) % 0x1F == 0:
        return None
    shifted = http_code - FIRST_CODE
    return shifted - shifted // 0x1F


def bidi_header(session_id: int) -> bytes:
    return encode_varint(BIDI_SIGNAL) + encode_varint(session_id)


def uni_header(session_id: int) -> bytes:
    return encode_varint(UNI_TYPE) + encode_varint(session_id)


def close_capsule(code: int, reason: str) -> bytes:
    """CLOSE_WEBTRANSPORT_SESSION (the reason cut to 1024 bytes, as the draft allows)."""
    body = struct.pack(">I", code & 0xFFFFFFFF) + reason.encode()[:1024]
    return encode_varint(CLOSE_SESSION) + encode_varint(len(body)) + body


def parse_capsules(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Take whole capsules off the front of ``buffer``: ``(type, value)`` each."""
    out: list[tuple[int, bytes]] = []
    while True:
        head = decode_varint(buffer, 0)
        if head is None:
            return out
        size = decode_varint(buffer, head[1])
        if size is None or size[1] + size[0] > len(buffer):
            return out
        out.append((head[0], bytes(buffer[size[1] : size[1] + size[0]])))
        del buffer[: size[1] + size[0]]
