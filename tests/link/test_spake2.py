"""SPAKE2-P256 against RFC 9382's vectors, and strict validation of the peer's point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keywire.link import spake2
from keywire.link.spake2 import Role, Spake2, Spake2Error

VECTORS = json.loads((Path(__file__).parent / "vectors" / "rfc9382-spake2-p256.json").read_text())
G_HEX = (
    "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
    "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"
)


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: f"{v['idA']}|{v['idB']}")
def test_rfc9382_vector(vector: dict[str, str]) -> None:
    w = int(vector["w"], 16)
    id_a, id_b = vector["idA"].encode(), vector["idB"].encode()
    a = Spake2(Role.A, w, id_a, id_b, scalar=int(vector["x"], 16))
    b = Spake2(Role.B, w, id_a, id_b, scalar=int(vector["y"], 16))
    assert a.share().hex() == vector["pA"]
    assert b.share().hex() == vector["pB"]
    ra, rb = a.finish(b.share()), b.finish(a.share())
    for result in (ra, rb):
        assert result.ke.hex() == vector["Ke"]
        assert result.ka.hex() == vector["Ka"]
        assert result.kca.hex() == vector["KcA"]
        assert result.kcb.hex() == vector["KcB"]
        assert result.confirm_a.hex() == vector["confA"]
        assert result.confirm_b.hex() == vector["confB"]
    assert vector["K"] in ra.transcript.hex()
    ra.check_peer_confirmation(Role.A, rb.confirm_b)
    rb.check_peer_confirmation(Role.B, ra.confirm_a)


def test_wrong_password_fails_confirmation_both_ways() -> None:
    a = Spake2(Role.A, 1234, b"a", b"b")
    b = Spake2(Role.B, 1235, b"a", b"b")
    ra, rb = a.finish(b.share()), b.finish(a.share())
    assert ra.ke != rb.ke
    with pytest.raises(Spake2Error, match="confirmation"):
        ra.check_peer_confirmation(Role.A, rb.confirm_b)
    with pytest.raises(Spake2Error, match="confirmation"):
        rb.check_peer_confirmation(Role.B, ra.confirm_a)


def test_aad_is_bound_into_confirmation() -> None:
    a = Spake2(Role.A, 99, b"a", b"b", aad=b"header-1")
    b = Spake2(Role.B, 99, b"a", b"b", aad=b"header-2")
    ra, rb = a.finish(b.share()), b.finish(a.share())
    assert ra.ke == rb.ke
    with pytest.raises(Spake2Error):
        ra.check_peer_confirmation(Role.A, rb.confirm_b)


@pytest.mark.parametrize(
    ("share", "why"),
    [
        (b"\x04" + bytes(64), "identity"),
        (bytes.fromhex(G_HEX)[:33], "65 bytes"),
        (b"\x02" + bytes.fromhex(G_HEX)[1:33] + bytes(32), "uncompressed"),
        (b"\x04" + (2**256 - 1).to_bytes(32, "big") + bytes(32), "outside the field"),
        (b"\x04" + (1).to_bytes(32, "big") + (1).to_bytes(32, "big"), "not on the P-256"),
    ],
)
def test_bad_shares_are_refused(share: bytes, why: str) -> None:
    with pytest.raises(Spake2Error, match=why):
        Spake2(Role.A, 5, b"", b"").finish(share)


def test_w_zero_is_refused() -> None:
    with pytest.raises(Spake2Error):
        Spake2(Role.A, 0, b"", b"")


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=80))
def test_fuzz_peer_share(data: bytes) -> None:
    party = Spake2(Role.B, 77, b"x", b"y")
    try:
        party.finish(data)
    except Spake2Error:
        return
    assert len(data) == spake2.POINT_SIZE
