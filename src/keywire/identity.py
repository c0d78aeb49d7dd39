"""One key file that names this peer on every transport.

The file is PEM: the P-256 private key, its self-signed certificate kept verbatim (so the
certhash never changes), and an Ed25519 private key (the shs / relay identity). A KPS key file,
which has only the first two blocks, loads with the same certhash; its Ed25519 seed is then
derived from the P-256 key so the shs identity is stable too without rewriting the user's file.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID

from .errors import IdentityError

log = logging.getLogger("keywire.identity")

MULTIHASH_SHA256 = b"\x12\x20"
CERT_VALIDITY = dt.timedelta(hours=200 * 365 * 24)
_SEED_INFO = b"keywire ed25519 seed from p256 v1"
#: a key file is about 1 KiB; anything much larger is not one (or is /dev/zero behind a link)
MAX_KEY_FILE = 64 * 1024
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def encode_certhash(digest: bytes) -> str:
    """KPS certhash: ``u`` + base64url-nopad(0x12 0x20 ‖ sha256)."""
    if len(digest) != 32:
        raise IdentityError(f"a certhash digest is 32 bytes, got {len(digest)}")
    return "u" + base64.urlsafe_b64encode(MULTIHASH_SHA256 + digest).decode().rstrip("=")


def decode_certhash(text: str) -> bytes:
    """The 32-byte SHA-256 digest of a certhash; rejects every other form with a clear error."""
    if not isinstance(text, str) or not text.startswith("u"):
        raise IdentityError(f"certhash must start with 'u' (multibase base64url): {text!r}")
    body = text[1:]
    if len(body) != 46 or not set(body) <= _B64URL:
        raise IdentityError(f"certhash must be 'u' + 46 base64url characters: {text!r}")
    raw = base64.urlsafe_b64decode(body + "==")
    if len(raw) != 34 or raw[:2] != MULTIHASH_SHA256:
        raise IdentityError(f"certhash is not a sha2-256 multihash (0x12 0x20 …): {text!r}")
    if encode_certhash(raw[2:]) != text:
        raise IdentityError(f"certhash is not canonical base64url: {text!r}")
    return raw[2:]


def certhash_of(cert_der: bytes) -> str:
    return encode_certhash(hashlib.sha256(cert_der).digest())


def fingerprint_hex(digest: bytes) -> str:
    """SDP form ``AA:BB:…`` of a digest."""
    return ":".join(f"{b:02X}" for b in digest)


def certhash_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def default_key_path() -> Path:
    """``$KEYWIRE_KEY``, else ``$XDG_CONFIG_HOME/keywire/identity.pem`` (``~/.config/…``)."""
    env = os.environ.get("KEYWIRE_KEY")
    if env:
        return Path(env)
    return config_dir() / "identity.pem"


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "keywire"


def make_certificate(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A KPS certificate: empty subject, random serial, 200-year validity, no SAN."""
    not_before = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    both = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    return build_certificate(
        key, not_before, not_before + CERT_VALIDITY, (usage, True), (both, False)
    )


def build_certificate(
    key: ec.EllipticCurvePrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
    *extensions: tuple[x509.ExtensionType, bool],
) -> bytes:
    """A self-signed DER certificate with empty names and a random serial; KPS and WebTransport
    certificates differ only in validity and ``(extension, critical)`` pairs."""
    empty = x509.Name([])
    builder = (
        x509.CertificateBuilder()
        .subject_name(empty)
        .issuer_name(empty)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(127) | 1)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _derive_seed(key: ec.EllipticCurvePrivateKey) -> bytes:
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    return HKDF(hashes.SHA256(), 32, salt=None, info=_SEED_INFO).derive(scalar)


def _pem_blocks(text: str) -> list[tuple[str, bytes]]:
    blocks: list[tuple[str, bytes]] = []
    label: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("-----BEGIN ") and line.endswith("-----"):
            label, lines = line[11:-5], [line]
        elif line.startswith("-----END ") and label is not None:
            lines.append(line)
            blocks.append((label, ("\n".join(lines) + "\n").encode()))
            label = None
        elif label is not None:
            lines.append(line)
    return blocks


class CertificateNames:
    """The names a DER certificate goes by: its SHA-256 digest (what a peer pins) and that
    digest as KPS certhash text. Shared by the identity's certificate and WebTransport's
    short-lived ones, so both are named the same way."""

    certificate_der: bytes

    @property
    def certificate_key(self) -> ec.EllipticCurvePrivateKey:
        """The certificate's private key (each class says where it keeps it)."""
        raise NotImplementedError

    @property
    def cert_digest(self) -> bytes:
        return hashlib.sha256(self.certificate_der).digest()

    @property
    def certhash(self) -> str:
        return encode_certhash(self.cert_digest)

    @property
    def certificate_pem(self) -> bytes:
        return x509.load_der_x509_certificate(self.certificate_der).public_bytes(
            serialization.Encoding.PEM
        )

    @property
    def private_key_pem(self) -> bytes:
        return self.certificate_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass
