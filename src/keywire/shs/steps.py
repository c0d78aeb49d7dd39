"""The shs1 handshake's cryptographic steps as pure operations on one ``Transcript``.

Kept apart from the state machines so each step can be checked on its own against the published
``test-secret-handshake`` vectors, which record the full state before and after every step.

Notation (the protocol guide's): A/a are the client's long-term/ephemeral keys, B/b the
server's; K is the 32-byte application key ("network cap").
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from nacl.bindings import (
    crypto_scalarmult,
    crypto_secretbox_easy,
    crypto_secretbox_open_easy,
    crypto_sign,
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
    crypto_sign_open,
    crypto_sign_seed_keypair,
)
from nacl.exceptions import CryptoError

CHALLENGE_LENGTH = 64
CLIENT_AUTH_LENGTH = 16 + 64 + 32
SERVER_ACCEPT_LENGTH = 16 + 64
#: every handshake box uses the all-zero nonce: each box key is used exactly once
_ZERO_NONCE = bytes(24)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def auth_tag(key: bytes, message: bytes) -> bytes:
    """libsodium's ``crypto_auth``: HMAC-SHA-512 truncated to 32 bytes."""
    return hmac.new(key, message, hashlib.sha512).digest()[:32]


def keypair_from_seed(seed: bytes) -> tuple[bytes, bytes]:
    """Ed25519 ``(public 32, secret 64)`` from a 32-byte seed (identities and invite seeds)."""
    if len(seed) != 32:
        raise ValueError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
    pk, sk = crypto_sign_seed_keypair(seed)
    return bytes(pk), bytes(sk)


def ephemeral_from_random(random: bytes) -> tuple[bytes, bytes]:
    """The X25519 ephemeral pair the JS peers derive from 32 random bytes.

    JS makes an Ed25519 pair from the randomness and converts it; doing the same keeps the
    vectors reproducible (on the wire any X25519 pair would do).
    """
    pk, sk = keypair_from_seed(random)
    return (
        bytes(crypto_sign_ed25519_pk_to_curve25519(pk)),
        bytes(crypto_sign_ed25519_sk_to_curve25519(sk)),
    )


def _shared(secret: bytes, public: bytes) -> bytes | None:
    """X25519, or None for a point libsodium refuses (low order: all-zero result)."""
    try:
        return bytes(crypto_scalarmult(secret, public))
    except (RuntimeError, CryptoError, ValueError):
        return None


def _curve_public(ed_public: bytes) -> bytes | None:
    try:
        return bytes(crypto_sign_ed25519_pk_to_curve25519(ed_public))
    except (RuntimeError, CryptoError, ValueError):
        return None


def _signature_ok(signature: bytes, message: bytes, public: bytes) -> bool:
    try:
        crypto_sign_open(signature + message, public)
    except (CryptoError, ValueError, RuntimeError):
        return False
    return True


def _open_box(box: bytes, key: bytes) -> bytes | None:
    try:
        return bytes(crypto_secretbox_open_easy(box, _ZERO_NONCE, key))
    except (CryptoError, ValueError):
        return None


def _expect_length(data: bytes, length: int, what: str) -> None:
    if len(data) != length:
        raise ValueError(f"{what} is {length} bytes, got {len(data)}")


