"""Identity: the KPS certhash, the key file, and KPS key-file compatibility."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keywire.errors import IdentityError
from keywire.identity import (
    Identity,
    decode_certhash,
    encode_certhash,
    fingerprint_hex,
    make_certificate,
)

VECTOR = "uEiAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHw"


def test_certhash_vector() -> None:
    digest = bytes(range(32))
    assert encode_certhash(digest) == VECTOR
    assert decode_certhash(VECTOR) == digest


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "EiAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHw",  # no multibase prefix
        "mEiAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHw",  # base64 (not url) prefix
        VECTOR + "A",  # too long
        VECTOR[:-1],  # too short
        "uEiAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eH+",  # not base64url
        "u" + base64.urlsafe_b64encode(b"\x12\x21" + bytes(32)).decode().rstrip("="),
        "u" + base64.urlsafe_b64encode(b"\x13\x20" + bytes(32)).decode().rstrip("="),
        "uEiAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHx",  # non-canonical last char
    ],
)
def test_certhash_rejects(bad: str) -> None:
    with pytest.raises(IdentityError):
        decode_certhash(bad)


def test_fingerprint_hex() -> None:
    assert fingerprint_hex(bytes([0xAB, 0x01])) == "AB:01"


def test_certificate_is_kps_shaped() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = x509.load_der_x509_certificate(make_certificate(key))
    assert len(cert.subject) == 0 and len(cert.issuer) == 0
    assert 0 < cert.serial_number < 2**127
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life == dt.timedelta(hours=200 * 365 * 24)
    now = dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=59) <= now - cert.not_valid_before_utc <= dt.timedelta(minutes=61)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    other = x509.load_der_x509_certificate(make_certificate(key))
    assert other.serial_number != cert.serial_number


def test_key_file_created_0600_and_reloads_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "id.pem"
    ident = Identity.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = Identity.load_or_create(path)
    assert again.certificate_der == ident.certificate_der
    assert again.certhash == ident.certhash
    assert again.public_key == ident.public_key
    assert again.certhash == encode_certhash(hashlib.sha256(ident.certificate_der).digest())
    assert ident.ssb_id == f"@{ident.shs_id}.ed25519"
    assert len(base64.b64decode(ident.shs_id)) == 32


def test_kps_key_file_loads_with_same_certhash(tmp_path: Path) -> None:
    """A KPS file is PRIVATE KEY + CERTIFICATE only; the Ed25519 seed is derived, stably."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = make_certificate(key)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    path = tmp_path / "kps.key"
    path.write_bytes(pem + cert_pem)
    one = Identity.load(path)
    two = Identity.load(path)
    assert one.certhash == encode_certhash(hashlib.sha256(der).digest())
    assert one.ed25519_seed == two.ed25519_seed
    assert path.read_bytes() == pem + cert_pem  # the user's file is not rewritten


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\xff\xfe", "not PEM"),
        (b"nothing here", "no P-256"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "unreadable"),
    ],
)
def test_bad_key_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(IdentityError, match=match):
        Identity.load(path)


def test_certificate_must_match_key(tmp_path: Path) -> None:
    a, b = Identity.generate(), Identity.generate()
    path = tmp_path / "mixed.pem"
    path.write_bytes(a.private_key_pem + b.certificate_pem)
    with pytest.raises(IdentityError, match="does not belong"):
        Identity.load(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="cannot read key file"):
        Identity.load(tmp_path / "absent.pem")
