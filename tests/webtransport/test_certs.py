"""Short-lived certificates: what browsers require, rotation ahead of time, kept on disk."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from keywire.identity import Identity
from keywire.webtransport.binding import encode_record, verify_record
from keywire.webtransport.certs import FILE_SUFFIX, LIFETIME, ROTATE_EVERY, CertStore

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def test_certificates_are_what_browsers_accept_and_bound_to_the_identity() -> None:
    identity = Identity.generate()
    current, following = CertStore(identity).pair(T0)
    for cert in (current, following):
        parsed = x509.load_der_x509_certificate(cert.certificate_der)
        key = parsed.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert isinstance(key.curve, ec.SECP256R1)
        validity = parsed.not_valid_after_utc - parsed.not_valid_before_utc
        assert validity < dt.timedelta(days=14)
        assert parsed.not_valid_before_utc <= T0 < parsed.not_valid_after_utc
        record = encode_record([cert.binding])
        verify_record(
            record,
            identity.public_key,
            [cert.cert_digest],
            presented=cert.cert_digest,
            now=T0.timestamp(),
        )
    assert current.certhash != following.certhash


def test_rotation_promotes_the_next_certificate_so_old_addresses_keep_working() -> None:
    store = CertStore(Identity.generate())
    first = store.pair(T0)
    assert store.pair(T0 + ROTATE_EVERY - dt.timedelta(seconds=1)) == first
    second = store.pair(T0 + ROTATE_EVERY)
    # an address announced before the rotation carried both hashes: its "next" is now current
    assert second[0] == first[1]
    assert second[1] not in first
    # and the server still vouches for the certificate that was current before
    digests = [b.digest for b in store.bindings(T0 + ROTATE_EVERY)]
    assert digests == [first[0].cert_digest, first[1].cert_digest, second[1].cert_digest]
    third = store.pair(T0 + 2 * ROTATE_EVERY + dt.timedelta(hours=1))
    assert third[0] == second[1]
    # every certificate stays valid until its term as the current one is over
    for moment in (T0, T0 + ROTATE_EVERY, T0 + 2 * ROTATE_EVERY + dt.timedelta(hours=1)):
        current, following = store.pair(moment)
        term_ends = store._since + ROTATE_EVERY
        assert current.not_before <= moment < term_ends < current.not_after
        assert following.not_before <= moment and term_ends + ROTATE_EVERY < following.not_after


def test_a_long_pause_starts_a_fresh_pair() -> None:
    store = CertStore(Identity.generate())
    first = store.pair(T0)
    later = T0 + LIFETIME + dt.timedelta(days=1)
    fresh = store.pair(later)
    assert not set(fresh) & set(first)
    assert all(c.not_before <= later < c.not_after for c in fresh)


def test_the_pair_is_kept_beside_the_identity_file(tmp_path: Path) -> None:
    key_file = tmp_path / "identity.pem"
    identity = Identity.load_or_create(key_file)
    first = CertStore(identity).pair(T0)
    stored = key_file.with_name("identity.pem" + FILE_SUFFIX)
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    # a restarted listener (a new store, the identity loaded again) presents the same hashes
    again = CertStore(Identity.load(key_file)).pair(T0 + dt.timedelta(days=1))
    assert [c.certhash for c in again] == [c.certhash for c in first]
    assert [c.binding for c in again] == [c.binding for c in first]
    # ... and rotates on the same schedule
    rotated = CertStore(Identity.load(key_file)).pair(T0 + ROTATE_EVERY)
    assert rotated[0].certhash == first[1].certhash
    assert json.loads(stored.read_text())["previous"]["sha256"] == first[0].cert_digest.hex()


def test_a_damaged_file_is_replaced_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "identity.pem"
    identity = Identity.load_or_create(key_file)
    stored = key_file.with_name("identity.pem" + FILE_SUFFIX)
    stored.write_text("{not json")
    pair = CertStore(identity).pair(T0)
    assert "ignoring WebTransport certificates" in caplog.text
    assert json.loads(stored.read_text())["certificates"][0]["certificate"]
    assert CertStore(Identity.load(key_file)).pair(T0)[0].certhash == pair[0].certhash


def test_certificates_of_another_identity_in_the_file_are_not_vouched_for(tmp_path: Path) -> None:
    """The file holds certificates, not signatures: loading re-signs with the identity that
    loads it, so a swapped file cannot smuggle in another key's binding."""
    key_file = tmp_path / "identity.pem"
    identity = Identity.load_or_create(key_file)
    pair = CertStore(identity).pair(T0)
    other = Identity.generate()
    loaded = CertStore(other, key_file.with_name("identity.pem" + FILE_SUFFIX)).pair(T0)
    record = encode_record([c.binding for c in loaded])
    verify_record(record, other.public_key, [pair[0].cert_digest])
    with pytest.raises(Exception, match="not signed"):
        verify_record(record, identity.public_key, [pair[0].cert_digest])
