"""qh3's key schedule on one-shot HMAC (``keywire.kps.quic.keyschedule``) derives exactly what
qh3's own functions do: RFC 9001's Initial-key vectors and random inputs of every shape qh3
asks for."""

from __future__ import annotations

import os

import qh3.quic.crypto
import qh3.tls

from keywire.kps.quic import keyschedule as ks


def test_rfc_9001_initial_keys() -> None:
    salt = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
    initial = ks.hkdf_extract(256, salt, bytes.fromhex("8394c8f03e515708"))
    assert initial.hex() == "7db5df06e7a69e432496adedb00851923595221596ae2ae9fb8115c1e9ed0a44"
    client = ks.hkdf_expand_label(256, initial, b"client in", b"", 32)
    assert client.hex() == "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea"
    assert ks.hkdf_expand_label(256, client, b"quic key", b"", 16).hex() == (
        "1f369613dd76d5467730efcbe3b1a22d"
    )
    iv = ks.hkdf_expand_label(256, client, b"quic iv", b"", 12)
    assert iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert ks.hkdf_expand_label(256, client, b"quic hp", b"", 16).hex() == (
        "9f50449e04a0e810283a1e9933adedd2"
    )


def test_same_bytes_as_qh3_for_every_length_and_hash() -> None:
    for algorithm in (256, 384):
        size = algorithm // 8
        for length in (1, 12, 16, 32, 48, 64, 100, 255):
            for context in (b"", os.urandom(size)):
                secret = os.urandom(size)
                ours = ks.hkdf_expand_label(
                    algorithm=algorithm,
                    secret=secret,
                    label=b"c hs traffic",
                    hash_value=context,
                    length=length,
                )
                assert ours == ks.ORIGINAL_EXPAND_LABEL(
                    algorithm, secret, b"c hs traffic", context, length
                )
        salt, material = os.urandom(size), os.urandom(size)
        assert ks.hkdf_extract(algorithm, salt, material) == ks.ORIGINAL_EXTRACT(
            algorithm, salt, material
        )


def test_installed_where_qh3_looks_them_up() -> None:
    import keywire.kps.quic  # noqa: F401  (installs on import)

    assert qh3.tls.hkdf_expand_label is ks.hkdf_expand_label
    assert qh3.tls.hkdf_extract is ks.hkdf_extract
    assert qh3.quic.crypto.hkdf_expand_label is ks.hkdf_expand_label  # type: ignore[attr-defined]