class Identity(CertificateNames):
    """This peer's keys: certhash for KPS, Ed25519 for shs and Link."""

    p256_key: ec.EllipticCurvePrivateKey
    certificate_der: bytes
    ed25519_seed: bytes
    path: Path | None = None

    # -- derived names ------------------------------------------------------------------------
    @property
    def certificate_key(self) -> ec.EllipticCurvePrivateKey:
        return self.p256_key

    @property
    def ed25519_key(self) -> ed25519.Ed25519PrivateKey:
        return ed25519.Ed25519PrivateKey.from_private_bytes(self.ed25519_seed)

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key (the shs identity)."""
        return self.ed25519_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def shs_id(self) -> str:
        return base64.b64encode(self.public_key).decode()

    @property
    def ssb_id(self) -> str:
        return f"@{self.shs_id}.ed25519"

    # -- creation and storage -----------------------------------------------------------------
    @classmethod
    def generate(cls) -> Identity:
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(key, make_certificate(key), secrets.token_bytes(32))

    def to_pem(self) -> bytes:
        ed_pem = self.ed25519_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return self.private_key_pem + self.certificate_pem + ed_pem

    @classmethod
    def from_pem(cls, data: bytes, path: Path | None = None) -> Identity:
        """Parse a keywire or KPS key file."""
        where = f" in {path}" if path else ""
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise IdentityError(f"key file is not PEM text{where}") from None
        p256: ec.EllipticCurvePrivateKey | None = None
        seed: bytes | None = None
        cert: bytes | None = None
        for label, block in _pem_blocks(text):
            if label in ("PRIVATE KEY", "EC PRIVATE KEY"):
                try:
                    key = serialization.load_pem_private_key(block, password=None)
                except (ValueError, TypeError) as exc:
                    raise IdentityError(f"unreadable private key{where}: {exc}") from None
                if isinstance(key, ec.EllipticCurvePrivateKey):
                    if not isinstance(key.curve, ec.SECP256R1):
                        raise IdentityError(
                            f"the EC key must be P-256, got {key.curve.name}{where}"
                        )
                    p256 = key
                elif isinstance(key, ed25519.Ed25519PrivateKey):
                    seed = key.private_bytes(
                        serialization.Encoding.Raw,
                        serialization.PrivateFormat.Raw,
                        serialization.NoEncryption(),
                    )
                else:
                    raise IdentityError(f"unsupported private key type {type(key).__name__}{where}")
            elif label == "CERTIFICATE":
                try:
                    cert = x509.load_pem_x509_certificate(block).public_bytes(
                        serialization.Encoding.DER
                    )
                except ValueError as exc:
                    raise IdentityError(f"unreadable certificate{where}: {exc}") from None
        if p256 is None:
            raise IdentityError(f"no P-256 PRIVATE KEY block{where}")
        if cert is None:
            raise IdentityError(f"no CERTIFICATE block{where}")
        cert_key = x509.load_der_x509_certificate(cert).public_key()
        if cert_key != p256.public_key():
            raise IdentityError(f"the certificate does not belong to the private key{where}")
        return cls(p256, cert, seed if seed is not None else _derive_seed(p256), path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        p = Path(path)
        return cls.from_pem(read_key_file(p), p)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key file with mode 0600 (the directory 0700 if it is created)."""
        p = Path(path)
        tmp = p.with_name(p.name + f".tmp{os.getpid()}")
        try:
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, self.to_pem())
            finally:
                os.close(fd)
            os.replace(tmp, p)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise IdentityError(f"cannot create key file {p}: {exc.strerror or exc}") from None
        self.path = p

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str] | None = None) -> Identity:
        """Load the key file, creating it (mode 0600) if it does not exist."""
        p = Path(path) if path is not None else default_key_path()
        try:
            p.stat()
        except FileNotFoundError:
            if os.path.islink(p):  # a dangling link: say so rather than write through it
                return cls.load(p)
        except OSError as exc:  # under a file, in an unreadable directory, a link loop
            raise IdentityError(f"cannot reach key file {p}: {exc.strerror or exc}") from None
        else:
            return cls.load(p)
        ident = cls.generate()
        ident.save(p)
        return ident


def read_key_file(p: Path) -> bytes:
    """The key file's bytes: a regular file of at most ``MAX_KEY_FILE`` bytes.

    Opened without blocking (a FIFO would wait for a writer for ever) and read with a bound
    (``/dev/zero`` behind the name would never end). A key that group or others may access
    is used with a warning; ssh refuses such a key, but keywire warns instead: the file may sit
    on a filesystem without Unix modes, and refusing would lock the user out of their identity.
    """
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise IdentityError(f"cannot read key file {p}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IdentityError(f"key file {p} is not a regular file")
        if info.st_size > MAX_KEY_FILE:
            raise IdentityError(
                f"key file {p} is {info.st_size} bytes; a key file is at most {MAX_KEY_FILE}"
            )
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_KEY_FILE:
            chunk = os.read(fd, MAX_KEY_FILE + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > MAX_KEY_FILE:
            raise IdentityError(f"key file {p} is larger than {MAX_KEY_FILE} bytes")
    except OSError as exc:
        raise IdentityError(f"cannot read key file {p}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if info.st_mode & 0o077 and os.name == "posix":
        log.warning(
            "key file %s is accessible by group or others (mode %03o); run: chmod 600 %s",
            p,
            stat.S_IMODE(info.st_mode),
            p,
        )
    return b"".join(chunks)
