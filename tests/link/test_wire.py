"""Link v1's byte layouts pinned byte for byte, and fuzzing of every decoder."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keywire.link import wire
from keywire.link.wire import Credential, Header, LinkProtocolError, Mode, Refusal


def test_register_signing_message_layout() -> None:
    msg = wire.register_signing_message("abc", 1700000000000, "bm9uY2U", "relay.example:8443")
    assert msg == (
        b"frontier-link-register-v1"
        + b"\x00\x00\x00\x03abc"
        + b"\x00\x00\x00\x0d1700000000000"
        + b"\x00\x00\x00\x07bm9uY2U"
        + b"\x00\x00\x00\x12relay.example:8443"
    )
    assert wire.register_signing_message("a", 0, "n", "").endswith(b"\x00\x00\x00\x00")


def test_address_is_b64u_sha256_of_key() -> None:
    key = bytes(range(32))
    address = wire.address_for_register_key(key)
    assert len(address) == 43
    assert wire.from_b64u(address, 32) == hashlib.sha256(key).digest()


def test_origin_of_url() -> None:
    assert wire.origin_of("wss://Relay.Example/v1/link") == "relay.example"
    assert wire.origin_of("ws://127.0.0.1:8080/v1/link") == "127.0.0.1:8080"


def test_header_layouts() -> None:
    assert Header.pair().encode() == b"FLk1\x01\x01"
    assert Header.pair(b"\xaa" * 8).encode() == b"FLk1\x02\x01" + b"\xaa" * 8
    reconnect = Header.reconnect(b"\x11" * 16).encode()
    assert reconnect == b"FLk1\x01\x03" + b"\x11" * 16 and len(reconnect) == 22
    for header in (Header.pair(), Header.pair(b"\x01" * 8), Header.reconnect(b"\x02" * 16)):
        assert Header.decode(header.encode()) == header
    assert Header.decode(b"FLk1\x01\x02").mode is Mode.RECOVER


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"FLk2\x01\x01",
        b"FLk1\x01\x09",
        b"FLk1\x03\x01",
        b"FLk1\x01\x03" + b"\x00" * 15,
        b"FLk1\x02\x02" + b"\x00" * 8,
        b"FLk1\x01\x01extra",
    ],
)
def test_bad_headers(bad: bytes) -> None:
    with pytest.raises(LinkProtocolError):
        Header.decode(bad)


def test_refusal_frames() -> None:
    assert wire.refusal_frame(Refusal.REVOKED) == b"FLk1\x00\x01"
    assert wire.parse_refusal(b"FLk1\x00\x01") is Refusal.REVOKED
    assert wire.parse_refusal(b"FLk1\x00\x02") is Refusal.CODE_UNAVAILABLE
    assert wire.parse_refusal(b"\x04" * 65) is None


def test_welcome_layout() -> None:
    cred = Credential("A" * 43, b"\x01" * 32, b"\x02" * 32, b"\x03" * 16)
    data = wire.encode_welcome(cred)
    assert data == b"\x00\x00\x00\x2b" + b"A" * 43 + b"\x01" * 32 + b"\x02" * 32 + b"\x03" * 16
    assert wire.decode_welcome(data) == cred
    assert Credential.from_json(cred.to_json()) == cred


@given(st.binary(max_size=400))
def test_fuzz_welcome(data: bytes) -> None:
    try:
        wire.decode_welcome(data)
    except LinkProtocolError:
        pass


@given(st.binary(max_size=40))
def test_fuzz_header(data: bytes) -> None:
    try:
        header = Header.decode(data)
    except LinkProtocolError:
        return
    assert header.encode() == data


@given(st.text(max_size=60))
def test_fuzz_b64u(text: str) -> None:
    try:
        raw = wire.from_b64u(text)
    except LinkProtocolError:
        return
    assert wire.b64u(raw) == text


@given(
    st.dictionaries(
        st.sampled_from(["address", "hostStaticPub", "token", "keyId", "x"]),
        st.one_of(st.text(max_size=50), st.integers(), st.none()),
    )
)
def test_fuzz_credential_json(data: dict[str, object]) -> None:
    try:
        Credential.from_json(data)
    except LinkProtocolError:
        pass
