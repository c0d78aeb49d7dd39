"""KPS WebRTC wire version 1: the byte layouts of stream frames and control messages.

Stream channels carry 1-byte-type frames (KPS SPEC §6.2); channel 0 carries control messages
(§6.5). Both decoders are strict: every malformed input raises ``WireError`` naming what was
wrong, because any violation must close the connection with protocol-error rather than be
guessed at.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ...errors import Code, KeywireError

#: a whole stream frame (type byte + payload) is at most this many bytes
MAX_FRAME_SIZE = 16384
#: so one DATA frame carries 1..16383 bytes
MAX_DATA_PAYLOAD = MAX_FRAME_SIZE - 1
#: the largest credit value (QUIC's varint limit)
MAX_OFFSET = (1 << 62) - 1
#: the only wire version this module speaks
WIRE_VERSION = 1

# stream frame types
DATA = 0x00
FIN = 0x01
RESET = 0x02
STOP_SENDING = 0x03
MAX_STREAM_DATA = 0x04

# control message types
CONNECTION_CLOSE = 0x00
HELLO = 0x01
MAX_DATA = 0x02
MAX_STREAMS = 0x03

_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_HELLO = struct.Struct("!BBQQQ")


class WireError(KeywireError):
    """A frame or control message that breaks KPS wire v1; always a protocol-error."""

    code = Code.PROTOCOL_ERROR


# -- stream frames -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    payload: bytes


@dataclass(frozen=True)
class Fin:
    pass


@dataclass(frozen=True)
class Reset:
    code: int


@dataclass(frozen=True)
class StopSending:
    code: int


@dataclass(frozen=True)
class MaxStreamData:
    offset: int


StreamFrame = Data | Fin | Reset | StopSending | MaxStreamData

_STREAM_NAMES = {
    DATA: "DATA",
    FIN: "FIN",
    RESET: "RESET",
    STOP_SENDING: "STOP_SENDING",
    MAX_STREAM_DATA: "MAX_STREAM_DATA",
}


def encode_data(payload: bytes | memoryview) -> bytes:
    if not 1 <= len(payload) <= MAX_DATA_PAYLOAD:
        raise ValueError(f"a DATA frame carries 1..{MAX_DATA_PAYLOAD} bytes, not {len(payload)}")
    return b"\x00" + bytes(payload)


def encode_fin() -> bytes:
    return b"\x01"


def encode_reset(code: int) -> bytes:
    return _coded(RESET, code)


def encode_stop_sending(code: int) -> bytes:
    return _coded(STOP_SENDING, code)


def encode_max_stream_data(offset: int) -> bytes:
    return _credit(MAX_STREAM_DATA, offset, "MAX_STREAM_DATA")


def encode_stream_frame(frame: StreamFrame) -> bytes:
    match frame:
        case Data(payload):
            return encode_data(payload)
        case Fin():
            return encode_fin()
        case Reset(code):
            return encode_reset(code)
        case StopSending(code):
            return encode_stop_sending(code)
        case MaxStreamData(offset):
            return encode_max_stream_data(offset)
    raise TypeError(f"not a stream frame: {frame!r}")


def decode_stream_frame(message: bytes | memoryview) -> StreamFrame:
    """One stream-channel message → its frame; ``WireError`` on anything malformed."""
    size = len(message)
    if size == 0:
        raise WireError("empty stream frame")
    if size > MAX_FRAME_SIZE:
        raise WireError(f"stream frame of {size} bytes exceeds {MAX_FRAME_SIZE}")
    kind = message[0]
    if kind == DATA:
        if size == 1:
            raise WireError("DATA frame with an empty payload")
        return Data(bytes(message[1:]))
    name = _STREAM_NAMES.get(kind)
    if name is None:
        raise WireError(f"unknown stream frame type 0x{kind:02x}")
    if kind == FIN:
        _need(size, 1, name)
        return Fin()
    if kind in (RESET, STOP_SENDING):
        _need(size, 5, name)
        code = _U32.unpack_from(message, 1)[0]
        return Reset(code) if kind == RESET else StopSending(code)
    _need(size, 9, name)
    offset = _U64.unpack_from(message, 1)[0]
    _check_credit(offset, name, WireError)
    return MaxStreamData(offset)


# -- control messages --------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionClose:
    code: int


@dataclass(frozen=True)
class Hello:
    version: int
    initial_max_stream_data: int = 0
    initial_max_data: int = 0
    initial_max_streams: int = 0


@dataclass(frozen=True)
class MaxData:
    maximum: int


@dataclass(frozen=True)
class MaxStreams:
    maximum: int


ControlMessage = ConnectionClose | Hello | MaxData | MaxStreams


def encode_connection_close(code: int) -> bytes:
    return _coded(CONNECTION_CLOSE, code)


def encode_hello(hello: Hello) -> bytes:
    for value, what in (
        (hello.initial_max_stream_data, "initialMaxStreamData"),
        (hello.initial_max_data, "initialMaxData"),
        (hello.initial_max_streams, "initialMaxStreams"),
    ):
        _check_credit(value, what)
    return _HELLO.pack(
        HELLO,
        hello.version,
        hello.initial_max_stream_data,
        hello.initial_max_data,
        hello.initial_max_streams,
    )


def encode_max_data(maximum: int) -> bytes:
    return _credit(MAX_DATA, maximum, "MAX_DATA")


def encode_max_streams(maximum: int) -> bytes:
    return _credit(MAX_STREAMS, maximum, "MAX_STREAMS")


def encode_control(message: ControlMessage) -> bytes:
    match message:
        case ConnectionClose(code):
            return encode_connection_close(code)
        case Hello():
            return encode_hello(message)
        case MaxData(maximum):
            return encode_max_data(maximum)
        case MaxStreams(maximum):
            return encode_max_streams(maximum)
    raise TypeError(f"not a control message: {message!r}")


def decode_control(message: bytes | memoryview) -> ControlMessage:
    """One channel-0 message → its control message; ``WireError`` on anything malformed.

    A HELLO of another version is returned (with zero limits) whatever its length, so the
    caller can answer it with ``unsupported`` rather than ``protocol-error``.
    """
    size = len(message)
    if size == 0:
        raise WireError("empty control message")
    kind = message[0]
    if kind == CONNECTION_CLOSE:
        _need(size, 5, "CONNECTION_CLOSE")
        return ConnectionClose(_U32.unpack_from(message, 1)[0])
    if kind == HELLO:
        if size < 2:
            raise WireError("HELLO without a version byte")
        version = message[1]
        if version != WIRE_VERSION:
            return Hello(version)
        _need(size, _HELLO.size, "HELLO")
        _, _, stream_data, data, streams = _HELLO.unpack_from(message)
        for value, what in (
            (stream_data, "initialMaxStreamData"),
            (data, "initialMaxData"),
            (streams, "initialMaxStreams"),
        ):
            _check_credit(value, f"HELLO {what}", WireError)
        return Hello(version, stream_data, data, streams)
    if kind in (MAX_DATA, MAX_STREAMS):
        name = "MAX_DATA" if kind == MAX_DATA else "MAX_STREAMS"
        _need(size, 9, name)
        value = _U64.unpack_from(message, 1)[0]
        _check_credit(value, name, WireError)
        return MaxData(value) if kind == MAX_DATA else MaxStreams(value)
    raise WireError(f"unknown control message type 0x{kind:02x}")


def _need(size: int, expected: int, name: str) -> None:
    if size != expected:
        raise WireError(f"{name} is {expected} bytes, got {size}")


def _check_credit(value: int, what: str, error: type[Exception] = ValueError) -> None:
    if not 0 <= value <= MAX_OFFSET:
        raise error(f"{what} value {value} is above the maximum 2^62-1")


def _coded(kind: int, code: int) -> bytes:
    """A frame or control message that is its type byte and a 32-bit code."""
    return bytes((kind,)) + _U32.pack(code)


def _credit(kind: int, value: int, what: str) -> bytes:
    """A frame or control message that is its type byte and a checked 62-bit credit."""
    _check_credit(value, what)
    return bytes((kind,)) + _U64.pack(value)
