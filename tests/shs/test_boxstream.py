"""Box-stream framing: by hand, against pull-box-stream's own bytes, and every way it can break."""

from __future__ import annotations

import os

import pytest
from nacl.bindings import crypto_secretbox_easy, crypto_secretbox_open_easy

from keywire.errors import Code
from keywire.shs.boxstream import (
    HEADER_LENGTH,
    MAX_BODY,
    BoxStreamDecoder,
    BoxStreamEncoder,
    BoxStreamError,
)

from .npm import node_box_frames

KEY = bytes(range(32))
NONCE = bytes(range(100, 124))


def plus(nonce: bytes, n: int) -> bytes:
    return ((int.from_bytes(nonce, "big") + n) % (1 << 192)).to_bytes(24, "big")


def test_first_frame_decoded_by_hand() -> None:
    frames = BoxStreamEncoder(KEY, NONCE).encode(b"hello world")
    assert len(frames) == HEADER_LENGTH + 11
    header = crypto_secretbox_open_easy(frames[:HEADER_LENGTH], NONCE, KEY)
    assert len(header) == 18
    assert int.from_bytes(header[:2], "big") == 11
    # the body's MAC travels in the header; the body itself is boxed with nonce + 1
    body = crypto_secretbox_open_easy(header[2:] + frames[HEADER_LENGTH:], plus(NONCE, 1), KEY)
    assert body == b"hello world"
    expected_body = crypto_secretbox_easy(b"hello world", plus(NONCE, 1), KEY)
    assert frames[HEADER_LENGTH:] == expected_body[16:]


def test_write_of_4100_bytes_is_two_frames() -> None:
    data = os.urandom(4100)
    encoder = BoxStreamEncoder(KEY, NONCE)
    frames = encoder.encode(data)
    assert len(frames) == 2 * HEADER_LENGTH + 4100
    first = crypto_secretbox_open_easy(frames[:HEADER_LENGTH], NONCE, KEY)
    assert int.from_bytes(first[:2], "big") == MAX_BODY
    second_at = HEADER_LENGTH + MAX_BODY
    second = crypto_secretbox_open_easy(
        frames[second_at : second_at + HEADER_LENGTH], plus(NONCE, 2), KEY
    )
    assert int.from_bytes(second[:2], "big") == 4
    assert encoder.nonce == plus(NONCE, 4)
    assert BoxStreamDecoder(KEY, NONCE).receive_data(frames) == data


def test_goodbye_is_18_zero_bytes_boxed() -> None:
    encoder = BoxStreamEncoder(KEY, NONCE)
    encoder.encode(b"x")
    bye = encoder.goodbye()
    assert crypto_secretbox_open_easy(bye, plus(NONCE, 2), KEY) == bytes(18)
    with pytest.raises(RuntimeError):
        encoder.encode(b"more")
    decoder = BoxStreamDecoder(KEY, NONCE)
    assert decoder.receive_data(BoxStreamEncoder(KEY, NONCE).encode(b"x") + bye) == b"x"
    assert decoder.finished
    decoder.receive_eof()  # a clean end
    assert decoder.receive_data(b"ignored after the goodbye") == b""


def test_empty_write_sends_nothing() -> None:
    encoder = BoxStreamEncoder(KEY, NONCE)
    assert encoder.encode(b"") == b""
    assert encoder.nonce == NONCE


def test_nonce_carries_across_all_24_bytes() -> None:
    top = b"\xff" * 24
    encoder = BoxStreamEncoder(KEY, top)
    frames = encoder.encode(b"wrap")
    # header at ff..ff, body at ff..ff + 1 = 00..00, next header at 00..01
    header = crypto_secretbox_open_easy(frames[:HEADER_LENGTH], top, KEY)
    assert (
        crypto_secretbox_open_easy(header[2:] + frames[HEADER_LENGTH:], bytes(24), KEY) == b"wrap"
    )
    assert encoder.nonce == bytes(23) + b"\x01"
    carry = b"\x00" * 20 + b"\x00\xff\xff\xfe"
    encoder = BoxStreamEncoder(KEY, carry)
    encoder.encode(b"a")
    assert encoder.nonce == b"\x00" * 20 + b"\x01\x00\x00\x00"
    decoder = BoxStreamDecoder(KEY, top)
    assert decoder.receive_data(frames) == b"wrap"
    assert decoder.nonce == bytes(23) + b"\x01"


