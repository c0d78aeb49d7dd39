"""KPS wire v1 byte layouts: the framing rows of KPS's test matrix, and fuzzing of the decoders."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keywire.kps.webrtc import frames as f


# -- KPS framing_test vectors ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("wire", "frame"),
    [
        (bytes([0x00, ord("h"), ord("i")]), f.Data(b"hi")),
        (bytes([0x01]), f.Fin()),
        (bytes([0x02, 0, 0, 0, 3]), f.Reset(3)),
        (bytes([0x03, 0, 0, 0, 1]), f.StopSending(1)),
        (bytes([0x04, 0, 0, 0, 0, 0, 0x10, 0, 0]), f.MaxStreamData(1 << 20)),
    ],
)
def test_stream_frame_vectors(wire: bytes, frame: f.StreamFrame) -> None:
    assert f.encode_stream_frame(frame) == wire
    assert f.decode_stream_frame(wire) == frame


def test_control_vectors() -> None:
    hello = f.Hello(1, 1 << 20, 8 << 20, 100)
    wire = (
        bytes([0x01, 0x01])
        + (1 << 20).to_bytes(8, "big")
        + (8 << 20).to_bytes(8, "big")
        + (100).to_bytes(8, "big")
    )
    assert len(wire) == 26
    assert f.encode_control(hello) == wire
    assert f.decode_control(wire) == hello
    assert f.encode_control(f.ConnectionClose(6)) == bytes([0, 0, 0, 0, 6])
    assert f.encode_control(f.MaxData(5)) == bytes([2, 0, 0, 0, 0, 0, 0, 0, 5])
    assert f.encode_control(f.MaxStreams(101)) == bytes([3, 0, 0, 0, 0, 0, 0, 0, 101])
    for message in (f.ConnectionClose(6), f.MaxData(5), f.MaxStreams(101)):
        assert f.decode_control(f.encode_control(message)) == message


def test_other_hello_version_decodes_for_unsupported() -> None:
    assert f.decode_control(bytes([0x01, 0x02])) == f.Hello(2)
    assert f.decode_control(bytes([0x01, 0x00]) + bytes(24)) == f.Hello(0)


@pytest.mark.parametrize(
    ("wire", "needle"),
    [
        (b"", "empty"),
        (b"\x00", "empty payload"),
        (b"\x07", "unknown stream frame type 0x07"),
        (b"\x01\x00", "FIN is 1 bytes"),
        (b"\x02\x00\x00\x00", "RESET is 5 bytes"),
        (b"\x03\x00\x00\x00\x00\x00", "STOP_SENDING is 5 bytes"),
        (b"\x04" + b"\xff" * 8, "above the maximum"),
        (b"\x00" + bytes(16384), "exceeds 16384"),
    ],
)
def test_stream_frame_rejections(wire: bytes, needle: str) -> None:
    with pytest.raises(f.WireError, match=needle):
        f.decode_stream_frame(wire)


@pytest.mark.parametrize(
    ("wire", "needle"),
    [
        (b"", "empty"),
        (b"\x00\x00\x00\x00", "CONNECTION_CLOSE is 5 bytes"),
        (b"\x01", "without a version"),
        (b"\x01\x01" + bytes(23), "HELLO is 26 bytes"),
        (b"\x02" + bytes(7), "MAX_DATA is 9 bytes"),
        (b"\x03" + b"\xff" * 8, "above the maximum"),
        (b"\x09", "unknown control message type 0x09"),
    ],
)
def test_control_rejections(wire: bytes, needle: str) -> None:
    with pytest.raises(f.WireError, match=needle):
        f.decode_control(wire)


def test_largest_data_frame() -> None:
    payload = bytes(f.MAX_DATA_PAYLOAD)
    assert f.decode_stream_frame(f.encode_data(payload)) == f.Data(payload)
    with pytest.raises(ValueError):
        f.encode_data(payload + b"x")
    with pytest.raises(ValueError):
        f.encode_data(b"")


# -- fuzzing -----------------------------------------------------------------------------------
@given(
    st.binary(max_size=64)
    | st.builds(lambda head, n: head + bytes(n), st.binary(max_size=2), st.integers(16370, 16400))
)
def test_stream_decoder_total(data: bytes) -> None:
    try:
        frame = f.decode_stream_frame(data)
    except f.WireError as exc:
        assert str(exc)
    else:
        assert f.encode_stream_frame(frame) == data


@given(st.binary(max_size=40))
def test_control_decoder_total(data: bytes) -> None:
    try:
        message = f.decode_control(data)
    except f.WireError as exc:
        assert str(exc)
    else:
        if isinstance(message, f.Hello) and message.version != 1:
            return
        assert f.encode_control(message) == data


@given(
    st.one_of(
        st.builds(f.Data, st.binary(min_size=1, max_size=200)),
        st.builds(f.Fin),
        st.builds(f.Reset, st.integers(0, 2**32 - 1)),
        st.builds(f.StopSending, st.integers(0, 2**32 - 1)),
        st.builds(f.MaxStreamData, st.integers(0, f.MAX_OFFSET)),
    )
)
def test_stream_round_trip(frame: f.StreamFrame) -> None:
    assert f.decode_stream_frame(f.encode_stream_frame(frame)) == frame
