"""Short-lived WebTransport certificates: generated, rotated, bound to the identity, persisted.

Browsers accept a certificate by ``serverCertificateHashes`` only if it is ECDSA P-256 and
valid for at most 14 days, so a listener cannot present its identity's 200-year KPS
certificate. It keeps two instead: the **current** one (presented) and the **next** one
(already valid, generated ahead), and announces both hashes. Every ``ROTATE_EVERY`` the next
becomes current and a new next is made, so an address announced before a rotation keeps
working after it. Each certificate carries the identity's signature (``binding``) made once,
when it is generated.

The pair is stored beside the identity file (``<identity>.webtransport.json``, mode 0600), so a
listener restarted within the window presents the same hashes; an identity without a file keeps
them in memory.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..errors import IdentityError
from ..identity import CertificateNames, Identity, build_certificate
from .binding import CertBinding, sign_binding

log = logging.getLogger("keywire.webtransport")

#: how long a certificate is valid (browsers refuse more than 14 days)
LIFETIME = dt.timedelta(days=13)
#: not_before is this far in the past, for peers whose clocks are behind (within LIFETIME)
BACKDATE = dt.timedelta(hours=1)
#: the next certificate becomes current after this long; with LIFETIME an address stays
#: dialable for at least ROTATE_EVERY after it was announced (it carries the next hash)
ROTATE_EVERY = dt.timedelta(days=6)
FILE_SUFFIX = ".webtransport.json"
FILE_VERSION = 1


@dataclass(frozen=True)
class WtCertificate(CertificateNames):
    """One short-lived certificate, its key and the identity's signature over it."""

    certificate_der: bytes
    key: ec.EllipticCurvePrivateKey
    binding: CertBinding

    @property
    def not_before(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.binding.not_before, dt.UTC)

    @property
    def not_after(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.binding.not_after, dt.UTC)

    @property
    def certificate_key(self) -> ec.EllipticCurvePrivateKey:
        return self.key


def make_wt_certificate(identity: Identity, now: dt.datetime) -> WtCertificate:
    """A fresh P-256 certificate valid from ``now - BACKDATE`` for ``LIFETIME``, signed by the
    identity's Ed25519 key (the binding)."""
    key = ec.generate_private_key(ec.SECP256R1())
    not_before = now.replace(microsecond=0) - BACKDATE
    not_after = not_before + LIFETIME
    server = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    der = build_certificate(key, not_before, not_after, (server, False))
    binding = sign_binding(
        identity.ed25519_key,
        hashlib.sha256(der).digest(),
        int(not_before.timestamp()),
        int(not_after.timestamp()),
    )
    return WtCertificate(der, key, binding)


class CertStore:
    """The current and next certificate of one identity; ``pair(now)`` rotates when due."""

    def __init__(self, identity: Identity, path: Path | None = None) -> None:
        self.identity = identity
        if path is None and identity.path is not None:
            path = identity.path.with_name(identity.path.name + FILE_SUFFIX)
        self.path = path
        self._pair: tuple[WtCertificate, WtCertificate] | None = None
        #: when the current certificate became current (rotation is due ROTATE_EVERY later)
        self._since = dt.datetime.fromtimestamp(0, dt.UTC)
        self._previous: CertBinding | None = None

    def pair(self, now: dt.datetime | None = None) -> tuple[WtCertificate, WtCertificate]:
        """``(current, next)`` at ``now``, rotating (and saving) if the current one is due."""
        now = now or dt.datetime.now(dt.UTC)
        if self._pair is None:
            loaded = self._load()
            if loaded is not None:
                self._pair, self._since = loaded
        pair, since, changed = self._pair, self._since, False
        while pair is not None and now - since >= ROTATE_EVERY:
            self._previous = pair[0].binding
            pair = (pair[1], make_wt_certificate(self.identity, now))
            since, changed = since + ROTATE_EVERY, True
        if pair is None or not self._fits(pair, since, now):
            fresh = (
                make_wt_certificate(self.identity, now),
                make_wt_certificate(self.identity, now),
            )
            pair, since, changed = fresh, now, True
            self._previous = None
        if changed:
            self._pair, self._since = pair, since
            self._save(pair, since)
        return pair

    def current(self, now: dt.datetime | None = None) -> WtCertificate:
        return self.pair(now)[0]

    def bindings(self, now: dt.datetime | None = None) -> list[CertBinding]:
        """What the server sends: the previous (addresses announced before the last rotation
        pin it), current and next certificates' bindings."""
        current, following = self.pair(now)
        head = [self._previous] if self._previous is not None else []
        return [*head, current.binding, following.binding]

    @staticmethod
    def _fits(
        pair: tuple[WtCertificate, WtCertificate], since: dt.datetime, now: dt.datetime
    ) -> bool:
        """Both valid now, the current one until its term ends, the next one until its own."""
        current, following = pair
        return (
            current.not_before <= now
            and following.not_before <= now
            and current.not_after > since + ROTATE_EVERY
            and following.not_after > since + 2 * ROTATE_EVERY
        )

    # -- persistence ------------------------------------------------------------------------------
    def _load(self) -> tuple[tuple[WtCertificate, WtCertificate], dt.datetime] | None:
        if self.path is None:
            return None
        try:
            data = json.loads(self.path.read_bytes()[:65536])
            if data.get("version") != FILE_VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            certs = tuple(self._decode(entry) for entry in data["certificates"])
            since = dt.datetime.fromtimestamp(int(data["current_since"]), dt.UTC)
            previous = data.get("previous")
            if previous is not None:
                self._previous = sign_binding(
                    self.identity.ed25519_key,
                    bytes.fromhex(previous["sha256"]),
                    int(previous["not_before"]),
                    int(previous["not_after"]),
                )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring WebTransport certificates in %s: %s", self.path, exc)
            return None
        if len(certs) != 2:
            return None
        return (certs[0], certs[1]), since

    def _decode(self, entry: dict[str, str]) -> WtCertificate:
        der = base64.b64decode(entry["certificate"])
        key = serialization.load_pem_private_key(entry["key"].encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("not an EC key")
        cert = x509.load_der_x509_certificate(der)
        if cert.public_key() != key.public_key():
            raise ValueError("certificate and key do not match")
        binding = sign_binding(
            self.identity.ed25519_key,
            hashlib.sha256(der).digest(),
            int(cert.not_valid_before_utc.timestamp()),
            int(cert.not_valid_after_utc.timestamp()),
        )
        return WtCertificate(der, key, binding)

    def _save(self, pair: tuple[WtCertificate, WtCertificate], since: dt.datetime) -> None:
        if self.path is None:
            return
        body = {
            "version": FILE_VERSION,
            "current_since": int(since.timestamp()),
            "certificates": [
                {
                    "certificate": base64.b64encode(c.certificate_der).decode(),
                    "key": c.private_key_pem.decode(),
                }
                for c in pair
            ],
        }
        if self._previous is not None:
            body["previous"] = {
                "sha256": self._previous.digest.hex(),
                "not_before": self._previous.not_before,
                "not_after": self._previous.not_after,
            }
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, json.dumps(body, indent=1).encode())
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise IdentityError(
                f"cannot save WebTransport certificates to {self.path}: {exc.strerror or exc}"
            ) from None
