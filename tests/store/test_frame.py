"""Frame encoding (byte-exact with Go's fxamacker/cbor), sealing vector, strict decoding."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keywire.store.frame import (
    NO_ACK,
    Frame,
    FrameError,
    FrameType,
    Geometry,
    decode_frame,
    encode_frame,
    open_frame,
    seal_frame,
)
from keywire.store.schedule import KeySchedule, Role

SECRET = bytes(range(32))
KEYS = KeySchedule.derive(SECRET, Role.LISTENER).write
FRAME_CBOR = "a4645479706501624964016341636b05675061796c6f6164476b657977697265"
SEALED_128 = (
    "86a98b2904e3fce3f1558817b04e0ad36cbf075b17025497decdabd8415d8fda3863a0c822b58d2230a9"
    "8cc8ee9a9e033975caf5fdc71ef04600c671b50a18274b7052d6ff0857d5a7a0fddd289590398c1ededc"
    "1c2d1707a0c52311a90e93cf87118b937300839636555f78b9c568a3d3536e50671e5e957e8393236af1"
    "08a4"
)


def test_frame_vector() -> None:
    frame = Frame(FrameType.DATA, 1, 5, b"keywire")
    assert encode_frame(frame).hex() == FRAME_CBOR
    address, sealed = seal_frame(KEYS, frame, Geometry(128))
    assert address == KEYS.frame_id(1)
    assert sealed.hex() == SEALED_128
    assert open_frame(KEYS, 1, sealed, 1024) == frame


def test_empty_frame_is_katzenpost_size() -> None:
    # Katzenpost's cborFrameOverhead: len(CBOR(Frame{})) == 25 (nil payload = 0xf6)
    empty = cbor2.dumps({"Type": 0, "Id": 0, "Ack": 0, "Payload": None})
    assert len(empty) == 25
    assert decode_frame(empty) == Frame(FrameType.START, 0, 0, b"")


@given(
    st.sampled_from(list(FrameType)),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=300),
)
@settings(max_examples=300, deadline=None)
def test_encoding_matches_a_general_cbor_encoder(
    ftype: FrameType, fid: int, ack: int, payload: bytes
) -> None:
    if ftype is FrameType.STOP_SENDING:
        payload = payload[:4].ljust(4, b"\x00")  # its payload is always a 4-byte code
    frame = Frame(ftype, fid, ack, payload)
    encoded = encode_frame(frame)
    assert encoded == cbor2.dumps({"Type": int(ftype), "Id": fid, "Ack": ack, "Payload": payload})
    assert decode_frame(encoded + bytes(17)) == frame


@given(st.integers(128, 70000), st.integers(0, 2**64 - 1))
@settings(max_examples=200, deadline=None)
def test_full_frames_fit_and_every_value_has_one_size(value_size: int, fid: int) -> None:
    geometry = Geometry(value_size)
    full = Frame(FrameType.END, fid, NO_ACK, b"\xff" * geometry.payload_capacity)
    assert len(encode_frame(full)) <= geometry.plaintext_size
    _, a = seal_frame(KEYS, full, geometry)
    _, b = seal_frame(KEYS, Frame(FrameType.DATA, fid, 0, b""), geometry)
    assert len(a) == len(b) == value_size


@given(st.binary(max_size=400))
@settings(max_examples=1500, deadline=None)
def test_decoder_rejects_garbage_cleanly(data: bytes) -> None:
    try:
        decode_frame(data)
    except FrameError as exc:
        assert str(exc)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_open_rejects_unauthentic_values(data: bytes) -> None:
    with pytest.raises(FrameError, match="frame 3"):
        open_frame(KEYS, 3, data, 1024)


@given(
    st.dictionaries(
        st.sampled_from(["Type", "Id", "Ack", "Payload", "Other"]),
        st.one_of(
            st.integers(-5, 2**64 - 1),
            st.binary(max_size=8),
            st.text(max_size=4),
            st.none(),
            st.booleans(),
        ),
        max_size=5,
    )
)
@settings(max_examples=500, deadline=None)
def test_decoder_on_wrong_shapes(fields: dict[str, object]) -> None:
    try:
        frame = decode_frame(cbor2.dumps(fields))
    except FrameError:
        return
    assert set(fields) == {"Type", "Id", "Ack", "Payload"}
    assert frame.type == fields["Type"]


@pytest.mark.parametrize(
    ("plain", "message"),
    [
        (cbor2.dumps([1, 2]), "expected a map"),
        (cbor2.dumps({"Type": 9, "Id": 0, "Ack": 0, "Payload": b""}), "unknown frame type 9"),
        (cbor2.dumps({"Type": 1, "Id": 0, "Ack": 0, "Body": b""}), "unknown frame field"),
        (cbor2.dumps({"Type": 1, "Id": "x", "Ack": 0, "Payload": b""}), "expected an integer"),
        (cbor2.dumps({"Type": 1, "Id": 0, "Ack": 0, "Payload": 5}), "expected bytes"),
        (cbor2.dumps({"Type": 1, "Id": 0, "Ack": 0, "Payload": b"x"}) + b"\x01", "non-zero"),
        (b"\xa4\x64Type", "ends inside"),
    ],
)
def test_decoder_names_the_problem(plain: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        decode_frame(plain)


STOP_CBOR = "a464547970650562496418296341636b03675061796c6f61644400000007"


def test_stop_sending_vector_and_round_trip() -> None:
    """StopSending (type 5, keywire's extension): the code is 4 big-endian bytes, sealed and
    opened like every frame, and it elicits an ack."""
    frame = Frame(FrameType.STOP_SENDING, 41, 3, b"\x00\x00\x00\x07")
    assert encode_frame(frame).hex() == STOP_CBOR
    assert cbor2.dumps({"Type": 5, "Id": 41, "Ack": 3, "Payload": b"\0\0\0\7"}).hex() == STOP_CBOR
    assert frame.elicits_ack
    address, sealed = seal_frame(KEYS, frame, Geometry(128))
    assert address == KEYS.frame_id(41) and len(sealed) == 128
    assert open_frame(KEYS, 41, sealed, 1024) == frame


@given(st.binary(max_size=40).filter(lambda b: len(b) != 4), st.integers(0, 2**64 - 1))
@settings(max_examples=300, deadline=None)
def test_stop_sending_needs_exactly_a_4_byte_code(payload: bytes, ack: int) -> None:
    plain = encode_frame(Frame(FrameType.STOP_SENDING, 2, ack, payload))
    with pytest.raises(
        FrameError,
        match=f"StopSending payload of {len(payload)} bytes, expected a 4-byte error code",
    ):
        decode_frame(plain + bytes(9))
    # sealed, the reader sees the same reason with the frame's index
    sealed = nacl_seal(2, plain)
    with pytest.raises(FrameError, match="frame 2: StopSending payload"):
        open_frame(KEYS, 2, sealed, 1024)


@given(st.binary(max_size=4), st.binary(max_size=64))
@settings(max_examples=500, deadline=None)
def test_decoder_on_mangled_stop_sending_frames(code: bytes, tail: bytes) -> None:
    """A StopSending frame cut short, with a changed payload length or junk after it: a
    FrameError or the frame itself, nothing else."""
    encoded = encode_frame(Frame(FrameType.STOP_SENDING, 9, NO_ACK, code.ljust(4, b"\x01")))
    for plain in (
        encoded[: len(tail) % len(encoded)],
        encoded + tail,
        encoded[:-5] + bytes([0x40 | len(code)]) + code + tail,
    ):
        try:
            frame = decode_frame(plain)
        except FrameError as exc:
            assert str(exc)
        else:
            assert frame.type is FrameType.STOP_SENDING and len(frame.payload) == 4


def nacl_seal(index: int, plain: bytes) -> bytes:
    import nacl.secret

    plain += bytes(Geometry(256).plaintext_size - len(plain))
    return bytes(
        nacl.secret.SecretBox(KEYS.frame_key(index))
        .encrypt(plain, KEYS.frame_id(index)[:24])
        .ciphertext
    )


def test_open_checks_the_index_and_the_size() -> None:
    geometry = Geometry(256)
    # a frame sealed for index 4 but claiming Id 5 (only a key holder could make one)
    import nacl.secret

    plain = encode_frame(Frame(FrameType.DATA, 5, 0, b"x"))
    plain += bytes(geometry.plaintext_size - len(plain))
    sealed = (
        nacl.secret.SecretBox(KEYS.frame_key(4)).encrypt(plain, KEYS.frame_id(4)[:24]).ciphertext
    )
    with pytest.raises(FrameError, match="decoded Id is 5"):
        open_frame(KEYS, 4, sealed, 1024)
    _, good = seal_frame(KEYS, Frame(FrameType.DATA, 4, 0, b"x"), geometry)
    with pytest.raises(FrameError, match="exceeds the limit"):
        open_frame(KEYS, 4, good, 100)
    with pytest.raises(FrameError, match="failed to decrypt"):
        open_frame(KEYS, 4, good[:-1] + bytes([good[-1] ^ 1]), 1024)
