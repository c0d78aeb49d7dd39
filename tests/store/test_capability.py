"""Write capabilities: the committed vectors, independent checks of the signature with a
standard Ed25519 verifier, refusal of every other key, and a fuzzed signed-put parser."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings as sodium
from nacl.signing import SigningKey, VerifyKey

from keywire.store.capability import (
    SIGNATURE_SIZE,
    CapabilityError,
    WriteCap,
    parse_signed_put,
    signed_message,
    stream_caps,
)
from keywire.store.schedule import Role

VECTORS = json.loads(Path(__file__).with_name("capability_vectors.json").read_text())["vectors"]
SECRET = bytes(range(32))


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['role']}-{v['index']}")
def test_vectors(vector: dict[str, str]) -> None:
    cap = WriteCap.derive(bytes.fromhex(vector["secret"]), Role(vector["role"]))
    index = int(vector["index"])
    payload = bytes.fromhex(vector["payload"])
    assert cap.root_scalar.hex() == vector["root_scalar"]
    assert cap.read.root_public.hex() == vector["root_public"]
    assert cap.read.blinding(index).hex() == vector["blinding"]
    assert cap.blinded_scalar(index).hex() == vector["blinded_scalar"]
    address, body = cap.signed_put(index, payload)
    assert address.hex() == vector["address"]
    assert body.hex() == vector["body"]
    # independent of keywire's code: s_i·B is the address, and libsodium's verifier accepts
    scalar = bytes.fromhex(vector["blinded_scalar"])
    assert bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(scalar)) == address
    raw = bytes.fromhex(vector["body"])
    VerifyKey(address).verify(address + payload, raw[:SIGNATURE_SIZE])
    assert parse_signed_put(address, raw) == payload


def test_vectors_cover_both_roles_and_the_last_index() -> None:
    assert {v["role"] for v in VECTORS} == {"listener", "dialer"}
    assert max(int(v["index"]) for v in VECTORS) == (1 << 64) - 1
    assert len({v["address"] for v in VECTORS}) == len(VECTORS)  # no two addresses alike


def test_both_ends_derive_the_same_capabilities() -> None:
    ours, peer_read = stream_caps(SECRET, Role.LISTENER)
    theirs, our_read = stream_caps(SECRET, Role.DIALER)
    assert peer_read == theirs.read and our_read == ours.read
    address, body = ours.signed_put(3, b"frame")
    assert our_read.address(3) == address and our_read.verify(3, body) == b"frame"
    assert ours.address(3) != theirs.address(3)


def test_signature_by_another_key_is_rejected() -> None:
    cap = WriteCap.derive(SECRET, Role.LISTENER)
    address, body = cap.signed_put(4, b"payload")
    forgeries = {
        "another index's key": cap.sign(5, b"payload"),
        "the other direction's key": WriteCap.derive(SECRET, Role.DIALER).sign(4, b"payload"),
        "another secret's key": WriteCap.derive(bytes(32), Role.LISTENER).sign(4, b"payload"),
        "the root key": _sign_with_scalar(cap.root_scalar, address, b"payload"),
        "an ordinary Ed25519 key": SigningKey(bytes(32)).sign(address + b"payload").signature,
    }
    for what, signature in forgeries.items():
        with pytest.raises(CapabilityError, match="does not verify"):
            parse_signed_put(address, signature + b"payload")
        assert signature != body[:SIGNATURE_SIZE], what
    # the right signature over other bytes, or at another address, fails too
    with pytest.raises(CapabilityError):
        parse_signed_put(address, body[:SIGNATURE_SIZE] + b"paylOad")
    with pytest.raises(CapabilityError):
        parse_signed_put(cap.address(5), body)


def test_signing_is_deterministic_so_retransmissions_are_identical() -> None:
    cap = WriteCap.derive(SECRET, Role.DIALER)
    assert cap.signed_put(9, b"x" * 100) == cap.signed_put(9, b"x" * 100)
    assert cap.sign(9, b"a") != cap.sign(9, b"b")


def test_malformed_puts_say_why() -> None:
    cap = WriteCap.derive(SECRET, Role.LISTENER)
    address, body = cap.signed_put(0, b"p")
    with pytest.raises(CapabilityError, match="at least one byte of payload"):
        parse_signed_put(address, body[:SIGNATURE_SIZE])
    with pytest.raises(CapabilityError, match="32 bytes"):
        parse_signed_put(address[:31], body)
    small_order = bytes(32)  # the identity's y=0 encoding is not a valid key
    with pytest.raises(CapabilityError, match="not a valid Ed25519"):
        parse_signed_put(small_order, body)
    with pytest.raises(ValueError, match="out of range"):
        cap.address(1 << 64)


def _sign_with_scalar(scalar: bytes, address: bytes, payload: bytes) -> bytes:
    """A signature by ``scalar`` claiming ``address`` (for a forgery attempt)."""
    nonce = bytes(sodium.crypto_core_ed25519_scalar_reduce(bytes(64 - 1) + b"\x07"))
    r_point = bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(nonce))
    message = signed_message(address, payload)
    k = sodium.crypto_core_ed25519_scalar_reduce(
        hashlib.sha512(r_point + address + message).digest()
    )
    return r_point + bytes(
        sodium.crypto_core_ed25519_scalar_add(
            nonce, sodium.crypto_core_ed25519_scalar_mul(k, scalar)
        )
    )


_CAP = WriteCap.derive(SECRET, Role.LISTENER)
_ADDRESS, _BODY = _CAP.signed_put(2, b"a frame of some bytes")


@given(st.binary(max_size=40), st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_parser_on_arbitrary_input_only_raises_capability_errors(
    address: bytes, body: bytes
) -> None:
    try:
        parse_signed_put(address, body)
    except CapabilityError:
        return
    pytest.fail("a random put verified")


@given(st.integers(0, len(_BODY) - 1), st.integers(1, 255), st.booleans())
@settings(max_examples=500, deadline=None)
def test_parser_refuses_every_mutation_of_a_valid_put(
    position: int, flip: int, truncate: bool
) -> None:
    body = bytearray(_BODY)
    body[position] ^= flip
    mutated = bytes(body[: position + 1]) if truncate else bytes(body)
    with pytest.raises(CapabilityError):
        parse_signed_put(_ADDRESS, mutated)


@given(st.integers(0, 31), st.integers(1, 255))
@settings(max_examples=300, deadline=None)
def test_parser_refuses_a_valid_put_at_a_mutated_address(position: int, flip: int) -> None:
    address = bytearray(_ADDRESS)
    address[position] ^= flip
    with pytest.raises(CapabilityError):
        parse_signed_put(bytes(address), _BODY)
