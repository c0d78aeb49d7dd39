"""Hypothesis over the box-stream decoder and both handshake machines.

Whatever arrives, the only exceptions are the documented ones (``BoxStreamError``,
``ShsHandshakeError``), and nothing is ever delivered that the sender did not encrypt.
"""

from __future__ import annotations

import hashlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keywire.shs.boxstream import BoxStreamDecoder, BoxStreamEncoder, BoxStreamError
from keywire.shs.handshake import ShsClient, ShsHandshakeError, ShsServer
from keywire.shs.steps import keypair_from_seed

KEY = hashlib.sha256(b"fuzz key").digest()
NONCE = bytes(24)
APP = hashlib.sha256(b"fuzz app").digest()
SERVER_SEED = hashlib.sha256(b"fuzz server").digest()
SERVER_PK = keypair_from_seed(SERVER_SEED)[0]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

chunks = st.lists(st.binary(max_size=300), max_size=12)


def _feed_decoder(decoder: BoxStreamDecoder, parts: list[bytes], eof: bool) -> bytes:
    out = bytearray()
    try:
        for part in parts:
            out += decoder.receive_data(part)
        if eof:
            decoder.receive_eof()
    except BoxStreamError:
        pass
    return bytes(out)


@FAST
@given(chunks, st.booleans())
def test_random_bytes_into_the_decoder(parts: list[bytes], eof: bool) -> None:
    # random bytes never authenticate: no plaintext can come out
    assert _feed_decoder(BoxStreamDecoder(KEY, NONCE), parts, eof) == b""


@FAST
@given(
    st.lists(st.binary(min_size=1, max_size=5000), min_size=1, max_size=4),
    st.integers(min_value=0),
    st.integers(min_value=0, max_value=7),
    st.integers(min_value=1, max_value=700),
)
def test_mutated_stream_yields_a_prefix_or_an_error(
    messages: list[bytes], position: int, bit: int, step: int
) -> None:
    encoder = BoxStreamEncoder(KEY, NONCE)
    wire = bytearray(b"".join(encoder.encode(m) for m in messages) + encoder.goodbye())
    at = position % len(wire)
    wire[at] ^= 1 << bit
    decoder = BoxStreamDecoder(KEY, NONCE)
    parts = [bytes(wire[i : i + step]) for i in range(0, len(wire), step)]
    out = _feed_decoder(decoder, parts, eof=True)
    assert b"".join(messages).startswith(out)
    assert not decoder.finished


@FAST
@given(
    st.lists(st.binary(min_size=1, max_size=9000), max_size=4),
    st.integers(min_value=1, max_value=5000),
)
def test_any_chunking_round_trips(messages: list[bytes], step: int) -> None:
    encoder = BoxStreamEncoder(KEY, NONCE)
    wire = b"".join(encoder.encode(m) for m in messages) + encoder.goodbye()
    decoder = BoxStreamDecoder(KEY, NONCE)
    out = b"".join(decoder.receive_data(wire[i : i + step]) for i in range(0, len(wire), step))
    assert out == b"".join(messages)
    assert decoder.finished


def _drive(machine: ShsClient | ShsServer, parts: list[bytes], eof: bool) -> None:
    try:
        for part in parts:
            machine.receive_data(part)
            if isinstance(machine, ShsServer) and machine.awaiting_authorization:
                machine.authorize(True)
        if eof and not machine.done:
            machine.receive_eof()
    except ShsHandshakeError:
        assert machine.failed


@FAST
@given(chunks, st.booleans())
def test_random_bytes_into_the_server(parts: list[bytes], eof: bool) -> None:
    server = ShsServer(APP, SERVER_SEED)
    _drive(server, parts, eof)
    assert not server.done


@FAST
@given(chunks, st.booleans())
def test_random_bytes_after_a_valid_challenge(parts: list[bytes], eof: bool) -> None:
    client = ShsClient(APP, hashlib.sha256(b"c").digest(), SERVER_PK)
    server = ShsServer(APP, SERVER_SEED)
    server.receive_data(client.initiate())
    _drive(server, parts, eof)
    assert not server.done


@FAST
@given(chunks, st.booleans())
def test_random_bytes_into_the_client(parts: list[bytes], eof: bool) -> None:
    client = ShsClient(APP, hashlib.sha256(b"c").digest(), SERVER_PK)
    client.initiate()
    _drive(client, parts, eof)
    assert not client.done


@FAST
@given(st.integers(min_value=0, max_value=(64 + 64 + 112 + 80) * 8 - 1))
def test_every_single_bit_flip_fails_the_handshake(bit: int) -> None:
    client = ShsClient(APP, hashlib.sha256(b"c").digest(), SERVER_PK)
    server = ShsServer(APP, SERVER_SEED)
    byte, mask = bit // 8, 1 << (bit % 8)
    offsets = [0, 64, 128, 240]
    failed = False

    def maybe_flip(message: bytes, start: int) -> bytes:
        if start <= byte < start + len(message):
            out = bytearray(message)
            out[byte - start] ^= mask
            return bytes(out)
        return message

    try:
        msg2 = server.receive_data(maybe_flip(client.initiate(), offsets[0]))
        msg3 = client.receive_data(maybe_flip(msg2, offsets[1]))
        server.receive_data(maybe_flip(msg3, offsets[2]))
        client.receive_data(maybe_flip(server.authorize(True), offsets[3]))
    except ShsHandshakeError:
        failed = True
    assert failed
