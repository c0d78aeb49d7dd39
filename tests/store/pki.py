"""Throwaway certificates for the TLS tests: a CA, a server certificate it signs, and the
untrusted variants (another CA's, a self-signed one, one for another name)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class ServerFiles:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA clients are told to trust
    server: ServerFiles  # for 127.0.0.1 and localhost, signed by ``ca``
    other_ca: ServerFiles  # for 127.0.0.1, signed by a CA nobody trusts
    self_signed: ServerFiles  # for 127.0.0.1, its own issuer
    wrong_name: ServerFiles  # signed by ``ca``, but only for elsewhere.example


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    names: list[x509.GeneralName] | None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + _DAY)
    )
    if names is None:  # a CA
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), True
        ).add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.SubjectAlternativeName(names), False)
            .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), False)
        )
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> ServerFiles:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ServerFiles(cert_path, key_path)


def make_pki(directory: Path) -> Pki:
    loopback: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    ca_key, other_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = _write(directory, "ca", _certificate("keywire test CA", ca_key, None, None), ca_key)
    issued = {}
    for stem, issuer, names in (
        ("server", ("keywire test CA", ca_key), loopback),
        ("other", ("untrusted CA", other_key), loopback),
        ("self", None, loopback),
        ("wrongname", ("keywire test CA", ca_key), [x509.DNSName("elsewhere.example")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        issued[stem] = _write(
            directory, stem, _certificate(f"{stem} server", key, issuer, names), key
        )
    return Pki(ca.cert, issued["server"], issued["other"], issued["self"], issued["wrongname"])
