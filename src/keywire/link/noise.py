"""The Noise Protocol Framework (revision 34) for 25519 / ChaChaPoly / SHA256: a sans-IO core.

Link reconnects with ``Noise_NKpsk0_25519_ChaChaPoly_SHA256``; the engine is general (every
fundamental, one-way and deferred pattern, any ``pskN``) so the whole cacophony suite for this
cipher set can check it. Built on ``cryptography``'s X25519, ChaCha20-Poly1305 and HMAC.
Messages are capped at Noise's 65535 bytes; nonces cannot wrap.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import HandshakeError

MAX_MESSAGE = 65535
TAG_SIZE = 16
DH_SIZE = 32
HASH_SIZE = 32
_MAX_NONCE = 2**64 - 1

# pre-messages (initiator, responder) and message token lists, per the Noise spec §7
_PATTERNS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "N": ((), ("s",), ("e,es",)),
    "K": (("s",), ("s",), ("e,es,ss",)),
    "X": ((), ("s",), ("e,es,s,ss",)),
    "NN": ((), (), ("e", "e,ee")),
    "NK": ((), ("s",), ("e,es", "e,ee")),
    "NX": ((), (), ("e", "e,ee,s,es")),
    "KN": (("s",), (), ("e", "e,ee,se")),
    "KK": (("s",), ("s",), ("e,es,ss", "e,ee,se")),
    "KX": (("s",), (), ("e", "e,ee,se,s,es")),
    "XN": ((), (), ("e", "e,ee", "s,se")),
    "XK": ((), ("s",), ("e,es", "e,ee", "s,se")),
    "XX": ((), (), ("e", "e,ee,s,es", "s,se")),
    "IN": ((), (), ("e,s", "e,ee,se")),
    "IK": ((), ("s",), ("e,es,s,ss", "e,ee,se")),
    "IX": ((), (), ("e,s", "e,ee,se,s,es")),
    "NK1": ((), ("s",), ("e", "e,ee,es")),
    "NX1": ((), (), ("e", "e,ee,s", "es")),
    "X1N": ((), (), ("e", "e,ee", "s", "se")),
    "X1K": ((), ("s",), ("e,es", "e,ee", "s", "se")),
    "XK1": ((), ("s",), ("e", "e,ee,es", "s,se")),
    "X1K1": ((), ("s",), ("e", "e,ee,es", "s", "se")),
    "X1X": ((), (), ("e", "e,ee,s,es", "s", "se")),
    "XX1": ((), (), ("e", "e,ee,s", "es,s,se")),
    "X1X1": ((), (), ("e", "e,ee,s", "es,s", "se")),
    "K1N": (("s",), (), ("e", "e,ee", "se")),
    "K1K": (("s",), ("s",), ("e,es", "e,ee", "se")),
    "KK1": (("s",), ("s",), ("e", "e,ee,se,es")),
    "K1K1": (("s",), ("s",), ("e", "e,ee,es", "se")),
    "K1X": (("s",), (), ("e", "e,ee,s,es", "se")),
    "KX1": (("s",), (), ("e", "e,ee,se,s", "es")),
    "K1X1": (("s",), (), ("e", "e,ee,s", "se,es")),
    "I1N": ((), (), ("e,s", "e,ee", "se")),
    "I1K": ((), ("s",), ("e,es,s", "e,ee", "se")),
    "IK1": ((), ("s",), ("e,s", "e,ee,se,es")),
    "I1K1": ((), ("s",), ("e,s", "e,ee,es", "se")),
    "I1X": ((), (), ("e,s", "e,ee,s,es", "se")),
    "IX1": ((), (), ("e,s", "e,ee,se,s", "es")),
    "I1X1": ((), (), ("e,s", "e,ee,s", "se,es")),
}
_NAME = re.compile(r"Noise_([A-Z0-9]+?)((?:psk\d)(?:\+psk\d)*)?_25519_ChaChaPoly_SHA256")


class NoiseError(HandshakeError):
    """A Noise message failed to decrypt or parse, or the state machine was misused."""


def _hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> list[bytes]:
    temp = hmac.new(chaining_key, ikm, hashlib.sha256).digest()
    out: list[bytes] = []
    previous = b""
    for i in range(1, outputs + 1):
        previous = hmac.new(temp, previous + bytes([i]), hashlib.sha256).digest()
        out.append(previous)
    return out


def public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise NoiseError("X25519 produced a low-order (all-zero) shared secret") from None


class CipherState:
    """A key and its counter nonce (``00000000 ‖ u64le(n)``); the nonce never wraps."""

    def __init__(self, key: bytes | None = None) -> None:
        self._aead = ChaCha20Poly1305(key) if key is not None else None
        self.key = key
        self.nonce = 0

    @property
    def has_key(self) -> bool:
        return self._aead is not None

    def _nonce_bytes(self) -> bytes:
        if self.nonce >= _MAX_NONCE:
            raise NoiseError("nonce exhausted; the session must end")
        return b"\x00\x00\x00\x00" + self.nonce.to_bytes(8, "little")

    def encrypt(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        out = self._aead.encrypt(self._nonce_bytes(), plaintext, ad)
        self.nonce += 1
        return out

    def decrypt(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._aead is None:
            return ciphertext
        try:
            out = self._aead.decrypt(self._nonce_bytes(), ciphertext, ad)
        except InvalidTag:
            raise NoiseError(
                "authentication failed (tampered, replayed, reordered or wrong key)"
            ) from None
        self.nonce += 1
        return out


class SymmetricState:
    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASH_SIZE:
            self.h = protocol_name.ljust(HASH_SIZE, b"\x00")
        else:
            self.h = hashlib.sha256(protocol_name).digest()
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf(self.ck, ikm, 2)
        self.cipher = CipherState(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = _hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cipher = CipherState(temp_k)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = _hkdf(self.ck, b"", 2)
        return CipherState(k1), CipherState(k2)


@dataclass(frozen=True)
class Pattern:
    """A parsed protocol name: pre-messages and per-message tokens with psk modifiers applied."""

    name: str
    initiator_pre: tuple[str, ...]
    responder_pre: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]
    psk_count: int

    @property
    def one_way(self) -> bool:
        return len(self.messages) == 1

    @classmethod
    def parse(cls, protocol_name: str) -> Pattern:
        match = _NAME.fullmatch(protocol_name)
        if match is None or match.group(1) not in _PATTERNS:
            raise NoiseError(f"unsupported Noise protocol {protocol_name!r}")
        init_pre, resp_pre, raw = _PATTERNS[match.group(1)]
        messages = [list(m.split(",")) for m in raw]
        modifiers = match.group(2)
        psks = 0
        if modifiers:
            for modifier in modifiers.split("+"):
                index = int(modifier[3:])
                if index > len(messages):
                    raise NoiseError(f"{modifier} is past the last message of {protocol_name}")
                if index == 0:
                    messages[0].insert(0, "psk")
                else:
                    messages[index - 1].append("psk")
                psks += 1
        return cls(protocol_name, init_pre, resp_pre, tuple(tuple(m) for m in messages), psks)


@dataclass
class Keys:
    """Static and ephemeral keys for one side; ephemerals are injectable for test vectors."""

    s: X25519PrivateKey | None = None
    e: X25519PrivateKey | None = None
    rs: bytes | None = None
    re: bytes | None = None
    psks: Sequence[bytes] = field(default_factory=tuple)


class HandshakeState:
    """One side of a Noise handshake: ``write_message`` / ``read_message`` until ``complete``.

    After completion ``send_cipher``/``receive_cipher`` carry transport messages and
    ``handshake_hash`` is the channel binding.
    """

    def __init__(
        self, protocol_name: str, initiator: bool, keys: Keys, prologue: bytes = b""
    ) -> None:
        self.pattern = Pattern.parse(protocol_name)
        if len(keys.psks) != self.pattern.psk_count:
            raise NoiseError(
                f"{protocol_name} needs {self.pattern.psk_count} PSK(s), got {len(keys.psks)}"
            )
        for psk in keys.psks:
            if len(psk) != 32:
                raise NoiseError("a Noise PSK is 32 bytes")
        self.initiator = initiator
        self.keys = keys
        self._psks = list(keys.psks)
        self._has_psk = self.pattern.psk_count > 0
        self.symmetric = SymmetricState(protocol_name.encode())
        self.symmetric.mix_hash(prologue)
        for owner_is_initiator, pre in (
            (True, self.pattern.initiator_pre),
            (False, self.pattern.responder_pre),
        ):
            for token in pre:
                mine = owner_is_initiator == initiator
                key = self._pre_key(token, mine)
                self.symmetric.mix_hash(key)
        self._index = 0
        self.send_cipher: CipherState | None = None
        self.receive_cipher: CipherState | None = None
        self.handshake_hash: bytes | None = None

    def _pre_key(self, token: str, mine: bool) -> bytes:
        if token != "s":
            raise NoiseError(f"unsupported pre-message token {token!r}")
        if mine:
            if self.keys.s is None:
                raise NoiseError("this pattern needs our static key")
            return public_bytes(self.keys.s)
        if self.keys.rs is None:
            raise NoiseError("this pattern needs the peer's static key in advance")
        return self.keys.rs

    @property
    def complete(self) -> bool:
        return self.handshake_hash is not None

    @property
    def my_turn(self) -> bool:
        return (self._index % 2 == 0) == self.initiator

    def _dh_token(self, token: str) -> None:
        local, remote = token[0], token[1]
        if not self.initiator:
            local, remote = remote, local
        private = self.keys.s if local == "s" else self.keys.e
        public = self.keys.rs if remote == "s" else self.keys.re
        if private is None or public is None:
            raise NoiseError(f"token {token!r} needs a key we do not have")
        self.symmetric.mix_key(_dh(private, public))

    def _next_psk(self) -> bytes:
        if not self._psks:
            raise NoiseError("ran out of PSKs")
        return self._psks.pop(0)

    def write_message(self, payload: bytes = b"") -> bytes:
        if self.complete or not self.my_turn:
            raise NoiseError("not our turn to write a handshake message")
        out = bytearray()
        for token in self.pattern.messages[self._index]:
            if token == "e":
                if self.keys.e is None:
                    self.keys.e = X25519PrivateKey.generate()
                pub = public_bytes(self.keys.e)
                out += pub
                self.symmetric.mix_hash(pub)
                if self._has_psk:
                    self.symmetric.mix_key(pub)
            elif token == "s":
                if self.keys.s is None:
                    raise NoiseError("this pattern needs our static key")
                out += self.symmetric.encrypt_and_hash(public_bytes(self.keys.s))
            elif token == "psk":
                self.symmetric.mix_key_and_hash(self._next_psk())
            else:
                self._dh_token(token)
        out += self.symmetric.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE:
            raise NoiseError(f"handshake message of {len(out)} bytes exceeds {MAX_MESSAGE}")
        self._advance()
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        if self.complete or self.my_turn:
            raise NoiseError("not our turn to read a handshake message")
        if len(message) > MAX_MESSAGE:
            raise NoiseError(f"handshake message of {len(message)} bytes exceeds {MAX_MESSAGE}")
        view = memoryview(message)
        for token in self.pattern.messages[self._index]:
            if token == "e":
                if len(view) < DH_SIZE:
                    raise NoiseError("handshake message too short for an ephemeral key")
                self.keys.re = bytes(view[:DH_SIZE])
                view = view[DH_SIZE:]
                self.symmetric.mix_hash(self.keys.re)
                if self._has_psk:
                    self.symmetric.mix_key(self.keys.re)
            elif token == "s":
                size = DH_SIZE + (TAG_SIZE if self.symmetric.cipher.has_key else 0)
                if len(view) < size:
                    raise NoiseError("handshake message too short for a static key")
                self.keys.rs = self.symmetric.decrypt_and_hash(bytes(view[:size]))
                view = view[size:]
            elif token == "psk":
                self.symmetric.mix_key_and_hash(self._next_psk())
            else:
                self._dh_token(token)
        if self.symmetric.cipher.has_key and len(view) < TAG_SIZE:
            raise NoiseError("handshake message too short for its authentication tag")
        payload = self.symmetric.decrypt_and_hash(bytes(view))
        self._advance()
        return payload

    def _advance(self) -> None:
        self._index += 1
        if self._index == len(self.pattern.messages):
            first, second = self.symmetric.split()
            self.send_cipher, self.receive_cipher = (
                (first, second) if self.initiator else (second, first)
            )
            self.handshake_hash = self.symmetric.h


def private_key(raw: bytes) -> X25519PrivateKey:
    """An X25519 private key from 32 raw bytes."""
    if len(raw) != 32:
        raise NoiseError("an X25519 private key is 32 bytes")
    return X25519PrivateKey.from_private_bytes(raw)