def test_byte_by_byte_feeding() -> None:
    data = os.urandom(9000)
    frames = BoxStreamEncoder(KEY, NONCE).encode(data) + BoxStreamEncoder(KEY, NONCE).goodbye()
    decoder = BoxStreamDecoder(KEY, NONCE)
    out = bytearray()
    for i in range(len(frames) - HEADER_LENGTH):
        out += decoder.receive_data(frames[i : i + 1])
    assert bytes(out) == data
    assert not decoder.finished


@pytest.mark.parametrize("where", ["header", "body"])
def test_flipped_bit_is_an_error(where: str) -> None:
    good = b"first frame is fine"
    frames = bytearray(BoxStreamEncoder(KEY, NONCE).encode(good))
    second_start = len(frames)
    encoder = BoxStreamEncoder(KEY, NONCE)
    encoder.encode(good)
    frames += encoder.encode(b"second")
    frames[second_start + (3 if where == "header" else HEADER_LENGTH + 2)] ^= 0x10
    decoder = BoxStreamDecoder(KEY, NONCE)
    # authentic data before the forgery is delivered, then the error
    assert decoder.receive_data(bytes(frames)) == good
    with pytest.raises(BoxStreamError) as info:
        decoder.receive_data(b"")
    assert info.value.code == Code.PROTOCOL_ERROR
    assert str(info.value).endswith("invalid header" if where == "header" else "invalid packet")
    with pytest.raises(BoxStreamError):
        decoder.receive_eof()


def test_reordered_frames_are_rejected() -> None:
    encoder = BoxStreamEncoder(KEY, NONCE)
    one, two = encoder.encode(b"one"), encoder.encode(b"two")
    with pytest.raises(BoxStreamError, match="invalid header"):
        BoxStreamDecoder(KEY, NONCE).receive_data(two + one)


def test_wrong_key_is_invalid_header() -> None:
    frames = BoxStreamEncoder(KEY, NONCE).encode(b"data")
    with pytest.raises(BoxStreamError, match="invalid header"):
        BoxStreamDecoder(bytes(32), NONCE).receive_data(frames)


@pytest.mark.parametrize("cut", [0, 1, HEADER_LENGTH - 1, HEADER_LENGTH, HEADER_LENGTH + 5])
def test_truncation_is_unexpected_hangup(cut: int) -> None:
    frames = BoxStreamEncoder(KEY, NONCE).encode(b"0123456789")
    decoder = BoxStreamDecoder(KEY, NONCE)
    assert decoder.receive_data(frames[:cut]) == b""
    with pytest.raises(BoxStreamError, match="unexpected hangup") as info:
        decoder.receive_eof()
    assert info.value.code == Code.NETWORK_ERROR


def test_end_without_goodbye_is_unexpected_hangup() -> None:
    decoder = BoxStreamDecoder(KEY, NONCE)
    assert decoder.receive_data(BoxStreamEncoder(KEY, NONCE).encode(b"all of it")) == b"all of it"
    with pytest.raises(BoxStreamError, match="without the goodbye"):
        decoder.receive_eof()


def test_bad_key_and_nonce_lengths() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        BoxStreamEncoder(b"short", NONCE)
    with pytest.raises(ValueError, match="24 bytes"):
        BoxStreamDecoder(KEY, b"short")


async def test_byte_exact_with_pull_box_stream() -> None:
    chunks = [b"hello world", b"", os.urandom(4100), os.urandom(1), os.urandom(8192)]
    expected = await node_box_frames(KEY, b"\xff" * 23 + b"\xfd", chunks)
    encoder = BoxStreamEncoder(KEY, b"\xff" * 23 + b"\xfd")
    ours = b"".join(encoder.encode(c) for c in chunks) + encoder.goodbye()
    assert ours == expected
    decoder = BoxStreamDecoder(KEY, b"\xff" * 23 + b"\xfd")
    assert decoder.receive_data(expected) == b"".join(chunks)
    assert decoder.finished