@dataclass
class Transcript:
    """Everything one side knows during a handshake; each step fills in more of it.

    ``secret`` is ab, ``a_bob`` is aB, ``b_alice`` is Ab (named as in the vectors); the
    derived box keys are ``secret2 = H(K‖ab‖aB)`` and ``secret3 = H(K‖ab‖aB‖Ab)``.
    """

    app_key: bytes
    local_public: bytes
    local_secret: bytes
    local_kx_public: bytes
    local_kx_secret: bytes
    local_app_mac: bytes
    remote_public: bytes | None = None
    remote_kx_public: bytes | None = None
    remote_app_mac: bytes | None = None
    secret: bytes | None = None
    shash: bytes | None = None
    a_bob: bytes | None = None
    secret2: bytes | None = None
    b_alice: bytes | None = None
    secret3: bytes | None = None
    local_hello: bytes | None = None
    remote_hello: bytes | None = None

    @classmethod
    def start(
        cls, app_key: bytes, local_secret: bytes, random: bytes, remote_public: bytes | None = None
    ) -> Transcript:
        """A fresh transcript (``initialize``): ephemeral keys from ``random``."""
        _expect_length(app_key, 32, "the app key")
        _expect_length(local_secret, 64, "an Ed25519 secret key")
        kx_public, kx_secret = ephemeral_from_random(random)
        return cls(
            app_key,
            local_secret[32:],
            local_secret,
            kx_public,
            kx_secret,
            auth_tag(app_key, kx_public),
            remote_public=remote_public,
        )

    # -- both sides ---------------------------------------------------------------------------
    def challenge(self) -> bytes:
        """Message 1 (client) or 2 (server): ``hmac_K(eph_pk) ‖ eph_pk``."""
        return self.local_app_mac + self.local_kx_public

    def verify_challenge(self, message: bytes) -> bool:
        """Check the peer's challenge under our app key; on success derive ab and H(ab)."""
        _expect_length(message, CHALLENGE_LENGTH, "a challenge")
        mac, kx_public = message[:32], message[32:]
        if not hmac.compare_digest(auth_tag(self.app_key, kx_public), mac):
            return False
        shared = _shared(self.local_kx_secret, kx_public)
        if shared is None:
            return False
        self.remote_kx_public, self.remote_app_mac = kx_public, mac
        self.secret, self.shash = shared, sha256(shared)
        return True

    # -- client -------------------------------------------------------------------------------
    def client_verify_challenge(self, message: bytes) -> bool:
        """Message 2 at the client; then prepare the signed hello (sigA ‖ A)."""
        if self.remote_public is None:
            raise ValueError("the client must know the server's public key")
        if not self.verify_challenge(message):
            return False
        assert self.secret is not None and self.shash is not None
        curve = _curve_public(self.remote_public)
        if curve is None:
            return False
        a_bob = _shared(self.local_kx_secret, curve)
        if a_bob is None:
            return False
        self.a_bob = a_bob
        self.secret2 = sha256(self.app_key + self.secret + a_bob)
        signature = crypto_sign(self.app_key + self.remote_public + self.shash, self.local_secret)[
            :64
        ]
        self.local_hello = bytes(signature) + self.local_public
        return True

    def client_create_auth(self) -> bytes:
        """Message 3: the hello boxed under H(K‖ab‖aB)."""
        assert self.local_hello is not None and self.secret2 is not None
        return bytes(crypto_secretbox_easy(self.local_hello, _ZERO_NONCE, self.secret2))

    def _static_with_peer_ephemeral(self) -> bytes | None:
        """Our long-term key (as curve25519) with the peer's ephemeral key: the client's ``Ab``
        and the server's ``aB`` (the paper's names) are this same step; None for a bad point."""
        assert self.remote_kx_public is not None
        return _shared(
            bytes(crypto_sign_ed25519_sk_to_curve25519(self.local_secret)), self.remote_kx_public
        )

    def client_verify_accept(self, message: bytes) -> bool:
        """Message 4: the server's signature over our hello, boxed under H(K‖ab‖aB‖Ab)."""
        _expect_length(message, SERVER_ACCEPT_LENGTH, "the server accept")
        assert self.remote_kx_public is not None and self.remote_public is not None
        assert self.secret is not None and self.a_bob is not None and self.shash is not None
        assert self.local_hello is not None
        b_alice = self._static_with_peer_ephemeral()
        if b_alice is None:
            return False
        self.b_alice = b_alice
        self.secret3 = sha256(self.app_key + self.secret + self.a_bob + b_alice)
        signature = _open_box(message, self.secret3)
        if signature is None:
            return False
        return _signature_ok(
            signature, self.app_key + self.local_hello + self.shash, self.remote_public
        )

    # -- server -------------------------------------------------------------------------------
    def server_verify_auth(self, message: bytes) -> bool:
        """Message 3 at the server: open the hello, check sigA, learn the client's key A."""
        _expect_length(message, CLIENT_AUTH_LENGTH, "the client auth")
        assert self.remote_kx_public is not None and self.secret is not None
        assert self.shash is not None
        a_bob = self._static_with_peer_ephemeral()
        if a_bob is None:
            return False
        self.a_bob = a_bob
        self.secret2 = sha256(self.app_key + self.secret + a_bob)
        hello = _open_box(message, self.secret2)
        if hello is None:
            return False
        signature, client_public = hello[:64], hello[64:]
        if not _signature_ok(
            signature, self.app_key + self.local_public + self.shash, client_public
        ):
            return False
        curve = _curve_public(client_public)
        b_alice = None if curve is None else _shared(self.local_kx_secret, curve)
        if b_alice is None:
            return False
        self.remote_hello, self.remote_public, self.b_alice = hello, client_public, b_alice
        self.secret3 = sha256(self.app_key + self.secret + a_bob + b_alice)
        return True

    def server_create_accept(self) -> bytes:
        """Message 4: sign K‖hello‖H(ab) and box it under secret3."""
        assert self.remote_hello is not None and self.shash is not None
        assert self.secret3 is not None
        signature = crypto_sign(self.app_key + self.remote_hello + self.shash, self.local_secret)[
            :64
        ]
        return bytes(crypto_secretbox_easy(bytes(signature), _ZERO_NONCE, self.secret3))

    # -- after both sides agree ---------------------------------------------------------------
    def session_secret(self) -> bytes:
        """``H(secret3)``: the handshake secrets never key the data stream directly."""
        assert self.secret3 is not None
        return sha256(self.secret3)

    def box_keys(self) -> tuple[bytes, bytes, bytes, bytes]:
        """``(encrypt key, encrypt nonce, decrypt key, decrypt nonce)`` for box-stream.

        Each side encrypts under H(secret‖remote key) from the remote's challenge MAC, so the
        two directions never share a key/nonce pair.
        """
        assert self.remote_public is not None and self.remote_app_mac is not None
        secret = self.session_secret()
        return (
            sha256(secret + self.remote_public),
            self.remote_app_mac[:24],
            sha256(secret + self.local_public),
            self.local_app_mac[:24],
        )
