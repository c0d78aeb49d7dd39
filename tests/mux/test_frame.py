"""The yamux header codec against bytes written by hand from the spec, and its code fields."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keywire.errors import Code
from keywire.mux.frame import (
    CODE_BASE,
    HEADER_SIZE,
    INITIAL_WINDOW,
    Flag,
    FrameType,
    Header,
    MuxProtocolError,
    decode_code,
    decode_go_away,
    decode_header,
    encode_code,
    encode_go_away,
    encode_header,
)

# (description, header, the 12 bytes: version | type | flags | stream id | length)
VECTORS = [
    ("data, stream 1, 5 bytes", Header(FrameType.DATA, 0, 1, 5), "00 00 0000 00000001 00000005"),
    (
        "open stream 1 with a window update SYN, delta 0",
        Header(FrameType.WINDOW_UPDATE, Flag.SYN, 1, 0),
        "00 01 0001 00000001 00000000",
    ),
    (
        "accept stream 2 with ACK and a 768 KiB delta (1 MiB window)",
        Header(FrameType.WINDOW_UPDATE, Flag.ACK, 2, 768 * 1024),
        "00 01 0002 00000002 000c0000",
    ),
    (
        "FIN on stream 5",
        Header(FrameType.WINDOW_UPDATE, Flag.FIN, 5, 0),
        "00 01 0004 00000005 00000000",
    ),
    (
        "plain yamux RST on stream 7",
        Header(FrameType.WINDOW_UPDATE, Flag.RST, 7, 0),
        "00 01 0008 00000007 00000000",
    ),
    (
        "keywire RST with code 6 on stream 3",
        Header(FrameType.WINDOW_UPDATE, Flag.RST, 3, 0x106),
        "00 01 0008 00000003 00000106",
    ),
    (
        "STOP_SENDING with code 1 on stream 2",
        Header(FrameType.WINDOW_UPDATE, Flag.STOP_SENDING, 2, 0x101),
        "00 01 0010 00000002 00000101",
    ),
    (
        "ping request, opaque 0x12345678",
        Header(FrameType.PING, Flag.SYN, 0, 0x12345678),
        "00 02 0001 00000000 12345678",
    ),
    (
        "ping answer",
        Header(FrameType.PING, Flag.ACK, 0, 0x12345678),
        "00 02 0002 00000000 12345678",
    ),
    ("GoAway normal", Header(FrameType.GO_AWAY, 0, 0, 0), "00 03 0000 00000000 00000000"),
    ("GoAway protocol error", Header(FrameType.GO_AWAY, 0, 0, 1), "00 03 0000 00000000 00000001"),
    (
        "data with SYN|FIN on the largest id",
        Header(FrameType.DATA, 0x5, 0xFFFFFFFF, 0),
        "00 00 0005 ffffffff 00000000",
    ),
]


@pytest.mark.parametrize(("what", "header", "hexbytes"), VECTORS, ids=[v[0] for v in VECTORS])
def test_vectors(what: str, header: Header, hexbytes: str) -> None:
    wire = bytes.fromhex(hexbytes.replace(" ", ""))
    assert len(wire) == HEADER_SIZE
    assert header.encode() == wire
    assert decode_header(wire) == header
    assert decode_header(b"junk" + wire, 4) == header


def test_initial_window_is_256_kib() -> None:
    assert INITIAL_WINDOW == 262144


@pytest.mark.parametrize(
    ("hexbytes", "message"),
    [
        ("01 00 0000 00000001 00000000", "unsupported yamux version 1"),
        ("ff 01 0000 00000001 00000000", "unsupported yamux version 255"),
        ("00 04 0000 00000001 00000000", "unknown frame type 4"),
        ("00 ff 0000 00000000 00000000", "unknown frame type 255"),
        ("00 00 0000 00000001 00000101", "data frame of 257 bytes on stream 1 exceeds the limit"),
        ("00 00 0000 00000001", "truncated frame header: 8 of 12 bytes"),
    ],
)
def test_rejections_name_the_field(hexbytes: str, message: str) -> None:
    with pytest.raises(MuxProtocolError, match=message):
        decode_header(bytes.fromhex(hexbytes.replace(" ", "")), max_data=256)


def test_length_limit_applies_to_data_only() -> None:
    # a window update / ping / GoAway length is a value, not a payload size
    for kind in (FrameType.WINDOW_UPDATE, FrameType.PING, FrameType.GO_AWAY):
        wire = encode_header(kind, 0, 0, 0xFFFFFFFF)
        assert decode_header(wire, max_data=16).length == 0xFFFFFFFF


def test_unknown_flags_are_kept_not_rejected() -> None:
    wire = encode_header(FrameType.WINDOW_UPDATE, 0x8020, 9, 0)
    assert decode_header(wire).flags == 0x8020


def test_encode_rejects_fields_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="stream id"):
        encode_header(0, 0, 1 << 32, 0)
    with pytest.raises(ValueError, match="length"):
        encode_header(0, 0, 1, -1)
    with pytest.raises(ValueError, match="flags"):
        encode_header(0, 0x10000, 1, 0)


def test_code_fields() -> None:
    assert encode_code(Code.NONE) == 0x100
    assert encode_code(Code.QUEUE_FULL) == 0x109
    assert decode_code(0x109) == 9
    assert decode_code(0) is None  # a plain yamux RST
    assert decode_code(0xFF) is None
    with pytest.raises(ValueError, match="outside"):
        encode_code(0x10000)
    with pytest.raises(ValueError, match="outside"):
        encode_code(-1)


@pytest.mark.parametrize(
    ("code", "field"),
    [
        (Code.NONE, 0),
        (Code.PROTOCOL_ERROR, 1),
        (Code.INTERNAL_ERROR, 2),
        (Code.CANCELLED, 0x101),
        (Code.CLOSED, 0x102),
        (Code.TIMEOUT, 0x104),
        (Code.NETWORK_ERROR, 0x105),
        (Code.QUEUE_FULL, 0x109),
        (Code.PERMISSION_DENIED, 0x10A),
    ],
)
def test_go_away_mapping(code: Code, field: int) -> None:
    assert encode_go_away(code) == field
    assert decode_go_away(field) == code


def test_go_away_unknown_plain_value_is_internal_error() -> None:
    assert decode_go_away(3) == Code.INTERNAL_ERROR
    assert decode_go_away(0xFF) == Code.INTERNAL_ERROR
    assert decode_go_away(0x100 + 4242) == 4242  # kept; Code.from_wire maps it on display


@given(st.integers(0, 0xFFFF))
def test_code_fields_round_trip(code: int) -> None:
    assert decode_code(encode_code(code)) == code
    assert decode_go_away(encode_go_away(code)) == code


@settings(max_examples=500)
@given(st.binary(min_size=0, max_size=40), st.integers(0, 1 << 20))
def test_decoder_fuzz(data: bytes, max_data: int) -> None:
    """Random bytes: a header, or a MuxProtocolError that says why; nothing else."""
    try:
        header = decode_header(data, max_data=max_data)
    except MuxProtocolError as exc:
        assert str(exc)
        return
    assert len(data) >= HEADER_SIZE
    assert data[0] == 0 and data[1] <= 3
    assert header.encode() == data[:HEADER_SIZE]


@given(
    st.sampled_from(list(FrameType)),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
)
def test_encode_decode_round_trip(kind: FrameType, flags: int, sid: int, length: int) -> None:
    header = Header(kind, flags, sid, length)
    assert decode_header(header.encode()) == header


def test_code_base_leaves_room_for_plain_values() -> None:
    assert CODE_BASE == 0x100
