"""ICE password vector, STUN checks against aioice's independent encoder, and the admission gate."""

from __future__ import annotations

import os

import pytest
from aioice import stun as aio_stun
from hypothesis import given
from hypothesis import strategies as st

from keywire.kps.webrtc import ice

DIGEST = bytes(range(32))


def binding_request(ufrag: str, password: str, *, fingerprint: bool = True) -> bytes:
    msg = aio_stun.Message(
        message_method=aio_stun.Method.BINDING, message_class=aio_stun.Class.REQUEST
    )
    msg.attributes["USERNAME"] = f"{ufrag}:{ufrag}"
    msg.attributes["PRIORITY"] = 1853824767
    msg.attributes["ICE-CONTROLLING"] = 12345
    msg.add_message_integrity(password.encode())
    if fingerprint:
        msg.add_fingerprint()
    return bytes(msg)


def test_password_vector() -> None:
    expected = "dn9pWWCBP6fiDbQLjNcQVFAYWVSdPNzYf5JQ8JzVSso"
    assert ice.derive_ice_password(bytes(32), "test") == expected


def test_password_is_43_ice_chars() -> None:
    pwd = ice.derive_ice_password(DIGEST, "0123456789abcdef")
    assert len(pwd) == 43 and "=" not in pwd


def test_integrity_and_fingerprint_accepted() -> None:
    pwd = ice.derive_ice_password(DIGEST, "abcd1234abcd1234")
    data = binding_request("abcd1234abcd1234", pwd)
    msg = ice.parse_stun(data)
    assert msg.message_type == ice.BINDING_REQUEST
    assert msg.username == "abcd1234abcd1234:abcd1234abcd1234"
    assert ice.check_integrity(data, msg, pwd)
    assert ice.check_fingerprint(data, msg)
    assert not ice.check_integrity(data, msg, pwd[:-1] + "x")
    bad_fp = data[:-1] + bytes([data[-1] ^ 1])
    assert not ice.check_fingerprint(bad_fp, ice.parse_stun(bad_fp))


def test_gate_admits_right_password_only() -> None:
    gate = ice.StunGate(DIGEST)
    ufrag = "00ff00ff00ff00ff"
    good = binding_request(ufrag, ice.derive_ice_password(DIGEST, ufrag))
    assert gate.admit(good, "127.0.0.1", 0.0, peers=0) == ice.Admission(ufrag)
    wrong = binding_request(ufrag, ice.derive_ice_password(bytes(32), ufrag))
    assert gate.admit(wrong, "127.0.0.1", 0.0, peers=0) == ice.Admission(None, "integrity")
    libp2p_style = binding_request(ufrag + "aaaaaaaaaa", ufrag + "aaaaaaaaaa")
    assert gate.admit(libp2p_style, "127.0.0.1", 0.0, peers=0).ufrag is None


def test_gate_flood_of_random_ufrags_admits_nothing() -> None:
    gate = ice.StunGate(DIGEST, ice.GateSettings(rate=1e9, burst=10_000))
    for _ in range(500):
        ufrag = os.urandom(8).hex()
        data = binding_request(ufrag, ice.derive_ice_password(os.urandom(32), ufrag))
        assert gate.admit(data, "10.0.0.1", 0.0, peers=0).ufrag is None
    assert gate.counters == {"integrity": 500}


def test_gate_rate_limit_per_source() -> None:
    gate = ice.StunGate(DIGEST, ice.GateSettings(rate=10.0, burst=3))
    ufrag = "1234abcd"
    data = binding_request(ufrag, ice.derive_ice_password(DIGEST, ufrag))
    verdicts = [gate.admit(data, "192.0.2.1", 0.0, peers=0).reason for _ in range(5)]
    assert verdicts == ["", "", "", "rate", "rate"]
    assert gate.admit(data, "192.0.2.2", 0.0, peers=0).ufrag == ufrag  # another source
    assert gate.admit(data, "192.0.2.1", 0.1, peers=0).ufrag == ufrag  # refilled 1 token


def test_gate_source_table_is_bounded() -> None:
    gate = ice.StunGate(DIGEST, ice.GateSettings(max_sources=10))
    for n in range(100):
        gate.admit(b"x", f"10.0.0.{n}", 0.0, peers=0)
    assert len(gate._buckets) == 10


def test_gate_peer_cap() -> None:
    gate = ice.StunGate(DIGEST, ice.GateSettings(max_peers=2))
    ufrag = "cafebabecafebabe"
    data = binding_request(ufrag, ice.derive_ice_password(DIGEST, ufrag))
    assert gate.admit(data, "127.0.0.1", 0.0, peers=2).reason == "peer-cap"
    # a check for a peer that already exists is not a new allocation
    assert gate.admit(data, "127.0.0.1", 0.0, peers=2, existing={ufrag}).ufrag == ufrag


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + bytes(11), "not a STUN"),
        (b"\x40\x01\x00\x00" + b"\x21\x12\xa4\x42" + bytes(12), "not a STUN"),
        (b"\x00\x01\x00\x04" + b"\x21\x12\xa4\x42" + bytes(12), "does not match"),
        (b"\x00\x01\x00\x04" + b"\x21\x12\xa4\x42" + bytes(12) + b"\x00\x06\x00\x09", "runs past"),
    ],
)
def test_parse_rejections(data: bytes, needle: str) -> None:
    with pytest.raises(ice.StunError, match=needle):
        ice.parse_stun(data)


@given(
    st.binary(max_size=80)
    | st.builds(
        lambda t, body: t + len(body).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + bytes(12) + body,
        st.binary(min_size=2, max_size=2),
        st.binary(max_size=60),
    )
)
def test_gate_total_on_any_bytes(data: bytes) -> None:
    gate = ice.StunGate(DIGEST, ice.GateSettings(rate=1e9, burst=10**9))
    verdict = gate.admit(data, "127.0.0.1", 0.0, peers=0)
    assert verdict.ufrag is None and verdict.reason


@pytest.mark.parametrize("addr", [("127.0.0.1", 51234), ("2001:db8::7", 443)])
def test_binding_success_is_byte_exact_with_aioice(addr: tuple[str, int]) -> None:
    """The gate answers checks without aioice (a sans-IO core); its bytes equal aioice's."""
    from aioice import stun

    from keywire.kps.webrtc.ice import Admission, binding_success

    txid = bytes(range(12))
    admission = Admission("srv", version=1, password="p" * 22, transaction_id=txid)
    reference = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.RESPONSE,
        transaction_id=txid,
    )
    reference.attributes["XOR-MAPPED-ADDRESS"] = addr
    reference.add_message_integrity(b"p" * 22)
    reference.add_fingerprint()
    assert binding_success(admission, addr) == bytes(reference)
