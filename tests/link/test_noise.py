"""The Noise engine against every cacophony 25519/ChaChaPoly/SHA256 vector, and failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keywire.link.noise import HandshakeState, Keys, NoiseError, Pattern, private_key, public_bytes

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors" / "noise-cacophony-25519-chachapoly-sha256.json").read_text()
)["vectors"]


def _keys(vector: dict[str, Any], side: str) -> Keys:
    def opt_priv(name: str) -> Any:
        return private_key(bytes.fromhex(vector[name])) if name in vector else None

    def opt_pub(name: str) -> bytes | None:
        return bytes.fromhex(vector[name]) if name in vector else None

    return Keys(
        s=opt_priv(f"{side}_static"),
        e=opt_priv(f"{side}_ephemeral"),
        rs=opt_pub(f"{side}_remote_static"),
        psks=tuple(bytes.fromhex(p) for p in vector.get(f"{side}_psks", ())),
    )


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["protocol_name"])
def test_cacophony_vector(vector: dict[str, Any]) -> None:
    name = vector["protocol_name"]
    init = HandshakeState(name, True, _keys(vector, "init"), bytes.fromhex(vector["init_prologue"]))
    resp = HandshakeState(
        name, False, _keys(vector, "resp"), bytes.fromhex(vector["resp_prologue"])
    )
    one_way = Pattern.parse(name).one_way
    for i, message in enumerate(vector["messages"]):
        payload = bytes.fromhex(message["payload"])
        from_init = one_way or i % 2 == 0
        sender, receiver = (init, resp) if from_init else (resp, init)
        if not sender.complete:
            wire = sender.write_message(payload)
            assert wire.hex() == message["ciphertext"], f"message {i}"
            assert receiver.read_message(wire) == payload
        else:
            assert sender.send_cipher is not None and receiver.receive_cipher is not None
            wire = sender.send_cipher.encrypt(b"", payload)
            assert wire.hex() == message["ciphertext"], f"transport message {i}"
            assert receiver.receive_cipher.decrypt(b"", wire) == payload
    assert init.handshake_hash is not None
    assert init.handshake_hash.hex() == vector["handshake_hash"]
    assert resp.handshake_hash == init.handshake_hash


NK = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"


def _pair(
    psk_i: bytes = b"k" * 32, psk_r: bytes = b"k" * 32, pinned: bytes | None = None
) -> tuple[HandshakeState, HandshakeState]:
    host_static = private_key(bytes(range(32)))
    rs = pinned if pinned is not None else public_bytes(host_static)
    init = HandshakeState(NK, True, Keys(rs=rs, psks=(psk_i,)), b"prologue")
    resp = HandshakeState(NK, False, Keys(s=host_static, psks=(psk_r,)), b"prologue")
    return init, resp


def test_nkpsk0_round_trip_sizes() -> None:
    init, resp = _pair()
    m1 = init.write_message()
    assert len(m1) == 48
    resp.read_message(m1)
    m2 = resp.write_message()
    assert len(m2) == 48
    init.read_message(m2)
    assert init.handshake_hash == resp.handshake_hash


def test_wrong_psk_fails() -> None:
    init, resp = _pair(psk_r=b"x" * 32)
    with pytest.raises(NoiseError, match="authentication failed"):
        resp.read_message(init.write_message())


def test_substituted_host_key_fails() -> None:
    init, resp = _pair(pinned=public_bytes(private_key(b"\x07" * 32)))
    with pytest.raises(NoiseError):
        resp.read_message(init.write_message())


def test_misuse_is_a_clear_error() -> None:
    init, _ = _pair()
    with pytest.raises(NoiseError, match="turn"):
        init.read_message(b"")
    with pytest.raises(NoiseError, match="unsupported"):
        HandshakeState("Noise_ZZ_25519_ChaChaPoly_SHA256", True, Keys())
    with pytest.raises(NoiseError, match="PSK"):
        HandshakeState(NK, True, Keys(rs=b"\x01" * 32))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_first_message(data: bytes) -> None:
    _, resp = _pair()
    try:
        resp.read_message(data)
    except NoiseError:
        return
    raise AssertionError("a random message must not authenticate")
