"""Saved stream state, encrypted at rest.

Katzenpost's ``Save()`` writes the stream secret in plaintext; here the snapshot is CBOR sealed
with a secretbox under a 32-byte key the caller holds, so a state file on disk reveals nothing
without that key, and a tampered or truncated file is refused rather than half-loaded.
"""

from __future__ import annotations

from typing import Any, cast

import cbor2
import nacl.exceptions
import nacl.secret
import nacl.utils

MAGIC = b"KWSTORE1"
KEY_SIZE = 32


class StateError(ValueError):
    """A saved state that cannot be opened (wrong key, damaged, or not a state file)."""


def new_state_key() -> bytes:
    return nacl.utils.random(KEY_SIZE)


def _box(key: bytes) -> nacl.secret.SecretBox:
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise StateError(f"state key must be {KEY_SIZE} bytes")
    return nacl.secret.SecretBox(key)


def seal_state(state: dict[str, Any], key: bytes) -> bytes:
    return MAGIC + bytes(_box(key).encrypt(cbor2.dumps(state)))


def open_state(blob: bytes, key: bytes) -> dict[str, Any]:
    box = _box(key)
    if not blob.startswith(MAGIC):
        raise StateError("not a keywire store-stream state (bad magic)")
    try:
        plain = box.decrypt(blob[len(MAGIC) :])
    except nacl.exceptions.CryptoError:
        raise StateError(
            "saved state does not open with this key (wrong key or damaged file)"
        ) from None
    state = cbor2.loads(plain)
    if not isinstance(state, dict):
        raise StateError("saved state is not a map")
    return cast(dict[str, Any], state)
