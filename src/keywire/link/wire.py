"""Link v1's byte layouts and labels: register signing, addresses, handshake header, welcome.

These are the wire-compatibility surface with Link's TypeScript relay and client ("era 1"), so
every constant lives here, once, with a test that pins its bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import HandshakeError

REGISTER_LABEL = b"frontier-link-register-v1"
REGISTER_SIGNER_INFO = b"frontier-link-register-ed25519-v1"
SPAKE2_W_INFO = b"FrontierLink/SPAKE2/v1 w"
SPAKE2_ID_CLIENT = b"FrontierLink/v1/client"
SPAKE2_ID_HOST = b"FrontierLink/v1/host"
TRANSPORT_INFO = b"FrontierLink/transport/v1"
NOISE_PROTOCOL = "Noise_NKpsk0_25519_ChaChaPoly_SHA256"
MAGIC = b"FLk1"
KEY_ID_SIZE = 16
CODE_ID_SIZE = 8
TOKEN_SIZE = 32
STATIC_SIZE = 32
MAX_WELCOME_ADDRESS = 256
ADDRESS_LENGTH = 43


class LinkProtocolError(HandshakeError):
    """Bytes that do not follow Link's layouts; the message says which field is wrong."""


class Mode(IntEnum):
    PAIR = 1
    RECOVER = 2
    RECONNECT = 3


class Refusal(IntEnum):
    """Second byte of a refusal frame ``FLk1 00 xx``.

    1 is Link's "revoked"; 2 is keywire's "no such pairing code, or it is spent, expired or
    locked"; 3 is keywire's "this host has no recovery key"; 4 is keywire's "too many recover
    attempts are running, try again shortly". A Link client reads 2–4 as a malformed reply and
    fails, which is also correct.
    """

    REVOKED = 1
    CODE_UNAVAILABLE = 2
    NO_RECOVERY_KEY = 3
    RECOVER_BUSY = 4


def json_object(raw: str | bytes) -> dict[str, Any] | None:
    """``raw`` parsed as a JSON object; None for anything else (not JSON, not UTF-8, an array
    or a bare value), which every Link reader refuses alike."""
    try:
        value = json.loads(raw)
    except ValueError:  # UnicodeDecodeError included
        return None
    return value if isinstance(value, dict) else None


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def from_b64u(text: str, size: int | None = None, what: str = "value") -> bytes:
    """Strict base64url without padding; ``size`` pins the decoded length."""
    if not isinstance(text, str) or not text or len(text) > 4096:
        raise LinkProtocolError(f"{what} must be non-empty base64url text")
    if "=" in text or "+" in text or "/" in text:
        raise LinkProtocolError(f"{what} must be base64url without padding")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise LinkProtocolError(f"{what} is not valid base64url") from None
    if b64u(raw) != text:
        raise LinkProtocolError(f"{what} is not canonical base64url")
    if size is not None and len(raw) != size:
        raise LinkProtocolError(f"{what} must be {size} bytes, got {len(raw)}")
    return raw


def _len_str(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">I", len(data)) + data


def register_signing_message(address: str, ts: int, nonce: str, origin: str) -> bytes:
    """The bytes a host signs to register: label ‖ lenStr(address, ts, nonce, origin)."""
    return REGISTER_LABEL + b"".join(_len_str(v) for v in (address, str(ts), nonce, origin))


def address_for_register_key(public_key: bytes) -> str:
    """A host's address: base64url(SHA-256(Ed25519 register key)), 43 characters."""
    return b64u(hashlib.sha256(public_key).digest())


