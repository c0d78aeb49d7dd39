"""The byte layouts of docs/webtransport.md against tests/webtransport/vectors.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from keywire.webtransport import wire
from keywire.webtransport.binding import (
    BindingError,
    decode_record,
    encode_record,
    sign_binding,
    signed_message,
    verify_record,
)

VECTORS = json.loads((Path(__file__).with_name("vectors.json")).read_text())


def _key(seed_hex: str) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))


def test_signed_messages_signatures_and_record_match_the_vectors() -> None:
    key = _key(VECTORS["identity_seed"])
    bindings = []
    for entry in VECTORS["entries"]:
        digest = bytes.fromhex(entry["sha256"])
        message = signed_message(digest, entry["not_before"], entry["not_after"])
        assert message.hex() == entry["signed_message"]
        binding = sign_binding(key, digest, entry["not_before"], entry["not_after"])
        assert binding.signature.hex() == entry["signature"]
        bindings.append(binding)
    assert encode_record(bindings).hex() == VECTORS["record"]
    assert decode_record(bytes.fromhex(VECTORS["record"])) == bindings


def test_record_verifies_under_the_identity_and_names_the_presented_entry() -> None:
    record = bytes.fromhex(VECTORS["record"])
    public = bytes.fromhex(VECTORS["identity_public_key"])
    first, second = (bytes.fromhex(e["sha256"]) for e in VECTORS["entries"])
    entry = VECTORS["entries"][0]
    verify_record(record, public, [first, second], presented=first, now=entry["not_before"] + 1)
    with pytest.raises(BindingError, match="outside its validity"):
        verify_record(record, public, [first], presented=first, now=entry["not_after"])
    with pytest.raises(BindingError, match="not pinned"):
        verify_record(record, public, [first], presented=second, now=entry["not_before"] + 1)


def test_an_entry_signed_by_another_key_is_refused() -> None:
    forged = bytes.fromhex(VECTORS["record_first_entry_signed_by_other"])
    public = bytes.fromhex(VECTORS["identity_public_key"])
    first, second = (bytes.fromhex(e["sha256"]) for e in VECTORS["entries"])
    verify_record(forged, public, [second])  # the other entry is still the identity's
    with pytest.raises(BindingError, match="not signed by the identity key"):
        verify_record(forged, public, [first, second])
    other_public = bytes.fromhex(_key(VECTORS["other_seed"]).public_key().public_bytes_raw().hex())
    with pytest.raises(BindingError, match="not signed by the identity key"):
        verify_record(bytes.fromhex(VECTORS["record"]), other_public, [first])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"KWB1",
        b"XWB1\x01" + bytes(112),
        b"KWB1\x00",
        b"KWB1\x05" + bytes(560),
        b"KWB1\x01" + bytes(111),
        b"KWB1\x01" + bytes(113),
    ],
)
def test_malformed_records_are_refused_clearly(data: bytes) -> None:
    with pytest.raises(BindingError, match="binding record"):
        decode_record(data)


def test_error_code_mapping_and_headers_match_the_vectors() -> None:
    for case in VECTORS["error_codes"]:
        assert wire.to_http_code(case["webtransport"]) == case["http3"]
        assert wire.from_http_code(case["http3"]) == case["webtransport"]
    assert wire.to_http_code(0) == wire.FIRST_CODE
    assert wire.to_http_code(0xFFFFFFFF) == wire.LAST_CODE
    # HTTP/3's reserved codepoints inside the range carry no WebTransport code
    reserved = wire.FIRST_CODE + 0x1E
    assert (reserved - 0x21) % 0x1F == 0
    assert wire.from_http_code(reserved) is None
    assert wire.from_http_code(0x100) is None
    with pytest.raises(ValueError):
        wire.to_http_code(1 << 32)
    assert wire.bidi_header(0).hex() == VECTORS["bidi_header_session_0"]
    assert wire.uni_header(0).hex() == VECTORS["uni_header_session_0"]
    capsule = bytes.fromhex(VECTORS["close_capsule_code_6_reason_bye"])
    assert wire.close_capsule(6, "bye") == capsule
    buffer = bytearray(capsule + capsule[:3])
    assert wire.parse_capsules(buffer) == [(wire.CLOSE_SESSION, b"\x00\x00\x00\x06bye")]
    assert bytes(buffer) == capsule[:3]


def test_every_webtransport_code_round_trips() -> None:
    for code in [*range(0, 200), *range(0xFFFFFF00, 0x100000000)]:
        assert wire.from_http_code(wire.to_http_code(code)) == code