def register_seed_from_static(x25519_private: bytes) -> bytes:
    """Link's register signer: an Ed25519 seed derived from the host's X25519 private key."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=REGISTER_SIGNER_INFO).derive(x25519_private)


def origin_of(url: str) -> str:
    """What a host signs as the relay's origin: the URL's ``host[:port]``, lower-cased."""
    from urllib.parse import urlsplit

    return urlsplit(url).netloc.rsplit("@", 1)[-1].lower()


@dataclass(frozen=True)
class Header:
    """The first relayed frame, client → host: ``FLk1 ‖ version ‖ mode [‖ keyId | codeId]``."""

    mode: Mode
    version: int = 1
    key_id: bytes | None = None
    code_id: bytes | None = None

    def encode(self) -> bytes:
        out = MAGIC + bytes([self.version, self.mode])
        if self.mode is Mode.RECONNECT:
            assert self.key_id is not None and len(self.key_id) == KEY_ID_SIZE
            out += self.key_id
        elif self.code_id is not None:
            assert len(self.code_id) == CODE_ID_SIZE
            out += self.code_id
        return out

    @classmethod
    def pair(cls, code_id: bytes | None = None) -> Header:
        return cls(Mode.PAIR, 2 if code_id is not None else 1, code_id=code_id)

    @classmethod
    def recover(cls) -> Header:
        """``FLk1 01 02``: Recover never carries a code id."""
        return cls(Mode.RECOVER, 1)

    @classmethod
    def reconnect(cls, key_id: bytes) -> Header:
        if len(key_id) != KEY_ID_SIZE:
            raise LinkProtocolError(f"a keyId is {KEY_ID_SIZE} bytes, got {len(key_id)}")
        return cls(Mode.RECONNECT, 1, key_id=key_id)

    @classmethod
    def decode(cls, data: bytes) -> Header:
        if len(data) < 6 or data[:4] != MAGIC:
            raise LinkProtocolError("the first frame is not a Link header (FLk1 …)")
        version, mode_byte = data[4], data[5]
        rest = data[6:]
        try:
            mode = Mode(mode_byte)
        except ValueError:
            raise LinkProtocolError(f"unknown Link handshake mode {mode_byte}") from None
        if version not in (1, 2):
            raise LinkProtocolError(f"unsupported Link header version {version}")
        if mode is Mode.RECONNECT:
            if version != 1 or len(rest) != KEY_ID_SIZE:
                raise LinkProtocolError("a reconnect header is FLk1 01 03 ‖ keyId(16)")
            return cls(mode, 1, key_id=bytes(rest))
        if mode is Mode.PAIR and version == 2:
            if len(rest) != CODE_ID_SIZE:
                raise LinkProtocolError("a version-2 pair header carries an 8-byte codeId")
            return cls(mode, 2, code_id=bytes(rest))
        if mode is Mode.RECOVER and version == 2:
            raise LinkProtocolError("recover with a codeId (version 2) is refused")
        if rest:
            raise LinkProtocolError(f"{len(rest)} unexpected bytes after the Link header")
        return cls(mode, version)


def refusal_frame(reason: Refusal) -> bytes:
    return MAGIC + bytes([0, reason])


def parse_refusal(frame: bytes) -> Refusal | None:
    """The refusal in ``frame``, or None if it is not a refusal frame."""
    if len(frame) == 6 and frame[:5] == MAGIC + b"\x00":
        try:
            return Refusal(frame[5])
        except ValueError:
            raise LinkProtocolError(f"unknown refusal reason {frame[5]}") from None
    return None


@dataclass(frozen=True)
class Credential:
    """What a paired client keeps: the host's address and static key, its token and key id."""

    address: str
    host_static: bytes
    token: bytes
    key_id: bytes

    def to_json(self) -> dict[str, str]:
        return {
            "address": self.address,
            "hostStaticPub": b64u(self.host_static),
            "token": b64u(self.token),
            "keyId": b64u(self.key_id),
        }

    @classmethod
    def from_json(cls, data: object) -> Credential:
        if not isinstance(data, dict):
            raise LinkProtocolError("a credential is a JSON object")
        address = data.get("address")
        if not isinstance(address, str) or not 1 <= len(address) <= MAX_WELCOME_ADDRESS:
            raise LinkProtocolError("credential address must be 1..256 characters")
        return cls(
            address,
            from_b64u(data.get("hostStaticPub", ""), STATIC_SIZE, "hostStaticPub"),
            from_b64u(data.get("token", ""), TOKEN_SIZE, "token"),
            from_b64u(data.get("keyId", ""), KEY_ID_SIZE, "keyId"),
        )


def encode_welcome(credential: Credential) -> bytes:
    """``u32be(len) ‖ address ‖ hostStaticPub(32) ‖ token(32) ‖ keyId(16)``."""
    address = credential.address.encode()
    if len(address) > MAX_WELCOME_ADDRESS:
        raise LinkProtocolError("welcome address longer than 256 bytes")
    return (
        struct.pack(">I", len(address))
        + address
        + credential.host_static
        + credential.token
        + credential.key_id
    )


def decode_welcome(data: bytes) -> Credential:
    if len(data) < 4:
        raise LinkProtocolError("welcome shorter than its length prefix")
    (size,) = struct.unpack(">I", data[:4])
    if size > MAX_WELCOME_ADDRESS or size == 0:
        raise LinkProtocolError(f"welcome address length {size} is outside 1..256")
    expected = 4 + size + STATIC_SIZE + TOKEN_SIZE + KEY_ID_SIZE
    if len(data) != expected:
        raise LinkProtocolError(f"welcome is {len(data)} bytes, expected {expected}")
    try:
        address = data[4 : 4 + size].decode()
    except UnicodeDecodeError:
        raise LinkProtocolError("welcome address is not UTF-8") from None
    at = 4 + size
    return Credential(
        address, bytes(data[at : at + 32]), bytes(data[at + 32 : at + 64]), bytes(data[at + 64 :])
    )


def transport_keys(ke: bytes, transcript_hash: bytes) -> tuple[bytes, bytes]:
    """(client→host, host→client) keys after pairing: HKDF(Ke, salt=SHA-256(TT))."""
    okm = HKDF(hashes.SHA256(), 64, salt=transcript_hash, info=TRANSPORT_INFO).derive(ke)
    return okm[:32], okm[32:]
